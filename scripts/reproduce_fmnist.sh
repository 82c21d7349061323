#!/usr/bin/env bash
# Reproduce docs/results.md: the paper's online comparison on Split Fashion-MNIST (issue 7).
#
#   bash scripts/reproduce_fmnist.sh            # grid (resumable) + report + page, on GPUs if NVML sees any
#   STEP=report bash scripts/reproduce_fmnist.sh   # only the report and the page, from existing results
#
# Environment: RESULTS (results folder, default docs/results/fmnist/runs: the published runs; with another, also
# set REPORT and PAGE so the published report and page are not overwritten), LAUNCH (run.py's execution flags, default
# "--cpu_workers 2" without a GPU; on one large GPU e.g. "--max_per_gpu 14 --usage_threshold 0.9 --coldsecs 1"),
# SPC (training images per class, default 1000 as published; "full" for all 6000), EXTRA_FLAGS (more run flags,
# e.g. "--amp 1"; mind that every run records them and the report averages runs only of one protocol).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-docs/results/fmnist/runs}
SPC=${SPC:-1000}
STEP=${STEP:-all}
LAUNCH=${LAUNCH:---cpu_workers 2}
REPORT=${REPORT:-docs/results/fmnist}  # tables and plots
PAGE=${PAGE:-docs/results.md}          # the page they are published on
rc=0
# --channels_last: about 20 % faster on the CPU, same float32 arithmetic; --ignore_other_metrics: no FWT evaluations
# (not in the tables), 10 % less time.
EXTRA="--nf 20 --diagnose_norm 1 --channels_last 1 --ignore_other_metrics 1 ${EXTRA_FLAGS:-}"
[[ "$SPC" == full ]] || EXTRA="$EXTRA --samples_per_class $SPC"

PYTHON=${PYTHON:-python}
GRID=("$PYTHON" run.py --datasets seq-fmnist --models er_ace derpp --buffer_sizes 200 500
  --methods BN BN-joint GN CN BRN AdaB2N AdaB2N-renorm --num_seeds 3
  --tune validation --tune_seeds 0 --kappas 0.1 0.4 1.0 --lambdas 0.01 0.1 1 --ada_t0s 0 1
  --bs 10 --epochs 1 --extra "$EXTRA" --results_path "$RESULTS" --logdir "$RESULTS/logs" --nowandb --yes)

if [[ "$STEP" == all || "$STEP" == grid ]]; then
  start=$(date +%s)
  mkdir -p "$RESULTS"
  # One line per invocation, also an interrupted one: the page adds them up (a grid may take several sittings).
  trap 'echo "$(( $(date +%s) - start )) $(hostname) $(date -u +%FT%TZ)" >>"$RESULTS/grid_seconds.txt"' EXIT
  # shellcheck disable=SC2086  # LAUNCH is a list of flags
  "${GRID[@]}" $LAUNCH || rc=$?  # failed runs (exit 1): still rebuild the page from what finished
  trap - EXIT
  echo "$(( $(date +%s) - start )) $(hostname) $(date -u +%FT%TZ)" >>"$RESULTS/grid_seconds.txt"
fi
if [[ "$STEP" == all || "$STEP" == report ]]; then
  "$PYTHON" -m utils.report "$RESULTS" --out "$REPORT" >/dev/null
  planned=$("${GRID[@]}" --dry_run | tail -1 | sed 's/^=> //')
  # The command as this invocation would run it (its LAUNCH and EXTRA_FLAGS; earlier sittings' are in their logs).
  # shellcheck disable=SC2086
  "$PYTHON" -m utils.results_page "$RESULTS" "$REPORT" "$PAGE" --planned "$planned" \
    --command "$("$PYTHON" -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "${GRID[@]}" $LAUNCH)"
fi
exit "$rc"
