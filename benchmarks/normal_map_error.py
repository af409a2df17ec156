"""Shading-normal angular error against the fidelity benchmark's ground truth, with and without the skin normal map.

The benchmark's heads (:func:`avatarsdk.bench.fidelity.make_case`) carry a
displacement outside the ICT identity span (smooth bumps, sigma 12-25 mm,
0.8-1.6 mm RMS), so no linear-model reconstruction can match their normals.
This script measures, over the benchmark's face-region texels of the unified
head UV at ``--size``, the mean angle between the ground truth's shading
normal (its smooth vertex normals, interpolated) and a reconstruction's:

* ``mesh``: the reconstruction's interpolated vertex normal;
* ``mesh + normal map``: that normal perturbed by :func:`avatarsdk.pbr.skin_maps`'
  normal map in the tangent frame the glTF exporter writes
  (:func:`avatarsdk.exporters.gltf.vertex_tangents`, interpolated), i.e. what a
  glTF renderer shades with.

Reconstructions: ``floor`` is the ground truth's own identity coefficients
without the detail (the best any fit in the model's span can do, isolating
the map's effect); ``mean`` the generic head. Fitting photos is not needed for
the map's effect since the map does not read the photo.

Usage: python benchmarks/normal_map_error.py [--n 8] [--seed 0] [--size 1024]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


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


def main(argv=None) -> dict:
    from avatarsdk.bench.fidelity import make_case
    from avatarsdk.pbr import encode_normals, normal_map
    from avatarsdk.rigs import load_ict

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args(argv)
    model = load_ict()
    topo = model.topology
    rows = []
    for s in range(a.seed, a.seed + a.n):
        case = make_case(s, size=64, albedo_size=64, supersample=1)
        gt = shading_normals(np.asarray(case.vertices_neutral, np.float64), topo, a.size, None)
        row = {"seed": s, "detail_rms_mm": round(case.detail_rms_mm, 3)}
        for name, verts in (("floor", model.morph(case.identity)), ("mean", model.neutral)):
            verts = np.asarray(verts, np.float64)
            tex = encode_normals(normal_map(a.size, s))  # what skin_maps exports (its seed aside)
            row[name] = {"mesh": round(angle_deg(shading_normals(verts, topo, a.size, None), gt), 3),
                         "mesh+normal_map": round(angle_deg(shading_normals(verts, topo, a.size, tex), gt), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {k: {m: round(float(np.mean([r[k][m] for r in rows])), 3) for m in ("mesh", "mesh+normal_map")}
               for k in ("floor", "mean")}
    print(f"n={a.n} seed={a.seed} size={a.size}: mean angular error (deg) of shading normals vs ground truth")
    print("| reconstruction | mesh normals | mesh + normal map |\n|---|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v['mesh']:.2f} | {v['mesh+normal_map']:.2f} |")
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
