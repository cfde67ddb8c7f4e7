"""``activedet predict --label-studio`` on a large pool against a real Label Studio (issue 41).

Writes N small PNG images (noise, ``--side`` pixels) as the pool and 8 labeled images (one
white square each, its box) as the labeled set, starts a Label Studio (the test harness,
``tests/labeling/ls_server.py``), runs ``select --budget 10 --label-studio`` (binds the
project, trains the tiny detector of the config below on the 8 images), then:

1. ``activedet predict`` killed with SIGKILL once its progress line says ``--kill-at``
   images were sent;
2. the same command again (it sends the rest);
3. the same command once more (it sends nothing).

Each run is a subprocess whose peak resident memory is read from ``/proc/PID/status``
(VmHWM, polled every 0.2 s); images per second is what the run's own summary says (sent /
seconds from its first chunk). At the end every task of the Label Studio project is
checked to hold the model version exactly once.

    ACTIVEDET_LABEL_STUDIO=.venv-labelstudio/bin/label-studio PYTHONPATH=src:. \\
        .venv/bin/python benchmarks/bulk_predict.py --images 10000 --out /tmp/bulk [--chunk 256]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.labeling.ls_server import TOKEN, LabelStudio  # noqa: E402


def write_data(out: Path, n: int, side: int) -> Path:
    """The pool folder, the labeled COCO file and the config; returns the config."""
    pool = out / "files" / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        p = pool / f"{k // 1000:02d}" / f"{k:06d}.png"
        if not p.exists():
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(p)
    labeled = out / "files" / "labeled"
    labeled.mkdir(exist_ok=True)
    images, anns = [], []
    for k in range(8):
        img = np.zeros((64, 64, 3), np.uint8)
        x, y = 8 + 4 * k, 10 + 2 * k
        img[y:y + 20, x:x + 20] = 255
        Image.fromarray(img).save(labeled / f"l{k}.png")
        images.append({"id": k + 1, "file_name": f"l{k}.png", "width": 64, "height": 64})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [x, y, 20, 20]})
    (labeled / "labeled.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                      "categories": [{"id": 1, "name": "square"}]}))
    cfg = {"seed": 0, "device": "cpu", "task": "detection", "strategy": {"name": "least_confidence"},
           "model": {"arch": "fcos", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 64,
                     "score_thresh": 0.05},
           "train": {"epochs": 1, "batch_size": 4},
           "dataset": {"train": str(labeled / "labeled.json"), "unlabeled": str(pool)}}
    (out / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return out / "cfg.yaml"


def run(argv: list[str], env: dict, kill_at: int | None = None) -> dict:
    """One activedet command as a subprocess: its exit code, wall seconds, peak RSS (MiB),
    its JSON summary (when it finished) and its last progress line."""
    t0 = time.time()
    err_path = Path(env["BENCH_OUT"]) / f"stderr-{int(t0 * 1000)}.txt"
    proc = subprocess.Popen([sys.executable, "-m", "activedet.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=err_path.open("w"), text=True)
    peak, killed = 0, False
    while proc.poll() is None:
        try:
            hwm = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmHWM"))
            peak = max(peak, int(hwm.split()[1]))
        except (OSError, StopIteration):
            pass
        lines = [ln for ln in err_path.read_text().splitlines() if "images sent" in ln]
        if kill_at is not None and lines and int(lines[-1].split()[1].split("/")[0]) >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    lines = [ln for ln in err_path.read_text().splitlines() if ln.startswith("predict:")]
    return {"argv": argv[0], "code": proc.returncode, "killed": killed, "wall_s": round(time.time() - t0, 1),
            "peak_rss_mib": round(peak / 1024, 1), "summary": json.loads(out) if out.strip() else None,
            "last_progress": lines[-1] if lines else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--side", type=int, default=48)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--kill-at", type=int, default=4000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cfg = write_data(out, args.images, args.side)
    print(f"data written: {time.time() - t0:.0f} s", flush=True)
    env = {**os.environ, "LABEL_STUDIO_API_KEY": TOKEN, "OMP_NUM_THREADS": "1", "BENCH_OUT": str(out),
           "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    ls = LabelStudio(out / "ls-data", out / "files", out / "label-studio.log")
    results = []
    try:
        print(f"Label Studio answered after {ls.wait():.0f} s", flush=True)
        project = str(out / "project")
        sel = run(["select", str(cfg), "--project", project, "--budget", "10", "--quiet", "--json",
                   "--label-studio", ls.url], env)
        print(json.dumps({k: v for k, v in sel.items() if k != "summary"}), flush=True)
        assert sel["code"] == 0, sel
        pid = sel["summary"]["label_studio"]["project"]
        pred = ["predict", "--project", project, "--label-studio", ls.url, "--chunk", str(args.chunk), "--json"]
        for kill_at in (args.kill_at, None, None):
            results.append(run(pred, env, kill_at))
            print(json.dumps(results[-1]), flush=True)
        version = results[1]["summary"]["model_version"]
        listed = ls.get(f"/api/predictions?project={pid}")
        listed = listed if isinstance(listed, list) else listed.get("results", [])
        per_task = Counter(p["task"] for p in listed if p["model_version"] == version)
        n_tasks = ls.get(f"/api/projects/{pid}")["task_number"]
        check = {"tasks": n_tasks, "tasks_with_version": len(per_task),
                 "max_predictions_of_version_per_task": max(per_task.values())}
        print(json.dumps(check), flush=True)
    finally:
        ls.stop()
    (out / "result.json").write_text(json.dumps({"runs": results, "check": check, "images": args.images,
                                                 "chunk": args.chunk}, indent=1))


if __name__ == "__main__":
    main()
