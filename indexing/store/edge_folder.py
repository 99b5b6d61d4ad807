"""Files of the embedded store's data folder besides the shards: the lock that gives the
folder one owner, and each collection's sidecar (collection.json).

Sidecar: {"format": 1, "schema": {...}, "vectors": [{...}, ...], "info": {...}}. "schema" is
the active vector (what older Loupe versions read), "vectors" every dense vector with its
model, active first; sidecars written while a collection could have only one vector have
no "vectors".
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from encoders.common.errors import StoreUnavailable
from indexing.types import CollectionSchema, VectorSpec

LOCK = ".loupe.lock"


def specs_of(sidecar: dict[str, Any]) -> list[VectorSpec]:
    if "vectors" not in sidecar:
        # Written when a collection had one vector, which every point got.
        return [VectorSpec.of(schema_from_json(sidecar["schema"]), complete=True)]
    return [VectorSpec(**data) for data in sidecar["vectors"]]


def schema_from_json(data: dict[str, Any]) -> CollectionSchema:
    return CollectionSchema(
        vector_name=data["vector_name"],
        dim=data["dim"],
        model_id=data["model_id"],
        model_version=data["model_version"],
        # Absent from sidecars written before keyword vectors existed: those shards have none.
        keyword_vector=data.get("keyword_vector"),
    )


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    # write-fsync-rename-fsync: a crash leaves either the old file or the new one, never half.
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def lock_folder(root: str) -> Any:
    """Take the folder for this process; a second owner would corrupt the WALs."""
    path = os.path.join(root, LOCK)
    try:
        f = open(path, "a+", encoding="utf-8")
    except OSError as e:
        raise StoreUnavailable(f"cannot open lock file {path}: {e}") from e
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StoreUnavailable(
            f"data folder {root} is in use by another store (pid {holder}); "
            "only one process may open it: stop the other one, or use a Qdrant server to share data"
        ) from e
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
