"""Sweeps that reproduce the origin report's tables: LeNet5 optimisers and RNN/LSTM/GRU sizes.

Each configuration trains in its own run directory under ``out_dir``; after each one the sweep
rewrites ``results.csv`` (one row per configuration), ``results.md`` (the table plus the
setup) and ``curves.png`` (loss and test accuracy of every configuration), all atomically.
A restarted sweep skips finished configurations and resumes an interrupted one from its
last checkpoint.

Example::

    from deconvviz.training.sweep import sweep_lenet5, sweep_rnn

    result = sweep_lenet5("../shared/data", "sweeps/lenet5")    # the report's 5 rows
    [(r["optimizer"], r["lr"], r["final_test_acc"]) for r in result.rows]
    sweep_rnn("../shared/data", "sweeps/rnn", cells=("gru",), hiddens=(64,))
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deconvviz.base._io import save_figure, write_text
from deconvviz.base._util import json_safe
from deconvviz.base.errors import CheckpointError, InputError
from deconvviz.sources.checkpoint import CHECKPOINT_NAME
from deconvviz.sources.data import dataset_for_config, load_dataset
from deconvviz.sources.loading import read_checkpoint
from deconvviz.training.train import History, TrainConfig, train

__all__ = [
    "LENET5_GRID",
    "RNN_CELLS",
    "RNN_HIDDENS",
    "SweepResult",
    "format_lr",
    "sweep_lenet5",
    "sweep_rnn",
]

LENET5_GRID: tuple[tuple[str, float], ...] = (
    ("adam", 1e-2),
    ("adam", 1e-3),
    ("adam", 1e-4),
    ("sgd", 1e-2),
    ("sgd", 1e-3),
)
RNN_CELLS: tuple[str, ...] = ("rnn", "lstm", "gru")
RNN_HIDDENS: tuple[int, ...] = (64, 256)

_COMMON_COLUMNS = (
    "final_test_acc",
    "status",
    "diverged_at",
    "last_test_acc",
    "best_test_acc",
    "iterations",
    "wall_seconds",
    "run_dir",
)
LENET5_COLUMNS = ("name", "optimizer", "lr", "momentum", "loss", "init", *_COMMON_COLUMNS)
RNN_COLUMNS = ("name", "cell", "hidden", "optimizer", "lr", "init", *_COMMON_COLUMNS)


@dataclass(frozen=True)
class SweepResult:
    """What a sweep returns.

    Attributes:
        kind: ``"lenet5"`` or ``"rnn"``.
        rows: one dict per configuration (the columns of ``results.csv``).
        out_dir: the sweep directory.
        results_md: path of ``results.md``.
        results_csv: path of ``results.csv``.
        curves_png: path of ``curves.png``.
        trained: names of the configurations trained (or resumed) by this call; the others
            were already finished.
    """

    kind: str
    rows: tuple[dict[str, Any], ...]
    out_dir: Path
    results_md: Path
    results_csv: Path
    curves_png: Path
    trained: tuple[str, ...] = ()


def format_lr(lr: float) -> str:
    """``1e-3`` -> ``"1e-03"`` (as the run directories are named)."""
    return f"{lr:.0e}"


def _rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _acc(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _status(row: Mapping[str, Any]) -> str:
    if row.get("status") == "diverged":
        return f"diverged at iteration {row.get('diverged_at')}"
    return str(row.get("status"))


def _markdown(
    title: str,
    setup: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    key_columns: Sequence[tuple[str, str]],
    pending: Sequence[str],
) -> str:
    head = [label for label, _ in key_columns] + [
        "final test acc",
        "status",
        "last eval acc",
        "best eval acc",
        "wall s",
    ]
    lines = [f"# {title}", "", *[f"- {s}" for s in setup], ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(" --- " for _ in head) + "|")
    for row in rows:
        cells = [str(row[k]) if k != "lr" else format_lr(row[k]) for _, k in key_columns]
        cells += [
            _acc(row.get("final_test_acc")),
            _status(row),
            _acc(row.get("last_test_acc")),
            _acc(row.get("best_test_acc")),
            f"{row.get('wall_seconds', math.nan):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(float(r.get("wall_seconds") or 0.0) for r in rows)
    plural = "s" if len(rows) != 1 else ""
    lines += ["", f"Total training wall time: {total:.0f} s ({len(rows)} configuration{plural})."]
    if pending:
        lines += ["", f"Not finished yet: {', '.join(pending)} (restart the sweep to continue)."]
    lines += ["", "![loss and test accuracy of every configuration](curves.png)", ""]
    if pending:
        lines.insert(-2, "(`curves.png` is drawn when the sweep ends.)")
    return "\n".join(lines)


def _row_from_metrics(
    base: dict[str, Any], metrics: Mapping[str, Any], run_dir: Path
) -> dict[str, Any]:
    hist = History.from_dict(dict(metrics.get("history") or {}))
    accs = [a for _, a in hist.test_acc if not math.isnan(a)]
    final = metrics.get("final_test_acc")
    last = metrics.get("last_test_acc")
    row = dict(base)
    row.update(
        final_test_acc=math.nan if final is None else float(final),
        status=metrics.get("status"),
        diverged_at=metrics.get("diverged_at"),
        last_test_acc=math.nan if last is None else float(last),
        best_test_acc=max(accs) if accs else math.nan,
        iterations=int(metrics.get("iterations") or 0),
        wall_seconds=float(metrics.get("wall_seconds") or 0.0),
        run_dir=run_dir.name,
    )
    return row


def _shaping(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options that decide a run's numbers (not where it runs or how it is evaluated)."""
    return {k: v for k, v in config.items() if k not in ("device", "eval_batch_size")}


def _existing(run_dir: Path, config: TrainConfig) -> str:
    """``"none"``, ``"finished"`` or ``"partial"`` for the run in ``run_dir``."""
    if not (run_dir / CHECKPOINT_NAME).exists():
        return "none"
    ckpt = read_checkpoint(run_dir)
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    wanted = json_safe(config.to_dict())
    if not isinstance(saved, dict) or _shaping(saved) != _shaping(wanted):
        raise CheckpointError(
            f"{run_dir} holds a run with other settings than this sweep's; sweep into another "
            "--out directory, or delete that run directory to redo it"
        )
    metrics = ckpt.get("metrics") or {}
    return "finished" if metrics.get("finished") else "partial"


_Run = tuple[str, dict[str, Any], TrainConfig]  # (name, its table columns, its config)


@dataclass
class _Sweep:
    """One sweep's folder and table layout, and the rows and curves known so far."""

    title: str
    setup: Sequence[str]
    names: list[str]
    columns: Sequence[str]
    key_columns: Sequence[tuple[str, str]]
    out: Path
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    histories: dict[str, History] = field(default_factory=dict)

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        """``results.md``, ``results.csv`` and ``curves.png``."""
        return (self.out / "results.md", self.out / "results.csv", self.out / "curves.png")

    def record(self, name: str, base: dict[str, Any], metrics: Mapping[str, Any]) -> None:
        self.rows[name] = _row_from_metrics(base, metrics, self.out / name)

    def write_tables(self) -> None:
        ordered = [self.rows[n] for n in self.names if n in self.rows]
        pending = [n for n in self.names if n not in self.rows]
        write_text(self.paths[1], _rows_to_csv(ordered, self.columns))
        write_text(
            self.paths[0], _markdown(self.title, self.setup, ordered, self.key_columns, pending)
        )

    def write_curves(self) -> None:
        from deconvviz.render.training import sweep_curves_figure

        if self.histories:
            histories = {n: self.histories[n] for n in self.names if n in self.histories}
            save_figure(self.paths[2], sweep_curves_figure(histories, title=self.title), dpi=110)


def _read_finished(sweep: _Sweep, runs: Sequence[_Run], states: Mapping[str, str]) -> None:
    """Record the rows and curves of the configurations an earlier call finished."""
    for name, base, _cfg in runs:
        if states[name] == "finished":
            metrics = read_checkpoint(sweep.out / name)["metrics"]
            sweep.record(name, base, metrics)
            sweep.histories[name] = History.from_dict(metrics.get("history") or {})


def _train_pending(
    sweep: _Sweep,
    runs: Sequence[_Run],
    states: Mapping[str, str],
    load: Callable[[TrainConfig, str], Any],
    progress: bool,
) -> list[str]:
    """Train (or resume) every configuration not yet finished; return their names.

    The data is loaded once for consecutive configurations that share it; the tables are
    rewritten after every configuration.
    """
    trained: list[str] = []
    data_cache: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for k, (name, base, cfg) in enumerate(runs):
        if name in sweep.rows:
            continue
        key = (cfg.dataset, cfg.per_class, tuple(sorted(cfg.model.items())))
        if key not in data_cache:
            data_cache.clear()
            data_cache[key] = (load(cfg, "train"), load(cfg, "test"))
        train_set, test_set = data_cache[key]
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(f"[{k + 1}/{len(runs)}] {name}", file=sys.stderr)
        result = train(
            cfg,
            train_set,
            test_set,
            out_dir=sweep.out / name,
            progress=progress,
            resume=sweep.out / name if states[name] == "partial" else None,
        )
        sweep.record(name, base, result.metrics())
        sweep.histories[name] = result.history
        trained.append(name)
        sweep.write_tables()  # after every configuration; the figure once, at the end
    return trained


def _run_sweep(
    kind: str,
    title: str,
    setup: Sequence[str],
    runs: Sequence[_Run],
    columns: Sequence[str],
    key_columns: Sequence[tuple[str, str]],
    load: Callable[[TrainConfig, str], Any],
    out_dir: str | os.PathLike[str],
    progress: bool,
) -> SweepResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [name for name, _, _ in runs]
    if len(set(names)) != len(names):
        raise InputError(f"the sweep lists a configuration twice ({names}); remove the duplicate")
    states = {name: _existing(out / name, cfg) for name, _, cfg in runs}
    sweep = _Sweep(title, setup, names, columns, key_columns, out)
    _read_finished(sweep, runs, states)
    trained = _train_pending(sweep, runs, states, load, progress)
    sweep.write_tables()
    sweep.write_curves()
    md, csv_path, png = sweep.paths
    return SweepResult(
        kind=kind,
        rows=tuple(sweep.rows[n] for n in names),
        out_dir=out,
        results_md=md,
        results_csv=csv_path,
        curves_png=png,
        trained=tuple(trained),
    )


def _environment() -> str:
    threads = torch.get_num_threads()
    plural = "s" if threads != 1 else ""
    return f"torch {torch.__version__.split('+')[0]}, {threads} CPU thread{plural}"


def _lenet5_run(optimizer: str, lr: float, momentum: float, common: dict[str, Any]) -> _Run:
    """The ``(optimizer, lr)`` configuration; ``common`` holds the sweep's other options."""
    cfg = TrainConfig(
        optimizer=optimizer,
        lr=float(lr),
        momentum=momentum if optimizer == "sgd" else 0.0,
        **common,
    )
    name = f"{optimizer}-lr{format_lr(lr)}"
    base = {
        "name": name,
        "optimizer": optimizer,
        "lr": float(lr),
        "momentum": cfg.momentum,
        "loss": common["loss"],
        "init": common["model"]["init"],
    }
    return name, base, cfg


def sweep_lenet5(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    grid: Iterable[tuple[str, float]] = LENET5_GRID,
    dataset: str = "cifar10-course",
    per_class: int | None = 500,
    batch_size: int = 50,
    iterations: int = 2000,
    eval_every: int = 100,
    momentum: float = 0.0,
    loss: str = "stable",
    init: str = "course",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> SweepResult:
    """LeNet5 over optimisers and learning rates, as in the origin report.

    Defaults are the report's setup: Adam 1e-2, 1e-3, 1e-4 and SGD 1e-2, 1e-3 on the course's
    CIFAR-10 variant, 500 training images per class, batch 50, 2000 iterations, tested on all
    1000 test images, the course's initialisation. ``loss="course"`` uses the course's naive
    loss (the one that turned Adam 1e-2 into NaN in the report).

    Args:
        data_dir: folder holding the dataset (or the ``shared/data`` root).
        out_dir: sweep directory (one run directory per configuration).
        grid: ``(optimizer, lr)`` pairs.
        dataset: ``"cifar10-course"`` (1x28x28) or ``"cifar10"`` (3x32x32).
        per_class: training images per class (``None``: all).
        batch_size: training batch size.
        iterations: optimizer steps per configuration.
        eval_every: test-set evaluation interval.
        momentum: SGD momentum.
        loss: ``"stable"`` or ``"course"``.
        init: ``"course"`` or ``"pytorch"``.
        seed: the same seed for every configuration.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        progress: progress bars.

    Returns:
        A :class:`SweepResult`; ``rows`` have ``optimizer``, ``lr``, ``final_test_acc``,
        ``status`` and ``wall_seconds`` among their columns.
    """
    if dataset not in ("cifar10-course", "cifar10"):
        raise InputError(f"the LeNet5 sweep runs on 'cifar10-course' or 'cifar10', not {dataset!r}")
    probe = load_dataset(data_dir, dataset, "test")
    channels, size, _ = probe.image_shape
    model = {"model": "lenet5", "in_channels": channels, "image_size": size, "init": init}
    common = dict(
        model=model,
        dataset=dataset,
        per_class=per_class,
        batch_size=batch_size,
        iterations=iterations,
        eval_every=eval_every,
        seed=seed,
        loss=loss,
        device=device,
    )
    runs = [_lenet5_run(optimizer, lr, momentum, common) for optimizer, lr in grid]
    n_test = len(probe)
    train_desc = f"{per_class} training images per class" if per_class else "all training images"
    setup = [
        f"data: `{dataset}` ({channels}x{size}x{size}), {train_desc}, "
        f"tested on all {n_test} test images",
        f"batch {batch_size}, {iterations} iterations, test accuracy every {eval_every} iterations",
        f"initialisation `{init}`, loss `{loss}`, seed {seed}, SGD momentum {momentum:g}",
        f"{_environment()}, device {device}",
    ]
    return _run_sweep(
        "lenet5",
        "LeNet5 sweep",
        setup,
        runs,
        LENET5_COLUMNS,
        [("optimizer", "optimizer"), ("lr", "lr")],
        lambda cfg, split: dataset_for_config(
            cfg.to_dict(), data_dir, split, per_class=cfg.per_class if split == "train" else None
        ),
        out_dir,
        progress,
    )


def _rnn_run(cell: str, hidden: int, init: str, common: dict[str, Any]) -> _Run:
    """The ``cell`` x ``hidden`` configuration; ``common`` holds the sweep's other options."""
    cfg = TrainConfig(
        model={"model": "rnn", "cell": cell, "hidden": int(hidden), "init": init}, **common
    )
    name = f"{cell}-{hidden}"
    base = {
        "name": name,
        "cell": cell,
        "hidden": int(hidden),
        "optimizer": common["optimizer"],
        "lr": common["lr"],
        "init": init,
    }
    return name, base, cfg


def sweep_rnn(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    cells: Iterable[str] = RNN_CELLS,
    hiddens: Iterable[int] = RNN_HIDDENS,
    optimizer: str = "adam",
    lr: float = 1e-3,
    batch_size: int = 128,
    iterations: int = 390,
    eval_every: int = 100,
    init: str = "course",
    loss: str = "stable",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> SweepResult:
    """RNN (tanh), LSTM and GRU classifiers of MNIST rows over hidden sizes, as in the report.

    Defaults are the report's setup: cells rnn/lstm/gru x hidden 64/256, Adam 1e-3, batch 128,
    390 steps (about 50,000 samples), tested on all 10,000 test images, the course's
    TensorFlow initialisation.

    Args:
        data_dir: folder holding MNIST (or the ``shared/data`` root).
        out_dir: sweep directory (one run directory per configuration).
        cells: recurrent cells.
        hiddens: hidden sizes.
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: learning rate.
        batch_size: training batch size.
        iterations: optimizer steps per configuration.
        eval_every: test-set evaluation interval.
        init: ``"course"`` or ``"pytorch"``.
        loss: ``"stable"`` or ``"course"``.
        seed: the same seed for every configuration.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        progress: progress bars.

    Returns:
        A :class:`SweepResult`; ``rows`` have ``cell``, ``hidden``, ``final_test_acc``,
        ``status`` and ``wall_seconds`` among their columns.
    """
    common = dict(
        dataset="mnist",
        optimizer=optimizer,
        lr=float(lr),
        batch_size=batch_size,
        iterations=iterations,
        eval_every=eval_every,
        seed=seed,
        loss=loss,
        device=device,
    )
    runs = [_rnn_run(cell, hidden, init, common) for cell in cells for hidden in hiddens]
    setup = [
        f"data: `mnist`, rows as 28 time steps; {iterations} steps of batch {batch_size} "
        f"(about {iterations * batch_size:,} samples), tested on the whole test split",
        f"{optimizer} lr {lr:g}, test accuracy every {eval_every} iterations",
        f"initialisation `{init}`, loss `{loss}`, seed {seed}",
        f"{_environment()}, device {device}",
    ]
    return _run_sweep(
        "rnn",
        "RNN sweep",
        setup,
        runs,
        RNN_COLUMNS,
        [("cell", "cell"), ("hidden", "hidden")],
        lambda cfg, split: load_dataset(data_dir, "mnist", split),
        out_dir,
        progress,
    )
