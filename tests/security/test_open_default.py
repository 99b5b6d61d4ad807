"""The open default (no keys: the README's first command) against a page on another site:
simple cross-site requests, other origins, and DNS rebinding (a foreign Host)."""

from __future__ import annotations

import json

import pytest

from services.client import TextInput
from tests.security.wire import post

pytestmark = pytest.mark.slow
COLLECTION = "open-attacks"


@pytest.fixture(scope="module")
def web(service):
    with service.client() as client:
        client.index_texts([TextInput("a green triangle", id="keep-me")], collection=COLLECTION)
    return service.process.web_url


def count(web) -> int:
    status, body = post(web, "Count", {"collection": COLLECTION}, None)
    assert status == 200, body
    return int(body["count"])


def test_a_page_on_another_site_cannot_write_or_delete_with_simple_requests(web) -> None:
    before = count(web)
    write = json.dumps({"collection": COLLECTION, "items": [{"text": "planted"}]}).encode()
    for content_type in (
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        headers = {"content-type": content_type, "origin": "https://evil.example"}
        assert post(web, "IndexTexts", None, None, raw=write, headers=headers)[0] in (403, 415)
        headers = {"content-type": content_type}  # even without an Origin (a no-cors form post)
        status, body = post(web, "IndexTexts", None, None, raw=write, headers=headers)
        assert status == 415 and "application/json" in body["error"]["message"], content_type
        status, _ = post(
            web,
            "Delete",
            None,
            None,
            raw=json.dumps({"collection": COLLECTION, "ids": {"ids": ["keep-me"]}}).encode(),
            headers=headers,
        )
        assert status == 415
    assert count(web) == before


def test_a_page_on_another_origin_is_refused_even_with_json(web) -> None:
    before = count(web)
    for origin in ("https://evil.example", "null", "http://localhost:1", "http://127.0.0.1.evil.example"):
        status, body = post(
            web,
            "IndexTexts",
            {"collection": COLLECTION, "items": [{"text": "planted"}]},
            None,
            headers={"origin": origin},
        )
        assert status == 403 and "allowed_origins" in body["error"]["message"], origin
        status, _ = post(web, "IndexTexts", None, None, method="OPTIONS", raw=b"", headers={"origin": origin})
        assert status == 403  # no CORS preflight is granted
    assert count(web) == before


def test_dns_rebinding_a_foreign_host_is_not_served(web) -> None:
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example"):
        status, body = post(web, "Count", {"collection": COLLECTION}, None, host=host)
        assert status == 421 and "allowed_hosts" in body["error"]["message"], host
        status, _ = post(web, "Delete", {"collection": COLLECTION, "ids": {"ids": ["keep-me"]}}, None, host=host)
        assert status == 421
    assert count(web) >= 1


def test_the_services_own_page_still_works(web) -> None:
    port = web.rstrip("/").rsplit(":", 1)[1]
    status, body = post(web, "Count", {"collection": COLLECTION}, None, headers={"origin": f"http://127.0.0.1:{port}"})
    assert status == 200 and int(body["count"]) >= 1
    status, _ = post(web, "Count", {"collection": COLLECTION}, None, host=f"localhost:{port}")
    assert status == 200
