"""Small pieces shared by the training modules: checksummed shard reading and config round trips."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

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


def config_to_dict(cfg) -> dict:
    """Plain dict of a frozen config dataclass (JSON and checkpoint safe; ``betas`` as a list)."""
    d = dataclasses.asdict(cfg)
    if "betas" in d:
        d["betas"] = list(d["betas"])
    return d


def config_from_dict(cls, d: Mapping, nested: Mapping[str, type] = ()):
    """Rebuild a frozen config dataclass from its :func:`config_to_dict` form.

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


def training_device(name: str):
    """``torch.device(name)``; InputError when CUDA is asked for and absent (training never requires it)."""
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available (use device='cpu')")
    return dev


def cpu_state(obj):
    """Deep copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, dict):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_state(v) for v in obj)
    return obj


class IntervalStats:
    """Sums of named values over the current log interval (checkpointed, so resumed logs match)."""

    keys: tuple[str, ...] = ()

    def __init__(self, state: Mapping | None = None):
        self.sums = {k: 0.0 for k in self.keys}
        self.counts = {k: 0 for k in self.keys}
        self.steps = 0
        if state:
            self.sums.update({k: float(v) for k, v in state["sums"].items()})
            self.counts.update({k: int(v) for k, v in state["counts"].items()})
            self.steps = int(state["steps"])

    def add(self, key: str, value: float) -> None:
        self.sums[key] += float(value)
        self.counts[key] += 1

    def state(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "steps": self.steps}

    def means(self) -> dict:
        return {k: (self.sums[k] / self.counts[k] if self.counts[k] else None) for k in self.keys}


def latest_checkpoint(out_dir) -> Path | None:
    """Return the newest ``checkpoints/step-*.pt`` of a run folder, or None."""
    found = sorted((Path(out_dir) / "checkpoints").glob("step-*.pt"))
    return found[-1] if found else None


def read_stats(path: Path) -> list[dict]:
    """The records of a ``stats.jsonl`` (empty when it does not exist)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
