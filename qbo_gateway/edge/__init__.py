"""The listeners' edge: what happens to a connection before the gateway's handlers see it.

aiohttp's own server answers some requests itself (parser errors) and logs them with the
raw header line; it has no deadline on reading a request's headers and no bound on open
connections. This package serves both listeners with a request handler that answers every
such case with the gateway's fault, logs nothing a caller sent, closes connections that
are too slow to send their headers, and bounds open connections per listener.
"""
