"""Tables derived from the ICT data and kept on disk between runs, like the ICT and LOD caches.

A table (a dict of numpy arrays) is a pure function of its inputs and of the
code that computes it. :func:`cached_arrays` stores it as
``<cache_dir>/<name>-<key>.npz``, where the key is the sha256 of the inputs'
description, the source files of the computing modules (editing that code
makes a new key, so a stale table is never read) and the numpy, scipy and torch
versions. A missing, unreadable or read-only cache only costs the computation.
Set ``AVATARSDK_CACHE_DIR`` to move the folder; delete it to start over.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import torch

from avatarsdk.files import atomic_write_bytes
from avatarsdk.rigs.ict import cache_dir

log = logging.getLogger(__name__)

__all__ = ["cached_arrays", "code_digest"]

_FORMAT = 2


def code_digest(*modules: str) -> str:
    """sha256 of the source files of ``modules`` (imported names) and of the numeric libraries' versions."""
    h = hashlib.sha256(json.dumps([_FORMAT, np.__version__, scipy.__version__, torch.__version__]).encode())
    for name in modules:
        module = sys.modules.get(name) or importlib.import_module(name)
        h.update(name.encode() + Path(module.__file__).read_bytes())
    return h.hexdigest()


def cached_arrays(name: str, key: dict, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return ``compute()``, read from the disk cache when an equal key was stored before.

    Args:
        name: file name prefix (letters, digits, "-").
        key: JSON-serialisable description of everything the table depends on
            (input checksums, sizes, settings, :func:`code_digest` of the code).
        compute: builds the table: array name -> numpy array (no object arrays).

    Returns:
        The arrays (equal to a fresh ``compute()``: stored losslessly).
    """
    digest = hashlib.sha256(json.dumps({"name": name, "key": key}, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / f"{name}-{digest[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["__key__"]) == digest:
                    wide = set(str(n) for n in z["__int64__"])
                    return {k: z[k].astype(np.int64) if k in wide else z[k] for k in z.files
                            if k not in ("__key__", "__int64__")}
        except (OSError, ValueError, KeyError, EOFError) as e:
            log.warning("ignoring unreadable cache %s: %s", path, e)
    arrays = compute()
    try:
        # int64 indices that fit are stored as int32 (half the file) and widened again on reading.
        wide = [k for k, a in arrays.items() if a.dtype == np.int64 and (a.size == 0 or (
            a.min() >= np.iinfo(np.int32).min and a.max() <= np.iinfo(np.int32).max))]
        stored = {k: a.astype(np.int32) if k in wide else a for k, a in arrays.items()}
        buf = io.BytesIO()
        np.savez(buf, __key__=np.array(digest), __int64__=np.array(wide, dtype=str), **stored)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:  # a read-only cache folder must not stop the SDK
        log.warning("could not write cache %s: %s", path, e)
    return arrays
