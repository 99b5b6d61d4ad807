import pytest
from pydantic import ValidationError

from services.config import BUNDLED_CLIP, HOP_MESSAGE_BYTES, load_settings


def test_profile_picks_the_model(monkeypatch):
    monkeypatch.delenv("LOUPE_PROFILE", raising=False)
    assert load_settings({"profile": "bundled"}).clip_model == BUNDLED_CLIP
    assert load_settings({}).clip_model == "ViT-B-32/laion2b_s34b_b79k"
    assert load_settings({"encoder": {"model": "ViT-B-32/random"}}).clip_model == "ViT-B-32/random"


def test_environment_overrides_yaml_args(monkeypatch, tmp_path):
    monkeypatch.setenv("LOUPE_PROFILE", "bundled")
    monkeypatch.setenv("LOUPE_LIMITS__MAX_LIMIT", "7")
    settings = load_settings({"profile": "default", "data_dir": str(tmp_path), "limits": {"max_window": 50}})
    assert settings.profile == "bundled" and settings.limits.max_limit == 7
    assert settings.limits.max_window == 50  # yaml values the environment does not touch survive
    assert settings.data_dir == str(tmp_path.resolve())


def test_a_request_cap_above_what_reaches_the_encoder_is_refused():
    """Handle calls carry a request's images in one message between replicas; a cap above it
    would let a call in that then fails on its way to the Encoder."""
    assert load_settings({"limits": {"max_request_bytes": HOP_MESSAGE_BYTES}}).limits.max_request_bytes
    with pytest.raises(ValidationError, match="max_request_bytes"):
        load_settings({"limits": {"max_request_bytes": HOP_MESSAGE_BYTES + 1}})
