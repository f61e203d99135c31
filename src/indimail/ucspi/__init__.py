"""ucspi-tcp: tcpserver, tcpclient, tcprules, tcprulescheck, rblsmtpd.

Modules:

* :mod:`addr` - IP address text forms as the original prints and keys them
  (djb's compact IPv6 form, the expanded form, CIDR bit strings).
* :mod:`rules` - the tcprules compiler and the rule lookup tcpserver uses.
* :mod:`context` - the per-connection hook an in-process program reads.
* :mod:`inproc` - run the next program in-process when it is one of ours,
  else ``execvp`` it (the hot-path rule of ARCHITECTURE section 3).
* :mod:`tcpserver`, :mod:`tcpclient`, :mod:`rblsmtpd`, :mod:`tcprules_cmd`.
"""
