"""Issue 15, first contact: what a new user hits in the first hour (each test failed before
its fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from activedet.cli import main
from activedet.config import load_config
from activedet.data.pool import Pool
from activedet.errors import ConfigError
from activedet.loop.runner import budget_targets
from tests.conftest import make_detection_dataset


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("text", ["", "seed: 1\n", "loop: {cycles: 1}\n", "dataset: {test: t.json}\n"])
def test_empty_or_near_empty_config_is_refused(tmp_path: Path, capsys, text: str) -> None:
    cfg = _write(tmp_path / "c.yaml", text)
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'dataset.train' is required" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_type_errors_say_what_was_expected_and_1e_2_is_a_number(tmp_path: Path) -> None:
    head = "dataset: {train: 'builtin:shapes'}\n"
    with pytest.raises(ConfigError, match=r"train.epochs': 'ten' is not an integer"):
        load_config(_write(tmp_path / "a.yaml", head + "train: {epochs: ten}\n"))
    with pytest.raises(ConfigError, match=r"train.hflip': 'yes please' is not true or false"):
        load_config(_write(tmp_path / "b.yaml", head + "train: {hflip: yes please}\n"))
    cfg = load_config(_write(tmp_path / "c.yaml", head + "train: {lr: 1e-2, weight_decay: 5e-4}\n"))
    assert cfg.train.lr == 0.01 and cfg.train.weight_decay == 0.0005


def test_loop_initial_float_is_a_fraction_int_a_count(tmp_path: Path) -> None:
    head = "dataset: {train: 'builtin:shapes'}\n"
    cfg = load_config(_write(tmp_path / "a.yaml", head + "loop: {initial: 1.0, cycles: 0}\n"))
    assert budget_targets(cfg.loop, Pool(range(40))) == [40]  # everything, not one image
    cfg = load_config(_write(tmp_path / "b.yaml", head + "loop: {initial: 1, cycles: 0}\n"))
    assert budget_targets(cfg.loop, Pool(range(40))) == [1]
    with pytest.raises(ConfigError, match=r"loop.initial' = 5.0: .*an integer: 5"):
        load_config(_write(tmp_path / "c.yaml", head + "loop: {initial: 5.0}\n"))


def test_relative_paths_resolve_from_the_config_folder(tmp_path: Path, monkeypatch) -> None:
    make_detection_dataset(n=4).export_coco(tmp_path / "exp" / "data")
    cfg_path = _write(tmp_path / "exp" / "c.yaml",
                      "dataset: {train: data/annotations.json, train_images: data, test: voc:vocdir:val}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_path)
    assert cfg.dataset.train == str(tmp_path / "exp" / "data" / "annotations.json")
    assert cfg.dataset.train_images == str(tmp_path / "exp" / "data")
    assert cfg.dataset.test == f"voc:{tmp_path / 'exp' / 'vocdir'}:val"


def test_overrides_are_applied_and_recorded(tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path / "c.yaml", "dataset: {train: 'builtin:shapes'}\nstrategy: {name: mial, lambda: 0.3}\n")
    assert main(["config", str(cfg), "--json", "--set", "train.epochs=1", "--set", "strategy.name=entropy",
                 "--set", "loop.initial=0.5"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["train"]["epochs"] == 1 and resolved["loop"]["initial"] == 0.5
    assert resolved["strategy"]["name"] == "entropy" and "lambda" not in resolved["strategy"]
    assert main(["config", str(cfg), "--set", "train.epochs"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


# ------------------------------------------------------------------ per-split image roots
def test_one_image_root_for_two_coco_files_is_refused(tmp_path: Path) -> None:
    a = make_detection_dataset(n=4, seed=1).export_coco(tmp_path / "a")
    b = make_detection_dataset(n=4, seed=2, start_id=100).export_coco(tmp_path / "b")
    text = f"dataset: {{train: {a}, test: {b}, images: {tmp_path / 'a'}}}\n"
    with pytest.raises(ConfigError, match="dataset.train_images, dataset.test_images"):
        load_config(_write(tmp_path / "c.yaml", text))
    same = f"dataset: {{train: {a}, test: {a}, images: {tmp_path / 'a'}}}\n"  # one file: unambiguous
    assert load_config(_write(tmp_path / "d.yaml", same)).dataset.images == str(tmp_path / "a")
    with pytest.raises(ConfigError, match="test_images' is set but 'dataset.test'"):
        load_config(_write(tmp_path / "e.yaml", f"dataset: {{train: {a}, test_images: {tmp_path}}}\n"))


def test_each_split_reads_its_own_image_root(tmp_path: Path) -> None:
    from activedet.loop.runner import prepare

    train = make_detection_dataset(n=8, seed=1)
    test = make_detection_dataset(n=4, seed=2)  # same file names as train's first four
    a, b = train.export_coco(tmp_path / "a"), test.export_coco(tmp_path / "b")
    (tmp_path / "a" / "annotations.json").rename(tmp_path / "train.json")
    (tmp_path / "b" / "annotations.json").rename(tmp_path / "test.json")
    cfg = load_config(_write(tmp_path / "c.yaml", yaml.safe_dump({
        "dataset": {"train": "train.json", "train_images": "a", "test": "test.json", "test_images": "b"},
        "model": {"arch": "retinanet", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 64},
        "loop": {"initial": 2, "per_cycle": 1, "cycles": 1}})))
    exp = prepare(cfg)
    first = exp.test.ids[0]
    assert Path(exp.test.record(first).path).parent.parent == tmp_path / "b"


# ------------------------------------------------------------------ command line
def _tiny_yaml(tmp_path: Path, **loop) -> Path:
    return _write(tmp_path / "tiny.yaml", yaml.safe_dump({
        "device": "cpu", "seed": 1,
        "dataset": {"train": "builtin:shapes", "options": {"n_train": 12, "n_test": 4, "image_size": 48}},
        "model": {"arch": "retinanet", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 48},
        "train": {"epochs": 1, "batch_size": 4},
        "loop": {"initial": 4, "per_cycle": 2, "cycles": 1, **loop}, "strategy": {"name": "random"}}))


def test_version_and_verbose_after_the_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("activedet ")
    assert main(["strategies", "-v"]) == 0
    from activedet.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["simulate", "c.yaml", "--out", "o", "-v"]).verbose is True
    assert parser.parse_args(["-v", "status", "r"]).verbose is True
    assert parser.parse_args(["status", "r"]).verbose is False


@pytest.mark.parametrize("where", ["file", "under_file", "user_folder"])
def test_out_that_is_not_a_run_folder_is_refused(tmp_path: Path, capsys, where: str) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    out = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "run",
           "user_folder": tmp_path / "mine"}[where]
    assert main(["simulate", str(_tiny_yaml(tmp_path)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out" in err, err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]


def _fake_run(run_dir: Path, strategy: str = "random", seed: int = 0, pool: int = 20,
              train: str = "builtin:shapes", ap: float = 0.5) -> Path:
    from activedet.loop.ledger import Ledger

    config = {"dataset": {"train": train, "test": None, "options": {}},
              "loop": {"unit": "images", "initial": 4, "per_cycle": 2}, "strategy": {"name": strategy}}
    with Ledger(run_dir, create=True) as ledger:
        ledger.set_meta(config=config, strategy=strategy, task="detection", seed=seed, unit="images",
                        pool_size=pool, pool_boxes=pool * 2, complete=True)
        for r in range(2):
            ledger.add_round(r, [r * 10 + 1, r * 10 + 2], 2 * (r + 1), 4 * (r + 1), {}, None)
            ledger.set_metrics(r, {"AP": ap, "AP50": ap + 0.1 * r}, {})
    return run_dir


def test_status_on_a_corrupt_or_empty_ledger_is_one_line(tmp_path: Path, capsys) -> None:
    for name, data in (("corrupt", b"this is not sqlite" * 10), ("empty", b"")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ledger.sqlite").write_bytes(data)
        assert main(["status", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "ledger.sqlite" in err, err
    assert main(["report", str(tmp_path / "corrupt"), "--out", str(tmp_path / "rep")]) == 2
    assert "not an activedet ledger" in capsys.readouterr().err


def test_report_and_datasets_export_to_a_file_are_one_line(tmp_path: Path, capsys) -> None:
    run = _fake_run(tmp_path / "run")
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(run), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["datasets", "export", "shapes", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_report_counts_a_run_once_and_refuses_different_setups(tmp_path: Path, capsys) -> None:
    run = _fake_run(tmp_path / "a")
    assert main(["report", str(run), str(tmp_path / "." / "a"), "--out", str(tmp_path / "rep")]) == 0
    assert "counted once" in capsys.readouterr().err
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "| random | 1 |" in table  # one run, not two seeds
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Setup" in page and "builtin:shapes" in page and "loop.per_cycle" in page
    other = _fake_run(tmp_path / "b", seed=1, pool=40)
    assert main(["report", str(run), str(other), "--out", str(tmp_path / "rep2")]) == 2
    assert "runs differ in pool_size" in capsys.readouterr().err
    other = _fake_run(tmp_path / "c", seed=1, train="/data/other.json")
    assert main(["report", str(run), str(other), "--out", str(tmp_path / "rep3")]) == 2
    assert "runs differ in dataset.train" in capsys.readouterr().err


def test_without_a_tty_progress_is_periodic_lines(tmp_path: Path, capsys, caplog) -> None:
    assert main(["simulate", str(_tiny_yaml(tmp_path)), "--out", str(tmp_path / "run"),
                 "--set", "train.epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "train:" in err and err.count("train:") <= 2  # one line per bar here (30 s apart at most)
    assert "round 0:" in caplog.text and "round 1: AP" in caplog.text  # the current cycle, without -v
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["epochs"] == 2


# ------------------------------------------------------------------ the Python API
ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    import activedet

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    start = section.index("```python") + len("```python")
    code = section[start:section.index("```", start)]
    images = make_detection_dataset(n=5, size=64)
    (tmp_path / "my_images").mkdir()
    for i in images.ids:
        from PIL import Image

        Image.fromarray(images.load_array(i)).save(tmp_path / "my_images" / f"{i:03d}.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<README.md: From Python>", "exec"), {})
    out = capsys.readouterr().out
    assert out.count("label next:") == 2 and "round 1: 6 images" in out
    assert {"load_config", "simulate", "build_strategy", "Ledger", "wrap_detector", "select"} <= set(activedet.__all__)
    assert all(getattr(activedet, name) is not None for name in activedet.__all__)


def test_select_with_your_own_model_is_seeded_and_refuses_what_it_cannot_score(tmp_path: Path) -> None:
    import torchvision

    import activedet
    from activedet.errors import ActivedetError, StrategyError

    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64,
        score_thresh=0.0)
    adapter = activedet.wrap_detector(model, num_classes=2)
    data = make_detection_dataset(n=6)
    strategy = activedet.build_strategy("entropy", min_score=0.0)  # an untrained model: low scores
    first = activedet.select(strategy, adapter, data, budget=3, labeled=[data.ids[0]], seed=1)
    again = activedet.select(strategy, adapter, data, budget=3, labeled=[data.ids[0]], seed=1)
    assert first.ids == again.ids and len(set(first.ids)) == 3 and data.ids[0] not in first.ids
    assert first.scores is not None and set(first.ids) <= set(first.scores)
    with pytest.raises(StrategyError, match="needs activedet's own 'mial' model"):
        activedet.select(activedet.build_strategy("mial", {"lambda": 0.5}), adapter, data, budget=1)
    with pytest.raises(StrategyError, match="RetinaNet, FCOS or FasterRCNN"):
        activedet.wrap_detector(torchvision.models.resnet18(), num_classes=2)
    with pytest.raises(ActivedetError, match="does not rebuild"):
        adapter.reset(0)


def test_every_argument_has_help() -> None:
    from activedet.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [f"{name} {a.dest}" for name, sp in sub.choices.items() for a in sp._actions if not a.help]
    assert missing == []


def test_status_text_in_percent_and_without_boxes_for_classification(tmp_path: Path, capsys) -> None:
    from activedet.loop.ledger import Ledger

    run = _fake_run(tmp_path / "det", ap=0.625)
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "AP50 62.5%" in out and "boxes" in out
    with Ledger(run) as ledger:
        ledger.set_meta(task="classification")
        ledger.set_metrics(1, {"top1": 0.875}, {})
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "top1 87.5%" in out and "boxes" not in out


def test_strategy_settings_read_1e_3_as_a_number(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path / "c.yaml", "dataset: {train: 'builtin:shapes'}\n"
                                                  "strategy: {name: entropy, min_score: 1e-2}\n"))
    from activedet.loop.runner import resolve

    assert resolve(cfg).params["min_score"] == 0.01
    cfg = load_config(_write(tmp_path / "d.yaml", "dataset: {train: 'builtin:shapes'}\n"
                                                  "strategy: {name: entropy, min_score: lots}\n"))
    with pytest.raises(ConfigError, match="min_score' = 'lots': expected a number"):
        resolve(cfg)


def test_without_a_test_split_the_run_selects_and_says_there_are_no_metrics(tmp_path: Path, capsys,
                                                                            caplog) -> None:
    train = make_detection_dataset(n=10).export_coco(tmp_path / "d")
    cfg = _write(tmp_path / "c.yaml", yaml.safe_dump({
        "device": "cpu", "dataset": {"train": str(train)},
        "model": {"arch": "retinanet", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 64},
        "train": {"epochs": 1, "batch_size": 4}, "loop": {"initial": 4, "per_cycle": 2, "cycles": 1},
        "strategy": {"name": "entropy"}}))
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert caplog.text.count("no dataset.test") == 1  # said once
    capsys.readouterr()
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.count("(no test split)") == 2 and "complete" in out
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 0
