#!/usr/bin/env bash
# The 2-process tests in a loop beside a bounded load, the way the torchrun abort of issue 37
# was caught: `bash benchmarks/torchrun_abort_loop.sh RUNS [LOG]`. The load is a package
# install into a scratch venv, again and again (CPU and disk, like the install that broke a
# suite run), and stops with the loop. Core dumps are on (ulimit -c) so that an abort leaves a
# core in the repository root for `gdb -batch -ex 'thread apply all bt' .venv/bin/python core`.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}; log=${2:-/tmp/torchrun_abort_loop.log}
ulimit -c unlimited
export TORCH_SHOW_CPP_STACKTRACES=1 PYTHONFAULTHANDLER=1
scratch=$(mktemp -d); export scratch
# the load in its own process group (setsid), so that the trap stops all of it
setsid bash -c 'while :; do rm -rf "$scratch/venv"; python3 -m venv "$scratch/venv" &&
    "$scratch/venv/bin/pip" install -q --no-cache-dir -c constraints.txt "label-studio>=1.23,<1.24" >/dev/null 2>&1
  done' &
load=$!
trap 'kill -- -$load 2>/dev/null; wait $load 2>/dev/null; rm -rf "$scratch"' EXIT
passed=0; failed=0
for i in $(seq "$runs"); do
  start=$(date +%s)
  if .venv/bin/python -m pytest -q -p no:cacheprovider tests/distributed > "$log.run$i" 2>&1; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
  echo "$(date +%T) run $i: $(tail -1 "$log.run$i") ($(( $(date +%s) - start )) s) passed=$passed failed=$failed" | tee -a "$log"
done
