from pathlib import Path

import yaml

from services import cli
from services.launch import render_config

ROOT = Path(__file__).resolve().parents[2]


def test_where_expressions():
    assert cli._where(["colour=red", "size=s|m", "price>=2", "price<10", "n=3", "sale=true"]) == {
        "colour": "red", "size": ["s", "m"], "price": {"gte": 2.0, "lt": 10.0}, "n": 3, "sale": True}


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
    cfg = render_config(ROOT / "ray_config.yaml", bundled=True, data_dir=str(tmp_path), port=9123)
    args = cfg["applications"][0]["args"]
    assert args["profile"] == "bundled" and args["data_dir"] == str(tmp_path.resolve())
    assert cfg["grpc_options"]["port"] == 9123
    # The shipped config itself stays on the real default model.
    assert yaml.safe_load((ROOT / "ray_config.yaml").read_text())["applications"][0]["args"]["profile"] == "default"
