"""Parsing of tus request headers. Each function raises HeaderError with a
message that says what was wrong and what to send instead."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from buffer.messages import MetadataError, declared_sha256, decode_metadata

_DIGITS = re.compile(r"^[0-9]{1,19}$")


class HeaderError(ValueError):
    pass


def tus_method(request) -> str:
    """The method tus acts on: X-HTTP-Method-Override on a POST (for clients behind
    proxies that pass only GET and POST), else the request's own."""
    override = request.headers.get("X-HTTP-Method-Override")
    if override and request.method == "POST":
        return override.strip().upper()
    return request.method


def is_offset(value: str) -> bool:
    """What non_negative_int accepts (ASCII digits, at most 19), without raising."""
    return _DIGITS.match(value) is not None


def unreadable(request) -> str | None:
    """The name of the first header whose value is not UTF-8 text, if any. aiohttp passes
    such bytes on as surrogates, which nothing after it can encode: not a token's hash, not
    a Redis key, not a log line, not a JSON answer."""
    for name, value in request.headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return name.encode("ascii", "backslashreplace").decode()
    return None


def non_negative_int(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not _DIGITS.match(value):
        raise HeaderError(f"{name} must be a non-negative integer, got {value[:40]!r}")
    return int(value)


def metadata(value: str | None) -> dict[str, bytes]:
    try:
        meta = decode_metadata(value)
        declared_sha256(meta)  # readable now, not after the last byte
        return meta
    except MetadataError as e:
        raise HeaderError(str(e)) from None


def concat(value: str | None) -> tuple[str, list[str]]:
    """`partial` -> ("partial", []); `final;/files/a /files/b` -> ("final", ["a", "b"])."""
    if value is None:
        return "", []
    value = value.strip()
    if value == "partial":
        return "partial", []
    if value.startswith("final;"):
        urls = value[len("final;"):].split()
        if not urls:
            raise HeaderError("Upload-Concat: final; must list the partial uploads' URLs")
        try:
            ids = [urlsplit(u).path.rstrip("/").rsplit("/", 1)[-1] for u in urls]
        except ValueError as e:
            raise HeaderError(f"Upload-Concat: final; lists something that is not a URL ({e}); "
                              "send the partial uploads' URLs as their creation returned them") from None
        return "final", ids
    raise HeaderError("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
