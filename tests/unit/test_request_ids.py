"""Request ids: taken from x-request-id when sane, else made; set on the responses users act on."""

from __future__ import annotations

import re

from protos.loupe.v1 import index_pb2, qa_pb2, search_pb2
from services.serve import requests


def test_every_call_gets_its_own_id_and_a_sane_caller_id_is_kept_as_its_label() -> None:
    rid, label = requests.request_id({"x-request-id": "trace-7f3a:step/2"})
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and label == "trace-7f3a:step/2"
    # Two callers (two tenants) sending the same id still get two ids: records never collide.
    assert requests.request_id({"x-request-id": "same"})[0] != requests.request_id({"x-request-id": "same"})[0]
    for bad in ("", "has space", "x" * 129, "new\nline", "trailing\n", "ünï"):
        made, label = requests.request_id({"x-request-id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", made) and label == "", (bad, made, label)
    assert requests.request_id({})[0] != requests.request_id({})[0]  # each call its own


def test_outside_serve_there_is_no_current_id() -> None:
    assert requests.current() == ""


def test_stamp_sets_the_field_where_the_response_has_one() -> None:
    for response in (search_pb2.SearchResponse(), index_pb2.IndexResponse(), qa_pb2.AskResponse()):
        assert requests.stamp(response, "r-1").request_id == "r-1"
    count = index_pb2.CountResponse(count=3)
    assert requests.stamp(count, "r-1") == index_pb2.CountResponse(count=3)
    assert requests.stamp(None, "r-1") is None


def test_log_lines_are_json_with_the_fields_and_mask_personal_data(capsys) -> None:
    import logging

    logger = logging.getLogger("loupe")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        _check_log_lines(capsys)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _check_log_lines(capsys) -> None:
    import json
    import logging

    from services.config import LogSettings
    from services.serve import calllog

    calllog.configure(LogSettings(format="json"))
    calllog.call(client="desk", rpc="SearchText", code="OK", latency_ms=3.2)
    logging.getLogger("loupe.ask").info("ask", extra={"fields": {"question": calllog.masked("mail jo@x.example")}})
    logging.getLogger("loupe").debug("not at INFO")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["msg"] for line in lines] == ["call", "ask"]
    assert lines[0] | {"ts": "t"} == {
        "ts": "t",
        "level": "INFO",
        "logger": "loupe.calls",
        "request_id": None,
        "msg": "call",
        "client": "desk",
        "rpc": "SearchText",
        "code": "OK",
        "latency_ms": 3.2,
    }
    assert lines[1]["question"] == "mail [email hidden]"
    calllog.configure(LogSettings(format="text", level="DEBUG"))
    logging.getLogger("loupe").debug("now at DEBUG")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "msg=now at DEBUG" in err and "level=DEBUG" in err
