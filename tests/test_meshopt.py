"""Mesh compression (`export --compress meshopt`): gltfpack's EXT_meshopt_compression, checked by
the Khronos validator and decoded by an independent decoder (three.js's MeshoptDecoder)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib as gl
import pytest
from test_export import export, npc  # noqa: F401 (npc is a fixture)
from test_gltf import assert_clean, validate

from avatarsdk.errors import ConfigError, ExportError
from avatarsdk.exporters.meshopt import compress_glb

REPO = Path(__file__).resolve().parents[1]
DECODER = REPO / "node_modules" / "three" / "examples" / "jsm" / "libs" / "meshopt_decoder.module.js"

# Decodes every EXT_meshopt_compression bufferView of a .glb (stdin) with three.js's decoder and
# prints the POSITION accessors of mesh 0 as JSON lists.
_DECODE_JS = r"""
const fs = require('fs');
const url = require('url');
(async () => {
  const { MeshoptDecoder } = await import(url.pathToFileURL(process.argv[1]).href);
  await MeshoptDecoder.ready;
  const buf = fs.readFileSync(0);
  const jsonLen = buf.readUInt32LE(12);
  const doc = JSON.parse(buf.subarray(20, 20 + jsonLen).toString('utf8'));
  const binStart = 20 + jsonLen + 8;
  const bin = buf.subarray(binStart);
  const views = doc.bufferViews.map((v) => {
    const ext = (v.extensions || {}).EXT_meshopt_compression;
    if (!ext) return null;
    const src = new Uint8Array(bin.buffer, bin.byteOffset + (ext.byteOffset || 0), ext.byteLength);
    const out = new Uint8Array(ext.count * ext.byteStride);
    MeshoptDecoder.decodeGltfBuffer(out, ext.count, ext.byteStride, src, ext.mode, ext.filter || 'NONE');
    return out;
  });
  const result = doc.meshes[0].primitives.map((p) => {
    const acc = doc.accessors[p.attributes.POSITION];
    const view = doc.bufferViews[acc.bufferView];
    const data = views[acc.bufferView];
    if (!data || acc.componentType !== 5126) throw new Error('POSITION not a compressed float view');
    const stride = view.byteStride || 12;
    const dv = new DataView(data.buffer);
    const out = [];
    for (let i = 0; i < acc.count; i++)
      for (let k = 0; k < 3; k++) out.push(dv.getFloat32((acc.byteOffset || 0) + i * stride + 4 * k, true));
    return out;
  });
  process.stdout.write(JSON.stringify(result));
})().catch((e) => { process.stderr.write(String(e)); process.exit(3); });
"""


def decode_positions(data: bytes) -> list[np.ndarray]:
    proc = subprocess.run([shutil.which("node"), "-e", _DECODE_JS, str(DECODER)], input=data, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[:2000]
    return [np.asarray(p, np.float32).reshape(-1, 3) for p in json.loads(proc.stdout)]


@pytest.fixture(scope="module")
def packages(npc, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("meshopt")
    plain, packed = d / "plain", d / "packed"
    r = export(npc, plain, "--gltf", "--visemes")
    assert r.exit_code == 0, r.output
    r = export(npc, packed, "--gltf", "--visemes", "--compress", "meshopt")
    assert r.exit_code == 0, r.output
    return plain, packed


def test_compressed_glb_is_valid_smaller_and_keeps_names(packages):
    plain, packed = packages
    a, b = (plain / "plain.glb").read_bytes(), (packed / "packed.glb").read_bytes()
    assert len(b) < 0.45 * len(a), (len(a), len(b))
    assert_clean(validate(b))
    g = gl.GLTF2.load_from_bytes(b)
    assert "EXT_meshopt_compression" in g.extensionsRequired
    names = gl.GLTF2.load_from_bytes(a).meshes[0].extras["targetNames"]
    assert g.meshes[0].extras["targetNames"] == names and len(names) == 67
    assert all(len(p.targets) == 67 for p in g.meshes[0].primitives)
    assert [m.name for m in g.materials] == [m.name for m in gl.GLTF2.load_from_bytes(a).materials]
    assert g.skins and [g.nodes[j].name for j in g.skins[0].joints] == ["root", "neck", "head", "jaw", "eye_L", "eye_R"]
    m = json.loads((packed / "manifest.json").read_text())
    assert m["models"]["glb"]["compression"]["method"] == "EXT_meshopt_compression"
    assert json.loads((plain / "manifest.json").read_text())["models"]["glb"]["compression"] is None


def test_decoded_positions_match(packages):
    # An independent decoder gives back the vertex positions (gltfpack reorders and welds vertices,
    # so compare the sets of positions per primitive, both ways). gltfpack rounds float positions
    # to a 14-bit grid over the mesh's bounds (~0.4 m / 2**14 = 24 microns): within 15 microns.
    from scipy.spatial import cKDTree

    plain, packed = packages
    g = gl.GLTF2.load_from_bytes((plain / "plain.glb").read_bytes())
    from avatarsdk.exporters.gltf_read import read_accessor

    decoded = decode_positions((packed / "packed.glb").read_bytes())
    assert len(decoded) == len(g.meshes[0].primitives)
    for prim, got in zip(g.meshes[0].primitives, decoded):
        want = read_accessor((plain / "plain.glb").read_bytes(), prim.attributes.POSITION)
        assert len(got) > 0.9 * len(np.unique(want, axis=0))  # (points closer than the grid merge)
        assert cKDTree(want).query(got)[0].max() < 1.5e-5
        assert cKDTree(got).query(want)[0].max() < 1.5e-5


def test_none_is_identity_and_bad_method():
    assert compress_glb(b"glTF...", "none") == b"glTF..."
    with pytest.raises(ExportError, match="compression must be one of"):
        compress_glb(b"", "draco")


def test_bad_compress_option_and_missing_gltfpack_exit_2(npc, tmp_path, monkeypatch):  # noqa: F811
    r = export(npc, tmp_path / "x", "--gltf", "--compress", "zip")
    assert r.exit_code == 2 and "compress must be one of" in r.output, r.output
    r = export(npc, tmp_path / "y", "--gltf", "--compress", "meshopt",
               env={"AVATARSDK_GLTFPACK": str(tmp_path / "nope.js")})
    assert r.exit_code == 2 and "gltfpack not found" in r.output, r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    monkeypatch.setenv("AVATARSDK_GLTFPACK", str(tmp_path / "nope.js"))
    with pytest.raises(ConfigError):
        compress_glb(b"", "meshopt")
