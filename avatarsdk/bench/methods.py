"""The fidelity benchmark's methods built on the SDK's own pipeline (``avatarsdk bench fidelity``)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from avatarsdk import pipeline
from avatarsdk.bench.fidelity import Reconstruction
from avatarsdk.colour import linear_to_srgb
from avatarsdk.detect import detect, skin_mask
from avatarsdk.errors import InputError
from avatarsdk.files import dump_tree, load_tree
from avatarsdk.fit import FitOptions
from avatarsdk.licensing import resolve
from avatarsdk.photo import load_photo
from avatarsdk.refine import RefineConfig
from avatarsdk.rigs import load_ict
from avatarsdk.uvmap import offset_map_to_mesh

__all__ = ["benchmark_methods", "select_methods"]


def _cached_fit(photo, key: bytes, folder, opts, parser: str):
    """:func:`avatarsdk.pipeline.fit_stage` of a photo, kept in ``folder`` (None: not kept)."""
    if folder is None:
        return pipeline.fit_stage(photo, fit_options=opts, parser=parser)
    name = hashlib.sha256(key + repr((opts, parser)).encode()).hexdigest()[:24]
    path = Path(folder) / f"fit_{name}.pt"
    if path.exists():
        pf = load_tree(path)
        return dataclasses.replace(pf, model=load_ict())
    pf = pipeline.fit_stage(photo, fit_options=opts, parser=parser)
    dump_tree(path, dataclasses.replace(pf, model=None))
    return pf


def benchmark_methods(texture_size: int = 512, fit_options=None, refine_options=None,
                      regressor: str | os.PathLike | None = None, parser: str | None = None,
                      permissive: bool | None = False, fit_cache: str | os.PathLike | None = None) -> dict:
    """The fidelity benchmark's methods, each ``photo -> Reconstruction``.

    * ``mean_face``: the generic ICT neutral head, coloured flat with the median
      of the photo's skin pixels (detection only: no fitting, no de-lighting).
    * ``landmarks_only_fit``: camera, identity and expression from the landmarks
      alone; no light model, so the photo is unwrapped as it is.
    * ``unwrap_no_delight``: our full fit, photo unwrapped without dividing out
      the light (the ablation of de-lighting: its geometry is ours by definition).
    * ``ours_fit``: the full pipeline of :func:`avatarsdk.pipeline.create` (without the rig, which
      the metrics do not read).
    * ``ours_keeping_expression``: ours with the fitted expression left in the
      geometry: shows what the neutralisation metric reads when a method does
      not neutralise (not a baseline to beat on the other metrics).
    * ``ours_infer``: the inference path of ``create(mode="infer")``: identity
      embedding -> R -> w -> G, no fitting (its albedo at G's resolution).
    * ``ours_refine_fit``: ``create(mode="refine", init="fit")``: the fit inverted into G,
      then refined against the photo (the latent prior anchored at the inversion).
    * ``ours_refine``: ``create(mode="refine")``: R's latent refined
      against the photo through G (the paper's full pipeline).
    * ``ours_refine_mean``: the same refinement started from G's mean latent
      (the paper's Fig. 11 ablation).

    The refinements go through :func:`avatarsdk.pipeline.check_refinement` as in
    ``create``: one that diverges is scored as the fit it falls back to (the
    summary's case records do not say so; ``create`` writes it to fit.json).

    The fitted methods share one fit per photo (a one-entry cache keyed by the
    photo's bytes), so each costs only what it adds to the fit.

    Args:
        texture_size: albedo resolution of the fitted methods.
        fit_options: :class:`avatarsdk.fit.FitOptions` of the fits (default schedule if None).
        refine_options: :class:`avatarsdk.refine.RefineConfig` of the refinements.
        regressor: R checkpoint for ``ours_infer`` and ``ours_refine`` (None: the shipped R),
            to compare regressors (the bootstrap's R0 vs R1).
        parser: face parser of the fits ("bisenet" or "mesh"; None: as :func:`avatarsdk.licensing.resolve`).
        permissive: the permissive mode (:mod:`avatarsdk.licensing`): the mesh parser and, in the
            refinements, no perceptual term; None reads ``AVATARSDK_PERMISSIVE``.

        fit_cache: a folder where each photo's fit is kept (:func:`avatarsdk.files.dump_tree`, no pickle;
            keyed by the photo's bytes, the parser and the fit options): a later run re-scores
            changes to the albedo stage without fitting again.

    Raises:
        ConfigError: ``parser="bisenet"`` with the permissive mode, or an unknown parser.
    """
    choice = resolve(parser, permissive, "refine")
    opts = fit_options or FitOptions()
    if not choice.perceptual:
        refine_options = dataclasses.replace(refine_options or RefineConfig(), lpips=0.0)
    cache: dict = {}

    def full_fit(photo):
        key = hashlib.sha256(np.ascontiguousarray(photo).tobytes()).digest()
        if cache.get("key") != key:
            cache.clear()
            cache.update(key=key, pf=_cached_fit(photo, key, fit_cache, opts, choice.parser))
        return cache["pf"]

    def mean_face(photo):
        p = load_photo(photo)
        colour = np.median(p.image[skin_mask(p, detect(p))], axis=0)
        albedo = np.broadcast_to(np.round(colour).astype(np.uint8), (64, 64, 3)).copy()
        return Reconstruction(vertices=load_ict().neutral.copy(), albedo=albedo)

    def landmarks_only(photo):
        pf = pipeline.fit_stage(photo, fit_options=dataclasses.replace(opts, photometric=False), parser=choice.parser)
        albedo, _ = pipeline.albedo_stage(pf, texture_size=texture_size, delight=False)
        return Reconstruction(vertices=pf.model.morph(pf.fit.identity), albedo=albedo)

    def fitted(delight: bool):
        def method(photo):
            pf = full_fit(photo)
            albedo, _ = pipeline.albedo_stage(pf, texture_size=texture_size, delight=delight)
            return Reconstruction(vertices=pf.model.morph(pf.fit.identity), albedo=albedo)
        return method

    def with_expression(photo):
        pf = full_fit(photo)
        albedo, _ = pipeline.albedo_stage(pf, texture_size=texture_size)
        return Reconstruction(vertices=pf.model.morph(pf.fit.identity, pf.fit.expression), albedo=albedo)

    def from_maps(albedo, offsets):
        model = load_ict()
        off = torch.as_tensor(np.asarray(offsets, np.float64))[None]
        vertices = offset_map_to_mesh(off, model.topology, model.neutral, model.identity_basis)[0].numpy()
        srgb = (linear_to_srgb(torch.as_tensor(albedo)) * 255 + 0.5).to(torch.uint8).numpy()
        return Reconstruction(vertices=vertices, albedo=srgb)

    def inferred(photo):
        _, _, _, _, albedo, offsets = pipeline.infer_maps(photo, regressor=regressor)
        return from_maps(albedo, offsets)

    def refined(init: str):
        def method(photo):
            pf = full_fit(photo)
            skin, exposure = pipeline.albedo_stage(pf, texture_size=texture_size)
            r, _ = pipeline.refine_stage(pf, init=init, refine_options=refine_options, regressor=regressor,
                                         exposure=exposure, fit_albedo=skin)
            checked = pipeline.check_refinement(pf, r, skin, texture_size=texture_size)
            srgb = (linear_to_srgb(torch.as_tensor(checked.albedo)) * 255 + 0.5).to(torch.uint8).numpy()
            return Reconstruction(vertices=checked.vertices, albedo=srgb)
        return method

    return {
        "mean_face": mean_face,
        "landmarks_only_fit": landmarks_only,
        "unwrap_no_delight": fitted(False),
        "ours_fit": fitted(True),
        "ours_keeping_expression": with_expression,
        "ours_infer": inferred,
        "ours_refine_fit": refined("fit"),
        "ours_refine": refined("regressor"),
        "ours_refine_mean": refined("mean"),
    }


def select_methods(names: str | None = None, parser: str | None = None, permissive: bool | None = False, *,
                   regressor: str | os.PathLike | None = None,
                   fit_cache: str | os.PathLike | None = None) -> tuple[dict, list]:
    """The methods a ``bench fidelity`` command line asks for, along the parser axis.

    Args:
        names: comma-separated method names (None: all of :func:`benchmark_methods`).
        parser: comma-separated parsers ("bisenet", "mesh", "bisenet,mesh"; None: the default of
            :func:`avatarsdk.licensing.resolve`). With several, every method but ``mean_face`` (which
            reads no parse) runs once per parser, named ``method[parser]``.
        permissive: the permissive mode (None reads ``AVATARSDK_PERMISSIVE``).
        regressor, fit_cache: as in :func:`benchmark_methods`.

    Returns:
        (name -> method, the :class:`avatarsdk.licensing.Choice` of each parser).

    Raises:
        InputError: an unknown method.
        ConfigError: an unknown parser, or bisenet in permissive mode.
    """
    parsers = [x.strip() for x in parser.split(",")] if parser else [None]
    choices = [resolve(x, permissive, "refine") for x in parsers]
    chosen: dict = {}
    for choice in choices:
        available = benchmark_methods(regressor=regressor, parser=choice.parser, permissive=choice.permissive,
                                      fit_cache=fit_cache)
        wanted = [m.strip() for m in names.split(",")] if names else list(available)
        unknown = [m for m in wanted if m not in available]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(available)}")
        for m in wanted:
            key = m if len(choices) == 1 or m == "mean_face" else f"{m}[{choice.parser}]"
            chosen.setdefault(key, available[m])
    return chosen, choices
