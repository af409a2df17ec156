"""The ``avatarsdk`` command line: the imperative shell around the pipeline.

Every failure the user can cause is an :class:`AvatarError`; it is printed as
one line on stderr and the exit code is 2. Files are written atomically.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from avatarsdk import __version__
from avatarsdk.errors import AvatarError

app = typer.Typer(
    name="avatarsdk",
    help="Normalized 3D head avatars on the ICT-FaceKit rig, exported for game engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ict_app = typer.Typer(help="Manage the ICT-FaceKit model data (MIT).", no_args_is_help=True)
app.add_typer(ict_app, name="ict")
bench_app = typer.Typer(help="Quality benchmarks with exact synthetic ground truth.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

err = Console(stderr=True)

IctDir = Annotated[
    Optional[Path],
    typer.Option("--ict-dir", envvar="AVATARSDK_ICT_DIR", help="Folder with the ICT-FaceKit files.",
                 file_okay=False),
]


def _fails_cleanly(fn):
    """Turn AvatarError into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AvatarError as e:
            err.print(f"[bold red]error:[/] {type(e).__name__}: {e}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _spinner(text: str) -> Progress:
    p = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True)
    p.add_task(text, total=None)
    return p


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if version:
        typer.echo(f"avatarsdk {__version__}")
        raise typer.Exit(0)


@app.command("random")
@_fails_cleanly
def random_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .glb path.", dir_okay=False)],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same head).")] = 0,
    scale: Annotated[float, typer.Option(help="Identity scale: 0 = mean head, >2 caricature.")] = 1.0,
    names: Annotated[str, typer.Option(help="Blendshape names: arkit (52) or ict (53).")] = "arkit",
    texture_size: Annotated[int, typer.Option(help="Skin texture size in pixels.")] = 1024,
    ict_dir: IctDir = None,
) -> None:
    """Write a random ICT identity with a plain skin-tone albedo as a rigged .glb."""
    from avatarsdk.exporters.gltf import to_glb
    from avatarsdk.io import atomic_write_bytes
    from avatarsdk.pipeline import random_avatar

    with _spinner("building head"):
        avatar = random_avatar(seed, identity_scale=scale, names=names, texture_size=texture_size, ict_dir=ict_dir)
        data = to_glb(avatar)
    atomic_write_bytes(output, data)
    typer.echo(f"wrote {output} ({len(data) / 1e6:.1f} MB, {len(avatar.rig.blendshape_names)} blendshapes)")


@app.command("create")
@_fails_cleanly
def create_cmd(
    photo: Annotated[Path, typer.Argument(help="A photo with one face (JPEG, PNG, ...).", dir_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.", file_okay=False)],
    texture_size: Annotated[int, typer.Option(help="Skin albedo size in pixels.")] = 1024,
    refuse_multiple: Annotated[bool, typer.Option(help="Fail if the photo has several faces.")] = False,
    names: Annotated[str, typer.Option(help="Blendshape names: arkit (52) or ict (53).")] = "arkit",
    ict_dir: IctDir = None,
) -> None:
    """Build a neutral, de-lit, rigged avatar from a photo: avatar.glb, preview.png, fit.json."""
    import time

    import numpy as np

    from avatarsdk.exporters.gltf import to_glb
    from avatarsdk.exporters.gltf_read import load_glb
    from avatarsdk.io import atomic_write_bytes, png_bytes
    from avatarsdk.photo import load_photo
    from avatarsdk.pipeline import create
    from avatarsdk.preview import side_by_side

    t0 = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as p:
        task = p.add_task("reading photo", total=1.0)
        image = load_photo(photo)
        avatar = create(image, texture_size=texture_size, refuse_multiple=refuse_multiple, names=names,
                        ict_dir=ict_dir, progress=lambda stage, frac: p.update(task, description=stage,
                                                                                completed=frac))
        p.update(task, description="exporting", completed=1.0)
        t1 = time.perf_counter()
        glb = to_glb(avatar)
        preview = side_by_side(image.image, load_glb(glb))
        timings = dict(avatar.meta["timings_s"])
        timings["export"] = round(time.perf_counter() - t1, 3)
        timings["total"] = round(time.perf_counter() - t0, 3)
        report = {k: v for k, v in avatar.meta.items() if k != "timings_s"} | {"timings_s": timings}
    # Everything is in memory: only now touch the output folder, each file atomically.
    atomic_write_bytes(output / "avatar.glb", glb)
    atomic_write_bytes(output / "preview.png", png_bytes(np.ascontiguousarray(preview)))
    atomic_write_bytes(output / "fit.json", json.dumps(report, indent=2).encode())
    typer.echo(f"wrote {output}/avatar.glb, preview.png, fit.json in {timings['total']:.1f} s")


@app.command("info")
@_fails_cleanly
def info_cmd(
    file: Annotated[Path, typer.Argument(help="A .glb file.", exists=True, dir_okay=False, readable=True)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe a .glb: vertices, parts/materials, morph targets, joints, textures."""
    from avatarsdk.exporters.gltf_read import read_glb_summary

    s = read_glb_summary(file.read_bytes())
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    typer.echo(f"{file}: {s['vertices']} vertices, {s['triangles']} triangles, {s['bytes'] / 1e6:.1f} MB "
               f"({s['generator'] or 'unknown generator'})")
    for p in s["primitives"]:
        typer.echo(f"  {p['material'] or '(no material)':<10} {p['vertices']:>6} v {p['triangles']:>6} t "
                   f"{p['morph_targets']:>3} morphs")
    typer.echo(f"  morph targets ({len(s['morph_targets'])}): {', '.join(s['morph_targets'])}")
    typer.echo(f"  joints ({len(s['joints'])}): {', '.join(s['joints'])}")
    typer.echo("  textures: " + (", ".join(f"{t['width']}x{t['height']}" for t in s["textures"]) or "none"))


@app.command("render")
@_fails_cleanly
def render_cmd(
    file: Annotated[Path, typer.Argument(help="A .glb file.", exists=True, dir_okay=False, readable=True)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .png path.", dir_okay=False)],
    pose: Annotated[Optional[str], typer.Option(help="Blendshape weights, e.g. jawOpen=1,eyeBlinkLeft=1.")] = None,
    size: Annotated[int, typer.Option(help="Pixel size of each view.")] = 512,
) -> None:
    """Render front, three-quarter and side views of a .glb to a PNG."""
    from avatarsdk.exporters.gltf_read import load_glb
    from avatarsdk.io import atomic_write_bytes, png_bytes
    from avatarsdk.preview import parse_pose, render_views

    weights = parse_pose(pose)
    with _spinner("rendering"):
        image = render_views(load_glb(file.read_bytes()), weights=weights, size=size)
    atomic_write_bytes(output, png_bytes(image))
    typer.echo(f"wrote {output} ({image.shape[1]}x{image.shape[0]})")


@ict_app.command("where")
@_fails_cleanly
def ict_where(ict_dir: IctDir = None) -> None:
    """Print where the ICT-FaceKit data is found and its checksum."""
    from avatarsdk.rigs.ict import load_data, locate

    root = locate(ict_dir)
    data = load_data(ict_dir)
    typer.echo(f"{root}\nsha256 {data.source_sha256}")


@ict_app.command("fetch")
@_fails_cleanly
def ict_fetch(
    dest: Annotated[Optional[Path], typer.Option(help="Target folder (default: the user data folder).")] = None,
    url: Annotated[Optional[str], typer.Option(help="Archive URL of the public ICT-FaceKit repository.")] = None,
) -> None:
    """Download ICT-FaceKit (MIT) from its public repository."""
    from avatarsdk.rigs.ict import ICT_ARCHIVE_URL, fetch

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err) as p:
        task = p.add_task("ICT-FaceKit", total=None)
        path = fetch(dest, url=url or ICT_ARCHIVE_URL, progress=lambda done, total: p.update(task, completed=done,
                                                                                              total=total))
    typer.echo(f"ICT-FaceKit is in {path}")


@bench_app.command("fidelity")
@_fails_cleanly
def bench_fidelity(
    n: Annotated[int, typer.Option(help="Identities (each: 5 lights x neutral/expressive photos).")] = 20,
    seed: Annotated[int, typer.Option(help="Benchmark seed.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for fidelity.json and fidelity.md.",
                                         file_okay=False)] = Path("out/bench"),
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated subset of the methods.")] = None,
    photos: Annotated[bool, typer.Option(help="Also write the synthetic photos.")] = False,
    size: Annotated[int, typer.Option(help="Photo side in pixels (128-2048).")] = 1024,
) -> None:
    """Reconstruct synthetic photos with exact ground truth; compare methods (geometry mm, albedo L1)."""
    from avatarsdk.bench.fidelity import run_cli
    from avatarsdk.errors import InputError
    from avatarsdk.pipeline import benchmark_methods

    if not 128 <= size <= 2048:
        raise InputError(f"--size must be in [128, 2048], got {size}")
    available = benchmark_methods()
    chosen = available
    if methods:
        names = [m.strip() for m in methods.split(",")]
        unknown = [m for m in names if m not in available]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(available)}")
        chosen = {m: available[m] for m in names}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err) as p:
        task = p.add_task("fidelity", total=None)
        result = run_cli(n, seed, output, methods=chosen, photos=photos, size=size,
                         progress=lambda done, total, label: p.update(task, completed=done, total=total,
                                                                      description=label[:40]))
    from avatarsdk.bench.fidelity import to_markdown

    typer.echo(to_markdown(result))


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
