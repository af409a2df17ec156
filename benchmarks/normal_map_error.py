"""Shading-normal angular error against the fidelity benchmark's ground truth, with and without the skin normal map.

The benchmark's heads (:func:`avatarsdk.bench.fidelity.make_case`) carry a
displacement outside the ICT identity span (smooth bumps, sigma 12-25 mm,
0.8-1.6 mm RMS), so no linear-model reconstruction can match their normals.
This script measures, over the benchmark's face-region texels of the unified
head UV at ``--size``, the mean angle between the ground truth's shading
normal (its smooth vertex normals, interpolated) and a reconstruction's:

* ``mesh``: the reconstruction's interpolated vertex normal;
* ``+ flat map``: perturbed by a map of flat normals (0, 0, 1): 8-bit encoding cannot hold 0
  (127.5), so (128, 128, 255) tilts every normal by 0.32 degrees; the floor of any 8-bit map;
* ``+ procedural``: that normal perturbed by the procedural micro-relief alone
  (:func:`avatarsdk.pbr.normal_map`, what the skin map carried before it read the photo);
* ``+ photo relief``: perturbed by the relief read from the photo alone
  (:func:`avatarsdk.pbr.photo_relief`);
* ``+ exported map``: perturbed by the map :func:`avatarsdk.pbr.skin_maps` exports
  (:func:`avatarsdk.pbr.skin_normal`: the photo relief plus the pores and creases it keeps, at
  :data:`avatarsdk.pbr.MICRO_WITH_RELIEF` of their height).

Maps are applied in the tangent frame the glTF exporter writes
(:func:`avatarsdk.exporters.gltf.vertex_tangents`, interpolated), i.e. what a
glTF renderer shades with. The photo is the fidelity benchmark's neutral case
(1024 px, soft light, 2x2 supersampled, albedo 512).

Reconstructions:

* ``floor``: the ground truth's own identity coefficients without the detail
  (the best any fit in the model's span can do); its relief is read from the
  photo unwrapped with the true camera and light (an oracle fit);
* ``fit``: the real pipeline (:func:`avatarsdk.pipeline.fit_stage`,
  :func:`~avatarsdk.pipeline.unwrap_stage`, :func:`~avatarsdk.pipeline.relief_stage`)
  on the rendered photo; its neutral mesh is rigidly aligned onto the ground truth
  (Procrustes on the face-region vertices, as the fidelity benchmark's geometry metric)
  since a fit's head frame is only defined up to the pose the camera absorbs;
* ``mean``: the generic head (it reads no photo: no relief).

``--cache DIR`` keeps each seed's fits and unwraps (which do not depend on the
relief code) so reruns only redo the relief and the metric.

Usage: python benchmarks/normal_map_error.py [--n 4] [--seed 0] [--size 1024] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

COLUMNS = ("mesh", "+ flat map", "+ procedural", "+ photo relief", "+ exported map")


def _texel_triangles(topology, tri_v: np.ndarray) -> np.ndarray:
    """Index into the skin primitive's triangles of each texel's triangle (given its vertex ids)."""
    skin = np.nonzero(topology.tri_material == topology.materials.index("skin"))[0]
    v = np.int64(topology.num_vertices)
    keys = (topology.triangles[skin].astype(np.int64) * [v * v, v, 1]).sum(1)
    order = np.argsort(keys)
    q = (tri_v.astype(np.int64) * [v * v, v, 1]).sum(1)
    pos = np.searchsorted(keys[order], q)
    return order[pos]


def shading_normals(vertices: np.ndarray, topology, size: int, normal_tex: np.ndarray | None):
    """[N, 3] unit shading normals at the face-region texels (see the module docstring)."""
    from avatarsdk.exporters.gltf import primitives, vertex_normals, vertex_tangents
    from avatarsdk.pbr import decode_normals
    from avatarsdk.paint import texel_fields

    t = texel_fields(size)
    region = t.fields["region"] > 0.5
    n_v = vertex_normals(vertices, topology.triangles).astype(np.float64)
    n = (n_v[t.tri_v[region]] * t.bary[region, :, None]).sum(1)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    if normal_tex is None:
        return n
    prim = next(p for p in primitives(topology) if p.material == "skin")
    tan = vertex_tangents(vertices[prim.vertex_map], n_v[prim.vertex_map], prim.uv, prim.indices)
    corners = prim.indices[_texel_triangles(topology, t.tri_v[region])]  # [N, 3] primitive vertices
    # Check the mapping: the primitive's corners are the texel's ICT vertices.
    assert (prim.vertex_map[corners] == t.tri_v[region]).all()
    tt = (tan[corners, :3] * t.bary[region, :, None]).sum(1)
    w = np.sign((tan[corners, 3] * t.bary[region]).sum(1))
    tt -= (tt * n).sum(1, keepdims=True) * n
    tt /= np.linalg.norm(tt, axis=1, keepdims=True)
    b = np.cross(n, tt) * w[:, None]
    m = decode_normals(normal_tex).reshape(-1, 3)[t.index[region]].astype(np.float64)
    out = tt * m[:, :1] + b * m[:, 1:2] + n * m[:, 2:3]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((a * b).sum(1), -1, 1))).mean())


def _unwraps(seed: int, size: int, cache: Path | None) -> dict:
    """The case's ground truth, the oracle unwrap and the pipeline's fit and unwrap (cached in ``cache``)."""
    from avatarsdk import pipeline
    from avatarsdk.albedo import unwrap
    from avatarsdk.bench.fidelity import make_case
    from avatarsdk.fit import FitResult
    from avatarsdk.rigs import load_ict

    path = cache / f"seed{seed}-{size}.npz" if cache is not None else None
    if path is not None and path.exists():
        with np.load(path) as f:
            return dict(f)
    model = load_ict()
    case = make_case(seed, size=1024, albedo_size=512, supersample=2)  # the fidelity benchmark's neutral soft case
    oracle = FitResult(identity=case.identity, expression=np.zeros(model.expression_basis.shape[0], np.float32),
                       camera=case.camera, light=np.asarray(case.light_sh, np.float32),
                       albedo_lowres=np.zeros((4, 4, 3), np.float32))
    o_alb, o_conf = unwrap(model, oracle, case.photo, case.skin_mask.astype(np.float32), size=size)
    t0 = time.perf_counter()
    pf = pipeline.fit_stage(case.photo)
    seconds = time.perf_counter() - t0
    p_alb, p_conf, _ = pipeline.unwrap_stage(pf, texture_size=size)
    out = {"gt": np.asarray(case.vertices_neutral), "identity": case.identity, "o_light": case.light_sh,
           "o_alb": o_alb.numpy(), "o_conf": o_conf.numpy(), "p_identity": pf.fit.identity,
           "p_expression": pf.fit.expression, "p_light": pf.fit.light, "p_alb": p_alb.numpy(),
           "p_conf": p_conf.numpy(), "fit_s": np.float64(seconds)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


def _align(rec: np.ndarray, gt: np.ndarray) -> np.ndarray:
    from avatarsdk.bench.fidelity import procrustes
    from avatarsdk.paint import face_region_vertices

    r = face_region_vertices()
    _, rot, t = procrustes(rec[r], gt[r])
    return rec @ rot.T + t


def main(argv=None) -> dict:
    from avatarsdk.pbr import encode_normals, normal_map, photo_relief, relief_normals, skin_normal
    from avatarsdk.rigs import load_ict

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--cache", type=Path, default=None, help="folder keeping each seed's fits and unwraps")
    a = ap.parse_args(argv)
    model = load_ict()
    topo = model.topology
    rows = []
    for s in range(a.seed, a.seed + a.n):
        d = _unwraps(s, a.size, a.cache)
        gt_v = np.asarray(d["gt"], np.float64)
        gt = shading_normals(gt_v, topo, a.size, None)
        procedural = encode_normals(normal_map(a.size, s))
        flat = encode_normals(np.tile(np.array([0.0, 0.0, 1.0], np.float32), (a.size, a.size, 1)))
        row = {"seed": s}
        recs = {"floor": (model.morph(d["identity"]), model.morph(d["identity"]), "o_light", "o"),
                "fit": (_align(model.morph(d["p_identity"]).astype(np.float64), gt_v),
                        model.morph(d["p_identity"], d["p_expression"]), "p_light", "p"),
                "mean": (model.neutral, None, None, None)}
        for name, (verts, posed, light, k) in recs.items():
            verts = np.asarray(verts, np.float64)
            r = {"mesh": angle_deg(shading_normals(verts, topo, a.size, None), gt),
                 "+ flat map": angle_deg(shading_normals(verts, topo, a.size, flat), gt),
                 "+ procedural": angle_deg(shading_normals(verts, topo, a.size, procedural), gt)}
            if posed is not None:
                t0 = time.perf_counter()
                slopes = photo_relief(posed, topo, d[light], d[k + "_alb"], d[k + "_conf"])
                r["relief_s"] = time.perf_counter() - t0
                relief = encode_normals(relief_normals(slopes, a.size))
                r["+ photo relief"] = angle_deg(shading_normals(verts, topo, a.size, relief), gt)
                r["+ exported map"] = angle_deg(shading_normals(verts, topo, a.size, skin_normal(a.size, s, slopes)),
                                                gt)
            row[name] = {m: round(float(v), 3) for m, v in r.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {k: {m: round(float(np.mean([r[k][m] for r in rows])), 2) for m in COLUMNS + ("relief_s",)
                   if m in rows[0][k]} for k in ("floor", "fit", "mean")}
    print(f"n={a.n} seed={a.seed} size={a.size}: mean angular error (deg) of shading normals vs ground truth")
    print("| reconstruction | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for k, v in summary.items():
        print(f"| {k} | " + " | ".join(f"{v[c]:.2f}" if c in v else "-" for c in COLUMNS) + " |")
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
