#!/usr/bin/env bash
# Issue 5's GPU figures (and, with the time left, issue 7's grid) in one prepared run on a lent GPU machine.
#
#   OUT=/path/to/out DEADLINE=560 bash benchmarks/gpu.sh        # BENCH=0: grid only; GRID=0: benchmarks only
#   TESTS=1: first the CUDA-only tests; COMPILE_E2E=1: full AdaB2N runs with and without --compile, side by side;
#   FULLDATA=1: docs/results.md's full network on the full data (--nf 64, all 6000 images per class; issue 16)
#   NORM=1: issue 15's figures first: benchmarks/norm_layer.py (AdaB2N's layer against BN, eager and compiled, nf 20
#   and 64), then whole AdaB2N and BN runs with --compile 1 and with --compile_mode reduce-overhead (CUDA graphs)
#   STACK=1: issue 14's figures, benchmarks/stack_step.py for K = 8, 32 (one training step, stack against one
#   network), then benchmarks/stack.py for K = 1, 4, 8, 16, 32 (whole runs stacked against separate
#   processes packed --max_per_gpu MAX_PER_GPU on the GPU), then BENCH/GRID as set (e.g. STACK=1 BENCH=0 GRID=0)
#
# Needs the Fashion-MNIST IDX files under data/fashion-mnist (the machine has no network) and the repository
# importable as the package `normcl` without installing it (set here: a link named normcl to it, on PYTHONPATH).
# Every part runs under its own `timeout`, so whatever finished comes back in $OUT.
# PYTHON: the interpreter, default python3 (an interpreter and its arguments: tests/test_benchmarks.py runs this
# script with one that records each command instead of running it).
set -u
cd "$(dirname "$0")/.."
PACKAGE_HOME=$(mktemp -d) && ln -s "$PWD" "$PACKAGE_HOME/normcl" && trap 'rm -rf "$PACKAGE_HOME"' EXIT
export PYTHONPATH=$PACKAGE_HOME PYTHONUNBUFFERED=1 NORMCL_OFFLINE=1 OMP_NUM_THREADS=1
export PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-out}
DEADLINE=${DEADLINE:-560}
mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/gpu.log"; }
# The file of a grid's sittings beside its results, named where every file of a run is (utils/core/run_files.py).
GRID_SECONDS=$($PYTHON -c "from normcl.utils.core.run_files import GRID_SECONDS; print(GRID_SECONDS)")

{ nvidia-smi -L; $PYTHON -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; nproc; } \
  >"$OUT/env.txt" 2>&1
log "env: $(tr '\n' ' ' <"$OUT/env.txt")"

step() {  # dataset model nl nf extra...
  local ds=$1 model=$2 nl=$3 nf=$4; shift 4
  local syn=(); [[ $ds == seq-cifar10 ]] && syn=(--synthetic 300)
  local ada=""; [[ $nl == AdaB2N ]] && ada="--lambd 0.1 --kappa 0.4"
  local line
  line=$(timeout 90 $PYTHON benchmarks/step_time.py --device cuda --dataset "$ds" "${syn[@]}" --model "$model" \
    --nl "$nl" --nf "$nf" --steps 40 --warmup 10 --extra "$ada $*" 2>>"$OUT/gpu.log" | tail -1)
  [[ $line == "{"* ]] && echo "$line" >>"$OUT/step_time.jsonl" || line="FAILED or TIMED OUT"
  log "step $ds $model $nl nf$nf $*: $line"
}
if [[ ${TESTS:-0} == 1 ]]; then
  timeout 180 $PYTHON -m pytest -q -p no:cacheprovider -rs tests/test_buffer.py tests/test_adab2n.py \
    tests/test_norm_layers.py tests/test_convert_norm.py tests/test_stacking.py >"$OUT/cuda_tests.txt" 2>&1
  log "tests exit $?: $(tail -1 "$OUT/cuda_tests.txt")"
fi

if [[ ${NORM:-0} == 1 ]]; then
  for nf in 20 64; do
    for c in 0 1; do
      line=$(timeout 150 $PYTHON benchmarks/norm_layer.py --device cuda --nf $nf --compile $c --repeats 100 \
        2>>"$OUT/gpu.log" | tail -1)
      [[ $line == "{"* ]] && echo "$line" >>"$OUT/norm_layer.jsonl" || line="FAILED or TIMED OUT"
      log "norm layer nf$nf compile $c: $line"
    done
  done
  # Whole runs (compilation included), four at once: the GPU is launch-bound, 16 cores feed it.
  for nl in BN AdaB2N; do
    for mode in default reduce-overhead; do
      timeout 330 $PYTHON benchmarks/end_to_end.py --device cuda --models er_ace --nls "$nl" \
        --extra "--compile 1 --compile_mode $mode" >"$OUT/e2e_${nl}_compile_$mode.txt" 2>>"$OUT/gpu.log" &
    done
  done
  wait
  log "e2e compiled: $(grep -h '^{' "$OUT"/e2e_*_compile_*.txt | tr '\n' ' ')"
fi

if [[ ${COMPILE_E2E:-0} == 1 ]]; then
  # What --compile does to a whole AdaB2N run, compilation (per batch shape) included.
  timeout 330 $PYTHON benchmarks/end_to_end.py --device cuda --models er_ace --nls AdaB2N \
    >"$OUT/e2e_AdaB2N_eager.txt" 2>>"$OUT/gpu.log" &
  timeout 330 $PYTHON benchmarks/end_to_end.py --device cuda --models er_ace --nls AdaB2N --extra "--compile 1" \
    >"$OUT/e2e_AdaB2N_compile.txt" 2>>"$OUT/gpu.log" &
  wait
  log "e2e AdaB2N eager: $(grep -h '^{' "$OUT/e2e_AdaB2N_eager.txt")"
  log "e2e AdaB2N compiled: $(grep -h '^{' "$OUT/e2e_AdaB2N_compile.txt")"
fi

if [[ ${FULLDATA:-0} == 1 ]]; then
  # Issue 16's question 4 on the full data: scripts/reproduce_fmnist.sh's width grid (--nf 64, BN against AdaB2N at
  # the --nf 20 validation choice, er_ace 500 and derpp 500, 3 seeds) with all 6000 images per class: the twelve runs
  # as four stacks of three seeds (docs/stacking.md), all at once (the two columns' launchers side by side).
  SPC=full GRIDS=width STEP=grid WIDTH=fulldata PARALLEL=1 \
    LAUNCH="--stack 3 --max_per_gpu 2 --usage_threshold 0.9 --coldsecs 0.5 --waitsecs 2" \
    timeout $(( $(left) - 20 )) bash scripts/reproduce_fmnist.sh >"$OUT/fulldata.txt" 2>&1
  log "full-data runs exit $?: $(find fulldata -name '*.json' | wc -l) results files"
  find fulldata -name '*.json' -o -name "$GRID_SECONDS" | tar czf "$OUT/fulldata.tar.gz" -T -
fi

if [[ ${STACK:-0} == 1 ]]; then
  for k in 8 32; do  # one training step per member first: seconds, and what the whole runs below should show
    (( $(left) > 90 )) || break
    line=$(timeout 60 $PYTHON benchmarks/stack_step.py --device cuda --members "$k" 2>>"$OUT/gpu.log" | tail -1)
    [[ $line == "{"* ]] && echo "$line" >>"$OUT/stack_step.jsonl" || line="FAILED or TIMED OUT"
    log "stack step K=$k: $line"
  done
  for k in 1 4 8 16 32; do
    (( $(left) > 60 )) || break
    line=$(timeout $(( $(left) - 30 )) $PYTHON benchmarks/stack.py --device cuda --members "$k" \
      --samples_per_class "${STACK_SPC:-1000}" --workers "${MAX_PER_GPU:-14}" 2>>"$OUT/gpu.log" | tail -1)
    [[ $line == "{"* ]] && echo "$line" >>"$OUT/stack.jsonl" || line="FAILED or TIMED OUT"
    log "stack K=$k: $line"
  done
fi

if [[ ${BENCH:-1} == 1 ]]; then
for ds in seq-cifar10 seq-fmnist; do
  for model in er_ace derpp; do
    for nl in BN AdaB2N; do step $ds $model $nl 64; done
  done
done
for opt in "--amp 1" "--channels_last 1"; do
  step seq-cifar10 er_ace AdaB2N 64 $opt
  step seq-cifar10 er_ace BN 64 $opt
done
step seq-cifar10 er_ace AdaB2N 64 --amp 1 --channels_last 1
step seq-cifar10 er_ace BN 64 --compile 1

for nl in BN AdaB2N; do
  line=$(timeout 60 $PYTHON benchmarks/eval_time.py --device cuda --dataset seq-fmnist --nl "$nl" --nf 64 \
    2>>"$OUT/gpu.log" | tail -1)
  [[ $line == "{"* ]] && echo "$line" >>"$OUT/eval_time.jsonl" || line="FAILED or TIMED OUT"
  log "eval $nl: $line"
done

# Full online Split Fashion-MNIST runs, the two er_ace ones side by side (16 cores; tiny kernels).
for nl in BN AdaB2N; do
  timeout 200 $PYTHON benchmarks/end_to_end.py --device cuda --models er_ace --nls "$nl" \
    >"$OUT/e2e_$nl.txt" 2>>"$OUT/gpu.log" &
done
wait
log "e2e: $(grep -h '^{' "$OUT"/e2e_*.txt | tr '\n' ' ')"
fi

if [[ ${GRID:-1} == 1 && $(left) -gt 120 ]]; then
  # Issue 7's grid (scripts/reproduce_fmnist.sh), resumed where the published runs stop; only the results files
  # come back (logs and checkpoints stay). No --compile: each 1000-step run would compile anew per batch shape,
  # which is not measured to pay off for runs this short.
  log "grid with $(left)s left"
  LAUNCH="--max_per_gpu ${MAX_PER_GPU:-14} --usage_threshold 0.9 --coldsecs 0.5 --waitsecs 2" \
    STEP=grid timeout $(( $(left) - 25 )) bash scripts/reproduce_fmnist.sh \
    >"$OUT/grid.txt" 2>&1
  log "grid exit $?: $(find docs/results/fmnist/runs docs/results/fmnist_nf64/runs -name '*.json' | wc -l) results files"
  find docs/results/fmnist/runs docs/results/fmnist_nf64/runs -name '*.json' -o -name "$GRID_SECONDS" |
    tar czf "$OUT/grid.tar.gz" -T -
fi
log "done"
