"""Named backends: which exist, which are installed, and building one by name.

    OCR = Registry("OCR engine", {"rapidocr": Entry("encoders.ocr.rapid:RapidOcrEngine",
                                                    requires=("rapidocr_onnxruntime",), install="pip install ...")})
    OCR.create("rapidocr", options)

An unknown name is an InvalidInput that lists the names; a backend whose library is missing is
a ModelUnavailable that says what to install. Classes are imported only when created.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from encoders.common.errors import InvalidInput, ModelUnavailable


@dataclass(frozen=True)
class Entry:
    # "module:Class" of the implementation.
    target: str
    # Modules that must import; checked first so the error can say what to install.
    requires: tuple[str, ...] = ()
    # How to install the backend (and its models), for that error.
    install: str = ""


class Registry:
    def __init__(self, kind: str, entries: dict[str, Entry], *, field: str = "backend") -> None:
        self.kind, self.entries, self.field = kind, entries, field

    def names(self) -> list[str]:
        return sorted(self.entries)

    def installed(self) -> list[str]:
        """Names whose libraries import here (their models may still be missing)."""
        return [n for n in self.names() if not self._missing(self.entries[n])]

    def entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise InvalidInput(
                f"unknown {self.kind} {name!r}; {self.kind}s: {', '.join(self.names())}", field=self.field
            )
        return entry

    def cls(self, name: str) -> type:
        """The implementation class, after checking that its libraries are installed."""
        entry = self.entry(name)
        missing = self._missing(entry)
        if missing:
            raise ModelUnavailable(
                f"{self.kind} {name!r} is not installed (cannot import {', '.join(missing)}): "
                f"{entry.install or 'install its library'}"
            )
        module, _, cls = entry.target.partition(":")
        return getattr(importlib.import_module(module), cls)

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.cls(name)(*args, **kwargs)

    @staticmethod
    def _missing(entry: Entry) -> list[str]:
        return [m for m in entry.requires if importlib.util.find_spec(m) is None]
