#!/usr/bin/env bash
# Reproduce docs/results.md: the paper's online comparison on Split Fashion-MNIST (issues 7 and 16).
#
#   bash scripts/reproduce_fmnist.sh            # the grids (resumable) + report + page, on GPUs if NVML sees any
#   STEP=report bash scripts/reproduce_fmnist.sh   # only the report and the page, from existing results
#
# Grids 1-3 share one results folder (a run that two of them name is run once); grid 4 has its own:
#   1. the comparison: every method, 2 models x 2 buffers x 3 seeds, AdaB2N (and its renormalised variant) tuned on a
#      validation split over the paper's whole search space, kappa 0.1/0.4/0.7/1.0 x lambd 0.01/0.1/1/10 x ada_t0 0/1;
#      with ER-ACE the reference adds the regulariser from the second task whatever ada_t0 says (docs/norms.md, AdaB2N), so
#      ada_t0 0 and 1 are the same run there and only ada_t0 1 is run;
#   2. the sensitivity grid: every AdaB2N configuration as a test run, 3 seeds, in the columns derpp 200 and
#      er_ace 500 (selection on test against selection on validation, issue 16);
#   3. five seeds: BN, AdaB2N and AdaB2N-renorm at the validation choice, seeds 0-4, in er_ace 500, the column where
#      AdaB2N's gain is largest;
#   4. the full width (issue 16's question 4), in its own folder WIDTH: the paper's ResNet-18 (--nf 64), BN against
#      AdaB2N at the configuration validation chose at --nf 20 (read from REPORT's summary.csv), 3 seeds, in er_ace
#      500 and derpp 500 (on a lent GPU with SPC=full: all 6000 images per class);
#   5. accuracy during the stream (issues 24 and 34), in its own folder STREAM: BN (separate), BN-joint (BN with one
#      joint forward pass: the control of the joint norms), CN, TBBN and AdaB2N at its validation choice in each
#      column (read from REPORT's summary.csv), the four columns, seeds 0-9, evaluated every EVAL_EVERY steps on
#      EVAL_SUBSET test images a task (AAA, min-ACC, WC-ACC, the stability gap); AdaB2N and BN-joint first (the
#      primary endpoint's runs, docs/results.md), and reports of seeds 0-4 and 5-9 alone in STREAM/seeds0-4 and
#      STREAM/seeds5-9 (the first round's readings saw seeds 0-4; seeds 5-9 replicate them). One run per process:
#      on this CPU a stack trains at 0.85-1.11x the speed of separate runs (docs/benchmarks.md), so stacks do not
#      pay here; on a GPU add --stack to LAUNCH;
#   6. rounding noise (issue 34), in its own folder ROUNDING: BN and AdaB2N of the stream grid in er_ace 500 and
#      derpp 200, seeds 0-4, run again three ways, each in a folder of its own under ROUNDING/runs (run names do
#      not say how): same/ (seed 0, the same settings: the identity check), kernels/ (the second kernel set of
#      .ci/run) and threads/ (2 threads a run instead of 1: with LAUNCH's 2 workers on 2 cores run.py warns that they
#      oversubscribe the cores, which slows them and changes no result; there run GRIDS=rounding with
#      LAUNCH="--cpu_workers 1", as the published thread reruns were run; the page records the default LAUNCH).
# Environment: RESULTS (results folder, default docs/results/fmnist/runs: the published runs; with another, also
# set REPORT, PAGE and WIDTH so the published reports and page are not overwritten; run names do not say SPC, so
# runs of another SPC need folders of their own too), LAUNCH (run.py's execution flags, default
# "--cpu_workers 2" without a GPU; on one large GPU e.g. "--max_per_gpu 14 --usage_threshold 0.9 --coldsecs 1"),
# SPC (training images per class, default 1000 as published; "full" for all 6000), EXTRA_FLAGS (more run flags,
# e.g. "--num_threads 1" to leave a core free; mind that every run records them and the report averages runs only of
# one protocol), GRIDS (which grids to run, default "compare sensitivity seeds width stream"), WIDTH (the full-width
# grid's folder: runs/ and its report, default docs/results/fmnist_nf64), PARALLEL (1: a grid's run.py commands at
# once, a launcher each; on one GPU give each its share in LAUNCH's --max_per_gpu), STREAM (the stream grid's folder,
# default docs/results/fmnist_stream), ROUNDING (the rounding grid's folder, default docs/results/fmnist_rounding),
# EVAL_EVERY and EVAL_SUBSET (its evaluation schedule, default 20 steps and 300
# images a task: about 45 000 images scored along a run, some 40 % more time on this CPU), KEPT (folders whose report alone
# the report step rebuilds from their runs/, which no grid here makes any more; default docs/results/fmnist_full, the
# first round's full-data side check: er_ace 500, BN against AdaB2N at kappa 0.4, lambd 0.01, ada_t0 0, --nf 20, all
# 6000 images per class, 3 seeds, run on a lent H200 by commit 190cb13's benchmarks/gpu.sh FULLDATA=1 before ER-ACE's
# regulariser followed the reference; the page links its report), PYTHON (the interpreter, default python3).
# tests/test_published.py runs STEP=report with these defaults and compares what it writes with the published files.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-docs/results/fmnist/runs}
SPC=${SPC:-1000}
STEP=${STEP:-all}
LAUNCH=${LAUNCH:---cpu_workers 2}
GRIDS=${GRIDS:-compare sensitivity seeds width stream rounding}
WIDTH=${WIDTH:-docs/results/fmnist_nf64}
STREAM=${STREAM:-docs/results/fmnist_stream}
ROUNDING=${ROUNDING:-docs/results/fmnist_rounding}
EVAL_EVERY=${EVAL_EVERY:-20}
EVAL_SUBSET=${EVAL_SUBSET:-300}
REPORT=${REPORT:-docs/results/fmnist}  # tables and plots
KEPT=${KEPT-docs/results/fmnist_full}
PAGE=${PAGE:-docs/results.md}          # the page they are published on
rc=0
# --channels_last: about 20 % faster on the CPU, same float32 arithmetic; --ignore_other_metrics: no FWT evaluations
# (not in the tables), 10 % less time.
EXTRA="--nf 20 --diagnose_norm 1 --channels_last 1 --ignore_other_metrics 1 ${EXTRA_FLAGS:-}"
[[ "$SPC" == full ]] || EXTRA="$EXTRA --samples_per_class $SPC"

PYTHON=${PYTHON:-python3}
# The file of a grid's sittings beside its results, named where every file of a run is (utils/core/run_files.py).
GRID_SECONDS=$("$PYTHON" -c "from normcl.utils.core.run_files import GRID_SECONDS; print(GRID_SECONDS)")
BASE=(--datasets seq-fmnist --bs 10 --epochs 1 --nowand --yes)
COMMON=("${BASE[@]}" --kappas 0.1 0.4 0.7 1.0 --lambdas 0.01 0.1 1 10 --extra "$EXTRA" --results_path "$RESULTS"
  --logdir "$RESULTS/logs")
WIDE=("${BASE[@]}" --extra "${EXTRA/--nf 20/--nf 64}" --results_path "$WIDTH/runs" --logdir "$WIDTH/runs/logs"
  --methods BN AdaB2N --num_seeds 3)
STREAM_FLAGS="$EXTRA --eval_every $EVAL_EVERY --eval_subset $EVAL_SUBSET"
ONLINE=("${BASE[@]}" --extra "$STREAM_FLAGS" --num_seeds 10 --results_path "$STREAM/runs" --logdir "$STREAM/runs/logs")
# The second kernel set, as .ci/run: torch's plain C++ kernels, oneDNN and MKL limited to SSE4.
OTHER_KERNELS=(ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2)
ROUNDING_VARIANTS=(same kernels threads)
TUNE=("${COMMON[@]}" --buffer_sizes 200 500 --methods BN BN-joint GN CN BRN AdaB2N AdaB2N-renorm --num_seeds 3
  --tune validation --tune_seeds 0)
# Three results folders: the comparison's (RESULTS), the full width's (WIDTH/runs) and the stream's (STREAM/runs),
# each with its own report and its own generated part of the page.
main_grids=() wide_grids=() stream_grids=() rounding_grids=()
for grid in $GRIDS; do
  case "$grid" in
    compare | sensitivity | seeds) main_grids+=("$grid") ;;
    width) wide_grids+=("$grid") ;;
    stream) stream_grids+=("$grid") ;;
    rounding) rounding_grids+=("$grid") ;;
    *) echo "unknown grid '$grid' in GRIDS; use compare, sensitivity, seeds, width, stream and/or rounding" >&2
       exit 2 ;;
  esac
done
chosen() {  # model buffer: AdaB2N's validation choice in that column of the comparison's report, as run.py flags
  if [[ ! -f $REPORT/summary.csv ]]; then
    echo "error: no $REPORT/summary.csv for the width grid's configurations; run the comparison and its report first" >&2
    return 2
  fi
  "$PYTHON" -c 'import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["method"] == "AdaB2N" and r["selected_on"] == "validation"
        and (r["model"], r["buffer_size"]) == (sys.argv[2], sys.argv[3])]
if len(rows) != 1:
    sys.exit(f"error: {sys.argv[1]} has no validation choice of AdaB2N for {sys.argv[2]} {sys.argv[3]}; run the comparison first")
print("--kappas", rows[0]["kappa"], "--lambdas", rows[0]["lambd"], "--ada_t0s", rows[0]["ada_t0"])' \
    "$REPORT/summary.csv" "$1" "$2"
}
declare -A stream_chosen
choose() {  # the width and stream grids' AdaB2N configurations, from REPORT's summary.csv as it is now
  if (( ${#wide_grids[@]} )); then
    wide_er_ace=$(chosen er_ace 500) || exit 2
    wide_derpp=$(chosen derpp 500) || exit 2
  fi
  if (( ${#stream_grids[@]} + ${#rounding_grids[@]} )); then
    for model in er_ace derpp; do
      for buffer in 200 500; do
        stream_chosen[$model $buffer]=$(chosen $model $buffer) || exit 2
      done
    done
  fi
}
[[ "$STEP" == report ]] || choose  # before any grid runs: fail now, not after hours of the other grids

# One run.py command a line (shell-quoted): each grid and its models, buffers and ada_t0 values.
line() { printf '%q ' "$PYTHON" run.py "$@"; echo; }
rerun() {  # variant model buffer: the rounding grid's command of one variant and column (BN and AdaB2N)
  local variant=$1 model=$2 buffer=$3 seeds=5 flags=$STREAM_FLAGS prefix=()
  case "$variant" in
    same) seeds=1 ;;
    kernels) prefix=(env "${OTHER_KERNELS[@]}") ;;
    threads) flags="$flags --num_threads 2" ;;
  esac
  # shellcheck disable=SC2086  # the chosen configuration is a list of flags
  printf '%q ' "${prefix[@]}" "$PYTHON" run.py "${BASE[@]}" --extra "$flags" --num_seeds "$seeds" \
    --results_path "$ROUNDING/runs/$variant" --logdir "$ROUNDING/runs/$variant/logs" --methods BN AdaB2N \
    --models "$model" --buffer_sizes "$buffer" ${stream_chosen[$model $buffer]}
  echo
}
commands() {  # grid...
  for grid in "$@"; do
    case "$grid" in
      compare)
        line "${TUNE[@]}" --models er_ace --ada_t0s 1
        line "${TUNE[@]}" --models derpp --ada_t0s 0 1 ;;
      sensitivity)
        line "${COMMON[@]}" --methods AdaB2N --num_seeds 3 --models er_ace --buffer_sizes 500 --ada_t0s 1
        line "${COMMON[@]}" --methods AdaB2N --num_seeds 3 --models derpp --buffer_sizes 200 --ada_t0s 0 1 ;;
      seeds)  # five seeds where AdaB2N's gain is largest (er_ace 500), at the validation choice
        line "${COMMON[@]}" --buffer_sizes 500 --methods BN AdaB2N AdaB2N-renorm --num_seeds 5 --tune validation \
          --tune_seeds 0 --models er_ace --ada_t0s 1 ;;
      width)
        # shellcheck disable=SC2086  # the chosen configuration is a list of flags
        line "${WIDE[@]}" --models er_ace --buffer_sizes 500 $wide_er_ace
        # shellcheck disable=SC2086
        line "${WIDE[@]}" --models derpp --buffer_sizes 500 $wide_derpp ;;
      stream)  # the primary endpoint's runs first: AdaB2N and its control BN-joint, a column at a time
        for model in er_ace derpp; do
          for buffer in 200 500; do
            # shellcheck disable=SC2086  # the chosen configuration is a list of flags
            line "${ONLINE[@]}" --methods BN-joint AdaB2N --models $model --buffer_sizes $buffer \
              ${stream_chosen[$model $buffer]}
          done
        done
        line "${ONLINE[@]}" --methods BN CN TBBN --models er_ace derpp --buffer_sizes 200 500 ;;
      rounding)
        for variant in "${ROUNDING_VARIANTS[@]}"; do
          rerun "$variant" er_ace 500
          rerun "$variant" derpp 200
        done ;;
    esac
  done
}

seconds_line() {  # start file: a sitting's wall time, machine and end, appended to file (the page adds them up)
  echo "$(( $(date +%s) - $1 )) $(hostname) $(date -u +%FT%TZ)" >>"$2"
}
sitting() {  # folder grid...: run the grids; one line per invocation, also an interrupted one, in GRID_SECONDS
  local folder=$1 start command timed=1; shift
  (( $# )) || return 0
  [[ " $LAUNCH " == *" --dry_run "* ]] && timed=0  # a plan, not a sitting: nothing to time
  if (( timed )); then
    start=$(date +%s)
    mkdir -p "$folder"
    trap "seconds_line $start $(printf %q "$folder/$GRID_SECONDS")" EXIT
  fi
  while read -r command; do
    # shellcheck disable=SC2086  # LAUNCH is a list of flags
    if [[ ${PARALLEL:-0} == 1 ]] && (( timed )); then  # a plan's lines one after another
      eval "$command" $LAUNCH &
    else
      eval "$command" $LAUNCH || rc=$?  # failed runs (exit 1): go on, and still rebuild the page from what finished
    fi
  done < <(commands "$@")
  for job in $(jobs -p); do wait "$job" || rc=$?; done
  if (( timed )); then
    trap - EXIT
    seconds_line "$start" "$folder/$GRID_SECONDS"
  fi
}
publish() {  # folder report part "report flags" grid...: a folder's report and its part of the page, in one process
  # (the page plans each grid command as its --dry_run does and adds up sittings)
  local folder=$1 report=$2 part=$3 flags=$4; shift 4
  (( $# )) || return 0
  if [[ ! -d $folder ]]; then
    echo "error: no results folder $folder; run the grids first (STEP=grid), or set RESULTS/WIDTH" >&2
    rc=2
    return 0
  fi
  # shellcheck disable=SC2086  # flags is a list of flags
  "$PYTHON" -m utils.report "$folder" --out "$report" $flags --page "$PAGE" --part "$part" \
    --command "$(commands "$@" | sed "s|\$| $LAUNCH|")" >/dev/null
}

if [[ "$STEP" == all || "$STEP" == grid ]]; then
  sitting "$RESULTS" "${main_grids[@]}"
  sitting "$WIDTH/runs" "${wide_grids[@]}"
  sitting "$STREAM/runs" "${stream_grids[@]}"
  sitting "$ROUNDING/runs" "${rounding_grids[@]}"
fi
# A dry run (--dry_run in LAUNCH) plans the grids; it publishes nothing, or the page would record it as the command.
if [[ "$STEP" == report || ( "$STEP" == all && " $LAUNCH " != *" --dry_run "* ) ]]; then
  publish "$RESULTS" "$REPORT" "" "" "${main_grids[@]}"
  choose  # read again from the report just rebuilt: the page follows the runs, not an older summary.csv
  publish "$WIDTH/runs" "$WIDTH" width "" "${wide_grids[@]}"
  # The stream grid's primary endpoint, declared on the page before its third round's runs (issue 34).
  publish "$STREAM/runs" "$STREAM" stream "--primary AdaB2N BN-joint class_il --primary_seeds 10" "${stream_grids[@]}"
  # The comparison on seeds 0-4 and on seeds 5-9 alone (reports, no part of the page): the first round's readings
  # saw seeds 0-4; seeds 5-9 are the declared replication of its CN and TBBN readings (the BN-joint and AdaB2N rows
  # were read on all 10 seeds for the primary endpoint, so they replicate nothing).
  if (( ${#stream_grids[@]} )) && [[ -d $STREAM/runs ]]; then
    for seeds in "0 1 2 3 4" "5 6 7 8 9"; do
      # shellcheck disable=SC2086  # a list of seeds
      "$PYTHON" -m utils.report "$STREAM/runs" --seeds $seeds --no_plots --out "$STREAM/seeds${seeds:0:1}-${seeds: -1}" \
        >/dev/null || rc=$?
    done
  fi
  publish "$ROUNDING/runs" "$ROUNDING" rounding "--reruns_of $STREAM/runs" "${rounding_grids[@]}"
  for folder in $KEPT; do "$PYTHON" -m utils.report "$folder/runs" --out "$folder" >/dev/null; done
fi
exit "$rc"
