"""Is the Hugging Face hub (or another download host) reachable, without ever hanging.

Every model family asks here before a download would start: an unreachable hub fails in
seconds with the family's "how to supply the weights" message instead of after the
libraries' own minute of retries. HF_HUB_OFFLINE counts as unreachable; HF_ENDPOINT names a
mirror; the lookup (DNS and TCP connect) is bounded by one timeout.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from encoders.common.errors import ModelUnavailable

HUB_HOST = "huggingface.co"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_address() -> tuple[str, int]:
    """(host, port) of the hub: HF_ENDPOINT's when set."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    return endpoint.hostname or HUB_HOST, endpoint.port or (80 if endpoint.scheme == "http" else 443)


def unreachable(timeout_s: float, host: str | None = None, port: int = 443) -> str | None:
    """None when the hub (or `host`) answers a TCP connect within timeout_s, else why not.
    HF_HUB_OFFLINE applies to the hub only; another host is always probed."""
    if host is None:
        if offline():
            return "HF_HUB_OFFLINE is set"
        host, port = hub_address()
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host} is unreachable ({exc})")

    # The socket timeout does not cover name resolution, which can stall far longer: bound both.
    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return outcome[0] if outcome else f"{host} did not answer within {timeout_s:g} s"


def require_download(what: str, how_to_supply: str, timeout_s: float, host: str | None = None) -> None:
    """ModelUnavailable, with the ways to supply the weights, unless a download could start."""
    reason = unreachable(timeout_s, host)
    if reason:
        raise ModelUnavailable(f"weights for {what} are not in the local cache and {reason}. {how_to_supply}")


def in_hf_cache(repo: str, filenames: tuple[str, ...], cache_dir: str | None = None) -> bool:
    """Whether any of `filenames` of hub repo `repo` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(name and isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir), str) for name in filenames)
