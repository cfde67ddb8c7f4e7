"""activedet's training and scoring throughput against a bare torchvision loop (issue 27, item 3).

Same model (torchvision FCOS + MobileNetV2, random init, ``--size`` px), same image files
(the built-in ``trees`` tiles written as PNGs, read back through ``load_coco``), same batch
size, same number of loader processes, in one process, alternated:

- ``activedet train``: :func:`activedet.training.trainer.train_plain` for ``--epochs``
  epochs (``dataset.workers`` = ``--workers``: the epoch's batches decoded ahead by loader
  processes, random h-flip);
- ``bare train``: a ``torch.utils.data.DataLoader`` (``num_workers`` = ``--workers``,
  shuffled, PIL decode + ``to_tensor``, random h-flip) feeding ``model(images, targets)``,
  ``loss.backward()``, ``SGD.step()`` — what one writes by hand;
- ``activedet score``: ``entropy``'s ``score_all`` over the images (inference through
  ``DetectionAdapter.infer`` with ``workers``, per-image uncertainty);
- ``bare score``: ``model.eval()`` under ``no_grad`` over a DataLoader of the same images.

Prints images/s and the ratios (targets: training >= 0.9x, scoring >= 0.95x the bare loop).
The medians over ``--repeats`` of per-repeat ratios (order rotated each repeat).

    .venv/bin/python benchmarks/throughput.py [--images 64] [--size 128] [--batch-size 4] \\
        [--workers 2] [--epochs 1] [--repeats 3] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).parent))
from selection_cost import alternate, ratio  # noqa: E402

from activedet.config import ModelConfig, TrainConfig  # noqa: E402
from activedet.data.builtin import load_builtin  # noqa: E402
from activedet.data.coco import load_coco  # noqa: E402
from activedet.data.pool import Pool  # noqa: E402
from activedet.models.detection_adapter import detection_adapter  # noqa: E402
from activedet.strategies.registry import build_strategy  # noqa: E402
from activedet.training.trainer import train_plain  # noqa: E402


class Files(Dataset):
    """(image (3, H, W) in [0, 1], target) per COCO record, read with PIL; optional h-flip."""

    def __init__(self, records: list[Any], flip: bool) -> None:
        self.records, self.flip = records, flip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.records[k]
        img = TF.to_tensor(Image.open(rec.path).convert("RGB"))
        boxes = torch.as_tensor(np.asarray(rec.boxes, np.float32).reshape(-1, 4))
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
            w = img.shape[-1]
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        return img, {"boxes": boxes, "labels": torch.as_tensor(np.asarray(rec.labels, np.int64))}


def _collate(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (both sides on it)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = tempfile.TemporaryDirectory(prefix="throughput_")
    trees = load_builtin("trees", "train")
    path = trees.export_coco(Path(tmp.name) / "trees", ids=trees.ids[:args.images])
    ds = load_coco(path)
    ids = list(ds.ids)
    records = [ds.record(i) for i in ids]
    mcfg = ModelConfig(arch="fcos", backbone="mobilenet_v2", pretrained=False, image_size=args.size,
                       score_thresh=0.05)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.01, warmup_iters=0, hflip=True,
                       grad_clip=None, on_collapse="warn", eval_batch_size=args.batch_size)
    ad = detection_adapter(mcfg, 1, "plain", device)
    ad.reset(0)
    ad.workers = args.workers
    start = copy.deepcopy(ad.model.state_dict())
    bare = copy.deepcopy(ad.model)
    strategy = build_strategy("entropy", {"batch_size": args.batch_size, "min_score": 0.0})
    strategy.progress = False
    pool = Pool.from_dataset(ds)

    def act_train() -> None:
        ad.model.load_state_dict(start)
        train_plain(ad, ds, ids, [], tcfg, {}, 0, False)

    def bare_train() -> None:
        bare.load_state_dict(start)
        bare.train()
        opt = torch.optim.SGD(bare.parameters(), lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)
        loader = DataLoader(Files(records, True), batch_size=args.batch_size, shuffle=True,
                            num_workers=args.workers, collate_fn=_collate)
        for _ in range(args.epochs):
            for images, targets in loader:
                images = [im.to(device) for im in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                loss = sum(bare(images, targets).values())
                opt.zero_grad()
                loss.backward()
                opt.step()

    def act_score() -> None:
        strategy.score_all(ad, pool, ids, np.random.default_rng(0))

    def bare_score() -> None:
        bare.eval()
        loader = DataLoader(Files(records, False), batch_size=args.batch_size, num_workers=args.workers,
                            collate_fn=_collate)
        with torch.no_grad():
            for images, _ in loader:
                bare([im.to(device) for im in images])

    t = alternate({"activedet_train": act_train, "bare_train": bare_train,
                   "activedet_score": act_score, "bare_score": bare_score}, args.repeats, device)
    n_train, n_score = len(ids) * args.epochs, len(ids)
    rate = {k: (n_train if k.endswith("train") else n_score) / statistics.median(v) for k, v in t.items()}
    res = {"images": len(ids), "size": args.size, "batch_size": args.batch_size, "workers": args.workers,
           "threads": args.threads, "times_s": t, "images_per_s": rate,
           "train_ratio": 1.0 / ratio(t, "activedet_train", "bare_train"),
           "score_ratio": 1.0 / ratio(t, "activedet_score", "bare_score")}
    print(f"throughput ({device}): FCOS + MobileNetV2 at {args.size} px, {len(ids)} tree tiles (PNG files), batch "
          f"{args.batch_size}, {args.workers} loader workers, {args.threads} thread(s), median of {args.repeats}")
    for k, v in rate.items():
        print(f"  {k:<16} {v:8.1f} images/s")
    print(f"  training: activedet / bare = {res['train_ratio']:.3f} (target >= 0.9)")
    print(f"  scoring:  activedet / bare = {res['score_ratio']:.3f} (target >= 0.95)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
