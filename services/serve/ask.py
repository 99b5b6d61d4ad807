"""The Answerer: VLM + OCR + guardrail pipeline, retrieving context through the other deployments."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

from PIL import Image

from encoders.text.keywords import query_vector
from indexing.ingest import TextReader
from indexing.query import SearchQuery
from indexing.types import Modality, SearchMode
from lmm.pipeline import AskOptions, AskPipeline
from lmm.prompts import prompt_digest
from lmm.types import Answer, ContextImage
from services.cache import open_cache
from services.config import LoupeSettings
from services.rpc.faces import EncoderFace, IndexFace
from services.serve import calllog, metrics, tracing

log = logging.getLogger("loupe.ask")

# Shown to the model for retrieved items whose pixels Loupe may not read (their text still is).
_NO_PIXELS = Image.new("RGB", (32, 32), (128, 128, 128))


class AnswerWorker:
    def __init__(self, settings: LoupeSettings, encoder: EncoderFace, index: IndexFace) -> None:
        from lmm.models import VlmOptions, create_vlm
        from lmm.prompts import load_prompt, render

        self._info = None  # the Encoder's EncoderInfo, asked once (`_encoder_info`)

        a = settings.ask
        self.vlm = create_vlm(
            VlmOptions(
                backend=a.backend,
                model=settings.vlm_model,
                device=a.device,
                max_new_tokens=a.max_new_tokens,
                base_url=a.base_url,
            )
        )
        getattr(self.vlm, "load", lambda: None)()
        # Every uploaded screenshot is read (no screenshot test: the user sent it to be read).
        self.ocr = TextReader("always", settings.ocr.engine, settings.ocr.threads).load()
        self.ocr_cache = open_cache(settings, "ocr")
        self.encoder, self.index = encoder, index
        self.modalities = tuple(Modality(m) for m in a.retrieval_modalities)
        self.min_score = a.retrieval_min_score
        # On a calibrated collection this floor replaces the raw one (indexing.calibration).
        self.min_confidence = settings.calibration.min_confidence
        self.roots = [Path(r).expanduser().resolve() for r in a.image_roots]
        # No stored image is larger than an upload may be: a bigger file cannot be one.
        self.max_image_bytes = settings.limits.image_max_bytes
        template = load_prompt(a.prompt)
        # Everything besides the request that an answer depends on: a cached answer is keyed by it.
        self._identity = {
            "vlm": self.vlm.model_id,
            "prompt": template.version,
            "prompt_digest": template.digest,
            "ask": a.model_dump(mode="json"),
            "ocr": settings.ocr.model_dump(mode="json"),
            "min_confidence": settings.calibration.min_confidence,
            "limits": [settings.limits.image_max_bytes, settings.limits.image_max_pixels],
        }
        options = AskOptions(
            max_images=a.max_images,
            max_question_chars=a.max_question_chars,
            max_answer_chars=a.max_answer_chars,
            max_new_tokens=a.max_new_tokens,
            max_attempts=a.max_attempts,
            blocked_words=tuple(a.blocked_words),
            out_of_scope_topics=tuple(a.out_of_scope_topics),
            answer_pii=a.answer_pii,
            max_image_bytes=settings.limits.image_max_bytes,
            max_pixels=settings.limits.image_max_pixels,
        )
        self.pipeline = AskPipeline(
            self.vlm,
            ocr=self._read,
            retriever=self._retrieve,
            prompt_renderer=lambda q, images: render(template, q, images),
            options=options,
            judge=self._judge(a),
            step_hook=lambda step: tracing.span(f"ask_{step}"),
        )

    def _judge(self, a):
        from lmm.judge import Judge
        from lmm.models import VlmOptions, create_vlm

        if not a.judge:
            return None
        if a.judge == "same":
            return Judge(self.vlm)
        model = create_vlm(
            VlmOptions(
                backend=a.judge,
                model=a.judge_model or a.model or self.vlm.model_id,
                device=a.device,
                max_new_tokens=8,
                base_url=a.judge_base_url,
            )
        )
        getattr(model, "load", lambda: None)()
        return Judge(model)

    @property
    def model_id(self) -> str:
        return self.vlm.model_id

    def identity(self) -> dict:
        return self._identity

    async def ask(
        self, question: str, images: list[bytes], k: int, retrieval: SearchQuery, reveal_retrieved: bool = False
    ) -> Answer:
        """`reveal_retrieved`: the caller may see personal data in stored items (services.gateway.redact)."""
        with metrics.step("ask"):
            answer = await self.pipeline.ask_async(
                question, images, k, filters=retrieval, reveal_retrieved=reveal_retrieved
            )
        metrics.answer(answer)
        # One line per answer; the question only with its personal data masked.
        log.info(
            "ask",
            extra={
                "fields": {
                    "question": calllog.masked(question),
                    "verdict": answer.verdict.value,
                    "failed_guards": [g.guard for g in answer.guards if not g.passed],
                    "model": answer.model_id,
                    "prompt_version": answer.prompt_version,
                    "prompt_digest": prompt_digest(answer.prompt_version),
                    "tokens_in": answer.tokens_in,
                    "tokens_out": answer.tokens_out,
                    "attempts": answer.attempts,
                    "citations": len(answer.citations),
                    "timings_s": {k: round(v, 4) for k, v in sorted(answer.timings.items())},
                }
            },
        )
        return answer

    async def _retrieve(self, question: str, k: int, filters: SearchQuery) -> list[ContextImage]:
        """Context for the question: indexed images, texts and transcript segments found with the
        (masked) question in the request's mode, above a relevance floor, in one call to the
        index: the confidence floor on a calibrated collection, else a raw cosine floor on the
        dense side (in hybrid mode a keyword hit shares the question's words and stays)."""
        query = replace(
            filters,
            limit=k,
            offset=0,
            modalities=self.modalities,
            score_threshold=self.min_score if filters.mode != SearchMode.KEYWORD.value else None,
            min_confidence=self.min_confidence,
            text=question,
        )
        info = await self._encoder_info()
        vector = (await self.encoder.encode_texts([question])).vectors[0] if query.needs_vector else None
        query = query.with_vectors(vector, query_vector(question) if query.needs_keywords else None)
        found = await self.index.search(info.schema(), query)
        return [self._context_item(p) for p, _ in found.hits]

    async def _encoder_info(self):
        """The CLIP model's identity: fixed for the app's life, so asked of the Encoder once."""
        if self._info is None:
            self._info = await self.encoder.info()
        return self._info

    def _read(self, image: Image.Image) -> str:
        """An upload's OCR text, cached by its pixels and the reader's identity: a new question
        about the same screenshot does not read it again."""
        parts = ("ocr-pixels", image.mode, image.size, hashlib.sha256(image.tobytes()).digest(), self.ocr.identity)
        text = self.ocr_cache.get(*parts)
        if text is None:
            text = self.ocr.read(image)
            self.ocr_cache.put(text, *parts)
        return text

    def _context_item(self, p: dict) -> ContextImage:
        modality = p.get("modality") or Modality.IMAGE.value
        pixels = self._pixels(p) if modality == Modality.IMAGE.value else _NO_PIXELS
        return ContextImage(
            id=p["id"],
            image=pixels,
            ocr_text=p.get("text") or "",
            source=(p.get("sources") or [""])[0],
            modality=modality,
            start_s=p.get("start_s"),
            end_s=p.get("end_s"),
        )

    def _pixels(self, payload: dict) -> Image.Image:
        """The item's image when a source is its own file under an allowed root, else a grey
        tile (the item then counts by its stored text alone)."""
        from encoders.image.decode import decode_image

        for source in payload.get("sources") or ():
            data = self._own_file(source, payload.get("sha256"))
            if data is None:
                continue
            try:
                return decode_image(data).image
            except Exception:  # unreadable now: fall back to the text
                continue
        return _NO_PIXELS

    def _own_file(self, source: str, sha256: object) -> bytes | None:
        """The bytes of `source` when it is a file under an allowed root (symlinks resolved
        first, so a link cannot lead out) whose sha256 is the item's stored content hash.

        `sources` is whatever the indexing caller wrote: under a root shared by tenants, one
        could name another's file. Only the bytes the item was indexed from are its own."""
        if not isinstance(sha256, str) or not sha256:
            return None
        try:
            path = Path(source.removeprefix("file://")).expanduser().resolve()
        except (OSError, RuntimeError):  # unknown ~user, a symlink loop
            return None
        if not any(path.is_relative_to(root) for root in self.roots):
            return None
        try:
            if not path.is_file() or path.stat().st_size > self.max_image_bytes:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        # The bytes read are the bytes checked and decoded: a file swapped meanwhile is not used.
        if hashlib.sha256(data).hexdigest() != sha256.lower():
            log.info("ask: a source of an item is not the file it was indexed from; using its text")
            return None
        return data
