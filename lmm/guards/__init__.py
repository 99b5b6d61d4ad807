"""Guardrails for Ask: small one-method checks run in order by a GuardChain.

`input` guards vet and clean the request and the context text; `output` guards decide whether
a draft may leave, and clean it. The chains themselves are assembled in `lmm.pipeline`.
"""

from lmm.guards.base import BaseGuard, ChainRun, Guard, GuardChain, OnFail

__all__ = ["BaseGuard", "ChainRun", "Guard", "GuardChain", "OnFail"]
