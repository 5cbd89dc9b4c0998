#!/usr/bin/env bash
# The GPU checks in one short script (for a lent GPU machine with PyTorch but no package index):
# the GPU tests, then amir-bench's overhead, train and predict benches on the GPU.
# Logs and bench JSON go to $OUT (default outputs/gpu_check). Sizes are environment variables so the
# script can be tried on a CPU with tiny sizes first:
#   TRAIN_CLIPS=240 TRAIN_CLIPS_LARGE_BATCH=240 scripts/gpu_check.sh
# Settings: RUN64 / RUN256 (bench train variants; RUN256= skips batch 256), RUN64_SINGLE (variants also
# timed with amir-train's default single-clip reads, train.read_run=1), BENCH_PREDICT=1 (amir-predict's speed).
# Missing Python packages travel as wheels in .whl/ (installed to /tmp/site, no index needed), amir-pl's
# own wheel among them (the configs are package data: `pip wheel --no-deps -w .whl .` here first).
set -u
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  # The installed wheel, not this checkout's amir_pl/ (which has no conf): nothing prepended from the cwd (-P)
  export PYTHONPATH=/tmp/site
  PY="$PY -P"
else
  export PYTHONPATH=$PWD
fi
TRAIN_CLIPS=${TRAIN_CLIPS:-80000}
TRAIN_CLIPS_LARGE_BATCH=${TRAIN_CLIPS_LARGE_BATCH:-80000}
WORKERS=${WORKERS:-8}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc;
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; } \
  | tee "$OUT/machine.txt"

echo "== GPU tests"
# (test_train.py holds the NCCL DDP fit + test: trainer=ddp trainer.devices=1, a subprocess)
timeout 300 $PY -m pytest -q -x -m gpu -p no:cacheprovider tests/test_train.py 2>&1 | tee "$OUT/gpu_tests.log"

echo "== bench: overhead${BENCH_PREDICT:+, predict}, train (batch 64)"
timeout 300 $PY -m amir_pl.apps.bench "benches=[overhead${BENCH_PREDICT:+,predict},train]" overhead.steps=300 \
  predict.num_workers=4 predict.batch_size=256 train.clips="$TRAIN_CLIPS" train.num_workers="$WORKERS" \
  "train.run=[${RUN64:-fp32,bf16,bf16_channels_last,bf16_cl_compile,bf16_cl_compile_cache}]" \
  hydra.run.dir=/tmp/bench64 2>&1 | grep -v Warning | tee "$OUT/bench64.log"
cp /tmp/bench64/bench.json "$OUT/bench64.json" 2>/dev/null

if [ -n "${RUN64_SINGLE:-}" ]; then
  echo "== bench: train (batch 64, single-clip reads)"
  timeout 200 $PY -m amir_pl.apps.bench 'benches=[train]' train.clips="$TRAIN_CLIPS" train.num_workers="$WORKERS" \
    train.read_run=1 "train.run=[$RUN64_SINGLE]" hydra.run.dir=/tmp/bench64_single 2>&1 | grep -v Warning \
    | tee "$OUT/bench64_single.log"
  cp /tmp/bench64_single/bench.json "$OUT/bench64_single.json" 2>/dev/null
fi

[ -n "${RUN256-x}" ] || { echo "== done"; exit 0; }
echo "== bench: train (batch 256)"
timeout 150 $PY -m amir_pl.apps.bench 'benches=[train]' train.clips="$TRAIN_CLIPS_LARGE_BATCH" train.batch_size=256 \
  train.num_workers="$WORKERS" "train.run=[${RUN256:-bf16_channels_last,bf16_cl_compile_cache}]" \
  hydra.run.dir=/tmp/bench256 2>&1 | grep -v Warning | tee "$OUT/bench256.log"
cp /tmp/bench256/bench.json "$OUT/bench256.json" 2>/dev/null
echo "== done"
