"""Import every module of a plugin sub-package so its fairseq ``@register_*`` decorators run."""

from __future__ import annotations

import importlib
import pkgutil


def import_all_modules(package: str, path) -> None:
    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
