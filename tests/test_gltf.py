"""glTF export: Khronos validator, structure, round trips, default textures.

The validator is the npm package ``gltf-validator`` (a library, no CLI), pinned in
``package.json`` and installed by ``make setup``; it runs under node with a
small inline script. A missing validator fails the tests instead of skipping
them, so CI cannot pass without validating.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pygltflib as gl
import pytest
from PIL import Image

from conftest import assert_clean, validate
from avatarsdk.errors import ExportError, InputError
from avatarsdk.exporters.gltf import (ICT_VERTEX_ATTRIBUTE, morph_normal_deltas, primitives, to_glb, vertex_normals,
                                      weld)
from avatarsdk.exporters.gltf_read import read_accessor, read_glb_summary
from avatarsdk.materials import default_textures, plain_skin_albedo
from avatarsdk.pbr import skin_maps
from avatarsdk.rigs import load_ict
from avatarsdk.rigs.ict import ICT_EXPRESSIONS
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.datatypes import JOINT_NAMES, Avatar


# ---------------------------------------------------------------------------
# Fixtures: one real ICT avatar (random identity), exported once per module.
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return load_ict()


def make_avatar(model, names: str = "arkit") -> Avatar:
    verts = model.morph(np.random.default_rng(1).normal(size=100))
    textures = {"skin": plain_skin_albedo((0.80, 0.60, 0.50), size=256), **default_textures(),
                **skin_maps(verts, model.topology, size=256, seed=1)}  # normal + ORM: the validator checks TANGENT
    return Avatar(vertices=verts, topology=model.topology, textures=textures, rig=model.rig(verts, names=names),
                  meta={"seed": 1, "source": "test", "np": np.float32(0.5), "bad": float("nan")})


@pytest.fixture(scope="module")
def avatar(model):
    return make_avatar(model)


@pytest.fixture(scope="module")
def glb(avatar):
    return to_glb(avatar)


@pytest.fixture(scope="module")
def doc(glb):
    g = gl.GLTF2.load_from_bytes(glb)
    return g, g.binary_blob()


def accessor_array(g: gl.GLTF2, blob: bytes, index: int) -> np.ndarray:
    """Independent reader: accessor as [count, n] numpy, sparse applied (tightly packed views only)."""
    dtypes = {gl.UNSIGNED_BYTE: np.uint8, gl.UNSIGNED_SHORT: np.uint16, gl.UNSIGNED_INT: np.uint32, gl.FLOAT: np.float32}
    widths = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
    acc = g.accessors[index]
    dtype, width = dtypes[acc.componentType], widths[acc.type]

    def view(bv_index, offset, dt, count, w):
        bv = g.bufferViews[bv_index]
        assert bv.byteStride in (None, np.dtype(dt).itemsize * w)
        start = (bv.byteOffset or 0) + (offset or 0)
        return np.frombuffer(blob, dt, count=count * w, offset=start).reshape(count, w)

    out = (np.zeros((acc.count, width), dtype) if acc.bufferView is None
           else view(acc.bufferView, acc.byteOffset, dtype, acc.count, width).copy())
    if acc.sparse is not None:
        sp = acc.sparse
        idx = view(sp.indices.bufferView, sp.indices.byteOffset, dtypes[sp.indices.componentType], sp.count, 1)[:, 0]
        assert (np.diff(idx.astype(np.int64)) > 0).all(), "sparse indices must increase"
        out[idx] = view(sp.values.bufferView, sp.values.byteOffset, dtype, sp.count, width)
    return out


def attr(prim, name):
    return prim.attributes.__dict__[name]


def target_position(target) -> int:
    return target["POSITION"] if isinstance(target, dict) else target.POSITION


# ---------------------------------------------------------------------------
# Validator
# ---------------------------------------------------------------------------

def test_validator_reports_no_errors_or_warnings(glb):
    report = validate(glb)
    assert_clean(report)
    info = report["info"]
    assert info["hasSkins"] and info["hasMorphTargets"] and info["hasTextures"]
    assert info["drawCallCount"] == 5


def test_untextured_primitive_has_no_texcoord(glb, doc):
    # The eye_wet film has no texture: a TEXCOORD_0 there is an unused object (a validator info).
    codes = [(m["code"], m.get("pointer", "")) for m in validate(glb)["issues"]["messages"]]
    assert not [c for c in codes if c[1].endswith("TEXCOORD_0")], codes
    g, _ = doc
    for prim in g.meshes[0].primitives:
        mat = g.materials[prim.material]
        textured = mat.pbrMetallicRoughness.baseColorTexture is not None
        assert (prim.attributes.TEXCOORD_0 is not None) == textured, mat.name
    assert any(g.materials[p.material].name == "eye_wet" and p.attributes.TEXCOORD_0 is None
               for p in g.meshes[0].primitives)


def test_ict_names_and_extra_shapes_validate(model, avatar):
    ict = make_avatar(model, names="ict")
    extra = {"visemeAA": np.asarray(avatar.rig.blendshapes[17]) * 0.5}
    data = to_glb(ict, extra_shapes=extra)
    assert_clean(validate(data))
    g = gl.GLTF2.load_from_bytes(data)
    assert g.meshes[0].extras["targetNames"] == list(ICT_EXPRESSIONS) + ["visemeAA"]
    assert all(len(p.targets) == 54 for p in g.meshes[0].primitives)


def test_no_blendshapes_validates(avatar):
    data = to_glb(avatar, blendshapes="none")
    assert_clean(validate(data))
    g = gl.GLTF2.load_from_bytes(data)
    assert all(not p.targets for p in g.meshes[0].primitives)
    assert not g.meshes[0].weights and "targetNames" not in (g.meshes[0].extras or {})


# ---------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------

def test_morph_target_names_and_weights(doc):
    g, _ = doc
    mesh = g.meshes[0]
    assert mesh.extras["targetNames"] == list(ARKIT_NAMES)
    assert len(ARKIT_NAMES) == 52
    assert mesh.weights == [0.0] * 52
    for prim in mesh.primitives:
        assert len(prim.targets) == 52
        for t in prim.targets:
            acc = g.accessors[target_position(t)]
            assert acc.count == g.accessors[attr(prim, "POSITION")].count
            assert len(acc.min) == 3 and len(acc.max) == 3


def test_skeleton_nodes_and_bind_matrices(doc, avatar):
    g, blob = doc
    sk = avatar.rig.skeleton
    skin = g.skins[0]
    assert [g.nodes[j].name for j in skin.joints] == list(JOINT_NAMES)
    assert skin.skeleton == skin.joints[0]
    # The skinned mesh node is a scene root with no transform; the scene holds it and the root joint.
    mesh_node = next(i for i, n in enumerate(g.nodes) if n.mesh is not None)
    assert g.nodes[mesh_node].skin == 0
    assert all(mesh_node not in n.children for n in g.nodes)
    assert set(g.scenes[g.scene].nodes) == {mesh_node, skin.joints[0]}
    # World positions composed from the local translations match the skeleton (no rotations).
    world = {}
    for k, j in enumerate(skin.joints):
        node = g.nodes[j]
        assert node.rotation is None and node.matrix is None
        parent = next((p for p in skin.joints if j in g.nodes[p].children), None)
        world[j] = np.asarray(node.translation, np.float64) + (world[parent] if parent is not None else 0.0)
        np.testing.assert_allclose(world[j], sk.positions[k], atol=1e-6)
    ibm = accessor_array(g, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major
    for k, j in enumerate(skin.joints):
        bind = np.eye(4)
        bind[:3, 3] = world[j]
        np.testing.assert_allclose(ibm[k] @ bind, np.eye(4), atol=1e-6)


def test_materials_and_textures(doc):
    g, _ = doc
    by_name = {m.name: m for m in g.materials}
    assert len(g.materials) >= 4
    assert {"skin", "eyes", "teeth", "eyelashes", "eye_wet"} <= set(by_name)
    assert len(g.images) >= 1 and all(im.mimeType == "image/png" and im.bufferView is not None for im in g.images)
    skin = by_name["skin"].pbrMetallicRoughness
    # With an ORM texture the roughness comes from its G channel (factor 1), occlusion from its R.
    assert skin.baseColorTexture is not None and skin.metallicFactor == 0.0 and skin.roughnessFactor == 1.0
    assert skin.metallicRoughnessTexture.index == by_name["skin"].occlusionTexture.index
    assert by_name["skin"].normalTexture is not None
    assert by_name["eyes"].pbrMetallicRoughness.roughnessFactor == pytest.approx(0.1)  # wet, glossy
    assert by_name["eyelashes"].alphaMode in ("BLEND", "MASK") and by_name["eyelashes"].doubleSided
    assert by_name["eye_wet"].alphaMode == "BLEND" and by_name["eye_wet"].pbrMetallicRoughness.baseColorFactor[3] < 0.1
    assert g.samplers[0].minFilter == gl.LINEAR_MIPMAP_LINEAR and g.samplers[0].magFilter == gl.LINEAR


def test_asset_generator_and_provenance(doc):
    g, _ = doc
    assert g.asset.generator.startswith("avatarsdk ")
    meta = g.asset.extras["avatarsdk"]["meta"]
    assert meta == {"seed": 1, "source": "test", "np": 0.5}  # numpy made plain, NaN dropped


def test_welded_vertices_map_back_to_ict(doc, avatar):
    g, blob = doc
    topo = avatar.topology
    mesh = g.meshes[0]
    assert [g.materials[p.material].name for p in mesh.primitives] == list(topo.materials)
    normals = vertex_normals(avatar.vertices, topo.triangles)
    for mi, prim in enumerate(mesh.primitives):
        vmap = accessor_array(g, blob, attr(prim, ICT_VERTEX_ATTRIBUTE))[:, 0].astype(np.int64)
        pos = accessor_array(g, blob, attr(prim, "POSITION"))
        np.testing.assert_array_equal(pos, avatar.vertices[vmap])
        np.testing.assert_array_equal(accessor_array(g, blob, attr(prim, "NORMAL")), normals[vmap])
        idx = accessor_array(g, blob, prim.indices).reshape(-1, 3).astype(np.int64)
        sel = topo.tri_material == mi
        np.testing.assert_array_equal(vmap[idx], topo.triangles[sel])
        if attr(prim, "TEXCOORD_0") is not None:  # (untextured eye_wet has none)
            np.testing.assert_array_equal(accessor_array(g, blob, attr(prim, "TEXCOORD_0"))[idx], topo.corner_uv[sel])
        weights = accessor_array(g, blob, attr(prim, "WEIGHTS_0")).astype(np.float64)
        joints = accessor_array(g, blob, attr(prim, "JOINTS_0"))
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=2e-7)
        assert (joints[weights == 0] == 0).all()
        np.testing.assert_allclose(weights, avatar.rig.skin_weights[vmap], atol=1e-6)
    # Seams: the skin has more glTF vertices than ICT vertices, but smooth normals across them.
    skin_map = accessor_array(g, blob, attr(mesh.primitives[0], ICT_VERTEX_ATTRIBUTE))[:, 0]
    assert len(skin_map) > len(np.unique(skin_map))


@pytest.mark.parametrize("shape", ["jawOpen", "eyeBlinkLeft", "mouthSmileRight", "tongueOut", "browInnerUp"])
def test_morph_targets_round_trip(glb, doc, avatar, shape):
    g, blob = doc
    k = list(ARKIT_NAMES).index(shape)
    deltas = np.asarray(avatar.rig.blendshapes[k])
    kinds = set()
    for prim in g.meshes[0].primitives:
        vmap = accessor_array(g, blob, attr(prim, ICT_VERTEX_ATTRIBUTE))[:, 0].astype(np.int64)
        acc_index = target_position(prim.targets[k])
        acc = g.accessors[acc_index]
        kinds.add("sparse" if acc.sparse else "zeros" if acc.bufferView is None else "dense")
        got = accessor_array(g, blob, acc_index)
        want = deltas[vmap]
        kept = np.abs(want).max(1) > 1e-5  # the default morph_epsilon
        np.testing.assert_array_equal(got[kept], want[kept])
        np.testing.assert_array_equal(got[~kept], 0.0)
        np.testing.assert_array_equal(acc.min, got.min(0))
        np.testing.assert_array_equal(acc.max, got.max(0))
        # The SDK's reader agrees with the independent one.
        np.testing.assert_array_equal(read_accessor(glb, acc_index), got)
    assert "sparse" in kinds


def test_morph_epsilon_zero_is_lossless(avatar):
    data = to_glb(avatar, morph_epsilon=0.0)
    g = gl.GLTF2.load_from_bytes(data)
    blob = g.binary_blob()
    k = list(ARKIT_NAMES).index("mouthPucker")
    for prim in g.meshes[0].primitives:
        vmap = accessor_array(g, blob, attr(prim, ICT_VERTEX_ATTRIBUTE))[:, 0].astype(np.int64)
        got = accessor_array(g, blob, target_position(prim.targets[k]))
        np.testing.assert_array_equal(got, avatar.rig.blendshapes[k][vmap])


def test_morph_targets_carry_normal_deltas(doc, avatar):
    # Reference: the smooth normals of the whole mesh with jawOpen fully applied, minus the
    # base normals (computed on every vertex, not only near the moved ones as the exporter does).
    g, blob = doc
    k = list(ARKIT_NAMES).index("jawOpen")
    v = np.asarray(avatar.vertices, np.float32)
    d = avatar.rig.blendshapes[k].astype(np.float32)
    d = np.where((np.abs(d).max(1) > 1e-5)[:, None], d, 0)  # as stored (morph_epsilon)
    tri = avatar.topology.triangles
    ref = vertex_normals(v.astype(np.float64) + d, tri) - vertex_normals(v, tri)
    worst = 0.0
    for prim in g.meshes[0].primitives:
        vmap = accessor_array(g, blob, attr(prim, ICT_VERTEX_ATTRIBUTE))[:, 0].astype(np.int64)
        t = prim.targets[k]
        normal = t["NORMAL"] if isinstance(t, dict) else t.NORMAL
        assert normal is not None, "morph target without NORMAL deltas"
        got = accessor_array(g, blob, normal)
        # Stored where any axis exceeds normal_epsilon (0.005), zero elsewhere.
        np.testing.assert_allclose(got, np.where((np.abs(ref[vmap]).max(1) > 5e-3)[:, None], ref[vmap], 0), atol=2e-5)
        worst = max(worst, float(np.abs(got).max()))
    assert worst > 0.2  # the jaw and lips turn: shading must follow


def test_normal_deltas_zero_for_rigid_translation():
    # A target that translates a closed mesh rigidly leaves every normal unchanged; a
    # target that moves one apex of a tetrahedron changes the faces around it only.
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
    tri = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    d = np.stack([np.tile([0.3, -0.2, 0.1], (4, 1)), np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1.0]])])
    dn = morph_normal_deltas(v, tri, d)
    assert dn.shape == (2, 4, 3) and dn.dtype == np.float32
    np.testing.assert_allclose(dn[0], 0, atol=1e-6)
    np.testing.assert_allclose(dn[1], vertex_normals(v + d[1], tri) - vertex_normals(v, tri), atol=1e-6)
    assert np.abs(dn[1]).max() > 0.05


def test_size_is_reasonable(glb):
    # Geometry + 52 sparse targets (POSITION ~7 MB, NORMAL deltas ~3.5 MB); textures here are tiny.
    assert 2e6 < len(glb) < 12.5e6


# ---------------------------------------------------------------------------
# Welding on a tiny input
# ---------------------------------------------------------------------------

def test_weld_tiny():
    # Two triangles sharing the edge (1, 2); vertex 2 sits on a UV seam.
    tri = np.array([[0, 1, 2], [2, 1, 3]])
    uv = np.array([
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
        [[0.5, 0.5], [1.0, 0.0], [1.0, 1.0]],
    ], np.float32)
    vmap, wuv, idx = weld(tri, uv)
    assert vmap.tolist() == [0, 1, 2, 2, 3]
    np.testing.assert_array_equal(vmap[idx], tri)
    np.testing.assert_array_equal(wuv[idx], uv)
    assert idx[0, 1] == idx[1, 1]  # vertex 1 shared with the same UV
    assert idx[0, 2] != idx[1, 0]  # vertex 2 split at the seam


def test_weld_empty_and_bad_shapes():
    vmap, wuv, idx = weld(np.zeros((0, 3), int), np.zeros((0, 3, 2), np.float32))
    assert vmap.shape == (0,) and wuv.shape == (0, 2) and idx.shape == (0, 3)
    with pytest.raises(ExportError):
        weld(np.zeros((2, 3), int), np.zeros((2, 3, 3), np.float32))


def test_primitives_cover_every_triangle(avatar):
    prims = primitives(avatar.topology)
    assert sum(len(p.indices) for p in prims) == len(avatar.topology.triangles)
    assert [p.material for p in prims] == list(avatar.topology.materials)


def test_vertex_normals_tiny():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]], np.float32)  # vertex 3 unused
    n = vertex_normals(verts, np.array([[0, 1, 2]]))
    np.testing.assert_allclose(n, [[0, 0, 1]] * 4)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

def _bad_variants(avatar):
    rig = avatar.rig
    nan_verts = np.array(avatar.vertices)
    nan_verts[5, 1] = np.nan
    weights = np.array(rig.skin_weights)
    weights[0] *= 2
    shapes = np.array(rig.blendshapes)
    shapes[3, 7, 0] = np.inf
    no_skin = {k: v for k, v in avatar.textures.items() if k != "skin"}
    return {
        "nan vertices": (dataclasses.replace(avatar, vertices=nan_verts), {}),
        "wrong vertex count": (dataclasses.replace(avatar, vertices=np.zeros((10, 3), np.float32)), {}),
        "missing skin texture": (dataclasses.replace(avatar, textures=no_skin), {}),
        "npot texture": (dataclasses.replace(avatar, textures={**avatar.textures,
                                                               "skin": np.zeros((300, 300, 3), np.uint8)}), {}),
        "float texture": (dataclasses.replace(avatar, textures={**avatar.textures,
                                                                "eyes": np.zeros((64, 64, 3), np.float32)}), {}),
        "weights": (dataclasses.replace(avatar, rig=dataclasses.replace(rig, skin_weights=weights)), {}),
        "inf blendshape": (dataclasses.replace(avatar, rig=dataclasses.replace(rig, blendshapes=shapes)), {}),
        "blendshapes option": (avatar, {"blendshapes": "some"}),
        "extra shape shape": (avatar, {"extra_shapes": {"x": np.zeros((5, 3))}}),
        "extra shape duplicate": (avatar, {"extra_shapes": {"jawOpen": np.zeros_like(avatar.vertices)}}),
        "negative epsilon": (avatar, {"morph_epsilon": -1.0}),
    }


BAD_CASES = ["nan vertices", "wrong vertex count", "missing skin texture", "npot texture", "float texture", "weights",
             "inf blendshape", "blendshapes option", "extra shape shape", "extra shape duplicate", "negative epsilon"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_export_error(avatar, case):
    bad, kwargs = _bad_variants(avatar)[case]
    with pytest.raises(ExportError):
        to_glb(bad, **kwargs)


# ---------------------------------------------------------------------------
# Summary for `avatarsdk info`
# ---------------------------------------------------------------------------

def test_read_glb_summary(glb, avatar):
    s = read_glb_summary(glb)
    json.dumps(s)  # JSON-serialisable
    assert s["generator"].startswith("avatarsdk ")
    assert s["bytes"] == len(glb)
    assert s["triangles"] == len(avatar.topology.triangles)
    assert [p["material"] for p in s["primitives"]] == list(avatar.topology.materials)
    assert sum(p["ict_vertices"] for p in s["primitives"]) == avatar.topology.num_vertices
    assert s["vertices"] == sum(p["vertices"] for p in s["primitives"]) > avatar.topology.num_vertices
    assert s["morph_targets"] == list(ARKIT_NAMES)
    assert s["joints"] == list(JOINT_NAMES)
    sizes = {t["name"]: (t["width"], t["height"]) for t in s["textures"]}
    assert sizes == {"skin": (256, 256), "eyes": (512, 256), "teeth": (512, 256), "eyelashes": (256, 256),
                     "skin_normal": (256, 256), "skin_orm": (256, 256)}


@pytest.mark.parametrize("data", [b"", b"not a glb file at all", b"glTF" + b"\0" * 30])
def test_read_glb_summary_rejects_garbage(data):
    with pytest.raises(InputError):
        read_glb_summary(data)


# ---------------------------------------------------------------------------
# Default textures, checked against the ICT UV layout they were painted for
# ---------------------------------------------------------------------------

def test_default_textures_shapes_and_determinism():
    a, b, c = default_textures(), default_textures(), default_textures(seed=1)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        "eyes": ((256, 512, 3), np.uint8), "teeth": ((256, 512, 3), np.uint8), "eyelashes": ((256, 256, 4), np.uint8)}
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)
    blue = default_textures(iris_rgb=(0.2, 0.35, 0.6))["eyes"]
    centre_ring = blue[128, 256 + 128 + 45]  # iris tile, ~2.6 mm from the pupil centre
    assert centre_ring[2] > centre_ring[0]
    with pytest.raises(InputError):
        default_textures(iris_rgb=(1.5, 0, 0))


def test_plain_skin_albedo():
    img = plain_skin_albedo((1.0, 0.5, 0.0), size=64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img[10, 20].tolist() == [255, 128, 0]
    for bad in [dict(rgb=(1, 2, 3)), dict(rgb=(1, 1)), dict(rgb=(0.5,) * 3, size=100), dict(rgb=(0.5,) * 3, size=0)]:
        with pytest.raises(InputError):
            plain_skin_albedo(**bad)


def _sample(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    x = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    y = np.clip((uv[:, 1] * h).astype(int), 0, h - 1)
    return img[y, x].astype(np.float64)


def test_eye_texture_matches_ict_geometry(model):
    """Iris painted on the cornea where the geometry is near the optical axis, white sclera outside."""
    topo, verts = model.topology, model.neutral.astype(np.float64)
    eyes = default_textures()["eyes"]
    sel = topo.tri_material == topo.materials.index("eyes")
    tri, uv = topo.triangles[sel].ravel(), topo.corner_uv[sel].reshape(-1, 2)
    left = verts[tri, 0] > 0
    sclera_tile, iris_tile = uv[:, 0] < 0.5, uv[:, 0] >= 0.5
    # Optical axis from the iris disc rim (its outermost UV ring).
    r_iris = np.hypot((uv[:, 0] - 0.75) * 2, uv[:, 1] - 0.5)  # radius in the iris tile's own UV
    rim = np.unique(tri[iris_tile & left & (r_iris > 0.47) & (r_iris < 0.5)])
    centre = verts[rim].mean(0)
    axis = np.linalg.svd(verts[rim] - centre)[2][2]
    rel = verts[tri] - centre
    rho_mm = np.linalg.norm(rel - (rel @ axis)[:, None] * axis, axis=1) * 1000
    brightness = _sample(eyes, uv).mean(1)
    front = sclera_tile & left & (rel @ axis * np.sign(axis[2]) > -0.003)  # the front hemisphere's cap
    assert brightness[front & (rho_mm < 1.0)].max() < 40  # pupil
    assert brightness[front & (rho_mm > 2.8) & (rho_mm < 5.0)].mean() < 120  # iris
    assert brightness[front & (rho_mm > 7.5) & (rho_mm < 10.0)].min() > 170  # white sclera
    # The iris tile is centred on the pupil hole of the iris mesh.
    hole = iris_tile & (r_iris < 0.15)
    np.testing.assert_allclose(uv[hole].mean(0), [0.75, 0.5], atol=0.01)


def test_eyelash_cards_run_root_to_tip_downwards(model):
    """In every lash card v grows from the lid (root) to the tip, and strands cover the root side."""
    topo, verts = model.topology, model.neutral.astype(np.float64)
    lashes = default_textures()["eyelashes"]
    sk = model.rig(model.neutral).skeleton
    sel = topo.tri_material == topo.materials.index("eyelashes")
    tri, uv = topo.triangles[sel].ravel(), topo.corner_uv[sel].reshape(-1, 2)
    row = np.clip((uv[:, 1] * 6).astype(int), 0, 5)
    eye = np.where(verts[tri, 0:1] > 0, sk.positions[4], sk.positions[5])
    dist = np.linalg.norm(verts[tri] - eye, axis=1)
    for r in range(6):
        for side in (uv[:, 0] < 0.5, uv[:, 0] >= 0.5):
            s = (row == r) & side
            slope = np.polyfit(uv[s, 1], dist[s], 1)[0]
            assert slope > 0, f"card row {r}: the tip must be at larger v"
            v0, v1 = uv[s, 1].min(), uv[s, 1].max()
            root = _sample(lashes, uv[s & (uv[:, 1] < v0 + 0.2 * (v1 - v0))])[:, 3].mean()
            tip = _sample(lashes, uv[s & (uv[:, 1] > v1 - 0.1 * (v1 - v0))])[:, 3].mean()
            assert root > tip


def test_textures_encode_as_png_roundtrip(doc):
    g, blob = doc
    for im in g.images:
        bv = g.bufferViews[im.bufferView]
        with Image.open(io.BytesIO(blob[bv.byteOffset: bv.byteOffset + bv.byteLength])) as pic:
            w, h = pic.size
            assert w & (w - 1) == 0 and h & (h - 1) == 0


# ---------------------------------------------------------------------------
# Done once per head: PNG bytes, the welded primitives, the preview mesh
# ---------------------------------------------------------------------------

def test_png_bytes_are_a_fresh_encoding_and_remembered():
    from avatarsdk.files import PNG_COMPRESS_LEVEL, png_bytes

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    # PIL's encoder at the SDK's zlib level (3: faster than PIL's default 6, same pixels)
    Image.fromarray(img).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    assert png_bytes(img) == buf.getvalue()
    assert png_bytes(img.copy()) is png_bytes(img)  # the same pixels: encoded once
    other = img.copy()
    other[0, 0, 0] ^= 1
    assert png_bytes(other) != png_bytes(img)  # one changed bit is another image
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(other)))), other)


def test_avatar_mesh_equals_the_parsed_glb(model):
    """The preview's in-memory mesh is what load_glb reads back from to_glb's file."""
    from avatarsdk.exporters.gltf_read import avatar_mesh, load_glb

    from avatarsdk.hair import build_hair, get_style, named_colour

    av = make_avatar(model)
    extra = {"extra_shape": np.asarray(av.rig.blendshapes[3]) * 0.5}
    grown = build_hair(av, get_style("bob"), named_colour("brown"), 0)
    hair = {"hair": grown.lods[0], "hair_texture": grown.texture}
    for kwargs in ({}, {"extra_shapes": extra, "morph_epsilon": 0.0}, hair):
        parsed, built = load_glb(to_glb(av, **kwargs)), avatar_mesh(av, **kwargs)
        assert built.target_names == parsed.target_names and built.joint_names == parsed.joint_names
        assert built.images == parsed.images
        assert len(built.primitives) == len(parsed.primitives)
        for p, q in zip(parsed.primitives, built.primitives):
            assert (p.material, p.base_color, p.alpha_mode) == (q.material, q.base_color, q.alpha_mode)
            for f in ("positions", "triangles", "uv", "targets", "texture", "normal_texture", "occlusion", "tangents"):
                x, y = getattr(p, f), getattr(q, f)
                assert (x is None) == (y is None), f
                if x is not None:
                    assert x.dtype == y.dtype and np.array_equal(x, y), f


def test_primitives_are_welded_once_and_read_only(model):
    a, b = primitives(model.topology), primitives(model.topology)
    assert all(p is q for p, q in zip(a, b))
    with pytest.raises(ValueError):
        a[0].indices[0, 0] = 1


def test_default_textures_are_painted_once_and_handed_out_as_copies():
    a, b = default_textures(), default_textures()
    assert all(a[k] is not b[k] and np.array_equal(a[k], b[k]) for k in a)
    a["eyes"][:] = 0  # a caller's change does not reach the next caller
    assert default_textures()["eyes"].any()


def test_fast_paths_give_the_same_bytes_as_the_library_paths(avatar, glb):
    """The exporter's shortcuts (JSON without pygltflib's deep copy, normals summed by bincount) change no byte."""
    from avatarsdk.exporters.gltf import _as_plain

    g = gl.GLTF2().load_from_bytes(glb)
    assert gl.delete_empty_keys(_as_plain(g)) == json.loads(g.gltf_to_json(separators=(",", ":"), indent=None))
    length = int.from_bytes(glb[12:16], "little")
    assert glb[20:20 + length].rstrip(b" ") == g.gltf_to_json(separators=(",", ":"), indent=None).encode()
    v = np.asarray(avatar.vertices, np.float64)
    tri = avatar.topology.triangles
    face = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    acc = np.zeros_like(v)
    for i in range(3):
        np.add.at(acc, tri[:, i], face)
    want = (acc / np.linalg.norm(acc, axis=1, keepdims=True)).astype(np.float32)
    assert np.array_equal(vertex_normals(v, tri), want)  # bit for bit
