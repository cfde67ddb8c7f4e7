"""MIAL's declared settings: the head's, and those of the two training schedules.

They live with the MIAL head and losses so that the strategies (``mial``, ``mial_iul``,
which validate and list them) and the trainers (:mod:`activedet.training.mial`,
:mod:`activedet.training.mial_iul`, which read them) both import them from here, and
never each other. Defaults follow the paper unless the provenance says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from activedet.errors import ConfigError
from activedet.settings import Settings, setting

__all__ = ["MIALHeadSettings", "MIALTrainSettings", "IULTrainSettings"]


@dataclass(frozen=True)
class _Schedule(Settings):
    """The stage schedule shared by detection (MIAL) and classification (MIAL-IUL)."""

    lam: float = setting(0.5, "λ, weight of the unlabeled discrepancy loss (Eq. 8-9; classification: "
                              "Eq. 2, 4)", key="lambda", gt=0, le=1e6)
    iul: bool = setting(True, "instance uncertainty learning: run the max/min discrepancy stages")
    rounds: int = setting(2, "rounds of [max, min, label] stages after the first label stage", ge=0)
    order: Literal["max_min", "min_max"] = setting(
        "max_min", "order of the two discrepancy stages in a round",
        provenance="paper: max_min; the authors' code runs min_max")
    min_epochs: int = setting(1, "epochs of each min-discrepancy stage (0: left out)", ge=0)
    max_epochs: int = setting(1, "epochs of each max-discrepancy stage (0: left out)", ge=0)
    min_lr_scale: float = setting(1.0, "lr multiplier of the min stages", gt=0, le=1e3)
    max_lr_scale: float = setting(1.0, "lr multiplier of the max stages", gt=0, le=1e3)
    final_lr_scale: float = setting(0.1, "lr multiplier of the very last label stage", gt=0, le=1e3,
                                    provenance="authors' code (the paper gives no schedule)")
    stage_warmup_iters: int = setting(
        0, "linear lr warm-up (from 0.001x) at the start of every stage after the first (which "
           "takes train.warmup_iters): each stage builds a fresh optimizer", ge=0,
        provenance="the authors' code: 0. A warm-up damps the labeled-loss spike of the first "
                   "max-stage steps at a high lr, but it is training below full lr that the plain "
                   "trainer does not get (training/budget.py), and on CPU-sized stages of 5-40 "
                   "iterations it outlasted whole stages (NOTES.md, MIAL on FCOS)")
    discrepancy_grad_clip: float | None = setting(
        None, "max-norm gradient clip of the max and min stages when train.grad_clip is null "
              "(train.grad_clip, when set, applies instead); null: none", gt=0)


@dataclass(frozen=True)
class MIALTrainSettings(_Schedule):
    """The ``mial`` trainer's keys (:mod:`activedet.training.mial`)."""

    iur: bool = setting(True, "instance uncertainty re-weighting: build the MIL head (Eq. 5-6, 10)")
    reweight: Literal["none", "f1", "mil"] = setting(
        "mil", "instance weights w_i of Eq. 7: none (Table 3 row 1), f1 scores (row 2), MIL scores")
    train_squared: bool = setting(False, "train on squared rather than absolute discrepancies")
    pseudo_threshold: float = setting(0.5, "score above which a class is a pseudo image label (Eq. 10)",
                                      ge=0, le=1)
    label_epochs: int = setting(3, "epochs of each label-set stage", ge=1,
                                provenance="authors' code: 3 label + 2 x (1 max + 1 min + 3 label)")
    repeat: int = setting(2, "passes over the data per epoch", ge=1,
                          provenance="authors' code (RepeatDataset x2): 26 passes per cycle")
    detector: Literal["auto", "joint", "separate"] = setting(
        "auto", "joint: one model runs the whole stage schedule, and is both the detector and the "
                "scorer (the paper). separate: the detector trains like the plain trainer "
                "(train.epochs, train.lr_steps: the baseline's budget) and a copy of it, the scorer, "
                "then runs the IUL rounds ([max, min, label] x rounds, the last label stage at "
                "final_lr_scale) and scores the pool; the checkpoint holds both. auto: separate when "
                "there are IUL rounds to run (iul, rounds >= 1, a max or min stage), else joint (no "
                "scorer to train apart); the resolved value is the one recorded",
        provenance="the paper: joint. auto (separate) is activedet's: at CPU scale the max/min stages, "
                   "counted inside an equal labeled budget, cost the joint detector about 0.1 AP50 and "
                   "MIAL lost to random by 4.5 +- 3.1 AP50; separate: +0.9 +- 2.4 (NOTES.md, Batches "
                   "that pay, part 3)")
    max_params: Literal["head", "classifiers"] = setting(
        "head", "what the max stage trains: the whole head (everything but backbone and FPN) or "
                "only the classifiers f1 and f2",
        provenance="paper Eq. 8: head (all but the feature extractor); the authors' code: classifiers")
    discrepancy_grad_clip: float | None = setting(
        10.0, "max-norm gradient clip of the max and min stages when train.grad_clip is null "
              "(train.grad_clip, when set, applies instead); null: none", gt=0,
        provenance="activedet's: the discrepancy is summed over every anchor of every image, so its "
                   "gradient grows with the anchor count and, as f1 and f2 move apart, with the "
                   "sigmoid's slope; with one class (no mean over classes to divide it) a 96-px "
                   "RetinaNet at lr 0.01 without a clip reached a gradient norm of 4176 and a "
                   "non-finite loss (NOTES.md, MIAL, single class). 10: the clip of the CPU MIAL "
                   "configs and of ISAL's FCOS protocol")

    def __post_init__(self) -> None:
        iul_rounds = self.iul and self.rounds >= 1 and self.max_epochs + self.min_epochs >= 1
        if self.detector == "auto":  # resolved here, so params and the ledger hold joint or separate
            object.__setattr__(self, "detector", "separate" if iul_rounds else "joint")
        if self.detector == "separate" and not iul_rounds:
            raise ConfigError("strategy key 'detector' = 'separate' trains a scorer with the IUL rounds: it needs "
                              f"iul: true, rounds >= 1 and a max or min stage (got iul {self.iul}, rounds "
                              f"{self.rounds}, max_epochs {self.max_epochs}, min_epochs {self.min_epochs})")
        if self.reweight == "mil" and not self.iur:
            raise ConfigError("strategy key 'reweight' = 'mil' needs the MIL head (iur: true); "
                              "with 'iur: false' use reweight 'none' or 'f1'")


@dataclass(frozen=True)
class IULTrainSettings(_Schedule):
    """The ``mial_iul`` trainer's keys (classification, MIAL Table 2; no MIL head)."""

    label_epochs: int | None = setting(None, "epochs of each label-set stage; null: "
                                             "round(train.epochs / (rounds + 1)), at least 1", ge=1)
    repeat: int = setting(1, "passes over the data per epoch", ge=1)


@dataclass(frozen=True)
class MIALHeadSettings(Settings):
    """Keys passed to :class:`~activedet.models.mial_head.MIALHead`."""

    mil_weighting: Literal["paper", "code"] = setting(
        "paper", "anchor factor of Eq. 5: per class (paper) or max over classes (authors' code)")
    regression_loss: Literal["smooth_l1", "l1"] = setting(
        "smooth_l1", "box regression loss", provenance="paper: smooth_l1; the authors' code uses l1")
    det_reduction: Literal["sum", "mean"] = setting(
        "sum", "how the f1 and f2 focal losses combine (sum: each classifier gets a plain RetinaNet's "
               "gradient; mean halves it)",
        provenance="paper Eq. 1: sum; the authors' code: mean")
