"""Model spec strings, parsed one way for every model family.

    bundled:NAME            a model shipped with Loupe
    local-dir:PATH, PATH    a local folder or file (a path: starts with / ./ ../ ~, or exists)
    hf-hub:ORG/REPO         a Hugging Face hub repository, said explicitly
    anything else           a name the family resolves itself: an architecture/tag
                            ("ViT-B-32/laion2b_s34b_b79k"), a hub id ("org/repo"), a size ("base")

The family's resolver (`encoders.clip.sources`, `encoders.whisper.models`,
`lmm.transformers_vlm`) turns the parsed spec into weights, or fails with its own ways to
supply them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from encoders.common.errors import InvalidInput

BUNDLED, PATH, HUB, NAME = "bundled", "path", "hub", "name"


@dataclass(frozen=True)
class ModelSpec:
    # BUNDLED, PATH, HUB or NAME.
    kind: str
    # The bundled name, the path, the hub repository, or the name, without prefix.
    value: str
    # The spec as given (stripped).
    raw: str

    @property
    def path(self) -> Path:
        return Path(os.path.expanduser(self.value))


def parse(spec: str, *, what: str = "model", how_to_supply: str = "", field: str = "model") -> ModelSpec:
    spec = spec.strip()
    if not spec:
        raise InvalidInput(f"{what} spec is empty. {how_to_supply}".strip(), field=field)
    if spec.startswith("bundled:"):
        return ModelSpec(BUNDLED, spec.removeprefix("bundled:"), spec)
    if spec.startswith("local-dir:"):
        return ModelSpec(PATH, spec.removeprefix("local-dir:"), spec)
    if spec.startswith("hf-hub:"):
        return ModelSpec(HUB, spec.removeprefix("hf-hub:"), spec)
    if spec.startswith(("/", "./", "../", "~")) or os.path.exists(spec):
        return ModelSpec(PATH, spec, spec)
    return ModelSpec(NAME, spec, spec)
