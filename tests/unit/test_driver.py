"""services.serve.driver: a private Ray is told to keep its daemons on loopback (before `ray`
is imported), a running cluster is left as configured, and a user's own choice stands.
Without Ray: `ray` is a fake that records what it is handed."""

from __future__ import annotations

import os
import sys
import types

import pytest

from services.serve import driver

SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = {"_node_ip_address": "127.0.0.1", "dashboard_host": "127.0.0.1"}


def test_a_private_ray_is_on_loopback_with_the_dashboard_only_when_asked() -> None:
    assert driver.private_ray_env("local", {}) == {SWITCH: "0"}
    assert driver.ray_options("local", False, {SWITCH: "0"}) == {"include_dashboard": False, **LOOPBACK}
    assert driver.ray_options("local", True, {SWITCH: "0"}) == {"include_dashboard": True, **LOOPBACK}


def test_a_running_cluster_is_left_as_configured() -> None:
    assert driver.private_ray_env("ray://head:10001", {}) == {}
    assert driver.ray_options("ray://head:10001", True, {}) == {}
    assert driver.ray_options("10.0.0.5:6379", False, {SWITCH: "0"}) == {}


@pytest.mark.parametrize("value", ["1", "true", "TRUE"])
def test_a_user_who_lets_the_node_use_its_network_address_keeps_that(value) -> None:
    assert driver.private_ray_env("local", {SWITCH: value}) == {}
    assert driver.ray_options("local", False, {SWITCH: value}) == {"include_dashboard": False}


def test_main_sets_the_switch_before_ray_is_imported_and_hands_over_to_serve_run(monkeypatch) -> None:
    seen = {}

    def init(**kwargs):
        seen["init"] = kwargs
        seen["switch"] = os.environ.get(SWITCH)

    def cli_main(args, **kwargs):
        seen["serve"] = args
        return 0

    def fake_module(name: str, **attrs) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        return module

    scripts = fake_module("ray.serve.scripts", cli=types.SimpleNamespace(main=cli_main))
    monkeypatch.setitem(sys.modules, "ray", fake_module("ray", init=init))
    monkeypatch.setitem(sys.modules, "ray.serve", fake_module("ray.serve", scripts=scripts))
    monkeypatch.setitem(sys.modules, "ray.serve.scripts", scripts)
    # setenv first so that the variable main() sets is undone after the test either way.
    monkeypatch.setenv(SWITCH, "placeholder")
    monkeypatch.delenv(SWITCH)

    assert driver.main(["local", "/tmp/serve.yaml"]) == 0
    assert seen["switch"] == "0" and seen["serve"] == ["run", "/tmp/serve.yaml"]
    assert seen["init"] == {"address": "local", "namespace": "serve", "include_dashboard": False, **LOOPBACK}
