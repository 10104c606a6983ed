#!/usr/bin/env bash
# The Python environment linewatch runs in: the dependencies once per machine, and a thin
# environment of this checkout's own on top.  Sourced by the README's commands and .ci/run.
#
# The PyPI torch/torchvision pair is several GB, so the dependencies live in a cache outside the
# checkout ($LINEWATCH_CACHE/venv, default ~/.cache/linewatch/venv) that every clone on the machine
# shares; only what pyproject.toml asks for is installed there, never linewatch itself.  Each
# checkout gets <checkout>/.venv: a venv that sees the cached packages through a .pth file and
# holds nothing but the editable install of this checkout (its console scripts included).  Two
# checkouts on one machine therefore never run each other's code, and neither reinstalls the
# other's environment.
#
#   source deploy/bootstrap.sh [extras]     # e.g. "test"; exports LINEWATCH_PY, puts .venv/bin on PATH
set -euo pipefail

_lw_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_lw_extras="${1:-}"
export LINEWATCH_CACHE="${LINEWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/linewatch}"
_lw_base="$LINEWATCH_CACHE/venv"
_lw_thin="$_lw_root/.venv"
mkdir -p "$LINEWATCH_CACHE"

if [ ! -x "$_lw_base/bin/python" ]; then
  echo "[bootstrap] creating the shared Python environment in $_lw_base (first run on this machine; torch is large)"
  python3 -m venv "$_lw_base"
  "$_lw_base/bin/python" -m pip install -q --upgrade pip
fi

# 1. the dependencies, in the shared environment: one stamp per (dependency list, extras); the
#    "test" extra is a superset of none, so a plain run after a test run installs nothing
_lw_reqs="$("$_lw_base/bin/python" - "$_lw_root/pyproject.toml" "$_lw_extras" <<'EOF'
import sys, tomllib
pyproject = tomllib.load(open(sys.argv[1], "rb"))
project = pyproject["project"]
# the build backend too: the thin environments' editable installs build with it, offline
reqs = list(pyproject["build-system"]["requires"]) + list(project["dependencies"])
for extra in filter(None, sys.argv[2].split(",")):
    reqs += project.get("optional-dependencies", {})[extra]
print("\n".join(reqs))
EOF
)"
_lw_key="$(printf '%s\n' "$_lw_reqs" | sha256sum | cut -c1-16)"
_lw_deps_stamp="$_lw_base/.deps-$_lw_key-${_lw_extras:-base}"
if [ ! -f "$_lw_deps_stamp" ] && ! { [ -z "$_lw_extras" ] && [ -f "$_lw_base/.deps-$_lw_key-test" ]; }; then
  echo "[bootstrap] installing linewatch's dependencies${_lw_extras:+ (with [$_lw_extras])} into $_lw_base"
  _lw_reqfile="$(mktemp)"
  printf '%s\n' "$_lw_reqs" >"$_lw_reqfile"
  "$_lw_base/bin/python" -m pip install -q --progress-bar off -r "$_lw_reqfile"
  rm -f "$_lw_reqfile"
  touch "$_lw_deps_stamp"
fi

# 2. this checkout's thin environment: the shared packages come after its own on sys.path (the
#    .pth runs site.addsitedir, so their own .pth files work too), and its editable install of this
#    checkout is found first, whatever else is installed in the shared environment
if [ ! -x "$_lw_thin/bin/python" ] || [ "$(cat "$_lw_thin/.shared-env" 2>/dev/null)" != "$_lw_base" ]; then
  echo "[bootstrap] creating this checkout's environment $_lw_thin on top of $_lw_base"
  rm -rf "$_lw_thin"
  "$_lw_base/bin/python" -m venv --without-pip "$_lw_thin"
  _lw_base_site="$("$_lw_base/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  _lw_thin_site="$("$_lw_thin/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  echo "import site; site.addsitedir('$_lw_base_site')" >"$_lw_thin_site/zz_linewatch_shared_env.pth"
  echo "$_lw_base" >"$_lw_thin/.shared-env"
fi
_lw_self_key="$(sha256sum "$_lw_root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$_lw_thin/.linewatch-$_lw_self_key" ]; then
  echo "[bootstrap] installing this checkout ($_lw_root) into $_lw_thin"
  # pip and the build backend come from the shared environment: nothing is fetched for this step
  "$_lw_thin/bin/python" -m pip install -q --progress-bar off --no-deps --no-build-isolation -e "$_lw_root"
  rm -f "$_lw_thin"/.linewatch-[0-9a-f]*
  touch "$_lw_thin/.linewatch-$_lw_self_key"
fi

export LINEWATCH_PY="$_lw_thin/bin/python"
export PATH="$_lw_thin/bin:$PATH"
