"""Small pieces shared by the training modules: checksummed shard reading and config round trips."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from avatarsdk.errors import InputError


def read_shards(root: Path, shards: Iterable[Mapping], keys: Iterable[str], *, verify: bool = True
                ) -> dict[str, list[np.ndarray]]:
    """Read the named arrays of every ``.npz`` shard listed in a manifest.

    Args:
        root: the folder holding the shards.
        shards: manifest entries with ``file`` and ``sha256``.
        keys: array names to read from each shard.
        verify: check each shard's sha256 against the manifest first.

    Returns:
        key -> list of arrays, one per shard, in manifest order.

    Raises:
        InputError: a shard is missing, altered or truncated.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for shard in shards:
        path = Path(root) / shard["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"missing shard {path}: {exc}") from None
        if verify and hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise InputError(f"{path}: sha256 differs from the manifest (altered or truncated shard)")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for k in parts:
                parts[k].append(z[k])
    return parts


def config_from_dict(cls, d: Mapping, nested: Mapping[str, type] = ()):
    """Rebuild a frozen config dataclass from its ``to_dict`` form.

    Args:
        cls: the config class.
        d: the dict.
        nested: field name -> config class of fields stored as dicts.

    Raises:
        InputError: unknown fields (invalid values raise from the class itself).
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown {cls.__name__} fields {unknown}")
    kw = dict(d)
    for name, sub in dict(nested).items():
        if isinstance(kw.get(name), Mapping):
            kw[name] = sub(**kw[name])
    if "betas" in kw:
        kw["betas"] = tuple(float(b) for b in kw["betas"])
    return cls(**kw)
