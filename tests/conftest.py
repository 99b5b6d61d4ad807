"""Run-wide: say in the header which store backends the suites run against, and the one
open-default service that the integration and security suites share (built once a run)."""

from __future__ import annotations

import os

from tests.fixtures.service import service  # noqa: F401 (a fixture: registered by being here)


def pytest_report_header(config) -> str:
    if os.environ.get("QDRANT_URL"):
        return (
            f"store suites: Qdrant Edge, qdrant-client local mode, and the Qdrant server at {os.environ['QDRANT_URL']}"
        )
    return "store suites: Qdrant Edge and qdrant-client local mode (set QDRANT_URL to add a real Qdrant server)"
