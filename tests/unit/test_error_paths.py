"""Errors a client gets name the collection, never a path of the server's data folder.

The server log may keep the path (an operator needs it); the call's message may not.
"""

from __future__ import annotations

import logging
import shutil

import grpc
import pytest

from encoders.common.errors import InvalidInput, NotFound, StoreUnavailable
from indexing.store import edge
from indexing.store.edge import EdgeStore
from indexing.types import CollectionSchema
from services.rpc.errors import to_status

SCHEMA = CollectionSchema(vector_name="clip", dim=4, model_id="bundled:tiny-clip", model_version="v1")


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


def test_a_missing_collection_is_named_without_the_folder(data):
    store = EdgeStore(str(data))
    with pytest.raises(NotFound) as e:
        store.get_info("nope")
    store.close()
    assert "'nope'" in e.value.reason and str(data) not in e.value.reason


def test_a_broken_shard_is_named_by_its_collection_and_the_log_keeps_the_path(data, caplog):
    store = EdgeStore(str(data))
    store.create_collection("photos", SCHEMA)
    store.close()
    shutil.rmtree(data / "photos" / "shard")  # qdrant-edge's error names the folder it missed
    store = EdgeStore(str(data))
    with caplog.at_level(logging.WARNING, logger="loupe.store"), pytest.raises(StoreUnavailable) as e:
        store.count("photos")
    store.close()
    assert "'photos'" in e.value.reason
    assert str(data) not in e.value.reason and str(data) not in to_status(e.value).details
    assert str(data) in caplog.text


def test_a_file_error_gives_its_reason_without_the_file(data, monkeypatch):
    store = EdgeStore(str(data))
    store.create_collection("photos", SCHEMA)
    where = str(data / "photos" / "collection.json")

    def refuse(path, _value):
        raise PermissionError(13, "Permission denied", where)

    monkeypatch.setattr(edge, "write_json_atomic", refuse)
    with pytest.raises(StoreUnavailable) as e:
        store.update_info("photos", {"a": 1})
    store.close()
    assert e.value.reason == "embedded store failed to update info of 'photos': Permission denied"


def test_listing_and_a_closed_store_name_no_folder(data):
    store = EdgeStore(str(data))
    assert store.list_collections() == []
    store.close()
    for call in (store.list_collections, lambda: store.count("photos")):
        with pytest.raises(StoreUnavailable) as e:
            call()
        assert str(data) not in e.value.reason


def test_a_stray_os_error_reaches_the_client_without_its_path(tmp_path):
    where = str(tmp_path / "secret" / "loupe-events.db")
    status = to_status(PermissionError(13, "Permission denied", where))
    assert status.code == grpc.StatusCode.UNAUTHENTICATED  # the table is unchanged
    assert status.details == "Permission denied" and where not in status.details
    assert to_status(PermissionError("no key")).details == "no key"


def test_an_invalid_name_at_the_store_names_no_folder(data):
    store = EdgeStore(str(data))
    with pytest.raises(InvalidInput) as e:
        store.create_collection("../photos", SCHEMA)
    store.close()
    assert str(data) not in e.value.reason
