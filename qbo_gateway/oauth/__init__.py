"""Intuit OAuth: the token endpoint client (`intuit`) and the connect flow for a new
realm (`connect`)."""
