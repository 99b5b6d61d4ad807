"""The model-loading kit: load-once, the hub probe, runtime choices, registries."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from encoders.common.errors import InvalidInput, ModelUnavailable
from encoders.loading import hub
from encoders.loading.lazy import LazyModel
from encoders.loading.registry import Entry, Registry
from encoders.loading.runtime import pick_device, pick_dtype


class Counting(LazyModel):
    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.loads, self.fail_first = 0, fail_first

    @property
    def model_id(self) -> str:
        return "counting"

    def _load(self) -> None:
        self.loads += 1
        time.sleep(0.05)
        if self.fail_first and self.loads == 1:
            raise ModelUnavailable("first load fails")


def test_concurrent_first_callers_share_one_load() -> None:
    model = Counting()
    threads = [threading.Thread(target=model.load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model.loads == 1 and model.loaded


def test_a_failed_load_is_tried_again() -> None:
    model = Counting(fail_first=True)
    with pytest.raises(ModelUnavailable):
        model.load()
    assert not model.loaded
    assert model.load().loaded and model.loads == 2


def test_hub_offline_and_endpoint(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.unreachable(1.0) == "HF_HUB_OFFLINE is set"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as server:  # a mirror on loopback that accepts connections
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_address() == ("127.0.0.1", server.getsockname()[1])
        assert hub.unreachable(1.0) is None
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert "unreachable" in hub.unreachable(1.0)


def test_require_download_names_the_weights_and_how_to_supply(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    with pytest.raises(
        ModelUnavailable,
        match=r"weights for org/model are not in the local cache and "
        r"HF_HUB_OFFLINE is set\. Put them in /models",
    ):
        hub.require_download("org/model", "Put them in /models.", 1.0)


def test_a_dns_stall_is_bounded(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def stall(*args, **kwargs):
        time.sleep(1)
        raise OSError("lookup stalled")

    monkeypatch.setattr(socket, "create_connection", stall)
    start = time.monotonic()
    assert "did not answer within 0.2 s" in hub.unreachable(0.2)
    assert time.monotonic() - start < 2


def test_runtime_choices() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto", cuda=False) == "cpu" and pick_device("auto", cuda=True) == "cuda"
    with pytest.raises(ModelUnavailable, match="no CUDA device"):
        pick_device("cuda:1", cuda=False)
    with pytest.raises(InvalidInput, match="auto, cpu, cuda or cuda:N"):
        pick_device("tpu")
    with pytest.raises(ModelUnavailable, match="dtype fp16 needs a GPU"):
        pick_dtype("fp16", "cpu", field="dtype")
    with pytest.raises(InvalidInput, match="precision must be one of fp32, bf16, fp16"):
        pick_dtype("int4", "cpu")


def test_registry_lists_names_and_says_what_to_install() -> None:
    reg = Registry(
        "widget",
        {"json": Entry("json:JSONDecoder"), "ghost": Entry("ghost:Ghost", ("no_such_mod_xyz",), "pip install ghost")},
    )
    assert reg.names() == ["ghost", "json"] and reg.installed() == ["json"]
    assert reg.create("json").decode("[1]") == [1]
    with pytest.raises(InvalidInput, match="unknown widget 'yaml'; widgets: ghost, json"):
        reg.create("yaml")
    with pytest.raises(
        ModelUnavailable,
        match=r"widget 'ghost' is not installed \(cannot import no_such_mod_xyz\): "
        r"pip install ghost",
    ):
        reg.create("ghost")


def test_one_spec_parser_for_every_family(tmp_path) -> None:
    from encoders.loading.specs import BUNDLED, HUB, NAME, PATH, parse

    assert (parse(" bundled:tiny-clip ").kind, parse("bundled:tiny-clip").value) == (BUNDLED, "tiny-clip")
    assert parse("hf-hub:org/repo").kind == HUB and parse("hf-hub:org/repo").value == "org/repo"
    assert parse(f"local-dir:{tmp_path}").path == tmp_path and parse(str(tmp_path)).kind == PATH
    assert parse("~/models/x").path.is_absolute() and parse("./x").kind == PATH
    for name in ("ViT-B-32/laion2b_s34b_b79k", "org/repo", "base", "ViT-B-32//data/w.pt"):
        assert parse(name).kind == NAME
    with pytest.raises(InvalidInput, match="Whisper model spec is empty. Put weights in"):
        parse("  ", what="Whisper model", how_to_supply="Put weights in /models.")
