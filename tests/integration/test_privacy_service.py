"""Personal data through the real service: a receipt with a full card number and an e-mail,
indexed by the batch path and online, read back by a support desk client without the
personal_data right and by an auditor with it; Ask's VLM tokens in the usage records."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protos.loupe.v1 import qa_pb2
from services.cli.launch import ServiceProcess
from services.client import LoupeClient
from services.client.sdk import ImageInput
from services.gateway.clients import hash_key, new_key
from tests.fixtures.scripted_vlm import ScriptedVlmServer

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[1] / "fixtures" / "screenshots"
RECEIPT = "receipt_card_full.png"
CARD, EMAIL = "4111 1111 1111 1111", "r.okafor@example.net"
KEYS = {name: new_key() for name in ("desk", "auditor", "ops")}
COLLECTION = "support-receipts"
QUESTION = "Which e-mail address was the receipt sent to?"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy")
    data = root / "data"
    # The batch path first (the embedded store has one owner at a time), then the service.
    folder = root / "batch"
    folder.mkdir()
    shutil.copy(SHOTS / RECEIPT, folder / RECEIPT)
    batch = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "index", "--batch", str(folder), "--bundled-models"]
        + ["--data-dir", str(data), "--collection", COLLECTION, "--errors", str(root / "errors.jsonl")]
        + ["--ocr", "always", "--progress-every", "5"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert batch.returncode == 0, batch.stdout + batch.stderr
    clients = [
        {
            "id": "desk",
            "keys": [{"sha256": hash_key(KEYS["desk"])}],
            "rights": ["search", "index", "ask"],
            "collections": ["support-*"],
        },
        {
            "id": "auditor",
            "keys": [{"sha256": hash_key(KEYS["auditor"])}],
            "rights": ["search", "ask", "personal_data"],
            "collections": ["support-*"],
        },
        {"id": "ops", "keys": [{"sha256": hash_key(KEYS["ops"])}], "rights": ["admin"], "collections": ["*"]},
    ]
    (root / "clients.yaml").write_text(yaml.safe_dump({"clients": clients}))
    with ScriptedVlmServer() as vlm:
        env = {
            "LOUPE_AUDIO": "false",
            "LOUPE_ASK__BACKEND": "openai",
            "LOUPE_ASK__BASE_URL": vlm.url,
            "LOUPE_ASK__MODEL": "scripted-vlm",
        }
        args = ["--bundled-models", "--data-dir", str(data), "--clients", str(root / "clients.yaml")]
        with ServiceProcess(args, log_path=root / "serve.log", env=env) as proc:
            with LoupeClient(proc.target, api_key=KEYS["desk"], timeout_s=300) as desk:
                [(online, _)] = desk.index_images(
                    [ImageInput((SHOTS / RECEIPT).read_bytes(), id="receipt-online", source=RECEIPT)],
                    collection=COLLECTION,
                )
            with LoupeClient(proc.target, api_key=KEYS["auditor"]) as auditor:
                [batch_id] = [
                    h.id
                    for h in auditor.search_text("GREEN VALLEY", mode="keyword", collection=COLLECTION)
                    if h.id != online
                ]
            # What a VLM answers when the prompt holds the receipt's e-mail as a placeholder.
            vlm.answers[QUESTION] = f"The receipt was sent to [EMAIL_1] [{online}]."
            yield proc, vlm, {"online": online, "batch": batch_id}


def client(service, who: str) -> LoupeClient:
    return LoupeClient(service[0].target, api_key=KEYS[who], timeout_s=300)


def test_the_card_is_stored_as_its_last_four_by_both_paths(service) -> None:
    _, _, ids = service
    with client(service, "auditor") as auditor:
        for path, pid in ids.items():
            text = auditor.get(pid, collection=COLLECTION).text
            assert "GREEN VALLEY" in text, (path, text)  # OCR read the receipt
            assert CARD not in text and CARD.replace(" ", "") not in text, (path, text)
            assert "card ending 1111" in text, (path, text)
            assert EMAIL in text, (path, text)  # stored; shown by right
        # The full number is not keyword-searchable: its first group is gone everywhere.
        assert not auditor.search_text("4111", mode="keyword", collection=COLLECTION).hits


def test_a_client_without_the_right_sees_the_email_masked_in_search_and_get(service) -> None:
    _, _, ids = service
    with client(service, "desk") as desk:
        for pid in ids.values():
            text = desk.get(pid, collection=COLLECTION).text
            assert EMAIL not in text and "[email hidden]" in text
            assert "ROBERT OKAFOR" not in text  # the card holder's name too
        hits = desk.search_text("GREEN VALLEY MARKET", mode="keyword", collection=COLLECTION)
        assert {h.id for h in hits} == set(ids.values())
        assert all(EMAIL not in h.item.text and "[email hidden]" in h.item.text for h in hits)
        dense = desk.search_text("a grocery receipt", collection=COLLECTION)
        assert all(EMAIL not in h.item.text for h in dense)
        # Nor can it find the receipt by the address it may not see: the address is masked in
        # the query, which then finds what any other address finds.
        whole, decoy = (
            [(h.id, round(h.score, 4)) for h in desk.search_text(q, mode="keyword", collection=COLLECTION)]
            for q in (EMAIL, "someone.else@elsewhere.org")
        )
        assert whole == decoy
        # Nor by a piece of it, or of the phone number: the keyword index holds none of them.
        for piece in ("okafor", "example.net", "010 3344"):
            assert not desk.search_text(piece, mode="keyword", collection=COLLECTION).hits, piece
        # Pictures show what the text hides: no thumbnail of these receipts for this client.
        shown = desk.search_text("GREEN VALLEY MARKET", mode="keyword", collection=COLLECTION, with_thumbnails=True)
        assert shown.hits and not any(h.item.thumbnail for h in shown.hits)
    with client(service, "auditor") as auditor:  # with the right, the whole address finds both
        hits = auditor.search_text(EMAIL, mode="keyword", collection=COLLECTION)
        assert set(ids.values()) <= {h.id for h in hits}
        assert not auditor.search_text("okafor", mode="keyword", collection=COLLECTION).hits  # pieces: no
        assert all(EMAIL in h.item.text for h in hits if h.id in ids.values())


def test_ask_shows_a_retrieved_email_only_to_a_client_with_the_right(service) -> None:
    _, vlm, ids = service
    vlm.behaviour = "correct_cited"
    with client(service, "desk") as desk:
        hidden = desk.ask(QUESTION, k=2, collection=COLLECTION, mode="keyword")
    with client(service, "auditor") as auditor:
        shown = auditor.ask(QUESTION, k=2, collection=COLLECTION, mode="keyword")
    assert EMAIL not in hidden.text and all(EMAIL not in c.snippet for c in hidden.cited), hidden
    assert shown.verdict == qa_pb2.ANSWER_VERDICT_ANSWERED, shown
    assert EMAIL in shown.text, shown
    assert shown.citations and set(shown.citations) <= set(ids.values())


def test_ask_reports_vlm_tokens_and_usage_counts_them_per_client(service) -> None:
    proc, _, _ = service
    with client(service, "desk") as desk:
        answer = desk.ask("What was the total?", [(SHOTS / RECEIPT).read_bytes()])
    assert answer.tokens_in > 0 and answer.tokens_out > 0
    with client(service, "ops") as ops:
        rows = [r for r in ops.usage(client="desk") if r.rpc == "Ask" and r.code == "OK"]
    assert sum(r.tokens_in for r in rows) >= answer.tokens_in
    assert sum(r.tokens_out for r in rows) >= answer.tokens_out
