"""indimail-mta: a qmail-compatible MTA in Python."""

__version__ = "0.1.0"
