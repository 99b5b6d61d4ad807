"""The integration tests share the run's one open-default service (`service`, defined in
tests/fixtures/service.py and registered in tests/conftest.py)."""

from tests.fixtures.service import AUDIO_MAX_BYTES, AUDIO_MAX_DURATION_S, LEGACY_COLLECTION

__all__ = ["AUDIO_MAX_BYTES", "AUDIO_MAX_DURATION_S", "LEGACY_COLLECTION"]
