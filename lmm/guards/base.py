"""The guard contract and the chain that runs guards in order.

A guard is a small class with one method, `check(state) -> GuardResult`. Guards that clean
text (masking, pruning citations, neutralising instructions) change the state they are given
and say what they did in `GuardResult.action`; the others only judge. What a failure means is
the guard's `on_fail`, so the chain and the pipeline need no list of guard names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Protocol, TypeVar

from lmm.types import GuardResult

S = TypeVar("S")
S_contra = TypeVar("S_contra", contravariant=True)


class OnFail(str, Enum):
    # The request is malformed (too many images, empty question): InvalidInput, status INVALID_ARGUMENT.
    REJECT = "reject"
    # The request is well formed but must not be answered (injection only, out of scope): verdict blocked.
    BLOCK = "block"
    # The draft cannot be returned as is: draft again, then abstain.
    RETRY = "retry"
    # Recorded; the chain goes on.
    NOTE = "note"


class Guard(Protocol[S_contra]):
    # Stable name, e.g. "output.grounding"; what GuardResult.guard carries.
    name: str
    # What a failed result means (see OnFail).
    on_fail: OnFail

    def check(self, state: S_contra) -> GuardResult: ...


class BaseGuard:
    """Shared helpers; subclasses set `name`, `on_fail` and implement `check`."""

    name = "guard"
    on_fail = OnFail.RETRY
    # For RETRY guards: a sentence appended to the prompt when this guard sent a draft back.
    retry_hint = ""

    def ok(self, reason: str = "", action: str = "") -> GuardResult:
        return GuardResult(self.name, True, reason, action)

    def fail(self, reason: str, action: str = "") -> GuardResult:
        return GuardResult(self.name, False, reason, action)


@dataclass(frozen=True)
class ChainRun:
    """What one pass of a chain found."""

    results: tuple[GuardResult, ...]
    # The failed result that stopped the chain and the guard that produced it; None when it ran through.
    stopped_by: GuardResult | None = None
    stopping_guard: Guard | None = None

    @property
    def passed(self) -> bool:
        return self.stopped_by is None

    @property
    def on_fail(self) -> OnFail | None:
        return None if self.stopping_guard is None else self.stopping_guard.on_fail


class GuardChain(Generic[S]):
    """Runs guards in order on one state; stops at the first failure that is not a NOTE."""

    def __init__(self, guards: Sequence[Guard[S]]) -> None:
        names = [g.name for g in guards]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"guard names must be unique in a chain; repeated: {', '.join(repeated)}")
        self.guards = tuple(guards)

    def run(self, state: S) -> ChainRun:
        results: list[GuardResult] = []
        for guard in self.guards:
            result = guard.check(state)
            results.append(result)
            if not result.passed and guard.on_fail is not OnFail.NOTE:
                return ChainRun(tuple(results), result, guard)
        return ChainRun(tuple(results))

    def __iter__(self) -> Iterator[Guard[S]]:
        return iter(self.guards)

    def __len__(self) -> int:
        return len(self.guards)
