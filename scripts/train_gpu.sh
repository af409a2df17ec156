#!/usr/bin/env bash
# Train the UV StyleGAN2 on a CUDA machine that has no network and no copy of the ICT OBJs.
#
# What the machine needs: this repository, python3 with PyTorch (CUDA), numpy, scipy, pillow,
# typer and rich, and an ICT pack (`avatarsdk ict pack -o DIR/ict-pack.npz`) in $ICT_DIR.
# The data set is built there (16 cores: ~1 min for 8k heads at 256), training runs for
# $MINUTES and stops cleanly (checkpoint + EMA generator); run the script again on the same
# machine and it resumes from the newest checkpoint in $RUN_DIR.
#
# Settings (environment):
#   ICT_DIR   folder with ict-pack.npz            (default: .gpu)
#   WORK      scratch folder (data set, run)      (default: /tmp/avatarsdk-gpu)
#   COUNT     synthetic heads                     (default: 8000)
#   RES       UV map side                         (default: 256)
#   MINUTES   training time of this call          (default: 8)
#   DEADLINE  or: epoch second by which training must have stopped (overrides MINUTES)
#   RESULTS   where the shipped files are copied  (default: none)
#   DEVICE    cuda (default) or cpu, for trying the script
#   TRAIN_ARGS  extra `avatarsdk train gan` options (default: the shipped configuration)
set -euo pipefail
export PYTHONUNBUFFERED=1
ICT_DIR=${ICT_DIR:-.gpu}
WORK=${WORK:-/tmp/avatarsdk-gpu}
COUNT=${COUNT:-8000}
RES=${RES:-256}
MINUTES=${MINUTES:-8}
TRAIN_ARGS=${TRAIN_ARGS:---w-dim 512 --mapping-layers 8 --channel-base 4096 --channel-max 256 --batch 32 --mirror}

# Installed, not run from the source tree: avatarsdk.rigs / .exporters exist only installed.
(cd / && python3 -c "import avatarsdk.rigs" 2>/dev/null) ||
  python3 -m pip install -q --no-deps --no-build-isolation --no-index --ignore-requires-python .
export AVATARSDK_ICT_DIR
AVATARSDK_ICT_DIR=$(cd "$ICT_DIR" && pwd)
export AVATARSDK_CACHE_DIR="$WORK/cache"
mkdir -p "$WORK"
cd "$WORK"
avatarsdk() { python3 -m avatarsdk "$@"; }

if [ ! -f "$WORK/data/manifest.json" ]; then
  workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 0 ))
  t0=$SECONDS
  # One BLAS thread per worker. The shipped G's build ran without this at only 18 heads/s on 14 workers
  # (one process on a 2-core machine makes 8.5/s); likely oversubscription, as each worker's BLAS
  # starts a thread per core. Not yet re-measured on a GPU machine with this setting.
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    avatarsdk data build -o "$WORK/data" --count "$COUNT" --resolution "$RES" --workers "$workers" --overwrite
  echo "data build: $((SECONDS - t0)) s"
fi

if [ -n "${DEADLINE:-}" ]; then
  MINUTES=$(python3 -c "import sys, time; print(max(0.5, (int(sys.argv[1]) - time.time() - 20) / 60))" "$DEADLINE")
fi
echo "training for $MINUTES min"
resume=()
latest=$(ls "$WORK/run/checkpoints/"step-*.pt 2>/dev/null | sort | tail -n 1 || true)
if [ -n "$latest" ]; then resume=(--resume "$latest"); fi
# shellcheck disable=SC2086
avatarsdk train gan "$WORK/data" -o "$WORK/run" $TRAIN_ARGS --kimg 100000 --device "${DEVICE:-cuda}" \
  --minutes "$MINUTES" --checkpoint-interval 1000 --log-interval 100 "${resume[@]}"

if [ -n "${RESULTS:-}" ]; then
  mkdir -p "$RESULTS"
  cp "$WORK/run/stats.jsonl" "$WORK/run/training.json" "$WORK/run/DATASHEET.md" "$WORK/run/TRAIN_COMMAND.txt" "$RESULTS/"
  # Files come back in pieces of at most 15 MiB: `cat generator.pt.part-* > generator.pt`.
  split -b 15M -d "$WORK/run/generator.pt" "$RESULTS/generator.pt.part-"
  sha256sum "$WORK/run/generator.pt" > "$RESULTS/generator.pt.sha256"
fi
