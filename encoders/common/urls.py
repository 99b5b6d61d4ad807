"""URLs as they may be shown: in error messages, logs and any echo of the config.

Every layer shows URLs (a Qdrant server, the events database, Redis, a VLM endpoint), and a
URL may carry credentials: postgresql://user:PASSWORD@host/db, https://TOKEN@host, ?api_key=.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MASK = "***"
# Query parameters that carry credentials (?password=, ?api_key=, ?token=, ?sslpassword=).
SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with its userinfo password (or a lone userinfo, often a token) and credential
    query parameters as ***; text that is not a URL comes back unchanged."""
    if "@" not in url and "?" not in url:
        return url  # the common case, and no urlsplit on arbitrary text
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 bracket: cannot tell where credentials end
        return MASK
    if not parts.scheme or not parts.netloc:
        return url
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    if query:
        query = "&".join(_redact_param(p) for p in query.split("&"))
    return parts._replace(netloc=netloc, query=query).geturl()


def _redact_param(param: str) -> str:
    name, eq, _value = param.partition("=")
    return f"{name}={MASK}" if eq and SECRET_PARAM.search(unquote(name)) else param
