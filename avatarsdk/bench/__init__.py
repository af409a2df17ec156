"""Benchmarks with exact, synthesised ground truth (no datasets needed).

* :mod:`avatarsdk.bench.fidelity`: the paper's Sec. 4 evaluation (geometry
  point-to-surface error, albedo L1 under lighting variation) plus an
  expression-neutralisation ratio, on photos rendered from random ICT heads
  with procedural albedo.
"""

from avatarsdk.bench.fidelity import (
    BASELINES,
    EXPRESSIONS,
    LIGHTS,
    Camera,
    Case,
    Reconstruction,
    albedo_l1,
    generic_head,
    geometry_error,
    make_case,
    neutralisation_ratio,
    run,
    run_cli,
    to_markdown,
)

__all__ = [
    "BASELINES",
    "EXPRESSIONS",
    "LIGHTS",
    "Camera",
    "Case",
    "Reconstruction",
    "albedo_l1",
    "generic_head",
    "geometry_error",
    "make_case",
    "neutralisation_ratio",
    "run",
    "run_cli",
    "to_markdown",
]
