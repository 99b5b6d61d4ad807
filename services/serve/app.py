"""Serve application builder: `serve run ray_config.yaml` imports `services.serve.app:build_app`."""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from encoders.common.urls import redact_url
from services.config import load_settings
from services.serve.deployments import (
    AnswererDeployment,
    EncoderDeployment,
    Ingress,
    TranscriberDeployment,
)


def build_app(args: dict[str, Any]) -> Application:
    """`args` are the application args from ray_config.yaml; LOUPE_* variables override them."""
    settings = load_settings(args)
    logging.getLogger("loupe").info(
        "building Loupe: profile=%s model=%s store=%s",
        settings.profile,
        settings.clip_model,
        redact_url(settings.qdrant_url) if settings.qdrant_url else settings.data_dir,
    )
    encoder = EncoderDeployment.bind(settings)
    transcriber = TranscriberDeployment.bind(settings) if settings.audio else None
    answerer = AnswererDeployment.bind(settings, encoder) if settings.ask.enabled else None
    return Ingress.bind(settings, encoder, transcriber, answerer)
