"""The gateway through the real service: clients on two tenants (a clients file), their
rights, collections, rate limits and quotas, and the usage and audit records of it all."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import grpc
import pytest
import yaml

from services.cli.launch import ServiceProcess
from services.client import LoupeCallError, LoupeClient, TextInput
from services.gateway.clients import hash_key, new_key
from tests.fixtures import postgres as pg

pytestmark = pytest.mark.slow
KEYS = {name: new_key() for name in ("acme-app", "acme-reader", "globex", "acme-batch", "ops")}


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
        {
            "id": "acme-batch",
            "keys": [{"sha256": hash_key(KEYS["acme-batch"])}],
            "rights": ["search", "index"],
            "collections": ["acme-*"],
            "limits": {"rate": 1, "burst": 3},
            "quotas": {"items_per_day": 2},
        },
        {"id": "ops", "keys": [{"sha256": hash_key(KEYS["ops"])}], "rights": ["admin"], "collections": ["*"]},
    ]
    (root / "clients.yaml").write_text(yaml.safe_dump({"clients": clients}))
    args = ["--bundled-models", "--data-dir", str(root / "data"), "--clients", str(root / "clients.yaml")]
    env = {"LOUPE_AUDIO": "false", "LOUPE_ASK__ENABLED": "false"}
    with ExitStack() as stack:
        # Usage and audit in a real PostgreSQL server where one installs (CI installs it); every
        # other service of the suite keeps them in SQLite in its data folder.
        if pg.available():
            env["LOUPE_EVENTS_URL"] = stack.enter_context(pg.postgres())
        proc = stack.enter_context(ServiceProcess(args, log_path=root / "serve.log", env=env))
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


def test_a_quota_runs_out_and_says_so(service) -> None:
    time.sleep(3)  # a full burst for acme-batch
    for i in range(2):
        done = call(service, "acme-batch", lambda c, i=i: c.index_texts([TextInput(f"note {i}")], collection="acme-b"))
        assert not isinstance(done, LoupeCallError), done
    err = call(service, "acme-batch", lambda c: c.index_texts([TextInput("one too many")], collection="acme-b"))
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "items_per_day quota (2)" in err.reason
    assert 0 < err.retry_after_s <= 86_400  # at the next UTC midnight


def test_a_burst_over_the_rate_limit_is_refused_with_a_delay_while_others_are_served(service) -> None:
    time.sleep(3)
    outcomes = [call(service, "acme-batch", lambda c: c.count(collection="acme-b")) for _ in range(6)]
    refused = [o for o in outcomes if isinstance(o, LoupeCallError)]
    assert refused and all(o.code is grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused)
    assert "rate limit (1 calls/s)" in refused[0].reason and 0 < refused[0].retry_after_s <= 1
    assert outcomes[0] == 2  # the burst's first calls went through
    assert call(service, "acme-reader", lambda c: c.count(collection="acme-b")) == 2  # another client is served


def test_usage_and_audit_match_what_was_done_and_survive_a_restart(service) -> None:
    err = call(service, "acme-app", lambda c: c.usage())
    assert err.code is grpc.StatusCode.PERMISSION_DENIED and "may not admin" in err.reason

    def records():
        usage = call(service, "ops", lambda c: c.usage())
        assert not isinstance(usage, LoupeCallError), usage
        audit = call(service, "ops", lambda c: c.audit())
        return usage, audit

    usage, audit = records()
    rows = {(r.client, r.rpc, r.code): r for r in usage}
    assert rows[("acme-app", "IndexTexts", "OK")].items == 1
    assert rows[("acme-batch", "IndexTexts", "OK")].calls == 2
    assert rows[("acme-batch", "IndexTexts", "RESOURCE_EXHAUSTED")].calls == 1
    assert rows[("acme-reader", "IndexTexts", "PERMISSION_DENIED")].calls == 1
    assert rows[("(unauthenticated)", "Count", "UNAUTHENTICATED")].calls == 2
    assert rows[("acme-app", "Delete", "OK")].calls == 1
    writes = [(a.client, a.rpc, a.collection, a.code, a.count, json.loads(a.target_json)) for a in audit]
    assert ("acme-app", "IndexTexts", "acme-docs", "OK", 1, {"ids": ["acme-1"]}) in writes
    assert ("globex", "IndexTexts", "globex", "OK", 1, {"ids": ["globex-1"]}) in writes
    assert ("acme-app", "Delete", "acme-docs", "OK", 1, {"ids": ["acme-1"]}) in writes
    denied = [w for w in writes if w[0] == "acme-app" and w[2] == "globex"]
    assert len(denied) == 2  # the attempts to delete in another tenant are on record, as refused, with nothing done
    assert all(w[3] == "PERMISSION_DENIED" and w[4] == 0 for w in denied)
    own = call(service, "acme-app", lambda c: c.count(collection="acme-docs"))
    assert own == 0

    service.stop()
    service.start()
    after_usage, after_audit = records()
    assert {(r.client, r.rpc, r.code, r.calls) for r in usage} <= {
        (r.client, r.rpc, r.code, r.calls) for r in after_usage
    }
    assert [a.at for a in audit] == [a.at for a in after_audit][: len(audit)]
