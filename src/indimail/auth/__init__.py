"""Authentication: SMTP AUTH mechanisms and the checkpassword interface."""
