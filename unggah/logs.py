"""Structured JSON logs, one object per line, with whatever `extra=` a call adds."""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(out, default=str).decode()
        except orjson.JSONEncodeError:
            # A client's bytes that are not UTF-8 (aiohttp passes them on as surrogates) must
            # not cost the log line that reports them.
            return orjson.dumps({k: _printable(v) for k, v in out.items()}, default=str).decode()


def _printable(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class MalformedRequests(logging.Filter):
    """aiohttp logs every malformed request (a header line without a colon, a bad
    Content-Length...) at error level with a traceback, so anyone could fill the log, and set
    off the alerts on errors, with them. They are the client's fault and answered 400: one
    info line each, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "malformed HTTP request refused", ()
            record.error = str(exc)[:300]
            record.exc_info = record.exc_text = None
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    # aiohttp's access log is one line per chunk: far too much under load.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
