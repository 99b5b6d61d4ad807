"""The gateway through the real service: three clients on two tenants (a clients file)."""

from __future__ import annotations

import grpc
import pytest
import yaml

from services.cli.launch import ServiceProcess
from services.client import LoupeCallError, LoupeClient, TextInput
from services.gateway.clients import hash_key, new_key

pytestmark = pytest.mark.slow
KEYS = {name: new_key() for name in ("acme-app", "acme-reader", "globex")}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    clients = [
        {
            "id": "acme-app",
            "keys": [{"sha256": hash_key(KEYS["acme-app"])}],
            "rights": ["search", "index", "delete"],
            "collections": ["acme-*"],
        },
        {
            "id": "acme-reader",
            "keys": [{"sha256": hash_key(KEYS["acme-reader"])}],
            "rights": ["search"],
            "collections": ["acme-*"],
        },
        {
            "id": "globex",
            "keys": [{"sha256": hash_key(KEYS["globex"])}],
            "rights": ["search", "index", "delete", "ask"],
            "collections": ["globex"],
        },
    ]
    (root / "clients.yaml").write_text(yaml.safe_dump({"clients": clients}))
    args = ["--bundled-models", "--data-dir", str(root / "data"), "--clients", str(root / "clients.yaml")]
    env = {"LOUPE_AUDIO": "false", "LOUPE_ASK__ENABLED": "false"}
    with ServiceProcess(args, log_path=root / "serve.log", env=env) as proc:
        with LoupeClient(proc.target, api_key=KEYS["acme-app"]) as acme:
            acme.index_texts([TextInput("a red circle", id="acme-1")], collection="acme-docs")
        with LoupeClient(proc.target, api_key=KEYS["globex"]) as globex:
            globex.index_texts([TextInput("a blue square", id="globex-1")], collection="globex")
        yield proc


def call(service, who: str | None, fn):
    with LoupeClient(service.target, api_key=KEYS[who] if who else None) as client:
        try:
            return fn(client)
        except LoupeCallError as exc:
            return exc


def test_no_or_unknown_key_is_unauthenticated(service) -> None:
    for key in (None, new_key()):
        with LoupeClient(service.target, api_key=key) as client:
            with pytest.raises(LoupeCallError) as err:
                client.count(collection="acme-docs")
        assert err.value.code is grpc.StatusCode.UNAUTHENTICATED and "API key" in err.value.reason


def test_a_client_outside_its_rights_is_denied(service) -> None:
    err = call(service, "acme-reader", lambda c: c.index_texts([TextInput("x")], collection="acme-docs"))
    assert err.code is grpc.StatusCode.PERMISSION_DENIED and "may not index" in err.reason
    err = call(service, "globex", lambda c: list(c.transcribe(b"RIFF")))
    assert isinstance(err, LoupeCallError) and err.code is grpc.StatusCode.PERMISSION_DENIED
    assert call(service, "acme-reader", lambda c: c.count(collection="acme-docs")) == 1


def test_no_rpc_reaches_another_tenants_items(service) -> None:
    attempts = {
        "SearchText": lambda c: c.search_text("a blue square", collection="globex"),
        "SearchImage by id": lambda c: c.search_image(id="globex-1", collection="globex"),
        "GetItem": lambda c: c.get("globex-1", collection="globex"),
        "Count": lambda c: c.count(collection="globex"),
        "Delete by filter": lambda c: c.delete(where={"modality": "text"}, collection="globex"),
        "Delete by id": lambda c: c.delete(["globex-1"], collection="globex"),
        "default collection": lambda c: c.count(),
    }
    for name, attempt in attempts.items():
        err = call(service, "acme-app", attempt)
        assert isinstance(err, LoupeCallError) and err.code is grpc.StatusCode.PERMISSION_DENIED, name
        assert "acme" not in err.reason.replace("'acme-app'", ""), name
    assert call(service, "globex", lambda c: c.count(collection="globex")) == 1  # nothing was deleted


def test_status_and_not_found_show_a_client_only_its_own_collections(service) -> None:
    acme = call(service, "acme-reader", lambda c: c.status())
    assert [c.name for c in acme.collections] == ["acme-docs"]
    globex = call(service, "globex", lambda c: c.status())
    assert [c.name for c in globex.collections] == ["globex"]
    err = call(service, "acme-app", lambda c: c.count(collection="acme-missing"))
    assert err.code is grpc.StatusCode.NOT_FOUND and "acme-docs" in err.reason and "globex" not in err.reason


def test_a_client_works_in_its_own_tenant(service) -> None:
    hits = call(service, "acme-reader", lambda c: c.search_text("a red circle", collection="acme-docs"))
    assert [h.item.id for h in hits.hits] == ["acme-1"]
    assert call(service, "acme-app", lambda c: c.delete(["acme-1"], collection="acme-docs")) == 1
