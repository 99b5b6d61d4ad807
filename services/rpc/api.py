"""What each RPC does, independent of how it is served.

`LoupeApi` validates requests, calls the encoder and the index through async faces
(`services.serve.workers.HandleCalls` under Serve, `ThreadCalls` in-process) and builds
responses. It raises domain errors only; `services.rpc.errors` turns them into status codes.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace

from encoders.common.errors import BatchInvalid, InvalidInput
from encoders.text.chunking import timed_texts
from encoders.text.keywords import query_vector, with_terms
from indexing.calibration import SIDES, Calibration
from indexing.ids import item_key
from indexing.index import NewItem
from indexing.ingest import image_item, text_item
from indexing.negatives import out_of_domain_images, out_of_domain_texts
from indexing.probes import Probe, ProbeSpec, probe_specs
from indexing.query import ASK_MODE, DEFAULT_LIMIT, SearchQuery
from indexing.recordings import recording_items
from indexing.types import SearchMode
from protos.loupe.v1 import audio_pb2, common_pb2, index_pb2, qa_pb2, search_pb2
from services.cache import open_cache
from services.config import LoupeSettings
from services.rpc import convert
from services.rpc.faces import AnswererFace, EncoderFace, IndexFace, TranscriberFace
from services.serve import requests
from services.serve.workers import EncodedImage, EncoderInfo


class LoupeApi:
    def __init__(
        self,
        settings: LoupeSettings,
        encoder: EncoderFace,
        index: IndexFace,
        transcriber: TranscriberFace | None = None,
        answerer: AnswererFace | None = None,
    ) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.encoder = encoder
        self.index = index
        # None when the service runs without audio / without Ask.
        self.transcriber = transcriber
        self.answerer = answerer
        self._info: EncoderInfo | None = None
        self._identity: dict | None = None
        self.embeddings = open_cache(settings, "embeddings")
        self.transcripts = open_cache(settings, "transcripts")
        self.answers = open_cache(settings, "answers")

    @functools.cached_property
    def privacy(self):
        """The privacy policy with its content key (read or made in the data folder on first use)."""
        return self.settings.privacy_policy()

    async def info(self) -> EncoderInfo:
        if self._info is None:
            self._info = await self.encoder.info()
        return self._info

    # -- IndexService -----------------------------------------------------------------------
    async def index_images(self, req: index_pb2.IndexImagesRequest) -> index_pb2.IndexResponse:
        name = convert.collection_name(req.collection)
        self._check_count(len(req.items))
        prepared, problems = [], []
        for i, it in enumerate(req.items):
            try:
                prepared.append(self._prepare(it, i, content=it.data, text=None))
            except InvalidInput as exc:
                problems.append(exc)
        _raise_all(problems)
        fresh, _ = await self._not_stored(name, prepared)
        encoded = await self.encoder.encode_images([req.items[i].data for i in fresh]) if fresh else []
        for i, result in zip(fresh, encoded):
            if isinstance(result, InvalidInput):
                problems.append(InvalidInput(f"items[{i}]: {result.reason}", field=f"items[{i}].data"))
        _raise_all(problems)
        items = [
            image_item(
                **{**prepared[i], "text": e.text},
                vector=e.vector,
                width=e.width,
                height=e.height,
                thumbnail=e.thumbnail,
            )
            for i, e in zip(fresh, encoded)
        ]
        return await self._store(name, prepared, fresh, items)

    async def index_texts(self, req: index_pb2.IndexTextsRequest) -> index_pb2.IndexResponse:
        name = convert.collection_name(req.collection)
        self._check_count(len(req.items))
        prepared, problems = [], []
        for i, it in enumerate(req.items):
            try:
                text = self._text(it.text, self.limits.max_text_chars, f"items[{i}].text")
                digest = self.privacy.digest(name, text)  # keyed when the text holds personal data
                prepared.append(self._prepare(it, i, content=text.encode(), text=text, digest=digest))
            except InvalidInput as exc:
                problems.append(exc)
        _raise_all(problems)
        fresh, _ = await self._not_stored(name, prepared)
        embedded = await self.encoder.encode_texts([prepared[i]["text"] for i in fresh]) if fresh else None
        items = [text_item(**prepared[i], vector=v) for i, v in zip(fresh, embedded.vectors if embedded else [])]
        return await self._store(name, prepared, fresh, items)

    async def index_audio(self, req: index_pb2.IndexAudioRequest) -> index_pb2.IndexAudioResponse:
        name = convert.collection_name(req.collection)
        transcriber = self._require_transcriber()
        if not req.data:
            raise InvalidInput("audio is empty (0 bytes); send the file's contents", field="data")
        p = self._prepare(req, None, content=req.data, text=None, prefix="")
        # Transcription costs seconds: refuse a wrong-model collection before it, not after.
        await self.index.check_model(name, (await self.info()).schema())
        transcript = await self._transcript(transcriber, req.data, convert.language(req.language))
        embedded = await self.encoder.embed_transcript(
            timed_texts(transcript.segments), self.settings.transcriber.chunk_overlap_tokens
        )
        info, t = await self.info(), transcript.info
        recording, segments = recording_items(
            public_id=p["public_id"],
            sha256=p["sha256"],
            source=p["source"],
            metadata=p["metadata"],
            embedded=embedded,
            full_text=" ".join(seg.text.strip() for seg in transcript.segments),
            language=t.language,
            duration_s=t.duration_s,
        )
        public_id, created = await self.index.add_recording(name, info.schema(), recording, segments)
        return index_pb2.IndexAudioResponse(
            id=public_id,
            created=created,
            duration_s=t.duration_s,
            language=t.language,
            language_probability=t.language_probability,
            segment_count=len(segments),
            model_id=info.model_id,
            transcriber_model_id=t.model_id,
            collection=name,
            transcript_controls=convert.transcript_controls(t.controls),
        )

    async def _transcript(self, transcriber: TranscriberFace, data: bytes, language: str | None):
        """The transcript of these bytes by this transcriber model and settings (cached)."""
        parts = (
            data,
            await transcriber.model_id(),
            language,
            self.settings.transcriber.model_dump(mode="json"),
            self.settings.limits.audio_limits().__dict__,
        )
        found = self.transcripts.get(*parts)
        if found is None:
            found = await transcriber.transcribe(data, language)
            self.transcripts.put(found, *parts)
        return found

    async def get_item(self, req: index_pb2.GetItemRequest) -> common_pb2.Item:
        name = convert.collection_name(req.collection)
        if not req.id:
            raise InvalidInput("id is empty", field="id")
        return convert.item(await self.index.get(name, req.id), name, thumbnail=req.with_thumbnail)

    async def delete(self, req: index_pb2.DeleteRequest) -> index_pb2.DeleteResponse:
        name = convert.collection_name(req.collection)
        which = req.WhichOneof("selector")
        if which == "ids":
            ids = list(dict.fromkeys(req.ids.ids))
            if not ids or any(not i for i in ids):
                raise InvalidInput("ids must be a non-empty list of non-empty ids", field="ids")
            return index_pb2.DeleteResponse(deleted=await self.index.delete_ids(name, ids))
        if which == "filter":
            conds = convert.conditions(req.filter)
            if not conds:
                raise InvalidInput(
                    "delete by filter needs at least one condition (refusing to delete everything)", field="filter"
                )
            return index_pb2.DeleteResponse(deleted=await self.index.delete_where(name, conds))
        raise InvalidInput("say what to delete: set ids or filter", field="selector")

    async def count(self, req: index_pb2.CountRequest) -> index_pb2.CountResponse:
        name = convert.collection_name(req.collection)
        conds = convert.conditions(req.filter)
        mods = convert.modalities(req.modalities, "modalities")
        return index_pb2.CountResponse(count=await self.index.count(name, conds, mods))

    async def get_status(
        self, req: index_pb2.GetStatusRequest, visible: Callable[[str], bool] = lambda name: True
    ) -> index_pb2.StatusResponse:
        """The model, the store and the collections `visible(name)` allows (a gateway client's own)."""
        info = await self.info()
        backend = await self.index.ping()
        out = index_pb2.StatusResponse(
            model_id=info.model_id,
            model_version=info.model_version,
            profile=info.profile,
            store_backend=backend,
            version=_version(),
        )
        notes = await self.index.calibration_notes(info.schema())
        for name, schema, count in await self.index.collections():
            if not visible(name):
                continue
            out.collections.add(
                name=name,
                count=count,
                model_id=schema.model_id,
                model_version=schema.model_version,
                dim=schema.dim,
                calibration=notes.get(name, ""),
            )
        return out

    async def calibrate(self, req: index_pb2.CalibrateRequest) -> index_pb2.CalibrateResponse:
        """Probes from a sample of the collection, the request's cases and the shipped
        out-of-domain queries, encoded here; the fit runs in the Index (indexing.fitting)."""
        name = convert.collection_name(req.collection)
        c = self.settings.calibration
        n = req.sample_items if req.HasField("sample_items") else c.sample_items
        if not 10 <= n <= 5000:
            raise InvalidInput(f"sample_items is {n}; it must be between 10 and 5000", field="sample_items")
        cases = [self._case(i, case) for i, case in enumerate(req.cases)]
        pool = await self.index.calibration_pool(name, n)
        specs = probe_specs(
            pool, c.caption_fields, cases, out_of_domain_texts(), out_of_domain_images(c.negative_images)
        )
        probes = await self._encode_probes(specs)
        info = await self.info()
        ids_only = [{"id": p["id"], "modality": p["modality"]} for p in pool]
        cal = Calibration.from_json(await self.index.calibrate(name, info.schema(), probes, ids_only, c.min_confidence))
        return index_pb2.CalibrateResponse(
            collection=name,
            model_id=cal.model_id,
            model_version=cal.model_version,
            positives=cal.report["examples"]["positive"],
            negatives=cal.report["examples"]["negative"],
            summary=cal.summary(),
            report_json=json.dumps(cal.report, sort_keys=True),
        )

    def _case(self, i: int, case: index_pb2.CalibrationCase) -> ProbeSpec:
        at = f"cases[{i}]"
        if len(set(case.relevant_ids)) != len(case.relevant_ids) or any(not r for r in case.relevant_ids):
            raise InvalidInput(f"{at}.relevant_ids must be distinct non-empty ids", field=f"{at}.relevant_ids")
        relevant, rejected = tuple(case.relevant_ids), tuple(case.not_relevant_ids)
        if len(set(rejected)) != len(rejected) or any(not r for r in rejected) or set(rejected) & set(relevant):
            raise InvalidInput(
                f"{at}.not_relevant_ids must be distinct non-empty ids, none of them relevant",
                field=f"{at}.not_relevant_ids",
            )
        origin = "case" if relevant else "case (negative)"
        which = case.WhichOneof("query")
        if which == "text":
            text = self._text(case.text, self.limits.max_query_chars, f"{at}.text")
            return ProbeSpec("text", origin, relevant, text=text, not_relevant=rejected)
        if which == "image" and case.image:
            return ProbeSpec(
                "image", origin, relevant, image=case.image, sides=SIDES[:1], field=f"{at}.image", not_relevant=rejected
            )
        raise InvalidInput(f"{at}: set text or image (bytes)", field=f"{at}.query")

    async def _encode_probes(self, specs: list[ProbeSpec], chunk: int = 32) -> list[Probe]:
        """Vectors (and keyword vectors) of every probe; an unreadable thumbnail is skipped,
        an unreadable case image is an error."""
        vectors: dict[int, object] = {}
        texts = [i for i, s in enumerate(specs) if s.kind == "text"]
        images = [i for i, s in enumerate(specs) if s.kind == "image"]
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            embedded = await self.encoder.encode_texts([specs[i].text for i in part])
            vectors.update(zip(part, embedded.vectors))
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            for i, result in zip(part, await self.encoder.encode_images([specs[i].image for i in part])):
                if isinstance(result, EncodedImage):
                    vectors[i] = result.vector
                elif specs[i].field:
                    raise InvalidInput(f"{specs[i].field}: {result.reason}", field=specs[i].field)
        probes = []
        for i, spec in enumerate(specs):
            if i not in vectors:
                continue
            keywords = query_vector(spec.text) if spec.text and SIDES[1] in spec.sides else None
            probes.append(
                Probe(spec.kind, vectors[i], keywords, spec.relevant, spec.origin, spec.sides, spec.not_relevant)
            )
        return probes

    # -- SearchService ----------------------------------------------------------------------
    async def search_text(self, req: search_pb2.SearchTextRequest) -> search_pb2.SearchResponse:
        text = self._text(req.query, self.limits.max_query_chars, "query")
        query = replace(self._query(req.options, convert.search_mode(req.options.mode), kind="text"), text=text)
        keywords = None
        if query.needs_keywords:
            # A whole personal value in the query (only a caller with the right can send one:
            # the gateway masks the others') matches the keyed term its items hold.
            keywords = with_terms(query_vector(text), self.privacy.personal_terms(query.collection, text))
        if not query.needs_vector:
            return await self._search(query.with_vectors(keywords=keywords), req.options.with_thumbnails)
        vector, truncated = await self._text_vector(text)
        response = await self._search(query.with_vectors(vector, keywords), req.options.with_thumbnails)
        response.query_truncated = truncated
        return response

    async def _text_vector(self, text: str) -> tuple[object, bool]:
        """The query's CLIP vector and whether it was cut, cached per model version."""
        info = await self.info()
        overflow = self.settings.encoder.text_overflow  # "error" must refuse what "truncate" cut
        parts = ("text", info.model_id, info.model_version, overflow, " ".join(text.split()))
        found = self.embeddings.get(*parts)
        if found is None:
            embedded = await self.encoder.encode_texts([text])
            found = (embedded.vectors[0], bool(embedded.truncated[0]))
            self.embeddings.put(found, *parts)
        return found

    async def search_image(self, req: search_pb2.SearchImageRequest) -> search_pb2.SearchResponse:
        query = self._query(req.options, SearchMode.DENSE.value, kind="image")
        which = req.WhichOneof("query")
        if which == "image":
            info = await self.info()
            # The image limits too: tightened limits must refuse an image accepted before.
            parts = ("image", info.model_id, info.model_version, repr(self.limits.image_limits()), req.image)
            vector = self.embeddings.get(*parts)
            if vector is None:  # only images that decoded are cached: a bad one is refused each time
                (result,) = await self.encoder.encode_images([req.image])
                if isinstance(result, InvalidInput):
                    raise InvalidInput(result.reason, field="image")
                vector = result.vector
                self.embeddings.put(vector, *parts)
            return await self._search(query.with_vectors(vector), req.options.with_thumbnails)
        if which == "id" and req.id:
            # The Index looks the item's vector up itself: one round trip, not two.
            return await self._search(replace(query, like_id=req.id), req.options.with_thumbnails)
        raise InvalidInput("set image (bytes) or id (an indexed item) to search by", field="query")

    async def _search(self, query: SearchQuery, thumbnails: bool = False) -> search_pb2.SearchResponse:
        info = await self.info()
        found = await self.index.search(info.schema(), query)
        response = search_pb2.SearchResponse(
            model_id=info.model_id,
            calibrated=found.calibrated,
            calibration=found.uncalibrated,
            rerank=found.rerank,
            diversity=found.diversity,
            stage_ms={k: round(v * 1000, 3) for k, v in found.stages.items()},
        )
        confidences = found.confidences or [None] * len(found.hits)
        reranked = found.rerank_scores or [None] * len(found.hits)
        for (payload, score), confidence, rerank_score in zip(found.hits, confidences, reranked):
            response.hits.add(
                item=convert.item(payload, query.collection, thumbnail=thumbnails),
                score=score,
                confidence=confidence,
                rerank_score=rerank_score,
            )
        response.no_match = found.calibrated and query.offset == 0 and not found.hits
        if found.more and query.offset + 2 * query.limit <= self.limits.max_window:
            response.next_offset = query.offset + query.limit
        return response

    # -- QAService --------------------------------------------------------------------------
    async def ask(
        self, req: qa_pb2.AskRequest, reveal_retrieved: bool = False, client_id: str = ""
    ) -> qa_pb2.AskResponse:
        """`reveal_retrieved`: personal data of retrieved items may appear in the answer (the
        caller has the personal_data right); the answer policy still applies. `client_id`: the
        caller, part of the answer cache's key (a cached answer names the call it repeats)."""
        if self.answerer is None:
            from encoders.common.errors import ModelUnavailable

            raise ModelUnavailable("this service runs without Ask; enable the Answerer deployment (ask.enabled)")
        r = req.retrieval
        if r.k < 0 or r.k > self.limits.max_limit:
            raise InvalidInput(
                f"retrieval.k is {r.k}; it must be between 0 and {self.limits.max_limit}", field="retrieval.k"
            )
        retrieval = SearchQuery(
            collection=convert.collection_name(r.collection, "retrieval.collection"),
            conditions=convert.conditions(r.filter, "retrieval.filter"),
            mode=convert.search_mode(r.mode, "retrieval.mode") if r.HasField("mode") else ASK_MODE,
        )
        parts = await self._answer_key(req, retrieval, reveal_retrieved, client_id) if self.answers.enabled else None
        if parts is not None and (hit := self.answers.get(*parts)) is not None:
            response = qa_pb2.AskResponse.FromString(hit["response"])
            response.cached, response.cached_request_id = True, hit["request_id"]
            response.tokens_in = response.tokens_out = 0  # no model ran: nothing to count
            return response
        answer = await self.answerer.ask(req.question, list(req.images), r.k, retrieval, reveal_retrieved)
        response = convert.answer(answer)
        # Only answers: an abstention may come of a model endpoint's bad moment.
        if parts is not None and response.verdict == qa_pb2.ANSWER_VERDICT_ANSWERED:
            self.answers.put({"response": response.SerializeToString(), "request_id": requests.current()}, *parts)
        return response

    async def _answer_key(
        self, req: qa_pb2.AskRequest, retrieval: SearchQuery, reveal_retrieved: bool, client_id: str
    ) -> tuple:
        """Everything an answer depends on: the uploads, the question (whitespace-normalised),
        the retrieval and the state of the collection it reads (its write token), who may see
        personal data, the CLIP model, and the Answerer's VLM, prompt and guard settings; and
        the caller: an entry is one client's, so a repeat never tells another client (another
        tenant) that the same screenshot was asked about, nor gives it that call's id."""
        info = await self.info()
        k = req.retrieval.k
        token = await self.index.write_token(retrieval.collection) if k > 0 else ""
        return (
            "ask",
            client_id,
            [hashlib.sha256(image).hexdigest() for image in req.images],
            " ".join(req.question.split()),
            k,
            retrieval.collection if k > 0 else "",
            repr(retrieval.conditions),
            retrieval.mode,
            token,
            reveal_retrieved,
            info.model_id,
            info.model_version,
            await self._answerer_identity(),
        )

    async def _answerer_identity(self) -> dict:
        """The Answerer's VLM, prompt and guard settings: fixed for the app's life, so asked once
        (not one Ray call per Ask)."""
        if self._identity is None:
            self._identity = await self.answerer.identity()
        return self._identity

    # -- AudioService -----------------------------------------------------------------------
    async def transcribe(self, req: audio_pb2.TranscribeRequest, stream):
        """Yields TranscribeResponse messages: info first, segments as they are decoded, controls last.

        `stream(data, language, word_timestamps)` is the transcriber's streaming call (an
        async iterator of TranscriptInfo, Segment objects, then TranscriptControls)."""
        self._require_transcriber()
        if not req.data:
            raise InvalidInput("audio is empty (0 bytes); send the file's contents", field="data")
        language = convert.language(req.language)
        async for part in stream(req.data, language, req.word_timestamps):
            yield convert.transcript_part(part)

    def _require_transcriber(self):
        if self.transcriber is None:
            from encoders.common.errors import ModelUnavailable

            raise ModelUnavailable("this service runs without a transcriber; add the Transcriber deployment")
        return self.transcriber

    # -- validation -------------------------------------------------------------------------
    def _query(self, o: search_pb2.SearchOptions, mode: str, kind: str) -> SearchQuery:
        limit = o.limit if o.HasField("limit") else DEFAULT_LIMIT
        if not 1 <= limit <= self.limits.max_limit:
            raise InvalidInput(
                f"limit is {limit}; it must be between 1 and {self.limits.max_limit}", field="options.limit"
            )
        if o.offset < 0 or o.offset + limit > self.limits.max_window:
            raise InvalidInput(
                f"offset {o.offset} + limit {limit} must stay within 0..{self.limits.max_window}; "
                "narrow the query with a filter instead of paging deeper",
                field="options.offset",
            )
        threshold = o.score_threshold if o.HasField("score_threshold") else None
        # Keyword mode thresholds a BM25 score (unbounded); the others a cosine.
        if threshold is not None and o.mode != search_pb2.SEARCH_MODE_KEYWORD and not -1.0 <= threshold <= 1.0:
            raise InvalidInput(
                f"score_threshold {threshold} is outside -1..1 (cosine similarity)", field="options.score_threshold"
            )
        floor = o.min_confidence if o.HasField("min_confidence") else self.settings.calibration.min_confidence
        if not 0.0 <= floor <= 1.0:
            raise InvalidInput(f"min_confidence {floor} is outside 0..1", field="options.min_confidence")
        mmr_lambda = o.mmr_lambda if o.HasField("mmr_lambda") else None
        if mmr_lambda is not None and not 0.0 <= mmr_lambda <= 1.0:
            raise InvalidInput(f"mmr_lambda {mmr_lambda} is outside 0..1", field="options.mmr_lambda")
        if o.HasField("rerank_candidates") and o.rerank_candidates < 1:
            raise InvalidInput(
                f"rerank_candidates is {o.rerank_candidates}; it must be at least 1", field="options.rerank_candidates"
            )
        if len(o.rerank) > 64:
            raise InvalidInput("rerank names a reranker: at most 64 characters", field="options.rerank")
        return SearchQuery(
            rerank=o.rerank,
            rerank_candidates=o.rerank_candidates,
            mmr_lambda=mmr_lambda,
            collection=convert.collection_name(o.collection, "options.collection"),
            kind=kind,
            min_confidence=floor,
            exact=o.exact,
            mode=mode,
            limit=limit,
            offset=o.offset,
            modalities=convert.modalities(o.modalities, "options.modalities"),
            conditions=convert.conditions(o.filter, "options.filter"),
            score_threshold=threshold,
        )

    def _check_count(self, n: int) -> None:
        if not 1 <= n <= self.limits.max_items_per_call:
            raise InvalidInput(f"{n} items sent; send 1 to {self.limits.max_items_per_call} per call", field="items")

    @staticmethod
    def _text(text: str, max_chars: int, field: str) -> str:
        text = text.strip()
        if not text:
            raise InvalidInput(f"{field} is empty", field=field)
        if len(text) > max_chars:
            raise InvalidInput(f"{field} is {len(text)} characters; the limit is {max_chars}", field=field)
        return text

    def _prepare(
        self, it, i: int | None, *, content: bytes, text: str | None, prefix: str | None = None, digest: str = ""
    ) -> dict:
        prefix = f"items[{i}]." if prefix is None else prefix
        return {
            "public_id": convert.caller_id(it.id, f"{prefix}id"),
            "sha256": digest or hashlib.sha256(content).hexdigest(),
            "source": it.source or None,
            "text": text,
            "metadata": convert.metadata(it.metadata, self.limits, f"{prefix}metadata"),
        }

    async def _not_stored(self, name: str, prepared: list[dict]) -> tuple[list[int], set[str]]:
        """(positions of the items to decode and encode, keys of those already stored with the
        same content by this model version): stored content is not processed again."""
        c = self.settings.cache
        if not (c.enabled and c.skip_stored):
            return list(range(len(prepared))), set()
        keyed = [(item_key(p["public_id"], p["sha256"]), p["sha256"]) for p in prepared]
        stored = set(await self.index.stored_content(name, (await self.info()).schema(), keyed))
        return [i for i, (key, _) in enumerate(keyed) if key not in stored], stored

    async def _store(
        self, name: str, prepared: list[dict], fresh: list[int], items: list[NewItem]
    ) -> index_pb2.IndexResponse:
        """Write the fresh items, merge sources and metadata into the reused ones; the
        response in request order."""
        info = await self.info()
        written = dict(zip(fresh, await self.index.add(name, info.schema(), items))) if items else {}
        reused = [i for i in range(len(prepared)) if i not in written]
        if reused:
            updates = [
                (
                    item_key(prepared[i]["public_id"], prepared[i]["sha256"]),
                    prepared[i]["source"],
                    prepared[i]["metadata"],
                )
                for i in reused
            ]
            await self.index.merge(name, updates)
        response = index_pb2.IndexResponse(model_id=info.model_id, collection=name)
        for i, p in enumerate(prepared):
            if i in written:
                response.items.add(id=written[i][0], created=written[i][1])
            else:
                response.items.add(id=item_key(p["public_id"], p["sha256"]), created=False, reused=True)
        return response

    async def healthy(self) -> bool:
        await self.info()
        await self.index.ping()
        if self.transcriber is not None:
            await self.transcriber.model_id()
        if self.answerer is not None:
            await self.answerer.model_id()
        return True


def _raise_all(problems: list[InvalidInput]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise BatchInvalid(problems)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loupe")
    except PackageNotFoundError:
        return "dev"
