#!/usr/bin/env bash
# Every CPU figure of docs/benchmarks.md measured again at the current code, with the commands that file gives: one
# process per figure, each timing what it compares in turn (A, B, A, B, ...), one JSON line per figure on stdout and
# in $OUT/cpu.jsonl (each with its date, CPU, kernel set, threads, torch version and commit).
#
#   bash benchmarks/cpu.sh [PART...]      # default: every part, in this order (hours in all on the 2-core machine)
#     step      step_time.py: framework against bare step, 2 datasets x nf 20, 64 x er_ace, derpp x BN, AdaB2N
#     norm_step step_time.py --against BN: AdaB2N's whole step against BN's in the same (joint) forward pass,
#               seq-fmnist, nf 20 and 64 x er_ace, derpp, eager and --compile 1
#     options   step_time.py: er_ace AdaB2N nf 20 with each speed option (--channels_last, --amp)
#     norm      norm_layer.py: AdaB2N's layer against BN, nf 20 and 64, eager and --compile 1
#     eval      eval_time.py: evaluation throughput, batch 256 and 1000
#     buffer    buffer_memory.py: bytes of a full buffer
#     stack_step  stack_step.py: a stack of 8 against one network, AdaB2N and BN, 1 and 2 threads
#     e2e       end_to_end.py: four online runs of 1000 images per class (about 11 minutes)
#     e2e_full  end_to_end.py: er_ace AdaB2N on the full data with --amp 1 --channels_last 1 (about 9 minutes)
#     stack     stack.py: K runs stacked against separate processes, K = 1, 4, 8 (1 and 2 stacks), 16, 32 (about 40 min)
#
# Environment: THREADS (torch threads of each figure, default 2, as docs/benchmarks.md's), OUT (default cpu-out), PYTHON
# (default python3; an interpreter and its arguments). Run it on an idle machine (no grid, no tests): the figures are
# wall-clock times. A benchmark that fails stops the script with its exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-cpu-out}
THREADS=${THREADS:-2}
ADAB2N="--lambd 0.1 --kappa 0.4"
mkdir -p "$OUT"

bench() {  # script args...: its JSON lines on stdout and in $OUT/cpu.jsonl
  local script=$1; shift
  $PYTHON "benchmarks/$script" "$@" | tee -a "$OUT/cpu.jsonl"
}

step() {  # dataset model nl nf [extra framework flags] [norm to time against, in nl's forward pass]
  local ds=$1 model=$2 nl=$3 nf=$4 extra=${5:-} against=() syn=()
  if [[ $ds == seq-cifar10 ]]; then syn=(--synthetic 300); fi  # random images through CIFAR-10's pipeline
  if [[ $nl == AdaB2N ]]; then extra="$ADAB2N $extra"; fi
  if [[ -n ${6:-} ]]; then against=(--against "$6"); fi
  bench step_time.py --dataset "$ds" "${syn[@]}" --model "$model" --nl "$nl" --nf "$nf" --steps 40 --warmup 10 \
    --threads "$THREADS" --extra "$extra" "${against[@]}"
}

part_step() {
  local ds nf model nl
  for ds in seq-fmnist seq-cifar10; do
    for nf in 20 64; do
      for model in er_ace derpp; do
        for nl in BN AdaB2N; do step $ds $model $nl $nf; done
      done
    done
  done
}

part_norm_step() {
  local nf model compile
  for nf in 20 64; do
    for model in er_ace derpp; do
      for compile in "" "--compile 1"; do step seq-fmnist $model AdaB2N $nf "$compile" BN; done
    done
  done
}

part_options() {
  local options
  for options in "" "--channels_last 1" "--amp 1" "--amp 1 --channels_last 1"; do
    step seq-fmnist er_ace AdaB2N 20 "$options"
  done
}

part_norm() {
  local nf compile
  for nf in 20 64; do
    for compile in 0 1; do
      bench norm_layer.py --nl AdaB2N --nf $nf --threads "$THREADS" --repeats 30 --compile $compile
    done
  done
}

part_eval() {
  bench eval_time.py --threads "$THREADS" --repeats 3
  bench eval_time.py --threads "$THREADS" --repeats 3 --extra "--eval_batch_size 1000"
}

part_buffer() {
  bench buffer_memory.py
}

part_stack_step() {
  local nl threads
  for nl in AdaB2N BN; do
    for threads in 1 2; do bench stack_step.py --members 8 --nl $nl --threads $threads; done
  done
}

part_e2e() {
  bench end_to_end.py --samples_per_class 1000 --threads "$THREADS"
}

part_e2e_full() {
  bench end_to_end.py --models er_ace --nls AdaB2N --threads "$THREADS" --extra "--amp 1 --channels_last 1"
}

part_stack() {
  local run members stacks
  for run in "1 1" "4 1" "8 1" "8 2" "16 1" "32 1"; do
    read -r members stacks <<<"$run"
    bench stack.py --members "$members" --stacks "$stacks" --samples_per_class 100 --extra "--channels_last 1"
  done
}

PARTS=(step norm_step options norm eval buffer stack_step e2e e2e_full stack)
if (( $# )); then chosen=("$@"); else chosen=("${PARTS[@]}"); fi
for part in "${chosen[@]}"; do
  if [[ " ${PARTS[*]} " != *" $part "* ]]; then
    echo "cpu.sh: unknown part '$part'; name parts among: ${PARTS[*]}" >&2
    exit 2
  fi
done
for part in "${chosen[@]}"; do
  echo "[$(date -u +%FT%TZ)] $part" >&2
  "part_$part"
done
