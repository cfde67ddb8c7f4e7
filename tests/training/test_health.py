"""Training health: the dead FCOS box branch, the verdicts, and what a collapsed round does
(retry with a derived seed, stop, warn), in the trainer and through the loop's ledger."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from activedet.config import ModelConfig, TrainConfig
from activedet.errors import TrainingCollapseError, TrainingError
from activedet.models.detection import build_detector
from activedet.training.health import assess, dead_branch, no_progress, training_curve
from activedet.training.trainer import TrainResult, train_epochs, train_round
from tests.conftest import make_detection_dataset


# ---------------------------------------------------------------- the mechanism, on a real FCOS
def _fcos(box_prior: float | None) -> torch.nn.Module:
    cfg = ModelConfig(arch="fcos", backbone="mobilenet_v2", pretrained=False, image_size=64, box_prior=box_prior)
    torch.manual_seed(0)
    return build_detector(cfg, num_classes=2)


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    ds = make_detection_dataset(n=4, seed=5)
    ids = [i for i in ds.ids if len(ds.target(i)["boxes"])][:2]
    return [ds.load_image(i) for i in ids], [ds.target(i) for i in ids]


def test_dead_box_branch_has_giou_loss_one_and_no_gradient() -> None:
    model = _fcos(None)
    torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, -5.0)  # negative everywhere
    model.train()
    images, targets = _batch()
    losses = model(images, targets)
    assert float(losses["bbox_regression"].detach()) == pytest.approx(1.0, abs=1e-6)
    losses["bbox_regression"].backward()
    grad = model.head.regression_head.bbox_reg.weight.grad
    assert grad is None or float(grad.abs().max()) == 0.0  # nothing can ever revive it


def test_box_prior_starts_every_output_alive_with_a_useful_gradient() -> None:
    images, targets = _batch()
    outs = {}
    for prior in (None, 1.0):
        model = _fcos(prior)
        model.train()
        pre: list[float] = []
        hook = model.head.regression_head.bbox_reg.register_forward_hook(
            lambda m, i, o: pre.append(float(o.detach().min())))  # pre-ReLU outputs, every level
        losses = model(images, targets)
        hook.remove()
        losses["bbox_regression"].backward()
        g = model.head.regression_head.bbox_reg.weight.grad
        outs[prior] = (float(losses["bbox_regression"].detach()), min(pre), float(g.norm()))
    giou0, min0, grad0 = outs[None]
    giou1, min1, grad1 = outs[1.0]
    print(outs)
    assert giou0 > 0.97            # torchvision's init: near-zero boxes, loss ≈ 1
    assert min0 < 0                # ... and some outputs already on the dead side of the ReLU
    assert min1 > 0.3              # the prior keeps every output far from the kink
    assert giou1 < giou0 - 0.1     # boxes overlap their targets from the first step
    assert grad1 > 2 * grad0       # and a stronger gradient pulls the boxes to their targets


# ---------------------------------------------------------------- verdicts on histories
def _rows(values: list[float], term: str = "bbox_regression", stage: str = "train") -> list[dict]:
    return [{"stage": stage, "epoch": i + 1, "classification": 0.5, term: v} for i, v in enumerate(values)]


def test_dead_branch_needs_patience_epochs_at_the_degenerate_value() -> None:
    assert dead_branch(_rows([1.0, 1.0, 1.0])).unhealthy
    assert "bbox_regression" in str(dead_branch(_rows([0.7, 1.0, 1.0, 1.0])).reason)
    assert not dead_branch(_rows([1.0, 1.0])).unhealthy                # too early to say
    assert not dead_branch(_rows([1.0, 1.0, 0.98])).unhealthy          # it moved: alive
    assert dead_branch(_rows([1.0, 1.0, 1.0, 0.9, 0.6])).unhealthy     # revived late: a half-trained round
    assert not dead_branch(_rows([1.0, 1.0, 1.0], term="bbox_ctrness")).unhealthy
    assert not dead_branch(_rows([1.0, 1.0, 1.0], stage="max")).unhealthy  # MIAL unlabeled stages


def test_no_progress_flags_a_loss_that_rises_or_stalls() -> None:
    assert no_progress(_rows([0.9, 0.8, 2.0])).unhealthy
    assert no_progress(_rows([0.9, 0.6, 0.9])).unhealthy               # back where it started
    assert not no_progress(_rows([0.9, 0.89, 0.88])).unhealthy         # slow, but falling
    assert not no_progress(_rows([0.9, 0.5, 0.3])).unhealthy
    assert not assess(_rows([0.9, 0.5, 0.3])).unhealthy
    assert assess(_rows([1.0, 1.0, 1.0])).unhealthy


def test_training_curve_is_the_last_attempts_labeled_loss() -> None:
    rows = [{**r, "attempt": 0} for r in _rows([1.0, 1.0, 1.0])] + \
           [{**r, "attempt": 1, "unlabeled_x": 9.0} for r in _rows([0.5, 0.3])]
    assert training_curve(rows) == pytest.approx([1.0, 0.8])


# ---------------------------------------------------------------- what a collapsed round does
class _Fake:
    """A trainer whose attempts follow a script of GIoU histories; counts restarts."""

    def __init__(self, script: list[list[float]]) -> None:
        self.script, self.calls, self.seeds, self.cfgs = list(script), 0, [], []

    def __call__(self, adapter, dataset, labeled, unlabeled, cfg, params, seed, progress) -> TrainResult:
        values = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.seeds.append(seed)
        self.cfgs.append(cfg)
        history: list[dict] = []
        for row in _rows(values):
            history.append(row)
            if cfg.on_collapse != "warn" and dead_branch(history).unhealthy:
                raise TrainingCollapseError(str(dead_branch(history).reason), history)
        return TrainResult(history=history)


def _round(fake: _Fake, **train) -> tuple[TrainResult, list[int]]:
    restarts: list[int] = []

    def restart(attempt: int) -> int:
        restarts.append(attempt)
        return 100 + attempt

    cfg = TrainConfig(**train)
    return train_round(fake, None, None, [1], [], cfg, {}, 7, False, restart), restarts


def test_retry_reinitialises_with_derived_seeds_until_healthy() -> None:
    dead, good = [1.0] * 6, [0.9, 0.6, 0.4, 0.3, 0.2, 0.2]
    fake = _Fake([dead, good])
    result, restarts = _round(fake)
    assert restarts == [1] and fake.seeds == [7, 101]
    assert fake.calls == 2 and len([r for r in result.history if r["attempt"] == 0]) == 3  # stopped early
    assert result.health["unhealthy"] is False
    assert [a["seed"] for a in result.health["attempts"]] == [7, 101]
    assert "dead" in result.health["attempts"][0]["reason"]
    assert training_curve(result.history)[-1] == pytest.approx(0.7)


def test_retry_gives_up_after_max_retries_with_a_fully_trained_last_attempt() -> None:
    fake = _Fake([[1.0] * 6])
    result, restarts = _round(fake, max_retries=2)
    assert restarts == [1, 2]
    assert fake.cfgs[-1].on_collapse == "warn"          # the last try is not cut short
    assert len([r for r in result.history if r["attempt"] == 2]) == 6
    assert result.health["unhealthy"] is True and len(result.health["attempts"]) == 3


def test_stop_raises_and_warn_keeps_the_model() -> None:
    with pytest.raises(TrainingCollapseError, match="bbox_regression stuck at 1.000"):
        _round(_Fake([[1.0] * 6]), on_collapse="stop")
    result, restarts = _round(_Fake([[1.0] * 6]), on_collapse="warn")
    assert restarts == [] and result.health["unhealthy"] is True and len(result.history) == 6


# ---------------------------------------------------------------- non-finite losses in the epoch loop
class _NaNAdapter:
    """A one-parameter 'model' whose loss is NaN on the batches holding image 3."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(1, 1)
        self.workers = 0  # the Adapter protocol's loader processes

    def load_batch(self, dataset, ids, augment, generator, decoded=None):
        return list(ids), None

    def loss(self, ids) -> dict[str, torch.Tensor]:
        out = self.model(torch.ones(1, 1)).sum() ** 2
        return {"loss": out * (math.nan if 3 in ids else 1.0)}


def test_nonfinite_loss_stops_naming_the_epoch_or_skips_the_batch() -> None:
    ad = _NaNAdapter()
    cfg = TrainConfig(epochs=2, batch_size=2, lr=0.01, warmup_iters=0)
    with pytest.raises(TrainingError, match=r"train epoch 1 training loss is not finite at iteration \d"):
        train_epochs(ad, None, [1, 2, 3, 4], cfg, 0, False, lambda x, y, e: ad.loss(x))
    skip = dataclasses.replace(cfg, on_nonfinite="skip_batch")
    result = train_epochs(ad, None, [1, 2, 3, 4], skip, 0, False, lambda x, y, e: ad.loss(x))
    assert result.skipped_batches == 2                   # one per epoch
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert torch.isfinite(ad.model.weight).all()


# ---------------------------------------------------------------- through the loop: ledger, status, report
def test_a_collapsed_round_is_retried_recorded_shown_and_reported(tmp_path, monkeypatch, capsys) -> None:
    from activedet.cli import main
    from activedet.loop import engine, runner
    from activedet.loop.ledger import Ledger
    from activedet.training.trainer import train_plain
    from tests.loop.test_runner import write_config

    calls: list[int] = []

    def flaky(adapter, dataset, labeled, unlabeled, cfg, params, seed, progress):
        calls.append(seed)
        if len(calls) == 2:  # round 1, first attempt: its box branch "dies"
            raise TrainingCollapseError("bbox_regression stuck at 1.000 (test)", [{"stage": "train", "epoch": 1}])
        return train_plain(adapter, dataset, labeled, unlabeled, cfg, params, seed, progress)

    monkeypatch.setattr(engine, "get_trainer", lambda name: flaky)
    cfg = write_config(tmp_path, cycles=1)
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    with Ledger(run_dir) as ledger:
        rounds = ledger.rounds()
        seed = ledger.meta()["seed"]
    health = rounds[1]["health"]
    assert rounds[0]["health"] == {"unhealthy": False, "reason": None, "attempts": [
        {"attempt": 0, "seed": runner.derive_seed(seed, 0, "train"), "reason": None}]}
    assert health["unhealthy"] is False and len(health["attempts"]) == 2
    assert health["attempts"][1]["seed"] == runner.derive_seed(seed, 1, "train", 1) == calls[2]
    assert {row["attempt"] for row in rounds[1]["train_log"]} == {0, 1}
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "retried 1x" in text and "round 1: retried 1x after: bbox_regression stuck" in text
    assert main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "training.png" in page and "round 1: recovered after 1 retry" in page
    assert (tmp_path / "rep" / "training.png").stat().st_size > 1000


def test_a_nan_loss_stops_the_round_with_one_line_and_resume_trains_it(tmp_path, monkeypatch, capsys) -> None:
    from activedet.cli import main
    from activedet.loop import engine
    from activedet.loop.ledger import Ledger
    from tests.loop.test_runner import write_config

    def nan_trainer(adapter, dataset, labeled, unlabeled, cfg, params, seed, progress):
        def loss(x, y, epoch):
            return {k: v * math.nan for k, v in adapter.train_loss(x, y).items()}
        return train_epochs(adapter, dataset, labeled, cfg, seed, progress, loss)

    cfg = write_config(tmp_path, cycles=1)
    run_dir = tmp_path / "run"
    real = engine.get_trainer
    monkeypatch.setattr(engine, "get_trainer", lambda name: nan_trainer)
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "round 0: train epoch 1 training loss is not finite at iteration 0" in err[0], err
    with Ledger(run_dir) as ledger:
        assert [(r["round"], r["checkpoint"]) for r in ledger.rounds()] == [(0, None)]  # selected, not trained
    monkeypatch.setattr(engine, "get_trainer", real)
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet", "--resume"]) == 0
    with Ledger(run_dir) as ledger:
        assert all(r["metrics"] for r in ledger.rounds()) and len(ledger.rounds()) == 2


def test_a_separate_scorers_rows_do_not_make_the_detectors_curve() -> None:
    """MIAL ``detector: separate``: the scorer's label rows (after the detector's) are not the
    detector's loss curve, nor its progress; a dead branch in them still counts."""
    from activedet.training.health import dead_branch, no_progress, training_curve

    hist = [{"stage": "train", "epoch": 1, "loss": 2.0}, {"stage": "train", "epoch": 2, "loss": 1.0},
            {"stage": "label", "epoch": 1, "loss": 3.0, "model": "scorer"}]
    assert training_curve(hist) == [2.0, 1.0]
    assert not no_progress(hist).unhealthy
    dead = [{"stage": "label", "bbox_regression": 1.0, "model": "scorer"}] * 3
    assert dead_branch(hist + dead).unhealthy
