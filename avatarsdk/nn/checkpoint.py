"""Weight files: one file per network, carrying the config that rebuilds it.

A file is ``torch.save`` of a plain dict (no pickled modules or classes)::

    {
        "format": 1,
        "kind": "generator" | "regressor" | "discriminators",
        "config": dataclasses.asdict(cfg),          # plain ints/floats/bools
        "state_dict": {name: tensor},               # strict=True on load
        "state_sha256": hex digest of the state dict's names, dtypes, shapes and bytes,
        "extra": {...},                             # optional: optimizer state, step, ...
    }

It is loaded with ``torch.load(weights_only=True)``, the network is rebuilt
from ``config`` and the state dict loaded with ``strict=True``. A missing,
truncated, tampered or mismatching file raises :class:`~avatarsdk.errors.WeightsError`;
nothing falls back to random weights. Pass the registry's ``sha256`` of the
file to :func:`load` to pin an exact file; ``state_sha256`` catches corruption
of the weights even without one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avatarsdk import pretrained
from avatarsdk.errors import AvatarError, InputError, WeightsError
from avatarsdk.files import atomic_write_bytes
from avatarsdk.nn.regressor import Regressor, RegressorConfig
from avatarsdk.nn.stylegan import DiscriminatorConfig, Discriminators, Generator, GeneratorConfig

__all__ = ["FORMAT", "KINDS", "Checkpoint", "file_sha256", "load", "registered_state_dict", "save", "state_sha256"]

FORMAT = 1

# kind -> (config class, network class); the network is built as cls(config).
KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    "generator": (GeneratorConfig, Generator),
    "regressor": (RegressorConfig, Regressor),
    "discriminators": (DiscriminatorConfig, Discriminators),
}

_PLAIN = (int, float, bool, str, type(None))


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded weight file.

    Attributes:
        kind: "generator", "regressor" or "discriminators".
        config: the rebuilt config dataclass.
        model: the network in eval mode on the CPU, weights loaded.
        extra: the optional extra dict (optimizer state, step, ...); empty if none.
        sha256: hex sha256 of the file bytes.
    """

    kind: str
    config: Any
    model: nn.Module
    extra: dict = field(default_factory=dict)
    sha256: str = ""


def registered_state_dict(name: str, path: str | os.PathLike | None = None,
                          sha256: str | None = "registry") -> tuple[dict, Path]:
    """Load a third-party state dict named in :data:`avatarsdk.pretrained.REGISTRY` (plain tensors only).

    Args:
        name: registry key.
        path: the file; None finds it with :func:`avatarsdk.pretrained.locate` (sha256 checked).
        sha256: for an explicit ``path``: "registry" checks the registry's hash, a hex
            digest checks that one, None checks nothing (a file the caller made).

    Returns:
        (state dict as ``torch.load(weights_only=True)`` gives it, the path read).

    Raises:
        WeightsError: missing file, wrong checksum, or not a readable state dict.
    """
    if path is None:
        path = pretrained.locate(name)
    elif sha256 is not None:
        pretrained.verify(path, pretrained.REGISTRY[name].sha256 if sha256 == "registry" else sha256)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip failure means a bad file
        raise WeightsError(f"{path} is not a readable state dict: {type(exc).__name__}: {exc}") from exc
    return state, Path(path)


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hex sha256 over a state dict's sorted names, dtypes, shapes and raw bytes (CPU, contiguous)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _kind_of(model: nn.Module) -> str:
    for kind, (_, cls) in KINDS.items():
        if type(model) is cls:
            return kind
    raise InputError(f"no checkpoint kind for {type(model).__name__}; known: {sorted(KINDS)}")


def _check_plain(obj: Any, where: str) -> None:
    """Raise InputError unless obj is made of tensors, plain scalars/strings, lists, tuples and dicts."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise InputError(f"{where}: dict keys must be str or int, got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise InputError(f"{where}: {type(obj).__name__} cannot be stored in a weights-only checkpoint")


def save(path: str | os.PathLike, model: nn.Module, extra: dict | None = None) -> str:
    """Write a network with its config to one file, atomically.

    Args:
        path: destination file (parent folders are created).
        model: a :class:`Generator`, :class:`Regressor` or :class:`Discriminators`.
        extra: optional dict of tensors and plain values (e.g. ``{"step": 1000,
            "opt_g": opt.state_dict()}``) for resumable training.

    Returns:
        hex sha256 of the written file (for a weights registry).

    Raises:
        InputError: unknown network type, or ``extra`` holds objects that
            ``torch.load(weights_only=True)`` would refuse.
    """
    kind = _kind_of(model)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "config": dataclasses.asdict(model.cfg),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
    }
    payload["state_sha256"] = state_sha256(payload["state_dict"])
    if extra is not None:
        if not isinstance(extra, dict):
            raise InputError(f"extra must be a dict, got {type(extra).__name__}")
        _check_plain(extra, "extra")
        payload["extra"] = extra
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load(path: str | os.PathLike, sha256: str | None = None, kind: str | None = None) -> Checkpoint:
    """Read a weight file written by :func:`save` and rebuild its network.

    Args:
        path: the file.
        sha256: expected hex sha256 of the file bytes (from a weights registry),
            or None to skip that check (the embedded state digest is always checked).
        kind: expected kind ("generator", "regressor", "discriminators"), or None for any.

    Returns:
        The :class:`Checkpoint`, its model in eval mode on the CPU.

    Raises:
        WeightsError: the file is missing or unreadable, its sha256 differs, its
            format or kind is unknown or unexpected, its config is invalid, or its
            state dict does not match the network built from the config.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read weights {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise WeightsError(f"{path}: sha256 {digest} does not match the expected {sha256}")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip failure means a bad file
        raise WeightsError(f"{path} is not a readable weights file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict):
        raise WeightsError(f"{path}: expected a dict payload, got {type(payload).__name__}")
    if payload.get("format") != FORMAT:
        raise WeightsError(f"{path}: unknown format {payload.get('format')!r} (this version reads {FORMAT})")
    file_kind = payload.get("kind")
    if file_kind not in KINDS:
        raise WeightsError(f"{path}: unknown kind {file_kind!r}; known: {sorted(KINDS)}")
    if kind is not None and file_kind != kind:
        raise WeightsError(f"{path}: holds a {file_kind}, expected a {kind}")
    cfg_cls, net_cls = KINDS[file_kind]
    raw_cfg = payload.get("config")
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    if not isinstance(raw_cfg, dict) or set(raw_cfg) - known:
        extra_keys = sorted(set(raw_cfg) - known) if isinstance(raw_cfg, dict) else raw_cfg
        raise WeightsError(f"{path}: bad {file_kind} config (unknown fields {extra_keys!r})")
    try:
        cfg = cfg_cls(**raw_cfg)
        model = net_cls(cfg)
    except (AvatarError, TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: bad {file_kind} config {raw_cfg!r}: {exc}") from exc
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: state_dict missing or not a dict of tensors")
    if payload.get("state_sha256") != state_sha256(state):
        raise WeightsError(f"{path}: weights do not match their embedded digest (file corrupted or edited)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: state dict does not match the {file_kind} config: {exc}") from exc
    extra = payload.get("extra", {})
    if not isinstance(extra, dict):
        raise WeightsError(f"{path}: extra must be a dict, got {type(extra).__name__}")
    return Checkpoint(kind=file_kind, config=cfg, model=model.eval(), extra=extra, sha256=digest)
