"""Mesh compression of a .glb: EXT_meshopt_compression through gltfpack (npm, MIT).

gltfpack is meshoptimizer's glTF packer, shipped on npm as a WebAssembly build
that runs under node with no network (pinned in ``package.json``, installed by
``make setup``). It is used, not a hand-written encoder, because the
EXT_meshopt_compression bitstream and its filters are that library's format.

The options are chosen to keep what an engine imports from our files:

* ``-cc``: meshopt compression with the higher-ratio mode (EXT_meshopt_compression,
  listed in ``extensionsRequired``, with KHR_mesh_quantization);
* ``-vpf``: positions (and morph POSITION deltas) stay float32, so no
  dequantisation node is put above the skinned mesh (a skinned mesh under a
  scaled node is a Khronos validator warning and ignored by engines); gltfpack
  still rounds them to its 14-bit grid over the mesh's bounds (about 24 microns
  on a head, so within 12 microns); normals become 8-bit and texture
  coordinates 12-bit, gltfpack's defaults;
* ``-kn -km -ke``: node, mesh and material names and ``extras`` stay (the
  morph target names live in ``mesh.extras.targetNames``).

gltfpack drops custom vertex attributes, so a compressed file has no
``_ICT_VERTEX`` (the map back to ICT vertices), and it reorders vertices for
the GPU's vertex cache; keep the uncompressed file where that map is needed.
Readers need a meshopt decoder: three.js (``GLTFLoader.setMeshoptDecoder``),
Babylon.js, glTFast (with its meshopt package) and Godot 4 have one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from avatarsdk.errors import ConfigError, ExportError

__all__ = ["COMPRESSIONS", "GLTFPACK_ARGS", "compress_glb", "gltfpack_command"]

COMPRESSIONS = ("none", "meshopt")
"""Values of ``--compress``: "none" (the default: plain float buffers) or "meshopt"."""

GLTFPACK_ARGS = ("-cc", "-vpf", "-kn", "-km", "-ke")
"""gltfpack options used for "meshopt" (see the module docstring)."""

_REPO = Path(__file__).resolve().parents[1]


def gltfpack_command() -> list[str]:
    """The command that runs gltfpack: ``$AVATARSDK_GLTFPACK`` (a cli.js or an executable) or the npm copy.

    Raises:
        ConfigError: node or gltfpack is not installed.
    """
    setting = os.environ.get("AVATARSDK_GLTFPACK")
    cli = Path(setting) if setting else _REPO / "node_modules" / "gltfpack" / "cli.js"
    if not cli.is_file():
        where = "AVATARSDK_GLTFPACK" if setting else "node_modules"
        raise ConfigError(f"gltfpack not found at {cli} ({where}): run `make setup` (npm ci) to install it")
    if cli.suffix != ".js":
        return [str(cli)]
    node = shutil.which("node")
    if node is None:
        raise ConfigError("node is not installed; gltfpack (mesh compression) runs under node: run `make setup`")
    return [node, str(cli)]


def compress_glb(data: bytes, method: str = "meshopt", *, timeout: float = 300.0) -> bytes:
    """Return ``data`` (a .glb) with its meshes compressed.

    Args:
        data: a .glb file's bytes.
        method: "meshopt" (EXT_meshopt_compression via gltfpack) or "none"
            (returns ``data`` unchanged).
        timeout: seconds for gltfpack.

    Returns:
        The compressed .glb.

    Raises:
        ExportError: an unknown ``method``, or gltfpack failed or wrote nothing.
        ConfigError: gltfpack or node is missing.
    """
    if method not in COMPRESSIONS:
        raise ExportError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {method!r}")
    if method == "none":
        return data
    cmd = gltfpack_command()
    with tempfile.TemporaryDirectory(prefix="avatarsdk-gltfpack-") as tmp:
        src, dst = Path(tmp) / "in.glb", Path(tmp) / "out.glb"
        src.write_bytes(data)
        try:
            proc = subprocess.run([*cmd, "-i", str(src), "-o", str(dst), *GLTFPACK_ARGS], capture_output=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ExportError(f"gltfpack did not finish in {timeout:g} s") from None
        if proc.returncode != 0 or not dst.is_file():
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise ExportError(f"gltfpack failed with exit code {proc.returncode}: {' | '.join(err)}")
        return dst.read_bytes()
