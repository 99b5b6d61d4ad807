"""The ingest path both the service and the batch pipeline use."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from encoders.common.errors import InvalidInput
from indexing.index import Index
from indexing.ingest import TextReader, image_item, store_recording, text_item
from indexing.store.edge import EdgeStore
from indexing.types import CollectionSchema, Modality

SCHEMA = CollectionSchema(vector_name="clip", dim=4, model_id="test", model_version="v1")


def unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_text_reader_gate_reads_no_photo_and_loads_nothing_for_it() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    reader = TextReader("auto")
    assert reader.read(photo) == "" and reader._engine is None  # no engine was loaded for a photo
    assert TextReader("never").load().read(photo) == ""


def test_text_reader_refuses_an_unknown_mode() -> None:
    with pytest.raises(InvalidInput, match="auto, always, never"):
        TextReader("sometimes")


def test_items_carry_keywords_only_where_there_is_text() -> None:
    common = {"public_id": None, "sha256": "0" * 64, "source": "a.png", "metadata": {}, "vector": unit(1, 0, 0, 0)}
    photo = image_item(**common, width=10, height=10, text="")
    shot = image_item(**common, width=10, height=10, text="Error E-42 on tray 2")
    note = text_item(**common, text="paper jam")
    assert photo.modality is Modality.IMAGE and photo.text is None and photo.keywords is None
    assert shot.text == "Error E-42 on tray 2" and shot.keywords is not None and len(shot.keywords.indices)
    assert note.modality is Modality.TEXT and note.keywords is not None


def test_store_recording_replaces_the_segments_of_an_earlier_version(tmp_path) -> None:
    from indexing.payloads import NewItem

    index = Index(EdgeStore(str(tmp_path / "e")))
    index.ensure_collection("c", SCHEMA)

    def version(n: int):
        rec = NewItem(
            public_id="call",
            sha256=f"{n:064x}",
            modality=Modality.AUDIO,
            vector=unit(1, 1, 0, 0),
            source="call.wav",
            metadata={},
            text="full",
            duration_s=9.0,
        )
        segs = [
            NewItem(
                public_id=f"call#{i}",
                sha256=f"{n:064x}",
                modality=Modality.AUDIO_SEGMENT,
                vector=unit(1, 0, i + 1, 0),
                source="call.wav",
                metadata={},
                text=f"part {i}",
                parent_id="call",
                start_s=float(i),
                end_s=i + 1.0,
            )
            for i in range(n)
        ]
        return rec, segs

    assert store_recording(index, "c", SCHEMA, *version(3)) == ("call", True)
    assert index.count("c") == 4
    assert store_recording(index, "c", SCHEMA, *version(1)) == ("call", False)
    assert index.count("c") == 2  # the recording and its one new segment
    index.close()
