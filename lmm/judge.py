"""An optional judge: a second model asked "does the context support this answer? yes or no".

The self-check pattern: after the rule-based output guards pass, a judge model (the same VLM,
another OpenAI-compatible endpoint, or a local model: any `VisionLanguageModel`) reads the
context text, the question and the answer, and replies yes or no. "no" fails the draft like a
guard (it is redrafted, then abstained on); a reply that is neither counts as "no": an answer
the judge could not confirm is not a confirmed answer. Off by default (on CPU a second
generation per answer costs seconds); its verdict is recorded per answer as the guard
`output.judge`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmm.types import ContextImage, GuardResult, Prompt, VisionLanguageModel

NAME = "output.judge"
VERSION = "judge/v1"
SYSTEM = (
    "You check answers given by a support assistant. You are shown the text of the context items, the "
    "question and the answer. Reply with exactly one word: yes if the context supports every claim in the "
    "answer, no otherwise."
)
MAX_CONTEXT_CHARS = 6_000
_VERDICT = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


class Judge:
    def __init__(self, model: VisionLanguageModel, *, max_new_tokens: int = 8) -> None:
        self.model, self.max_new_tokens = model, max_new_tokens

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def prompt(self, question: str, answer: str, context: Sequence[ContextImage]) -> Prompt:
        blocks = "\n\n".join(f"[{img.id}] ({img.source or img.modality}):\n{img.ocr_text}" for img in context)
        user = (
            f"Context:\n{blocks[:MAX_CONTEXT_CHARS]}\n\nQuestion: {question}\n\nAnswer: {answer}\n\n"
            "Does the context support this answer? Reply yes or no."
        )
        return Prompt(VERSION, SYSTEM, user, tuple(context))

    def check(self, question: str, answer: str, context: Sequence[ContextImage]) -> GuardResult:
        draft = self.model.generate(self.prompt(question, answer, context), max_new_tokens=self.max_new_tokens)
        m = _VERDICT.match(draft.text)
        said = m.group(1).lower() if m else None
        if said == "yes":
            return GuardResult(NAME, True, f"the judge ({self.model_id}) says the context supports the answer")
        if said == "no":
            return GuardResult(NAME, False, f"the judge ({self.model_id}) says the context does not support the answer")
        return GuardResult(
            NAME,
            False,
            f"the judge ({self.model_id}) did not reply yes or no "
            f"({draft.text.strip()[:60]!r}): the answer is not confirmed",
        )
