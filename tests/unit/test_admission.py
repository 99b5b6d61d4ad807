"""Bounded waits: a lane runs `limit` calls, others wait at most max_wait_s, then are refused with a retry hint."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from encoders.common.errors import Overloaded
from services.config import AdmissionSettings
from services.rpc.errors import to_status
from services.serve.admission import LANES, Admission


def _run(coro):
    return asyncio.run(coro)


async def _hold(admission, rpc, seconds, started=None):
    async with admission.enter(rpc):
        if started is not None:
            started.set()
        await asyncio.sleep(seconds)
        return "done"


def test_calls_within_the_limit_run_together():
    async def main():
        admission = Admission({"search": 3}, max_wait_s=1.0)
        start = time.monotonic()
        results = await asyncio.gather(*(_hold(admission, "SearchText", 0.2) for _ in range(3)))
        return results, time.monotonic() - start

    results, took = _run(main())
    assert results == ["done"] * 3 and took < 0.5


def test_a_call_that_cannot_start_in_time_is_refused_with_a_retry_hint():
    async def main():
        admission = Admission({"ask": 1}, max_wait_s=0.1)
        started = asyncio.Event()
        holder = asyncio.create_task(_hold(admission, "Ask", 0.5, started))
        await started.wait()
        t0 = time.monotonic()
        with pytest.raises(Overloaded) as info:
            await _hold(admission, "Ask", 0)
        waited = time.monotonic() - t0
        assert await holder == "done"
        # The slot is free again once the holder is done.
        assert await _hold(admission, "Ask", 0) == "done"
        return info.value, waited

    exc, waited = _run(main())
    assert 0.09 <= waited < 0.4
    assert "1 ask calls are running" in exc.reason and "retry after" in exc.reason
    assert 0.1 <= exc.retry_after_s <= 30


def test_waiting_room_is_bounded_too():
    async def main():
        admission = Admission({"index": 1}, max_wait_s=5.0, queue_factor=2)
        started = asyncio.Event()
        holder = asyncio.create_task(_hold(admission, "IndexImages", 0.3, started))
        await started.wait()
        waiters = [asyncio.create_task(_hold(admission, "IndexTexts", 0)) for _ in range(2)]
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(Overloaded, match="2 calls already wait"):
            await _hold(admission, "Delete", 0)
        refused_in = time.monotonic() - t0
        assert await asyncio.gather(holder, *waiters) == ["done"] * 3
        return refused_in

    assert _run(main()) < 0.05  # refused at once, not after max_wait_s


def test_a_failing_call_frees_its_slot():
    async def main():
        admission = Admission({"read": 1}, max_wait_s=0.2)
        with pytest.raises(ValueError):
            async with admission.enter("Count"):
                raise ValueError("boom")
        assert await _hold(admission, "GetItem", 0) == "done"
        return admission.snapshot()

    assert _run(main()) == {"read": {"limit": 1, "running": 0, "waiting": 0}}


def test_lanes_are_independent():
    async def main():
        admission = Admission({"ask": 1, "read": 1}, max_wait_s=0.1)
        started = asyncio.Event()
        holder = asyncio.create_task(_hold(admission, "Ask", 0.3, started))
        await started.wait()
        assert await _hold(admission, "Count", 0) == "done"  # a busy Ask lane does not block reads
        await holder

    _run(main())


def test_refusal_maps_to_resource_exhausted_with_retry_info():
    status = to_status(Overloaded("busy", retry_after_s=1.5))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert any(d.Unpack(info) for d in rich.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR))
    assert info.retry_delay.ToMilliseconds() == 1500


def test_every_rpc_has_a_configured_lane():
    lanes = AdmissionSettings().lanes()
    assert set(LANES.values()) == set(lanes)
    with pytest.raises(ValueError):
        AdmissionSettings(max_wait_s=0)


def test_every_rpc_of_the_contract_waits_in_a_lane():
    from tests.fixtures.contract import rpcs

    assert rpcs() == set(LANES)
