"""ONNX files are sha256-checked like the registry's weights; torch.load is pickle-free; no shell.

Exports write ``<file>.sha256``; ``OnnxModel`` verifies the bytes it loads
against ``sha256=`` or that sidecar and refuses a tampered file with
WeightsError. The last tests scan the package source for ``torch.load``
without ``weights_only=True`` and for shell-string subprocesses.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from avatarsdk import pretrained
from avatarsdk.errors import InputError, WeightsError
from avatarsdk.nn import Regressor, RegressorConfig

PACKAGE_DIRS = [ROOT / "avatarsdk", ROOT / "rigs", ROOT / "exporters"]

TINY_R = RegressorConfig(in_dim=16, num_ws=4, w_dim=8, hidden_dim=32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from avatarsdk.nn.onnx import export_regressor

    r = Regressor(TINY_R, seed=0).eval()
    path = export_regressor(r, tmp_path_factory.mktemp("onnx") / "r.onnx")
    return r, path


def _model(path, **kw):
    from avatarsdk.nn.onnx import OnnxModel

    return OnnxModel(path, providers=["CPUExecutionProvider"], intra_op_num_threads=1, **kw)


def _copy(src: Path, dst_dir: Path, with_sidecar: bool = True) -> Path:
    dst = dst_dir / src.name
    shutil.copyfile(src, dst)
    if with_sidecar:
        shutil.copyfile(pretrained.sidecar_path(src), pretrained.sidecar_path(dst))
    return dst


def _tamper(path: Path) -> None:
    """Flip one byte in the middle of the file: inside the float weights, so the graph still loads."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_export_writes_a_sha256sum_sidecar(exported):
    _, path = exported
    side = pretrained.sidecar_path(path)
    assert side.name == "r.onnx.sha256"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert side.read_text() == f"{digest}  r.onnx\n"
    assert pretrained.read_sidecar(path) == digest
    assert not list(path.parent.glob(".*.tmp"))


def test_checked_model_runs(exported):
    r, path = exported
    m = _model(path)
    assert m.verified == "sidecar" and m.sha256 == pretrained.read_sidecar(path)
    e = torch.randn(3, TINY_R.in_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(m(e), r(e).numpy(), rtol=1e-4, atol=1e-5)
    pinned = _model(path, sha256=m.sha256.upper())
    assert pinned.verified == "argument"


def test_tampered_onnx_is_refused(exported, tmp_path):
    _, path = exported
    bad = _copy(path, tmp_path)
    _tamper(bad)
    # Without a check the tampered graph would load and run (so it is the checksum that refuses it) ...
    unchecked_dir = tmp_path / "unchecked"
    unchecked_dir.mkdir()
    unchecked = _copy(bad, unchecked_dir, with_sidecar=False)
    m = _model(unchecked)
    assert m.verified is None and m(np.zeros((1, TINY_R.in_dim), np.float32)).shape == (1, 4, 8)
    # ... with the sidecar, or a pinned digest, it is refused.
    with pytest.raises(WeightsError, match=r"r\.onnx: sha256 [0-9a-f]{64} does not match the expected"):
        _model(bad)
    with pytest.raises(WeightsError, match="does not match"):
        _model(unchecked, sha256=pretrained.read_sidecar(path))


def test_pinned_digest_wins_over_a_rewritten_sidecar(exported, tmp_path):
    """Whoever can change the file can change its sidecar too: a pinned digest still refuses it."""
    _, path = exported
    good = pretrained.read_sidecar(path)
    bad = _copy(path, tmp_path)
    _tamper(bad)
    pretrained.write_sidecar(bad, hashlib.sha256(bad.read_bytes()).hexdigest())
    assert _model(bad).verified == "sidecar"  # consistent pair: accepted on the sidecar alone
    with pytest.raises(WeightsError, match="does not match"):
        _model(bad, sha256=good)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a sha256 checksum file"),
        (b"not a digest  r.onnx\n", "not a sha256 checksum file"),
        (b"ab" * 31 + b"  r.onnx\n", "not a sha256 checksum file"),  # 62 digits
        (b"0" * 64 + b"  other.onnx\n", "records the checksum of 'other.onnx'"),
    ],
)
def test_malformed_sidecar_is_refused(exported, tmp_path, content, message):
    _, path = exported
    dst = _copy(path, tmp_path, with_sidecar=False)
    pretrained.sidecar_path(dst).write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        _model(dst)


def test_bad_pinned_digest_and_unreadable_files(exported, tmp_path):
    _, path = exported
    with pytest.raises(WeightsError, match="64 hex digits"):
        _model(path, sha256="1234")
    with pytest.raises(InputError, match="cannot read ONNX model"):
        _model(tmp_path / "missing.onnx")
    cut = _copy(path, tmp_path, with_sidecar=False)
    cut.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="cannot load ONNX model"):
        _model(cut)  # no sidecar: not a checksum failure but an unreadable graph
    pretrained.write_sidecar(cut, pretrained.read_sidecar(path))
    with pytest.raises(WeightsError):
        _model(cut)  # with the original's sidecar: the checksum speaks first


def test_re_export_replaces_the_sidecar(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from avatarsdk.nn.onnx import export_regressor

    path = tmp_path / "r.onnx"
    export_regressor(Regressor(TINY_R, seed=0).eval(), path)
    first = pretrained.read_sidecar(path)
    export_regressor(Regressor(TINY_R, seed=1).eval(), path)
    second = pretrained.read_sidecar(path)
    assert first != second == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _model(path).verified == "sidecar"


def test_verify_bytes():
    data = b"weights"
    good = hashlib.sha256(data).hexdigest()
    assert pretrained.verify_bytes(data, good.upper(), "w.bin") == good
    with pytest.raises(WeightsError, match=r"w\.bin: sha256 .* \(8 bytes"):
        pretrained.verify_bytes(data + b"!", good, "w.bin")


# ---------------------------------------------------------------------------
# Source invariants (what SECURITY.md promises)
# ---------------------------------------------------------------------------

def _calls(predicate):
    """(file:line, call node) for every call in the package source matching ``predicate``."""
    found = []
    for folder in PACKAGE_DIRS:
        for py in sorted(folder.rglob("*.py")):
            tree = ast.parse(py.read_text(), filename=str(py))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and predicate(node):
                    found.append((f"{py.relative_to(ROOT)}:{node.lineno}", node))
    return found


def _dotted(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_torch_load_is_always_weights_only():
    loads = _calls(lambda n: _dotted(n.func) == "torch.load")
    assert loads, "expected torch.load calls in the package (checkpoint, perceptual)"
    bad = [where for where, n in loads
           if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                      for k in n.keywords)]
    assert not bad, f"torch.load without weights_only=True at {bad}"
    assert not _calls(lambda n: _dotted(n.func) in ("pickle.load", "pickle.loads", "torch.jit.load",
                                                    "dill.load", "joblib.load"))


def test_np_load_never_allows_pickle():
    bad = [where for where, n in _calls(lambda n: _dotted(n.func) in ("np.load", "numpy.load"))
           if not any(k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                      for k in n.keywords)]
    assert not bad, f"np.load without allow_pickle=False at {bad}"


def test_no_shell_strings():
    shell_true = _calls(lambda n: any(k.arg == "shell" and not (isinstance(k.value, ast.Constant)
                                                                and k.value.value is False) for k in n.keywords))
    assert not shell_true, f"shell= in {[w for w, _ in shell_true]}"
    os_shell = _calls(lambda n: _dotted(n.func) in ("os.system", "os.popen", "subprocess.getoutput",
                                                    "subprocess.getstatusoutput"))
    assert not os_shell, f"shell-string calls at {[w for w, _ in os_shell]}"
    runs = _calls(lambda n: _dotted(n.func).startswith("subprocess.") and n.args)
    strings = [w for w, n in runs if isinstance(n.args[0], (ast.Constant, ast.JoinedStr))]
    assert not strings, f"subprocess with a command string (not an argument list) at {strings}"
