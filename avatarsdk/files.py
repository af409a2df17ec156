"""Atomic file writes: a file is either absent, the old version, or complete."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import math
import os
import stat
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avatarsdk.errors import InputError, OutputError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_output_dir(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Check, before any long work, that a folder can be created (or written) at ``path``.

    Nothing is left behind: the deepest existing folder on the way is probed by
    creating and removing an empty temp file in it (``os.access`` alone says yes
    to root on a read-only mount or a folder it cannot use).

    Args:
        path: the folder that will be written (it need not exist yet).
        what: how messages name it.

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: a file stands where the folder or one of its parents must
            be, or the deepest existing folder cannot be written.
    """
    path = Path(path)
    probe = path
    for probe in (path, *path.absolute().parents):
        try:
            st = probe.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there yet (or under a file: the file is found further up)
        except OSError as e:
            raise OutputError(f"{what} {path}: cannot access {probe} ({e.strerror or e})") from None
        if not stat.S_ISDIR(st.st_mode):
            where = "it" if probe == path else str(probe)
            raise OutputError(f"{what} {path}: {where} is a file, not a folder" if stat.S_ISREG(st.st_mode)
                              else f"{what} {path}: {where} is not a folder")
        break
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".avatarsdk-probe-", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot write in {probe} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)
    return path


_PNG_MEMO: OrderedDict[tuple, bytes] = OrderedDict()
_PNG_MEMO_ENTRIES = 8
_PNG_LOCK = threading.Lock()
_PNG_PENDING: dict[tuple, threading.Event] = {}  # encodings under way in some thread

PNG_COMPRESS_LEVEL = 3
"""zlib level of every PNG the SDK writes: 2-4x faster to encode than PIL's default 6 (a 1024 px
skin normal map 0.06 s against 0.17 s of CPU), files 10-25 % larger; pixels are the same."""


def png_bytes(image) -> bytes:
    """Encode an [H, W, 3|4] uint8 array as PNG bytes (zlib level :data:`PNG_COMPRESS_LEVEL`, no optimisation).

    The last few encodings are remembered by a hash of the pixels, so the same
    texture written into a .glb, a package's ``textures/`` and a ``.avatar``
    is deflated once (about 0.1 s of CPU per 1024 px texture): the bytes are
    the same as a fresh encoding's, as PNG encoding is deterministic. Safe to
    call from several threads: a thread asking for an image another thread is
    encoding waits for that encoding instead of repeating it (PIL's encoder
    releases the GIL, so textures can be encoded beside other work).
    """
    a = np.ascontiguousarray(image)
    key = (a.shape, a.dtype.str, hashlib.blake2b(a.data, digest_size=20).digest())
    while True:
        with _PNG_LOCK:
            data = _PNG_MEMO.get(key)
            if data is not None:
                _PNG_MEMO.move_to_end(key)
                return data
            pending = _PNG_PENDING.get(key)
            if pending is None:
                done = _PNG_PENDING[key] = threading.Event()
                break
        pending.wait()  # then read the memo (or encode, if that encoding failed)
    try:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
        data = buf.getvalue()
        with _PNG_LOCK:
            _PNG_MEMO[key] = data
            while len(_PNG_MEMO) > _PNG_MEMO_ENTRIES:
                _PNG_MEMO.popitem(last=False)
    finally:
        with _PNG_LOCK:
            del _PNG_PENDING[key]
        done.set()
    return data


def json_safe(obj, *, max_depth: int = 32, strict: bool = True, _depth: int = 0):
    """JSON-compatible copy of ``obj``: numpy to Python, non-finite floats to None, tuples to lists.

    Args:
        obj: nested dicts, lists, tuples, numpy arrays and scalars, Python scalars.
        max_depth: deepest nesting converted.
        strict: deeper nesting raises InputError; False: it becomes its ``str()``.

    Returns:
        The converted copy (other objects become their ``str()``).
    """
    if _depth > max_depth:
        if strict:
            raise InputError(f"value nested deeper than {max_depth} levels")
        return str(obj)

    def inner(v):
        return json_safe(v, max_depth=max_depth, strict=strict, _depth=_depth + 1)

    if isinstance(obj, dict):
        return {str(k): inner(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [inner(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return inner(obj.tolist())
    if isinstance(obj, np.generic):
        return inner(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


_TREE_MODULES = "avatarsdk."  # the only modules whose dataclasses a tree file may name


def _encode_tree(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode_tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        if a.dtype.hasobject:
            raise TypeError("object arrays cannot be stored in a tree file")
        return {"__ndarray__": torch.from_numpy(np.frombuffer(a.tobytes(), np.uint8).copy()),
                "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(obj, np.generic):
        return _encode_tree(np.asarray(obj))
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode_tree(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode_tree(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError("tree files keep dicts with str or int keys only")
        return {"__dict__": [[k, _encode_tree(v)] for k, v in obj.items()]}
    if isinstance(obj, os.PathLike):
        return {"__path__": os.fspath(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a {type(obj).__name__} cannot be stored in a tree file")


def _decode_tree(obj):
    if isinstance(obj, list):
        return [_decode_tree(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        return np.frombuffer(obj["__ndarray__"].numpy().tobytes(), np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if "__tuple__" in obj:
        return tuple(_decode_tree(v) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: _decode_tree(v) for k, v in obj["__dict__"]}
    if "__path__" in obj:
        return Path(obj["__path__"])
    if "__dataclass__" in obj:
        module, _, qualname = obj["__dataclass__"].partition(":")
        if not module.startswith(_TREE_MODULES):
            raise InputError(f"tree file names a class outside the package: {module}")
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not dataclasses.is_dataclass(cls):
            raise InputError(f"tree file names {obj['__dataclass__']}, which is not a dataclass")
        inst = object.__new__(cls)
        for name, value in obj["fields"].items():
            object.__setattr__(inst, name, _decode_tree(value))
        return inst
    raise InputError("tree file holds an unknown node")


def dump_tree(path: str | os.PathLike, obj) -> Path:
    """Keep a tree of the package's dataclasses, arrays, tensors and plain values in a file, atomically.

    For caches of intermediate results (the benchmark's fits): ``torch.save`` of plain dicts,
    lists and tensors only, so :func:`load_tree` reads it with ``weights_only=True`` (no pickle
    of classes), and only dataclasses of this package are rebuilt, field by field.
    """
    buf = io.BytesIO()
    torch.save(_encode_tree(obj), buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_tree(path: str | os.PathLike):
    """What :func:`dump_tree` kept (``torch.load(weights_only=True)``)."""
    return _decode_tree(torch.load(path, map_location="cpu", weights_only=True))
