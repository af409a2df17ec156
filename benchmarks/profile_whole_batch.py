"""Where a whole ``avatarsdk batch`` spends its CPU: every process (the batch CLI and its workers), sampled by py-spy.

``profile_batch.py`` profiles a warm worker's heads in one process; this runs the
real command (process start-up, imports, worker warm-up, each worker's first
head, the parent's summary writes, previews and files included) under
``py-spy record --subprocesses`` and sums the samples by component::

    pip install py-spy          # a profiler, not a dependency of the SDK
    python benchmarks/profile_whole_batch.py --heads 20
    python benchmarks/profile_whole_batch.py --raw /tmp/b20.raw      # summarise a recorded profile again

Each sample is counted once, for the first component (in the order of
``COMPONENTS``) whose function is on its stack. py-spy samples a process while
it runs or waits for a core, so on a loaded machine the shares follow CPU time
for these CPU-bound processes; for the CPU seconds themselves use
``bench_batch.py`` (``os.wait4``). The summary is printed and, with ``--out``,
written to a file.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

COMPONENTS = (  # (label, function name on the stack), first match wins
    ("rig: blendshape transfer (IctTransfer.transfer)", "IctTransfer.transfer"),
    ("glb: to_glb", "to_glb"),
    (".avatar: save_avatar (incl. the head's first PNG encodings)", "save_avatar"),
    ("preview: render_views", "render_views"),
    ("preview: avatar_mesh", "avatar_mesh"),
    ("skin normal map (skin_normal)", "skin_normal"),
    ("ORM map of the generic head (a worker's first head, unless cached)", "ambient_occlusion"),
    ("rig: skeleton, skin weights, the rest", "FaceModel.rig"),
    ("G forward (StyleGAN2)", "Generator.forward"),
    ("other avatar generation (offset map, albedo resize)", "generated_avatar"),
    ("package: texture files, manifest, hashes", "export_package"),
    ("fsync of the package", "_fsync_tree"),
    ("imports (process start-up)", "_find_and_load"),
    ("worker warm-up (ICT model, G)", "_warm_up"),
    ("the rest of build_job (sha256 of the .avatar, writes)", "build_job"),
)


def summarise(raw: str) -> str:
    """The shares of a ``py-spy record -f raw --subprocesses`` profile, as text."""
    total = 0
    procs: collections.Counter = collections.Counter()
    comp: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    with open(raw) as f:
        for line in f:
            stack, n = line.rstrip("\n").rsplit(" ", 1)
            n = int(n)
            total += n
            frames = stack.split(";")
            worker = len(frames) > 1 and frames[1].startswith("process ")
            procs["workers" if worker else "parent (batch CLI)"] += n
            names = [fr.split(" (")[0] for fr in frames]
            for label, name in COMPONENTS:
                if name in names:
                    comp[label] += n
                    break
            else:
                comp[("worker" if worker else "parent") + ": other (waits, pipes, progress bar)"] += n
            for name in set(names[1:]):
                if not name.startswith(("process ", "<", " ")):  # process labels (their command lines hold ";")
                    inclusive[name] += n
    out = [f"{total} samples", "by process:"]
    out += [f"  {v / total:6.1%}  {k}" for k, v in procs.most_common()]
    out += ["by component (each sample once):"]
    out += [f"  {v / total:6.1%}  {k}" for k, v in comp.most_common()]
    out += ["top functions (inclusive):"]
    out += [f"  {v / total:6.1%}  {k}" for k, v in inclusive.most_common(40)]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=int, default=50, help="samples per second")
    ap.add_argument("--raw", default=None, help="summarise this recorded raw profile instead of recording one")
    ap.add_argument("--out", default=None, help="also write the summary here")
    ap.add_argument("batch_args", nargs="*", help="more batch options, after --")
    args = ap.parse_args(argv)
    raw = args.raw
    if raw is None:
        spy = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        if spy is None:
            print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
            return 2
        tmp = tempfile.mkdtemp(prefix="avatarsdk-profile-")
        raw = os.path.join(tmp, "batch.raw")
        cmd = [spy, "record", "--subprocesses", "-r", str(args.rate), "-f", "raw", "-o", raw, "--",
               sys.executable, "-m", "avatarsdk", "batch", "--random", str(args.heads), "--seed", str(args.seed),
               "--workers", str(args.workers), "-o", os.path.join(tmp, "out"), *args.batch_args]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
        if code != 0:
            return code
    text = summarise(raw)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
