"""Deformation transfer: tiny meshes against a dense least-squares oracle, then the ICT head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatarsdk.errors import InputError
from avatarsdk.rigs.transfer import (
    ICT_ANCHOR_WEIGHT,
    IctTransfer,
    eyelid_clearance,
    grow,
    ict_masks,
    ict_transfer,
    prepare,
    prepare_ict,
    rigid_component,
    rigid_fit,
    similarity,
    transfer,
)

# ---------------------------------------------------------------------------
# Tiny fixtures: a bumpy 6x6 sheet plus a separate octahedron shell
# ---------------------------------------------------------------------------

SHEET = 6


def _mesh() -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.linspace(0.0, 0.1, SHEET), np.linspace(0.0, 0.1, SHEET))
    z = 0.01 * np.sin(30 * xs) * np.cos(20 * ys)
    sheet = np.stack([xs.ravel(), ys.ravel(), z.ravel()], 1)
    tris = []
    for i in range(SHEET - 1):
        for j in range(SHEET - 1):
            a = i * SHEET + j
            tris += [(a, a + 1, a + SHEET + 1), (a, a + SHEET + 1, a + SHEET)]
    octa = 0.01 * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    octa += [0.05, 0.05, 0.05]
    o = len(sheet)
    octa_tris = [(0, 2, 4), (2, 1, 4), (1, 3, 4), (3, 0, 4), (2, 0, 5), (1, 2, 5), (3, 1, 5), (0, 3, 5)]
    tris += [(a + o, b + o, c + o) for a, b, c in octa_tris]
    return np.concatenate([sheet, octa]), np.array(tris, np.int64)


def _deltas(v: np.ndarray, seed: int = 0) -> np.ndarray:
    """Three shapes: a smooth bend of the sheet, random jitter everywhere, and zero."""
    rng = np.random.default_rng(seed)
    bend = np.zeros_like(v)
    bend[:, 2] = 0.02 * (v[:, 0] / 0.1) ** 2
    bend[:, 0] = 0.005 * np.sin(40 * v[:, 1])
    jitter = 0.002 * rng.standard_normal(v.shape)
    return np.stack([bend, jitter, np.zeros_like(v)])


def _other_head(v: np.ndarray, seed: int = 1) -> np.ndarray:
    """A smoothly and non-rigidly different neutral on the same topology."""
    rng = np.random.default_rng(seed)
    a = np.eye(3) + 0.1 * rng.standard_normal((3, 3))
    return v @ a.T + 0.004 * np.sin(50 * v[:, [1, 2, 0]])


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    return q * np.sign(np.linalg.det(q))


def _oracle(src, tgt, tris, d, anchor_weight, free):
    """Minimise the energy of :func:`prepare` by dense least squares, one row per term."""
    def frame(x):
        e1, e2 = x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]
        n = np.cross(e1, e2)
        return np.stack([e1, e2, n / np.sqrt(np.linalg.norm(n, axis=1))[:, None]], 2)

    num = len(src)
    s_grad = frame((src + d)[tris]) @ np.linalg.inv(frame(src[tris]))  # S_j
    p = tgt[tris]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    area = 0.5 * np.linalg.norm(n, axis=1)
    rows, rhs = [], []
    for j, t in enumerate(tris):
        g = np.stack([np.cross(n[j], p[j, (i + 2) % 3] - p[j, (i + 1) % 3]) / (n[j] @ n[j]) for i in range(3)])
        proj = g.T @ p[j]  # G_j x = sum_i g_i x_i^T
        target = proj @ (s_grad[j].T - np.eye(3))  # (G_j x)(S_j^T - I)
        for a in range(3):
            row = np.zeros(num)
            row[t] = g[:, a]
            rows.append(np.sqrt(area[j]) * row)
            rhs.append(np.sqrt(area[j]) * target[a])
    mass = np.zeros(num)
    np.add.at(mass, tris.ravel(), np.repeat(area / 3, 3))
    for v in range(num):
        row = np.zeros(num)
        row[v] = 1.0
        rows.append(np.sqrt(anchor_weight * mass[v]) * row)
        rhs.append(np.sqrt(anchor_weight * mass[v]) * d[v])
    a, b = np.array(rows), np.array(rhs)
    fixed = ~free
    b = b - a[:, fixed] @ d[fixed]
    out = d.copy()
    out[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
    return out


# ---------------------------------------------------------------------------
# Properties on the tiny mesh
# ---------------------------------------------------------------------------

def test_smoke_shapes_and_dtype():
    v, tris = _mesh()
    d = _deltas(v)
    out = prepare(v, _other_head(v), tris).transfer(d)
    assert out.shape == d.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert prepare(v, v, tris).transfer(np.zeros((0,) + v.shape)).shape == (0,) + v.shape


@pytest.mark.parametrize("align", [True, False])
def test_identity_target_returns_source_deltas(align):
    v, tris = _mesh()
    d = _deltas(v)
    out = transfer(v, v, tris, d, align=align)
    np.testing.assert_allclose(out, d, atol=1e-9)


def test_identity_target_with_restricted_free_set():
    v, tris = _mesh()
    d = _deltas(v)
    free = np.zeros(len(v), bool)
    free[: SHEET * 3] = True
    np.testing.assert_allclose(transfer(v, v, tris, d, free=free), d, atol=1e-9)


def test_similar_target_gets_rotated_scaled_deltas():
    v, tris = _mesh()
    d = _deltas(v)
    rot, s, t = _rotation(3), 1.7, np.array([0.3, -0.2, 0.5])
    out = transfer(v, s * v @ rot.T + t, tris, d)
    np.testing.assert_allclose(out, s * d @ rot.T, atol=1e-8)


def test_zero_shape_stays_exactly_zero():
    v, tris = _mesh()
    out = transfer(v, _other_head(v), tris, np.zeros((2,) + v.shape))
    assert not out.any()


@pytest.mark.parametrize("anchor_weight", [1.0, 300.0])
def test_matches_dense_least_squares_oracle(anchor_weight):
    v, tris = _mesh()
    tgt = _other_head(v)
    d = _deltas(v)
    free = np.ones(len(v), bool)
    free[[0, SHEET - 1]] = False  # two fixed sheet corners
    st = prepare(v, tgt, tris, anchor_weight=anchor_weight, free=free, align=False)
    out = st.transfer(d)
    for k in range(len(d)):
        ref = _oracle(v, tgt, tris, d[k], anchor_weight, free)
        np.testing.assert_allclose(out[k], ref, atol=1e-7, rtol=0)


def test_transferred_differs_from_naive_and_is_smooth_in_anchor_weight():
    v, tris = _mesh()
    tgt, d = _other_head(v), _deltas(v)[:1]
    a = transfer(v, tgt, tris, d, align=False)
    b = transfer(v, tgt, tris, d, align=False, anchor_weight=1.01)
    assert np.abs(a - d).max() > 1e-3  # the transfer does something on a different head
    assert np.abs(a - b).max() < 1e-5


def test_fixed_vertices_keep_the_naive_delta():
    v, tris = _mesh()
    d = _deltas(v)
    free = np.ones(len(v), bool)
    free[:SHEET] = False
    out = transfer(v, _other_head(v), tris, d, free=free, align=False)
    np.testing.assert_array_equal(out[:, :SHEET], d[:, :SHEET].astype(np.float32))


def test_isolated_part_keeps_naive_mean_translation():
    """Summing the normal equations over a free part: L and the gradient term cancel."""
    v, tris = _mesh()
    d = _deltas(v)
    d[0, SHEET * SHEET :] = [0.01, -0.02, 0.03]  # translate the octahedron
    out = transfer(v, _other_head(v), tris, d, align=False).astype(np.float64)
    o = slice(SHEET * SHEET, None)
    np.testing.assert_allclose(out[0, o].mean(0), [0.01, -0.02, 0.03], atol=1e-7)  # equal areas on a regular shell


def test_follow_vertices_carry_the_neighbour_correction():
    v, tris = _mesh()
    d = _deltas(v)
    free = np.ones(len(v), bool)
    free[SHEET * SHEET :] = False  # the octahedron follows the sheet
    follow = ~free
    st = prepare(v, _other_head(v), tris, free=free, follow=follow, follow_neighbours=1, align=False)
    out = st.transfer(d).astype(np.float64)
    nearest = np.argmin(np.linalg.norm(_other_head(v)[follow][:, None] - _other_head(v)[free][None], axis=2), 1)
    corr = out[:, free] - d[:, free]
    np.testing.assert_allclose(out[:, follow], d[:, follow] + corr[:, nearest], atol=1e-6)
    c = st.carry(np.ones((1,) + v.shape))
    np.testing.assert_allclose(c, 1.0)


def test_grow_adds_one_ring():
    v, tris = _mesh()
    m = np.zeros(len(v), bool)
    m[0] = True
    assert set(np.nonzero(grow(m, tris, 1))[0]) == {0, 1, SHEET, SHEET + 1}
    assert (grow(m, tris, 0) == m).all()


def test_similarity_and_rigid_fit_recover_motions():
    v, _ = _mesh()
    rot, s, t = _rotation(5), 0.8, np.array([1.0, 2.0, 3.0])
    s2, r2, t2 = similarity(s * v @ rot.T + t, v)
    np.testing.assert_allclose(s2 * (s * v @ rot.T + t) @ r2.T + t2, v, atol=1e-12)
    r3, t3 = rigid_fit(v, v @ rot.T + t)
    np.testing.assert_allclose(r3, rot, atol=1e-12)
    np.testing.assert_allclose(t3, t, atol=1e-12)


def test_rigid_component_of_a_pure_rigid_shape_is_the_shape():
    v, _ = _mesh()
    rot = _rotation(7)
    d = (v @ rot.T + 0.01 - v)[None]
    body = np.zeros(len(v), bool)
    body[:10] = True
    bs, bt = rigid_component(v, v + 0.02, d, body, np.ones(len(v)))
    np.testing.assert_allclose(bs, d, atol=1e-12)
    np.testing.assert_allclose(bt, d, atol=1e-12)  # a translated head turns the same way
    zs, zt = rigid_component(v, v, np.zeros_like(d), body, np.ones(len(v)))
    assert not zs.any() and not zt.any()


def _bad_prepare_cases():
    v, tris = _mesh()
    n = len(v)
    nan = v.copy()
    nan[3, 1] = np.nan
    return [
        dict(source_neutral=v[:, :2], target_neutral=v, triangles=tris),
        dict(source_neutral=v, target_neutral=v[:-1], triangles=tris),
        dict(source_neutral=v, target_neutral=nan, triangles=tris),
        dict(source_neutral=v, target_neutral=v, triangles=tris[:, :2]),
        dict(source_neutral=v, target_neutral=v, triangles=tris.astype(float)),
        dict(source_neutral=v, target_neutral=v, triangles=tris + n),
        dict(source_neutral=v, target_neutral=v, triangles=tris, anchor_weight=0.0),
        dict(source_neutral=v, target_neutral=v, triangles=tris, anchor_weight=np.inf),
        dict(source_neutral=v, target_neutral=v, triangles=tris, free=np.ones(n)),
        dict(source_neutral=v, target_neutral=v, triangles=tris, follow=np.ones(n + 1, bool)),
        dict(source_neutral=v, target_neutral=v, triangles=tris, triangle_weight=-np.ones(len(tris))),
        dict(source_neutral=v, target_neutral=v, triangles=tris, follow_neighbours=0),
    ]


@pytest.mark.parametrize("case", range(12))
def test_bad_prepare_input_is_input_error(case):
    with pytest.raises(InputError):
        prepare(**_bad_prepare_cases()[case])


def test_free_vertex_in_no_triangle_is_input_error():
    v, tris = _mesh()
    v = np.concatenate([v, [[9.0, 9.0, 9.0]]])
    prepare(v, v, tris)  # unused vertices are simply kept naive by default
    with pytest.raises(InputError, match="belong to no triangle"):
        prepare(v, v, tris, free=np.ones(len(v), bool))


@pytest.mark.parametrize("bad", [lambda d: d[0], lambda d: d[:, :-1], lambda d: d[..., :2],
                                 lambda d: np.where(d == 0, np.nan, d), lambda d: d.astype(str)])
def test_bad_deltas_are_input_error(bad):
    v, tris = _mesh()
    st = prepare(v, v, tris)
    with pytest.raises(InputError):
        st.transfer(bad(_deltas(v)))
    with pytest.raises(InputError):
        st.carry(bad(_deltas(v))[..., :2])


def test_degenerate_target_triangle_is_skipped_not_fatal():
    v, tris = _mesh()
    tgt = _other_head(v)
    tgt[tris[7, 2]] = (tgt[tris[7, 0]] + tgt[tris[7, 1]]) / 2  # collapse one triangle onto its edge
    assert np.isfinite(transfer(v, tgt, tris, _deltas(v))).all()


# ---------------------------------------------------------------------------
# The ICT head
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ict():
    from avatarsdk.rigs import load_ict

    m = load_ict()
    src = np.concatenate([m.expression_basis, m.tongue_out[None]])
    jaw = np.zeros(len(m.neutral), bool)
    a, b = m.topology.parts["teeth"]
    jaw[a:b] = np.linalg.norm(m.expression_basis[26, a:b], axis=1) > 2e-3  # jawOpen moves the lower teeth
    return m, src, jaw


def _identity(m, seed, scale):
    return m.morph(np.random.default_rng(seed).standard_normal(100) * scale)


def _reference_ict_transfer(source_neutral, target_neutral, triangles, source_deltas, *, jaw_mask=None,
                            jaw_follow=None, eyelids=True):
    """ict_transfer as the composition of its documented general steps (not the prepared code it runs)."""
    free, follow = ict_masks(source_deltas, triangles)
    st = prepare(source_neutral, target_neutral, triangles, anchor_weight=ICT_ANCHOR_WEIGHT, free=free,
                 follow=follow, align=False)
    if jaw_mask is None:
        out = st.transfer(source_deltas).astype(np.float64)
    else:
        base_s, base_t = rigid_component(source_neutral, target_neutral, source_deltas, jaw_mask, jaw_follow)
        out = st.transfer(np.asarray(source_deltas, np.float64) - base_s).astype(np.float64) + base_t
    if eyelids:
        out += st.carry(eyelid_clearance(source_neutral, target_neutral, triangles, source_deltas, out))
    return out.astype(np.float32)


def test_ict_generic_target_gives_back_the_source_deltas(ict):
    m, src, jaw = ict
    out = ict_transfer(m.neutral, m.neutral, m.topology.triangles, src, jaw_mask=jaw, jaw_follow=m.jaw_follow)
    assert out.shape == src.shape and out.dtype == np.float32
    assert np.abs(out - src).max() < 1e-6


def test_ict_sampled_identity_keeps_rigid_parts_and_still_vertices(ict):
    m, src, jaw = ict
    tris = m.topology.triangles
    v = _identity(m, 1, 2.0)
    out = ict_transfer(m.neutral, v, tris, src, jaw_mask=jaw, jaw_follow=m.jaw_follow)
    assert np.isfinite(out).all()
    e0, e1 = m.topology.parts["eyeballs"]
    assert not out[:, e0:e1].any()  # ICT's expressions never move the eyeballs
    t0, t1 = m.topology.parts["teeth"]
    assert np.abs(out[:, t0:t1] - src[:, t0:t1]).max() < 2e-3  # teeth: close to naive...
    jaw_open = 26

    def non_rigid(x, d):
        rot, t = rigid_fit(x[jaw], x[jaw] + d[jaw])
        return np.abs(x[jaw] @ rot.T + t - x[jaw] - d[jaw]).max()

    # ...and as rigid as ICT's own lower teeth (naive deltas on bigger teeth are not).
    assert non_rigid(v, out[jaw_open]) < non_rigid(m.neutral, src[jaw_open]) + 1e-5
    assert non_rigid(v, src[jaw_open]) > 2 * non_rigid(m.neutral, src[jaw_open])
    free, follow = ict_masks(src, tris)
    still = ~free & ~follow & ~(src != 0).any(axis=(0, 2))
    assert still.sum() > 3000 and not out[:, still].any()
    assert np.abs(out - src).max() > 2e-3  # and it does adapt the shapes


def _poke_area(vertices, tris, parts, res=240):
    """mm^2 of the left eyeball in front of the skin that covers it, orthographic from +Z."""
    from avatarsdk.render import rasterize

    e0, e1 = parts["eyeballs"]
    ids = np.arange(e0, e1)[vertices[e0:e1, 0] > 0]
    ball = tris[np.isin(tris, ids).all(1)]
    skin = tris[(tris < parts["face"][1]).all(1)]
    c = 0.5 * (vertices[ids].min(0) + vertices[ids].max(0))
    h = 0.5 * (vertices[ids].max(0) - vertices[ids].min(0)).max() * 1.05
    v = torch.from_numpy(vertices.astype(np.float64))
    clip = torch.stack([(v[:, 0] - c[0]) / h, (v[:, 1] - c[1]) / h, -v[:, 2], torch.ones(len(v), dtype=v.dtype)], 1)

    def front_z(faces):
        fr = rasterize(clip[None], torch.from_numpy(faces), (res, res))
        return np.where(fr.tri_id[0].numpy() >= 0, -fr.depth[0].numpy(), -np.inf)

    zb, zs = front_z(ball), front_z(skin)
    return float(((zb > zs) & np.isfinite(zs)).sum() * (2 * h * 1000 / res) ** 2)


def test_ict_closed_lid_covers_this_heads_cornea(ict):
    """Identity 1 at scale 2 has a large eyeball: ICT's blink leaves the cornea through the lid."""
    m, src, jaw = ict
    tris = m.topology.triangles
    v = _identity(m, 1, 2.0)
    out = ict_transfer(m.neutral, v, tris, src, jaw_mask=jaw, jaw_follow=m.jaw_follow)
    blink = 10  # eyeBlink_L
    naive = _poke_area(v + src[blink], tris, m.topology.parts)
    ours = _poke_area(v + out[blink], tris, m.topology.parts)
    generic = _poke_area(m.neutral + src[blink], tris, m.topology.parts)
    assert naive > 50.0
    assert ours < max(2 * generic, 3.0), (naive, ours, generic)


def test_eyelid_clearance_is_zero_for_the_generic_head_and_still_shapes(ict):
    m, src, _ = ict
    tris = m.topology.triangles
    fix = eyelid_clearance(m.neutral, m.neutral, tris, src[8:12], src[8:12])
    assert np.abs(fix).max() < 1e-9
    v = _identity(m, 1, 2.0)
    assert not eyelid_clearance(m.neutral, v, tris, np.zeros((1,) + v.shape), np.zeros((1,) + v.shape)).any()
    with pytest.raises(InputError):
        eyelid_clearance(m.neutral, v, tris, src[:2], src[:3])


def test_prepared_ict_transfer_matches_ict_transfer(ict):
    """The prepared transfer (the one implementation) equals the composition of the general steps to float rounding."""
    m, src, jaw = ict
    tris = m.topology.triangles
    prepared = prepare_ict(m.neutral, tris, src, jaw_mask=jaw, jaw_follow=m.jaw_follow)
    for seed, scale in ((1, 2.0), (5, 1.0)):
        v = _identity(m, seed, scale)
        want = _reference_ict_transfer(m.neutral, v, tris, src, jaw_mask=jaw, jaw_follow=m.jaw_follow)
        got = prepared.transfer(v)
        assert np.array_equal(ict_transfer(m.neutral, v, tris, src, jaw_mask=jaw, jaw_follow=m.jaw_follow), got)
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got.astype(np.float64) - want).max() < 1e-6  # metres; observed: bit-identical
    # Without the jaw and the eyelid rule, on a subset of the shapes.
    v = _identity(m, 2, 1.5)
    want = _reference_ict_transfer(m.neutral, v, tris, src[20:30], eyelids=False)
    got = prepare_ict(m.neutral, tris, src[20:30], eyelids=False).transfer(v)
    assert np.abs(got.astype(np.float64) - want).max() < 1e-6
    with pytest.raises(InputError):
        prepared.transfer(v[:10])
    # What the disk cache stores gives back the same transfer, bit for bit.
    again = IctTransfer.from_arrays({k: np.array(a) for k, a in prepared.to_arrays().items()})
    assert np.array_equal(again.transfer(v), prepared.transfer(v))
    with pytest.raises(InputError):
        prepare_ict(m.neutral, tris, src, jaw_mask=jaw)


def test_face_model_rig_uses_the_prepared_transfer(ict):
    from avatarsdk.rigs.ict import ICT_EXPRESSIONS
    from avatarsdk.rigs.model import _lower_jaw_mask, eye_rotation_deltas

    m, src, _ = ict
    v = _identity(m, 3, 1.0)
    want = _reference_ict_transfer(m.neutral, v, m.topology.triangles, src, jaw_mask=_lower_jaw_mask(m.data),
                                   jaw_follow=m.jaw_follow)[:-1]
    for name, d in eye_rotation_deltas(v).items():  # the gaze rotations are added after the transfer
        want[ICT_EXPRESSIONS.index(name)] += d
    assert np.abs(m.ict_blendshapes(v).astype(np.float64) - want).max() < 1e-6
