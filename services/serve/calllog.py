"""Logs of every replica: one structured line per call, each line with its request id.

`configure(settings.logs)` runs in each replica: the "loupe" loggers write to stderr (Ray
forwards it to `loupe serve`'s output, prefixed with the replica) at `logs.level`, as JSON
lines (`logs.format: json`, the default) or `key=value` text. Every line carries the request
id of the call it was written for (`services.serve.requests.current()`).

The Ingress writes one `call` line per RPC (request id, client, RPC, collection, status code,
latency, request and response sizes, hits); the Answerer one `ask` line per answer (the
question with its personal data masked, verdict, failed guards, model, prompt version and
its content digest, tokens, attempts). Values of personal data never reach a log: questions
are masked with `encoders.text.pii.redact`, item texts are not logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from encoders.text.pii import KINDS, redact
from services.serve import requests

CALLS = logging.getLogger("loupe.calls")
ALL_KINDS = frozenset(KINDS)


class _Format(logging.Formatter):
    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": requests.current() or None,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        if self.style == "json":
            return json.dumps(line, default=str)
        return " ".join(f"{k}={v}" for k, v in line.items() if v is not None)


def configure(logs) -> None:
    """Once per process: the "loupe" loggers to stderr at `logs.level`, in `logs.format`."""
    logger = logging.getLogger("loupe")
    for handler in list(logger.handlers):
        if getattr(handler, "loupe", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.loupe = True
    handler.setFormatter(_Format(logs.format))
    logger.addHandler(handler)
    logger.setLevel(logs.level)
    logger.propagate = False


def call(**fields) -> None:
    CALLS.info("call", extra={"fields": fields})


def masked(text: str) -> str:
    """Text as a log may hold it: every kind of personal data masked."""
    return redact(text, ALL_KINDS)
