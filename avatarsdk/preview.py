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
from avatarsdk.colour import srgb_to_linear as _srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.exporters.gltf_read import GlbMesh
from avatarsdk.render import interpolate, rasterize, texture
from avatarsdk.render.camera import look_at, perspective, transform_points
from avatarsdk.render.shading import sh_shading, vertex_normals
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
_MASK_GROUPS = 8


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


def _smooth_normals(pos: torch.Tensor, tris: torch.Tensor) -> torch.Tensor:
    """Vertex normals with vertices at the same position merged (no seams at UV splits)."""
    key = torch.round(pos * 1e5).to(torch.int64)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
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
    # Pass per primitive: 0 opaque, 1 alpha-tested (MASK, drawn in card groups), 2 blended.
    mode_t = torch.tensor([{"MASK": 1, "BLEND": 2}.get(p.alpha_mode, 0) for p in mesh.primitives])
    group_t = _mask_groups(prim_of_tri, [p.alpha_mode for p in mesh.primitives])
    passes = [(0, -1)] + [(1, g) for g in range(_MASK_GROUPS) if bool((mode_t == 1).any())] + [(2, -1)]
    textures = [None if p.texture is None else torch.tensor(p.texture, dtype=torch.float32) / 255.0 for p in mesh.primitives]
    # Normal maps (tangent space, with the file's TANGENTs) and ambient occlusion, where the material has them.
    tangents = torch.from_numpy(np.concatenate(tans)).float()
    normal_maps = [None if p.normal_texture is None or p.tangents is None
                   else torch.tensor(p.normal_texture, dtype=torch.float32) / 255.0 * 2 - 1 for p in mesh.primitives]
    occlusion = [None if p.occlusion is None else torch.tensor(p.occlusion, dtype=torch.float32)[..., None] / 255.0
                 for p in mesh.primitives]
    base = torch.tensor([p.base_color for p in mesh.primitives], dtype=torch.float32)

    lo, hi = pos_t.min(0).values, pos_t.max(0).values
    centre = (lo + hi) / 2
    radius = float((hi - lo).norm()) / 2
    dist = radius / math.sin(FOV_Y / 2) * 0.92
    proj = perspective(FOV_Y, 1.0, dist * 0.1, dist * 3)
    light = _light()
    tiles = []
    with torch.no_grad():
        for yaw, pitch in views:
            y, p = math.radians(yaw), math.radians(pitch)
            eye = centre + dist * torch.tensor([math.sin(y) * math.cos(p), math.sin(p), math.cos(y) * math.cos(p)])
            clip = transform_points(pos_t, proj @ look_at(eye, centre, torch.tensor([0.0, 1.0, 0.0])))
            img = torch.tensor(BACKGROUND).expand(size, size, 3).clone()
            opaque_depth = torch.full((size, size), float("inf"))
            for layer, group in passes:
                sel = torch.nonzero((mode_t[prim_t] == layer) & ((group_t == group) if group >= 0 else True)).squeeze(1)
                if len(sel) == 0:
                    continue
                layer_blend = layer == 2
                faces = tris_t[sel]
                frags = rasterize(clip, faces, (size, size))
                tid = frags.tri_id[0]
                mask = tid >= 0
                if layer > 0:
                    mask &= frags.depth[0] < opaque_depth
                else:
                    opaque_depth = torch.where(mask, frags.depth[0], opaque_depth)
                if not mask.any():
                    continue
                gt = sel[tid[mask]]  # global triangle ids of covered pixels
                bary = frags.bary[0][mask]
                uv = (bary.unsqueeze(-1) * cuv_t[gt]).sum(1)
                n = interpolate(normals, frags, faces)[0][mask]
                n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-8)
                prim = prim_t[gt]
                rgba = base[prim].clone()
                for i, tex in enumerate(textures):
                    hit = prim == i
                    if tex is None or not hit.any():
                        continue
                    s = texture(tex, uv[hit].view(1, -1, 1, 2))[0, :, 0]
                    rgb = _srgb_to_linear(s[:, :3])
                    a = s[:, 3] if s.shape[1] == 4 else torch.ones(len(s))
                    rgba[hit] = rgba[hit] * torch.cat([rgb, a[:, None]], 1)
                ao = torch.ones(len(n), 1)
                for i, (nm, occ) in enumerate(zip(normal_maps, occlusion)):
                    hit = prim == i
                    if not hit.any():
                        continue
                    if occ is not None:
                        ao[hit] = texture(occ, uv[hit].view(1, -1, 1, 2))[0, :, 0]
                    if nm is not None:
                        m = texture(nm, uv[hit].view(1, -1, 1, 2))[0, :, 0]
                        tan = (bary[hit].unsqueeze(-1) * tangents[tris_t[gt[hit]]]).sum(1)
                        nh = n[hit]
                        t = tan[:, :3] - (tan[:, :3] * nh).sum(-1, keepdim=True) * nh
                        t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8)
                        b = torch.linalg.cross(nh, t) * torch.where(tan[:, 3:] < 0, -1.0, 1.0)
                        pn = t * m[:, :1] + b * m[:, 1:2] + nh * m[:, 2:3]
                        n[hit] = pn / pn.norm(dim=-1, keepdim=True).clamp_min(1e-8)
                # Shade with the normal facing the camera (double-sided cards, eyelashes).
                view_dir = eye - (bary.unsqueeze(-1) * pos_t[tris_t[gt]]).sum(1)
                n = torch.where(((n * view_dir).sum(-1, keepdim=True) < 0), -n, n)
                shade = sh_shading(n, light).clamp_min(0.0) * ao
                color = rgba[:, :3] * shade
                if layer == 1:  # alpha test: keep texels at or above the cutoff, they write depth
                    keep = rgba[:, 3] >= _ALPHA_CUTOFF
                    idx = torch.nonzero(mask.view(-1)).squeeze(1)[keep]
                    img.view(-1, 3)[idx] = color[keep]
                    opaque_depth.view(-1)[idx] = frags.depth[0].reshape(-1)[idx]
                    continue
                alpha = rgba[:, 3:4] if layer_blend else torch.ones_like(rgba[:, 3:4])
                img[mask] = img[mask] * (1 - alpha) + color * alpha
            tiles.append(img)
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
