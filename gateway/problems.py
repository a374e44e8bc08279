"""Errors as RFC 9457 problem details: what was wrong, and what the client should do.

`reason` is the machine-readable code; clients and the load-test report
group refusals by it.
"""

from __future__ import annotations

import random

import orjson
from aiohttp import web

TUS_VERSION = "1.0.0"


def problem(status: int, reason: str, detail: str, *, headers: dict[str, str] | None = None,
            **extra: object) -> web.Response:
    body = {"type": f"https://unggah.invalid/problems/{reason}", "title": reason.replace("-", " "),
            "status": status, "reason": reason, "detail": detail, **extra}
    # The reason also travels as a header, so proxies, load generators and metrics
    # can classify a refusal without parsing the body.
    h = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", "Unggah-Reason": reason}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=orjson.dumps(body),
                        content_type="application/problem+json", headers=h)


def retry_after(seconds: int) -> str:
    """A Retry-After for a refusal under load: `seconds` to twice that, at random. Clients
    refused together (a burst, or everyone after a Redis blip) would otherwise all come
    back together exactly that much later, as a burst that is refused again together."""
    return str(seconds + random.randrange(seconds + 1))
