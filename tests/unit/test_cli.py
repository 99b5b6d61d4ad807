from pathlib import Path

import yaml

from services.cli import main as cli
from services.cli.launch import render_config

ROOT = Path(__file__).resolve().parents[2]


def test_where_expressions():
    assert cli._where(["colour=red", "size=s|m", "price>=2", "price<10", "n=3", "sale=true"]) == {
        "colour": "red",
        "size": ["s", "m"],
        "price": {"gte": 2.0, "lt": 10.0},
        "n": 3,
        "sale": True,
    }


def test_media_files_walks_folders(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.JPG", "a/y.png", "a/notes.txt", "z.webp", "a/call.MP3", "memo.flac"):
        (tmp_path / name).write_bytes(b"")
    images, audio = cli._media_files([tmp_path])
    assert [p.name for p in images] == ["x.JPG", "y.png", "z.webp"]
    assert [p.name for p in audio] == ["call.MP3", "memo.flac"]
    assert cli._media_files([tmp_path / "a" / "notes.txt"]) == ([tmp_path / "a" / "notes.txt"], [])


def test_clock():
    assert (cli.clock(83.9), cli.clock(3723)) == ("01:23", "1:02:03")


def test_serve_config_overrides(tmp_path):
    cfg = render_config(ROOT / "ray_config.yaml", bundled=True, data_dir=str(tmp_path), port=9123, host="0.0.0.0")
    args = cfg["applications"][0]["args"]
    assert args["profile"] == "bundled" and args["data_dir"] == str(tmp_path.resolve())
    assert args["grpc"]["port"] == 9123 and args["grpc"]["host"] == "0.0.0.0"
    assert "grpc_options" not in cfg  # the Ingress serves gRPC; Serve's proxy stays off
    # The shipped config itself stays on the real default model.
    assert yaml.safe_load((ROOT / "ray_config.yaml").read_text())["applications"][0]["args"]["profile"] == "default"


def test_serve_config_leaves_out_deployments_the_settings_switch_off(monkeypatch, tmp_path):
    """Serve refuses a config naming a deployment the app does not build (LOUPE_AUDIO=false)."""
    names = lambda cfg: [d["name"] for d in cfg["applications"][0]["deployments"]]  # noqa: E731
    full = render_config(ROOT / "ray_config.yaml", bundled=True, data_dir=str(tmp_path))
    assert {"Transcriber", "Answerer"} <= set(names(full))
    monkeypatch.setenv("LOUPE_AUDIO", "false")
    monkeypatch.setenv("LOUPE_ASK__ENABLED", "false")
    cfg = render_config(ROOT / "ray_config.yaml", bundled=True, data_dir=str(tmp_path))
    assert names(cfg) == [n for n in names(full) if n not in ("Transcriber", "Answerer")]


def test_several_ingress_replicas_need_a_qdrant_server(tmp_path, capsys):
    """The Ingress owns the embedded store (one lock holder): more replicas only with qdrant_url."""
    from services.cli.launch import serve

    cfg = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    next(d for d in cfg["applications"][0]["deployments"] if d["name"] == "Ingress")["num_replicas"] = 2
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert serve(config=str(path), bundled=True, data_dir=str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "one replica" in err and "qdrant_url" in err
    rendered = render_config(path, bundled=True, qdrant_url="http://qdrant:6333")
    assert rendered["applications"][0]["args"]["ingress_replicas"] == 2


def test_serve_refuses_a_bad_config_value_before_ray(monkeypatch, tmp_path, capsys):
    from services.cli.launch import serve

    monkeypatch.setenv("LOUPE_ADMISSION__MAX_WAIT_S", "-1")
    assert serve(config=str(ROOT / "ray_config.yaml"), bundled=True, data_dir=str(tmp_path), port=1) == 2
    err = capsys.readouterr().err
    assert "cannot start: the config" in err and "max_wait_s" in err


def test_serve_refuses_a_bad_clients_file_before_ray(tmp_path, capsys):
    from services.cli.launch import access, serve

    bad = tmp_path / "clients.yaml"
    bad.write_text("clients:\n  - id: x\n    keys: [{sha256: nothex}]\n    rights: [search]\n    collections: ['*']\n")
    assert serve(config=str(ROOT / "ray_config.yaml"), bundled=True, data_dir=str(tmp_path), clients_file=str(bad)) == 2
    assert "64 hex digits" in capsys.readouterr().err
    assert access({}).startswith("access: OPEN")
    assert access({"api_key": "k"}) == "access: one shared key (LOUPE_API_KEY)"


def test_start_up_state_follows_serve_output(monkeypatch, tmp_path):
    import os

    from services.cli.launch import Supervisor, read_state, state_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    sup = Supervisor(["true"], env={}, cwd=tmp_path, grpc_port=45678)
    sup._write_state("starting")
    assert read_state(45678)["waiting_for"] == {"Ray": "starting"}
    for line in (
        'INFO serve 1 -- Started Serve in namespace "serve".',
        "(ServeController pid=2) INFO controller -- Imported and built app 'loupe' successfully.",
        "(ServeController pid=2) INFO controller -- Adding 1 replica to Deployment(name='Encoder', app='loupe').",
        "(ServeController pid=2) INFO controller -- Adding 1 replica to Deployment(name='Index', app='loupe').",
        "(ServeReplica:loupe:Index pid=3) INFO replica -- Finished initializing replica.",
    ):
        sup._track(line)
    state = read_state(45678)
    assert state["phase"] == "starting" and state["pid"] == os.getpid()
    assert state["waiting_for"] == {"Encoder": "waiting for a replica to start"}
    assert state_path(45678).parent == tmp_path / f"loupe-{os.getuid()}"
    # A state left by a process that is gone is ignored.
    state_path(45678).write_text('{"pid": 999999999, "phase": "starting"}')
    assert read_state(45678) is None


def test_status_of_a_starting_service_says_what_it_waits_for(monkeypatch, tmp_path, capsys):
    import json
    import os
    import time

    from services.cli.launch import state_path
    from services.cli.main import main

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = state_path(45679)
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "port": 45679,
                "phase": "starting",
                "started_at": time.time() - 7,
                "waiting_for": {"Encoder": "loading (models, store)"},
            }
        )
    )
    assert main(["--target", "127.0.0.1:45679", "--timeout", "2", "status"]) == 3
    out = capsys.readouterr().out
    assert "health: STARTING" in out and "waiting for Encoder: loading (models, store)" in out


def test_batch_run_stops_on_sigterm_like_ctrl_c():
    import os
    import signal
    import time

    import pytest

    from indexing.batch.pipeline import _stop_signals

    with pytest.raises(KeyboardInterrupt):
        with _stop_signals() as received:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_unwritable_state_folder_is_said_once_and_does_not_stop_serving(monkeypatch, tmp_path, capsys):
    from services.cli.launch import Supervisor, read_state

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(blocker))
    sup = Supervisor(["true"], env={}, cwd=tmp_path, grpc_port=45680)
    sup._write_state("starting")
    sup._track("(ServeController pid=2) INFO -- Adding 1 replica to Deployment(name='Encoder', app='loupe').")
    err = capsys.readouterr().err
    assert err.count("cannot record start-up state") == 1 and "XDG_RUNTIME_DIR" in err
    assert read_state(45680) is None


def test_serve_refuses_a_metrics_port_in_use_before_ray(tmp_path, capsys):
    import socket

    from services.cli.launch import serve

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        code = serve(
            config=str(ROOT / "ray_config.yaml"),
            bundled=True,
            data_dir=str(tmp_path),
            port=free(),
            http_port=free(),
            metrics_port=taken,
        )
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {taken} is already served" in err and "(metrics)" in err and "--metrics-port" in err


def test_tls_proxy_config_and_client_files(tmp_path, capsys):
    import pytest

    from encoders.common.errors import InvalidInput
    from services.cli import tls
    from services.client.sdk import tls_credentials

    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for f in (cert, key, ca):
        f.write_text("pem")
    conf = tls.render(cert=str(cert), key=str(key), listen="0.0.0.0:9443", upstream="127.0.0.1:9000", run_dir="/r")
    assert "listen 0.0.0.0:9443 ssl http2;" in conf and "grpc_pass grpc://127.0.0.1:9000;" in conf
    assert "ssl_verify_client" not in conf and "client_max_body_size 67108864;" in conf
    mtls = tls.render(cert=str(cert), key=str(key), listen="h:1", upstream="u:2", run_dir="/r", client_ca=str(ca))
    assert f'ssl_client_certificate "{ca}";' in mtls and "ssl_verify_client on;" in mtls
    with pytest.raises(InvalidInput, match="--client-ca .*missing"):
        tls.render(cert=str(cert), key=str(key), listen="h:1", upstream="u:2", run_dir="/r", client_ca="/missing")
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        tls.render(cert=str(cert), key=str(key), listen="h:1", upstream="9000", run_dir="/r")
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        tls_credentials(None, str(cert), None)
    with pytest.raises(ValueError, match="cannot read the client key"):
        tls_credentials(None, str(cert), str(tmp_path / "nokey.pem"))
    # The CLI says so and exits 2, no trace.
    assert cli.main(["--target", "localhost:1", "--tls", "--cert", str(cert), "status"]) == 2
    assert "both cert_file and key_file" in capsys.readouterr().err


def test_a_command_whose_reader_goes_away_ends_quietly(tmp_path):
    """`loupe ... | head -1`: no BrokenPipeError trace, the shell's SIGPIPE status."""
    import subprocess
    import sys

    import yaml

    from services.gateway.clients import hash_key, new_key

    entries = [
        {"id": f"client-{i}", "keys": [{"sha256": hash_key(new_key())}], "rights": ["search"], "collections": ["*"]}
        for i in range(3000)
    ]
    clients = tmp_path / "clients.yaml"
    clients.write_text(yaml.safe_dump({"clients": entries}))
    cmd = f"{sys.executable} -m services.cli.main keys list --clients {clients} | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("client ") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141
