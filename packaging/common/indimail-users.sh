#!/bin/sh
# Create the indimail-mta groups and users (admin.md §2) where missing.
# Used where the binary is not installed yet: rpm %pre, FreeBSD pkg-install,
# macOS preinstall.  Names and ids match svctool --config=users
# (indimail.admin.svc_config.GROUPS / USERS); on Linux only indimail has a
# fixed id (555), the others get system ids.
# usage: indimail-users.sh QMAILHOME LOGDIR
QMAILHOME=${1:-/var/indimail}
LOGDIR=${2:-/var/log/svc}
SYSTEM=$(uname -s)
NOLOGIN=/sbin/nologin
[ -x $NOLOGIN ] || NOLOGIN=/usr/sbin/nologin
[ -x $NOLOGIN ] || NOLOGIN=/usr/bin/false

# group:gid
GROUPS="indimail:555 qmail:556 nofiles:557 qscand:558 qcerts:559"
# user:uid:group:supplementary:home
USERS="indimail:555:indimail::$QMAILHOME
alias:556:nofiles::$QMAILHOME/alias
qmaild:557:nofiles:qcerts:$QMAILHOME
qmaill:558:nofiles::$LOGDIR
qmailp:559:nofiles::$QMAILHOME
qmailq:560:qmail::$QMAILHOME
qmailr:561:qmail:qcerts:$QMAILHOME
qmails:562:qmail:qcerts:$QMAILHOME
qscand:563:qscand:qmail:$QMAILHOME/qscanq"

group_exists() {
	case "$SYSTEM" in
	Darwin) dscl . -read "/Groups/$1" >/dev/null 2>&1 ;;
	*) getent group "$1" >/dev/null 2>&1 || grep -q "^$1:" /etc/group ;;
	esac
}
user_exists() {
	case "$SYSTEM" in
	Darwin) dscl . -read "/Users/$1" >/dev/null 2>&1 ;;
	*) getent passwd "$1" >/dev/null 2>&1 || grep -q "^$1:" /etc/passwd ;;
	esac
}

for g in $GROUPS; do
	name=${g%%:*}; gid=${g#*:}
	group_exists "$name" && continue
	case "$SYSTEM" in
	Darwin) dscl . -create "/Groups/$name" PrimaryGroupID "$gid" ;;
	FreeBSD) pw groupadd "$name" -g "$gid" ;;
	*)
		if [ "$name" = indimail ] && ! getent group "$gid" >/dev/null 2>&1 ; then
			groupadd -r -g "$gid" "$name"
		else
			groupadd -r "$name"
		fi ;;
	esac
done

echo "$USERS" | while IFS=: read -r name uid group extra home; do
	user_exists "$name" && continue
	shell=$NOLOGIN
	[ "$name" = indimail ] && shell=/bin/sh
	case "$SYSTEM" in
	Darwin)
		gid=$(dscl . -read "/Groups/$group" PrimaryGroupID | awk '{print $2}')
		dscl . -create "/Users/$name" UniqueID "$uid"
		dscl . -create "/Users/$name" PrimaryGroupID "$gid"
		dscl . -create "/Users/$name" NFSHomeDirectory "$home"
		dscl . -create "/Users/$name" UserShell "$shell"
		dscl . -create "/Users/$name" RealName "indimail-mta $name"
		if [ -n "$extra" ] ; then
			for g in $(echo "$extra" | tr , ' '); do
				dscl . -append "/Groups/$g" GroupMembership "$name"
			done
		fi ;;
	FreeBSD)
		if [ -n "$extra" ] ; then
			pw useradd "$name" -u "$uid" -g "$group" -G "$extra" -d "$home" -s "$shell" -c "indimail-mta $name"
		else
			pw useradd "$name" -u "$uid" -g "$group" -d "$home" -s "$shell" -c "indimail-mta $name"
		fi ;;
	*)
		set -- -r -M -g "$group" -d "$home" -s "$shell" -c "indimail-mta $name"
		[ -n "$extra" ] && set -- "$@" -G "$extra"
		if [ "$name" = indimail ] && ! getent passwd "$uid" >/dev/null 2>&1 ; then
			set -- "$@" -u "$uid"
		fi
		useradd "$@" "$name" ;;
	esac
done
exit 0
