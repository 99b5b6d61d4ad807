"""One real Loupe service (`loupe serve --bundled-models`) for the integration tests.

It runs Ray Serve in a child process on free ports with its own data folder. Before it
starts, the folder gets a collection built by another model, for the wrong-model test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.cli.launch import ServiceProcess
from services.client.sdk import LoupeClient

LEGACY_COLLECTION = "legacy"
# Small caps so the over-long and over-size audio cases stay cheap.
AUDIO_MAX_DURATION_S = 120
AUDIO_MAX_BYTES = 8 * 1024 * 1024


@dataclass
class Service:
    target: str
    data_dir: Path
    process: ServiceProcess

    def client(self, **kw) -> LoupeClient:
        return LoupeClient(self.target, **kw)


def _seed_legacy_collection(data_dir: Path) -> None:
    from indexing import open_store
    from indexing.index import Index, NewItem
    from indexing.types import CollectionSchema, Modality

    schema = CollectionSchema(vector_name="clip", dim=32, model_id="open_clip:some-other-model", model_version="v0")
    index = Index(open_store(data_dir=str(data_dir)))
    index.ensure_collection(LEGACY_COLLECTION, schema)
    vector = np.ones(32, np.float32) / np.sqrt(32)
    index.upsert(
        LEGACY_COLLECTION,
        [
            NewItem(
                public_id="old-1",
                sha256="0" * 64,
                modality=Modality.TEXT,
                vector=vector,
                source="legacy",
                metadata={},
                text="old",
                width=None,
                height=None,
            )
        ],
        schema,
    )
    index.store.close()


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> Service:
    root = tmp_path_factory.mktemp("loupe")
    data_dir = root / "data"
    _seed_legacy_collection(data_dir)
    env = {
        "LOUPE_LIMITS__AUDIO_MAX_DURATION_S": str(AUDIO_MAX_DURATION_S),
        "LOUPE_LIMITS__AUDIO_MAX_BYTES": str(AUDIO_MAX_BYTES),
    }
    args = ["--bundled-models", "--data-dir", str(data_dir)]
    with ServiceProcess(args, log_path=root / "serve.log", env=env) as proc:
        yield Service(proc.target, data_dir, proc)
