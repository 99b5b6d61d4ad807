"""Personal data at rest and in responses: the policy (indexing.privacy), the store's one write
path masking cards, and the gateway masking what a caller without the right may not see."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.common.errors import InvalidInput
from encoders.text.keywords import keyword_vector, query_vector
from encoders.text.pii import redact
from indexing.index import Index
from indexing.payloads import NewItem
from indexing.privacy import Privacy, Rule
from indexing.types import CollectionSchema, Modality
from protos.loupe.v1 import common_pb2, index_pb2, search_pb2
from services.config import LoupeSettings
from services.gateway.clients import Client
from services.gateway.redact import redact_request, redact_response, sees_personal_data
from tests.unit.conftest import BACKENDS

SCHEMA = CollectionSchema(vector_name="clip", dim=4, model_id="test", model_version="v1")
RECEIPT = (
    "GREEN VALLEY MARKET\nTOTAL $33.21\nVISA 4111 1111 1111 1111\n"
    "Receipt sent to r.okafor@example.net\nTel (555) 010-3344\nThank you!"
)


def test_redact_keeps_a_cards_last_four_and_hides_other_kinds_by_name() -> None:
    out = redact(RECEIPT, {"CARD", "EMAIL"})
    assert "4111 1111 1111 1111" not in out and "card ending 1111" in out
    assert "r.okafor@example.net" not in out and "[email hidden]" in out
    assert "(555) 010-3344" in out  # phones were not asked for
    assert redact(RECEIPT, {"PHONE"}, label="removed").count("[phone removed]") == 1
    text = "nothing personal here"
    assert redact(text, {"CARD", "EMAIL"}) is text


def test_a_card_that_fails_luhn_is_not_a_card() -> None:
    assert redact("order 4111 1111 1111 1112", {"CARD"}) == "order 4111 1111 1111 1112"


def test_policy_defaults_and_the_longest_matching_collection_rule() -> None:
    p = Privacy.from_config(
        {
            "collections": {
                "hr-*": {"stored_masked": ["CARD", "IBAN"]},
                "hr-open*": {"shown_masked": []},
                "public": {"stored_masked": [], "shown_masked": ["SECRET"]},
            }
        }
    )
    assert p.rule("default") == Rule()
    assert p.rule("hr-payroll").stored_masked == {"CARD", "IBAN"}
    assert p.rule("hr-payroll").shown_masked == Rule().shown_masked  # only the keys it sets
    assert p.rule("hr-open-2026").shown_masked == frozenset()
    assert p.rule("public").stored_masked == frozenset()
    assert p.stored("public", RECEIPT) == RECEIPT
    assert "card ending 1111" in p.stored("default", RECEIPT)
    assert "r.okafor@example.net" in p.shown("hr-open-x", RECEIPT)
    assert "[email hidden]" in p.shown("hr-payroll", RECEIPT)


def test_an_unknown_kind_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match="unknown kind.*PASSPORT.*known: SECRET"):
        Privacy.from_config({"stored_masked": ["passport"]})
    with pytest.raises(ValueError, match="stored_masked"):
        LoupeSettings(privacy={"stored_masked": ["PASSPORT"]})


def test_the_config_builds_the_policy() -> None:
    s = LoupeSettings(privacy={"shown_masked": ["EMAIL"], "collections": {"x*": {"stored_masked": []}}})
    p = s.privacy.policy()
    assert p.rule("y").shown_masked == {"EMAIL"} and p.rule("y").stored_masked == {"CARD"}
    assert p.rule("x1").stored_masked == frozenset() and p.rule("x1").shown_masked == {"EMAIL"}


def _item(text: str, pid: str = "r1") -> NewItem:
    return NewItem(
        public_id=pid,
        sha256=f"{abs(hash(text)):064x}"[:64],
        modality=Modality.IMAGE,
        vector=np.asarray([1, 0, 0, 0], np.float32),
        text=text,
        keywords=keyword_vector(text),
    )


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_write_stores_cards_masked_and_keyword_search_cannot_find_the_full_number(backend, tmp_path) -> None:
    index = Index(BACKENDS[backend](tmp_path))
    index.upsert("receipts", [_item(RECEIPT)], SCHEMA)
    stored = index.get("receipts", "r1")["text"]
    assert "4111 1111 1111 1111" not in stored and "card ending 1111" in stored
    assert "r.okafor@example.net" in stored  # other kinds are stored; shown by right
    hits = index.search("receipts", None, limit=5, mode="keyword", keyword_query=query_vector("4111"))
    assert hits == []  # the masked digits are gone from the keyword vector too
    hits = index.search("receipts", None, limit=5, mode="keyword", keyword_query=query_vector("green valley"))
    assert [p["id"] for p, _ in hits] == ["r1"]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_no_piece_of_a_personal_value_finds_its_item_by_keyword(backend, tmp_path) -> None:
    """Fragments of a value shown only by right (an address's name and domain, a phone
    number's digit groups) are kept out of the keyword index: they are not an oracle."""
    index = Index(BACKENDS[backend](tmp_path))
    index.upsert("receipts", [_item(RECEIPT)], SCHEMA)
    assert "r.okafor@example.net" in index.get("receipts", "r1")["text"]  # stored; shown by right
    for probe in ("okafor", "r okafor", "example net", "example.net", "555", "010 3344", "3344", "0103344"):
        hits = index.search("receipts", None, limit=5, mode="keyword", keyword_query=query_vector(probe))
        assert hits == [], probe
    hits = index.search("receipts", None, limit=5, mode="keyword", keyword_query=query_vector("email hidden"))
    assert [p["id"] for p, _ in hits] == ["r1"]  # what every caller may see: that an address is there
    open_rule = Index(BACKENDS[backend](tmp_path / "open"), privacy=Privacy.from_config({"shown_masked": []}))
    open_rule.upsert("receipts", [_item(RECEIPT)], SCHEMA)  # a collection that shows everything
    hits = open_rule.search("receipts", None, limit=5, mode="keyword", keyword_query=query_vector("okafor"))
    assert [p["id"] for p, _ in hits] == ["r1"]


def test_no_thumbnail_is_stored_where_masking_removed_something(tmp_path) -> None:
    from dataclasses import replace

    index = Index(BACKENDS["edge"](tmp_path))
    jpeg = b"\xff\xd8\xff" + b"0" * 64
    index.upsert("receipts", [replace(_item(RECEIPT), thumbnail=jpeg)], SCHEMA)
    index.upsert("receipts", [replace(_item("a red circle", "c1"), thumbnail=jpeg)], SCHEMA)
    assert not index.get("receipts", "r1").get("thumbnail")  # the card is legible in the picture
    assert index.get("receipts", "c1").get("thumbnail")


def test_a_collection_may_keep_cards_and_mask_more(tmp_path) -> None:
    privacy = Privacy.from_config(
        {"collections": {"raw": {"stored_masked": []}, "strict": {"stored_masked": ["CARD", "EMAIL"]}}}
    )
    index = Index(BACKENDS["edge"](tmp_path), privacy=privacy)
    index.upsert("raw", [_item(RECEIPT)], SCHEMA)
    index.upsert("strict", [_item(RECEIPT)], SCHEMA)
    assert "4111 1111 1111 1111" in index.get("raw", "r1")["text"]
    strict = index.get("strict", "r1")["text"]
    assert "[email removed]" in strict and "card ending 1111" in strict


def _client(*rights: str) -> Client:
    return Client("c", (), frozenset(rights), ("*",))


def test_a_caller_without_the_right_gets_hits_and_items_masked_and_cannot_search_by_them() -> None:
    privacy = Privacy()
    reader, auditor = _client("search"), _client("search", "personal_data")
    assert not sees_personal_data(reader) and sees_personal_data(auditor) and sees_personal_data(_client("admin"))

    def response():
        out = search_pb2.SearchResponse()
        out.hits.add(item=common_pb2.Item(id="r1", text=RECEIPT), score=1.0)
        return out

    req = search_pb2.SearchTextRequest(query="receipt for r.okafor@example.net")
    masked = redact_response(privacy, reader, "SearchText", req, response())
    assert "r.okafor@example.net" not in masked.hits[0].item.text and "[email hidden]" in masked.hits[0].item.text
    assert "(555) 010-3344" not in masked.hits[0].item.text
    assert redact_response(privacy, auditor, "SearchText", req, response()).hits[0].item.text == RECEIPT
    item = redact_response(privacy, reader, "GetItem", index_pb2.GetItemRequest(id="r1"), common_pb2.Item(text=RECEIPT))
    assert "[email hidden]" in item.text

    redact_request(privacy, auditor, "SearchText", req)
    assert req.query == "receipt for r.okafor@example.net"
    redact_request(privacy, reader, "SearchText", req)
    assert req.query == "receipt for [email hidden]"


def test_a_caller_without_the_right_gets_no_thumbnail_of_an_item_whose_text_it_sees_masked() -> None:
    privacy = Privacy()
    reader, auditor = _client("search"), _client("search", "personal_data")
    jpeg = b"\xff\xd8\xff" + b"0" * 32

    def response():
        out = search_pb2.SearchResponse()
        out.hits.add(item=common_pb2.Item(id="r1", text=RECEIPT, thumbnail=jpeg), score=1.0)
        out.hits.add(item=common_pb2.Item(id="c1", text="a red circle", thumbnail=jpeg), score=0.9)
        return out

    req = search_pb2.SearchTextRequest(query="receipt")
    masked = redact_response(privacy, reader, "SearchText", req, response())
    assert [h.item.thumbnail for h in masked.hits] == [b"", jpeg]
    assert [h.item.thumbnail for h in redact_response(privacy, auditor, "SearchText", req, response()).hits] == [
        jpeg,
        jpeg,
    ]
    item = common_pb2.Item(id="r1", text=RECEIPT, thumbnail=jpeg)
    assert redact_response(privacy, reader, "GetItem", index_pb2.GetItemRequest(id="r1"), item).thumbnail == b""


def test_metadata_sources_and_filters_follow_the_same_rule_for_a_caller_without_the_right() -> None:
    from google.protobuf import struct_pb2

    privacy = Privacy()
    reader, auditor = _client("search", "delete"), _client("search", "personal_data")
    metadata = struct_pb2.Struct()
    metadata.update({"owner_email": "jane.doe@example.com", "team": "it", "contacts": ["tel (555) 010-3344"]})
    item = common_pb2.Item(id="r1", text="a receipt", sources=["/scans/jane.doe@example.com/r.png"])
    item.metadata.CopyFrom(metadata)
    masked = common_pb2.Item()
    masked.CopyFrom(item)
    masked = redact_response(privacy, reader, "GetItem", index_pb2.GetItemRequest(id="r1"), masked)
    shown = json_of(masked)
    assert "jane.doe@example.com" not in shown and "010-3344" not in shown and '"team": "it"' in shown
    assert redact_response(privacy, auditor, "GetItem", index_pb2.GetItemRequest(id="r1"), item) == item

    # Filters: a guessed value cannot be tested (it is masked before it is matched).
    where = common_pb2.Filter()
    cond = where.must.add(field="owner_email")
    cond.equals.string_value = "jane.doe@example.com"
    other = where.must.add(field="team")
    other.any_of.values.add().string_value = "it"
    for rpc, request in (
        ("Count", index_pb2.CountRequest(filter=where)),
        ("Delete", index_pb2.DeleteRequest(filter=where)),
        ("SearchImage", search_pb2.SearchImageRequest(id="x", options=search_pb2.SearchOptions(filter=where))),
    ):
        redact_request(privacy, reader, rpc, request)
        conditions = request.filter if rpc != "SearchImage" else request.options.filter
        assert conditions.must[0].equals.string_value == "[email hidden]", rpc
        assert conditions.must[1].any_of.values[0].string_value == "it", rpc
    kept = index_pb2.CountRequest(filter=where)
    redact_request(privacy, auditor, "Count", kept)
    assert kept.filter.must[0].equals.string_value == "jane.doe@example.com"


def json_of(message) -> str:
    from google.protobuf.json_format import MessageToJson

    return MessageToJson(message)


def test_a_text_with_personal_data_gets_a_keyed_digest_that_cannot_test_guesses(tmp_path) -> None:
    import hashlib

    key = b"k" * 32
    privacy = Privacy.from_config({}, content_key=key)
    digest = privacy.digest("receipts", RECEIPT)
    assert digest != hashlib.sha256(RECEIPT.encode()).hexdigest()  # not the plain hash of the text
    card_masked = Privacy().stored("receipts", RECEIPT)
    assert digest != hashlib.sha256(card_masked.encode()).hexdigest()
    assert digest == privacy.digest("receipts", RECEIPT)  # deterministic: re-indexing is idempotent
    assert Privacy.from_config({}, content_key=b"x" * 32).digest("receipts", RECEIPT) != digest
    plain = "a red circle on a blue background"
    assert privacy.digest("receipts", plain) == hashlib.sha256(plain.encode()).hexdigest()  # as before
    shows_all = Privacy.from_config({"stored_masked": [], "shown_masked": []}, content_key=key)
    assert shows_all.digest("x", RECEIPT) == hashlib.sha256(RECEIPT.encode()).hexdigest()  # nothing hidden

    settings = LoupeSettings(data_dir=str(tmp_path / "data"))
    made = settings.privacy_policy().content_key
    assert len(made) == 32 and settings.privacy_policy().content_key == made  # kept in the data folder
    key_file = tmp_path / "data" / "privacy-content.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    given = LoupeSettings(data_dir=str(tmp_path / "other"), privacy={"content_secret": "shared-secret"})
    assert given.privacy_policy().content_key == b"shared-secret" and not (tmp_path / "other").exists()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_whole_personal_value_finds_its_item_only_through_the_keyed_term(backend, tmp_path) -> None:
    from encoders.text.keywords import with_terms

    privacy = Privacy.from_config({}, content_key=b"k" * 32)
    index = Index(BACKENDS[backend](tmp_path), privacy=privacy)
    index.upsert("receipts", [_item(RECEIPT)], SCHEMA)

    def found(query: str, policy: Privacy = privacy) -> list[str]:
        keywords = with_terms(query_vector(query), policy.personal_terms("receipts", query))
        hits = index.search("receipts", None, limit=5, mode="keyword", keyword_query=keywords)
        return [p["id"] for p, _ in hits]

    # A caller with the right sends the whole value: found, however it is written.
    assert found("r.okafor@example.net") == ["r1"]
    assert found("receipt for R.Okafor@Example.NET") == ["r1"]
    assert found("555-010-3344") == ["r1"] and found("(555) 010 3344") == ["r1"]
    # Another value, pieces of this one, or the right value under another key: nothing.
    assert found("j.doe@example.net") == [] and found("555-010-3345") == []
    for piece in ("okafor", "example.net", "r okafor", "010 3344"):
        assert found(piece) == [], piece
    assert found("r.okafor@example.net", Privacy.from_config({}, content_key=b"x" * 32)) == []
    # What a caller without the right sends: the gateway masked the value, no term is made.
    assert privacy.personal_terms("receipts", privacy.shown("receipts", "r.okafor@example.net")) == []
