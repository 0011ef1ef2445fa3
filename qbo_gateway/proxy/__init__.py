"""The proxy: a caller's request checked at the edge, sent to QBO as one logical call, relayed back.

`handler` is the way of one request (path, caller, body, read cache around the call, relay);
`exchange` is one logical QBO call (admission, token, retries, 401 replay); `upstream` is the
network boundary; `relay` streams QBO's answer back; `paths` and `callers` decide what may
pass; `access_log` writes the one summary line per request; `wiring` builds it all from
settings.
"""
