"""The ``avatarsdk`` command line: the imperative shell around the pipeline.

Every failure the user can cause is an :class:`AvatarError`; it is printed as
one line on stderr and the exit code is 2. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shlex
import sys
import time
import webbrowser
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from avatarsdk import __version__, pretrained
from avatarsdk.batch import BatchOptions, photo_jobs, random_jobs, run_batch
from avatarsdk.bench.fidelity import DEFAULT_LIGHTS, run_cli, to_markdown
from avatarsdk.bench.methods import select_methods
from typer._click import exceptions as click_errors  # typer 0.29 vendors click; pinned in pyproject.toml
from avatarsdk.errors import AvatarError, InputError
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import avatar_mesh, load_glb, read_glb_summary
from avatarsdk.exporters.package import export_package
from avatarsdk.exporters.presets import PRESETS, get_preset
from avatarsdk.hair import check_hair_option, choose_hair, hair_for, with_hair
from avatarsdk.files import atomic_write_bytes, check_output_dir, png_bytes
from avatarsdk.licensing import resolve
from avatarsdk.scene import LIGHTS, OCCLUDERS
from avatarsdk.nn.checkpoint import load
from avatarsdk.nn.stylegan import GeneratorConfig
from avatarsdk.photo import load_photo
from avatarsdk.pipeline import create, generated_avatar, random_avatar
from avatarsdk.preview import DEFAULT_VIEWS, gif_bytes, parse_pose, render_views, side_by_side, turntable_views
from avatarsdk.refine import RefineConfig
from avatarsdk.rigs.ict import ICT_ARCHIVE_URL, fetch, load_data, locate, write_pack
from avatarsdk.avatarfile import SUFFIX, load_avatar, save_avatar
from avatarsdk.sizes import MIN_TEXTURE_SIZE, PHOTO_MIN_TEXTURE_SIZE, check_texture_size
from avatarsdk.train.bootstrap import invert_photos
from avatarsdk.train.data import DataConfig, build_dataset
from avatarsdk.train.gan import TrainConfig, train_gan
from avatarsdk.train.regressor import PairConfig, RegressorTrainConfig, build_pairs, train_regressor
from avatarsdk.viewer import ViewerServer


class _OneLineUsageErrors(typer.core.TyperGroup):
    """Print click's usage errors (unknown option, missing argument, bad value) as one line, exit 2.

    Typer's default is a multi-line rich box; the README promises one line naming
    the error type, like every other user error.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as e:  # a bare group: its help, as click prints it
            e.show()
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            hint = ""
            if isinstance(e, click_errors.UsageError) and e.ctx is not None:
                hint = f" (see '{e.ctx.command_path} --help')"
            message = " ".join(e.format_message().split())
            err.print(f"[bold red]error:[/] {type(e).__name__}: {escape(message)}{escape(hint)}", highlight=False,
                      soft_wrap=True)
            sys.exit(2 if isinstance(e, click_errors.UsageError) else e.exit_code)
        except typer.Abort:
            err.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
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
data_app = typer.Typer(help="Training data for the paper's networks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train the paper's networks (CPU or CUDA).", no_args_is_help=True)
app.add_typer(train_app, name="train")

err = Console(stderr=True)

IctDir = Annotated[
    Optional[Path],
    typer.Option("--ict-dir", envvar="AVATARSDK_ICT_DIR", help="Folder with the ICT-FaceKit files.",
                 file_okay=False),
]


def _fail(e: AvatarError) -> typer.Exit:
    """Print ``e`` as one stderr line; return the exit (code 2) to raise."""
    # One line, whatever the width, and the message as text: a path may hold "[red]".
    err.print(f"[bold red]error:[/] {type(e).__name__}: {escape(str(e))}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _fails_cleanly(fn):
    """Turn AvatarError into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AvatarError as e:
            raise _fail(e) from None

    return wrapper


def _texture_size(minimum: int):
    """Option callback: check ``--texture-size`` while the command line is parsed (exit 2 before any work)."""

    def check(value: int) -> int:
        try:
            return check_texture_size(value, minimum=minimum, name="--texture-size")
        except InputError as e:
            raise _fail(e) from None

    return check


_PRESET_HELP = "Target: " + ", ".join(PRESETS) + " (see the README's preset table)."


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
    source: Annotated[str, typer.Option(help="gan: sample the UV StyleGAN2 (geometry and albedo); "
                                             "ict: ICT's linear identity model with a plain skin tone.")] = "gan",
    truncation: Annotated[float, typer.Option(help="gan: truncation psi (1 = full variety, 0 = average head).")] = 0.7,
    generator: Annotated[Optional[Path], typer.Option(help="gan: generator checkpoint (default: the shipped one).",
                                                      dir_okay=False)] = None,
    scale: Annotated[float, typer.Option(help="ict: identity scale: 0 = mean head, >2 caricature.")] = 1.0,
    names: Annotated[str, typer.Option(help="Blendshape names: arkit (52) or ict (53).")] = "arkit",
    texture_size: Annotated[int, typer.Option(help="Skin texture size in pixels (power of two, 64-4096).",
                                              callback=_texture_size(MIN_TEXTURE_SIZE))] = 1024,
    hair: Annotated[str, typer.Option(help="none (bald, as before), random (seeded style and colour) or a "
                                           "style name (see `avatarsdk.hair.STYLES`).")] = "none",
    ict_dir: IctDir = None,
) -> None:
    """Write a random head (an NPC identity) as a rigged .glb, and the saved avatar (.avatar) beside it."""
    check_output_dir(output.parent)
    if source not in ("gan", "ict"):
        raise InputError(f"--source must be gan or ict, got {source!r}")
    _check_hair(hair, allow_auto=False)
    saved_path = output.with_suffix(SUFFIX)
    if saved_path == output:
        raise InputError(f"--output must not end in {SUFFIX}: the saved avatar is written beside the .glb")
    with _spinner("building head"):
        if source == "gan":
            avatar = generated_avatar(seed, truncation_psi=truncation, names=names, texture_size=texture_size,
                                      generator=generator, ict_dir=ict_dir)
        else:
            avatar = random_avatar(seed, identity_scale=scale, names=names, texture_size=texture_size,
                                   ict_dir=ict_dir)
        avatar, grown = _apply_hair(avatar, hair, seed)
        data = to_glb(avatar, **_hair_glb(grown))
        saved = save_avatar(avatar)
    atomic_write_bytes(output, data)
    atomic_write_bytes(saved_path, saved)
    typer.echo(f"wrote {output} ({len(data) / 1e6:.1f} MB, {len(avatar.rig.blendshape_names)} blendshapes) "
               f"and {saved_path}")


def _apply_hair(avatar, spec: str, seed: int, *, photo=None):
    """(avatar with hair recorded and scalp tinted, its Hair) for a --hair value; (avatar, None) for none."""
    if spec == "none":
        return avatar, None

    if spec == "auto":  # create(hair="auto") grew it from the photo already (or left the head bald)
        if photo is None:
            raise InputError("--hair auto needs a photo; use random, none or a style name")
        return avatar, hair_for(avatar)
    style, colour = choose_hair(spec, seed)
    avatar = with_hair(avatar, style, colour, seed)
    return avatar, hair_for(avatar)


def _check_hair(spec: str, *, allow_auto: bool) -> None:
    if spec != "none":
        check_hair_option(spec, allow_auto=allow_auto)


def _hair_glb(grown) -> dict:
    return {} if grown is None else {"hair": grown.lods[0], "hair_texture": grown.texture}


@app.command("create")
@_fails_cleanly
def create_cmd(
    photo: Annotated[Path, typer.Argument(help="A photo with one face (JPEG, PNG, ...).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.", file_okay=False)],
    texture_size: Annotated[int, typer.Option(help="Skin albedo size in pixels (power of two, 256-4096).",
                                              callback=_texture_size(PHOTO_MIN_TEXTURE_SIZE))] = 1024,
    refuse_multiple: Annotated[bool, typer.Option(help="Fail if the photo has several faces.")] = False,
    names: Annotated[str, typer.Option(help="Blendshape names: arkit (52) or ict (53).")] = "arkit",
    mode: Annotated[str, typer.Option(help="fit: model fitting and a de-lit unwrap of the photo (default, best "
                                           "measured); infer: identity regressor + generator only (fast, less "
                                           "faithful); refine: fit, then a latent refined against the photo "
                                           "through the generator (the paper's pipeline); a refinement that "
                                           "diverges falls back to the fit, with a warning.")] = "fit",
    init: Annotated[str, typer.Option(help="refine mode: start from the fit inverted into the generator (fit), "
                                           "the regressor's latent (regressor) or the generator's mean latent "
                                           "(mean).")] = "fit",
    refine_steps: Annotated[int, typer.Option(help="refine mode: maximum optimisation steps.")] = 100,
    invert_steps: Annotated[int, typer.Option(help="refine mode, --init fit: steps of the fit's inversion into "
                                                   "the generator.")] = 100,
    device: Annotated[str, typer.Option(help="refine mode: cpu or cuda.")] = "cpu",
    parser: Annotated[Optional[str], typer.Option(help="Face parser for the skin albedo: bisenet (a face-parsing "
                                                       "network; non-commercial weights) or mesh (face-mesh "
                                                       "polygons x person mask). Default: bisenet, mesh in "
                                                       "permissive mode.", show_default=False)] = None,
    permissive: Annotated[bool, typer.Option("--permissive", envvar="AVATARSDK_PERMISSIVE",
                                             help="Use only components whose weights have permissive terms "
                                                  "(see the README's component table); says what it switched "
                                                  "off.")] = False,
    hair: Annotated[str, typer.Option(help="none (bald, as before), auto (style, parameters and colour from the "
                                           "photo's parsed hair; see avatarsdk.hair.photo) or a style name.")] = "none",
    ict_dir: IctDir = None,
) -> None:
    """Build a neutral, de-lit, rigged avatar from a photo: avatar.glb, avatar.avatar, preview.png, fit.json."""
    check_output_dir(output)  # first: a bad location fails before the fit
    choice = resolve(parser, permissive, mode)  # bad --parser / --permissive combinations fail before any work
    if choice.permissive:
        err.print(choice.message(), highlight=False, soft_wrap=True, markup=False)

    _check_hair(hair, allow_auto=True)
    t0 = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as p:
        task = p.add_task("reading photo", total=1.0)
        image = load_photo(photo)

        avatar = create(image, mode=mode, texture_size=texture_size, refuse_multiple=refuse_multiple, names=names,
                        init=init, device=device,
                        refine_options=RefineConfig(steps=refine_steps, invert_steps=invert_steps),
                        parser=parser, permissive=permissive, ict_dir=ict_dir, hair="auto" if hair == "auto" else "none",
                        progress=lambda stage, frac: p.update(task, description=stage,
                                                                                completed=frac))
        p.update(task, description="exporting", completed=1.0)
        t1 = time.perf_counter()
        run_timings = avatar.meta["timings_s"]
        # Seconds differ from run to run: they go to fit.json only, so that avatar.glb and avatar.avatar
        # are byte-identical for the same photo and options.
        avatar = dataclasses.replace(avatar, meta={k: v for k, v in avatar.meta.items() if k != "timings_s"})
        avatar, grown = _apply_hair(avatar, hair, 0, photo=image)
        turns = avatar.meta.get("fit", {}).get("photo_turned_deg", 0) // 90  # the face upright, as fitted
        upright = np.ascontiguousarray(np.rot90(image.image, turns))
        # The glb, the preview and the .avatar are independent and their heavy parts (torch's render, PIL's
        # PNG and zlib's deflate) release the GIL: the preview and the .avatar are made beside the glb, so a
        # second core shares the export. Each texture is still encoded once (files.png_bytes waits for an
        # encoding under way in the other thread).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="avatarsdk-export") as pool:
            # deflate level 1: ~0.7 s less, ~2% larger, same content
            saving = pool.submit(save_avatar, avatar, compresslevel=1)
            # the glb's primitives (hair included), not re-parsed
            previewing = pool.submit(lambda: side_by_side(upright, avatar_mesh(avatar, targets=False,
                                                                               **_hair_glb(grown))))
            glb = to_glb(avatar, **_hair_glb(grown))
            preview = previewing.result()
            saved = saving.result()
        timings = dict(run_timings)
        timings["export"] = round(time.perf_counter() - t1, 3)  # glb, preview and .avatar
        timings["total"] = round(time.perf_counter() - t0, 3)
        report = {k: v for k, v in avatar.meta.items() if k != "timings_s"} | {"timings_s": timings}
    # Everything is in memory: only now touch the output folder, each file atomically.
    atomic_write_bytes(output / "avatar.glb", glb)
    atomic_write_bytes(output / "avatar.avatar", saved)
    atomic_write_bytes(output / "preview.png", png_bytes(np.ascontiguousarray(preview)))
    atomic_write_bytes(output / "fit.json", json.dumps(report, indent=2).encode())
    typer.echo(f"wrote {output}/avatar.glb, avatar.avatar, preview.png, fit.json in {timings['total']:.1f} s")


@app.command("export")
@_fails_cleanly
def export_cmd(
    avatar: Annotated[Path, typer.Argument(help="A saved avatar (.avatar) written by `create` or `random`.",
                                           dir_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Package folder to create.", file_okay=False)],
    preset: Annotated[Optional[str], typer.Option(help=_PRESET_HELP, show_default=False)] = None,
    unreal: Annotated[bool, typer.Option("--unreal", help="Same as --preset unreal. " + PRESETS["unreal"].help)] = False,
    unity: Annotated[bool, typer.Option("--unity", help="Same as --preset unity. " + PRESETS["unity"].help)] = False,
    gltf: Annotated[bool, typer.Option("--gltf", help="Same as --preset gltf. " + PRESETS["gltf"].help)] = False,
    fbx: Annotated[bool, typer.Option("--fbx", help="Same as --preset fbx. " + PRESETS["fbx"].help)] = False,
    make_zip: Annotated[bool, typer.Option("--zip", help="Also write OUTPUT.zip holding the folder.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing package folder (and .zip).")] = False,
    name: Annotated[Optional[str], typer.Option(help="File stem of the model and textures (default: the "
                                                     "folder's name).")] = None,
    preview_size: Annotated[int, typer.Option(help="Pixel size of each preview view.")] = 512,
    lods: Annotated[Optional[bool], typer.Option("--lods/--no-lods", help="Add levels of detail LOD0-2 (full, ~50%, "
                                                 "~21% of the triangles; default: the preset's, on for unreal "
                                                 "and unity).", show_default=False)] = None,
    visemes: Annotated[Optional[bool], typer.Option("--visemes/--no-visemes", help="Add the 15 Oculus visemes as "
                                                    "morph targets viseme_sil ... (default: the preset's; rpm "
                                                    "always has them).", show_default=False)] = None,
    compress: Annotated[str, typer.Option(help="Mesh compression of the .glb files: none, or meshopt "
                                               "(EXT_meshopt_compression via gltfpack; readers need a meshopt "
                                               "decoder).")] = "none",
) -> None:
    """Package a saved avatar for a game engine: model, textures, manifest.json, preview.png, IMPORT.md.

    Reads only the .avatar file: no network or fitting runs again. FBX needs Blender's
    Python module (`make setup-fbx`, or AVATARSDK_BPY_PYTHON).
    """
    # --unreal, --unity, --gltf and --fbx are aliases of --preset NAME.
    flags = {"--unreal": unreal, "--unity": unity, "--gltf": gltf, "--fbx": fbx}
    chosen = ([preset] if preset is not None else []) + [p.name for p in PRESETS.values() if flags.get(p.flag)]
    if len(set(chosen)) != 1:
        raise InputError(f"choose exactly one of --preset {{{','.join(PRESETS)}}}, {', '.join(flags)} "
                         f"(got {len(chosen)})")
    get_preset(chosen[0])
    check_output_dir(output, what="package folder")

    loaded = load_avatar(avatar)
    source = {"file": avatar.name, "sha256": hashlib.sha256(avatar.read_bytes()).hexdigest()}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as p:
        task = p.add_task("packaging", total=1.0)

        pkg = export_package(loaded, chosen[0], output, name=name, make_zip=make_zip, overwrite=overwrite,
                             hair=hair_for(loaded),
                             preview_size=preview_size, source=source, lods=lods, visemes=visemes,
                             compress=compress, progress=lambda step, frac: p.update(task, description=step, completed=frac))
    files = ", ".join(sorted(pkg.manifest["files"]))
    extra = f" and {pkg.zip_path}" if pkg.zip_path else ""
    typer.echo(f"wrote {pkg.path}{extra} ({chosen[0]}) in {pkg.seconds['total']:.1f} s: {files}")


@app.command("batch")
@_fails_cleanly
def batch_cmd(
    photos: Annotated[Optional[Path], typer.Argument(help="Folder of photos (searched recursively); or use "
                                                          "--random.", file_okay=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder: one package folder per head, "
                                                                "summary.json, summary.csv.", file_okay=False)] = ...,
    random_count: Annotated[Optional[int], typer.Option("--random", help="Make this many random heads instead "
                                                                         "of reading photos.")] = None,
    seed: Annotated[int, typer.Option(help="--random: first seed; head i is `avatarsdk random --seed SEED+i`.")] = 0,
    source: Annotated[str, typer.Option(help="--random: gan (UV StyleGAN2) or ict (ICT's linear model).")] = "gan",
    workers: Annotated[Optional[int], typer.Option(help="Jobs at once (worker processes, one CPU thread each; or "
                                                        "Ray tasks). Default: the CPUs this process may use.")] = None,
    preset: Annotated[str, typer.Option(help=_PRESET_HELP + " FBX needs `make setup-fbx`.")] = "gltf",
    mode: Annotated[str, typer.Option(help="Photos: fit, infer or refine (see `create --help`).")] = "fit",
    texture_size: Annotated[int, typer.Option(help="Skin texture size in pixels (power of two, 64-4096; photos: "
                                                   ">= 256).", callback=_texture_size(MIN_TEXTURE_SIZE))] = 1024,
    preview_size: Annotated[int, typer.Option(help="Pixel size of each package preview view (0: no "
                                                   "preview.png, faster).")] = 256,
    names: Annotated[str, typer.Option(help="Blendshape names: arkit (52) or ict (53).")] = "arkit",
    truncation: Annotated[float, typer.Option(help="--source gan: truncation psi.")] = 0.7,
    scale: Annotated[float, typer.Option(help="--source ict: identity scale.")] = 1.0,
    hair: Annotated[str, typer.Option(help="--random: none (bald), random (seeded style and colour per head) or "
                                           "a style name.")] = "none",
    timeout: Annotated[float, typer.Option(help="Seconds one head may take before it is killed and recorded as "
                                                "a timeout (0: no limit).")] = 600.0,
    backend: Annotated[str, typer.Option(help="local (worker processes) or ray.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="--backend ray: cluster address (default: start Ray "
                                                             "locally).")] = None,
) -> None:
    """Build many heads into engine packages, resumably: OUT/<name>/ per head (package + .avatar).

    A finished head's folder is skipped on a re-run; a head that fails (no face,
    unreadable image, timeout, ...) is recorded in OUT/summary.json and .csv and
    the batch goes on. Exit code 0 when every head is ok (or skipped), 1 when some
    failed or timed out, 2 on a usage error.
    """
    check_output_dir(output)  # first (run_batch checks again, for library callers)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if (photos is None) == (random_count is None):
        raise InputError("give either a PHOTOS folder or --random COUNT (not both)")
    if photos is not None:  # photo modes need more texels than generated heads
        check_texture_size(texture_size, minimum=PHOTO_MIN_TEXTURE_SIZE, name="--texture-size (photos)")
    get_preset(preset)
    jobs = random_jobs(random_count, seed, source) if random_count is not None else photo_jobs(photos)
    options = BatchOptions(preset=preset, mode=mode, source=source, texture_size=texture_size,
                           preview_size=preview_size, names=names, truncation=truncation, identity_scale=scale,
                           hair=hair)
    _check_hair(hair, allow_auto=False)
    bad = {"failed": 0, "timeout": 0}
    # The bar starts only once run_batch has accepted OUT (a refused batch prints just its error line).
    p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                 TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    task = p.add_task("heads", total=len(jobs))

    def progress(result, done, total):
        if result.status in bad:
            bad[result.status] += 1
            p.console.print(f"[yellow]{result.status}:[/] {result.input}: {result.error_type}: {result.error}",
                            highlight=False)
        p.update(task, completed=done, description=f"heads ({bad['failed']} failed, {bad['timeout']} "
                                                   f"timed out)")

    started = []

    def start(total):
        started.append(total)
        p.start()

    try:
        summary = run_batch(jobs, output, options, workers=workers, timeout=timeout, backend=backend,
                            ray_address=ray_address, progress=progress, on_start=start)
    finally:
        if started:  # a Progress that never started would still print an empty line on stop
            p.stop()
    c = summary.counts
    built = c["ok"]
    rate = f", {60 * built / summary.seconds:.1f} heads/min" if built and summary.seconds > 0 else ""
    typer.echo(f"{output}: {c['ok']} built, {c['skipped']} already there, {c['failed']} failed, {c['timeout']} "
               f"timed out in {summary.seconds:.1f} s{rate}; see {output / 'summary.json'}")
    if not summary.all_ok:
        raise typer.Exit(1)


@app.command("info")
@_fails_cleanly
def info_cmd(
    file: Annotated[Path, typer.Argument(help="A .glb file.", exists=True, dir_okay=False, readable=True)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe a .glb: vertices, parts/materials, morph targets, joints, textures."""
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
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .png path (.gif too with --turntable).",
                                         dir_okay=False)],
    pose: Annotated[Optional[str], typer.Option(help="Blendshape weights, e.g. jawOpen=1,eyeBlinkLeft=1.")] = None,
    size: Annotated[int, typer.Option(help="Pixel size of each view.")] = 512,
    turntable: Annotated[Optional[int], typer.Option(help="Render N views around the head (yaw 0..360) "
                                                          "instead: a PNG strip, or a GIF if -o ends in .gif.")] = None,
    frame_ms: Annotated[int, typer.Option(help="Turntable GIF: milliseconds per frame.")] = 80,
) -> None:
    """Render front, three-quarter and side views of a .glb to a PNG (or a turntable strip / GIF)."""
    weights = parse_pose(pose)
    views, as_gif = DEFAULT_VIEWS, False
    if turntable is not None:
        views = turntable_views(turntable)
        suffix = output.suffix.lower()
        if suffix not in (".png", ".gif"):
            raise InputError(f"--turntable writes .png or .gif, got {output.name!r}")
        as_gif = suffix == ".gif"
    with _spinner("rendering"):
        image = render_views(load_glb(file.read_bytes()), weights=weights, views=views, size=size)
        data = gif_bytes(image, len(views), frame_ms=frame_ms) if as_gif else png_bytes(image)
    atomic_write_bytes(output, data)
    shape = f"{size}x{size}, {len(views)} frames" if as_gif else f"{image.shape[1]}x{image.shape[0]}"
    typer.echo(f"wrote {output} ({shape})")


@app.command("view")
@_fails_cleanly
def view_cmd(
    file: Annotated[Path, typer.Argument(help="A .glb file.", exists=True, dir_okay=False, readable=True)],
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1 (0: any free port).")] = 0,
    browser: Annotated[bool, typer.Option("--browser/--no-browser", help="Open the page in a web browser.")] = True,
) -> None:
    """Show a .glb in the browser (three.js): orbit, light, one slider per blendshape. Ctrl+C stops."""
    summary = read_glb_summary(file.read_bytes())  # a clear error now rather than in the page
    with ViewerServer(file, port=port) as server:
        typer.echo(f"serving {file.name} ({summary['vertices']} vertices, {len(summary['morph_targets'])} morph "
                   f"targets) at {server.url}  (Ctrl+C stops)")
        if browser:
            webbrowser.open(server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            typer.echo("stopped")


@ict_app.command("where")
@_fails_cleanly
def ict_where(ict_dir: IctDir = None) -> None:
    """Print where the ICT-FaceKit data is found and its checksum."""
    root = locate(ict_dir)
    data = load_data(ict_dir)
    typer.echo(f"{root}\nsha256 {data.source_sha256}")


@ict_app.command("pack")
@_fails_cleanly
def ict_pack(
    output: Annotated[Path, typer.Option("--output", "-o", help="Pack file to write (ict-pack.npz).",
                                         dir_okay=False)],
    ict_dir: IctDir = None,
) -> None:
    """Write the parsed model as a float16 pack (~25 MB) for machines without the OBJs.

    Point AVATARSDK_ICT_DIR (or --ict-dir) at the folder holding the pack to use it there.
    """
    path = write_pack(output, load_data(ict_dir))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@ict_app.command("fetch")
@_fails_cleanly
def ict_fetch(
    dest: Annotated[Optional[Path], typer.Option(help="Target folder (default: the user data folder).")] = None,
    url: Annotated[Optional[str], typer.Option(help="Archive URL of the public ICT-FaceKit repository.")] = None,
) -> None:
    """Download ICT-FaceKit (MIT) from its public repository."""
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
    identity: Annotated[bool, typer.Option(help="Also measure identity similarity (dlib cosine of a render "
                                                 "of the avatar vs the photo).")] = False,
    regressor: Annotated[Optional[Path], typer.Option(help="R checkpoint for ours_infer / ours_refine "
                                                           "(default: the shipped one).", dir_okay=False)] = None,
    parser: Annotated[Optional[str], typer.Option(help="Face parser(s) of the fitted methods, comma-separated: "
                                                       "bisenet, mesh or bisenet,mesh (each method once per "
                                                       "parser, named method[parser]). Default: bisenet, mesh in "
                                                       "permissive mode.", show_default=False)] = None,
    permissive: Annotated[bool, typer.Option("--permissive", envvar="AVATARSDK_PERMISSIVE",
                                             help="Benchmark the permissive mode (only components with "
                                                  "permissive weights).")] = False,
    occluders: Annotated[str, typer.Option(help="Occluded photos per identity, comma-separated kinds of "
                                                "hair, hand, glasses ('none': no occluded photos).")]
    = ",".join(OCCLUDERS),
    lights: Annotated[str, typer.Option(help="Comma-separated light names.")] = ",".join(DEFAULT_LIGHTS),
    fit_cache: Annotated[Optional[Path], typer.Option(help="Keep each photo's fit in this folder; a rerun "
                                                           "re-scores albedo-stage changes without refitting.",
                                                      file_okay=False)] = None,
) -> None:
    """Reconstruct synthetic photos with exact ground truth; compare methods (geometry mm, albedo L1)."""
    if not 128 <= size <= 2048:
        raise InputError(f"--size must be in [128, 2048], got {size}")
    occ = () if occluders.strip() in ("", "none") else tuple(k.strip() for k in occluders.split(","))
    bad = [k for k in occ if k not in OCCLUDERS]
    if bad:
        raise InputError(f"unknown occluder(s) {', '.join(bad)}; choose from {', '.join(OCCLUDERS)} or none")
    light_names = tuple(x.strip() for x in lights.split(","))
    bad = [x for x in light_names if x not in LIGHTS]
    if bad:
        raise InputError(f"unknown light(s) {', '.join(bad)}; choose from {', '.join(LIGHTS)}")
    chosen, choices = select_methods(methods, parser, permissive, regressor=regressor, fit_cache=fit_cache)  # bad combinations: exit 2
    if permissive:
        err.print(choices[0].message(), highlight=False, soft_wrap=True, markup=False)
    config = {"parser": [c.parser for c in choices], "permissive": bool(permissive)}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err) as p:
        task = p.add_task("fidelity", total=None)
        result = run_cli(n, seed, output, methods=chosen, photos=photos, size=size, identity=identity,
                         lights=light_names, occluders=occ, config=config,
                         progress=lambda done, total, label: p.update(task, completed=done, total=total,
                                                                      description=label[:40]))

    typer.echo(to_markdown(result))


def _command_line() -> str:
    """The command as typed, for the records kept next to datasets and weights."""
    return " ".join(shlex.quote(a) for a in ["avatarsdk", *sys.argv[1:]])


@data_app.command("build")
@_fails_cleanly
def data_build(
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder.", file_okay=False)],
    count: Annotated[int, typer.Option(help="Synthetic heads (ICT identity + detail, procedural albedo).")] = 1000,
    resolution: Annotated[int, typer.Option(help="UV map side (power of two).")] = 256,
    seed: Annotated[int, typer.Option(help="Seed (same seed, same shards).")] = 0,
    fitted: Annotated[Optional[list[Path]], typer.Option(help="Fitted avatars to add (avatar.glb, create output "
                                                                 "folders, .npz); repeatable.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (0: in this process).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset folder.")] = False,
    ict_dir: IctDir = None,
) -> None:
    """Build the (albedo, offsets) UV-map training set as checksummed shards with a manifest."""
    cfg = DataConfig(resolution=resolution, count=count, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as p:
        task = p.add_task("data", total=1.0)
        manifest = build_dataset(output, cfg, fitted=fitted or (), workers=workers, overwrite=overwrite,
                                 ict_dir=ict_dir, extra={"command": _command_line()},
                                 progress=lambda stage, f: p.update(task, completed=f, description=stage))
    typer.echo(f"wrote {manifest.get('count', count)} samples at {resolution}x{resolution} to {output}")


@train_app.command("gan")
@_fails_cleanly
def train_gan_cmd(
    data: Annotated[Path, typer.Argument(help="Dataset folder from `avatarsdk data build`.", file_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder.", file_okay=False)],
    w_dim: Annotated[int, typer.Option(help="Latent width (512 in the paper).")] = 512,
    mapping_layers: Annotated[int, typer.Option(help="Mapping network depth (8 in the paper).")] = 8,
    channel_base: Annotated[int, typer.Option(help="Channels at resolution r: min(base / r, max).")] = 32768,
    channel_max: Annotated[int, typer.Option(help="Most channels of any layer.")] = 512,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 32,
    steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (overrides --kimg).")] = None,
    kimg: Annotated[float, typer.Option(help="Thousands of training images to show.")] = 5000.0,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.002,
    r1_gamma: Annotated[float, typer.Option(help="R1 weight.")] = 10.0,
    ema_kimg: Annotated[float, typer.Option(help="Half-life of the exported EMA generator, thousands of "
                                                 "images.")] = 10.0,
    mirror: Annotated[bool, typer.Option(help="Add left-right mirrored heads (mirrored in the head UV).")] = False,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    checkpoint_interval: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 2000,
    log_interval: Annotated[int, typer.Option(help="Steps between stats.jsonl lines.")] = 100,
    resume: Annotated[Optional[Path], typer.Option(help="Checkpoint to continue from.", dir_okay=False)] = None,
    minutes: Annotated[Optional[float], typer.Option(help="Stop (checkpoint and export) after this many minutes; "
                                                          "--resume continues.")] = None,
    init_generator: Annotated[Optional[Path], typer.Option(
        help="Start G from this generator file (e.g. the shipped one; its architecture replaces --w-dim, "
             "--mapping-layers, --channel-base, --channel-max), with fresh discriminators: fine-tuning G0 -> G1.",
        dir_okay=False)] = None,
    d_warmup_steps: Annotated[int, typer.Option(help="Steps at the start in which only the discriminators "
                                                     "train (use with --init-generator).")] = 0,
    fitted_fraction: Annotated[Optional[float], typer.Option(help="Share of each real batch taken from the "
                                                                  "data set's fitted heads (default: uniform).")] = None,
    ict_dir: IctDir = None,
) -> None:
    """Train the UV StyleGAN2 (G and the albedo/position/joint discriminators); export the EMA generator."""
    manifest = json.loads((data / "manifest.json").read_text()) if (data / "manifest.json").is_file() else {}
    resolution = int(manifest.get("resolution", 256))
    gcfg = GeneratorConfig(resolution=resolution, z_dim=w_dim, w_dim=w_dim, mapping_layers=mapping_layers,
                           channel_base=channel_base, channel_max=channel_max)
    if init_generator is not None:
        gcfg = load(init_generator, kind="generator").model.cfg
        if gcfg.resolution != resolution:
            raise InputError(f"{init_generator} makes {gcfg.resolution}x{gcfg.resolution} maps; "
                             f"the data set is {resolution}x{resolution}")
    cfg = TrainConfig(generator=gcfg, batch_size=batch, lr=lr, r1_gamma=r1_gamma, ema_kimg=ema_kimg, mirror=mirror,
                      steps=steps, total_kimg=kimg, seed=seed, device=device,
                      checkpoint_interval=checkpoint_interval, log_interval=log_interval,
                      d_warmup_steps=d_warmup_steps, fitted_fraction=fitted_fraction)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as p:
        task = p.add_task("train", total=1.0)
        result = train_gan(data, output, cfg, resume=resume, command=_command_line(), ict_dir=ict_dir,
                           init_generator=init_generator,
                           time_limit_s=None if minutes is None else minutes * 60,
                           progress=lambda stage, f: p.update(task, completed=f, description=stage))
    typer.echo(f"{result.steps} steps in {result.seconds / 60:.1f} min; generator {result.generator_path} "
               f"(sha256 {result.generator_sha256})")


@data_app.command("pairs")
@_fails_cleanly
def data_pairs(
    output: Annotated[Path, typer.Option("--output", "-o", help="Pair set folder.", file_okay=False)],
    generator: Annotated[Optional[Path], typer.Option(help="Generator checkpoint (default: the shipped one).",
                                                      dir_okay=False)] = None,
    count: Annotated[int, typer.Option(help="Pairs to make (faces the detector misses are skipped).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    inverted: Annotated[Optional[list[Path]], typer.Option(help="(embedding, w) .npz files from inversions of "
                                                                "fitted photos; repeatable.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing pair set.")] = False,
) -> None:
    """Make (identity embedding, w) pairs for the regressor: G's heads rendered with random pose, light and
    expression, embedded by the face-recognition network."""
    G = load(generator or pretrained.locate("generator"), kind="generator").model
    cfg = PairConfig(count=count, seed=seed, inverted=tuple(str(p) for p in inverted or ()))
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as p:
        task = p.add_task("pairs", total=1.0)
        manifest = build_pairs(G, output, cfg, overwrite=overwrite,
                               progress=lambda stage, f: p.update(task, completed=f, description=stage))
    typer.echo(f"wrote {manifest.get('count')} pairs to {output}")


@train_app.command("invert")
@_fails_cleanly
def train_invert_cmd(
    photos: Annotated[list[Path], typer.Argument(help="Photos to fit and invert.", dir_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for inverted.npz, fitted/ and "
                                                                "report.json.", file_okay=False)],
    generator: Annotated[Optional[Path], typer.Option(help="G to invert into (default: the shipped one).",
                                                      dir_okay=False)] = None,
    regressor: Annotated[Optional[Path], typer.Option(help="R for the starting latent (default: the shipped "
                                                           "one).", dir_okay=False)] = None,
    init: Annotated[str, typer.Option(help="regressor (start from R's guess) or mean (G's mean latent).")] =
        "regressor",
    steps: Annotated[int, typer.Option(help="Inversion steps per photo.")] = 100,
    ict_dir: IctDir = None,
) -> None:
    """The bootstrap (paper Sec. 3.2): fit photos, invert each fit into G (eq. 1).

    Writes inverted.npz, (embedding, w) pairs for `data pairs --inverted` (the next R), fitted/*.npz
    for `data build --fitted` (the next G) and report.json (map errors before and after inversion).
    Photos that fail (no face, unreadable) are reported and skipped; exit code 1 if any failed.
    """
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as p:
        task = p.add_task("invert", total=len(photos))
        report = invert_photos(photos, output, init=init, steps=steps, generator=generator, regressor=regressor,
                               ict_dir=ict_dir, progress=lambda done, total: p.update(task, completed=done))
    typer.echo(f"inverted {report['inverted']} of {len(photos)} photos into {output}; mean errors start "
               f"{report['mean_start']} -> inverted {report['mean_inverted']}")
    if report["failed"]:
        raise typer.Exit(1)


@train_app.command("regressor")
@_fails_cleanly
def train_regressor_cmd(
    pairs: Annotated[Path, typer.Argument(help="Pair set from `avatarsdk data pairs`.", file_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder.", file_okay=False)],
    generator: Annotated[Optional[Path], typer.Option(help="The generator the pairs were made with "
                                                           "(default: the shipped one).", dir_okay=False)] = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 5000,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    map_weight: Annotated[float, typer.Option(help="Weight of the map-space L1 through G (0: W+ loss only).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    resume: Annotated[Optional[Path], typer.Option(help="Checkpoint to continue from.", dir_okay=False)] = None,
) -> None:
    """Train the identity regressor R (embedding -> W+), four FC layers with LeakyReLU."""
    G = load(generator or pretrained.locate("generator"), kind="generator").model
    cfg = RegressorTrainConfig(batch_size=batch, lr=lr, map_weight=map_weight, steps=steps, seed=seed, device=device)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as p:
        task = p.add_task("train", total=1.0)
        result = train_regressor(pairs, G, output, cfg, resume=resume, command=_command_line(),
                                 progress=lambda stage, f: p.update(task, completed=f, description=stage))
    typer.echo(f"{result.steps} steps in {result.seconds / 60:.1f} min; regressor {result.regressor_path} "
               f"(sha256 {result.regressor_sha256}); held-out: {result.evaluation}")


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
