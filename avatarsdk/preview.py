"""Preview images of a head: front, three-quarter and side views with soft light.

Rendering goes through the exported .glb (``to_glb`` then ``load_glb``), so a
preview shows exactly what an engine will import: the same welded primitives,
materials, textures and morph targets.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from avatarsdk.colour import linear_to_srgb as _linear_to_srgb
from avatarsdk.errors import InputError
from avatarsdk.exporters.gltf_read import GlbMesh
from avatarsdk.render.camera import look_at, perspective
from avatarsdk.render.head import ALPHA_MODES, Material, render_layers
from avatarsdk.render.shading import vertex_normals
from avatarsdk.rigs import blend_shapes

DEFAULT_VIEWS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (35.0, 0.0), (90.0, 0.0))
"""(yaw, pitch) in degrees: front, three-quarter (avatar's left side), profile."""

FOV_Y = math.radians(18.0)
BACKGROUND = (0.32, 0.33, 0.35)  # linear RGB


POSE_RANGE = (0.0, 1.0)
"""Allowed blendshape weights: ARKit's documented range, exactly. No overshoot is allowed: the
shapes are deltas to the fully expressed pose, so 1.5 extrapolates past anything the rig was made
for (lips through teeth), and a typo such as 1e9 must not draw an exploded mesh with exit 0."""


def check_pose(weights: Mapping[str, float]) -> dict[str, float]:
    """Return ``weights`` as floats after checking each is finite and in :data:`POSE_RANGE`.

    Raises:
        InputError: a weight that is not a number, not finite, or outside [0, 1].
    """
    lo, hi = POSE_RANGE
    out = {}
    for name, w in weights.items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise InputError(f"pose weight {name}={w!r} is not a number") from None
        if not math.isfinite(w) or not lo <= w <= hi:
            raise InputError(f"pose weight {name}={w!r} is out of range: blendshape weights must be in "
                             f"[{lo:g}, {hi:g}]")
        out[name] = w
    return out


def parse_pose(text: str | None) -> dict[str, float]:
    """Parse ``"jawOpen=1,eyeBlinkLeft=0.5"`` into {name: weight}.

    Raises:
        InputError: malformed entries, or weights that are not finite or outside [0, 1].
    """
    out: dict[str, float] = {}
    if not text:
        return out
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        try:
            w = float(value)
        except ValueError:
            w = None
        if not sep or not name or w is None:
            raise InputError(f"bad pose entry {item!r}: expected NAME=WEIGHT, e.g. jawOpen=1")
        out[name.strip()] = w
    return check_pose(out)




_ALPHA_CUTOFF = 0.5
_MASK_GROUPS = 4  # 8 took 0.15 s more per hair preview (1.05 s, 3 views) for a mean difference of 0.16 / 255


def _mask_groups(prim_of_tri: list[np.ndarray], modes: list[str]) -> torch.Tensor:
    """Group of each triangle for alpha-tested drawing ([T] int64; -1 outside MASK primitives).

    The rasterizer keeps only the nearest triangle per pixel, so a transparent
    texel of a near card would hide the cards behind it. Drawing the MASK
    triangles in interleaved groups (pairs of triangles, i.e. card quads, dealt
    round-robin) with a depth test against what is already drawn approximates
    per-texel alpha testing: a hole needs all groups' near texels to miss.
    """
    out = []
    for i, p in enumerate(prim_of_tri):
        if modes[i] == "MASK":
            out.append((np.arange(len(p)) // 2) % _MASK_GROUPS)
        else:
            out.append(np.full(len(p), -1))
    return torch.from_numpy(np.concatenate(out)).long()


def _texels(image: np.ndarray | None) -> torch.Tensor | None:
    """[H, W, C] uint8 texture as float in [0, 1] (None stays None)."""
    return None if image is None else torch.tensor(image, dtype=torch.float32) / 255.0


def _light() -> torch.Tensor:
    """SH coefficients [9, 3]: ambient plus a soft key light from upper front left."""
    d = torch.tensor([0.35, 0.45, 1.0])
    d = d / d.norm()
    c = torch.zeros(9, 3)
    c[0] = 0.55
    # Linear SH band: shading = c0 + (2/sqrt 3)(c1 y + c2 z + c3 x); key strength 0.55.
    k = 0.55 * math.sqrt(3) / 2
    c[1], c[2], c[3] = k * d[1], k * d[2], k * d[0]
    return c


def _same_rows(key: torch.Tensor) -> torch.Tensor:
    """[N] int64 class of each row of the [N, 3] int64 ``key``: equal rows, equal class.

    The classes of ``torch.unique(key, dim=0, return_inverse=True)`` (numbered the same way),
    found by a 1-D unique of the three columns packed into one int64 when each spans under 2^21
    (about 21 m at the 10 micron grid of :func:`_smooth_normals`): several times faster than
    the row-wise unique.
    """
    k = key.numpy()
    low = k.min(0) if len(k) else np.zeros(3, np.int64)
    span = k.max(0) - low if len(k) else np.zeros(3, np.int64)
    if len(k) == 0 or (span >= 1 << 21).any():
        return torch.unique(key, dim=0, return_inverse=True)[1]
    d = k - low  # lexicographic order of the rows is the order of the packed keys
    packed = (d[:, 0] << 42) | (d[:, 1] << 21) | d[:, 2]
    return torch.from_numpy(np.unique(packed, return_inverse=True)[1].astype(np.int64))


def _smooth_normals(pos: torch.Tensor, tris: torch.Tensor) -> torch.Tensor:
    """Vertex normals with vertices at the same position merged (no seams at UV splits)."""
    key = torch.round(pos * 1e5).to(torch.int64)
    inverse = _same_rows(key)
    count = torch.zeros(int(inverse.max()) + 1).index_add_(0, inverse, torch.ones(len(pos)))
    merged = torch.zeros(len(count), 3).index_add_(0, inverse, pos) / count[:, None]
    n = vertex_normals(merged, inverse[tris])
    return n[inverse]


def render_views(
    mesh: GlbMesh,
    *,
    weights: Mapping[str, float] | None = None,
    views: Sequence[tuple[float, float]] = DEFAULT_VIEWS,
    size: int = 512,
) -> np.ndarray:
    """Render a mesh from several orbit views into one image strip.

    Args:
        mesh: from :func:`avatarsdk.exporters.gltf_read.load_glb`.
        weights: morph target name -> weight (names from ``mesh.target_names``).
        views: (yaw, pitch) in degrees; yaw turns the camera toward the avatar's left.
        size: pixel height and width of each view.

    Returns:
        [size, size * len(views), 3] uint8 sRGB image.

    Raises:
        InputError: unknown morph target names, weights outside [0, 1] or not
            finite, an empty mesh or a bad size.
    """
    if not 16 <= size <= 4096:
        raise InputError(f"size must be in [16, 4096], got {size}")
    weights = check_pose(dict(weights or {}))
    unknown = sorted(set(weights) - set(mesh.target_names))
    if unknown:
        raise InputError(f"unknown blendshape(s) {', '.join(unknown)}; the file has {len(mesh.target_names)} "
                         f"targets, e.g. {', '.join(mesh.target_names[:4])}")
    if not mesh.primitives:
        raise InputError("the file has no triangle primitives to render")
    w = np.array([weights.get(n, 0.0) for n in mesh.target_names], np.float32)
    pos, tris, cuv, prim_of_tri, tans = [], [], [], [], []
    offset = 0
    for i, p in enumerate(mesh.primitives):
        tans.append(p.tangents if p.tangents is not None else np.zeros((len(p.positions), 4), np.float32))
        v = p.positions.copy()
        if len(w) and len(p.targets) == len(w):
            v += blend_shapes(w, p.targets)
        pos.append(v)
        tris.append(p.triangles + offset)
        cuv.append(p.uv[p.triangles])
        prim_of_tri.append(np.full(len(p.triangles), i))
        offset += len(v)
    pos_t = torch.from_numpy(np.concatenate(pos)).float()
    tris_t = torch.from_numpy(np.concatenate(tris)).long()
    cuv_t = torch.from_numpy(np.concatenate(cuv)).float()
    prim_t = torch.from_numpy(np.concatenate(prim_of_tri)).long()
    normals = _smooth_normals(pos_t, tris_t)
    # Materials as the file has them: base colour and texture, alpha mode (MASK drawn in card groups),
    # normal map (tangent space, with the file's TANGENTs) and ambient occlusion where present.
    materials = [Material(colour=tuple(p.base_color), texture=_texels(p.texture), alpha_cutoff=_ALPHA_CUTOFF,
                          alpha_mode=p.alpha_mode if p.alpha_mode in ALPHA_MODES else "OPAQUE",
                          normal_map=None if p.normal_texture is None or p.tangents is None
                          else _texels(p.normal_texture) * 2 - 1,
                          occlusion=None if p.occlusion is None else _texels(p.occlusion)[..., None])
                 for p in mesh.primitives]
    group_t = _mask_groups(prim_of_tri, [p.alpha_mode for p in mesh.primitives])
    tangents = torch.from_numpy(np.concatenate(tans)).float()

    lo, hi = pos_t.min(0).values, pos_t.max(0).values
    centre = (lo + hi) / 2
    radius = float((hi - lo).norm()) / 2
    dist = radius / math.sin(FOV_Y / 2) * 0.92
    proj = perspective(FOV_Y, 1.0, dist * 0.1, dist * 3)
    light = _light()
    background = torch.tensor(BACKGROUND).expand(size, size, 3)
    tiles = []
    with torch.no_grad():
        for yaw, pitch in views:
            y, p = math.radians(yaw), math.radians(pitch)
            eye = centre + dist * torch.tensor([math.sin(y) * math.cos(p), math.sin(p), math.cos(y) * math.cos(p)])
            # Shaded with the normal facing the camera (double-sided cards, eyelashes).
            out = render_layers(pos_t, tris_t, proj @ look_at(eye, centre, torch.tensor([0.0, 1.0, 0.0])), background,
                                corner_uv=cuv_t.reshape(-1, 2), corner_faces=torch.arange(3 * len(tris_t)).view(-1, 3),
                                materials=materials, tri_material=prim_t, light=light, eye=eye, normals=normals,
                                tangents=tangents, mask_groups=group_t)
            tiles.append(out.image)
    out = _linear_to_srgb(torch.cat(tiles, 1))
    return (out * 255 + 0.5).to(torch.uint8).numpy()


def turntable_views(count: int, *, pitch: float = 0.0) -> tuple[tuple[float, float], ...]:
    """Evenly spaced orbit views for a turntable: yaw 0, 360/count, ..., pitch fixed.

    Args:
        count: number of views, 2 to 360.
        pitch: camera elevation in degrees.

    Returns:
        ``count`` (yaw, pitch) pairs in degrees, for :func:`render_views`.

    Raises:
        InputError: ``count`` out of range.
    """
    if not 2 <= count <= 360:
        raise InputError(f"turntable frame count must be in [2, 360], got {count}")
    return tuple((360.0 * i / count, float(pitch)) for i in range(count))


def gif_bytes(strip: np.ndarray, count: int, *, frame_ms: int = 80) -> bytes:
    """Encode a strip of ``count`` equal square views as a looping animated GIF.

    Args:
        strip: [S, S * count, 3] uint8 sRGB, as returned by :func:`render_views`.
        count: number of views in the strip.
        frame_ms: display time of each frame in milliseconds (10 to 10000).

    Returns:
        The GIF file contents.

    Raises:
        InputError: the strip width is not ``count`` times its height, or a bad ``frame_ms``.
    """
    h, w = strip.shape[:2]
    if count < 1 or w != h * count:
        raise InputError(f"strip of {w}x{h} pixels is not {count} square frames")
    if not 10 <= frame_ms <= 10_000:
        raise InputError(f"frame time must be in [10, 10000] ms, got {frame_ms}")
    frames = [Image.fromarray(np.ascontiguousarray(strip[:, i * h:(i + 1) * h])) for i in range(count)]
    buf = io.BytesIO()
    # Each frame gets its own adaptive palette; full frames, so no disposal tricks are needed.
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return buf.getvalue()


def side_by_side(photo: np.ndarray, mesh: GlbMesh, *, size: int = 512) -> np.ndarray:
    """The photo (scaled to ``size`` rows) beside front, three-quarter and side renders.

    Returns:
        [size, W, 3] uint8 sRGB.
    """
    h, w = photo.shape[:2]
    scaled = np.asarray(Image.fromarray(photo).resize((max(1, round(w * size / h)), size), Image.LANCZOS))
    return np.concatenate([scaled, render_views(mesh, size=size)], 1)
