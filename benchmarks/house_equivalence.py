"""Checks that a refactor kept the SDK's outputs, for whatever ``avatarsdk`` is on the path.

Run the same subcommand under two checkouts (``PYTHONPATH=/tmp/other`` for an older commit, whose
``avatarsdk/rigs`` and ``avatarsdk/exporters`` are symlinks to its root ``rigs/`` and ``exporters/``)
and compare what they wrote::

    python benchmarks/house_equivalence.py renders OUT.npz  # previews (plain, hair) and scene photos
    python benchmarks/house_equivalence.py cases OUT.npz    # three fidelity-benchmark cases at 1024 px
    python benchmarks/house_equivalence.py compare A.npz B.npz
    python benchmarks/house_equivalence.py create-diff DIR_A DIR_B  # two `avatarsdk create` folders
    python benchmarks/house_equivalence.py reexport DIR  # DIR's avatar.avatar through this checkout's
                                                         # glb export and preview, against DIR's files
    python benchmarks/house_equivalence.py counts REPO_ROOT  # imports in functions, largest files, renderers
    python benchmarks/house_equivalence.py fidelity-diff A/fidelity.json B/fidelity.json  # every number
    python benchmarks/house_equivalence.py refine OUT  # ours_refine, ours_refine_mean on one case -> OUT.json

Results of the one-way-house refactor: ``benchmarks/results/house_equivalence.md``.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np


def renders(out: str) -> None:
    """Previews of a random head (posed) and of a head with hair cards; three scene photos."""
    from avatarsdk import scene  # local: older checkouts lack some of these modules (no scene.py, no hair)
    from avatarsdk.exporters.gltf import to_glb  # local: as above
    from avatarsdk.exporters.gltf_read import load_glb  # local: as above
    from avatarsdk.hair import choose_hair, hair_for, with_hair  # local: as above
    from avatarsdk.materials import default_textures  # local: as above
    from avatarsdk.pipeline import random_avatar  # local: as above
    from avatarsdk.preview import render_views  # local: as above

    res = {}
    av = random_avatar(3, texture_size=256)
    res["plain"] = render_views(load_glb(to_glb(av)), size=160, weights={"jawOpen": 0.7, "eyeBlinkLeft": 1.0})
    style, colour = choose_hair("random", 5)
    ah = with_hair(av, style, colour, 5)
    grown = hair_for(ah)
    res["hair"] = render_views(load_glb(to_glb(ah, hair=grown.lods[0], hair_texture=grown.texture)), size=160,
                               views=((0.0, 0.0), (150.0, 10.0)))
    rng = np.random.default_rng(0)
    textures = dict(default_textures())
    textures["skin"] = av.textures["skin"]
    for k, (yaw, light, ss, dt) in enumerate([(0.0, "soft", 2, np.float32), (30.0, "side", 1, np.float32),
                                               (-40.0, "coloured", 2, np.float64)]):
        cam = scene.framed_camera(yaw, 5.0, 3.0, 0.6, 0.7, np.array([0.02, -0.01]), 192)
        bg = scene.random_background(rng, 192)
        res[f"photo{k}"], res[f"cov{k}"] = scene.render_photo(av.vertices.astype(dt), textures, cam,
                                                              scene.light_sh(light, cam.rotation),
                                                              background=bg, supersample=ss)
    np.savez(out, **res)


def cases(out: str) -> None:
    """Three cases of ``bench fidelity --seed 0`` (identities 0 and 1) as the benchmark makes them."""
    from avatarsdk.bench import fidelity as fd  # local: as above

    res = {}
    expressions = tuple(fd.EXPRESSIONS)
    for i, light, expressive in [(0, "soft", False), (1, "coloured", True), (1, "dim", False)]:
        seed = int(np.random.SeedSequence([0, i]).generate_state(1)[0] & 0x7FFFFFFF)
        case = fd.make_case(seed, expression=expressions[i % len(expressions)] if expressive else None,
                            light=light, yaw_deg=fd._golden_yaw(i), size=1024)
        for key in ("photo", "skin_mask", "vertices_neutral", "vertices_posed", "albedo"):
            res[f"{i}_{light}_{key}"] = np.asarray(getattr(case, key))
    np.savez(out, **res)


def compare(a: str, b: str) -> None:
    """Print, per array, whether the two files hold the same bytes and the largest difference."""
    x, y = np.load(a), np.load(b)
    for key in sorted(set(x) | set(y)):
        if key not in x or key not in y:
            print(f"{key}: only in one file")
            continue
        same = x[key].shape == y[key].shape and np.array_equal(x[key], y[key])
        diff = np.abs(x[key].astype(np.float64) - y[key]).max() if x[key].shape == y[key].shape else float("nan")
        print(f"{key}: {x[key].dtype}{list(x[key].shape)} {'identical' if same else 'differs'}, max |d| {diff:.3g}")


def create_diff(a: str, b: str) -> None:
    """Compare two ``avatarsdk create`` output folders: bytes, glb names, vertices, morph targets, textures."""
    import pygltflib as gl  # local: as above

    from avatarsdk.exporters.gltf_read import load_glb  # local: as above

    da, db = Path(a), Path(b)
    for name in sorted({p.name for p in da.iterdir()} | {p.name for p in db.iterdir()}):
        if not (da / name).exists() or not (db / name).exists():
            print(f"{name}: only in {da if (da / name).exists() else db}")
            continue
        same = (da / name).read_bytes() == (db / name).read_bytes()
        print(f"{name}: {'byte-identical' if same else 'differs'} ({(da / name).stat().st_size} / "
              f"{(db / name).stat().st_size} bytes)")
    ga, gb = (load_glb((d / "avatar.glb").read_bytes()) for d in (da, db))
    print(f"primitives {len(ga.primitives)} / {len(gb.primitives)}; morph targets {len(ga.target_names)} / "
          f"{len(gb.target_names)}, same names: {ga.target_names == gb.target_names}")
    for pa, pb in zip(ga.primitives, gb.primitives):
        line = [f"{pa.material}/{pb.material}", f"vertices {len(pa.positions)}/{len(pb.positions)}"]
        if pa.positions.shape == pb.positions.shape:
            line.append(f"max |dv| {np.abs(pa.positions - pb.positions).max() * 1000:.6f} mm")
            if len(pa.targets) and pa.targets.shape == pb.targets.shape:
                line.append(f"max |d target| {np.abs(pa.targets - pb.targets).max() * 1000:.6f} mm")
        for key in ("texture", "normal_texture", "occlusion"):
            ta, tb = getattr(pa, key), getattr(pb, key)
            if ta is None and tb is None:
                continue
            if ta is None or tb is None or ta.shape != tb.shape:
                line.append(f"{key} {None if ta is None else ta.shape} / {None if tb is None else tb.shape}")
                continue
            d = np.abs(ta.astype(int) - tb.astype(int))
            line.append(f"{key} max |d| {d.max()}/255 ({np.mean(d > 0) * 100:.2f}% of values)")
        print("  " + "; ".join(line))
    ja, jb = (gl.GLTF2.load_from_bytes((d / "avatar.glb").read_bytes()) for d in (da, db))
    print("scenes", [s.name for s in ja.scenes], [s.name for s in jb.scenes])
    print("images", [i.name for i in ja.images], [i.name for i in jb.images])


def _glb_chunks(data: bytes) -> tuple[dict, bytes]:
    """(JSON, binary chunk) of a .glb."""
    n = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20:20 + n]), data[20 + n:]


def reexport(folder: str) -> None:
    """Export a ``create`` folder's avatar.avatar as ``create`` does (no hair) and compare with its files."""
    from avatarsdk.avatarfile import load_avatar  # local: as above
    from avatarsdk.exporters.gltf import to_glb  # local: as above
    from avatarsdk.exporters.gltf_read import avatar_mesh  # local: as above
    from avatarsdk.files import png_bytes  # local: as above
    from avatarsdk.photo import load_photo  # local: as above
    from avatarsdk.preview import side_by_side  # local: as above

    d = Path(folder)
    avatar = load_avatar(d / "avatar.avatar")
    glb = to_glb(avatar)
    turns = avatar.meta.get("fit", {}).get("photo_turned_deg", 0) // 90
    image = load_photo(Path(__file__).resolve().parents[1] / "examples" / "astronaut.png")
    preview = png_bytes(np.ascontiguousarray(side_by_side(np.ascontiguousarray(np.rot90(image.image, turns)),
                                                          avatar_mesh(avatar, targets=False))))
    old_glb = (d / "avatar.glb").read_bytes()
    print("preview.png byte-identical:", preview == (d / "preview.png").read_bytes())
    print("avatar.glb byte-identical:", glb == old_glb)
    (ja, ba), (jb, bb) = _glb_chunks(old_glb), _glb_chunks(glb)
    print("binary chunk identical:", ba == bb)
    print("scenes:", ja.get("scenes"), "->", jb.get("scenes"))
    ja.pop("scenes", None), jb.pop("scenes", None)
    print("JSON identical apart from the scenes:", ja == jb)


def counts(root: str) -> None:
    """In-function imports (as tests/test_architecture.py counts them), the 10 largest files, head renderers
    (functions that call rasterize and SH shading themselves) and Camera classes, as JSON."""
    base = Path(root)
    files = [p for folder in ("avatarsdk", "rigs", "exporters") for p in sorted((base / folder).rglob("*.py"))]
    inside = module = 0
    sizes, renderers, cameras = [], [], []
    for path in files:
        text = path.read_text()
        rel = str(path.relative_to(base))
        sizes.append((text.count("\n"), rel))
        tree = ast.parse(text)
        stack = [(tree, False)]
        while stack:
            node, in_function = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    inside, module = inside + in_function, module + (not in_function)
                stack.append((child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.Lambda))))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and re.fullmatch(r"_?Camera", node.name):
                cameras.append(f"{rel}:{node.lineno}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                called = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", None)
                          for c in ast.walk(node) if isinstance(c, ast.Call)}
                if "rasterize" in called and {"sh_shading", "lambert"} & called:
                    renderers.append(f"{rel}:{node.name}")
    print(json.dumps({"imports_in_functions": inside, "imports_at_module_level": module,
                      "largest": sorted(sizes, reverse=True)[:10], "rasterize_and_shade": renderers,
                      "camera_classes": cameras}, indent=1))


def fidelity_diff(a: str, b: str) -> None:
    """Every leaf of two ``bench fidelity`` JSON files compared; timings listed apart from the numbers."""
    timing_keys = {"seconds", "case_seconds", "seconds_per_case"}
    leaves, numbers, timings = 0, [], []

    def walk(x, y, path):
        nonlocal leaves
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if k not in x or k not in y:
                    numbers.append((f"{path}/{k}", "only in one file", ""))
                else:
                    walk(x[k], y[k], f"{path}/{k}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        else:
            leaves += 1
            if x != y:
                (timings if path.rsplit("/", 1)[-1] in timing_keys else numbers).append((path, x, y))

    walk(json.loads(Path(a).read_text()), json.loads(Path(b).read_text()), "")
    print(json.dumps({"leaves": leaves, "timings_differ": len(timings), "numbers_differ": len(numbers),
                      "numbers": [{"path": p, "a": x, "b": y, "relative": (abs(x - y) / max(abs(x), abs(y)))
                                   if isinstance(x, float) and isinstance(y, float) else None}
                                  for p, x, y in numbers]}, indent=1))


def refine(out: str) -> None:
    """The two refinements of the fidelity benchmark on its first case (seed 0, identity 0, soft light,
    neutral, 512 px), 12 steps at 128 px: geometry, albedo and the reconstructions (``OUT_<method>.npz``)."""
    from avatarsdk.bench.fidelity import albedo_l1, geometry_error, make_case
    from avatarsdk.refine import RefineConfig
    try:
        from avatarsdk.bench.methods import benchmark_methods
    except ImportError:  # before the refactor the method table lived in the pipeline
        from avatarsdk.pipeline import benchmark_methods

    case_seed = int(np.random.SeedSequence([0, 0]).generate_state(1)[0] & 0x7FFFFFFF)  # as fidelity.run
    yaw = float(45.0 * (2.0 * (0.5 % 1.0) - 1.0))
    case = make_case(case_seed, light="soft", yaw_deg=yaw, size=512)
    methods = benchmark_methods(refine_options=RefineConfig(steps=12, schedule=((128, 1.0),)))
    result = {}
    for name in ("ours_refine", "ours_refine_mean"):
        r = methods[name](case.photo)
        result[name] = {"geom_mm": geometry_error(case.vertices_neutral, r.vertices),
                        "albedo_l1": albedo_l1(case.albedo, r.albedo)}
        np.savez(f"{out}_{name}.npz", vertices=r.vertices, albedo=np.asarray(r.albedo))
    Path(f"{out}.json").write_text(json.dumps(result))
    print(json.dumps(result))


def main(argv: list[str]) -> int:
    commands = {"renders": renders, "cases": cases, "compare": compare, "create-diff": create_diff,
                "reexport": reexport, "counts": counts, "fidelity-diff": fidelity_diff, "refine": refine}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    commands[argv[0]](*argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
