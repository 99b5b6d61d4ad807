"""HTTP requests as an attacker sends them: any Host, Origin and Content-Type, any body."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit


def post(
    base_url: str,
    rpc: str,
    body,
    key: str | None,
    *,
    headers: dict[str, str] | None = None,
    host: str | None = None,
    raw: bytes | None = None,
    method: str = "POST",
) -> tuple[int, dict]:
    """(HTTP status, JSON body or {}) of one call to /api/v1/RPC."""
    parts = urlsplit(base_url)
    data = raw if raw is not None else json.dumps(body).encode()
    sent = {"content-type": "application/json", **(headers or {})}
    if key:
        sent["x-api-key"] = key
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.putrequest(method, f"/api/v1/{rpc}", skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        try:
            conn.send(data)
        except (BrokenPipeError, ConnectionResetError):  # answered (and closed) before it was all sent
            pass
        reply = conn.getresponse()
        text = reply.read()
        return reply.status, (json.loads(text) if text.strip().startswith(b"{") else {})
    finally:
        conn.close()
