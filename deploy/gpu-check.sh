#!/usr/bin/env bash
# The prepared GPU check: run it on any machine with a CUDA GPU before trusting it with training.
#
#   bash deploy/gpu-check.sh [--model NAME] [--data CATEGORY] [--json OUT.json]
#   bash deploy/gpu-check.sh --dry-run          # the same steps on the CPU in seconds (CI runs this)
#
# It trains one category at the family's `gpu` profile (for EAR + FADeR the paper's settings: 256 px,
# U-Net width 32, 100 + 100 epochs), checks that autocast and batching do not change the results, and
# prints image AUROC and frames/s at batch 1, 8 and 32; it is sized to finish within about 10 minutes
# on one current data-centre GPU.  Exit status 0 when every check passes, 1 when one fails, 2 when it
# cannot run (no CUDA device without --dry-run, no data).  All options: `linewatch-detector gpu-check --help`.
#
# The category defaults to the first one under $LINEWATCH_SHARED_DIR/data (or ../shared/data).
# It uses the checkout's environment (.venv, made by deploy/bootstrap.sh) when there is one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,14p' "$0"
  exit 0
fi
if [ -x "$here/.venv/bin/linewatch-detector" ]; then
  exec "$here/.venv/bin/linewatch-detector" gpu-check "$@"
fi
exec linewatch-detector gpu-check "$@"
