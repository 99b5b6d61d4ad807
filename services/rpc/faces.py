"""What the RPC logic calls: the encoder, index, transcriber and answerer faces.

`LoupeApi` and the Ask worker depend on these Protocols only. Under Serve they are
deployment handles behind `services.serve.workers.HandleCalls`; in-process (unit tests, the
CLI) the plain workers behind `ThreadCalls`. Every method is awaited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from encoders.clip.encoder import TextEmbedding
    from encoders.common.errors import InvalidInput
    from encoders.text.chunking import EmbeddedTranscript, TimedText
    from indexing.payloads import NewItem
    from indexing.probes import Probe
    from indexing.query import Found, SearchQuery
    from indexing.types import CollectionSchema, Condition, Modality
    from lmm.types import Answer
    from services.serve.workers import EncodedImage, EncoderInfo, Transcript


class EncoderFace(Protocol):
    async def info(self) -> EncoderInfo: ...

    async def encode_images(self, blobs: list[bytes]) -> list[EncodedImage | InvalidInput]: ...

    async def encode_texts(self, texts: list[str]) -> TextEmbedding: ...

    async def embed_transcript(self, segments: list[TimedText], overlap_tokens: int) -> EmbeddedTranscript: ...


class IndexFace(Protocol):
    async def ping(self) -> str: ...

    async def add(self, name: str, schema: CollectionSchema, items: list[NewItem]) -> list[tuple[str, bool]]: ...

    async def add_recording(
        self, name: str, schema: CollectionSchema, recording: NewItem, segments: list[NewItem]
    ) -> tuple[str, bool]: ...

    async def stored_content(
        self, name: str, schema: CollectionSchema, keyed: list[tuple[str, str]]
    ) -> dict[str, dict[str, Any]]: ...

    async def merge(self, name: str, updates: list[tuple[str, str | None, dict[str, Any]]]) -> list[bool]: ...

    async def write_token(self, name: str) -> str: ...

    async def check_model(self, name: str, schema: CollectionSchema) -> None: ...

    async def search(self, schema: CollectionSchema, query: SearchQuery) -> Found: ...

    async def calibration_pool(self, name: str, limit: int) -> list[dict[str, Any]]: ...

    async def calibrate(
        self, name: str, schema: CollectionSchema, probes: list[Probe], pool: list[dict[str, Any]], floor: float
    ) -> dict[str, Any]: ...

    async def calibration_notes(self, schema: CollectionSchema) -> dict[str, str]: ...

    async def get(self, name: str, public_id: str) -> dict[str, Any]: ...

    async def delete_ids(self, name: str, ids: list[str]) -> int: ...

    async def delete_where(self, name: str, conditions: tuple[Condition, ...]) -> int: ...

    async def count(self, name: str, conditions: tuple[Condition, ...], modalities: tuple[Modality, ...]) -> int: ...

    async def collections(self) -> list[tuple[str, CollectionSchema, int]]: ...


class TranscriberFace(Protocol):
    async def model_id(self) -> str: ...

    async def transcribe(self, data: bytes, language: str | None) -> Transcript: ...


class AnswererFace(Protocol):
    async def model_id(self) -> str: ...

    async def identity(self) -> dict[str, Any]: ...

    async def ask(
        self, question: str, images: list[bytes], k: int, retrieval: SearchQuery, reveal_retrieved: bool = False
    ) -> Answer: ...
