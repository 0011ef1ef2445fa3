"""Reports of any requested size, streamed with chunked encoding when large (as Intuit does).

The gateway must pass big report bodies through without buffering them whole; `sim_size`
lets a test ask for a body of roughly that many bytes, and anything above the threshold
arrives chunked, so the streaming path is exercised for real.
"""

from __future__ import annotations

import json

from aiohttp import web

from qbo_gateway.simulator.answers import iso

# Bodies above this are streamed with chunked encoding, as Intuit does for big reports.
STREAM_THRESHOLD = 256 * 1024
STREAM_CHUNK = 64 * 1024


async def report(request: web.Request, name: str, now: float) -> web.StreamResponse:
    header = {
        "Time": iso(now),
        "ReportName": name,
        "StartPeriod": "2026-01-01",
        "EndPeriod": "2026-12-31",
        "Currency": "USD",
    }
    row = '{"ColData":[{"value":"Services","id":"1"},{"value":"1234.56"}],"type":"Data"}'
    try:
        size = int(request.query.get("sim_size", "0"))
    except ValueError:
        size = 0
    prefix = json.dumps(
        {
            "Header": header,
            "Columns": {"Column": [{"ColTitle": "", "ColType": "Account"}]},
        }
    )[:-1]
    # Rows are repeated text, not built objects, so a 50 MB report costs no JSON encoding.
    count = max(1, (size - len(prefix) - 40) // (len(row) + 1)) if size else 3
    body = (prefix + ',"Rows":{"Row":[' + ",".join([row] * count) + "]}}").encode()
    if len(body) <= STREAM_THRESHOLD:
        return web.Response(body=body, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    view = memoryview(body)
    for offset in range(0, len(body), STREAM_CHUNK):
        await response.write(view[offset : offset + STREAM_CHUNK])
    await response.write_eof()
    return response
