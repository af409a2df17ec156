"""Time the CPU rasterizer on the full ICT-FaceKit head (not a pytest test).

Usage::

    AVATARSDK_ICT_DIR=/path/to/ict-facekit python benchmarks/bench_render.py \\
        [--runs 10] [--threads 2] [--sizes 256 512] [--json out.json]

Stages, batch 1, float32, the head framed to fill ~90% of the image:

* ``rasterize``: ``rasterize`` alone (visibility + differentiable barycentrics);
* ``full``: rasterize + interpolate per-corner UVs and vertex normals +
  256x256 ``texture`` + SH ``lambert`` shading.

Each is timed forward only and forward + ``loss.backward()`` (gradients w.r.t.
the vertex positions and the texture). Reports the median over ``--runs``
runs in ms, as a table and optionally as JSON. Falls back to a UV sphere with
~50k triangles when the ICT head cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import numpy as np
import torch

from avatarsdk.render import (
    interpolate,
    lambert,
    look_at,
    perspective,
    rasterize,
    texture,
    transform_points,
    vertex_normals,
)


def load_mesh() -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (name, verts [V, 3], faces [F, 3] int64, corner_uv [F, 3, 2])."""
    try:
        from avatarsdk.rigs import load_ict

        model = load_ict()
        verts = torch.tensor(np.array(model.neutral, dtype=np.float32))
        faces = torch.tensor(np.array(model.topology.triangles, dtype=np.int64))
        corner_uv = torch.tensor(np.array(model.topology.corner_uv, dtype=np.float32))
        return "ict-facekit", verts, faces, corner_uv
    except Exception as exc:  # noqa: BLE001 - any failure means: use the stand-in
        print(f"ICT head unavailable ({type(exc).__name__}: {exc}); using a UV sphere")
    n_lat, n_lon = 125, 200  # 2 * 200 * 124 = 49,600 triangles
    lat = torch.linspace(0, math.pi, n_lat + 1)[1:-1]
    lon = torch.linspace(0, 2 * math.pi, n_lon + 1)[:-1]
    s, c = lat.sin()[:, None], lat.cos()[:, None]
    ring = torch.stack([s * lon.cos(), c.expand(-1, n_lon), s * lon.sin()], -1).reshape(-1, 3)
    verts = 0.125 * torch.cat([torch.tensor([[0.0, 1, 0], [0, -1, 0]]), ring])
    idx = lambda i, j: 2 + i * n_lon + j % n_lon  # noqa: E731
    faces = []
    for j in range(n_lon):
        faces += [[0, idx(0, j + 1), idx(0, j)], [1, idx(n_lat - 2, j), idx(n_lat - 2, j + 1)]]
        for i in range(n_lat - 2):
            faces.append([idx(i, j), idx(i, j + 1), idx(i + 1, j)])
            faces.append([idx(i + 1, j), idx(i, j + 1), idx(i + 1, j + 1)])
    faces = torch.tensor(faces)
    uv = torch.stack([verts[:, 0], -verts[:, 1]], -1) * 4 + 0.5
    return "uv-sphere", verts, faces, uv[faces]


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    name, verts, faces, corner_uv = load_mesh()
    centre = (verts.amin(0) + verts.amax(0)) / 2
    extent = float((verts.amax(0) - verts.amin(0))[:2].max())
    fov = 0.35
    dist = extent / 0.9 / 2 / math.tan(fov / 2) + float(verts[:, 2].max() - centre[2])
    view = look_at(centre + torch.tensor([0.0, 0.0, dist]), centre, torch.tensor([0.0, 1.0, 0.0]))
    mvp = perspective(fov, 1.0, 0.1 * dist, 10 * dist) @ view
    uv_faces = torch.arange(3 * len(faces)).view(-1, 3)  # one UV vertex per triangle corner
    uv_verts = corner_uv.reshape(-1, 2)
    tex0 = torch.rand(1, 256, 256, 3)
    coeffs = torch.zeros(9, 3)
    coeffs[0], coeffs[2] = 0.6, 0.4

    def raster_only(size, backward):
        v = verts.clone().requires_grad_(backward)
        frags = rasterize(transform_points(v, mvp), faces, (size, size))
        if backward:
            (frags.bary[..., 0].sum() + frags.depth[frags.mask].sum()).backward()
        return frags

    def full(size, backward):
        v = verts.clone().requires_grad_(backward)
        tex = tex0.clone().requires_grad_(backward)
        frags = rasterize(transform_points(v, mvp), faces, (size, size))
        uv = interpolate(uv_verts, frags, uv_faces)
        normals = interpolate(vertex_normals(v, faces), frags, faces)
        normals = torch.nn.functional.normalize(normals, dim=-1)
        rgb = lambert(texture(tex, uv), normals, coeffs) * frags.mask[..., None]
        if backward:
            rgb.square().mean().backward()
        return rgb

    frags = raster_only(args.sizes[0], False)
    results = {
        "mesh": name,
        "vertices": len(verts),
        "triangles": len(faces),
        "threads": args.threads,
        "runs": args.runs,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_avg_before": os.getloadavg(),
        "rows": [],
    }
    for size in args.sizes:
        frags = raster_only(size, False)
        row = {"size": size, "covered_pixels": int(frags.mask.sum())}
        for stage, fn in (("rasterize", raster_only), ("full", full)):
            with torch.no_grad():
                row[f"{stage}_fwd_ms"] = median_ms(lambda: fn(size, False), args.runs)
            row[f"{stage}_fwd_bwd_ms"] = median_ms(lambda: fn(size, True), args.runs)
        results["rows"].append(row)
    results["load_avg_after"] = os.getloadavg()

    print(f"{name}: {len(verts)} vertices, {len(faces)} triangles, batch 1, float32, "
          f"{args.threads} threads, median of {args.runs} runs (ms)")
    before, after = results["load_avg_before"][0], results["load_avg_after"][0]
    print(f"1-min load average before/after: {before:.2f} / {after:.2f}")
    header = ["size", "covered px", "rasterize fwd", "rasterize fwd+bwd", "full fwd", "full fwd+bwd"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results["rows"]:
        cells = [f"{r['size']}x{r['size']}", str(r["covered_pixels"])]
        keys = ("rasterize_fwd_ms", "rasterize_fwd_bwd_ms", "full_fwd_ms", "full_fwd_bwd_ms")
        cells += [f"{r[k]:.1f}" for k in keys]
        print("| " + " | ".join(cells) + " |")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
