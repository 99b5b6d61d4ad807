"""An attacker's pass over the real service, over gRPC and the HTTP/JSON API: two tenants, a
tenant-scoped admin, a client without the personal_data right, a client with a small quota,
and an old key. Each test is a class of attack from the security review; docs/security.md
says what each role can and cannot see."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import grpc
import pytest
import yaml

from protos.loupe.v1 import search_pb2, search_pb2_grpc
from services.cli.launch import ServiceProcess
from services.client import ImageInput, LoupeCallError, LoupeClient, TextInput
from services.gateway.clients import hash_key, new_key
from tests.security.wire import post

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[1] / "fixtures" / "screenshots"
# A receipt whose card is already masked on screen: its e-mail and phone are shown by right only.
RECEIPT = "receipt_card_masked.png"
EMAIL = "jane.doe@example.com"
PIECES = ("jane", "doe", "jane.doe", "jane doe example", "010 3344", "3344", "0103344")
NAMES = ("a-app", "a-reader", "a-pd", "b-app", "b-admin", "quota", "ops", "old")
KEYS = {name: new_key() for name in NAMES}
RIGHTS = {
    "a-app": (["search", "index", "delete"], ["a-*"]),
    "a-reader": (["search"], ["a-*"]),
    "a-pd": (["search", "personal_data"], ["a-*"]),
    "b-app": (["search", "index"], ["b-*"]),
    "b-admin": (["admin"], ["b-*"]),
    "quota": (["search", "index"], ["q-*"]),
    "ops": (["admin"], ["*"]),
    "old": (["search"], ["a-*"]),
}


def _entry(name: str) -> dict:
    rights, collections = RIGHTS[name]
    key: dict = {"sha256": hash_key(KEYS[name])}
    if name == "old":  # a rotated-out key
        key["expires"] = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    entry = {"id": name, "keys": [key], "rights": rights, "collections": collections}
    if name == "quota":
        entry["quotas"] = {"items_per_day": 5}
    return entry


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("tenants")
    (root / "clients.yaml").write_text(yaml.safe_dump({"clients": [_entry(n) for n in NAMES]}))
    args = ["--bundled-models", "--data-dir", str(root / "data"), "--clients", str(root / "clients.yaml")]
    env = {"LOUPE_AUDIO": "false", "LOUPE_ASK__ENABLED": "false", "LOUPE_OCR__MODE": "always"}
    with ServiceProcess(args, log_path=root / "serve.log", env=env) as proc:
        with as_client(proc, "a-app") as a:
            a.index_images([ImageInput((SHOTS / RECEIPT).read_bytes(), id="receipt")], collection="a-docs")
            a.index_texts([TextInput("a red circle", id="a-circle")], collection="a-docs")
        with as_client(proc, "b-app") as b:
            b.index_texts([TextInput("a blue square", id="b-square")], collection="b-docs")
        yield proc


def as_client(proc, name: str) -> LoupeClient:
    return LoupeClient(proc.target, api_key=KEYS[name])


def refused(fn) -> LoupeCallError:
    with pytest.raises(LoupeCallError) as err:
        fn()
    return err.value


# -- 1 and 2: feedback is scoped, request ids are the server's -------------------------------------
def test_a_scoped_admin_sees_and_marks_only_its_tenants_feedback_and_uploads(svc) -> None:
    with as_client(svc, "a-app") as a:
        mine = a.search_image((SHOTS / RECEIPT).read_bytes(), collection="a-docs")  # an upload is kept
        a.feedback(mine.request_id, vote="down", comment="wrong receipt")
    with as_client(svc, "b-app") as b:
        theirs = b.search_text("a blue square", collection="b-docs")
        b.feedback(theirs.request_id, vote="down")
    with as_client(svc, "b-admin") as admin:
        seen = admin.list_feedback("rated", with_uploads=True)
        assert {r.request_id for r in seen} == {theirs.request_id}
        assert all(r.collection.startswith("b-") and not r.uploads for r in seen)
        err = refused(lambda: admin.mark_reviewed(mine.request_id, "closing another tenant's case"))
        assert err.code == grpc.StatusCode.NOT_FOUND
        assert refused(lambda: admin.feedback(mine.request_id, vote="up")).code == grpc.StatusCode.NOT_FOUND
    status, body = post(
        svc.web_url, "ListFeedback", {"view": "FEEDBACK_VIEW_RATED", "with_uploads": True}, KEYS["b-admin"]
    )
    assert status == 200 and [r["request_id"] for r in body["records"]] == [theirs.request_id]
    status, _ = post(svc.web_url, "MarkReviewed", {"request_id": mine.request_id}, KEYS["b-admin"])
    assert status == 404
    with as_client(svc, "ops") as ops:  # an admin of every collection reviews everything
        records = {r.request_id: r for r in ops.list_feedback("rated", with_uploads=True)}
        assert {mine.request_id, theirs.request_id} <= set(records) and records[mine.request_id].uploads
        assert records[mine.request_id].reviewed_at == ""  # the scoped admin's mark did nothing


def test_two_tenants_sending_the_same_request_id_get_two_records(svc) -> None:
    ids = {}
    for name, collection in (("a-app", "a-docs"), ("b-app", "b-docs")):
        with grpc.insecure_channel(svc.target) as channel:
            search = search_pb2_grpc.SearchServiceStub(channel)
            request = search_pb2.SearchTextRequest(
                query="a shape", options=search_pb2.SearchOptions(collection=collection)
            )
            metadata = [("x-api-key", KEYS[name]), ("x-request-id", "checkout-42")]
            ids[name] = search.SearchText(request, metadata=metadata, timeout=60).request_id
    assert ids["a-app"] != ids["b-app"] and "checkout-42" not in ids.values()
    with as_client(svc, "a-app") as a:
        a.feedback(ids["a-app"], vote="up")  # each owner rates its own call
        assert refused(lambda: a.feedback(ids["b-app"], vote="down")).code == grpc.StatusCode.NOT_FOUND
        assert refused(lambda: a.feedback("checkout-42", vote="down")).code == grpc.StatusCode.NOT_FOUND
    with as_client(svc, "b-app") as b:
        b.feedback(ids["b-app"], vote="down")


# -- 3 and 4: personal data in every representation ------------------------------------------------
def test_a_client_without_the_right_gets_no_picture_of_what_the_text_hides(svc) -> None:
    with as_client(svc, "a-reader") as reader:
        hits = reader.search_text("GREEN VALLEY MARKET", mode="keyword", collection="a-docs", with_thumbnails=True)
        receipt = next(h for h in hits if h.id == "receipt")
        assert EMAIL not in receipt.item.text and "[email hidden]" in receipt.item.text
        assert receipt.item.thumbnail == b""
        assert reader.get("receipt", collection="a-docs", with_thumbnail=True).thumbnail == b""
        similar = reader.search_image(id="a-circle", collection="a-docs", with_thumbnails=True)
        assert all(h.item.thumbnail == b"" for h in similar if h.id == "receipt")
        circle = reader.get("a-circle", collection="a-docs", with_thumbnail=True)
        assert circle.text == "a red circle"  # nothing personal: shown as stored
    body = {"collection": "a-docs", "id": "receipt", "with_thumbnail": True}
    status, item = post(svc.web_url, "GetItem", body, KEYS["a-reader"])
    assert status == 200 and not item.get("thumbnail") and EMAIL not in item["text"]
    with as_client(svc, "a-pd") as pd:  # with the right: the text and the picture
        item = pd.get("receipt", collection="a-docs", with_thumbnail=True)
        assert EMAIL in item.text and item.thumbnail


def test_no_piece_of_a_hidden_value_finds_the_item_by_keyword(svc) -> None:
    with as_client(svc, "a-reader") as reader:
        for piece in PIECES:
            hits = reader.search_text(piece, mode="keyword", collection="a-docs")
            assert "receipt" not in {h.id for h in hits}, piece
            status, body = post(
                svc.web_url,
                "SearchText",
                {"query": piece, "options": {"collection": "a-docs", "mode": "SEARCH_MODE_KEYWORD"}},
                KEYS["a-reader"],
            )
            assert status == 200 and "receipt" not in {h["item"]["id"] for h in body["hits"]}, piece
        assert "receipt" in {h.id for h in reader.search_text("GREEN VALLEY", mode="keyword", collection="a-docs")}
        # The whole address is masked in the query: it finds what any other address finds.
        whole, decoy = (
            [(h.id, round(h.score, 4)) for h in reader.search_text(q, mode="keyword", collection="a-docs")]
            for q in (EMAIL, "someone.else@elsewhere.org")
        )
        assert whole == decoy
    with as_client(svc, "a-pd") as pd:  # with the right, the whole value finds it; pieces do not
        assert "receipt" in {h.id for h in pd.search_text(EMAIL, mode="keyword", collection="a-docs")}
        assert "receipt" in {h.id for h in pd.search_text("555 010 3344", mode="keyword", collection="a-docs")}
        assert "receipt" not in {h.id for h in pd.search_text("jane", mode="keyword", collection="a-docs")}


# -- 6: quotas count what a call adds --------------------------------------------------------------
def test_a_quota_is_checked_against_what_the_call_itself_adds(svc) -> None:
    items = [TextInput(f"note {i}", id=f"q{i}") for i in range(20)]
    with as_client(svc, "quota") as q:
        err = refused(lambda: q.index_texts(items, collection="q-docs"))
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "adds 20" in err.reason
        body = {"collection": "q-docs", "items": [{"text": f"http {i}"} for i in range(64)]}
        status, reply = post(svc.web_url, "IndexTexts", body, KEYS["quota"])
        assert status == 429 and "items_per_day" in reply["error"]["message"]
        assert refused(lambda: q.count(collection="q-docs")).code == grpc.StatusCode.NOT_FOUND  # nothing stored
        q.index_texts(items[:5], collection="q-docs")  # exactly the quota
        assert (
            refused(lambda: q.index_texts(items[5:6], collection="q-docs")).code == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert q.count(collection="q-docs") == 5


# -- 5: an unauthenticated huge body is not read --------------------------------------------------
def test_an_unauthenticated_huge_body_is_refused_without_stalling_other_callers(svc) -> None:
    result: dict = {}

    def attack() -> None:
        result["status"], result["body"] = post(svc.web_url, "IndexTexts", None, None, raw=b" " * (48 << 20))

    thread = threading.Thread(target=attack)
    thread.start()
    with as_client(svc, "a-app") as a:  # other callers go on meanwhile, on both transports
        counts = [a.count(collection="a-docs") for _ in range(5)]
    status, _ = post(svc.web_url, "Count", {"collection": "a-docs"}, KEYS["a-app"])
    thread.join(timeout=120)
    assert counts == [counts[0]] * 5 and status == 200
    assert result["status"] == 401 and "API key" in result["body"]["error"]["message"]


# -- smaller items ---------------------------------------------------------------------------------
def test_an_expired_key_is_refused_without_naming_its_client(svc) -> None:
    with as_client(svc, "old") as old:
        err = refused(lambda: old.count(collection="a-docs"))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED and "expired" in err.reason and "old" not in err.reason.split()
    assert "'old'" not in err.reason


def test_names_with_control_characters_and_malformed_messages_are_invalid_arguments(svc) -> None:
    with as_client(svc, "a-app") as a:
        for name in ("a-docs\n", "a-docs\r", "a-docs\x00", "a-docs\t"):
            err = refused(lambda name=name: a.index_texts([TextInput("x")], collection=name))
            assert err.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED), name
        assert "a-docs" in {c.name for c in a.status().collections}
    with grpc.insecure_channel(svc.target) as channel:
        raw = channel.unary_unary("/loupe.v1.SearchService/SearchText")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff", metadata=[("x-api-key", KEYS["a-app"])], timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_errors_never_name_the_data_folder(svc) -> None:
    folder = str(Path(svc.log_path).parent / "data")
    with as_client(svc, "a-app") as a:
        reasons = [
            refused(lambda: a.get("nope", collection="a-missing")).reason,
            refused(lambda: a.get("nope", collection="a-docs")).reason,
            refused(lambda: a.count(collection="a-" + "x" * 300)).reason,
        ]
    assert not any(folder in r or "/tmp" in r for r in reasons), reasons
    assert json.dumps(reasons)


def test_the_digest_of_a_text_with_hidden_values_cannot_test_guesses(svc) -> None:
    import hashlib

    text = "Refund contact: jane.doe@example.com, phone (555) 010-3344. Order 1182 shipped."
    card = "Paid with VISA 4111 1111 1111 1111 on order 1183."
    with as_client(svc, "a-app") as a:
        (text_id, _), (card_id, _) = a.index_texts([TextInput(text), TextInput(card)], collection="a-docs")
    with as_client(svc, "a-reader") as reader:
        for item_id, raw in ((text_id, text), (card_id, card)):
            plain = hashlib.sha256(raw.encode()).hexdigest()
            item = reader.get(item_id, collection="a-docs")
            assert plain not in item_id and item.sha256 != plain  # a guess hashed does not match
            assert reader.count(where={"sha256": plain}, collection="a-docs") == 0
        assert "4111 1111 1111 1111" not in reader.get(card_id, collection="a-docs").text
    with as_client(svc, "a-app") as a:  # the same text again: the same item (idempotent)
        assert a.index_texts([TextInput(text)], collection="a-docs")[0] == (text_id, False)
