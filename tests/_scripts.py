"""Load a file of ``scripts/`` or ``benchmarks/`` as a module, for the tests that exercise it (neither is a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "scripts"):
    """Import ``<folder>/<name>.py`` (``scripts/`` or ``benchmarks/``) once per process and return the module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
