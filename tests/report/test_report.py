"""Report: plots, tables, report.json and index.html from fake status dicts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activedet.errors import ActivedetError
from activedet.report import (
    aggregate,
    markdown_boxes_table,
    markdown_table,
    plot_curves,
    plot_seconds,
    primary_metric,
    write_report,
)

POOL = 400


def fake_status(strategy: str, seed: int, task: str = "detection", rounds: int = 4,
                initial: int = 20, step: int = 10, complete: bool = True,
                last_unevaluated: bool = False) -> dict:
    """A status dict shaped like `activedet status RUN_DIR --json`."""
    rng = np.random.default_rng(seed + 100 * len(strategy))
    boost = 0.05 if strategy != "random" else 0.0
    out_rounds = []
    boxes = 0
    for k in range(rounds):
        images = initial + k * step
        boxes += int(rng.integers(2, 4) * (initial if k == 0 else step))
        quality = 0.2 + 0.08 * k + boost + rng.normal(0, 0.01)
        if task == "detection":
            metrics = {"AP": quality / 2, "AP50": quality, "AP75": quality / 3,
                       "per_class_AP50": {"a": quality}}
        else:
            metrics = {"top1": quality + 0.3, "per_class_accuracy": {"a": quality}}
        if last_unevaluated and k == rounds - 1:
            metrics = None
        out_rounds.append({
            "round": k, "selected": list(range(k * step, (k + 1) * step)),
            "labeled_images": images, "labeled_boxes": boxes, "metrics": metrics,
            "seconds": {"train": 30.0 + k + rng.random(), "evaluate": 2.0 + rng.random(),
                        "score": 5.0 + rng.random(), "select": 0.05 * (1 + rng.random())},
        })
    return {"run_dir": f"runs/{strategy}_s{seed}", "strategy": strategy, "complete": complete,
            "task": task, "seed": seed, "pool_size": POOL, "pool_boxes": 1000,
            "rounds": out_rounds}


@pytest.fixture(scope="module")
def det_runs() -> list[dict]:
    return [fake_status(s, seed) for s in ("random", "mial") for seed in (0, 1)]


@pytest.fixture(scope="module")
def det_report(det_runs: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    extra = out.parent / "heatmap.png"
    Image.new("RGB", (32, 24), (200, 30, 30)).save(extra)
    index = write_report(det_runs, out, extra_sections=[("Uncertainty", "<p id='unc'>maps</p>")],
                         extra_images=[extra])
    assert index == out / "index.html"
    return out


def test_primary_metric() -> None:
    assert primary_metric("detection") == "AP50"
    assert primary_metric("classification") == "top1"
    with pytest.raises(ActivedetError, match="segmentation"):
        primary_metric("segmentation")


def test_write_report_creates_valid_files(det_report: Path) -> None:
    for name in ("ap_vs_images.png", "ap_vs_boxes.png", "seconds.png", "table.md",
                 "report.json", "index.html"):
        assert (det_report / name).is_file(), name
    for name in ("ap_vs_images.png", "ap_vs_boxes.png", "seconds.png"):
        with Image.open(det_report / name) as img:
            img.verify()
        with Image.open(det_report / name) as img:
            assert img.format == "PNG" and img.size == (840, 540)


def test_index_html_references_existing_files(det_report: Path) -> None:
    page = (det_report / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {"ap_vs_images.png", "ap_vs_boxes.png", "seconds.png", "table.md"} <= set(refs)
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "/")), ref
        assert (det_report / ref).is_file(), ref
    assert "extra/heatmap.png" in refs
    assert "<h2>Uncertainty</h2>" in page and "<p id='unc'>maps</p>" in page
    for run_dir in ("runs/random_s0", "runs/random_s1", "runs/mial_s0", "runs/mial_s1"):
        assert run_dir in page
    assert "<table" in page and "<link" not in page and "<script" not in page


def test_markdown_table_shape(det_runs: list[dict]) -> None:
    text = markdown_table(det_runs, "AP50")
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Strategy", "Seeds", "5.0%", "7.5%", "10.0%", "12.5%"]
    body = lines[2:]
    assert len(body) == 2
    assert [row.split("|")[1].strip() for row in body] == ["mial", "random"]
    # mean ± std in percent of the two seeds at 5% labeled
    values = [r["rounds"][0]["metrics"]["AP50"] * 100 for r in det_runs if r["strategy"] == "mial"]
    cell = body[0].split("|")[3].strip()
    assert cell == f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"
    assert markdown_table(det_runs) == text  # AP50 is the default for detection


def test_boxes_table(det_runs: list[dict]) -> None:
    lines = markdown_boxes_table(det_runs).splitlines()
    assert len(lines) == 4 and "5.0%" in lines[0]
    boxes = [r["rounds"][0]["labeled_boxes"] for r in det_runs if r["strategy"] == "random"]
    assert lines[3].split("|")[3].strip().startswith(f"{np.mean(boxes):.0f}")


def test_misaligned_rounds_leave_blanks() -> None:
    runs = [fake_status("random", 0), fake_status("mial", 0, initial=30, step=20, rounds=2),
            fake_status("mial", 1, rounds=3, complete=False, last_unevaluated=True)]
    lines = markdown_table(runs).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[2:] == ["5.0%", "7.5%", "10.0%", "12.5%"]
    mial = [c.strip() for c in lines[2].strip("|").split("|")]
    random_row = [c.strip() for c in lines[3].strip("|").split("|")]
    assert mial[0] == "mial" and mial[1] == "2"
    assert mial[2] and "±" not in mial[2]  # only seed 1 at 5%
    assert "±" in mial[3]  # 7.5%: both seeds
    assert mial[4] == ""  # 10.0%: seed 0 jumped from 7.5% to 12.5%, seed 1 not evaluated
    assert mial[5] and "±" not in mial[5]
    assert all(random_row[2:])


def test_report_json_aggregates(det_report: Path, det_runs: list[dict]) -> None:
    data = json.loads((det_report / "report.json").read_text())
    assert data["task"] == "detection" and data["metric"] == "AP50"
    assert set(data["strategies"]) == {"random", "mial"}
    rounds = data["strategies"]["random"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    vals = [run["rounds"][2]["metrics"]["AP50"] for run in det_runs if run["strategy"] == "random"]
    assert rounds[2]["metric"]["mean"] == pytest.approx(np.mean(vals))
    assert rounds[2]["metric"]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert rounds[2]["labeled_images"]["mean"] == 40
    assert len(data["runs"]) == 4
    assert aggregate(det_runs)["strategies"]["mial"]["seeds"] == [0, 1]


def test_classification_report_has_no_boxes_plot(tmp_path: Path) -> None:
    runs = [fake_status("random", 0, task="classification"),
            fake_status("entropy", 0, task="classification", last_unevaluated=True)]
    write_report(runs, tmp_path)
    assert (tmp_path / "ap_vs_images.png").is_file()
    assert not (tmp_path / "ap_vs_boxes.png").exists()
    page = (tmp_path / "index.html").read_text()
    assert "ap_vs_boxes.png" not in page and "Top-1 accuracy" in page
    table = (tmp_path / "table.md").read_text()
    assert "Labeled boxes" not in table
    assert "50.0" in table or "%" in table


def test_plots_skip_null_metrics_and_tolerate_no_data(tmp_path: Path) -> None:
    runs = [fake_status("random", 0, rounds=1, last_unevaluated=True, complete=False)]
    png = plot_curves(runs, "labeled_boxes", None, tmp_path / "empty.png")
    with Image.open(png) as img:
        img.verify()
    runs[0]["rounds"][0]["seconds"] = None
    with Image.open(plot_seconds(runs, tmp_path / "sec.png")) as img:
        img.verify()
    with pytest.raises(ActivedetError, match="labeled_area"):
        plot_curves(runs, "labeled_area", None, tmp_path / "x.png")


def test_bad_runs_raise() -> None:
    with pytest.raises(ActivedetError, match="no runs"):
        markdown_table([])
    det, cls = fake_status("random", 0), fake_status("random", 1, task="classification")
    with pytest.raises(ActivedetError, match="mix tasks"):
        markdown_table([det, cls])
    broken = fake_status("random", 0)
    broken["pool_size"] = 0
    with pytest.raises(ActivedetError, match="runs/random_s0"):
        markdown_table([broken])
