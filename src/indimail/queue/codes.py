"""qmail-queue exit codes and the texts injecting programs show for them.

0 is success; 11-40 and 115 are permanent; everything else temporary.  The
texts carry a leading ``D`` (permanent) or ``Z`` (temporary) as in the
original's ``qmail_close()``; SMTP front ends turn them into 554/451.
"""

from __future__ import annotations

OK = 0
ENVELOPE_TOO_LONG = 11
PERM_MSG_REJECT = 31
SPAM_THRESHOLD = 32
VIRUS_IN_MSG = 33
BANNED_ATTACHMENT = 34
NO_PRIVATE_KEY = 35
DUP_ERR = 41
OUT_OF_MEMORY = 51
TIMEOUT = 52
WRITE_ERR = 53
READ_ERR = 54
CONFIG_ERR = 55
PIPE_SOCKET = 60
CHDIR = 61
MESS_FILE = 62
FSYNC_ERR = 64
INTD_FILE = 65
LINK_TODO_INTD = 66
LINK_MESS_PID = 67
TMP_FILES = 68
SYNCDIR_ERR = 69
PID_FILE = 70
TEMP_MSG_REJECT = 71
EXEC_FAILED = 75
GET_UID_GID = 78
ENVELOPE_FMT_ERR = 79
REMOVE_INTD_ERR = 80
INTERNAL_BUG = 81
REMOVE_PID_ERR = 83
SYSTEM_MISCONFIG = 87
CUSTOM_ERR = 88
COMPAT = 115
EXEC_QMAILQUEUE = 120
FORK_ERR = 121
WAITPID_SURPRISE = 122
CRASHED = 123

TEXTS: dict[int, str] = {
    COMPAT: "Dqq envelope address too long (#5.1.3)",
    ENVELOPE_TOO_LONG: "Dqq envelope address too long (#5.1.3)",
    PERM_MSG_REJECT: "Dqq mail server permanently rejected message (#5.3.0)",
    SPAM_THRESHOLD: "Dqq spam or junk mail threshold exceeded (#5.7.1)",
    VIRUS_IN_MSG: "Dqq message contains virus (#5.7.1)",
    BANNED_ATTACHMENT: "Dqq message contains banned attachment (#5.7.1)",
    NO_PRIVATE_KEY: "Dqq private key file does not exist (#5.3.5)",
    50: "Zqq unable to get privilege to run virus scanner (#4.3.0)",
    OUT_OF_MEMORY: "Zqq out of memory (#4.3.0)",
    TIMEOUT: "Zqq timeout (#4.3.0)",
    DUP_ERR: "Zqq trouble duplicating file descriptors (#4.3.0)",
    WRITE_ERR: "Zqq write error or disk full (#4.3.0)",
    READ_ERR: "Zqq read error (#4.3.0)",
    CONFIG_ERR: "Zqq unable to read configuration (#4.3.0)",
    56: "Zqq trouble making network connection (#4.3.0)",
    57: "Zqq unable to open shared object/plugin (#4.3.0)",
    58: "Zqq unable to resolve symbol in shared object/plugin (#4.3.0)",
    59: "Zqq unable to close shared object/plugin (#4.3.0)",
    PIPE_SOCKET: "Zqq trouble creating pipes/sockets (#4.3.0)",
    CHDIR: "Zqq trouble in home directory (#4.3.0)",
    MESS_FILE: "Zqq unable to access mess file (#4.3.0)",
    63: "Zqq trouble doing cd to root directory (#4.3.0)",
    FSYNC_ERR: "Zqq trouble syncing message to disk (#4.3.0)",
    INTD_FILE: "Zqq trouble creating files in intd. (#4.3.0)",
    LINK_TODO_INTD: "Zqq trouble linking todofn to intdfn (#4.3.0)",
    LINK_MESS_PID: "Zqq trouble linking messfn to pidfn (#4.3.0)",
    TMP_FILES: "Zqq trouble creating temporary files (#4.3.0)",
    SYNCDIR_ERR: "Zqq trouble syncing dir to disk (#4.3.0)",
    PID_FILE: "Zqq trouble with pid file (#4.3.0)",
    TEMP_MSG_REJECT: "Zqq mail server temporarily rejected message (#4.3.0)",
    72: "Zqq connection to mail server timed out (#4.4.1)",
    73: "Zqq connection to mail server rejected (#4.4.1)",
    74: "Zqq communication with mail server failed (#4.4.2)",
    EXEC_FAILED: "Zqq unable to exec (#4.3.0)",
    76: "Zqq temporary problem with SPAM filter (#4.3.0)",
    77: "Zqq unable to run QHPSI scanner (#4.3.0)",
    GET_UID_GID: "Zqq trouble getting uids/gids (#4.3.0)",
    ENVELOPE_FMT_ERR: "Zqq envelope format error (#4.3.0)",
    REMOVE_INTD_ERR: "Zqq trouble removing intdfn",
    91: "Zqq internal bug (#4.3.0)",
    INTERNAL_BUG: "Zqq internal bug (#4.3.0)",
    SYSTEM_MISCONFIG: "Zqq mail system incorrectly configured. (#4.3.5)",
    82: "Zqq unable to exec qq (#4.3.0)",
    EXEC_QMAILQUEUE: "Zqq unable to exec qq (#4.3.0)",
    FORK_ERR: "Zqq unable to fork (#4.3.0)",
    WAITPID_SURPRISE: "Zqq waitpid surprise (#4.3.0)",
    CRASHED: "Zqq crashed (#4.3.0)",
}


def is_permanent(code: int) -> bool:
    """True for the permanent codes 11-40 and 115."""
    return 11 <= code <= 40 or code == COMPAT


def text_for(code: int, custom: str | None = None) -> str:
    """The ``D...``/``Z...`` text for exit ``code`` (custom text for 88)."""
    if code == CUSTOM_ERR:
        if custom and len(custom) > 2 and custom[0] in "DZ":
            return custom
        return "Zqq temporary problem (#4.3.0)"
    if code in TEXTS:
        return TEXTS[code]
    if is_permanent(code):
        return "Dqq permanent problem (#5.3.0)"
    return "Zqq temporary problem (#4.3.0)"
