"""Secrets in the settings: which fields hold them, reading them from files, hiding them on display.

A secret is a whole field (an API key) or the credentials inside a URL field (the password of
postgresql://user:PASSWORD@host/db, the userinfo of https://TOKEN@host, a ?password= or
?api_key= query parameter). Each secret field also takes `<field>_file`: a path read at
settings load, so the value lives in a file (Docker or Kubernetes secrets) instead of the
YAML, which `loupe serve` hands to Ray and Ray keeps in logs that anyone on the machine reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from encoders.common.errors import InvalidInput
from encoders.common.urls import MASK, SECRET_PARAM, redact_url

# Fields whose whole value is secret (dotted paths in the settings).
KEY_FIELDS = ("qdrant_api_key", "api_key", "privacy.content_secret")
# URL fields: only their credentials are secret; the host, port and path stay readable.
URL_FIELDS = ("qdrant_url", "events_url", "cache.redis_url", "tracing.endpoint", "ask.base_url", "ask.judge_base_url")
SECRET_FIELDS = KEY_FIELDS + URL_FIELDS

# Keys whose value is secret wherever they appear (app args, env vars, runtime_env): the known
# key fields and anything named like a credential, so a field added later is hidden too.
_SECRET_NAME = re.compile(r"(^|_)(api_?key|password|passwd|secret|token)$", re.IGNORECASE)
# Shorter secret values are not cut out of free text: masking every "ab" would garble the logs.
MIN_SCRUB_CHARS = 4


def env_name(field: str) -> str:
    """The environment variable of a (dotted) settings field: cache.redis_url -> LOUPE_CACHE__REDIS_URL."""
    return "LOUPE_" + field.upper().replace(".", "__")


def is_secret_name(key: str) -> bool:
    return bool(_SECRET_NAME.search(key))


# -- display -----------------------------------------------------------------------------


def redact(value: Any) -> Any:
    """A copy for display: a URL with its credentials as ***, or a config / app-args dict (any
    depth, lists included) whose secret-named values are *** and whose URLs are redacted."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: redact_item(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def redact_item(key: str, value: Any) -> Any:
    """One field of a dict: secret by name (wholly masked when set) or by content (URLs)."""
    if is_secret_name(key) and value not in (None, ""):
        return MASK
    return redact(value)


# -- cutting known values out of free text (error messages, relayed output) --------------


def secret_values(value: Any) -> set[str]:
    """The secret values in a config / app-args / environment dict or a URL (as written and
    percent-decoded), to cut out of text that is not structured: errors, Ray's output."""
    found: set[str] = set()
    _collect(value, found)
    return {v for v in found if len(v) >= MIN_SCRUB_CHARS}


def _collect(value: Any, found: set[str], key: str = "") -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, found, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, found)
    elif value is not None and is_secret_name(key):
        found.add(str(value))  # non-strings too: a YAML key of digits parses as an int
    elif isinstance(value, str):
        found.update(_url_credentials(value))


def _url_credentials(url: str) -> set[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    found = set()
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        found.add(password if colon else user)
    for param in parts.query.split("&"):
        name, eq, value = param.partition("=")
        if eq and value and SECRET_PARAM.search(unquote(name)):
            found.add(value)
    return found | {unquote(v) for v in found}


def scrub(text: str, values: Iterable[str]) -> str:
    """`text` with every one of `values` replaced by ***; longest first, so a value that
    contains another is cut whole."""
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= MIN_SCRUB_CHARS:
            text = text.replace(value, MASK)
    return text


# -- secret files ------------------------------------------------------------------------


def read_secret_file(path: str, option: str) -> str:
    """The secret in file `path`, without its trailing newline. Errors name `option` and the
    path, never the contents."""
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"{option}: cannot read {path} ({exc.strerror or type(exc).__name__})", field=option
        ) from None
    try:
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise InvalidInput(f"{option}: {path} is not UTF-8 text", field=option) from None
    if not value:
        # An empty api_key would leave the service open to anyone: never a silent default.
        raise InvalidInput(f"{option}: {path} is empty", field=option)
    return value


def fill_from_files(settings: Any, fields: Iterable[str] = SECRET_FIELDS) -> None:
    """For each field whose `<field>_file` is set, read the file into the field. A value set
    too (YAML or environment) must be the same secret: two different ones are a mistake."""
    for field in fields:
        *parents, name = field.split(".")
        owner = settings
        for parent in parents:
            owner = getattr(owner, parent)
        path = getattr(owner, f"{name}_file", None)
        if not path:
            continue
        option = f"{field}_file"
        value = read_secret_file(path, option)
        current = getattr(owner, name)
        if current not in (None, "") and current != value:
            raise InvalidInput(f"set {field} or {option}, not both (they differ)", field=option)
        setattr(owner, name, value)


class RedactedRepr:
    """Mixin for pydantic models: their repr and str (in tracebacks and logs) show secrets as ***."""

    def __repr_args__(self):
        for name, value in super().__repr_args__():
            yield name, redact_item(name, value) if isinstance(value, str) else value


# -- moving secrets out of what Ray is handed ------------------------------------------------


def move_to_env(app_args: dict, settings: Any, fields: Iterable[str] = SECRET_FIELDS) -> dict[str, str]:
    """Take each secret written in `app_args` out of them; returns the LOUPE_* variables that
    carry them instead (the effective values, so an environment that overrode the YAML still
    wins). URL fields move only when they hold credentials; `<field>_file` paths stay."""
    env: dict[str, str] = {}
    for field in fields:
        *parents, name = field.split(".")
        holder: Any = app_args
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or holder.get(name) in (None, ""):
            continue
        whole = field in KEY_FIELDS
        if not whole and redact_url(str(holder[name])) == str(holder[name]):
            continue  # a URL without credentials: nothing to hide, it stays readable
        holder.pop(name)
        value = _effective(settings, field)
        if value not in (None, ""):
            env[env_name(field)] = str(value)
    return env


def absolute_files(app_args: dict, settings: Any, environ: Mapping[str, str]) -> dict[str, str]:
    """`<field>_file` paths made absolute where they are written (Ray's workers do not run in
    the caller's folder): in `app_args` in place; for the environment, the LOUPE_* variables
    to set instead."""
    env: dict[str, str] = {}
    for field in SECRET_FIELDS:
        path = _effective(settings, f"{field}_file")
        if not path:
            continue
        absolute = str(Path(path).expanduser().resolve())
        *parents, name = field.split(".")
        holder: Any = app_args
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and holder.get(f"{name}_file"):
            holder[f"{name}_file"] = absolute
        if environ.get(env_name(f"{field}_file")):
            env[env_name(f"{field}_file")] = absolute
    return env


def _effective(settings: Any, field: str) -> Any:
    value = settings
    for part in field.split("."):
        value = getattr(value, part)
    return value
