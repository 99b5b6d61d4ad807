"""Batch sources: folders by extension and content, manifests with typed metadata, broken rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders.common.errors import InvalidInput
from indexing.batch import catalog
from tests.fixtures.catalog import image_bytes, make_catalog, metadata, write_manifest


def _rows(source, **kw):
    return list(catalog.rows(source, **kw))


def test_folder_is_walked_recursively_by_extension_and_content(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.jpg").write_bytes(image_bytes(1, 32))
    (tmp_path / "a" / "b" / "no-extension").write_bytes(image_bytes(2, 32, fmt="PNG"))
    (tmp_path / "a" / "b" / "voice.bin").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    (tmp_path / "notes.txt").write_text("not media")
    (tmp_path / ".hidden.jpg").write_bytes(image_bytes(3, 32))
    (tmp_path / "broken.png").write_bytes(b"not really a png")  # kept: its extension says image
    found = [Path(r.uri).relative_to(tmp_path).as_posix() for r in _rows(tmp_path)]
    assert found == ["a/b/no-extension", "a/b/voice.bin", "a/one.jpg", "broken.png"]
    assert [r.row for r in _rows(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_metadata_is_typed(tmp_path, kind):
    cat = make_catalog(tmp_path, 3, size=16, kind=kind)
    rows = _rows(cat.manifest)
    assert [r.uri for r in rows] == [str(p) for p in cat.images]  # relative to the manifest
    for i, r in enumerate(rows):
        assert not r.error
        assert r.metadata == dict(metadata(i).items())
    assert isinstance(rows[0].metadata["price"], float) and isinstance(rows[0].metadata["stock"], int)
    assert rows[0].metadata["in_stock"] is False and rows[1].metadata["in_stock"] is True


def test_csv_types_are_inferred_from_first_value_or_declared(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(
        "path,size,ratio,flag,zip,day,tags\n"
        'a.jpg,3,0.5,true,00123,2024-05-01,"[""x"",""y""]"\n'
        'b.jpg,4,1,false,00456,2024-05-02T10:00:00+02:00,["z"]\n'
    )
    r1, r2 = _rows(m, column_types={"zip": "str"})
    assert r1.metadata == {
        "size": 3,
        "ratio": 0.5,
        "flag": True,
        "zip": "00123",
        "day": "2024-05-01",
        "tags": ["x", "y"],
    }
    assert r2.metadata["ratio"] == 1.0 and r2.metadata["day"] == "2024-05-02T08:00:00Z"


def test_broken_rows_fail_alone_with_stage_and_reason(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(
        "uri,price:float,n:int,added:date\n"
        "ok.jpg,1.5,1,2024-01-01\n"
        "bad-price.jpg,cheap,1,2024-01-01\n"
        "bad-date.jpg,2,1,yesterday\n"
        ",2,1,2024-01-01\n"
        "too,many,fields,here,extra\n"
        "\n"
        "ok2.jpg,,7,\n"
    )
    rows = _rows(m)
    assert [(r.row, r.stage) for r in rows if r.error] == [
        (2, "metadata"),
        (3, "metadata"),
        (4, "manifest"),
        (5, "manifest"),
    ]
    reasons = {r.row: r.error for r in rows if r.error}
    assert "'price' (float)" in reasons[2] and "cheap" in reasons[2]
    assert "ISO 8601" in reasons[3]
    assert "no URI" in reasons[4] and "5 fields" in reasons[5]
    good = [r for r in rows if not r.error]
    assert [(r.row, r.metadata) for r in good] == [(1, {"price": 1.5, "n": 1, "added": "2024-01-01"}), (7, {"n": 7})]


def test_jsonl_bad_lines_and_type_changes(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(
        '{"uri": "a.jpg", "n": 1}\n{not json}\n[1, 2]\n{"uri": "b.jpg", "n": "two"}\n'
        '{"uri": "c.jpg", "n": 3, "note": null}\n'
    )
    rows = _rows(m)
    assert [(r.row, r.stage) for r in rows if r.error] == [(2, "manifest"), (3, "manifest"), (4, "metadata")]
    assert rows[-1].metadata == {"n": 3}


def test_parquet_lists_and_dates(tmp_path):
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": ["a.jpg"], "when": [dt.date(2024, 2, 29)], "scores": [[1.5, 2.0]]}), m)
    [row] = _rows(m)
    assert row.metadata == {"when": "2024-02-29", "scores": [1.5, 2.0]}


def test_unusable_sources_raise(tmp_path):
    with pytest.raises(InvalidInput, match="neither a folder nor a manifest"):
        _rows(tmp_path / "missing")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(InvalidInput, match="must end in one of"):
        _rows(tmp_path / "m.txt")
    write_manifest(tmp_path / "m.csv", [{"image": "a.jpg"}])
    with pytest.raises(InvalidInput, match="no URI column"):
        _rows(tmp_path / "m.csv")
    assert [r.uri for r in _rows(tmp_path / "m.csv", uri_column="image")] == [str(tmp_path / "a.jpg")]
    write_manifest(tmp_path / "n.jsonl", [{"uri": "a.jpg", "bad key": 1}])
    with pytest.raises(InvalidInput, match="cannot be a metadata field"):
        _rows(tmp_path / "n.jsonl")
    with pytest.raises(InvalidInput, match="unknown type"):
        catalog.parse_column_types(["price=money"])
    with pytest.raises(InvalidInput, match="NAME=TYPE"):
        catalog.parse_column_types(["price"])
    assert catalog.parse_column_types(["tags=list[str]", " n = int"]) == {"tags": "list[str]", "n": "int"}


def test_convert_edges():
    assert catalog.convert("1|2", "list[int]") == [1, 2]
    assert catalog.convert(3, "float") == 3.0
    for value, type_name in [
        (1.5, "int"),
        (True, "int"),
        ("nan", "float"),
        (2**64, "int"),
        ("maybe", "bool"),
        ({"a": 1}, "str"),
        ("x", "list[int]"),
    ]:
        with pytest.raises(ValueError):
            catalog.convert(value, type_name)
    assert json.loads(json.dumps(catalog.convert("2024-05-01T10:00:00", "date"))) == "2024-05-01T10:00:00Z"
