"""Secrets: *_file options, redaction on display, and `loupe serve` handing Ray no secret value."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from encoders.common.errors import InvalidInput
from services.config import load_settings
from services.secrets import MASK, redact, redact_url, scrub, secret_values

ROOT = Path(__file__).resolve().parents[2]

# Every secret a config can hold, each distinct so a leak names itself.
QDRANT_KEY = "qdrant-key-7f3a"
API_KEY = "shared-api-key-91c2"
PG_PASSWORD = "pg-pass-55d1"
REDIS_PASSWORD = "redis-pass-0b9e"
QDRANT_TOKEN = "qdrant-user-token-3c"
OTEL_PASSWORD = "otel-pass-8e4f"
VLM_TOKEN = "vlm-token-a1b2"
JUDGE_PASSWORD = "judge-pass-6d6d"
ALL = (QDRANT_KEY, API_KEY, PG_PASSWORD, REDIS_PASSWORD, QDRANT_TOKEN, OTEL_PASSWORD, VLM_TOKEN, JUDGE_PASSWORD)


@pytest.fixture(autouse=True)
def _no_loupe_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("LOUPE_")]:
        monkeypatch.delenv(name)


def secret_args(data_dir) -> dict:
    return {
        "data_dir": str(data_dir),
        "qdrant_url": f"https://{QDRANT_TOKEN}@qdrant.example:6333",
        "qdrant_api_key": QDRANT_KEY,
        "api_key": API_KEY,
        "events_url": f"postgresql://loupe:{PG_PASSWORD}@db.example/loupe",
        "cache": {"redis_url": f"redis://:{REDIS_PASSWORD}@redis.example:6379/0", "redis_prefix": "t:"},
        "tracing": {"endpoint": f"http://otel:{OTEL_PASSWORD}@collector:4318"},
        "ask": {
            "base_url": f"http://{VLM_TOKEN}@vllm:8000/v1",
            "judge_base_url": f"http://j:{JUDGE_PASSWORD}@judge/v1",
        },
    }


# -- redaction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://user:s3cret@db:5432/loupe", "postgresql://user:***@db:5432/loupe"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("https://tok3n@qdrant:6333", "https://***@qdrant:6333"),
        (
            "postgresql://db/loupe?user=u&password=s3cret&sslmode=require",
            "postgresql://db/loupe?user=u&password=***&sslmode=require",
        ),
        ("http://q:6333/?api_key=s3cret", "http://q:6333/?api_key=***"),
        ("http://qdrant:6333", "http://qdrant:6333"),  # nothing secret: unchanged
        ("sqlite:////var/lib/loupe/events.db", "sqlite:////var/lib/loupe/events.db"),
        ("./loupe-data", "./loupe-data"),
        ("not a url, user@example.com", "not a url, user@example.com"),
        ("http://u:p@[::1", MASK),  # unparseable: cannot tell where the password ends
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact(url) == shown


def test_redact_a_config_dict_at_any_depth(tmp_path):
    cfg = {
        "applications": [
            {
                "args": {**secret_args(tmp_path), "qdrant_api_key_file": "/run/secrets/q", "clients_file": None},
                "runtime_env": {"env_vars": {"LOUPE_API_KEY": API_KEY, "HF_HOME": "/cache"}},
            }
        ]
    }
    shown = redact(cfg)
    text = yaml.safe_dump(shown)
    assert not [s for s in ALL if s in text]
    args = shown["applications"][0]["args"]
    assert args["qdrant_api_key"] == args["api_key"] == MASK
    assert args["events_url"] == "postgresql://loupe:***@db.example/loupe"
    assert args["cache"] == {"redis_url": "redis://:***@redis.example:6379/0", "redis_prefix": "t:"}
    assert args["qdrant_api_key_file"] == "/run/secrets/q"  # a path, not a secret
    assert args["clients_file"] is None and args["data_dir"] == str(tmp_path)
    assert shown["applications"][0]["runtime_env"]["env_vars"] == {"LOUPE_API_KEY": MASK, "HF_HOME": "/cache"}
    assert cfg["applications"][0]["args"]["api_key"] == API_KEY  # a copy: the config itself is untouched


def test_secret_values_are_cut_out_of_free_text(tmp_path):
    values = secret_values(secret_args(tmp_path))
    assert set(ALL) <= values
    line = f"cannot reach PostgreSQL (postgresql://loupe:{PG_PASSWORD}@db.example/loupe); key {QDRANT_KEY}"
    assert scrub(line, values) == "cannot reach PostgreSQL (postgresql://loupe:***@db.example/loupe); key ***"
    # Percent-encoded passwords are found both ways; very short values are not cut out of text.
    assert {"p@ss", "p%40ss"} <= secret_values({"u": "redis://:p%40ss@h"})
    assert scrub("a b c", {"b"}) == "a b c"


def test_settings_repr_hides_secrets(tmp_path):
    settings = load_settings(secret_args(tmp_path))
    assert settings.qdrant_api_key == QDRANT_KEY and settings.cache.redis_url.endswith("@redis.example:6379/0")
    for text in (repr(settings), str(settings), repr(settings.cache), repr(settings.ask), repr(settings.tracing)):
        assert not [s for s in ALL if s in text], text
    assert "postgresql://loupe:***@db.example/loupe" in repr(settings)


# -- *_file options ---------------------------------------------------------------------------


def test_secrets_from_files_lose_their_trailing_newline(monkeypatch, tmp_path):
    (tmp_path / "qdrant").write_text(QDRANT_KEY + "\n")
    (tmp_path / "api").write_text(API_KEY + "\r\n")
    (tmp_path / "events").write_text(f"postgresql://loupe:{PG_PASSWORD}@db/loupe")
    (tmp_path / "redis").write_text(f"redis://:{REDIS_PASSWORD}@redis:6379/0\n")
    (tmp_path / "vlm").write_text(f"http://{VLM_TOKEN}@vllm:8000/v1\n")
    monkeypatch.setenv("LOUPE_API_KEY_FILE", str(tmp_path / "api"))
    monkeypatch.setenv("LOUPE_CACHE__REDIS_URL_FILE", str(tmp_path / "redis"))
    settings = load_settings(
        {
            "qdrant_api_key_file": str(tmp_path / "qdrant"),
            "events_url_file": str(tmp_path / "events"),
            "cache": {"redis_prefix": "t:"},
            "ask": {"base_url_file": str(tmp_path / "vlm")},
        }
    )
    assert settings.qdrant_api_key == QDRANT_KEY and settings.api_key == API_KEY
    assert settings.events_url == f"postgresql://loupe:{PG_PASSWORD}@db/loupe"
    assert settings.cache.redis_url == f"redis://:{REDIS_PASSWORD}@redis:6379/0"
    assert settings.cache.redis_prefix == "t:"  # the YAML's other cache fields survive the env's
    assert settings.ask.base_url == f"http://{VLM_TOKEN}@vllm:8000/v1"
    # The same secret written both ways is no conflict (settings re-validated from a dump).
    assert load_settings(settings.model_dump()).qdrant_api_key == QDRANT_KEY


@pytest.mark.parametrize(
    "content, why",
    [(None, "cannot read"), (b"", "is empty"), (b"\n", "is empty"), (b"\xff\xfe" + b"x" * 8, "not UTF-8")],
)
def test_an_unusable_secret_file_is_refused_by_its_option(tmp_path, content, why):
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidInput, match=why) as info:
        load_settings({"cache": {"redis_url_file": str(path)}})
    assert info.value.field == "cache.redis_url_file"
    assert str(path) in info.value.reason and "\\x" not in info.value.reason


def test_a_secret_file_names_the_option_not_the_contents(tmp_path):
    path = tmp_path / "key"
    path.write_text(API_KEY)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything
        pytest.skip("running as root: an unreadable file cannot be made")
    with pytest.raises(InvalidInput, match="api_key_file: cannot read .*Permission denied") as info:
        load_settings({"api_key_file": str(path)})
    assert API_KEY not in info.value.reason


def test_a_value_and_a_different_file_are_refused(tmp_path):
    path = tmp_path / "key"
    path.write_text(QDRANT_KEY)
    with pytest.raises(InvalidInput, match="qdrant_api_key or qdrant_api_key_file, not both") as info:
        load_settings({"qdrant_api_key": "another", "qdrant_api_key_file": str(path)})
    assert QDRANT_KEY not in info.value.reason and "another" not in info.value.reason


# -- loupe serve: the config Ray is handed ------------------------------------------------------


def secret_config(tmp_path) -> Path:
    cfg = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    app = cfg["applications"][0]
    app["args"].update(secret_args(tmp_path / "data"))
    app["runtime_env"]["env_vars"]["LOUPE_ASK__JUDGE_BASE_URL"] = f"http://j:{JUDGE_PASSWORD}@judge/v1"
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_the_config_handed_to_ray_holds_no_secret(tmp_path):
    from services.cli.launch import prepare, startup_line, write_serve_config

    plan = prepare(secret_config(tmp_path), bundled=True)
    path = write_serve_config(plan.cfg)
    try:
        text = Path(path).read_text()
        mode = stat.S_IMODE(os.stat(path).st_mode)
    finally:
        os.unlink(path)
    assert not [s for s in ALL if s in text]
    assert mode == 0o600  # the owner only
    args = yaml.safe_load(text)["applications"][0]["args"]
    assert args["cache"] == {**args["cache"], "redis_prefix": "t:"} and "redis_url" not in args["cache"]
    assert args["profile"] == "bundled" and "api_key" not in args and "qdrant_url" not in args
    # The secrets travel in the environment of `serve run`, as the replicas' settings read them.
    assert plan.env == {
        "LOUPE_QDRANT_URL": f"https://{QDRANT_TOKEN}@qdrant.example:6333",
        "LOUPE_QDRANT_API_KEY": QDRANT_KEY,
        "LOUPE_API_KEY": API_KEY,
        "LOUPE_EVENTS_URL": f"postgresql://loupe:{PG_PASSWORD}@db.example/loupe",
        "LOUPE_CACHE__REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis.example:6379/0",
        "LOUPE_TRACING__ENDPOINT": f"http://otel:{OTEL_PASSWORD}@collector:4318",
        "LOUPE_ASK__BASE_URL": f"http://{VLM_TOKEN}@vllm:8000/v1",
        "LOUPE_ASK__JUDGE_BASE_URL": f"http://j:{JUDGE_PASSWORD}@judge/v1",
    }
    line = startup_line(plan)
    assert not [s for s in ALL if s in line]
    assert "data https://***@qdrant.example:6333" in line and "access: one shared key" in line


def test_the_replicas_settings_match_the_callers(monkeypatch, tmp_path):
    """What the build task in a Ray worker loads (the app args plus the moved environment)
    equals what `loupe serve` validated."""
    from services.cli.launch import prepare

    plan = prepare(secret_config(tmp_path), bundled=True)
    for name, value in plan.env.items():
        monkeypatch.setenv(name, value)
    assert load_settings(plan.cfg["applications"][0]["args"]) == plan.settings


def test_urls_without_credentials_and_file_paths_stay_in_the_config(monkeypatch, tmp_path):
    from services.cli.launch import prepare

    (tmp_path / "key").write_text(API_KEY)
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    cfg["applications"][0]["args"].update(qdrant_url="http://qdrant:6333", api_key_file="key")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    plan = prepare(tmp_path / "c.yaml", bundled=True, data_dir=str(tmp_path))
    args = plan.cfg["applications"][0]["args"]
    assert args["qdrant_url"] == "http://qdrant:6333"
    assert args["api_key_file"] == str(tmp_path / "key")  # absolute: Ray's workers run elsewhere
    assert plan.env == {} and plan.settings.api_key == API_KEY
    assert API_KEY not in yaml.safe_dump(plan.cfg)


def test_a_running_cluster_is_not_handed_secrets(tmp_path):
    from services.cli.launch import prepare

    with pytest.raises(InvalidInput, match="LOUPE_API_KEY.*environment of the cluster's Ray nodes") as info:
        prepare(secret_config(tmp_path), "ray://head:10001", bundled=True)
    assert not [s for s in ALL if s in info.value.reason]
    assert prepare(ROOT / "ray_config.yaml", "auto", bundled=True, data_dir=str(tmp_path)).env == {}


def test_serve_prints_no_secret_and_hands_them_over_in_the_environment(monkeypatch, tmp_path, capsys):
    """serve() up to the point where it would start `serve run` (a fake Supervisor)."""
    import socket

    from services.cli import launch

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    seen = {}

    class FakeSupervisor:
        def __init__(self, cmd, *, env, secrets, **kw):
            seen.update(config=Path(cmd[-1]).read_text(), env=env, secrets=set(secrets))
            self.metrics = self.web = None

        def run(self):
            return 0

    monkeypatch.setattr(launch, "Supervisor", FakeSupervisor)
    code = launch.serve(
        config=str(secret_config(tmp_path)), bundled=True, port=free(), http_port=free(), metrics_port=0
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "loupe: profile bundled, data https://***@qdrant.example:6333" in err
    assert not [s for s in ALL if s in err or s in seen["config"]]
    assert seen["env"]["LOUPE_API_KEY"] == API_KEY and seen["env"]["LOUPE_CACHE__REDIS_URL"].endswith("/0")
    assert set(ALL) <= seen["secrets"]  # what the relay cuts out of Ray's output


def test_a_refused_config_does_not_quote_a_secret(tmp_path, capsys):
    from services.cli.launch import serve

    cfg = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    cfg["applications"][0]["args"]["qdrant_api_key"] = 73519024  # YAML digits: an int, refused by pydantic
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert serve(config=str(tmp_path / "c.yaml"), bundled=True, data_dir=str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "qdrant_api_key" in err and "73519024" not in err and MASK in err


def test_the_relay_cuts_secrets_out_of_serve_output(monkeypatch, tmp_path, capsys):
    from services.cli.launch import Supervisor

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    sup = Supervisor(["true"], env={}, cwd=tmp_path, grpc_port=45690, secrets=[REDIS_PASSWORD])
    line = f"WARNING cache at redis://:{REDIS_PASSWORD}@redis:6379/0 not reachable\n"
    sup.proc = subprocess.Popen(["printf", "%s", line], stdout=subprocess.PIPE)
    sup._relay()
    sup.proc.wait()
    assert capsys.readouterr().err == "WARNING cache at redis://:***@redis:6379/0 not reachable\n"
