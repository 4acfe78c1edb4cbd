#!/usr/bin/env bash
# The transformers integration against several transformers releases, not only the one pip
# resolved for the main test run (the newest): the oldest supported release, the one the GPU
# machines carry, and a recent one. Each release is installed with its own dependencies into a
# directory of its own (pip --target) and put first on PYTHONPATH for the tests that use
# transformers' Mamba / FalconMamba / Mamba-2 models.
#
#   bash .ci/transformers_versions.sh                 # the releases below
#   TRANSFORMERS_VERSIONS="5.20.0" bash .ci/transformers_versions.sh
#   SSK_TF_CACHE=~/.cache/ssk-tf bash .ci/transformers_versions.sh   # keep the installs
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
# 5.15: the oldest supported (integrations/transformers.py SUPPORTED); 5.17: the GPU machines';
# 5.23: the last release whose mixer takes cache_params. The newest is the main test run's.
VERSIONS="${TRANSFORMERS_VERSIONS:-5.15.0 5.17.0 5.23.0}"
if [ -n "${SSK_TF_CACHE:-}" ]; then
  CACHE="$SSK_TF_CACHE"
  mkdir -p "$CACHE"
else
  CACHE="$(mktemp -d)"
  trap 'rm -rf "$CACHE"' EXIT
fi
TESTS=(tests/test_integration_transformers.py tests/test_integration_transformers_mamba2.py)

install() {  # install() VERSION: transformers==VERSION and its dependencies into $CACHE
  local target="$CACHE/transformers-$1"
  [ -f "$target/.complete" ] && return 0
  rm -rf "$target"
  $PY -m pip install --quiet --disable-pip-version-check --target "$target" "transformers==$1" &&
    touch "$target/.complete"
}

# The installs are mostly downloads: run them side by side, then the tests one release at a time.
pids=()
for v in $VERSIONS; do
  install "$v" > "$CACHE/install-$v.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { failed=1; cat "$CACHE/install-$(echo $VERSIONS | cut -d' ' -f$((i + 1))).log" >&2; }
done
[ "$failed" = 0 ] || { echo "installing a transformers release failed" >&2; exit 1; }

for v in $VERSIONS; do
  target="$CACHE/transformers-$v"
  found=$(PYTHONPATH="$target" $PY -c 'import transformers; print(transformers.__version__)')
  if [ "$found" != "$v" ]; then
    echo "expected transformers $v on PYTHONPATH, imported $found" >&2
    exit 1
  fi
  echo "== transformers $v: ${TESTS[*]}"
  PYTHONPATH="$target" $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
done
