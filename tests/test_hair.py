"""Procedural hair: library, collision with the head, determinism, export, CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pygltflib as gl
import pytest
from scipy.spatial import cKDTree
from typer.testing import CliRunner

from avatarsdk.cli import app
from avatarsdk.errors import InputError
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import load_glb
from avatarsdk.hair import (STYLES, build_hair, choose_hair, get_style, hair_for, head_surface, named_colour,
                            random_colour, scalp_weights, with_hair)
from avatarsdk.hair.cards import strand_atlas
from avatarsdk.pipeline import random_avatar
from tests.test_gltf import validate

runner = CliRunner()


@pytest.fixture(scope="module")
def heads():
    return [random_avatar(s, texture_size=256) for s in (0, 1, 2)]


def _oracle_signed_distance(avatar, points: np.ndarray) -> np.ndarray:
    """Signed distance to the skin from a dense sampling of its triangles (vertices, edge midpoints, centroids,
    and six interior points per triangle), each sample with its interpolated vertex normal."""
    head = head_surface(avatar)
    v = head.vertices.astype(np.float64)
    n = head.normals.astype(np.float64)
    t = head.skin_tris
    bary = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [.5, .5, 0], [0, .5, .5], [.5, 0, .5], [1 / 3] * 3,
                     [2 / 3, 1 / 6, 1 / 6], [1 / 6, 2 / 3, 1 / 6], [1 / 6, 1 / 6, 2 / 3],
                     [.25, .25, .5], [.25, .5, .25], [.5, .25, .25]])
    sp = np.einsum("bk,fkc->fbc", bary, v[t]).reshape(-1, 3)
    sn = np.einsum("bk,fkc->fbc", bary, n[t]).reshape(-1, 3)
    sn /= np.linalg.norm(sn, axis=1, keepdims=True)
    dist, i = cKDTree(sp).query(points)
    sd = np.einsum("ij,ij->i", points - sp[i], sn[i])
    # The skin is open at the neck cut: a sign there means nothing for points that are far away.
    return np.where(dist < 0.03, sd, np.inf)


def test_library_covers_the_issue_styles_within_budget(heads):
    need = {"buzz", "short_crop", "side_part", "quiff", "short_curly", "afro", "bob", "chin_length",
            "shoulder_straight", "long_straight", "long_wavy", "long_curly", "ponytail", "bun", "fringe_blunt",
            "fringe_side", "receding", "thinning"}
    assert need <= set(STYLES) and len(STYLES) >= 16
    for name in STYLES:
        hair = build_hair(heads[0], get_style(name), named_colour("brown"), 0)
        tris = [c.num_triangles for c in hair.lods]
        assert len(tris) == 3 and tris[0] <= 20000 and tris[0] > tris[1] > tris[2] > 0, (name, tris)
        c = hair.lods[0]
        assert np.isfinite(c.positions).all() and c.triangles.max() < len(c.positions)
        assert np.allclose(c.weights.sum(1), 1, atol=1e-6)
        assert ((c.uv >= 0) & (c.uv <= 1)).all()


@pytest.mark.parametrize("style", ["buzz", "quiff", "afro", "bob", "long_curly", "ponytail", "bun", "fringe_blunt",
                                   "fringe_side", "receding"])
def test_no_card_vertex_inside_the_head(heads, style):
    for i, av in enumerate(heads):
        hair = build_hair(av, get_style(style), named_colour("black"), i)
        for c in hair.lods:
            sd = _oracle_signed_distance(av, c.positions.astype(np.float64))
            # Only points near the skin can be inside; a tolerance of 0.3 mm for the sampled oracle.
            assert sd.min() > -0.0003, (style, i, c.level, float(sd.min()))


def test_scalp_is_above_the_brows_and_below_the_crown(heads):
    for av in heads:
        head = head_surface(av)
        w = scalp_weights(head)
        v = head.vertices
        lm = np.asarray(av.topology.landmarks68)
        assert (w[lm] == 0).all()  # no landmark (brows, eyes, jaw) is scalp
        assert w[np.argmax(np.where(w >= 0, v[:, 1], -1))] == 1  # the crown is
        assert 0.08 < (w[head.skin_ids] > 0.5).mean() < 0.6


def test_same_seed_same_bytes_other_seed_other_hair(heads):
    av = heads[1]
    a = with_hair(av, get_style("long_wavy"), named_colour("red"), 7)
    h1, h2 = hair_for(a), hair_for(a)
    g1 = to_glb(a, hair=h1.lods[0], hair_texture=h1.texture)
    g2 = to_glb(a, hair=h2.lods[0], hair_texture=h2.texture)
    assert g1 == g2
    h3 = build_hair(av, get_style("long_wavy"), named_colour("red"), 8)
    assert not np.array_equal(h1.lods[0].positions, h3.lods[0].positions)
    assert choose_hair("random", 3) == choose_hair("random", 3)


def test_random_draws_are_varied():
    picks = [choose_hair("random", s) for s in range(16)]
    assert len({p[0].name for p in picks}) >= 8
    assert len({p[1].name for p in picks}) >= 4
    assert choose_hair("none", 0) is None


def test_scalp_takes_the_hair_colour(heads):
    av = heads[0]
    black = with_hair(av, get_style("bob"), named_colour("black"), 0)
    changed = np.abs(black.albedo.astype(int) - av.albedo.astype(int)).sum(-1) > 30
    assert 0.03 < changed.mean() < 0.5
    full = black.albedo[changed][:, :3].astype(float)
    root = np.array(named_colour("black").root) * 0.9 * 255
    # the scalp core takes the hair's root colour (blend strength 0.9 over the skin)
    assert np.abs(np.median(full, 0) - (0.9 * root + 0.1 * av.albedo[changed][:, :3].mean(0))).max() < 12
    assert black.meta["hair"]["style"]["name"] == "bob"


def test_atlas_has_alpha_strands_and_root_to_tip_shade():
    c = named_colour("blond")
    a = strand_atlas(c)
    assert a.shape == (512, 512, 4) and a.dtype == np.uint8
    cover = (a[..., 3] >= 128).mean()
    assert 0.2 < cover < 0.9
    strands = a[..., 3] >= 128
    top = a[:64][strands[:64]][:, :3].mean()
    tip = a[400:][strands[400:]][:, :3].mean()
    assert tip > top  # tips lighter than roots


@pytest.mark.parametrize("name", list(STYLES))
def test_every_style_exports_and_validates(heads, name):
    av = with_hair(heads[2], get_style(name), random_colour(np.random.default_rng(1)), 2)
    hair = hair_for(av)
    glb = to_glb(av, blendshapes="none", hair=hair.lods[2 if name not in ("bob", "afro") else 0],
                 hair_texture=hair.texture)
    validate(glb)
    g = gl.GLTF2.load_from_bytes(glb)
    mat = next(m for m in g.materials if m.name == "hair")
    assert mat.alphaMode == "MASK" and mat.doubleSided
    node = next(n for n in g.nodes if n.name == "hair")
    assert node.skin == 0 and g.meshes[node.mesh].name == "hair"
    mesh = load_glb(glb)
    assert any(p.material == "hair" and p.alpha_mode == "MASK" for p in mesh.primitives)


def test_hair_shows_in_previews(heads):
    from avatarsdk.preview import render_views

    bald = heads[0]
    av = with_hair(bald, get_style("afro"), named_colour("black"), 0)
    hair = hair_for(av)
    img_b = render_views(load_glb(to_glb(bald, blendshapes="none")), views=((0.0, 0.0),), size=96)
    img_h = render_views(load_glb(to_glb(av, blendshapes="none", hair=hair.lods[0], hair_texture=hair.texture)),
                         views=((0.0, 0.0),), size=96)
    top_b, top_h = img_b[:30].astype(int), img_h[:30].astype(int)
    dark = lambda im: (im.sum(-1) < 150).mean()  # noqa: E731
    assert dark(top_h) > dark(top_b) + 0.05


def test_cli_hair_none_is_todays_head_and_random_adds_hair(tmp_path):
    base = ["random", "--source", "ict", "--seed", "4", "--texture-size", "256"]
    r0 = runner.invoke(app, base + ["-o", str(tmp_path / "a.glb")])
    r1 = runner.invoke(app, base + ["--hair", "none", "-o", str(tmp_path / "b.glb")])
    assert r0.exit_code == 0 and r1.exit_code == 0, r0.output + r1.output
    a = (tmp_path / "a.glb").read_bytes()
    assert a == (tmp_path / "b.glb").read_bytes()
    assert a == to_glb(random_avatar(4, texture_size=256))
    t = time.process_time()
    r2 = runner.invoke(app, base + ["--hair", "random", "-o", str(tmp_path / "c.glb")])
    assert r2.exit_code == 0, r2.output
    g = gl.GLTF2.load_from_bytes((tmp_path / "c.glb").read_bytes())
    assert [m.name for m in g.meshes] == ["avatar", "hair"]
    assert g.asset.extras["avatarsdk"]["meta"]["hair"]["style"]["name"] in STYLES
    assert time.process_time() - t < 60


def test_cli_bad_hair_value_exits_2(tmp_path):
    r = runner.invoke(app, ["random", "--source", "ict", "--hair", "mohawk", "-o", str(tmp_path / "x.glb")])
    assert r.exit_code == 2 and "InputError" in r.output
    assert not (tmp_path / "x.glb").exists()
    with pytest.raises(InputError):
        get_style("mohawk")


def test_package_has_hair_in_every_lod_and_the_manifest(heads, tmp_path):
    from avatarsdk.exporters.package import export_package

    av = with_hair(heads[0], get_style("ponytail"), named_colour("auburn"), 0)
    pkg = export_package(av, "gltf", tmp_path / "pkg", name="npc", preview_size=0, lods=True, hair=hair_for(av))
    man = json.loads((pkg.path / "manifest.json").read_text())
    assert man["hair"]["style"] == "ponytail" and man["hair"]["colour"]["name"] == "auburn"
    tris = man["hair"]["triangles"]
    paths = man["models"]["glb"]["lod_paths"]
    assert len(paths) == 3
    for level, rel in enumerate(paths):
        data = (pkg.path / rel).read_bytes()
        validate(data)
        g = gl.GLTF2.load_from_bytes(data)
        hm = next(m for m in g.meshes if m.name == "hair")
        count = g.accessors[hm.primitives[0].indices].count // 3
        assert count == tris[level]


def test_push_out_reports_the_distances_at_the_points_it_returns(heads):
    """The growth loop reuses push_out's distances instead of querying again: they must be those of the result."""
    from avatarsdk.hair.grow import push_out

    surf = head_surface(heads[0])
    rng = np.random.default_rng(3)
    pts = surf.vertices[rng.choice(surf.skin_ids, 3000)].astype(np.float64) + rng.normal(0, 0.004, (3000, 3))
    moved, d, n = push_out(surf, pts, 0.006, with_distance=True)
    d_ref, n_ref = surf.signed_distance(moved)
    assert np.array_equal(d, d_ref) and np.array_equal(n, n_ref)
    assert np.array_equal(moved, push_out(surf, pts, 0.006))
    before, _ = surf.signed_distance(pts)
    # most reach the offset in three rounds (near ears and the neck cut the nearest vertex may keep changing)
    assert (before > 0.0059).mean() < 0.7 and (d > 0.0059).mean() > 0.85


def test_a_length_map_is_the_uncut_growth_cut(heads):
    """grow_strands with a length map == the same growth without it, cut by apply_length_map (the search
    grows once and cuts several ways, so this equality is what keeps its IoU the built hair's)."""
    from dataclasses import replace

    from avatarsdk.hair.grow import apply_length_map, grow_strands
    from avatarsdk.hair.styles import LENGTH_MAP_CELLS

    surf = head_surface(heads[1])
    style = get_style("shoulder_straight")
    lm = tuple(float(x) for x in np.round(np.random.default_rng(0).uniform(0.2, 1.0, LENGTH_MAP_CELLS), 2))
    cut = grow_strands(surf, replace(style, length_map=lm), np.random.default_rng(7))
    uncut = grow_strands(surf, style, np.random.default_rng(7))
    again = apply_length_map(surf, uncut, lm)
    assert np.array_equal(cut.points, again.points) and np.array_equal(cut.rank, uncut.rank)
    assert not np.array_equal(cut.points, uncut.points)


def test_disk_cached_tables_equal_their_computation(heads, tmp_path, monkeypatch):
    """The strand atlas and the skin's UV raster (the scalp tint's) are read from the disk cache in later
    processes: equal."""
    from avatarsdk import uvmap
    from avatarsdk.hair import tint_scalp
    from avatarsdk.hair.cards import _atlas_layers, _draw_atlas_layers

    monkeypatch.setenv("AVATARSDK_CACHE_DIR", str(tmp_path))
    _atlas_layers.cache_clear()
    first = _atlas_layers(64)
    _atlas_layers.cache_clear()
    second = _atlas_layers(64)  # from the file written by the first call
    _atlas_layers.cache_clear()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    tinted = []
    for _ in range(2):
        uvmap._TEXEL_MEMO.clear()  # a new process: the raster comes from the disk cache the first call wrote
        tinted.append(tint_scalp(heads[0], named_colour("brown"), get_style("buzz")))
    assert np.array_equal(*tinted)
    assert any(tmp_path.glob("hair-atlas-*.npz")) and any(tmp_path.glob("uv-raster-*.npz"))
    alpha, bright = _draw_atlas_layers(64)
    assert np.array_equal(alpha, _atlas_layers(64)[0]) and np.array_equal(bright, _atlas_layers(64)[1])


def test_search_stand_in_cards_skip_only_the_corner_push(heads):
    """make_cards(push=False) (the search's stand-ins) differs from the shipped cards only by the 1 mm push."""
    from avatarsdk.hair.cards import make_cards
    from avatarsdk.hair.grow import grow_strands

    surf = head_surface(heads[0])
    st = grow_strands(surf, get_style("short_crop"), np.random.default_rng(1))
    kw = dict(head_joint=0, neck_joint=0, head_joint_y=0.0)
    shipped, stand_in = make_cards(surf, st, 0, **kw), make_cards(surf, st, 0, push=False, **kw)
    d_ship, _ = surf.signed_distance(shipped.positions.astype(np.float64))
    d_stand, _ = surf.signed_distance(stand_in.positions.astype(np.float64))
    assert d_ship.min() > 0.0009 and d_stand.min() < 0.0009  # the push is what keeps corners out
    moved = np.linalg.norm(shipped.positions - stand_in.positions, axis=1)
    assert moved.max() < 0.004 and np.array_equal(shipped.triangles, stand_in.triangles)
