"""Instructions hidden in a question or in screenshot text ("prompt injection").

`detect_injection(text)` scores text against phrasings that address the assistant rather than
describe a problem: overriding earlier instructions, new roles, chat-template role markers,
requests for the system prompt, jailbreak formulas. Each finding has a weight; the score is
1 - prod(1 - weight), so one strong cue or several weak ones flag the text.

The patterns ask for the assistant to be the addressee ("ignore your instructions", "you are
now an unrestricted AI"), so ordinary support text does not trip them: "ignore this warning",
"can this laptop act as a hotspot?", "You are now connected", "System: Windows 11 Pro",
"how do I enable developer mode on my phone?".

`neutralise(text)` replaces each flagged sentence with "[instruction removed]": the rest stays
readable as data, and the model never sees the instruction's wording.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REMOVED = "[instruction removed]"
# Score at which text counts as carrying an injection.
THRESHOLD = 0.5

_V_OVERRIDE = r"(?:ignore|disregard|forget|skip|override|bypass|neglect|abandon|drop)"
_QUALIFIER = (
    r"(?:previous|previously\s+given|prior|above|earlier|preceding|foregoing|former|original|initial"
    r"|old|existing|system|developer|safety|default|given)"
)
_ORDERS = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|commands|context|messages?"
    r"|constraints|restrictions|programming|training|polic(?:y|ies)|orders|guardrails)"
)
_LEAK_VERB = (
    r"(?:reveal|print|show|display|repeat|output|tell\s+me|give\s+me|share|leak|dump|write\s+out|recite"
    r"|list|what\s+(?:is|are|was|were))"
)
_BAD_MODE = r"(?:developer|dev|DAN|jailbreak|jailbroken|unrestricted|unfiltered|evil|god|opposite|uncensored)"
_ROLE_FOLLOW = (
    r"(?:you\s+(?:are|must|will|should|have|now)|your\s+(?:new|real|true)|ignore|disregard|forget"
    r"|instructions?|reveal|pretend|act\s+as|from\s+now|always\s+(?:answer|respond|reply|say)"
    r"|never\s+(?:refuse|mention|reveal))"
)

# (kind, weight, pattern). Weights: 0.9 unmistakable, 0.6-0.8 strong, < 0.5 only counts with company.
_PATTERNS: list[tuple[str, float, re.Pattern[str]]] = [
    (kind, weight, re.compile(p, re.IGNORECASE | re.MULTILINE))
    for kind, weight, p in (
        # Overriding what came before.
        (
            "override",
            0.9,
            rf"\b{_V_OVERRIDE}\s+(?:all\s+|any\s+|every\s+|each\s+)?(?:of\s+)?(?:the\s+|your\s+|my\s+"
            rf"|these\s+|those\s+|this\s+)?{_QUALIFIER}\s+(?:\w+\s+)?{_ORDERS}\b",
        ),
        ("override", 0.9, rf"\b{_V_OVERRIDE}\s+(?:all\s+|any\s+)?(?:of\s+)?your\s+(?:\w+\s+)?{_ORDERS}\b"),
        ("override", 0.8, rf"\b{_V_OVERRIDE}\s+(?:all|any|every)\s+(?:other\s+)?(?:instructions|prompts|rules)\b"),
        (
            "override",
            0.8,
            rf"\b{_V_OVERRIDE}\s+(?:everything|anything|all|what(?:ever)?\s+(?:was|you\s+were)\s+"
            rf"(?:said|told))\s*(?:above|before|previously|earlier|so\s+far|you\s+were\s+told)?\b"
            rf"(?=\s*(?:[.,;:!]|and\b|$))",
        ),
        ("override", 0.8, rf"\b{_V_OVERRIDE}\s+(?:the\s+)?above\b"),
        ("override", 0.7, r"\b(?:new|updated|real|actual|revised|additional|secret)\s+(?:system\s+)?instructions?\s*:"),
        (
            "override",
            0.8,
            rf"\bdo\s+not\s+(?:follow|obey)\s+(?:(?:the|any)\s+{_QUALIFIER}|your(?:\s+{_QUALIFIER})?)\s+"
            rf"(?:instructions|rules|guidelines)\b",
        ),
        ("override", 0.4, r"\binstead\s*,?\s+(?:you\s+(?:must|should|will)|respond|reply|answer\s+with|say|output)\b"),
        # A new role for the assistant.
        (
            "role_play",
            0.8,
            r"\byou\s+are\s+(?:now|no\s+longer|from\s+now\s+on)\s+(?:an?\s+|the\s+|my\s+)?(?:\w+\s+){0,3}?"
            r"(?:AI|assistant|bot|chatbot|model|LLM|character|persona|DAN|hacker|jailbroken|unrestricted"
            r"|unfiltered|uncensored|free|evil|different|bound|restricted|limited|required)\b",
        ),
        ("role_play", 0.8, rf"\byou\s+are\s+(?:now\s+)?in\s+(?:the\s+)?{_BAD_MODE}\s+mode\b"),
        ("role_play", 0.6, r"\bfrom\s+now\s+on\s*,?\s+(?:you|your|respond|answer|reply|act|always|never|only)\b"),
        ("role_play", 0.7, r"\b(?:pretend|imagine)\s+(?:that\s+)?(?:you\s+are|you're|to\s+be|you\s+have\s+no)\b"),
        ("role_play", 0.7, r"\b(?:act|behave|respond|answer|reply|speak|talk)\s+(?:as\s+if|as\s+though|like)\s+you\b"),
        (
            "role_play",
            0.6,
            r"(?:^|[.!?:]\s+|\byou\s+(?:will|must|should|shall|are\s+to|to)\s+|\bplease\s+|\bnow\s+)"
            r"act\s+as\s+(?:an?\s+|the\s+|my\s+)?\w+",
        ),
        ("role_play", 0.6, r"\brole[\s-]?play\s+(?:as|that|a|an)\b|\bstay\s+in\s+character\b"),
        ("role_play", 0.6, r"\byour\s+(?:true|real|new)\s+(?:self|purpose|role|task|identity|name)\b"),
        # Chat-template tokens and role markers.
        (
            "role_marker",
            0.9,
            r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id"
            r"|end_header_id)\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>",
        ),
        (
            "role_marker",
            0.7,
            rf"^[\s>#*\-]*(?:system|assistant|developer|admin)\s*(?:prompt|message|override|note)?\s*:"
            rf"(?=[^\n]{{0,120}}?\b{_ROLE_FOLLOW})",
        ),
        ("role_marker", 0.6, r"^#{2,}\s*(?:system|instructions?|new\s+instructions?)\b\s*:?"),
        # Asking for the system prompt.
        (
            "prompt_leak",
            0.9,
            rf"\b{_LEAK_VERB}\s+(?:me\s+)?(?:all\s+)?(?:of\s+)?(?:your|the)\s+(?:full\s+|entire\s+"
            rf"|complete\s+|exact\s+|original\s+)?(?:system|initial|hidden|secret|developer|internal"
            rf"|pre-?)\s*(?:prompt|instructions?|message|rules|guidelines)\b",
        ),
        (
            "prompt_leak",
            0.8,
            rf"\b{_LEAK_VERB}\s+(?:me\s+)?(?:all\s+)?(?:of\s+)?your\s+(?:(?:exact|full|current|own)\s+)?"
            rf"(?:prompt|instructions"
            rf"|rules|guidelines|directives|configuration|initial\s+message)\b",
        ),
        (
            "prompt_leak",
            0.7,
            r"\b(?:repeat|print|output|copy|recite)\s+(?:all\s+|everything\s+|the\s+(?:text|words"
            r"|content|messages?)\s+)(?:above|before\s+this|so\s+far)\s*(?:verbatim)?\s*(?:[.!?]|$)",
        ),
        ("prompt_leak", 0.4, r"\bsystem\s+prompt\b"),
        # Jailbreak formulas.
        ("jailbreak", 0.9, r"\bdo\s+anything\s+now\b"),
        ("jailbreak", 0.7, r"\b(?:DAN|jailbreak|jailbroken|unrestricted|unfiltered|evil|opposite|uncensored)\s+mode\b"),
        ("jailbreak", 0.8, r"\bdeveloper\s+mode\s+(?:output|response|enabled\s+(?:AI|assistant|model))\b"),
        ("jailbreak", 0.3, r"\b(?:enable|activate|enter|switch\s+to|turn\s+on)\s+(?:developer|dev|god)\s+mode\b"),
        (
            "jailbreak",
            0.8,
            r"\byou\s+(?:have|has)\s+no\s+(?:rules|restrictions|limits|limitations|filters|guidelines"
            r"|ethics|morals)\b",
        ),
        (
            "jailbreak",
            0.6,
            r"\b(?:you|answer|respond|reply)\b[^.!?\n]{0,40}\b(?:without|with\s+no)\s+(?:any\s+)?"
            r"(?:restrictions|filters|limitations|censorship|ethical|moral|content\s+polic)",
        ),
        (
            "jailbreak",
            0.8,
            r"\b(?:bypass|disable|turn\s+off|ignore|remove|override)\s+your\s+(?:\w+\s+)?(?:filters?"
            r"|guardrails|safeguards|restrictions|limitations|safety|censorship|programming|training)\b",
        ),
        ("jailbreak", 0.8, r"\bjailbreak(?:ing)?\s+(?:yourself|you|the\s+(?:ai|assistant|model|bot|llm))\b"),
    )
]


@dataclass(frozen=True)
class InjectionFinding:
    # "override", "role_play", "role_marker", "prompt_leak" or "jailbreak".
    kind: str
    start: int
    end: int
    # The matched words (what a reviewer needs to see why it fired).
    text: str
    weight: float


@dataclass(frozen=True)
class InjectionReport:
    findings: tuple[InjectionFinding, ...]
    # 1 - prod(1 - weight) over the findings; 0.0 when there are none.
    score: float
    threshold: float = THRESHOLD

    @property
    def flagged(self) -> bool:
        return self.score >= self.threshold

    def kinds(self) -> list[str]:
        return sorted({f.kind for f in self.findings})


def detect_injection(text: str, *, threshold: float = THRESHOLD) -> InjectionReport:
    """Findings (by position) and a score in [0, 1]; `flagged` when score >= threshold."""
    findings = sorted(
        (
            InjectionFinding(kind, m.start(), m.end(), m.group().strip(), weight)
            for kind, weight, pattern in _PATTERNS
            for m in pattern.finditer(text)
        ),
        key=lambda f: (f.start, -f.weight),
    )
    keep = 1.0
    for f in findings:
        keep *= 1.0 - f.weight
    return InjectionReport(tuple(findings), round(1.0 - keep, 4), threshold)


def neutralise(text: str, *, threshold: float = THRESHOLD) -> tuple[str, InjectionReport]:
    """`text` with every sentence that carries a finding replaced by REMOVED, when flagged.

    Unflagged text comes back unchanged (weak cues alone are not removed)."""
    report = detect_injection(text, threshold=threshold)
    if not report.flagged:
        return text, report
    out, last = [], 0
    for start, end in _removed_spans(text, report):
        out.append(text[last:start])
        out.append(REMOVED)
        last = end
    out.append(text[last:])
    return "".join(out), report


def _removed_spans(text: str, report: InjectionReport) -> list[list[int]]:
    """The sentences holding the findings, overlapping ones merged, in order."""
    merged: list[list[int]] = []
    for start, end in sorted(_sentence_around(text, f) for f in report.findings):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def removed_sentences(text: str, report: InjectionReport) -> list[str]:
    """What `neutralise` removes for a flagged `report`: the instruction sentences, in order."""
    spans = _removed_spans(text, report) if report.flagged else []
    return [text[a:b].strip() for a, b in spans if text[a:b].strip()]


def only_injection(neutralised: str) -> bool:
    """True when nothing but removed instructions is left: fewer than two words of content."""
    rest = neutralised.replace(REMOVED, " ")
    return len(re.findall(r"[^\W\d_]{2,}", rest)) < 2


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def _sentence_around(text: str, finding: InjectionFinding) -> tuple[int, int]:
    """The span of the sentence (or line) holding the finding, its end punctuation included."""
    start = finding.start
    for m in _SENTENCE_END.finditer(text, 0, finding.start):
        start = m.end()
    while start < finding.start and text[start].isspace():
        start += 1
    end_match = _SENTENCE_END.search(text, max(finding.end - 1, finding.start))
    end = end_match.end() if end_match else len(text)
    if end_match and end_match.group() == "\n":
        end -= 1  # keep the line break: the next line is other data
    if finding.kind == "role_marker" and "\n" in text[finding.end :]:
        end = max(end, text.index("\n", finding.end))  # a role turn runs to the end of its line
    return start, max(end, finding.end)
