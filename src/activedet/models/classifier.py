"""Image classifiers and their adapter (the :class:`~activedet.models.base.Adapter` contract).

Networks (both expose ``features(x) -> (B, D)`` and a final ``fc`` Linear):

- :func:`resnet18_cifar`: torchvision ResNet-18 with a 3×3 stride-1 stem and no max-pool
  (the CIFAR variant ISAL trains; D = 512).
- :func:`small_cnn`: three conv-BN-ReLU blocks (32-64-128 channels, 2×2 max-pool between
  them), global average pool, linear (D = 128); a fraction of a millisecond per 32-px
  image on one CPU core.

:class:`ClassificationAdapter` wraps one of them. Variant ``"mial"`` (MIAL's instance
uncertainty learning transposed to classification) puts two classifier heads ``fc1`` /
``fc2`` on the same features; a trainer freezes :meth:`~ClassificationAdapter.head_parameters`
or :meth:`~ClassificationAdapter.feature_parameters` for the max / min stages.

Classifiers are trained from scratch (ISAL's CIFAR protocol); ``ModelConfig.pretrained``
and ``backbone`` apply to detectors only.
"""

from __future__ import annotations

import copy

from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from activedet.config import ModelConfig
from activedet.data.stream import image_batches
from activedet.errors import ActivedetError, ConfigError
from activedet.evaluation.classification import classification_metrics
from activedet.models.base import Inference

#: per-channel normalisation applied to [0, 1] RGB inputs (ImageNet statistics)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------- networks
class SmallCNN(nn.Module):
    """conv3×3-BN-ReLU ×3 (``widths``), max-pool 2×2 between blocks, global avg pool, fc.

    Runs in channels-last memory format (inputs are converted in :meth:`features`).
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for k, w in enumerate(widths):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if k < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.body = nn.Sequential(*layers)
        self.feature_dim = cin
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.to(memory_format=torch.channels_last)  # 2-3× faster convs and pools on CPU

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) globally pooled features."""
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) logits."""
        return self.fc(self.features(x))


class CifarResNet18(torchvision.models.ResNet):
    """ResNet-18 for small images: 3×3 stride-1 stem conv, no max-pool."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        self.feature_dim = 512

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 512) globally pooled features."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class TwoHeadClassifier(nn.Module):
    """MIAL for classification: two linear heads ``fc1``/``fc2`` on one feature extractor.

    ``body`` is a network with ``features``; its own ``fc`` becomes ``fc1`` (replaced by
    an Identity in ``body``). ``forward`` returns both heads' logits, each (B, C).
    """

    def __init__(self, body: nn.Module, num_classes: int) -> None:
        super().__init__()
        fc1 = body.fc
        body.fc = nn.Identity()
        self.body = body
        self.fc1 = fc1
        self.fc2 = nn.Linear(fc1.in_features, num_classes)
        self.feature_dim = body.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D)."""
        return self.body.features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.fc1(f), self.fc2(f)


def resnet18_cifar(num_classes: int) -> CifarResNet18:
    """CIFAR ResNet-18 (random init), D = 512."""
    return CifarResNet18(num_classes)


def small_cnn(num_classes: int) -> SmallCNN:
    """Small fast CNN (random init), D = 128."""
    return SmallCNN(num_classes)


ARCHS = {"resnet18": resnet18_cifar, "small_cnn": small_cnn}
VARIANTS = ("plain", "mial", "learning_loss")  # learning_loss: plain + model.loss_module


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; anything else as given."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a valid torch device") from None


# ----------------------------------------------------------------------- adapter
class ClassificationAdapter:
    """Adapter for image classifiers (task ``"classification"``).

    ``model_cfg.arch`` picks the network (``resnet18`` | ``small_cnn``), ``image_size`` the
    side S every image is resized to. ``variant`` is ``"plain"`` or ``"mial"`` (two heads).
    The model is built at construction with ``reset(0)``; call :meth:`reset` to re-seed.
    Everything handed back to callers lives on the CPU.
    """

    task = "classification"

    def __init__(self, model_cfg: ModelConfig, num_classes: int, variant: str = "plain",
                 device: str | torch.device = "cpu", eval_batch_size: int = 64) -> None:
        if model_cfg.arch not in ARCHS:
            raise ConfigError(f"model.arch {model_cfg.arch!r} is not a classifier "
                              f"(one of {', '.join(ARCHS)})")
        if variant not in VARIANTS:
            raise ConfigError(f"classifier variant {variant!r} is not one of {', '.join(VARIANTS)}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
        if model_cfg.image_size is None:
            raise ConfigError("model.image_size is unset (simulate sets it from the training images)")
        if model_cfg.image_size < 8:
            raise ConfigError(f"model.image_size {model_cfg.image_size!r} is too small for a classifier (>= 8)")
        self.cfg = model_cfg
        self.arch = model_cfg.arch
        self.variant = variant
        self.num_classes = num_classes
        self.image_size = int(model_cfg.image_size)
        self.device = resolve_device(device)
        self.eval_batch_size = eval_batch_size
        #: image-loading worker processes of training and inference (``dataset.workers``; 0: this process)
        self.workers = 0
        self._mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(STD).view(1, 3, 1, 1)
        self.reset(0)

    # ------------------------------------------------------------------ building
    def reset(self, seed: int) -> None:
        """Build a fresh randomly initialised model from ``seed``.

        Initialisation draws from ``torch.manual_seed(seed)`` inside
        ``torch.random.fork_rng``, so the global CPU RNG state is the same afterwards as
        before. Also re-seeds the fallback augmentation generator used when
        :meth:`load_batch` gets no generator.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net: nn.Module = ARCHS[self.arch](self.num_classes)
            if self.variant == "mial":
                net = TwoHeadClassifier(net, self.num_classes)
            if self.variant == "learning_loss":
                from activedet.models.learning_loss import attach_loss_module

                attach_loss_module(net, "classification", probe_size=self.image_size)
        self.model = net.to(self.device)
        self._aug_generator = torch.Generator().manual_seed(seed)

    # -------------------------------------------------------------------- inputs
    def _load_inputs(self, dataset: Any, ids: Sequence[int], augment: bool,
                     generator: torch.Generator | None) -> torch.Tensor:
        """(B, 3, S, S) normalised float32 on the device."""
        return self._inputs([np.asarray(dataset.load_array(i)) for i in ids], augment, generator)

    def _inputs(self, arrays: list[np.ndarray], augment: bool,
                generator: torch.Generator | None) -> torch.Tensor:
        """(B, 3, S, S) normalised float32 on the device from (H, W, 3) uint8 arrays."""
        s = self.image_size
        if not arrays:
            return torch.zeros((0, 3, s, s), device=self.device)
        if all(a.shape == arrays[0].shape for a in arrays):
            batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
            if batch.shape[-2:] != (s, s):
                batch = TF.resize(batch, [s, s], antialias=True)
        else:
            batch = torch.stack([TF.resize(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1),
                                           [s, s], antialias=True) for a in arrays])
        if augment:
            batch = self._crop_flip(batch, generator if generator is not None else self._aug_generator)
        x = batch.to(self.device).float().div_(255.0)
        return (x - self._mean.to(self.device)) / self._std.to(self.device)

    def _crop_flip(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop after zero padding of 4 px per 32 px of S, then horizontal flip (p=0.5).

        batch: (B, 3, S, S) uint8 on the CPU; ``generator`` a CPU generator.
        """
        b, _, s, _ = batch.shape
        pad = max(1, round(4 * s / 32))
        padded = F.pad(batch, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
        flips = torch.rand(b, generator=generator) < 0.5
        out = torch.empty_like(batch)
        for k in range(b):
            dy, dx = int(offsets[k, 0]), int(offsets[k, 1])
            crop = padded[k, :, dy:dy + s, dx:dx + s]
            out[k] = crop.flip(-1) if flips[k] else crop
        return out

    #: what :func:`~activedet.data.stream.chunk_batches` decodes for :meth:`load_batch`
    pixels = "array"

    def load_batch(self, dataset: Any, ids: Sequence[int], augment: bool,
                   generator: torch.Generator | None = None,
                   decoded: Sequence[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of ``ids`` on the device: ((B, 3, S, S) float32, (B,) int64).

        Images are resized to S×S, scaled to [0, 1] and normalised with :data:`MEAN` /
        :data:`STD`. ``augment``: random crop with zero padding (4 px at S = 32, scaled
        with S) and horizontal flip, drawn from ``generator`` (a CPU generator; when None,
        the adapter's own generator seeded by :meth:`reset`). ``decoded``: the (H, W, 3)
        uint8 arrays of ``ids`` already read (``dataset.load_array``), e.g. by loader processes.
        """
        inputs = (self._load_inputs(dataset, ids, augment, generator) if decoded is None
                  else self._inputs([np.asarray(a) for a in decoded], augment, generator))
        labels = torch.tensor([dataset.label(i) for i in ids], dtype=torch.int64)
        return inputs, labels.to(self.device)

    # ------------------------------------------------------------------ forwards
    def _heads(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features (B, D) and the logits of each head, each (B, C)."""
        if self.variant == "mial":
            f = self.model.features(inputs)
            return f, [self.model.fc1(f), self.model.fc2(f)]
        f = self.model.features(inputs)
        return f, [self.model.fc(f)]

    def head_logits(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Train-mode logits of every head, each (B, C): one for plain, two for mial."""
        self.model.train()
        return tuple(self._heads(inputs)[1])

    def train_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"classification": cross-entropy}``; for mial the mean over the two heads."""
        self.model.train()
        _, logits = self._heads(inputs)
        loss = sum(F.cross_entropy(lg, targets) for lg in logits) / len(logits)
        return {"classification": loss}

    @torch.no_grad()
    def _predict(self, dataset: Any, ids: Sequence[int], batch_size: int,
                 progress: bool = False) -> Iterator[tuple[list[int], torch.Tensor, list[torch.Tensor]]]:
        """Eval-mode batches: (ids, features (B, D), logits per head (B, C)), all on CPU."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        self.model.eval()
        ids = list(ids)
        with tqdm(total=len(ids), disable=not progress, desc="inference", unit="img") as bar:
            for chunk, arrays in image_batches(dataset, ids, batch_size, self.workers, pixels="array"):
                f, logits = self._heads(self._inputs(arrays, False, None))
                yield chunk, f.float().cpu(), [lg.float().cpu() for lg in logits]
                bar.update(len(chunk))

    @staticmethod
    def _probs(logits: list[torch.Tensor]) -> torch.Tensor:
        """(B, C) softmax; for two heads the mean of both heads' softmax (MIAL's prediction)."""
        return torch.stack([lg.softmax(-1) for lg in logits]).mean(0)

    def infer(self, dataset: Any, ids: Sequence[int], batch_size: int = 8,
              progress: bool = False) -> Iterator[Inference]:
        """One :class:`Inference` per image: probs (1, C), labels (1,) argmax, scores (1,)
        max probability, boxes (0, 4); extra ``logits`` (C,) and ``features`` (D,).

        Variant mial: ``probs`` is the mean of the two heads' softmax; extra adds
        ``probs1`` / ``probs2`` (C,) and ``logits2`` (C,) (``logits`` is head 1).
        """
        for chunk, feats, logits in self._predict(dataset, ids, batch_size, progress):
            probs = self._probs(logits)
            scores, labels = probs.max(-1)
            for k, image_id in enumerate(chunk):
                extra: dict[str, Any] = {"logits": logits[0][k], "features": feats[k]}
                if len(logits) == 2:
                    extra.update(logits2=logits[1][k], probs1=logits[0][k].softmax(-1),
                                 probs2=logits[1][k].softmax(-1))
                yield Inference(image_id=int(image_id), boxes=torch.zeros((0, 4)),
                                scores=scores[k:k + 1], labels=labels[k:k + 1],
                                probs=probs[k:k + 1], extra=extra)

    def evaluate(self, dataset: Any, ids: Sequence[int] | None = None, batch_size: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
        """``{"top1": float, "per_class_accuracy": {class_name: float}}`` over ``ids``
        (default: all of ``dataset``); classes without images are omitted.

        ``batch_size`` defaults to the adapter's ``eval_batch_size``; ``progress`` shows a
        progress bar (same signature as the detection adapter's, which the loop calls)."""
        ids = dataset.ids if ids is None else list(ids)
        bs = self.eval_batch_size if batch_size is None else batch_size
        preds: list[torch.Tensor] = []
        for _, _, logits in self._predict(dataset, ids, bs, progress):
            preds.append(self._probs(logits).argmax(-1))
        y_pred = torch.cat(preds).numpy() if preds else np.zeros((0,), np.int64)
        y_true = np.array([dataset.label(i) for i in ids], dtype=np.int64)
        return classification_metrics(y_true, y_pred, dataset.class_names)

    def features(self, dataset: Any, ids: Sequence[int], batch_size: int = 8) -> np.ndarray:
        """(N, D) float32 penultimate features (eval mode, no augmentation)."""
        out = [f for _, f, _ in self._predict(dataset, ids, batch_size)]
        if not out:
            return np.zeros((0, self.model.feature_dim), np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    #: classifiers have no second scoring model
    scorer: nn.Module | None = None

    @staticmethod
    def capabilities(arch: str, variant: str) -> frozenset[str]:
        """What a classifier of ``arch`` / ``variant`` provides (:data:`activedet.models.base.CAPABILITIES`)."""
        out = {"class_probs", "image_features", "image_losses"}
        if variant == "learning_loss":
            out.add("loss_prediction")
        return frozenset(out)

    @property
    def provides(self) -> frozenset[str]:
        return self.capabilities(self.arch, self.variant)

    def mial_head(self) -> Any:
        """None: a classifier's MIAL variant is two heads on one body (:class:`TwoHeadClassifier`)."""
        return None

    def loss_module(self) -> Any:
        """Learning loss's module (``model.loss_module`` of variant ``learning_loss``), else None."""
        return getattr(self.model, "loss_module", None) if "loss_prediction" in self.provides else None

    def with_model(self, model: nn.Module) -> "ClassificationAdapter":
        """A shallow copy of this adapter around ``model``."""
        view = copy.copy(self)
        view.model = model
        return view

    def scoring(self) -> "ClassificationAdapter":
        """The adapter a strategy scores with: this one (classifiers have no scorer)."""
        return self

    # ---------------------------------------------------------------- parameters
    def gradient_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every weight with >= 2 dimensions (conv kernels and linear weights; ISAL's choice
        for classifiers); biases and BatchNorm parameters are left out."""
        return [(n, p) for n, p in self.model.named_parameters() if p.dim() >= 2]

    def head_parameters(self) -> list[nn.Parameter]:
        """Classifier head(s): ``fc`` (plain) or ``fc1`` + ``fc2`` (mial)."""
        if self.variant == "mial":
            return list(self.model.fc1.parameters()) + list(self.model.fc2.parameters())
        return list(self.model.fc.parameters())

    def feature_parameters(self) -> list[nn.Parameter]:
        """Everything but the head(s): the feature extractor."""
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.model.parameters() if id(p) not in head]

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The model's state dict, copied to the CPU."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`; a mismatch raises ActivedetError."""
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
            raise ActivedetError(f"state dict does not fit {self.arch} ({self.variant}, "
                                 f"{self.num_classes} classes): {detail}") from None
