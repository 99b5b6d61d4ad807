"""The one process that touches the store during a batch run.

`CatalogWriter` decides, per batch of hashed rows, what still needs encoding (`plan`) and
stores encoded rows (`write`). The pipeline runs it as a single Ray actor: the embedded
store can have only one owner, and one writer also keeps payload merges race-free on a
Qdrant server. Plain Python, so it is tested without Ray.

Outcomes, one per row:
    indexed     encoded and stored (a new point, or one built by another model version)
    updated     already stored from this URI; only its metadata changed
    skipped     already stored from this URI with this metadata: nothing to do
    duplicate   its content is already stored from another URI: that URI was added to the
                point's sources (and its metadata merged); not encoded again
    failed      see stage and reason
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from encoders.common.errors import BatchInvalid, InvalidInput, LoupeError
from encoders.text.keywords import keyword_vector
from indexing.ids import content_key
from indexing.index import Index, NewItem
from indexing.ingest import image_item, store_recording, text_item
from indexing.privacy import Privacy
from indexing.types import CollectionSchema, Modality

INDEXED, UPDATED, SKIPPED, DUPLICATE, FAILED = "indexed", "updated", "skipped", "duplicate", "failed"
OUTCOMES = (INDEXED, UPDATED, SKIPPED, DUPLICATE, FAILED)


@dataclass(frozen=True)
class StoreSpec:
    """Where the store is; opened only inside the writer process. Exactly one is set."""

    # Embedded Qdrant Edge folder.
    data_dir: str | None = None
    # Qdrant server URL, and its API key.
    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    # qdrant-client local mode folder (small setups and tests; one process at a time).
    qdrant_path: str | None = None

    def open(self):
        from indexing import open_store

        if self.qdrant_path:
            from indexing.store.qdrant import QdrantStore

            return QdrantStore(path=self.qdrant_path)
        return open_store(data_dir=self.data_dir, url=self.url, api_key=self.api_key)

    def describe(self) -> str:
        if self.url:
            return f"Qdrant server {self.url}"
        if self.qdrant_path:
            return f"qdrant-client local folder {self.qdrant_path}"
        return f"embedded store {self.data_dir}"


class CatalogWriter:
    """Plans and writes rows of one collection, for one model (one named vector)."""

    def __init__(
        self,
        spec: StoreSpec,
        collection: str,
        schema: CollectionSchema,
        *,
        new_vector: bool = False,
        privacy: Privacy | None = None,
    ) -> None:
        self.index = Index(spec.open(), privacy=privacy)
        self.collection = collection
        if new_vector and self.index.store.get_schema(collection) is not None:
            # Re-embedding: a new named vector next to the one that keeps serving.
            self.index.add_vector(collection, schema)
        else:
            self.index.ensure_collection(collection, schema)
        self.schema = self.index.schema_for(collection, schema)

    def describe(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "vector": self.schema.vector_name,
            "model_id": self.schema.model_id,
            "model_version": self.schema.model_version,
            "points": self.index.count(self.collection),
        }

    def plan(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """For rows with `sha256`, `uri` and `meta` (JSON): set `status` to an outcome when
        no encoding is needed (applying source/metadata merges), and `known` when the content
        is stored but not by this model version. Rows left with status "" go on to encoding."""
        keys = [content_key(r["sha256"]) for r in rows]
        done = self.index.encoded(self.collection, keys, self.schema)
        known = self.index.existing(self.collection, [k for k in keys if k not in done])
        merges = []
        for row, key in zip(rows, keys):
            payload = done.get(key)
            row["known"] = key in known
            if payload is None:
                continue
            metadata = json.loads(row["meta"]) if row["meta"] else {}
            in_sources = row["uri"] in payload.get("sources", ())
            same_meta = all(payload.get("meta", {}).get(k) == v for k, v in metadata.items())
            if in_sources and same_meta:
                row["status"] = SKIPPED
                continue
            row["status"] = UPDATED if in_sources else DUPLICATE
            merges.append((key, row["uri"], metadata))
        if merges:
            self.index.merge_payloads(self.collection, merges)
        return rows

    def write(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store encoded rows (`vector` as float32 bytes, or a recording's pickled `items`);
        one {status, stage, reason} each, in order."""
        if any(r.get("items") for r in rows):
            images = [r for r in rows if not r.get("items")]
            done = dict(zip(map(id, images), self.write(images) if images else []))
            return [done[id(r)] if id(r) in done else self._write_recording(r) for r in rows]
        items = [self._item(r) for r in rows]
        try:
            stored = self.index.upsert(self.collection, items, self.schema)
        except (BatchInvalid, InvalidInput):
            # One bad item must not sink its batch: store them one by one to find it.
            return [self._write_one(r, item) for r, item in zip(rows, items)]
        return [_stored(row, created) for row, (_, created) in zip(rows, stored)]

    def catch_up(self, clip_options: Any, limits: Any, *, page: int = 64) -> list[dict[str, Any]]:
        """Fill this run's vector on every point that still lacks it (items indexed online
        while a re-embedding ran, or not in the batch source): images are re-read from their
        first readable source, texts and transcripts re-encoded from their stored text.
        Returns a failure record per point that could not be filled."""
        todo = self.index.count_missing_vector(self.collection, self.schema.vector_name)
        if not todo:
            return []
        from encoders.clip.encoder import ClipEncoder

        clip, failures, after = ClipEncoder(clip_options).load(), [], None
        while True:
            payloads, after = self.index.missing_vector(self.collection, self.schema.vector_name, page, after)
            items = []
            for payload in payloads:
                try:
                    items.append(_refilled(payload, clip, limits))
                except (LoupeError, OSError, ValueError) as e:
                    failures.append(
                        {
                            "uri": (payload.get("sources") or [""])[0],
                            "row": None,
                            "stage": "re-embed",
                            "reason": f"item {payload['id']!r}: {getattr(e, 'reason', e)}",
                        }
                    )
            if items:
                self.index.upsert(self.collection, items, self.schema)
            if after is None:
                return failures

    def complete(self, *, switch: bool) -> str:
        """Mark this run's vector complete when no point lacks it, and make it the active one
        if `switch`; a line saying what happened."""
        name, vector = self.collection, self.schema.vector_name
        missing = self.index.count_missing_vector(name, vector)
        if missing:
            return f"vector {vector!r} is incomplete: {missing:,} item(s) lack it, so it was not switched to"
        self.index.mark_complete(name, vector)
        active = self.index.vectors(name)[0].vector_name
        if switch and active != vector:
            self.index.switch_vector(name, vector)
            return f"vector {vector!r} is complete and now the active one (was {active!r})"
        return f"vector {vector!r} is complete" + ("" if active == vector else f"; the active one is {active!r}")

    def finish(self, *, optimize: bool = True) -> None:
        if optimize:
            self.index.optimize(self.collection)

    def close(self) -> None:
        self.index.close()

    def _write_recording(self, row: dict[str, Any]) -> dict[str, Any]:
        """The recording, then its segments in place of any earlier ones (same as IndexAudio)."""
        import pickle

        recording, segments = pickle.loads(row["items"])  # noqa: S301 (made by our own pipeline)
        try:
            _, created = store_recording(self.index, self.collection, self.schema, recording, segments)
        except LoupeError as e:
            return {"status": FAILED, "stage": "store", "reason": e.reason}
        return _stored(row, created)

    def _write_one(self, row: dict[str, Any], item: NewItem) -> dict[str, Any]:
        try:
            [(_, created)] = self.index.upsert(self.collection, [item], self.schema)
        except LoupeError as e:
            return {"status": FAILED, "stage": "store", "reason": e.reason}
        return _stored(row, created)

    def _item(self, row: dict[str, Any]) -> NewItem:
        common = {
            "public_id": None,
            "sha256": row["sha256"],
            "source": row["uri"],
            "metadata": json.loads(row["meta"]) if row["meta"] else {},
            "vector": np.frombuffer(row["vector"], dtype=np.float32),
        }
        if Modality(row.get("modality") or "image") is Modality.TEXT:
            return text_item(**common, text=row["text"])
        return image_item(
            **common,
            width=row.get("width") or None,
            height=row.get("height") or None,
            text=row.get("text"),
            thumbnail=row.get("thumbnail"),
        )


def _stored(row: dict[str, Any], created: bool) -> dict[str, Any]:
    # Not created and not stored before this run: another row of this run had the same content.
    return {"status": INDEXED if created or row.get("known") else DUPLICATE}


def _refilled(payload: dict[str, Any], clip: Any, limits: Any) -> NewItem:
    """The stored item again, with a vector from `clip` and every stored field kept."""
    from encoders.image.decode import decode_image
    from indexing.batch.stages import read_uri

    modality = Modality(payload["modality"])
    text = payload.get("text")
    if modality is Modality.IMAGE:
        problems = []
        for uri in payload.get("sources") or []:
            try:
                decoded = decode_image(read_uri(uri, limits.max_bytes), limits, field="file")
                break
            except (LoupeError, OSError, ValueError) as e:
                problems.append(f"{uri}: {getattr(e, 'reason', e)}")
        else:
            raise ValueError(
                "no readable source to re-encode the image from" + (f" ({'; '.join(problems)})" if problems else "")
            )
        vector = clip.encode_images([decoded.image])[0]
    elif text is not None:
        # A recording's own vector is re-made from its whole transcript (the service averages
        # its chunks); texts and chunks exactly as the service would encode them.
        vector = clip.encode_texts([text]).vectors[0]
    else:
        raise ValueError("nothing stored to re-encode it from (no source image, no text)")
    fields = {
        k: payload[k]
        for k in ("width", "height", "parent_id", "start_s", "end_s", "language", "duration_s")
        if k in payload
    }
    return NewItem(
        public_id=payload["id"],
        sha256=payload["sha256"],
        modality=modality,
        vector=vector,
        text=text,
        keywords=keyword_vector(text) if text else None,
        thumbnail=base64.b64decode(payload["thumbnail"]) if payload.get("thumbnail") else None,
        **fields,
    )
