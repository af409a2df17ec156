"""ONNX export of R and G and an onnxruntime runner (the fast inference path).

Graphs (opset 17, dynamic batch ``B``)::

    export_generator(G, path, input="z")               z [B, z_dim], psi []  -> maps [B, 6, R, R]
    export_generator(G, path, input="z", truncation_psi=0.7)   z [B, z_dim]  -> maps   (psi baked in)
    export_generator(G, path, input="ws")              ws [B, L, w_dim]      -> maps [B, 6, R, R]
    export_regressor(R, path)                          embedding [B, in_dim] -> ws [B, L, w_dim]

Export uses PyTorch's TorchScript-based exporter (``dynamo=False``): the
``torch.export``-based one in torch 2.13 needs the ``onnxscript`` package,
which we do not depend on. Export needs the ``onnx`` package (the exporter
imports it); running needs ``onnxruntime`` (or ``onnxruntime-gpu``). Both are
imported only when used.

Checksums: every export also writes ``<file>.sha256`` (``sha256sum`` format)
next to the graph. :class:`OnnxModel` reads the file once, checks those bytes
against ``sha256=`` when given, else against the sidecar when there is one
(a mismatch is a :class:`~avatarsdk.errors.WeightsError`), and builds the
session from the bytes it checked. The sidecar catches corruption and mix-ups;
against someone who can rewrite the folder, pin the digest instead
(``OnnxModel(path, sha256=...)`` with the value read from the sidecar at
export time and kept in your own configuration).
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avatarsdk import pretrained
from avatarsdk.errors import ConfigError, InputError
from avatarsdk.files import atomic_write_bytes
from avatarsdk.nn.regressor import Regressor
from avatarsdk.nn.stylegan import Generator

__all__ = ["OPSET", "OnnxModel", "default_providers", "export_generator", "export_regressor"]

OPSET = 17

log = logging.getLogger(__name__)


class _ZToMaps(nn.Module):
    def __init__(self, g: Generator, psi: float | None):
        super().__init__()
        self.g = g
        self.psi = psi

    def forward(self, z: torch.Tensor, psi: torch.Tensor | None = None) -> torch.Tensor:
        return self.g(z, self.psi if psi is None else psi)


class _WsToMaps(nn.Module):
    def __init__(self, g: Generator):
        super().__init__()
        self.synthesis = g.synthesis

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis(ws)


@contextmanager
def _eval_mode(module: nn.Module):
    """Put a module in eval mode (no w_avg updates) and restore every submodule's own flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def _export(module: nn.Module, args: tuple, path: str | os.PathLike, input_names: list[str],
            output_names: list[str], dynamic_axes: dict) -> Path:
    try:
        import onnx  # noqa: F401  # local: optional (the train extra); the TorchScript exporter needs it
    except ImportError as exc:
        raise ConfigError("ONNX export needs the `onnx` package: pip install 'avatarsdk[train]'") from exc
    buf = io.BytesIO()
    with _eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter warns that it is deprecated, and tracing warns about our
        # Python shape checks (they are constant for a given graph, which is what we want).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    data = buf.getvalue()
    out = atomic_write_bytes(path, data)
    # After the graph: a crash in between leaves an older sidecar, which refuses the new file (fails closed).
    pretrained.write_sidecar(out, hashlib.sha256(data).hexdigest())
    return out


def export_generator(
    g: Generator, path: str | os.PathLike, input: str = "z", truncation_psi: float | None = None
) -> Path:
    """Export G to an ONNX file.

    Args:
        g: the generator (any device; exported from a CPU float32 copy).
        path: destination ``.onnx`` file, written atomically, with its sha256 in
            ``<path>.sha256`` next to it.
        input: "z" for z -> maps (mapping + synthesis), "ws" for ws -> maps (synthesis only).
        truncation_psi: with ``input="z"``: None makes psi a graph input
            ``psi`` (0-d float32), a number bakes it in. Must be None for "ws".

    Returns:
        The path written. Inputs ``z`` [B, z_dim] (+ ``psi`` []) or ``ws``
        [B, L, w_dim]; output ``maps`` [B, out_channels, R, R] float32.

    Raises:
        InputError: bad ``input`` / ``truncation_psi`` combination.
        ConfigError: the ``onnx`` package is not installed.
    """
    if not isinstance(g, Generator):
        raise InputError(f"g must be a Generator, got {type(g).__name__}")
    cfg = g.cfg
    g = _cpu_copy(g)
    if input == "z":
        z = torch.zeros(2, cfg.z_dim)
        if truncation_psi is None:
            return _export(_ZToMaps(g, None), (z, torch.tensor(1.0)), path, ["z", "psi"], ["maps"],
                           {"z": {0: "batch"}, "maps": {0: "batch"}})
        return _export(_ZToMaps(g, float(truncation_psi)), (z,), path, ["z"], ["maps"],
                       {"z": {0: "batch"}, "maps": {0: "batch"}})
    if input == "ws":
        if truncation_psi is not None:
            raise InputError("truncation_psi applies to input='z' only (truncate ws before synthesis)")
        ws = torch.zeros(2, cfg.num_ws, cfg.w_dim)
        return _export(_WsToMaps(g), (ws,), path, ["ws"], ["maps"], {"ws": {0: "batch"}, "maps": {0: "batch"}})
    raise InputError(f"input must be 'z' or 'ws', got {input!r}")


def export_regressor(r: Regressor, path: str | os.PathLike) -> Path:
    """Export R to an ONNX file: input ``embedding`` [B, in_dim] -> output ``ws`` [B, L, w_dim].

    The file is written atomically, with its sha256 in ``<path>.sha256`` next to it.

    Returns:
        The path written.

    Raises:
        ConfigError: the ``onnx`` package is not installed.
    """
    if not isinstance(r, Regressor):
        raise InputError(f"r must be a Regressor, got {type(r).__name__}")
    r = _cpu_copy(r)
    e = torch.zeros(2, r.cfg.in_dim)
    return _export(r, (e,), path, ["embedding"], ["ws"], {"embedding": {0: "batch"}, "ws": {0: "batch"}})


def _cpu_copy(module: nn.Module) -> nn.Module:
    p = next(module.parameters(), None)
    if p is not None and (p.device.type != "cpu" or p.dtype != torch.float32):
        return copy.deepcopy(module).to("cpu", torch.float32)
    return module


def default_providers() -> list[str]:
    """onnxruntime providers to use: CUDA first when this onnxruntime build has it, else CPU only.

    Raises:
        ConfigError: onnxruntime is not installed.
    """
    ort = _import_ort()
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _import_ort():
    try:
        import onnxruntime  # local: the CPU or the GPU build may be installed, or neither (typed error)
    except ImportError as exc:
        raise ConfigError("the ONNX path needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from exc
    return onnxruntime


class OnnxModel:
    """An onnxruntime session for one exported network.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers in priority order; None = :func:`default_providers`.
        intra_op_num_threads: threads inside one op (None or 0 = onnxruntime's default, all cores).
        inter_op_num_threads: threads across independent ops (None = default).
        session_config: extra onnxruntime session config entries, e.g.
            ``{"session.intra_op.allow_spinning": "0"}`` so idle worker threads
            sleep instead of spinning (kinder to other work on a shared CPU,
            a little slower per call).
        sha256: expected hex sha256 of the file. None: the one recorded in
            ``<path>.sha256`` when that sidecar exists (as every export writes),
            else the file is loaded unchecked (logged at INFO).

    Attributes:
        sha256: hex sha256 of the bytes the session was built from.
        verified: where the expected digest came from: "argument", "sidecar" or None.

    Raises:
        ConfigError: onnxruntime is not installed.
        WeightsError: the file's sha256 differs from ``sha256`` or from its
            sidecar, or the sidecar is malformed.
        InputError: the file cannot be read, or not as an ONNX model.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 intra_op_num_threads: int | None = None, inter_op_num_threads: int | None = None,
                 session_config: dict[str, str] | None = None, sha256: str | None = None):
        ort = _import_ort()
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read ONNX model {path}: {exc.strerror or exc}") from exc
        expected, self.verified = sha256, ("argument" if sha256 is not None else None)
        if expected is None:
            expected = pretrained.read_sidecar(self.path)
            self.verified = "sidecar" if expected is not None else None
        if expected is not None:
            self.sha256 = pretrained.verify_bytes(data, expected, self.path)
        else:
            self.sha256 = hashlib.sha256(data).hexdigest()
            log.info("%s: no expected sha256 and no %s sidecar: loaded unchecked (sha256 %s)",
                     self.path, pretrained.SIDECAR_SUFFIX, self.sha256)
        opts = ort.SessionOptions()
        for key, value in (session_config or {}).items():
            opts.add_session_config_entry(str(key), str(value))
        if intra_op_num_threads is not None:
            opts.intra_op_num_threads = int(intra_op_num_threads)
        if inter_op_num_threads is not None:
            opts.inter_op_num_threads = int(inter_op_num_threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            # From the checked bytes, not the path: the file cannot change between check and load.
            self.session = ort.InferenceSession(data, sess_options=opts,
                                                providers=list(providers or default_providers()))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise InputError(f"cannot load ONNX model {path}: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses."""
        return self.session.get_providers()

    def run(self, **inputs: np.ndarray | torch.Tensor | float) -> dict[str, np.ndarray]:
        """Run the graph.

        Args:
            **inputs: one array per graph input, by name (e.g. ``z=...``,
                ``psi=0.7``); tensors and floats are converted to float32 arrays.

        Returns:
            Output name -> array.

        Raises:
            InputError: missing or unexpected inputs.
        """
        if set(inputs) != set(self.input_names):
            raise InputError(f"{self.path.name}: expected inputs {self.input_names}, got {sorted(inputs)}")
        feeds = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            feeds[name] = np.ascontiguousarray(value, dtype=np.float32)
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))

    def __call__(self, *args: np.ndarray | torch.Tensor | float) -> np.ndarray:
        """Run with positional inputs in graph order and return the first output."""
        if len(args) != len(self.input_names):
            raise InputError(f"{self.path.name}: expected {len(self.input_names)} inputs {self.input_names}, "
                             f"got {len(args)}")
        return self.run(**dict(zip(self.input_names, args)))[self.output_names[0]]
