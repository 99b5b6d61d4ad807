"""The gateway: clients file, keys, and each call's decision."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest
import yaml

from encoders.common.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from protos.loupe.v1 import index_pb2, qa_pb2, search_pb2
from services.gateway.clients import hash_key, load_clients, new_key
from services.gateway.gate import Gateway, collection_of

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
KEYS = {name: new_key() for name in ("a-search", "a-admin", "b-all", "a-old")}


def clients_file(tmp_path, **overrides):
    entries = [
        {
            "id": "a-search",
            "keys": [
                {"sha256": hash_key(KEYS["a-search"])},
                {"sha256": hash_key(KEYS["a-old"]), "expires": "2026-12-01T00:00:00Z"},
            ],
            "rights": ["search"],
            "collections": ["a-*"],
        },
        {"id": "a-admin", "keys": [{"sha256": hash_key(KEYS["a-admin"])}], "rights": ["admin"], "collections": ["a-*"]},
        {
            "id": "b-all",
            "keys": [{"sha256": hash_key(KEYS["b-all"])}],
            "rights": ["search", "index", "delete", "ask"],
            "collections": ["b-docs", "shared"],
        },
    ]
    path = tmp_path / "clients.yaml"
    path.write_text(yaml.safe_dump({"clients": overrides.get("entries", entries)}))
    return path


@pytest.fixture
def gate(tmp_path) -> Gateway:
    return Gateway(load_clients(clients_file(tmp_path)), source="clients.yaml", clock=lambda: NOW)


def meta(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_each_key_finds_its_client_and_others_are_refused(gate) -> None:
    assert gate.mode == "clients" and "3 clients" in gate.describe()
    assert gate.authenticate(meta(KEYS["a-search"])).id == "a-search"
    assert gate.authenticate({"x-api-key": KEYS["b-all"]}).id == "b-all"
    with pytest.raises(Unauthenticated, match="no API key"):
        gate.authenticate({})
    with pytest.raises(Unauthenticated, match="unknown API key"):
        gate.authenticate(meta(new_key()))
    with pytest.raises(Unauthenticated, match="expired at 2026-12-01 00:00 UTC") as expired:
        gate.authenticate(meta(KEYS["a-old"]))
    # Whoever holds an old key learns only that it expired, not whose it was.
    assert "a-search" not in str(expired.value)


def test_a_rotated_key_overlaps_until_it_expires(tmp_path) -> None:
    before = Gateway(load_clients(clients_file(tmp_path)), clock=lambda: dt.datetime(2026, 11, 30, tzinfo=dt.UTC))
    assert before.authenticate(meta(KEYS["a-old"])).id == "a-search"


def test_rights_and_collections(gate) -> None:
    a, b = gate.authenticate(meta(KEYS["a-search"])), gate.authenticate(meta(KEYS["b-all"]))
    gate.authorize(a, "SearchText", search_pb2.SearchTextRequest(options=search_pb2.SearchOptions(collection="a-x")))
    with pytest.raises(Forbidden, match="may not index"):
        gate.authorize(a, "IndexTexts", index_pb2.IndexTextsRequest(collection="a-x"))
    with pytest.raises(Forbidden, match="may not use collection 'b-docs'") as err:
        gate.authorize(a, "GetItem", index_pb2.GetItemRequest(collection="b-docs", id="x"))
    assert "shared" not in err.value.reason  # another tenant's collections are never named
    with pytest.raises(Forbidden, match="'default'"):  # no collection named: the default one
        gate.authorize(b, "Count", index_pb2.CountRequest())
    with pytest.raises(Forbidden, match="may not use collection 'a-x'"):
        gate.authorize(b, "Ask", qa_pb2.AskRequest(question="q", retrieval=qa_pb2.Retrieval(collection="a-x", k=3)))
    gate.authorize(b, "Ask", qa_pb2.AskRequest(question="q"))  # about uploads only: no collection is read
    gate.authorize(b, "Delete", index_pb2.DeleteRequest(collection="shared"))
    with pytest.raises(Forbidden, match="may not transcribe"):
        gate.authorize(b, "Transcribe", None)
    admin = gate.authenticate(meta(KEYS["a-admin"]))
    gate.authorize(admin, "Delete", index_pb2.DeleteRequest(collection="a-1"))
    with pytest.raises(Forbidden):  # admin rights, still only its tenant's collections
        gate.authorize(admin, "Delete", index_pb2.DeleteRequest(collection="b-docs"))
    gate.authorize(a, "GetStatus", index_pb2.GetStatusRequest())


def test_a_missing_collection_names_only_the_clients_own(gate) -> None:
    a = gate.authenticate(meta(KEYS["a-search"]))
    err = NotFound("collection 'a-9' does not exist", existing=("a-1", "b-docs", "shared"))
    shown = gate.shown(a, err)
    assert "'a-1'" in shown.reason and "b-docs" not in shown.reason and "shared" not in shown.reason


def test_collection_of_each_rpc() -> None:
    assert collection_of("SearchImage", search_pb2.SearchImageRequest()) == "default"
    assert collection_of("IndexAudio", index_pb2.IndexAudioRequest(collection="calls")) == "calls"
    assert collection_of("Transcribe", None) is None and collection_of("GetStatus", None) is None
    with pytest.raises(InvalidInput):
        collection_of("Count", index_pb2.CountRequest(collection="../etc"))


def test_shared_key_and_open_modes() -> None:
    shared = Gateway(shared_key="s3cret")
    assert shared.mode == "shared-key" and shared.authenticate(meta("s3cret")).may("delete")
    with pytest.raises(Unauthenticated, match="wrong API key"):
        shared.authenticate(meta("s3cre"))
    assert Gateway().mode == "open" and "OPEN" in Gateway().describe()
    assert Gateway().authenticate({}).sees("anything")


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([], "non-empty list under 'clients:'"),
        ([{"id": "x", "keys": [{"sha256": "abc"}], "rights": ["search"], "collections": ["*"]}], "64 hex digits"),
        ([{"id": "x", "keys": [{"sha256": "a" * 64}], "rights": ["read"], "collections": ["*"]}], "unknown: read"),
        ([{"id": "x", "keys": [{"sha256": "a" * 64}], "rights": ["search"], "collections": []}], "collections"),
        ([{"id": "x\n", "keys": [{"sha256": "a" * 64}], "rights": ["search"], "collections": ["*"]}], "1-64 letters"),
        ([{"id": "x", "keys": [{"sha256": "a" * 64 + "\n"}], "rights": ["search"], "collections": ["*"]}], "64 hex"),
        (
            [
                {"id": "x", "keys": [{"sha256": "a" * 64}], "rights": ["search"], "collections": ["*"]},
                {"id": "x", "keys": [{"sha256": "b" * 64}], "rights": ["search"], "collections": ["*"]},
            ],
            "appears twice",
        ),
        (
            [
                {
                    "id": "x",
                    "keys": [{"sha256": "a" * 64, "expires": "soon"}],
                    "rights": ["search"],
                    "collections": ["*"],
                }
            ],
            "not an ISO date-time",
        ),
    ],
)
def test_a_bad_clients_file_says_what_is_wrong(tmp_path, entries, match) -> None:
    with pytest.raises(InvalidInput, match=match):
        load_clients(clients_file(tmp_path, entries=entries))


def test_keys_create_prints_a_key_whose_hash_it_lists_and_keys_list_reads_it(tmp_path) -> None:
    run = [sys.executable, "-m", "services.cli.main", "keys"]
    made = subprocess.run(
        [*run, "create", "shop", "--rights", "search,index", "--collections", "shop-*"],
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip()
    assert key.startswith("lp_") and hash_key(key) in made.stderr and '["shop-*"]' in made.stderr
    entry = made.stderr[made.stderr.index("  - id: shop") :]
    path = tmp_path / "clients.yaml"
    path.write_text("clients:\n" + entry)
    gate = Gateway(load_clients(path))
    assert gate.authenticate(meta(key)).id == "shop"
    listed = subprocess.run([*run, "list", "--clients", str(path)], capture_output=True, text=True, check=True)
    assert "shop" in listed.stdout and "index,search" in listed.stdout and key not in listed.stdout
    bad = subprocess.run([*run, "create", "x", "--rights", "read"], capture_output=True, text=True)
    assert bad.returncode == 2 and "rights must be some of" in bad.stderr


def test_every_rpc_of_the_contract_needs_a_named_right() -> None:
    from services.gateway.gate import RPC_RIGHTS
    from tests.fixtures.contract import rpcs

    assert rpcs() == set(RPC_RIGHTS)
