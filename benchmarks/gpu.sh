#!/usr/bin/env bash
# The checks and figures that need a CUDA device, in one go (issue 27, item 6), meant to fit in
# 8 minutes on one device (never run on one yet; each step has a timeout): the tests marked `gpu` (an AMP training round with finite losses,
# NCCL with world size 1), and the CUDA columns of selection_cost.py, isal_scoring.py and throughput.py.
# Writes one JSON file (default benchmarks/gpu.json). Without CUDA: one line, exit 0.
#
#   bash benchmarks/gpu.sh [OUT.json]          # PY=... to use another interpreter than .venv's
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-benchmarks/gpu.json}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu.sh: no CUDA device here (torch.cuda.is_available() is False): nothing to run"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
set +e
timeout 240 "$PY" -m pytest -m gpu tests/gpu -p no:cacheprovider --junitxml "$tmp/tests.xml" -q
tests_rc=$?
timeout 150 "$PY" benchmarks/selection_cost.py --device cuda --repeats 2 --json "$tmp/selection_cost.json"
cost_rc=$?
timeout 60 "$PY" benchmarks/isal_scoring.py --device cuda --json "$tmp/isal_scoring.json"
isal_rc=$?
timeout 90 "$PY" benchmarks/throughput.py --device cuda --repeats 2 --json "$tmp/throughput.json"
tp_rc=$?
set -e
"$PY" - "$tmp" "$OUT" "$tests_rc" "$cost_rc" "$isal_rc" "$tp_rc" "$start" <<'PYEOF'
import json, sys, time
from pathlib import Path
import torch
tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
rc = dict(zip(("tests", "selection_cost", "isal_scoring", "throughput"), map(int, sys.argv[3:7])))
def read(name):
    p = tmp / name
    return json.loads(p.read_text()) if p.is_file() else None
result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "exit_codes": rc,
          "tests_junit": (tmp / "tests.xml").read_text() if (tmp / "tests.xml").is_file() else None,
          "selection_cost": read("selection_cost.json"), "isal_scoring": read("isal_scoring.json"),
          "throughput": read("throughput.json"), "seconds": time.time() - int(sys.argv[7])}
out.write_text(json.dumps(result, indent=1))
print(f"gpu.sh: wrote {out} ({result['seconds']:.0f} s); exit codes {rc}")
sys.exit(0 if not any(rc.values()) else 1)
PYEOF
