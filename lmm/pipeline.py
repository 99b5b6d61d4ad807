"""Ask: a question about screenshots in, a checked answer out.

    request guards -> OCR of uploads -> retrieval -> context guards (mask, neutralise)
      -> prompt -> draft -> output guards -> (retry with a stricter note, up to max_attempts)
      -> Answer (answered / abstained / blocked)

Malformed requests (too many or too large images, an empty question) raise `InvalidInput`;
requests that must not be answered (only an injection, an out-of-scope topic) come back
`blocked`; drafts that fail the output guards are redrafted, then replaced by an abstention.
Every text that leaves, abstentions and refusals included, has passed the output PII guard,
and placeholders are restored only for the values this request itself contained.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from encoders.common.errors import InvalidInput
from encoders.image.decode import ImageLimits
from lmm.guards.answer import (
    AttributionGuard,
    ClaimConsistencyGuard,
    InstructionGuard,
    PromptLeakGuard,
    supporting_snippet,
)
from lmm.guards.base import ChainRun, GuardChain, OnFail
from lmm.guards.input import (
    ContextState,
    ImageBytesGuard,
    ImageCountGuard,
    ImageDecodeGuard,
    ImagePixelsGuard,
    OcrInjectionGuard,
    OcrLengthGuard,
    OcrPiiGuard,
    QuestionInjectionGuard,
    QuestionLengthGuard,
    QuestionPiiGuard,
    RequestState,
    TopicGuard,
    Upload,
)
from lmm.guards.output import (
    BlockedWordsGuard,
    CitationGuard,
    DraftState,
    GroundingGuard,
    LengthGuard,
    OutputPiiGuard,
    WellFormedGuard,
    is_abstention,
)
from lmm.injection import THRESHOLD
from lmm.judge import Judge
from lmm.pii import ANSWER_PII_POLICIES, Masker
from lmm.types import Answer, Citation, ContextImage, GuardResult, Prompt, Verdict, VisionLanguageModel

UploadLike = ContextImage | Image.Image | bytes
Ocr = Callable[[Image.Image], str]
# retriever(question_masked, k, filters=...) -> context images, or an awaitable of them.
Retriever = Callable[..., Sequence[ContextImage] | Awaitable[Sequence[ContextImage]]]
PromptRenderer = Callable[[str, Sequence[ContextImage]], Prompt]
STEPS = ("input_guards", "ocr", "retrieval", "draft", "output_guards", "judge", "total")
JUDGE_HINT = 'Say only what the context shows; if it does not contain the answer, say "I don\'t know".'


@dataclass(frozen=True)
class AskOptions:
    # Images one question may carry; more is InvalidInput.
    max_images: int = 4
    # Largest encoded upload in bytes, checked before parsing.
    max_image_bytes: int = 10 * 1024 * 1024
    # Largest width*height of an upload (read from the header for bytes); at most PIL's bomb limit.
    max_pixels: int = 25_000_000
    # Longest side of an upload in pixels.
    max_image_side: int = 12_000
    # Context images in one prompt, uploads first then retrieved (retrieval is cut to fit).
    max_context_images: int = 8
    # Longest question in characters (after trimming); empty is InvalidInput too.
    max_question_chars: int = 2_000
    # OCR text kept per image, for the prompt and for grounding alike.
    max_ocr_chars: int = 4_000
    # Longest answer; longer drafts are cut at a sentence boundary (or redrafted when they cannot be).
    max_answer_chars: int = 1_500
    # Passed to the model for each draft.
    max_new_tokens: int = 256
    # Drafts tried per question (1 = no retry); after the last failure Ask abstains.
    max_attempts: int = 2
    # Words or phrases an answer must not contain (whole words, any case).
    blocked_words: tuple[str, ...] = ()
    # Keywords or phrases that make a question out of scope (blocked, with the topic named).
    out_of_scope_topics: tuple[str, ...] = ()
    # With context images, an answer must be attributed to at least one: its own citations when
    # they support it, else the items whose text does (found by the attribution guard); facts
    # are then checked against those items only. False: facts are checked against the whole context.
    require_citation: bool = True
    # Personal data in answers: "strict" (the default) lets a kind (e-mail, phone, IBAN, IP)
    # through only when the question asks for that kind and the request itself contained the
    # value; "request" lets through any value the request contained. Card numbers never leave
    # in full: at most their last four digits. Secrets never leave.
    answer_pii: str = "strict"
    # Injection score at which a question or an image's text counts as carrying instructions.
    injection_threshold: float = THRESHOLD
    # What an abstention says to the asker (it passes the output PII guard too).
    abstain_text: str = (
        "I don't know: I could not find an answer I can verify in the screenshots and documents provided."
    )
    # What a blocked request says; {reason} is the blocking guard's reason.
    blocked_text: str = "I can't answer this request: {reason}."

    def __post_init__(self) -> None:
        for name in ("blocked_words", "out_of_scope_topics"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        counts = (
            "max_images",
            "max_image_bytes",
            "max_pixels",
            "max_image_side",
            "max_context_images",
            "max_question_chars",
            "max_ocr_chars",
            "max_answer_chars",
            "max_new_tokens",
            "max_attempts",
        )
        bad = [f"{n}={getattr(self, n)}" for n in counts if getattr(self, n) < 1]
        if bad:
            raise ValueError(f"AskOptions limits must be at least 1: {', '.join(bad)}")
        if self.answer_pii not in ANSWER_PII_POLICIES:
            raise ValueError(f"answer_pii must be one of {', '.join(ANSWER_PII_POLICIES)}; got {self.answer_pii!r}")
        if not 0.0 < self.injection_threshold <= 1.0:
            raise ValueError(f"injection_threshold must be in (0, 1]; got {self.injection_threshold}")
        self.image_limits()  # raises if max_pixels is above PIL's bomb limit

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_pixels, max_side=self.max_image_side)


def request_guards(o: AskOptions) -> GuardChain[RequestState]:
    return GuardChain(
        [
            ImageCountGuard(o.max_images),
            ImageBytesGuard(o.max_image_bytes),
            ImageDecodeGuard(o.image_limits()),
            ImagePixelsGuard(o.max_pixels, o.max_image_side),
            QuestionLengthGuard(o.max_question_chars),
            QuestionPiiGuard(),
            QuestionInjectionGuard(o.injection_threshold),
            TopicGuard(o.out_of_scope_topics),
        ]
    )


def context_guards(o: AskOptions) -> GuardChain[ContextState]:
    return GuardChain([OcrLengthGuard(o.max_ocr_chars), OcrPiiGuard(), OcrInjectionGuard(o.injection_threshold)])


def output_guards(o: AskOptions) -> GuardChain[DraftState]:
    return GuardChain(
        [
            WellFormedGuard(),
            CitationGuard(),
            OutputPiiGuard(o.answer_pii),
            InstructionGuard(),
            PromptLeakGuard(),
            *([AttributionGuard()] if o.require_citation else []),
            GroundingGuard(uncited_uses_all_context=not o.require_citation),
            ClaimConsistencyGuard(),
            BlockedWordsGuard(o.blocked_words),
            LengthGuard(o.max_answer_chars),
        ]
    )


def final_guards(o: AskOptions) -> GuardChain[DraftState]:
    """For the texts Ask writes itself (abstentions, refusals): no facts to check, but no leaks either."""
    return GuardChain([OutputPiiGuard(o.answer_pii)])


class _Clock:
    """Seconds per step, summed; `hook(step)` (a context manager) wraps each step, e.g. a span."""

    def __init__(self, hook: Callable[[str], AbstractContextManager] | None = None) -> None:
        self.start = time.perf_counter()
        self.timings = dict.fromkeys(STEPS, 0.0)
        self.hook = hook or (lambda step: nullcontext())

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            with self.hook(step):
                yield
        finally:
            self.timings[step] += time.perf_counter() - t0

    def done(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.start
        return dict(self.timings)


@dataclass
class _Request:
    """Everything one ask() accumulates."""

    masker: Masker = field(default_factory=Masker)
    clock: _Clock = field(default_factory=_Clock)
    results: list[GuardResult] = field(default_factory=list)
    question: str = ""
    context: list[ContextImage] = field(default_factory=list)
    prompt_version: str = ""
    model_id: str = ""
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


class AskPipeline:
    def __init__(
        self,
        model: VisionLanguageModel,
        ocr: Ocr | None = None,
        retriever: Retriever | None = None,
        prompt_renderer: PromptRenderer | None = None,
        options: AskOptions = AskOptions(),
        judge: Judge | None = None,
        step_hook: Callable[[str], AbstractContextManager] | None = None,
    ) -> None:
        """`prompt_renderer(question, images) -> Prompt`; None uses `lmm.prompts.render` with its default
        template. `judge`: an optional second opinion on every answer that passed the guards.
        `step_hook(step)`: a context manager around each step (input_guards, ocr, retrieval, draft,
        output_guards), e.g. a trace span."""
        self.model, self.ocr, self.retriever, self.options, self.judge = model, ocr, retriever, options, judge
        self.step_hook = step_hook
        self.prompt_renderer = prompt_renderer or _default_renderer()
        self.request_guards, self.context_guards = request_guards(options), context_guards(options)
        self.output_guards, self.final_guards = output_guards(options), final_guards(options)

    def ask(
        self,
        question: str,
        uploads: Sequence[UploadLike] = (),
        retrieve_k: int = 0,
        *,
        filters: Any = None,
        reveal_retrieved: bool = False,
    ) -> Answer:
        """Synchronous `ask_async`; inside a running event loop, await `ask_async` instead."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("AskPipeline.ask() was called from a running event loop; use `await ask_async()`")
        return asyncio.run(
            self.ask_async(question, uploads, retrieve_k, filters=filters, reveal_retrieved=reveal_retrieved)
        )

    async def ask_async(
        self,
        question: str,
        uploads: Sequence[UploadLike] = (),
        retrieve_k: int = 0,
        *,
        filters: Any = None,
        reveal_retrieved: bool = False,
    ) -> Answer:
        """`reveal_retrieved`: the retrieved items' personal data counts as the asker's own (the
        caller may see it), so the answer policy may let it through; otherwise it never leaves."""
        req = _Request(model_id=self.model.model_id, clock=_Clock(self.step_hook))
        with req.clock("input_guards"):
            state = RequestState(question, [_as_upload(u, i) for i, u in enumerate(uploads)], req.masker)
            run = self._record(req, self.request_guards.run(state))
        if not run.passed:
            assert run.stopped_by is not None
            if run.on_fail is OnFail.REJECT:
                raise InvalidInput(run.stopped_by.reason, field=state.fault_field)
            return self._own_text(req, self.options.blocked_text.format(reason=run.stopped_by.reason), Verdict.BLOCKED)
        req.question = state.question
        with req.clock("ocr"):
            uploaded = [await self._read(req, up, n) for n, up in enumerate(state.uploads, start=1)]
        with req.clock("retrieval"):
            retrieved = await self._retrieve(req.question, retrieve_k, filters, {u.id for u in uploaded})
        with req.clock("input_guards"):
            context = ContextState(
                uploaded + retrieved[: max(0, self.options.max_context_images - len(uploaded))],
                req.masker,
                reveal_retrieved,
            )
            self._record(req, self.context_guards.run(context))
        req.context = context.images
        prompt = self.prompt_renderer(req.question, tuple(req.context))
        req.prompt_version = prompt.version
        return await self._draft(req, prompt)

    async def _draft(self, req: _Request, prompt: Prompt) -> Answer:
        current = prompt
        for attempt in range(1, self.options.max_attempts + 1):
            req.attempts = attempt
            with req.clock("draft"):
                draft = await asyncio.to_thread(
                    self.model.generate, current, max_new_tokens=self.options.max_new_tokens
                )
            req.model_id = draft.model_id or req.model_id
            req.tokens_in += draft.prompt_tokens
            req.tokens_out += draft.tokens
            with req.clock("output_guards"):
                state = DraftState(draft.text, req.question, req.context, req.masker, system=prompt.system)
                run = self._record(req, self.output_guards.run(state))
            failed, hint = run.stopped_by, getattr(run.stopping_guard, "retry_hint", "")
            if run.passed:
                abstained = is_abstention(state.text)
                if self.judge is not None and not abstained:
                    with req.clock("judge"):
                        judged = await asyncio.to_thread(self.judge.check, req.question, state.text, req.context)
                    req.results.append(judged)
                    failed, hint = (None if judged.passed else judged), JUDGE_HINT
                if failed is None:
                    verdict = Verdict.ABSTAINED if abstained else Verdict.ANSWERED
                    return self._answer(req, state.text, tuple(state.citations), verdict)
            assert failed is not None
            current = replace(
                prompt, user=f"{prompt.user}\n\nYour previous answer was rejected: {failed.reason}. {hint}".rstrip()
            )
        last = failed
        req.results.append(
            GuardResult(
                "pipeline.abstain",
                False,
                f"{req.attempts} draft(s) failed the output guards; the last failed {last.guard}: {last.reason}",
                "abstained",
            )
        )
        return self._own_text(req, self.options.abstain_text, Verdict.ABSTAINED)

    def _own_text(self, req: _Request, text: str, verdict: Verdict) -> Answer:
        """An abstention or refusal: checked by the final guards like any other text that leaves."""
        with req.clock("output_guards"):
            state = DraftState(text, req.question, req.context, req.masker)
            self._record(req, self.final_guards.run(state))
        return self._answer(req, state.text, (), verdict)

    def _answer(self, req: _Request, text: str, citations: tuple[str, ...], verdict: Verdict) -> Answer:
        return Answer(
            text=req.masker.unmask(text),
            citations=citations,
            verdict=verdict,
            guards=tuple(req.results),
            model_id=req.model_id,
            prompt_version=req.prompt_version,
            timings=req.clock.done(),
            attempts=req.attempts,
            cited=self._cited(req, text, citations),
            tokens_in=req.tokens_in,
            tokens_out=req.tokens_out,
        )

    def _cited(self, req: _Request, text: str, citations: tuple[str, ...]) -> tuple[Citation, ...]:
        """Each cited item with the line of its text that supports the answer; the snippet obeys
        the same personal-data policy as the answer."""
        items = {img.id: img for img in req.context}
        out = []
        for cid in citations:
            img = items[cid]
            state = DraftState("", req.question, req.context, req.masker)
            state.text = supporting_snippet(text, state.visible_text(img))
            self.final_guards.run(state)
            out.append(Citation(cid, img.source, req.masker.unmask(state.text), img.modality, img.start_s, img.end_s))
        return tuple(out)

    @staticmethod
    def _record(req: _Request, run: ChainRun) -> ChainRun:
        req.results.extend(run.results)
        return run

    async def _read(self, req: _Request, up: Upload, n: int) -> ContextImage:
        """The upload as context image upload-n, with its OCR text (raw here; the context guards mask it)."""
        text = up.ocr_text
        if not text and self.ocr is not None:
            try:
                text = await asyncio.to_thread(self.ocr, up.image)
            except Exception as exc:  # one unreadable image must not sink the question
                req.results.append(
                    GuardResult(
                        "ocr",
                        True,
                        f"OCR failed on upload-{n} ({type(exc).__name__}); its text is treated as empty",
                        "no text",
                    )
                )
                text = ""
        return ContextImage(f"upload-{n}", up.image, text or "", source="upload", uploaded=True)

    async def _retrieve(self, query: str, k: int, filters: Any, taken: set[str]) -> list[ContextImage]:
        if self.retriever is None or k <= 0:
            return []
        if inspect.iscoroutinefunction(self.retriever):
            found = await self.retriever(query, k, filters=filters)
        else:
            found = await asyncio.to_thread(self.retriever, query, k, filters=filters)
            if inspect.isawaitable(found):
                found = await found
        out = []
        for item in found or ():
            if not isinstance(item, ContextImage):
                raise TypeError(f"the retriever must return ContextImage items; got {type(item).__name__}")
            if item.id and item.id not in taken:  # an id twice would make citations ambiguous
                taken.add(item.id)
                out.append(replace(item, uploaded=False, source=item.source or "retrieved"))
        return out[:k]


def _as_upload(item: UploadLike, i: int) -> Upload:
    field_name = f"uploads[{i}]"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Upload(field_name, data=bytes(item))
    if isinstance(item, Image.Image):
        return Upload(field_name, image=item)
    if isinstance(item, ContextImage):
        return Upload(field_name, image=item.image, ocr_text=item.ocr_text)
    raise InvalidInput(
        f"{field_name} is a {type(item).__name__}; send image bytes or a decoded image", field=field_name
    )


def _default_renderer() -> PromptRenderer:
    from lmm.prompts import DEFAULT_PROMPT, load_prompt, render  # imported late: prompts are optional here

    template = load_prompt(DEFAULT_PROMPT)
    return lambda question, images: render(template, question, images)
