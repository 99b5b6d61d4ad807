"""VLM backend for an OpenAI-compatible chat completions server with image inputs.

vLLM (`vllm serve HuggingFaceTB/SmolVLM-256M-Instruct`, base_url http://host:8000/v1) and
Ollama (base_url http://host:11434/v1) serve this API. Images travel as base64 data URLs in
the user message, before its text; decoding is greedy (temperature 0) and bounded (max_tokens).

Failures become domain errors: a server that is down, times out or answers 5xx after the
retries is `ModelUnavailable`; 429 is `Overloaded` carrying the server's Retry-After; a
rejected request (400/413/422) is `InvalidInput`. Tries are bounded (1 + retries) with
exponential backoff; no call waits longer than about (retries + 1) * timeout_s plus the pauses.
"""

from __future__ import annotations

import base64
import io
import os
import random
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlparse

from encoders.common.errors import InvalidInput, LoupeError, ModelUnavailable, Overloaded
from encoders.common.urls import redact_url
from encoders.loading.lazy import LazyModel
from lmm.models import VlmOptions, generation_budget
from lmm.types import Draft, Prompt

DEFAULT_MAX_IMAGE_EDGE = 1536
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REJECT_STATUSES = frozenset({400, 413, 422})


class _Retry(Exception):
    """One try failed in a way worth trying again."""

    def __init__(self, reason: str, *, overloaded: bool = False, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # True for HTTP 429: the final error is Overloaded, not ModelUnavailable.
        self.overloaded = overloaded
        # The server's Retry-After, when it gave one.
        self.wait_s = wait_s

    def error(self, tries: int) -> LoupeError:
        if self.overloaded:
            return Overloaded(self.reason, retry_after_s=self.wait_s if self.wait_s is not None else 1.0)
        return ModelUnavailable(f"{self.reason} (after {tries} tr{'y' if tries == 1 else 'ies'})")


class OpenAiVlm(LazyModel):
    """Chat completions with image data URLs against `options.base_url`."""

    def __init__(self, options: VlmOptions = VlmOptions()) -> None:
        url = urlparse(options.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise InvalidInput(
                f"base_url {redact_url(options.base_url)!r} must be an http(s) URL such as "
                "http://localhost:8000/v1 (vLLM) or http://localhost:11434/v1 (Ollama)",
                field="base_url",
            )
        if options.image_format not in ("png", "jpeg"):
            raise InvalidInput(
                f"image_format must be 'png' or 'jpeg', got {options.image_format!r}", field="image_format"
            )
        if not options.model.strip():
            raise InvalidInput("model is empty; give the model name the server serves", field="model")
        self.options = options
        self.url = options.base_url.rstrip("/") + "/chat/completions"
        # For error messages: the URL with its credentials (http://TOKEN@host) as ***.
        self.shown_url = redact_url(self.url)
        super().__init__()
        self._client = None

    @property
    def model_id(self) -> str:
        return f"openai:{self.options.model}"

    def _load(self) -> None:
        """Open the connection pool (no request is sent: the server may start later)."""
        import httpx

        timeout = httpx.Timeout(self.options.timeout_s, connect=self.options.connect_timeout_s)
        self._client = httpx.Client(timeout=timeout, headers=self._headers())

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._unload()

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompt: Prompt, *, max_new_tokens: int | None = None) -> Draft:
        budget = generation_budget(prompt, self.options, max_new_tokens)
        self.load()
        payload = self.request_body(prompt, budget)
        started = time.perf_counter()
        tries = 1 + max(0, self.options.retries)
        for attempt in range(tries):
            try:
                data = self._post(payload)
                break
            except _Retry as retry:
                wait = retry.wait_s if retry.wait_s is not None else self._backoff(attempt)
                if attempt == tries - 1 or wait > self.options.max_backoff_s:
                    raise retry.error(attempt + 1) from retry.__cause__
                time.sleep(wait)
        text, tokens, prompt_tokens = self._parse(data)
        return Draft(
            text=text,
            model_id=self.model_id,
            tokens=tokens,
            seconds=time.perf_counter() - started,
            prompt_tokens=prompt_tokens,
        )

    def request_body(self, prompt: Prompt, max_tokens: int) -> dict:
        """The JSON body: system message, then a user message with image parts before the text."""
        parts = [{"type": "image_url", "image_url": {"url": self._data_url(img.image)}} for img in prompt.pixel_images]
        parts.append({"type": "text", "text": prompt.user})
        return {
            "model": self.options.model,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": parts}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": False,
        }

    # -- HTTP -------------------------------------------------------------------------------
    def _post(self, payload: dict) -> dict:
        import httpx

        where = f"VLM endpoint {self.shown_url}"
        try:
            response = self._client.post(self.url, json=payload)
        except httpx.TimeoutException as exc:
            kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
            limit = self.options.connect_timeout_s if kind == "connect" else self.options.timeout_s
            raise _Retry(
                f"{where} did not {kind} within {limit:g} s; check the server's load or raise timeout_s"
            ) from exc
        except httpx.TransportError as exc:  # refused, reset, DNS, protocol errors
            raise _Retry(
                f"{where} is unreachable ({type(exc).__name__}: {exc}); start the server or fix base_url"
            ) from exc
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except ValueError as exc:
                raise ModelUnavailable(
                    f"{where} answered 200 with a body that is not JSON: {_excerpt(response.text)}"
                ) from exc
        detail = _excerpt(response.text)
        if status == 429:
            wait = _retry_after(response.headers.get("retry-after"))
            raise _Retry(f"{where} is overloaded (HTTP 429: {detail}); retry later", overloaded=True, wait_s=wait)
        if status in RETRY_STATUSES:
            raise _Retry(f"{where} failed with HTTP {status}: {detail}")
        if status in (401, 403):
            raise ModelUnavailable(
                f"{where} refused the API key (HTTP {status}: {detail}); set api_key or the "
                f"{self.options.api_key_env} environment variable"
            )
        if status == 404:
            raise ModelUnavailable(
                f"{where} answered 404 ({detail}): check that base_url ends with /v1 and "
                f"that the server serves model {self.options.model!r}"
            )
        if status in REJECT_STATUSES:
            raise InvalidInput(
                f"{where} rejected the request (HTTP {status}: {detail}); send fewer or smaller "
                "images, a shorter question or a lower max_new_tokens"
            )
        raise ModelUnavailable(f"{where} answered HTTP {status}: {detail}")

    def _parse(self, data: dict) -> tuple[str, int, int]:
        """(text, generated tokens, prompt tokens) of a chat completion."""
        try:
            message = data["choices"][0]["message"]
            content = message.get("content") or ""
            if isinstance(content, list):  # some servers answer with content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            usage = data.get("usage") or {}
            tokens = int(usage.get("completion_tokens") or 0)
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise ModelUnavailable(
                f"VLM endpoint {self.shown_url} answered without choices[0].message: {_excerpt(str(data))}"
            ) from exc
        return str(content).strip(), tokens, prompt_tokens

    def _headers(self) -> dict[str, str]:
        key = self.options.api_key or os.environ.get(self.options.api_key_env, "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _backoff(self, attempt: int) -> float:
        jittered = self.options.backoff_s * 2**attempt * (0.8 + 0.4 * random.random())
        return min(jittered, self.options.max_backoff_s)

    def _data_url(self, image) -> str:
        limit = self.options.max_image_edge or DEFAULT_MAX_IMAGE_EDGE
        if max(image.size) > limit:
            scale = limit / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample=3
            )  # bicubic
        buf = io.BytesIO()
        if self.options.image_format == "jpeg":
            image.convert("RGB").save(buf, format="JPEG", quality=90)
        else:
            image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB").save(buf, format="PNG")
        encoded = base64.b64encode(buf.getvalue()).decode("ascii")
        return f"data:image/{self.options.image_format};base64,{encoded}"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date), None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
