"""The paper's bootstrap (Sec. 3.2) over real photos: fit, invert into G, save pairs for the next R and G.

``avatarsdk train invert`` runs :func:`invert_photos`: each photo is fitted
(:func:`avatarsdk.pipeline.fit_stage`, :func:`~avatarsdk.pipeline.albedo_stage`),
its UV maps inverted into G's W+ (:func:`avatarsdk.invert.invert`), and the
(embedding, w) pairs, fitted heads and a report written for the next round.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from avatarsdk.errors import AvatarError, InputError
from avatarsdk.invert import InvertConfig, invert_fit
from avatarsdk.files import atomic_write_bytes
from avatarsdk.nn.identity import embed_photo
from avatarsdk.pipeline import albedo_stage, fit_stage, load_generator, regress_latent
from avatarsdk.sizes import PHOTO_MIN_TEXTURE_SIZE, check_texture_size
from avatarsdk.train.data import fitted_sample
from avatarsdk.train.regressor import save_inverted_pairs

__all__ = ["invert_photo", "invert_photos"]


def invert_photo(photo, *, init: str = "regressor", steps: int = 100, texture_size: int = 512,
                 generator: str | os.PathLike | None = None, regressor: str | os.PathLike | None = None,
                 ict_dir: str | os.PathLike | None = None, progress=None) -> dict:
    """One photo through the paper's bootstrap (Sec. 3.2): fit it, then find G's latent for the fit.

    The photo is fitted as in :func:`avatarsdk.pipeline.create`'s fit mode (linear model, de-lit
    unwrap; no rig is built); the fit's UV maps at G's resolution are inverted
    into W+ (paper eq. 1, :func:`avatarsdk.invert.invert_fit`), starting from R's
    guess for the photo's identity embedding (``init="regressor"``: G0/R0
    initialise the fitting) or from G's mean latent. The (embedding, w) pair
    trains the next R; the fitted head joins the next G's data set.

    Returns:
        dict with "embedding" [128] float32, "ws" [L, w_dim] float32, the fitted
        head as "vertices" [V, 3] float32 metres, "albedo" [T, T, 3] uint8 sRGB and
        "identity" [100] float32, "sample" (:class:`avatarsdk.train.data.Sample`, the
        fit at G's resolution), "inversion" (:class:`avatarsdk.invert.Inversion`) and
        "timings".

    Raises:
        PhotoError: as :func:`avatarsdk.pipeline.create`. InputError: bad ``init``, ``steps`` or ``texture_size``.
    """
    if init not in ("regressor", "mean"):
        raise InputError(f"init must be 'regressor' or 'mean', got {init!r}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    check_texture_size(texture_size, minimum=PHOTO_MIN_TEXTURE_SIZE)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pf = fit_stage(photo, ict_dir=ict_dir)
    skin_u8, _ = albedo_stage(pf, texture_size=texture_size)
    vertices = pf.model.morph(pf.fit.identity).astype(np.float32)
    timings["fit"] = round(time.perf_counter() - t0, 3)
    G = load_generator(generator)
    t0 = time.perf_counter()
    identity = np.asarray(pf.fit.identity, np.float32)
    sample = fitted_sample(vertices, skin_u8, G.cfg.resolution, identity=identity, ict_dir=ict_dir)
    emb = embed_photo(pf.photo, pf.landmarks)
    timings["embed"] = round(time.perf_counter() - t0, 3)
    w0 = torch.from_numpy(regress_latent(emb, regressor=regressor)) if init == "regressor" else None
    t0 = time.perf_counter()
    # The same inversion of a fit as create's refinement from the fit (avatarsdk.invert.invert_fit).
    inv = invert_fit(G, vertices, skin_u8, InvertConfig(steps=steps), w0=w0, ict_dir=ict_dir, progress=progress)
    timings["invert"] = round(time.perf_counter() - t0, 3)
    return {"embedding": np.asarray(emb, np.float32), "ws": inv.w.numpy(), "vertices": vertices,
            "albedo": skin_u8, "identity": identity, "sample": sample, "inversion": inv, "timings": timings}


def invert_photos(photos, out_dir, *, init: str = "regressor", steps: int = 100,
                  generator: str | os.PathLike | None = None, regressor: str | os.PathLike | None = None,
                  ict_dir: str | os.PathLike | None = None, progress=None) -> dict:
    """The bootstrap over a set of photos (``avatarsdk train invert``): :func:`invert_photo` each, save the results.

    Writes into ``out_dir``: ``inverted.npz`` ((embedding, w) pairs for the next
    R, :func:`avatarsdk.train.regressor.save_inverted_pairs`), ``fitted/<name>.npz``
    (vertices, albedo, identity: heads for the next G's data set) and
    ``report.json`` (map errors before and after inversion, timings). A photo
    that fails with an :class:`~avatarsdk.errors.AvatarError` (no face,
    unreadable) is recorded with its error and skipped.

    Args:
        photos: photo paths.
        out_dir: output folder (created).
        init, steps, generator, regressor, ict_dir: as :func:`invert_photo`.
        progress: optional ``callback(done, total)`` after each photo.

    Returns:
        The report (as written to ``report.json``): counts, mean errors, one row per photo.

    Raises:
        InputError: bad ``init`` or ``steps``.
    """
    if init not in ("regressor", "mean"):
        raise InputError(f"init must be 'regressor' or 'mean', got {init!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    photos = [Path(p) for p in photos]
    out = Path(out_dir)
    (out / "fitted").mkdir(parents=True, exist_ok=True)
    rows, embeddings, ws = [], [], []
    for i, path in enumerate(photos):
        name = f"{path.stem[:40]}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        try:
            r = invert_photo(path, init=init, steps=steps, generator=generator, regressor=regressor,
                             ict_dir=ict_dir)
        except AvatarError as exc:
            rows.append({"photo": str(path), "error": f"{type(exc).__name__}: {exc}"})
        else:
            buf = io.BytesIO()
            np.savez(buf, vertices=r["vertices"], albedo=r["albedo"], identity=r["identity"])
            atomic_write_bytes(out / "fitted" / f"{name}.npz", buf.getvalue())
            inv = r["inversion"]
            embeddings.append(r["embedding"])
            ws.append(r["ws"])
            rows.append({"photo": str(path), "fitted": f"fitted/{name}.npz", "start": dict(inv.initial_errors),
                         "inverted": dict(inv.errors), "timings": r["timings"]})
        if progress is not None:
            progress(i + 1, len(photos))
    if embeddings:
        save_inverted_pairs(out / "inverted.npz", np.stack(embeddings), np.stack(ws))
    ok = [r for r in rows if "error" not in r]

    def mean(stage: str) -> dict:
        return {k: float(np.mean([r[stage][k] for r in ok])) for k in (ok[0][stage] if ok else {})}

    report = {"photos": len(photos), "inverted": len(ok), "failed": len(photos) - len(ok), "init": init,
              "steps": steps, "mean_start": mean("start"), "mean_inverted": mean("inverted"), "rows": rows}
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2, default=float) + "\n").encode())
    return report
