#!/usr/bin/env bash
# Reproduce docs/results.md: the paper's online comparison on Split Fashion-MNIST (issues 7 and 16).
#
#   bash scripts/reproduce_fmnist.sh            # the grids (resumable) + report + page, on GPUs if NVML sees any
#   STEP=report bash scripts/reproduce_fmnist.sh   # only the report and the page, from existing results
#
# The grids share one results folder (a run that two of them name is run once):
#   1. the comparison: every method, 2 models x 2 buffers x 3 seeds, AdaB2N (and its renormalised variant) tuned on a
#      validation split over the paper's whole search space, kappa 0.1/0.4/0.7/1.0 x lambd 0.01/0.1/1/10 x ada_t0 0/1;
#      with ER-ACE the reference adds the regulariser from the second task whatever ada_t0 says (README, AdaB2N), so
#      ada_t0 0 and 1 are the same run there and only ada_t0 1 is run;
#   2. the sensitivity grid: every AdaB2N configuration as a test run, 3 seeds, in the columns derpp 200 and
#      er_ace 500 (selection on test against selection on validation, issue 16);
#   3. five seeds: BN, AdaB2N and AdaB2N-renorm at the validation choice, seeds 0-4, in er_ace 500, the column where
#      AdaB2N's gain is largest.
# Environment: RESULTS (results folder, default docs/results/fmnist/runs: the published runs; with another, also
# set REPORT and PAGE so the published report and page are not overwritten), LAUNCH (run.py's execution flags, default
# "--cpu_workers 2" without a GPU; on one large GPU e.g. "--max_per_gpu 14 --usage_threshold 0.9 --coldsecs 1"),
# SPC (training images per class, default 1000 as published; "full" for all 6000), EXTRA_FLAGS (more run flags,
# e.g. "--num_threads 1" to leave a core free; mind that every run records them and the report averages runs only of
# one protocol), GRIDS (which grids to run, default "compare sensitivity seeds").
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-docs/results/fmnist/runs}
SPC=${SPC:-1000}
STEP=${STEP:-all}
LAUNCH=${LAUNCH:---cpu_workers 2}
GRIDS=${GRIDS:-compare sensitivity seeds}
REPORT=${REPORT:-docs/results/fmnist}  # tables and plots
PAGE=${PAGE:-docs/results.md}          # the page they are published on
rc=0
# --channels_last: about 20 % faster on the CPU, same float32 arithmetic; --ignore_other_metrics: no FWT evaluations
# (not in the tables), 10 % less time.
EXTRA="--nf 20 --diagnose_norm 1 --channels_last 1 --ignore_other_metrics 1 ${EXTRA_FLAGS:-}"
[[ "$SPC" == full ]] || EXTRA="$EXTRA --samples_per_class $SPC"

PYTHON=${PYTHON:-python}
COMMON=(--datasets seq-fmnist --bs 10 --epochs 1 --kappas 0.1 0.4 0.7 1.0 --lambdas 0.01 0.1 1 10
  --extra "$EXTRA" --results_path "$RESULTS" --logdir "$RESULTS/logs" --nowandb --yes)
TUNE=(--buffer_sizes 200 500 --methods BN BN-joint GN CN BRN AdaB2N AdaB2N-renorm --num_seeds 3
  --tune validation --tune_seeds 0)
# One run.py command a line (shell-quoted): each grid and its models, buffers and ada_t0 values.
line() { printf '%q ' "$PYTHON" run.py "${COMMON[@]}" "$@"; echo; }
commands() {
  for grid in $GRIDS; do
    case "$grid" in
      compare)
        line "${TUNE[@]}" --models er_ace --ada_t0s 1
        line "${TUNE[@]}" --models derpp --ada_t0s 0 1 ;;
      sensitivity)
        line --methods AdaB2N --num_seeds 3 --models er_ace --buffer_sizes 500 --ada_t0s 1
        line --methods AdaB2N --num_seeds 3 --models derpp --buffer_sizes 200 --ada_t0s 0 1 ;;
      seeds)  # five seeds where AdaB2N's gain is largest (er_ace 500), at the validation choice
        line --buffer_sizes 500 --methods BN AdaB2N AdaB2N-renorm --num_seeds 5 --tune validation --tune_seeds 0 \
          --models er_ace --ada_t0s 1 ;;
      *) echo "unknown grid '$grid' in GRIDS; use compare, sensitivity and/or seeds" >&2; exit 2 ;;
    esac
  done
}

if [[ "$STEP" == all || "$STEP" == grid ]]; then
  start=$(date +%s)
  mkdir -p "$RESULTS"
  # One line per invocation, also an interrupted one: the page adds them up (a grid may take several sittings).
  trap 'echo "$(( $(date +%s) - start )) $(hostname) $(date -u +%FT%TZ)" >>"$RESULTS/grid_seconds.txt"' EXIT
  while read -r command; do
    # shellcheck disable=SC2086  # LAUNCH is a list of flags
    eval "$command" $LAUNCH || rc=$?  # failed runs (exit 1): go on, and still rebuild the page from what finished
  done < <(commands)
  trap - EXIT
  echo "$(( $(date +%s) - start )) $(hostname) $(date -u +%FT%TZ)" >>"$RESULTS/grid_seconds.txt"
fi
if [[ "$STEP" == all || "$STEP" == report ]]; then
  "$PYTHON" -m utils.report "$RESULTS" --out "$REPORT" >/dev/null
  planned=$(while read -r command; do eval "$command --dry_run" | tail -1 | sed 's/^=> //'; done < <(commands) | paste -sd';' | sed 's/;/; /g')
  "$PYTHON" -m utils.results_page "$RESULTS" "$REPORT" "$PAGE" --planned "$planned" \
    --command "$(commands | sed "s|\$| $LAUNCH|")"
fi
exit "$rc"
