"""A transcribed recording as stored items: the recording itself and one item per chunk.

Both the service (IndexAudio) and batch indexing build them here, so a recording indexed
either way is stored the same way. Segment ids are "<recording id>#<n>"; each points at its
recording with parent_id, so deleting the recording deletes them.
"""

from __future__ import annotations

from typing import Any

from encoders.text.chunking import EmbeddedTranscript
from encoders.text.keywords import keyword_vector
from indexing.ids import item_key
from indexing.payloads import NewItem
from indexing.types import Modality


def recording_items(
    *,
    public_id: str | None,
    sha256: str,
    source: str | None,
    metadata: dict[str, Any],
    embedded: EmbeddedTranscript,
    full_text: str,
    language: str | None,
    duration_s: float,
) -> tuple[NewItem, list[NewItem]]:
    recording = NewItem(
        public_id=public_id,
        sha256=sha256,
        modality=Modality.AUDIO,
        vector=embedded.recording_vector,
        source=source,
        metadata=metadata,
        text=full_text,
        keywords=keyword_vector(full_text),
        language=language,
        duration_s=duration_s,
    )
    rec_id = item_key(public_id, sha256)
    segments = [
        NewItem(
            public_id=f"{rec_id}#{i}",
            sha256=sha256,
            modality=Modality.AUDIO_SEGMENT,
            vector=vector,
            source=source,
            metadata=metadata,
            text=chunk.text,
            keywords=keyword_vector(chunk.text),
            parent_id=rec_id,
            start_s=chunk.start_s,
            end_s=chunk.end_s,
            language=language,
        )
        for i, (chunk, vector) in enumerate(zip(embedded.chunks, embedded.vectors))
    ]
    return recording, segments
