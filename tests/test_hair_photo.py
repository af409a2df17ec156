"""Hair from the photo: the analysis-by-synthesis search, the colour, the create stage; FBX with hair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatarsdk.datatypes import PARSE_CLASSES, FaceParse
from avatarsdk.exporters.fbx import inspect_fbx, to_fbx
from avatarsdk.exporters.package import export_package
from avatarsdk.hair import build_hair, get_style, hair_for, named_colour, with_hair
from avatarsdk.hair.photo import BALD_SHARE, fit_hair, hair_range, head_triangles
from avatarsdk.pipeline import create, random_avatar
from avatarsdk.render.camera import Camera, gl_matrices, transform_points
from avatarsdk.render.raster import rasterize
from conftest import EXAMPLE, needs_bpy

HAIR, SKIN = PARSE_CLASSES.index("hair"), PARSE_CLASSES.index("skin")
AMBIENT = np.zeros((9, 3), np.float32)
AMBIENT[0] = 1.0  # shading 1 everywhere: the photo's colours are the albedo


@pytest.fixture(scope="module")
def head():
    return random_avatar(3, texture_size=256)


def _camera(avatar, yaw_deg: float = 0.0, size: int = 320) -> Camera:
    """A camera 0.7 m in front of the head (turned by ``yaw_deg`` about the vertical), 35 degrees field of view."""
    v = np.asarray(avatar.vertices, np.float64)
    target = np.array([0.0, v[:, 1].max() - 0.12, 0.0])
    a = np.radians(yaw_deg)
    eye = target + 0.7 * np.array([np.sin(a), 0.0, np.cos(a)])
    f = (target - eye) / np.linalg.norm(target - eye)  # camera z (forward)
    x = np.cross(f, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(f, x)  # camera y points down
    rot = np.stack([x, y, f])
    focal = size / 2 / np.tan(np.radians(35) / 2)
    return Camera(focal, focal, size / 2 - 0.5, size / 2 - 0.5, size, size, rot, -rot @ eye)


def _photo(avatar, style_name: str, camera: Camera, colour=(0.45, 0.3, 0.2)):
    """A synthetic photo and its parse: the style's LOD0 cards and the head, z-buffered by the project's
    rasteriser (not the search's painter); hair pixels in ``colour`` (sRGB), the head skin-coloured."""
    hair = build_hair(avatar, get_style(style_name), named_colour("brown"), 11).lods[0]
    size = (camera.height, camera.width)
    mat = gl_matrices(camera, size)

    def render(points, tris):
        clip = transform_points(torch.from_numpy(np.array(points, np.float32))[None], mat)
        return rasterize(clip, torch.from_numpy(np.asarray(tris, np.int64)), size)

    hf = render(avatar.vertices, avatar.topology.triangles)
    cf = render(hair.positions, hair.triangles)
    tid = hf.tri_id[0].numpy()
    head = (tid >= 0) & head_triangles(avatar)[np.maximum(tid, 0)]
    hair_px = cf.depth[0].numpy() < hf.depth[0].numpy()
    labels = np.zeros(size, np.uint8)
    labels[head] = SKIN
    labels[hair_px] = HAIR
    image = np.full(size + (3,), 200, np.uint8)
    image[head] = (200, 150, 120)
    image[hair_px] = (np.array(colour) * 255).astype(np.uint8)
    return image, FaceParse(labels, "bisenet")


@pytest.mark.parametrize("style,yaw,min_iou", [("long_straight", 0.0, 0.75), ("afro", 20.0, 0.75),
                                               ("short_crop", -15.0, 0.6), ("bob", 10.0, 0.75)])
def test_search_recovers_a_rendered_style(head, style, yaw, min_iou):
    cam = _camera(head, yaw)
    image, parsing = _photo(head, style, cam)
    if get_style(style).curl > 0:  # a photo of curly hair shows curls (a flat silhouette gets straight styles)
        image = _curled(image, parsing)
    fit = fit_hair(head, image, parsing, cam, AMBIENT)
    # the coarse search ranks the true style first among the library's 15-18 (other strands, a quarter of the
    # cards), the refinement keeps its silhouette (a short crop is a thin band: its IoU is lower)
    assert max(fit.scores, key=fit.scores.get) == style, sorted(fit.scores.items(), key=lambda kv: -kv[1])[:4]
    assert fit.style is not None and fit.iou >= min_iou, (fit.style, fit.iou)


def test_search_colour_is_the_hair_pixels_de_lit(head):
    cam = _camera(head)
    image, parsing = _photo(head, "bob", cam, colour=(0.6, 0.45, 0.25))
    fit = fit_hair(head, image, parsing, cam, AMBIENT)
    # ambient light 1: de-lit = the pixels, up to the strand atlas's own mean brightness (divided out)
    root = np.array(fit.colour.root)
    assert np.all(np.abs(root - (0.6, 0.45, 0.25)) < 0.12), root
    assert fit.colour.name in ("light_brown", "dark_blond", "blond", "brown")


def test_no_hair_in_the_parse_is_bald(head):
    cam = _camera(head)
    image, parsing = _photo(head, "buzz", cam)
    labels = np.where(parsing.labels == HAIR, SKIN, parsing.labels).astype(np.uint8)
    fit = fit_hair(head, image, FaceParse(labels, "bisenet"), cam, AMBIENT)
    assert fit.style is None and fit.hair_share < BALD_SHARE and fit.evaluations == 0


def test_hat_pixels_do_not_count(head):
    cam = _camera(head)
    image, parsing = _photo(head, "long_straight", cam)
    labels = parsing.labels.copy()
    rows = np.nonzero((labels == HAIR).any(1))[0]
    top = rows[0] + (rows[-1] - rows[0]) // 5
    labels[:top][labels[:top] == HAIR] = PARSE_CLASSES.index("hat")  # a hat over the top of the hair
    fit = fit_hair(head, image, FaceParse(labels, "bisenet"), cam, AMBIENT)
    assert fit.style is not None and fit.style.length > 0.2, fit.style


def test_hair_range_keeps_real_hair_colours():
    out = hair_range(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.2, 0.1, 0.05],
                               [0.06, 0.02, 0.1], [0.02, 0.1, 0.6]]))
    assert out[0].max() > 0  # not pure black
    assert out[1].min() < 1  # not pure white
    assert np.allclose(out[3], [0.2, 0.1, 0.05], atol=0.01)  # a brown stays what it is
    assert np.ptp(out[4]) < 0.02 and out[4][0] >= out[4][2]  # a purple cast on dark hair: near-neutral, warm
    assert out[5][2] > 2 * out[5][0]  # saturated blue: dyed, kept blue


@pytest.mark.slow
def test_create_auto_hair_on_the_astronaut_is_short_and_brown():
    """The example photo: a woman with short, brown, voluminous hair (the devset's description)."""
    avatar = create(EXAMPLE, hair="auto", texture_size=256)
    rec = avatar.meta["hair"]
    assert rec["style"]["length"] <= 0.1 and rec["style"]["tied"] == "loose", rec["style"]
    assert rec["photo"]["iou"] >= 0.5
    root = np.array(rec["colour"]["root"])
    assert root[0] > root[1] > root[2] and 0.2 < root.mean() < 0.75, root  # brown: warm, mid lightness


@needs_bpy
def test_fbx_has_the_hair_mesh_skinned(head, tmp_path):
    hair = build_hair(head, get_style("bob"), named_colour("brown"), 0)
    fbx = to_fbx(head, "unity", prefix="npc_", hair=hair.lods[0], hair_texture=hair.texture)
    assert "textures/npc_hair.png" in fbx.textures
    extra = fbx.report["extra_meshes"]
    assert extra[0]["name"] == "npc_hair" and extra[0]["polygons"] == hair.lods[0].num_triangles
    assert extra[0]["weights"] >= len(hair.lods[0].positions)  # every card vertex weighted
    path = tmp_path / "a.fbx"
    path.write_bytes(fbx.data)
    info = inspect_fbx(path, reader="ufbx")
    names = [m["name"] for m in info["meshes"]]
    assert "npc_hair" in names, names
    hm = next(m for m in info["meshes"] if m["name"] == "npc_hair")
    assert hm["skin_deformers"] == 1, hm


@needs_bpy
def test_unreal_package_with_hair_has_it_in_the_fbx_and_the_import_notes(head, tmp_path):
    av = with_hair(head, get_style("bob"), named_colour("black"), 0)
    pkg = export_package(av, "unreal", tmp_path / "pkg", name="npc", preview_size=0, lods=False, hair=hair_for(av))
    notes = (pkg.path / "IMPORT.md").read_text()
    assert "### Hair" in notes and "Masked" in notes and "Two Sided" in notes
    assert (pkg.path / "textures" / "npc_hair.png").is_file()
    info = inspect_fbx(pkg.path / "npc.fbx", reader="ufbx")
    hm = next(m for m in info["meshes"] if m["name"] == "npc_hair")
    assert hm["skin_deformers"] == 1 and hm["blend_deformers"] == 0


def test_length_map_cuts_strands_and_round_trips(head):
    from dataclasses import replace

    from avatarsdk.errors import InputError
    from avatarsdk.hair import head_surface, style_from_dict
    from avatarsdk.hair.grow import grow_strands
    from avatarsdk.hair.styles import LENGTH_MAP_CELLS

    surf = head_surface(head)
    style = get_style("long_straight")
    half = replace(style, length_map=(0.5,) * LENGTH_MAP_CELLS)
    arc = lambda st: np.linalg.norm(np.diff(st.points, axis=1), axis=-1).sum(1)  # noqa: E731
    full = arc(grow_strands(surf, style, np.random.default_rng(5)))
    cut = arc(grow_strands(surf, half, np.random.default_rng(5)))
    assert np.allclose(cut, np.maximum(0.5 * full, 0.004), rtol=0.02, atol=1e-4)
    assert style_from_dict(half.to_dict()) == half
    with pytest.raises(InputError):
        replace(style, length_map=(0.5,) * 7)
    with pytest.raises(InputError):
        replace(style, length_map=(1.5,) * LENGTH_MAP_CELLS)


def test_search_iou_is_the_measured_iou_of_the_built_hair(head):
    """The search renders the very cards build_hair makes (LOD0) with the project's rasteriser."""
    from avatarsdk.hair.photo import _head_render, hair_target, render_hair

    cam = _camera(head, 10.0)
    image, parsing = _photo(head, "chin_length", cam)
    fit = fit_hair(head, image, parsing, cam, AMBIENT)
    cards = build_hair(head, fit.style, fit.colour, 0).lods[0]
    tg = hair_target(image, parsing, cam, head)
    vis, _ = render_hair(cards, tg.camera, tg.size, _head_render(head, tg.camera, tg.size).depth)
    a, b = vis & tg.valid, tg.hair & tg.valid
    assert abs(fit.iou - (a & b).sum() / (a | b).sum()) < 0.01, fit.iou


def test_hair_cut_short_in_the_photo_is_cut_short_on_the_avatar(head):
    """Long hair whose parsed mask ends at the mouth, a library of long hair only: the length map cuts it."""
    cam = _camera(head)
    image, parsing = _photo(head, "long_straight", cam)
    labels = parsing.labels.copy()
    v = np.asarray(head.vertices, np.float64)
    mouth = cam.project(v[np.asarray(head.topology.landmarks68)[[48, 54]]])[:, 1].mean()
    cut = labels[int(mouth):] == HAIR
    labels[int(mouth):][cut] = PARSE_CLASSES.index("background")
    long = {"long_straight": get_style("long_straight")}
    fit = fit_hair(head, image, FaceParse(labels, "bisenet"), cam, AMBIENT, styles=long, max_refine=0)
    assert fit.style is not None and fit.style.length_map and min(fit.style.length_map) < 0.5, fit.style
    uncut = fit_hair(head, image, FaceParse(labels, "bisenet"), cam, AMBIENT, styles=long, max_refine=0,
                     carve=False)
    assert not uncut.style.length_map
    assert fit.iou >= uncut.iou + 0.1 and fit.iou >= 0.6, (fit.iou, uncut.iou)


def test_colour_is_the_mean_of_bright_and_dark_strands(head):
    """Dark hair with bright strands: the photo's mean colour (linear), not its median, is what shows."""
    cam = _camera(head)
    image, parsing = _photo(head, "bob", cam, colour=(0.15, 0.1, 0.07))
    hair = parsing.labels == HAIR
    bright = hair & (np.arange(hair.shape[0])[:, None] % 3 == 0)
    image[bright] = (200, 150, 110)
    fit = fit_hair(head, image, parsing, cam, AMBIENT)
    lin = lambda c: np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)  # noqa: E731
    mean = lin(image[hair].astype(np.float64) / 255).mean(0)
    root = lin(np.array(fit.colour.root))
    # within 35% of the mean (the strand atlas's root-to-tip shade and the pixels' mix move it a little);
    # the median (the dark colour, about a fifth of the mean) is far outside
    assert np.all(np.abs(root / lin(np.array((0.15, 0.1, 0.07))) - 1) > 1.0), root
    assert np.all(np.abs(root / mean - 1) < 0.35), (root, mean)


def test_cli_create_with_hair_previews_the_written_glb(tmp_path):
    """create --hair auto renders its preview beside the glb from the in-memory mesh (hair included): it is the
    preview of the file it writes, pixel for pixel, and it shows the hair."""
    from PIL import Image
    from typer.testing import CliRunner

    from avatarsdk.cli import app
    from avatarsdk.exporters.gltf_read import load_glb
    from avatarsdk.preview import side_by_side

    out = tmp_path / "a"
    res = CliRunner().invoke(app, ["create", str(EXAMPLE), "-o", str(out), "--hair", "auto", "--texture-size", "256"])
    assert res.exit_code == 0, res.output
    mesh = load_glb((out / "avatar.glb").read_bytes())
    assert [p.material for p in mesh.primitives][-1] == "hair"
    photo = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    written = np.asarray(Image.open(out / "preview.png"))
    assert np.array_equal(written, side_by_side(photo, mesh))
    bald = side_by_side(photo, type(mesh)(mesh.primitives[:-1], mesh.target_names, mesh.joint_names, mesh.images))
    assert (np.abs(written.astype(int) - bald).sum(-1) > 30).mean() > 0.02  # the hair is in it


def _curls(shape, seed: int = 0, radius: float = 4.0, n: int = 1500) -> np.ndarray:
    """[h, w] float in [0, 1]: bright rings of ``radius`` px around random centres (an isotropic curl texture)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    out = np.zeros(shape)
    for cy, cx in rng.uniform(0, 1, (n, 2)) * shape:
        y0, y1, x0, x1 = int(max(0, cy - 8)), int(cy + 9), int(max(0, cx - 8)), int(cx + 9)
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        out[y0:y1, x0:x1] += np.exp(-((d - radius) ** 2))
    return np.clip(out, 0, 1)


def _curled(image: np.ndarray, parsing, colour=(0.45, 0.3, 0.2)) -> np.ndarray:
    """The synthetic photo with a curl texture (rings of 3.5 px) over its hair pixels."""
    hair = parsing.labels == HAIR
    tex = _curls(hair.shape, 1, radius=3.5, n=6000)
    out = image.copy()
    out[hair] = (np.array(colour) * (0.35 + 0.9 * tex[hair])[:, None] * 255).clip(0, 255).astype(np.uint8)
    return out


def _textured_target(lum: np.ndarray):
    from avatarsdk.hair.photo import HairTarget

    h, w = lum.shape
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.4 * h) ** 2
    img = np.repeat(lum[..., None], 3, -1).astype(np.float32)
    return HairTarget(None, (h, w), mask, np.zeros_like(mask), mask, np.ones_like(mask), img)


def test_curl_cue_needs_isotropic_hair_texture():
    """Curls (rings every way) show curl; strands running one way, and flat or smooth hair, do not."""
    from avatarsdk.hair.photo import hair_texture, shows_curl

    curls = _textured_target(0.05 + 0.1 * _curls((200, 200)))
    xx = np.arange(200)[None, :] * np.ones((200, 1))
    wobble = np.sin(np.arange(200) / 9.0)[:, None] * 3
    strands = _textured_target(0.1 * np.exp(0.5 * np.sin(2 * np.pi * (xx + wobble) / 5)))
    flat = _textured_target(np.full((200, 200), 0.1))
    assert shows_curl(curls), hair_texture(curls)
    assert not shows_curl(strands), hair_texture(strands)
    assert not shows_curl(flat), hair_texture(flat)


def test_curly_styles_only_with_curl_and_the_library_never_grows():
    from avatarsdk.hair import STYLES
    from avatarsdk.hair.photo import curl_library

    straight, curly = curl_library(STYLES, False), curl_library(STYLES, True)
    assert all(s.curl == 0 for s in straight.values()) and "bouffant" in straight
    assert "afro" in curly and "bouffant" not in curly and "long_curly" in curly
    assert len(straight) < len(STYLES) and len(curly) < len(STYLES)
    only_curly = {"afro": STYLES["afro"]}
    assert curl_library(only_curly, False) == only_curly  # never an empty library


def test_smooth_afro_silhouette_gets_straight_hair_curly_texture_keeps_the_afro(head):
    """A flat-coloured afro silhouette shows no curl: a straight style; the same with a curl texture: the afro."""
    cam = _camera(head, 20.0)
    image, parsing = _photo(head, "afro", cam)
    smooth = fit_hair(head, image, parsing, cam, AMBIENT)
    assert not smooth.curly and smooth.style.curl == 0 and "afro" not in smooth.scores, smooth.style
    fit = fit_hair(head, _curled(image, parsing), parsing, cam, AMBIENT)
    assert fit.curly and max(fit.scores, key=fit.scores.get) == "afro", sorted(fit.scores.items(),
                                                                             key=lambda kv: -kv[1])[:3]
    assert fit.evaluations <= smooth.evaluations + 3  # the curly library is the smooth one's size, give or take


def test_length_map_fills_unjudged_cells_smoothly_and_keeps_short_sides():
    """Sides the photo cuts to nothing keep the floor; cells it does not judge follow their neighbours (through
    the back, between the sides), not the full length beside a side cut short."""
    from avatarsdk.hair.photo import SIDE_AZIMUTH, tidy_length_map
    from avatarsdk.hair.styles import LENGTH_MAP_AZIMUTHS as A

    centre = -180.0 + (np.arange(A) + 0.5) * 360.0 / A
    side = np.abs(centre) >= SIDE_AZIMUTH
    raw = np.full((3, A), np.nan)
    raw[:2, ~side] = 1.0  # the front as long as grown
    raw[:2, side & (np.abs(centre) < 120)] = 0.0  # the sides cut to nothing; the back (|az| >= 120) not judged
    raw[1, side & (np.abs(centre) < 120) & (centre > 0)] = np.nan  # one side hidden: its mirror's cut
    raw[0, [A // 2 + 1, A // 2 - 2]] = np.nan  # a front cell and its mirror not judged
    raw[0, A // 2 + 2] = 0.5
    floor = np.where(side, 0.2, 0.0)
    m = np.array(tidy_length_map(raw.reshape(-1), np.tile(floor, 3))).reshape(3, A)
    assert m[:2, side].min() >= 0.2 - 1e-9  # short sides, not bare scalp
    assert m[:2, np.abs(centre) >= 120].max() <= 0.2 + 1e-9  # the unseen back as short as the sides
    assert m[0, A // 2 + 1] == 0.75  # between 1 and 0.5
    assert np.array_equal(m[2], m[1])  # a band not judged at all: the nearest judged band's cut
    assert m[0, A // 2 + 2] == 0.5 and m[0, A // 2] == 1.0  # judged cells keep the photo's cut
    assert tidy_length_map(np.full(3 * A, np.nan)) == (1.0,) * (3 * A)  # nothing judged: no cut


def test_carve_keeps_hair_on_sides_the_photo_shows_bare(head):
    """A quiff whose photo shows skin beside the face: the side cells keep about 12 mm of hair."""
    from avatarsdk.hair import head_surface
    from avatarsdk.hair.grow import length_map_cell
    from avatarsdk.hair.photo import SIDE_AZIMUTH, SHORT_SIDES, _Search, hair_target
    from avatarsdk.hair.styles import LENGTH_MAP_AZIMUTHS as A

    cam = _camera(head, 0.0)
    image, parsing = _photo(head, "quiff", cam)
    labels = parsing.labels.copy()
    cols = np.nonzero((labels == HAIR).any(0))[0]
    mid, half = (cols[0] + cols[-1]) / 2, (cols[-1] - cols[0]) / 2
    sides = np.abs(np.arange(labels.shape[1]) - mid)[None, :] > 0.45 * half
    labels[(labels == HAIR) & sides] = SKIN
    surf = head_surface(head)
    search = _Search(head, surf, hair_target(image, FaceParse(labels, "bisenet"), cam, head), 0)
    style = get_style("quiff")
    m = np.array(search.carve(style, quantile=0.15)).reshape(-1, A)
    centre = -180.0 + (np.arange(A) + 0.5) * 360.0 / A
    side = (np.abs(centre) >= SIDE_AZIMUTH) & (np.abs(centre) <= 120)
    roots = search.strands(replace_length_map(style)).points[:, 0]
    used = np.unique(length_map_cell(surf, roots))
    floor = SHORT_SIDES * surf.scale / (1.1 * style.length * surf.scale)
    cells = [c for c in used if side[c % A]]
    assert cells and min(m.reshape(-1)[cells]) >= floor - 0.011, m
    assert min(m.reshape(-1)[cells]) < 0.9  # the photo did cut them


def replace_length_map(style):
    from dataclasses import replace

    return replace(style, length_map=())


def test_refinements_keep_a_style_near_its_library_norm():
    """Stepping volume and length up again and again stops at the style's bounds (no spiky or stringy wig)."""
    from avatarsdk.hair import STYLES
    from avatarsdk.hair.photo import LENGTH_RANGE, VOLUME_MAX, _bounds, _refinements

    for name in ("quiff", "chin_length", "afro"):
        style = norm = STYLES[name]
        for _ in range(12):  # the search's steps up, taken whenever offered
            up = [s for s in dict(_refinements(style))["volume"] if s.volume > style.volume]
            style = up[0] if up else style
            up = [s for s in dict(_refinements(style))["length"] if s.length > style.length]
            style = up[0] if up else style
        lo, hi, vmax = _bounds(style)
        assert style.volume <= max(norm.volume, min(VOLUME_MAX[0] * norm.volume, VOLUME_MAX[1])) + 1e-9
        assert style.volume == vmax and style.length == hi == min(1.0, LENGTH_RANGE[1] * norm.length)
    assert _bounds(STYLES["quiff"])[2] <= 0.03 and _bounds(STYLES["afro"])[2] == STYLES["afro"].volume
