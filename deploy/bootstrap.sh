#!/usr/bin/env bash
# Creates (once per machine) the Python environment linewatch runs in, and installs
# this checkout into it in editable mode.  Sourced by the README's commands and .ci/run.
#
# The PyPI torch/torchvision pair is several GB, so the environment lives in a cache
# outside the checkout and is reused by every clone on the machine; only the cheap
# editable install is redone when pyproject.toml changes.
#
#   source deploy/bootstrap.sh [extras]     # e.g. "test"; exports LINEWATCH_PY
set -euo pipefail

_lw_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_lw_extras="${1:-}"
export LINEWATCH_CACHE="${LINEWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/linewatch}"
_lw_venv="$LINEWATCH_CACHE/venv"
mkdir -p "$LINEWATCH_CACHE"

if [ ! -x "$_lw_venv/bin/python" ]; then
  echo "[bootstrap] creating Python environment in $_lw_venv (first run on this machine; torch is large)"
  python3 -m venv "$_lw_venv"
  "$_lw_venv/bin/python" -m pip install -q --upgrade pip
fi

# One stamp per (pyproject, checkout, extras); the "test" extra is a superset of none, so a
# plain run after a test run does not reinstall (and the next test run does not either).
_lw_key="$(cat "$_lw_root/pyproject.toml" <(echo "$_lw_root") | sha256sum | cut -c1-16)"
_lw_stamp="$_lw_venv/.linewatch-$_lw_key-${_lw_extras:-base}"
if [ ! -f "$_lw_stamp" ] && ! { [ -z "$_lw_extras" ] && [ -f "$_lw_venv/.linewatch-$_lw_key-test" ]; }; then
  echo "[bootstrap] installing linewatch${_lw_extras:+[$_lw_extras]} and its dependencies"
  _lw_spec="$_lw_root"
  [ -n "$_lw_extras" ] && _lw_spec="$_lw_root[$_lw_extras]"
  "$_lw_venv/bin/python" -m pip install -q --progress-bar off -e "$_lw_spec"
  rm -f "$_lw_venv"/.linewatch-*
  touch "$_lw_stamp"
fi

export LINEWATCH_PY="$_lw_venv/bin/python"
export PATH="$_lw_venv/bin:$PATH"
