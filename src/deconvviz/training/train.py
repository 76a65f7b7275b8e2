"""Train the example targets: seeded, resumable, with divergence detection and atomic checkpoints.

Example::

    from deconvviz.sources.data import load_dataset
    from deconvviz.training.train import TrainConfig, train

    cfg = TrainConfig(model={"model": "lenet5"}, optimizer="adam", lr=1e-3, batch_size=50,
                      iterations=2000, eval_every=100, per_class=500)
    train_set = load_dataset("../shared/data", "cifar10-course", "train", per_class=500)
    test_set = load_dataset("../shared/data", "cifar10-course", "test")
    result = train(cfg, train_set, test_set, out_dir="runs/lenet5")
    result.final_test_acc, result.status          # e.g. 0.48, "ok"

Callbacks
    ``train(..., callbacks=[cb])`` calls ``cb(iteration, model)`` at every evaluation point:
    iteration 0 (before the first step), every ``eval_every`` iterations and the last
    iteration, after that point's test accuracy is recorded and its checkpoint written. The
    model is in eval mode during the call and goes back to train mode afterwards; a callback
    must not change its parameters. Callbacks run under their own random-number state, so
    they do not change the training numbers. A callback that raises ``KeyboardInterrupt``
    stops training like Ctrl-C does.

Interrupting
    A checkpoint is written atomically at every evaluation point, so after Ctrl-C the run
    directory holds the last evaluation point's complete state; ``resume=run_dir`` continues
    from it and gives exactly the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deconvviz.analyses.filters import renormalise_
from deconvviz.base.checks import check_positive_int
from deconvviz.base.devices import resolve_device
from deconvviz.base.errors import CheckpointError, InputError, unknown_name
from deconvviz.sources.checkpoint import CHECKPOINT_NAME, FORMAT, save_run
from deconvviz.sources.data import dataset_for_config
from deconvviz.sources.loading import read_checkpoint
from deconvviz.sources.models import build_model, full_config

__all__ = [
    "Callback",
    "History",
    "TrainConfig",
    "TrainResult",
    "course_loss",
    "crop_flip",
    "evaluate",
    "train",
    "train_from_data",
]

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("stable", "course")
SCHEDULES = ("constant", "onecycle")
AUGMENTS = ("none", "crop-flip")
PRECISIONS = ("fp32", "bf16")
DEFAULT_ITERATIONS = 2000

Callback = Callable[[int, nn.Module], Any]

# Options that must match when resuming (anything else may change, e.g. more iterations).
_RESUME_FIXED = (
    "model",
    "optimizer",
    "lr",
    "momentum",
    "batch_size",
    "seed",
    "loss",
    "weight_decay",
    "nesterov",
    "schedule",
    "label_smoothing",
    "augment",
    "precision",
    "renormalise",
    "normalize",
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run.

    Attributes:
        model: model config for :func:`deconvviz.sources.models.build_model`, e.g.
            ``{"model": "rnn", "cell": "gru", "hidden": 256}``.
        dataset: name of the dataset trained on (recorded; ``None`` lets
            :func:`deconvviz.sources.data.dataset_for_config` pick one from the model).
        per_class: training images per class (recorded; applied when the data is loaded).
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: learning rate.
        momentum: SGD momentum (0 = plain SGD); ignored by Adam.
        batch_size: training batch size.
        iterations: optimizer steps (default 2000); ignored when ``epochs`` is given.
        epochs: passes over the training set (rounded up to whole steps).
        eval_every: evaluate on the whole test set every this many iterations (and at the
            start and the end).
        seed: seeds the initialisation, the batch order and dropout; same seed, same numbers.
        loss: ``"stable"`` (``F.cross_entropy``) or ``"course"`` (the course's naive
            ``-sum(y * log(softmax))``, which turns NaN when a probability underflows to 0).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or ``"auto"`` (CUDA when available).
        eval_batch_size: batch size for evaluation.
        weight_decay: L2 weight decay (coupled, as in ``torch.optim.SGD``/``Adam``).
        nesterov: Nesterov momentum (SGD with ``momentum > 0`` only).
        schedule: ``"constant"`` learning rate, or ``"onecycle"``: linear warm-up from
            ``lr/10`` to ``lr`` over the first 15% of the steps, then linear decay to 0.
        label_smoothing: label smoothing of the ``"stable"`` cross-entropy loss.
        augment: ``"none"`` or ``"crop-flip"``: random 32-of-40 crops of reflect-padded images
            (4 pixels each side) and random horizontal flips, drawn per image and per step.
        precision: ``"fp32"``, or ``"bf16"``: forward and backward under bfloat16 autocast
            (uses the CPU's AMX/AVX-512 bf16 units or the GPU's tensor cores); weights and
            optimizer state stay float32.
        renormalise: the paper's filter renormalisation: after every step, conv filters whose
            RMS exceeds this radius are scaled back to it (``None``: off; the paper used 0.1).
        normalize: input normalisation the model is trained with (``"cifar10"``,
            ``"imagenet"``, ``"mnist"`` or ``"MEAN,STD[,...]"``; see
            :func:`deconvviz.sources.loading.parse_normalize`): the model is wrapped in
            :class:`deconvviz.sources.loading.Normalized`, so data and figures stay in pixels.
            Stored in
            the run, and applied again whenever a command loads it.
    """

    model: dict[str, Any] = field(default_factory=lambda: {"model": "lenet5"})
    dataset: str | None = None
    per_class: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    batch_size: int = 50
    iterations: int | None = DEFAULT_ITERATIONS
    epochs: float | None = None
    eval_every: int = 100
    seed: int = 0
    loss: str = "stable"
    device: str = "cpu"
    eval_batch_size: int = 1000
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "constant"
    label_smoothing: float = 0.0
    augment: str = "none"
    precision: str = "fp32"
    renormalise: float | None = None
    normalize: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, dict) or "model" not in self.model:
            raise InputError(
                f"TrainConfig.model must be a model config dict with a 'model' key, e.g. "
                f"{{'model': 'lenet5'}}, got {self.model!r}"
            )
        object.__setattr__(self, "model", full_config(self.model))
        if self.optimizer not in OPTIMIZERS:
            raise InputError(unknown_name("optimizer", str(self.optimizer), OPTIMIZERS))
        if self.loss not in LOSSES:
            raise InputError(unknown_name("loss", str(self.loss), LOSSES))
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.momentum, int | float) and 0 <= self.momentum < 1):
            raise InputError(f"momentum must be in [0, 1), got {self.momentum!r}")
        for name in ("batch_size", "eval_every", "eval_batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.per_class is not None:
            check_positive_int("per_class", self.per_class)
        if self.epochs is not None:
            if not (isinstance(self.epochs, int | float) and self.epochs > 0):
                raise InputError(f"epochs must be a positive number, got {self.epochs!r}")
            object.__setattr__(self, "iterations", None)
        elif self.iterations is None:
            object.__setattr__(self, "iterations", DEFAULT_ITERATIONS)
        else:
            check_positive_int("iterations", self.iterations)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        self._check_recipe()

    def _check_recipe(self) -> None:
        for name, value, choices in (
            ("schedule", self.schedule, SCHEDULES),
            ("augment", self.augment, AUGMENTS),
            ("precision", self.precision, PRECISIONS),
        ):
            if value not in choices:
                raise InputError(unknown_name(name, str(value), choices))
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise InputError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.label_smoothing, int | float) and 0 <= self.label_smoothing < 1):
            raise InputError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.label_smoothing and self.loss != "stable":
            raise InputError("label smoothing needs the stable loss; drop --loss course")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise InputError("nesterov needs --optimizer sgd with --momentum > 0")
        if self.normalize is not None:
            from deconvviz.sources.loading import parse_normalize

            parse_normalize(self.normalize)  # a clear error now, not after loading the data
        if self.renormalise is not None and not (
            isinstance(self.renormalise, int | float) and self.renormalise > 0
        ):
            raise InputError(f"renormalise must be a positive radius, got {self.renormalise!r}")

    def lr_at(self, iteration: int, total: int) -> float:
        """The learning rate of step ``iteration`` (1-based) of ``total`` under the schedule."""
        if self.schedule == "constant":
            return self.lr
        warm = max(1, round(0.15 * total))
        if iteration <= warm:
            return self.lr * (0.1 + 0.9 * iteration / warm)
        return self.lr * max(0.0, (total - iteration) / max(1, total - warm))

    def total_iterations(self, train_size: int) -> int:
        """Optimizer steps for a training set of ``train_size`` images."""
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * train_size / self.batch_size))
        assert self.iterations is not None
        return self.iterations

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the run's ``config.json``)."""
        out = dataclasses.asdict(self)
        out["model"] = dict(self.model)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict`'s output.

        Raises:
            InputError: unknown keys or bad values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown training options {unknown}; valid options: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some options changed."""
        if "iterations" in changes and changes["iterations"] is not None:
            changes.setdefault("epochs", None)
        return dataclasses.replace(self, **changes)


# Runs written before an option existed trained with its default.
_FIELD_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.default is not dataclasses.MISSING
}


@dataclass(frozen=True)
class History:
    """Recorded curves: ``(iteration, value)`` pairs.

    Attributes:
        train_loss: the batch loss of every iteration.
        test_acc: test accuracy at every evaluation point (iteration 0 is before training).
    """

    train_loss: tuple[tuple[int, float], ...] = ()
    test_acc: tuple[tuple[int, float], ...] = ()

    def to_dict(self) -> dict[str, list[list[float]]]:
        """``{"train_loss": [[it, v], ...], "test_acc": [[it, v], ...]}``."""
        return {
            "train_loss": [[i, v] for i, v in self.train_loss],
            "test_acc": [[i, v] for i, v in self.test_acc],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict` (``None`` values become NaN)."""

        def pairs(key: str) -> tuple[tuple[int, float], ...]:
            return tuple(
                (int(i), math.nan if v is None else float(v)) for i, v in data.get(key, [])
            )

        return cls(train_loss=pairs("train_loss"), test_acc=pairs("test_acc"))


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (eval mode).
        config: the config it was trained with.
        history: train-loss and test-accuracy curves.
        final_test_acc: test accuracy after the last iteration (NaN when diverged).
        status: ``"ok"`` or ``"diverged"`` (a NaN/inf loss stopped the run).
        wall_seconds: training time, summed over resumed parts.
        iterations: iterations done.
        diverged_at: the iteration whose loss was NaN/inf, or ``None``.
        last_test_acc: the last recorded test accuracy (before divergence, if any).
        out_dir: the run directory, if one was written.
    """

    model: nn.Module
    config: TrainConfig
    history: History
    final_test_acc: float
    status: str
    wall_seconds: float
    iterations: int
    diverged_at: int | None = None
    last_test_acc: float = math.nan
    out_dir: Path | None = None

    def metrics(self) -> dict[str, Any]:
        """The run's ``metrics.json`` content."""
        return {
            "status": self.status,
            "finished": True,
            "final_test_acc": self.final_test_acc,
            "last_test_acc": self.last_test_acc,
            "iterations": self.iterations,
            "diverged_at": self.diverged_at,
            "wall_seconds": self.wall_seconds,
            "history": self.history.to_dict(),
        }


def course_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The course's loss: mean over the batch of ``-sum(onehot(y) * log(softmax(logits)))``.

    Computed naively on purpose: once a softmax probability underflows to 0, ``log`` gives
    ``-inf`` and ``0 * -inf`` gives NaN, which is how the origin report's Adam 1e-2 run died.
    """
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    return -(onehot * torch.log(torch.softmax(logits, dim=1))).sum(dim=1).mean()


def _batch(dataset: Any, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(dataset, "batch"):
        x, y = dataset.batch(indices)
        return x, torch.as_tensor(y, dtype=torch.long)
    items = [dataset[int(i)] for i in indices]
    x = torch.stack([torch.as_tensor(it[0], dtype=torch.float32) for it in items])
    y = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
    return x, y


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
) -> float:
    """Accuracy of ``model`` on the whole of ``dataset`` (the model is put in eval mode).

    Args:
        model: a classifier returning logits ``[N, classes]``.
        dataset: items ``(image, label)``; an :class:`deconvviz.sources.data.ImageDataset` is
        batched
            without a DataLoader.
        batch_size: images per forward pass.
        device: where to run (default: the model's device).

    Returns:
        The fraction of correct top-1 predictions.
    """
    n = len(dataset)
    if n == 0:
        raise InputError("cannot evaluate on an empty dataset; check the test split")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    model.eval()
    correct = 0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, y = _batch(dataset, idx)
        pred = model(x.to(device)).argmax(dim=1).cpu()
        correct += int((pred == y).sum())
    return correct / n


def _resolve_device(name: str) -> torch.device:
    return resolve_device(name, auto=True)


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random ``H x W`` crops of ``x`` reflect-padded by ``pad``, each flipped with p=0.5.

    One crop offset and one coin per image, drawn from torch's global generator (so a seeded
    run is reproducible and resumes exactly).
    """
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (n,))
    ox = torch.randint(0, 2 * pad + 1, (n,))
    flip = torch.rand(n) < 0.5
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(n)[:, None, None]
    idx = (b, rows[:, :, None].to(x.device), cols[:, None, :].to(x.device))
    return xp.permute(0, 2, 3, 1)[idx].permute(0, 3, 1, 2).contiguous()


def _autocast(precision: str, device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _check_labels(dataset: Any, num_classes: int, which: str) -> None:
    targets = getattr(dataset, "targets", None)
    if isinstance(targets, torch.Tensor) and len(targets):
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_classes:
            raise InputError(
                f"the {which} set has labels {lo}..{hi} but the model has {num_classes} classes; "
                "set num_classes in the model config to match the data"
            )


class _Sampler:
    """Batches from shuffled passes over the training set (a fresh permutation per pass)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> dict[str, Any]:
        return {"sampler_rng": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["sampler_rng"])
        self.perm = state["perm"]
        self.pos = int(state["pos"])


def _run_callbacks(
    callbacks: Sequence[Callback], iteration: int, model: nn.Module, rng_devices: list[int]
) -> None:
    if not callbacks:
        return
    model.eval()
    try:
        with torch.random.fork_rng(devices=rng_devices):
            for cb in callbacks:
                cb(iteration, model)
    finally:
        model.train()


def _check_train_inputs(
    config: Any,
    train_set: Any,
    test_set: Any,
    out_dir: str | os.PathLike[str] | None,
    resume: Any,
    overwrite: bool,
) -> Path | None:
    """Reject a config that is not one, empty or too small data, and a run that would clobber.

    Returns the run directory (``None`` when nothing is to be written).
    """
    if not isinstance(config, TrainConfig):
        raise InputError(f"config must be a TrainConfig, got {type(config).__name__}")
    n_train, n_test = len(train_set), len(test_set)
    if n_train == 0 or n_test == 0:
        raise InputError(
            f"empty dataset (train {n_train}, test {n_test} images); check --data-dir and "
            "--per-class"
        )
    if config.batch_size > n_train:
        raise InputError(
            f"batch_size {config.batch_size} is larger than the training set ({n_train} "
            "images); lower --batch-size or load more data"
        )
    run_dir = Path(out_dir) if out_dir is not None else None
    if (
        run_dir is not None
        and (run_dir / CHECKPOINT_NAME).exists()
        and resume is None
        and not overwrite
    ):
        raise CheckpointError(
            f"{run_dir} already holds a run; resume it (--resume), choose another --out, "
            "or pass overwrite=True (--overwrite) to replace it"
        )
    num_classes = int(config.model.get("num_classes", 10))
    _check_labels(train_set, num_classes, "training")
    _check_labels(test_set, num_classes, "test")
    return run_dir


def _loss_function(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The course's loss, or the stable one (float32 cross-entropy with label smoothing)."""
    if config.loss != "stable":
        return course_loss

    def stable_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=config.label_smoothing)

    return stable_loss


def _build_run_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """The config's model on ``device``; it sees normalised inputs when ``config.normalize``."""
    model = build_model(config.model)
    if config.normalize is not None:  # the model sees normalised inputs, we keep pixels
        from deconvviz.sources.loading import Normalized, parse_normalize

        norm = parse_normalize(config.normalize)
        if norm is not None:
            model = Normalized(model, *norm)
    return model.to(device)


@dataclass
class _Run:
    """One training run's moving parts and history, shared by its loop and its snapshots."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: _Sampler
    device: torch.device
    rng_devices: list[int]
    run_dir: Path | None
    test_set: Any
    callbacks: list[Callback]
    total: int
    n_train: int
    n_test: int
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    test_acc: list[tuple[int, float]] = field(default_factory=list)
    wall_before: float = 0.0
    t0: float = 0.0
    status: str = "ok"
    diverged_at: int | None = None

    def history(self) -> History:
        return History(tuple(self.train_loss), tuple(self.test_acc))

    def snapshot(
        self,
        iteration: int,
        finished: bool,
        figure: Any = None,
        wall: float | None = None,
        **extra: Any,
    ) -> None:
        """Save the run so far (model, optimizer, RNG states, metrics) to its directory."""
        if self.run_dir is None:
            return
        ts: dict[str, Any] = {"torch_rng": torch.get_rng_state(), **self.sampler.state()}
        if self.device.type == "cuda":
            ts["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if wall is None:
            wall = self.wall_before + time.perf_counter() - self.t0
        ts["wall_seconds"] = wall
        metrics = {
            "status": self.status,
            "finished": finished,
            "iterations": iteration,
            "total_iterations": self.total,
            "wall_seconds": wall,
            "train_size": self.n_train,
            "test_size": self.n_test,
            "history": self.history().to_dict(),
            **extra,
        }
        save_run(
            self.run_dir,
            self.model,
            self.config.to_dict(),
            metrics,
            iteration=iteration,
            optimizer_state=self.optimizer.state_dict(),
            train_state=ts,
            figure=figure,
        )

    def eval_point(self, iteration: int) -> None:
        """Evaluate on the test set, save a snapshot and call the callbacks."""
        with _autocast(self.config.precision, self.device):
            acc = evaluate(self.model, self.test_set, self.config.eval_batch_size, self.device)
        self.test_acc.append((iteration, acc))
        self.model.train()
        self.snapshot(iteration, finished=False, last_test_acc=acc)
        _run_callbacks(self.callbacks, iteration, self.model, self.rng_devices)


def _resume(run: _Run, resume: str | os.PathLike[str]) -> int:
    """Load the checkpoint to continue from into ``run``; return its iteration."""
    start, run.wall_before = _restore(
        resume,
        run.config,
        run.model,
        run.optimizer,
        run.sampler,
        run.train_loss,
        run.test_acc,
        run.device,
    )
    return start


def _batch_loss(
    run: _Run,
    train_set: Any,
    it: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Iteration ``it``'s loss on the sampler's next batch, at the schedule's learning rate."""
    config = run.config
    x, y = _batch(train_set, run.sampler.next())
    x, y = x.to(run.device), y.to(run.device)
    if config.augment == "crop-flip":
        x = crop_flip(x)
    for group in run.optimizer.param_groups:
        group["lr"] = config.lr_at(it, run.total)
    with _autocast(config.precision, run.device):
        return loss_fn(run.model(x), y)


def _optimizer_step(run: _Run, loss: torch.Tensor) -> None:
    """Backpropagate ``loss`` and step (then renormalise the filters, if the config says so)."""
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.config.renormalise is not None:
        renormalise_(run.model, radius=run.config.renormalise)


def _train_loop(
    run: _Run,
    train_set: Any,
    start: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    progress: bool,
) -> None:
    """Iterations ``start + 1 .. total``, evaluating every ``eval_every``; a NaN/inf loss stops."""
    from tqdm.auto import tqdm

    run.model.train()
    bar = tqdm(
        total=run.total,
        initial=start,
        disable=not progress,
        unit="it",
        leave=False,
        desc=f"train {_describe(run.config)}",
        dynamic_ncols=True,
    )
    try:
        if start == 0 and not run.test_acc:
            run.eval_point(0)
        for it in range(start + 1, run.total + 1):
            loss = _batch_loss(run, train_set, it, loss_fn)
            value = float(loss.item())
            if not math.isfinite(value):
                run.status, run.diverged_at = "diverged", it
                run.train_loss.append((it, math.nan))
                break
            _optimizer_step(run, loss)
            run.train_loss.append((it, value))
            bar.update(1)
            if it % run.config.eval_every == 0 or it == run.total:
                run.eval_point(it)
                bar.set_postfix(loss=f"{value:.3f}", acc=f"{run.test_acc[-1][1]:.3f}")
    finally:
        bar.close()


def _train_result(run: _Run) -> TrainResult:
    """The finished (or diverged) run's result; the model is left in eval mode."""
    done = run.diverged_at - 1 if run.diverged_at is not None else run.total
    last_acc = run.test_acc[-1][1] if run.test_acc else math.nan
    return TrainResult(
        model=run.model.eval(),
        config=run.config,
        history=run.history(),
        final_test_acc=last_acc if run.status == "ok" else math.nan,
        status=run.status,
        wall_seconds=run.wall_before + time.perf_counter() - run.t0,
        iterations=done,
        diverged_at=run.diverged_at,
        last_test_acc=last_acc,
        out_dir=run.run_dir,
    )


def _save_final(run: _Run, result: TrainResult) -> None:
    """The last snapshot: the result's metrics and the curves figure."""
    if run.run_dir is None:
        return
    from deconvviz.render.training import curves_figure

    title = f"{_describe(run.config)}: {result.status}" + (
        f", test accuracy {result.final_test_acc:.3f}"
        if result.status == "ok"
        else f" at iteration {result.diverged_at}"
    )
    fig = curves_figure(result.history, title=title)
    skip = ("history", "iterations", "wall_seconds", "finished")
    extra = {k: v for k, v in result.metrics().items() if k not in skip}
    run.snapshot(result.iterations, finished=True, figure=fig, wall=result.wall_seconds, **extra)


def train(
    config: TrainConfig,
    train_set: Any,
    test_set: Any,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``config.model`` on ``train_set``, evaluating on all of ``test_set``.

    Args:
        config: the run's settings.
        train_set: items ``(image float32 [C, H, W], label)``.
        test_set: same; evaluated in full at every evaluation point.
        out_dir: run directory for ``checkpoint.pt``, ``config.json``, ``metrics.json`` and
            ``curves.png`` (nothing is written when ``None``).
        progress: show a progress bar.
        callbacks: ``cb(iteration, model)`` at every evaluation point (see the module doc).
        resume: a run directory or checkpoint to continue from; the options that shape the
            numbers (model, optimizer, lr, momentum, batch size, seed, loss) must match it.
        overwrite: allow ``out_dir`` to already hold a run that is not being resumed.

    Returns:
        A :class:`TrainResult`; a NaN/inf loss ends the run with ``status="diverged"``.

    Raises:
        InputError: bad config or data that does not fit the model.
        CheckpointError: ``out_dir`` already holds a run (and neither ``resume`` nor
            ``overwrite``), or the checkpoint to resume does not match ``config``.
    """
    run_dir = _check_train_inputs(config, train_set, test_set, out_dir, resume, overwrite)
    n_train = len(train_set)
    device = _resolve_device(config.device)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    total = config.total_iterations(n_train)
    callbacks = list(callbacks)
    loss_fn = _loss_function(config)
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        model = _build_run_model(config, device)
        run = _Run(
            config=config,
            model=model,
            optimizer=_make_optimizer(config, model),
            sampler=_Sampler(n_train, config.batch_size, config.seed + 1),
            device=device,
            rng_devices=rng_devices,
            run_dir=run_dir,
            test_set=test_set,
            callbacks=callbacks,
            total=total,
            n_train=n_train,
            n_test=len(test_set),
        )
        start = 0 if resume is None else _resume(run, resume)
        if start:
            print(f"resuming from iteration {start} of {run.total}", file=sys.stderr)
        run.t0 = time.perf_counter()
        _train_loop(run, train_set, start, loss_fn, progress)
        result = _train_result(run)
        _save_final(run, result)
    return result


def _describe(config: TrainConfig) -> str:
    m = config.model
    name = m.get("model", "?")
    if name == "rnn":
        name = f"{m.get('cell', 'rnn')}-{m.get('hidden', 128)}"
    return f"{name} {config.optimizer} lr={config.lr:g}"


def _restore(
    resume: str | os.PathLike[str],
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: _Sampler,
    train_loss: list[tuple[int, float]],
    test_acc: list[tuple[int, float]],
    device: torch.device,
) -> tuple[int, float]:
    ckpt = read_checkpoint(resume, map_location=device)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{resume} is not a deconvviz training checkpoint; resume only from a run "
            "directory written by deconvviz train"
        )
    saved = ckpt.get("config") or {}
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {getattr(config, k)!r}"
        for k in _RESUME_FIXED
        if saved.get(k, _FIELD_DEFAULTS.get(k))
        != (config.model if k == "model" else getattr(config, k))
    ]
    if diffs:
        raise CheckpointError(
            f"cannot resume {resume} with different settings ({'; '.join(diffs)}); pass the "
            "same options as the original run, or start a fresh run in another directory"
        )
    metrics = ckpt.get("metrics") or {}
    if metrics.get("status") == "diverged":
        raise CheckpointError(
            f"{resume} diverged (NaN/inf loss) at iteration {metrics.get('diverged_at')}; "
            "there is nothing sound to resume: start a fresh run, e.g. with a lower learning rate"
        )
    ts = ckpt.get("train_state")
    if not isinstance(ts, dict) or ckpt.get("optimizer") is None:
        raise CheckpointError(
            f"{resume} has no optimizer/random state to resume from; start a fresh run"
        )
    try:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ts["torch_rng"].cpu())
        if device.type == "cuda" and ts.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ts["cuda_rng"].cpu(), device)
        sampler.load(
            {"sampler_rng": ts["sampler_rng"].cpu(), "perm": _cpu(ts.get("perm")), "pos": ts["pos"]}
        )
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{resume} does not fit this run ({type(exc).__name__}: {exc}); start a fresh run"
        ) from exc
    hist = History.from_dict(metrics.get("history") or {})
    train_loss.extend(hist.train_loss)
    test_acc.extend(hist.test_acc)
    return int(ckpt.get("iteration", 0)), float(ts.get("wall_seconds", 0.0))


def _cpu(t: Any) -> Any:
    return t.cpu() if isinstance(t, torch.Tensor) else t


def train_from_data(
    config: TrainConfig,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    download: bool = False,
) -> TrainResult:
    """Load the data that goes with ``config`` from ``data_dir`` and :func:`train` on it.

    The training split keeps ``config.per_class`` images per class; the test split is used
    whole. ``config.dataset`` picks the dataset (``None``: chosen from the model, see
    :func:`deconvviz.sources.data.dataset_for_config`) and is recorded in the run's config.

    Example::

        cfg = TrainConfig(model={"model": "rnn", "cell": "gru", "hidden": 256},
                          batch_size=128, iterations=390)
        result = train_from_data(cfg, "../shared/data", "runs/gru256")
    """
    cfg = config.to_dict()
    train_set = dataset_for_config(
        cfg, data_dir, "train", per_class=config.per_class, download=download, progress=progress
    )
    test_set = dataset_for_config(cfg, data_dir, "test", download=download, progress=progress)
    if config.dataset in (None, "auto"):
        config = config.replace(dataset=getattr(train_set, "name", None))
    return train(
        config,
        train_set,
        test_set,
        out_dir=out_dir,
        progress=progress,
        callbacks=callbacks,
        resume=resume,
        overwrite=overwrite,
    )
