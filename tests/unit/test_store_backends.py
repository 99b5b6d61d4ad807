"""What each backend does on its own: ownership, durability, connection errors, indexes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import qdrant_edge as qe
from qdrant_client import models

from encoders.common.errors import ModelMismatch, NotFound, StoreUnavailable
from encoders.text.keywords import keyword_vector, query_vector
from indexing import open_store
from indexing.index import Index, NewItem
from indexing.store.edge import EdgeStore
from indexing.store.qdrant import QdrantStore
from indexing.types import INDEXED_KEYWORD_FIELDS, CollectionSchema, KeywordsUnavailable, Modality

SCHEMA = CollectionSchema(vector_name="clip", dim=4, model_id="m", model_version="1")


def _item(n: int) -> NewItem:
    v = np.zeros(4, np.float32)
    v[n % 4] = 1
    return NewItem(public_id=f"i{n}", sha256=f"{n:064x}", modality=Modality.IMAGE, vector=v)


def test_open_store_picks_backend(tmp_path):
    edge = open_store(data_dir=str(tmp_path / "d"))
    assert isinstance(edge, EdgeStore)
    edge.close()
    server = open_store(data_dir=str(tmp_path / "ignored"), url="http://127.0.0.1:1")
    assert isinstance(server, QdrantStore)
    with pytest.raises(ValueError):
        open_store()


def test_edge_folder_has_one_owner(tmp_path):
    first = EdgeStore(str(tmp_path))
    with pytest.raises(StoreUnavailable) as e:
        EdgeStore(str(tmp_path))
    assert str(tmp_path) in e.value.reason
    first.close()
    EdgeStore(str(tmp_path)).close()  # free again once closed


def test_edge_closed_store_is_unavailable(tmp_path):
    index = Index(EdgeStore(str(tmp_path)))
    index.upsert("c", [_item(1)], SCHEMA)
    index.close()
    with pytest.raises(StoreUnavailable):
        index.count("c")
    with pytest.raises(StoreUnavailable):
        Index(index.store).collections()


def test_edge_indexes_builtin_keyword_fields(tmp_path):
    store = EdgeStore(str(tmp_path))
    store.create_collection("c", SCHEMA)
    assert set(INDEXED_KEYWORD_FIELDS) <= set(store._shard("c").info().payload_schema)
    store.close()


def test_edge_survives_a_crash_without_close(tmp_path):
    # The WAL, not close(), is what makes writes durable: kill the writer mid-life.
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {sys.path[0]!r})
        sys.path.insert(0, os.getcwd())
        import numpy as np
        from indexing.store.edge import EdgeStore
        from indexing.index import Index, NewItem
        from indexing.types import CollectionSchema, Modality
        index = Index(EdgeStore({str(tmp_path)!r}))
        schema = CollectionSchema("clip", 4, "m", "1")
        vectors = np.eye(4, dtype=np.float32)
        items = [NewItem(f"i{{n}}", f"{{n:064x}}", Modality.IMAGE, vectors[n], metadata={{"k": n}}) for n in range(3)]
        index.upsert("c", items, schema)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    index = Index(EdgeStore(str(tmp_path)))
    assert index.count("c") == 3
    assert index.get("c", "i2")["meta"] == {"k": 2}
    index.close()


def test_qdrant_unreachable_names_the_url():
    index = Index(QdrantStore(url="http://127.0.0.1:1", timeout_s=2))
    with pytest.raises(StoreUnavailable) as e:
        index.collections()
    assert "http://127.0.0.1:1" in e.value.reason
    with pytest.raises(StoreUnavailable) as e:
        index.ensure_collection("c", SCHEMA)
    assert "http://127.0.0.1:1" in e.value.reason


def test_qdrant_local_folder_has_one_owner(tmp_path):
    first = QdrantStore(path=str(tmp_path))
    with pytest.raises(StoreUnavailable):
        QdrantStore(path=str(tmp_path))
    first.close()


def test_qdrant_foreign_collection_is_a_mismatch():
    store = QdrantStore(location=":memory:")
    store._client.create_collection(
        "foreign", vectors_config={"clip": models.VectorParams(size=4, distance=models.Distance.COSINE)}
    )
    index = Index(store)
    with pytest.raises(ModelMismatch) as e:
        index.ensure_collection("foreign", SCHEMA)
    assert "not created by Loupe" in e.value.reason
    store.close()


def test_qdrant_memory_mode_runs_the_basics():
    index = Index(QdrantStore(location=":memory:"))
    assert index.upsert("c", [_item(1), _item(2)], SCHEMA) == [("i1", True), ("i2", True)]
    hits = index.search("c", np.array([0, 1, 0, 0], np.float32), limit=1)
    assert [p["id"] for p, _ in hits] == ["i1"]
    with pytest.raises(NotFound):
        index.get("c", "i3")
    index.close()


# -- keyword vectors and collections from before them ----------------------------------------

OLD_INDEXED = ("id", "modality", "sha256", "sources")


def _keyword_item(n: int, text: str) -> NewItem:
    item = _item(n)
    item.text, item.keywords = text, keyword_vector(text)
    return item


def test_edge_collection_from_before_keywords_still_works(tmp_path):
    # What an older Loupe wrote: dense-only shard, four indexes, sidecar without keyword_vector.
    folder = tmp_path / "c"
    shard = qe.EdgeShard.create(
        str(folder / "shard"), qe.EdgeConfig(vectors={"clip": qe.EdgeVectorParams(size=4, distance=qe.Distance.Cosine)})
    )
    for field in OLD_INDEXED:
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
    shard.close()
    sidecar = {
        "format": 1,
        "info": {},
        "schema": {"vector_name": "clip", "dim": 4, "model_id": "m", "model_version": "1"},
    }
    (folder / "collection.json").write_text(json.dumps(sidecar))

    store = EdgeStore(str(tmp_path))
    index = Index(store)
    assert index.schema("c") == CollectionSchema("clip", 4, "m", "1", keyword_vector=None)
    index.require_collection("c", SCHEMA)  # the service's schema (with keywords) still fits
    index.upsert("c", [_keyword_item(1, "error 0x80070005")], SCHEMA)  # keywords are dropped, not refused
    assert [p["id"] for p, _ in index.search("c", np.array([0, 1, 0, 0], np.float32), limit=1)] == ["i1"]
    with pytest.raises(KeywordsUnavailable):
        index.search("c", None, limit=1, mode="keyword", keyword_query=query_vector("0x80070005"))
    # Opening the shard added the payload indexes it lacked.
    assert set(INDEXED_KEYWORD_FIELDS) <= set(store._shard("c").info().payload_schema)
    index.close()


def test_qdrant_collection_from_before_keywords_still_works():
    store = QdrantStore(location=":memory:")
    store._client.create_collection(
        "c",
        vectors_config={"clip": models.VectorParams(size=4, distance=models.Distance.COSINE)},
        metadata={"loupe_schema": {"vector_name": "clip", "dim": 4, "model_id": "m", "model_version": "1"}},
    )
    index = Index(store)
    assert index.schema("c").keyword_vector is None
    index.upsert("c", [_keyword_item(1, "error 0x80070005")], SCHEMA)
    assert index.count("c") == 1
    with pytest.raises(KeywordsUnavailable):
        index.search("c", np.ones(4, np.float32), limit=1, mode="hybrid", keyword_query=query_vector("error"))
    index.close()


def test_both_backends_apply_idf_in_the_store(tmp_path):
    edge = EdgeStore(str(tmp_path / "e"))
    edge.create_collection("c", SCHEMA)
    config = json.loads((tmp_path / "e" / "c" / "shard" / "edge_config.json").read_text())
    assert "idf" in json.dumps(config["sparse_vectors"]["keywords"]).lower()
    server = QdrantStore(location=":memory:")
    server.create_collection("c", SCHEMA)
    sparse = server._client.get_collection("c").config.params.sparse_vectors
    assert sparse["keywords"].modifier == models.Modifier.IDF
    # A term in every document is worth less than a rare one, in both.
    for store in (edge, server):
        index = Index(store)
        index.upsert("c", [_keyword_item(n, "common" if n else "common rare") for n in range(4)], SCHEMA)
        (_, rare_and_common), *others = index.search(
            "c", None, limit=10, mode="keyword", keyword_query=query_vector("common rare")
        )
        assert len(others) == 3 and all(score < rare_and_common / 2 for _, score in others)
        index.close()
