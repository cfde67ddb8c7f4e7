"""Score a tiny pool with fixed checkpoints, in one process or under torchrun.

``python -m torch.distributed.run --nproc_per_node=2 tests/distributed/score_worker.py
SPEC.json OUT.json``: every rank scores its shard; rank 0 writes, per strategy, the
per-image scores and the selected ids. :func:`score_strategies` is the same work in the
calling process (the one-process answer the test compares with).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.conftest` when run as a script
    sys.path.insert(0, str(ROOT))

from activedet import distributed  # noqa: E402
from activedet.data.pool import Pool  # noqa: E402
from activedet.loop.runner import load_checkpoint  # noqa: E402
from activedet.models.factory import build_adapter  # noqa: E402
from activedet.strategies.registry import build_strategy  # noqa: E402
from tests.conftest import make_detection_dataset, tiny_config  # noqa: E402


def score_strategies(spec: dict[str, Any]) -> dict[str, Any]:
    """For each ``spec["strategies"]`` entry (name, params, checkpoint): load the
    checkpoint, select ``spec["budget"]`` images from the pool with ``spec["seed"]``;
    returns name -> {"scores": {id: score}, "selected": [ids]} (the same on every rank)."""
    data = make_detection_dataset(n=int(spec["n"]), seed=int(spec["data_seed"]))
    out: dict[str, Any] = {}
    for entry in spec["strategies"]:
        strategy = build_strategy(entry["name"], dict(entry.get("params") or {}))
        strategy.progress = False
        cfg = tiny_config(**{"model.arch": entry.get("arch", "retinanet")})
        adapter = build_adapter(cfg, data.num_classes, strategy)
        load_checkpoint(adapter, Path(entry["checkpoint"]))
        pool = Pool.from_dataset(data)
        pool.add(list(spec["labeled"]), 0)
        rng = np.random.default_rng(int(spec["seed"]))
        picked = strategy.select(adapter, pool, int(spec["budget"]), rng)
        chosen = distributed.broadcast_object(picked.ids)
        scores = picked.scores or {}
        out[entry["name"]] = {"scores": {str(i): float(s) for i, s in scores.items()},
                              "selected": [int(i) for i in chosen]}
    return out


def train_check(spec: dict[str, Any]) -> dict[str, Any]:
    """Train a fresh tiny RetinaNet with the plain schedule (under DDP when distributed);
    returns every rank's weight digest and images seen, and the (shared) loss history."""
    from activedet.training.trainer import train_plain

    data = make_detection_dataset(n=int(spec["n"]), seed=int(spec["data_seed"]))
    cfg = tiny_config(**{"train.epochs": 2, "train.batch_size": 2})
    adapter = build_adapter(cfg, data.num_classes, None)
    adapter.reset(3)
    before = adapter.state_dict()
    result = train_plain(adapter, data, data.ids[:int(spec["train_images"])], [], cfg.train, {}, 7,
                         False)
    after = adapter.state_dict()
    flat = torch.cat([v.flatten().double() for k, v in sorted(after.items()) if v.is_floating_point()])
    changed = any(not torch.equal(before[k], after[k]) for k in after)
    return {"digests": distributed.all_gather_object(flat.sum().item() + flat.abs().sum().item()),
            "images": distributed.all_gather_object(result.images), "history": result.history,
            "changed": changed,
            # rank 0 alone inside on_main: it behaves as one process (no collective would return)
            "alone": distributed.on_main(lambda: [distributed.active(), distributed.shard([1, 2, 3])]),
            "outside": [distributed.active(), distributed.shard([1, 2, 3], of=None)]}


def grad_check(spec: dict[str, Any]) -> dict[str, Any]:
    """One MIAL step's gradients, per stage and loss term, on ``spec["labeled"]`` /
    ``spec["unlabeled"]`` (4 images each; 2 per rank under torchrun), computed through
    :func:`distributed.synced` inside :func:`distributed.data_parallel` as the trainer does
    (tensors: the worker saves them with ``torch.save``).
    Batch norms run in eval mode: DDP normalises each rank's batch by its own statistics
    (no SyncBatchNorm), so only the rest of the model can match one process."""
    from activedet.models.mial_settings import MIALTrainSettings
    from activedet.training.mial import DETECTION_STAGES as ops

    data = make_detection_dataset(n=int(spec["n"]), seed=int(spec["data_seed"]))
    strategy = build_strategy("mial", {})
    adapter = build_adapter(tiny_config(), data.num_classes, strategy)
    adapter.reset(3)
    s = MIALTrainSettings.pick({"pseudo_threshold": 0.0})  # an untrained head has no pseudo label above 0.5
    lab = distributed.shard(list(spec["labeled"]))
    unl = distributed.shard(list(spec["unlabeled"]))
    terms = {"label": ("labeled", None), "max": ("discrepancy", None), "min": ("discrepancy", "mil")}
    out: dict[str, Any] = {}
    with distributed.data_parallel(adapter):
        for kind, names in terms.items():
            for name in (n for n in names if n):
                with ops.mode(adapter, kind, s), distributed.synced(adapter.model) as call:
                    for m in adapter.model.modules():
                        if isinstance(m, torch.nn.BatchNorm2d):
                            m.eval()
                    adapter.model.zero_grad(set_to_none=True)
                    if name == "labeled":
                        x, y = adapter.load_batch(data, lab, False)
                        loss = call(lambda: sum(ops.labeled(adapter, x, y).values()))
                    else:
                        x, _ = adapter.load_batch(data, unl, False)
                        loss = call(lambda: ops.unlabeled(adapter, x, kind, s)[0][name])
                    loss.backward()
                    out[f"{kind}/{name}"] = {n: p.grad.detach().clone() for n, p in
                                             adapter.model.named_parameters() if p.grad is not None}
    return out


def trainers_check(spec: dict[str, Any]) -> dict[str, Any]:
    """A short MIAL cycle (label, max, min, label; and with a separate scorer) and a learning-loss run of tiny RetinaNets
    (DDP when distributed): every rank's weight digest and the (shared) histories."""
    from activedet.training.learning_loss import train_learning_loss
    from activedet.training.mial import train_mial

    data = make_detection_dataset(n=int(spec["n"]), seed=int(spec["data_seed"]))
    out: dict[str, Any] = {}
    short = {"label_epochs": 1, "rounds": 1, "repeat": 1, "stage_warmup_iters": 0}
    runs = {"mial": ("mial", train_mial, {**short, "detector": "joint"}),
            "mial_separate": ("mial", train_mial, short),  # the default: plain detector, then a scorer
            "learning_loss": ("learning_loss", train_learning_loss, {})}
    for name, (strategy_name, trainer, params) in runs.items():
        strategy = build_strategy(strategy_name, params)
        cfg = tiny_config(**{"train.epochs": 2, "train.batch_size": 2, "train.lr": 0.005})
        adapter = build_adapter(cfg, data.num_classes, strategy)
        adapter.reset(3)
        before = adapter.state_dict()
        result = trainer(adapter, data, data.ids[:7], data.ids[7:], cfg.train, strategy.params, 7, False)
        after = adapter.state_dict()
        flat = torch.cat([v.flatten().double() for k, v in sorted(after.items()) if v.is_floating_point()])
        out[name] = {"digests": distributed.all_gather_object(flat.sum().item() + flat.abs().sum().item()),
                     "histories": distributed.all_gather_object(result.history),
                     "changed": sorted(k for k in after if k not in before or not torch.equal(before[k], after[k]))}
    # the classifier (small_cnn, batch norms): plain and MIAL-IUL schedules under DDP
    from activedet.config import ModelConfig, TrainConfig
    from activedet.data.classification import load_digits
    from activedet.models.classifier import ClassificationAdapter
    from activedet.training.mial_iul import train_mial_iul
    from activedet.training.trainer import train_plain

    digits = load_digits("train", {"n_train": 40, "size": 16, "seed": 0})
    tcfg = TrainConfig(epochs=2, batch_size=4, lr=0.01)
    for name, variant, trainer, params in (("cls_plain", "plain", train_plain, {}),
                                           ("cls_mial_iul", "mial", train_mial_iul, {"rounds": 1})):
        adapter = ClassificationAdapter(ModelConfig(arch="small_cnn", image_size=16), 10, variant=variant)
        adapter.reset(3)
        before = adapter.state_dict()
        result = trainer(adapter, digits, digits.ids[:13], digits.ids[13:], tcfg, params, 7, False)
        after = adapter.state_dict()
        flat = torch.cat([v.flatten().double() for k, v in sorted(after.items()) if v.is_floating_point()])
        out[name] = {"digests": distributed.all_gather_object(flat.sum().item() + flat.abs().sum().item()),
                     "histories": distributed.all_gather_object(result.history),
                     "changed": sorted(k for k in after if k not in before or not torch.equal(before[k], after[k]))}
    return out


def average_check(spec: dict[str, Any]) -> dict[str, Any]:
    """Gradient averaging on hand-made gradients. :func:`distributed.average_gradients`:
    ``a`` has a gradient on rank 0 only, ``b`` on no rank, ``c`` on every rank. Then
    :func:`distributed.synced` through a backward pass: rank r's loss is
    ``(r + 1) * sum(w1)`` plus, on rank 1 only, ``3 * sum(w2)``. Every rank's gradients."""
    r = distributed.rank()
    a, b, c = torch.zeros(2), torch.zeros(3), torch.zeros(1)
    a.grad = torch.tensor([1.0, 2.0]) if r == 0 else None
    c.grad = torch.tensor([10.0 * (r + 1)])
    distributed.average_gradients([a, b, c])
    module = torch.nn.ParameterDict({"w1": torch.nn.Parameter(torch.ones(2)),
                                     "w2": torch.nn.Parameter(torch.ones(2))})
    distributed._DDP_ACTIVE = True  # what data_parallel sets
    try:
        with distributed.synced(module) as call:
            loss = call(lambda: {"w1": (r + 1) * module["w1"].sum(),
                                 "w2": 3 * module["w2"].sum() if r == 1 else torch.zeros(())})
            sum(loss.values()).backward()
    finally:
        distributed._DDP_ACTIVE = False
    grads = [None if t.grad is None else t.grad.tolist() for t in (a, b, c, module["w1"], module["w2"])]
    return {"grads": distributed.all_gather_object(grads)}


def kcenter_check(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`k_center_greedy_sharded` on seeded random features for each ``spec["cases"]``
    entry (centers, candidates, budget, block, duplicates); rank 0's picks and gains and
    how many feature rows each rank computed."""
    from activedet.strategies.diversity import k_center_greedy_sharded

    out = []
    for case in spec["cases"]:
        n_c, n, dup = int(case["centers"]), int(case["candidates"]), int(case.get("duplicates", 0))
        feats = np.random.default_rng(int(case["seed"])).normal(size=(n_c + n, 5))
        if dup:
            feats[n_c + n - dup:] = feats[n_c:n_c + dup]  # ties: equal rows
        asked: list[int] = []

        def features(ids: list[int]) -> np.ndarray:
            asked.extend(ids)
            return feats[ids]

        picks, gains = k_center_greedy_sharded(features, list(range(n_c)), list(range(n_c, n_c + n)),
                                               int(case["budget"]), np.random.default_rng(3), 4,
                                               int(case["block"]))
        out.append({"picks": picks, "gains": gains,
                    "rows": distributed.all_gather_object(len([i for i in asked if i >= n_c]))})
    return {"cases": out}


def threads() -> int:
    """This process's threads that Python did not start (Linux): gloo's workers and
    transport loop, or any other native thread (tqdm's monitor is a Python thread)."""
    return len(os.listdir("/proc/self/task")) - len(threading.enumerate())


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    spec = json.loads(Path(argv[0]).read_text())
    before = threads()
    distributed.init("cpu")
    try:
        mode = spec.get("mode")
        if mode == "grads":
            result = grad_check(spec)
        elif mode == "kcenter":
            result = kcenter_check(spec)
        elif mode == "average":
            result = average_check(spec)
        elif mode == "trainers":
            result = trainers_check(spec)
        else:
            result = train_check(spec) if spec.get("train_images") else score_strategies(spec)
        result["_world"] = distributed.world()
        if distributed.is_main() and mode == "grads":
            torch.save(result, argv[1])
        elif distributed.is_main():
            Path(argv[1]).write_text(json.dumps(result))
    finally:
        distributed.shutdown()
    # the process group's threads (gloo's workers, its transport loop) are gone once
    # shutdown returns: none is left to run while the interpreter finalizes (issue 37)
    Path(f"{argv[1]}.threads.{os.environ.get('RANK', '0')}").write_text(
        json.dumps({"before_init": before, "after_shutdown": threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
