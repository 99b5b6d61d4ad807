"""The optional second stage of search: rerank a first-stage page, then diversify it (MMR).

A reranker scores (query, text) pairs more carefully than the first stage can: a remote rerank
server (Cohere, Jina, Infinity or Hugging Face TEI over HTTP) or a cross-encoder folder run
in-process (transformers, or onnxruntime when the folder holds `model.onnx`).

Reranking is an improvement, never a dependency: `rerank()` never raises. A reranker that is
slow, down or answers nonsense leaves the first-stage order as it was, and the result's
`status` says why, so the caller can report it next to the hits.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np

from encoders.common.errors import InvalidInput
from encoders.common.urls import MASK, redact_url
from encoders.loading.lazy import LazyModel

log = logging.getLogger(__name__)

KINDS = ("none", "http", "cross-encoder")
HTTP_APIS = ("cohere", "tei")
# A rerank answer for a few hundred documents is a few KiB; anything near this is not one.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Pairs per forward pass of the in-process cross-encoder; the deadline is checked between batches.
CROSS_ENCODER_BATCH = 16


@dataclass(frozen=True)
class RerankConfig:
    """How one collection reranks (from settings), overridable per request."""

    # "none" | "http" | "cross-encoder" (MMR is separate: see `mmr`).
    kind: str = "none"
    # http: the endpoint URL with its full path, e.g. http://host:7997/v1/rerank.
    url: str = ""
    # http: "cohere" (documents -> results[].relevance_score) or "tei" (texts -> [{index, score}]).
    api: str = "cohere"
    # http: the model name sent (omitted when empty); cross-encoder: the local model folder.
    model: str = ""
    # http: sent as "Authorization: Bearer ..." when set; never logged nor put in an error.
    api_key: str = ""
    # At most this many first-stage hits (those with text, from the top) are reranked.
    candidates: int = 50
    # Deadline of one whole rerank call, in seconds.
    timeout_s: float = 2.0
    # Each document (and the query) is cut to this many characters before scoring.
    max_chars: int = 2000


class RerankFailed(Exception):
    """The reranker gave no usable scores; `reason` says why (no secrets in it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RerankConfigError(InvalidInput, ValueError):
    """A rerank config that cannot work: an InvalidInput (so the service maps it to a client
    error at its one boundary) that is also a ValueError for library callers."""


class Reranker(Protocol):
    # What scored the hits, for logs and results: "http:cohere:host:port/model" or
    # "cross-encoder:<folder name>". Never holds a key.
    identity: str

    def load(self) -> Reranker:
        """Open the client or load the weights now (otherwise the first `score` does)."""

    def score(self, query: str, documents: list[str], timeout_s: float) -> list[float]:
        """One finite score per document, in the documents' order; higher is more relevant.
        Raises RerankFailed on a timeout or an unusable answer."""


@dataclass(frozen=True)
class Reranked:
    """The outcome of `rerank` on one page of hits."""

    # The new order of the input hits, as indices into the input list: a full permutation.
    order: list[int]
    # The rerank score of each input hit; None for a hit that was not scored.
    scores: list[float | None]
    # "reranked" | "skipped: <why>" | "failed: <why>".
    status: str
    # Wall time of the whole call.
    seconds: float


def make_reranker(config: RerankConfig) -> Reranker | None:
    """The reranker a config names, or None for kind "none". Nothing is loaded or contacted
    yet. A config that cannot work raises RerankConfigError saying what to fix."""
    _check_limits(config)
    if config.kind == "none":
        return None
    if config.kind == "http":
        return HttpReranker(config)
    if config.kind == "cross-encoder":
        return CrossEncoderReranker(config.model)
    raise RerankConfigError(f"unknown rerank kind {config.kind!r}; valid kinds: {', '.join(KINDS)}", field="kind")


def _check_limits(config: RerankConfig) -> None:
    if isinstance(config.candidates, bool) or not isinstance(config.candidates, int) or config.candidates < 1:
        raise RerankConfigError(
            f"candidates must be a whole number >= 1, got {config.candidates!r}", field="candidates"
        )
    if not (isinstance(config.timeout_s, int | float) and math.isfinite(config.timeout_s) and config.timeout_s > 0):
        raise RerankConfigError(
            f"timeout_s must be a number of seconds > 0, got {config.timeout_s!r}", field="timeout_s"
        )
    if isinstance(config.max_chars, bool) or not isinstance(config.max_chars, int) or config.max_chars < 1:
        raise RerankConfigError(f"max_chars must be a whole number >= 1, got {config.max_chars!r}", field="max_chars")


def rerank(reranker: Reranker, query: str, texts: list[str | None], config: RerankConfig) -> Reranked:
    """Rerank a page of hits by their texts; never raises.

    The first `config.candidates` hits that have text are scored; they are reordered among the
    positions they held (by score, ties by original position), so hits without text (e.g. an
    uncaptioned image) and hits beyond the bound keep their exact places. On any failure the
    order is the input order and `status` says "failed: ...".
    """
    started = time.perf_counter()
    unchanged = list(range(len(texts)))
    none: list[float | None] = [None] * len(texts)

    def done(order: list[int], scores: list[float | None], status: str) -> Reranked:
        return Reranked(order=order, scores=scores, status=status, seconds=time.perf_counter() - started)

    if not query or not query.strip():
        return done(unchanged, none, "skipped: empty query")
    sent = [i for i, text in enumerate(texts) if text and text.strip()][: config.candidates]
    if not sent:
        return done(unchanged, none, "skipped: no hit has text")
    documents = [texts[i][: config.max_chars] for i in sent]
    try:
        scores = _checked(reranker.score(query[: config.max_chars], documents, config.timeout_s), len(documents))
    except RerankFailed as exc:
        log.warning("rerank by %s failed: %s", reranker.identity, exc.reason)
        return done(unchanged, none, f"failed: {exc.reason}")
    except Exception as exc:  # a reranker bug must not fail the search it was meant to improve
        log.exception("rerank by %s raised", reranker.identity)
        return done(unchanged, none, f"failed: {type(exc).__name__} in {reranker.identity}")
    best_first = sorted(range(len(sent)), key=lambda j: (-scores[j], j))
    order = list(unchanged)
    for slot, j in zip(sent, best_first):
        order[slot] = sent[j]
    by_hit = list(none)
    for i, s in zip(sent, scores):
        by_hit[i] = s
    return done(order, by_hit, "reranked")


def _checked(scores: list[float], expected: int) -> list[float]:
    """The scores as floats, if there is one finite score per document (a custom Reranker
    is held to the same contract as the built-in ones)."""
    scores = [float(s) for s in scores]
    if len(scores) != expected:
        raise RerankFailed(f"got {len(scores)} scores for {expected} documents")
    if not all(math.isfinite(s) for s in scores):
        raise RerankFailed("got a score that is not a finite number")
    return scores


# -- HTTP rerank servers ---------------------------------------------------------------------
class HttpReranker(LazyModel):
    """A rerank server: Cohere-style (Cohere, Jina, Infinity, vLLM) or Hugging Face TEI.

    Sends the shape `config.api` names and accepts either answer shape. One `httpx.Client`
    (thread-safe) is shared by all calls; redirects are not followed (a redirect could carry
    the bearer key elsewhere) and answers over MAX_RESPONSE_BYTES are refused.
    """

    def __init__(self, config: RerankConfig) -> None:
        parts = _split_url(config.url)
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise RerankConfigError(
                f"rerank url {redact_url(config.url)!r} must be an http(s) URL with the full path, such as "
                "http://localhost:7997/v1/rerank (Cohere-style) or http://localhost:8080/rerank (TEI)",
                field="url",
            )
        if config.api not in HTTP_APIS:
            raise RerankConfigError(
                f"unknown rerank api {config.api!r}; valid apis: {', '.join(HTTP_APIS)}", field="api"
            )
        super().__init__()
        self.config = config
        self.shown_url = redact_url(config.url)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.identity = f"http:{config.api}:{host}" + (f"/{config.model}" if config.model else "")
        self._client = None

    @property
    def model_id(self) -> str:
        return self.identity

    def _load(self) -> None:
        """Open the connection pool (nothing is sent: the server may start later)."""
        import httpx

        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self._client = httpx.Client(headers=headers, follow_redirects=False)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._unload()

    def request_body(self, query: str, documents: list[str]) -> dict:
        if self.config.api == "tei":
            # TEI cuts over-long pairs to the model's length instead of answering 413.
            return {"query": query, "texts": documents, "raw_scores": False, "truncate": True}
        body = {"query": query, "documents": documents, "top_n": len(documents), "return_documents": False}
        return {"model": self.config.model, **body} if self.config.model else body

    def score(self, query: str, documents: list[str], timeout_s: float) -> list[float]:
        if not documents:
            return []
        self.load()
        try:
            data = self._post(self.request_body(query, documents), timeout_s)
            return _scores_from_answer(data, len(documents))
        except RerankFailed as exc:  # reasons quote the server's answer, which may echo the key
            raise RerankFailed(self._scrub(exc.reason)) from None

    def _post(self, body: dict, timeout_s: float) -> object:
        import httpx

        deadline = time.monotonic() + timeout_s
        where = f"rerank server {self.shown_url}"
        try:
            with self._client.stream("POST", self.config.url, json=body, timeout=httpx.Timeout(timeout_s)) as response:
                status = response.status_code
                if 300 <= status < 400:
                    raise RerankFailed(f"{where} answered HTTP {status}, a redirect (not followed): give the final URL")
                if status != 200:
                    detail = _excerpt(next(response.iter_bytes(), b""))  # the start is enough to say why
                    raise RerankFailed(f"{where} answered HTTP {status}: {detail}")
                raw = _read_capped(response, deadline, timeout_s, where)
        except httpx.TimeoutException:
            raise RerankFailed(f"timed out after {timeout_s:g} s waiting for {where}") from None
        except httpx.HTTPError as exc:  # refused, reset, DNS, protocol errors
            raise RerankFailed(f"{where} is unreachable ({type(exc).__name__})") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise RerankFailed(f"{where} answered with a body that is not JSON: {_excerpt(raw)}") from None

    def _scrub(self, text: str) -> str:
        """The text without the api key, should a server have echoed it back."""
        key = self.config.api_key
        return text.replace(key, MASK) if key else text


def _split_url(url: str):
    """The parts of an http(s) URL, or None for one that cannot be used (e.g. a port that is
    not a number, which urlsplit only notices when asked for the port)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    return parts if url else None


def _read_capped(response, deadline: float, timeout_s: float, where: str) -> bytes:
    """The body, refusing one over MAX_RESPONSE_BYTES or one still arriving at the deadline
    (httpx's timeouts bound each read, not a body trickled out slowly)."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise RerankFailed(f"{where} answered {int(declared)} bytes, over the {MAX_RESPONSE_BYTES} byte limit")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise RerankFailed(f"{where} answered over the {MAX_RESPONSE_BYTES} byte limit")
        if time.monotonic() > deadline:
            raise RerankFailed(f"timed out after {timeout_s:g} s reading the answer of {where}")
        chunks.append(chunk)
    return b"".join(chunks)


def _scores_from_answer(data: object, expected: int) -> list[float]:
    """Scores in document order from {"results": [{index, relevance_score}]} (Cohere-style)
    or [{index, score}] (TEI): one per document, each index once, every score finite."""
    results = data.get("results") if isinstance(data, dict) else data
    if not isinstance(results, list):
        raise RerankFailed(f"answer has no results list: {_excerpt(json.dumps(data)[:200])}")
    if len(results) != expected:
        raise RerankFailed(f"answer has {len(results)} results for {expected} documents")
    scores: list[float | None] = [None] * expected
    for item in results:
        if not isinstance(item, dict):
            raise RerankFailed("answer has a result that is not an object")
        index = item.get("index")
        score = item.get("relevance_score", item.get("score"))
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < expected:
            raise RerankFailed(f"answer has index {index!r}, outside 0..{expected - 1}")
        if scores[index] is not None:
            raise RerankFailed(f"answer has index {index} twice")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise RerankFailed(f"answer has score {score!r} for index {index}, not a finite number")
        scores[index] = float(score)
    return scores


def _excerpt(raw: bytes | str, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


# -- In-process cross-encoder ----------------------------------------------------------------
class CrossEncoderReranker(LazyModel):
    """A cross-encoder folder (config.json, tokenizer files, weights) scored on CPU.

    Runs transformers' AutoModelForSequenceClassification, or onnxruntime when the folder
    holds `model.onnx` (inputs input_ids, attention_mask and, if the graph has it,
    token_type_ids). The score is the raw relevance logit: with one output label that logit,
    with two (irrelevant, relevant) their difference, the log-odds of relevant. Raw logits,
    not sigmoids, because a sigmoid squashes the top of a confident model into ties at 1.0.

    Loads once, lazily and under a lock; scoring is serialised by a lock too (a fast
    tokenizer raises "Already borrowed" when two threads use it at once).
    """

    def __init__(self, folder: str) -> None:
        path = Path(folder).expanduser() if folder else None
        if path is None or not path.is_dir():
            raise RerankConfigError(
                f"cross-encoder folder {folder!r} does not exist; set model to a local folder saved with "
                "save_pretrained (config.json, tokenizer files and weights, or model.onnx)",
                field="model",
            )
        if not (path / "config.json").is_file():
            raise RerankConfigError(
                f"cross-encoder folder {folder!r} has no config.json; it must be saved with save_pretrained",
                field="model",
            )
        super().__init__()
        self.path = path
        self.identity = f"cross-encoder:{path.name}"
        self.runtime = "onnx" if (path / "model.onnx").is_file() else "torch"
        self._score_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.identity

    def _load(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        labels = getattr(config, "num_labels", 1)
        if labels not in (1, 2):
            raise RerankFailed(f"{self.identity} has {labels} output labels; a cross-encoder has 1 or 2")
        self._labels = labels
        self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.max_length = _max_tokens(config, self._tokenizer)
        if self.runtime == "onnx":
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(self.path / "model.onnx"), providers=["CPUExecutionProvider"])
            self._inputs = {i.name for i in self._session.get_inputs()}
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(self.path, local_files_only=True)
            self._model = model.eval()

    def score(self, query: str, documents: list[str], timeout_s: float) -> list[float]:
        if not documents:
            return []
        self.load()
        deadline = time.monotonic() + timeout_s
        scores: list[float] = []
        with self._score_lock:
            for start in range(0, len(documents), CROSS_ENCODER_BATCH):
                if start and time.monotonic() > deadline:  # between batches: the first always runs
                    raise RerankFailed(
                        f"timed out after {timeout_s:g} s ({start} of {len(documents)} documents scored)"
                    )
                batch = documents[start : start + CROSS_ENCODER_BATCH]
                scores.extend(self._score_batch(query, batch))
        return scores

    def _score_batch(self, query: str, documents: list[str]) -> list[float]:
        tensors = "np" if self.runtime == "onnx" else "pt"
        encoded = self._tokenizer(
            [query] * len(documents),
            documents,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors=tensors,
        )
        if self.runtime == "onnx":
            feed = {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items() if name in self._inputs}
            logits = np.asarray(self._session.run(None, feed)[0], dtype=np.float64)
        else:
            import torch

            with torch.inference_mode():
                logits = self._model(**encoded).logits.double().numpy()
        logits = logits.reshape(len(documents), -1)
        relevance = logits[:, 0] if self._labels == 1 else logits[:, 1] - logits[:, 0]
        return [float(s) for s in relevance]


def _max_tokens(config, tokenizer) -> int:
    """Tokens a pair may have: the positions the model embeds (RoBERTa-style models spend two
    on their padding offset), or the tokenizer's own limit when lower. A tokenizer without a
    limit reports a huge sentinel (1e30), which is ignored."""
    positions = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2
    own = getattr(tokenizer, "model_max_length", None)
    return min(positions, own) if own and own < 1_000_000 else positions
