"""Load once, on first use or on `load()`, from any thread."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any, Self


class LazyModel(ABC):
    """A model whose weights load the first time they are needed.

    Subclasses implement `_load()` (it sets what the model needs on `self`) and `model_id`
    (the identity stored with every result). Concurrent first callers wait for one load; a
    load that raises leaves the model unloaded, so the next call tries again.
    """

    def __init__(self) -> None:
        self._load_lock = threading.Lock()
        self._loaded = False

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The identity stored with every result."""

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> Self:
        if not self._loaded:
            with self._load_lock:
                if not self._loaded:
                    self._load()
                    self._loaded = True
        return self

    def _unload(self) -> None:
        """Forget the loaded state (the subclass drops its own references first)."""
        with self._load_lock:
            self._loaded = False

    @abstractmethod
    def _load(self) -> None:
        """Load the weights (or open the connection) and keep what the model needs on `self`."""


class SourcedModel(LazyModel):
    """A LazyModel identified by its resolved weights, `self.source` (set before loading):
    the model id and version stored with every point and reported with every result."""

    source: Any

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def model_version(self) -> str:
        return self.source.model_version
