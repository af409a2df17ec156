"""Fidelity benchmark on synthetic photos with exact ground truth (not a pytest test).

Usage::

    python benchmarks/fidelity.py [--n 20] [--seed 0] [--size 512] [--out out/bench] [--photos]
        [--lights soft,side,coloured,top,dim]

Runs the built-in baselines (``mean_face``) on n identities x 5 lights x
(neutral, expressive) rendered photos and writes ``fidelity.json`` and
``fidelity.md`` to ``--out`` (see :mod:`avatarsdk.bench.fidelity` for the
protocol and the metrics). Other methods are benchmarked from Python::

    from avatarsdk.bench.fidelity import BASELINES, Reconstruction, run_cli
    run_cli(20, 0, "out/bench", methods={**BASELINES, "ours": lambda photo: Reconstruction(...)})
"""

from __future__ import annotations

import sys

from avatarsdk.bench.fidelity import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
