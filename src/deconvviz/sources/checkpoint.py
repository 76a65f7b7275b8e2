"""Run directories and checkpoints: save a trained model with what is needed to rebuild it.

A run directory holds:

- ``checkpoint.pt``: a dict with ``"state_dict"``, ``"config"`` (the training config, whose
  ``"model"`` entry rebuilds the model), ``"metrics"``, ``"iteration"``, ``"optimizer"`` and
  ``"train_state"`` (random-number states for an exact resume). It contains only tensors and
  plain Python values, so ``torch.load(path, weights_only=True)`` loads it;
- ``config.json`` and ``metrics.json``: the same config and metrics, readable without torch;
- ``curves.png``: train loss and test accuracy (written when training ends).

Every file is written atomically, so an interrupted run never leaves a half-written checkpoint.

Example::

    from deconvviz.sources.checkpoint import load_run

    run = load_run("runs/lenet5")            # or the path of checkpoint.pt
    run.model                                # LeNet5 in eval mode
    run.metrics["final_test_acc"]
    user = load_run("weights.pt", model_factory="mypkg.nets:make_net")  # a bare state dict
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from deconvviz.base._io import save_figure, save_torch, write_json
from deconvviz.base._util import json_safe
from deconvviz.base.errors import CheckpointError

# Reading is deconvviz.sources.loading's (one way in for every checkpoint layout); the names stay
# here too.
from deconvviz.sources.loading import (
    CHECKPOINT_NAME,
    FORMAT,
    ModelFactory,
    checkpoint_path,
    load_weights,
    read_checkpoint,
    resolve_factory,
)

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "Run",
    "checkpoint_path",
    "load_run",
    "read_checkpoint",
    "resolve_factory",
    "resume_config",
    "save_run",
]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Run:
    """A loaded run.

    Attributes:
        model: the model, in eval mode, with the checkpoint's weights.
        config: the training config (``config["model"]`` rebuilds the model); ``{}`` for a
            bare state dict.
        metrics: final or latest metrics (``final_test_acc``, ``status``, ``history``, ...).
        path: the checkpoint file.
        iteration: training iterations done when it was saved.
    """

    model: nn.Module
    config: dict[str, Any]
    metrics: dict[str, Any]
    path: Path
    iteration: int = 0


def save_run(
    run_dir: str | os.PathLike[str],
    model: nn.Module,
    config: Any,
    metrics: Mapping[str, Any],
    *,
    iteration: int = 0,
    optimizer_state: Mapping[str, Any] | None = None,
    train_state: Mapping[str, Any] | None = None,
    figure: Any = None,
) -> Path:
    """Write a run directory atomically: ``checkpoint.pt``, ``config.json``, ``metrics.json``.

    Args:
        run_dir: the directory (created if needed).
        model: the model whose ``state_dict`` is saved.
        config: the training config (a dict or a dataclass with ``to_dict()``); its ``"model"``
            entry must rebuild the model with :func:`deconvviz.sources.models.build_model`.
        metrics: JSON-able metrics (NaN is stored as ``null``).
        iteration: iterations done.
        optimizer_state: ``optimizer.state_dict()``, for resuming.
        train_state: random-number states etc., for resuming (tensors and plain values only).
        figure: a matplotlib figure to save as ``curves.png`` (skipped when ``None``).

    Returns:
        The path of ``checkpoint.pt``.
    """
    run = Path(run_dir)
    cfg = json_safe(config)
    met = json_safe(dict(metrics))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "state_dict": state,
        "config": cfg,
        "metrics": met,
        "iteration": int(iteration),
        "optimizer": dict(optimizer_state) if optimizer_state is not None else None,
        "train_state": dict(train_state) if train_state is not None else None,
    }
    write_json(run / "config.json", cfg)
    path = save_torch(run / CHECKPOINT_NAME, ckpt)
    write_json(run / "metrics.json", met)
    if figure is not None:
        save_figure(run / "curves.png", figure, dpi=110)
    return path


def load_run(
    run_dir_or_file: str | os.PathLike[str],
    model_factory: str | ModelFactory | None = None,
    map_location: Any = "cpu",
) -> Run:
    """Load a trained model from a run directory or a checkpoint file.

    Args:
        run_dir_or_file: a run directory (holding ``checkpoint.pt``) or a ``.pt`` file: a
            deconvviz checkpoint, a dict with a ``"state_dict"`` (or ``"model_state_dict"``)
            entry, or a bare ``state_dict``.
        model_factory: builds the (untrained) model, called with no arguments: a callable or
            ``"package.module:function"`` / ``"file.py:function"``. Needed for user models and
            bare state dicts; without it a deconvviz checkpoint rebuilds its model from the
            config.
        map_location: where tensors go (``"cpu"``, ``"cuda"``, ...); the model is moved there.

    Returns:
        A :class:`Run` with the model in eval mode.

    Raises:
        CheckpointError: missing, corrupt or wrong-kind file, or weights that do not fit the
            model.
    """
    loaded = load_weights(run_dir_or_file, model_factory, map_location=map_location)
    assert loaded.path is not None  # a checkpoint was given
    return Run(
        model=loaded.model,
        config=dict(loaded.config),
        metrics=dict(loaded.metrics),
        path=loaded.path,
        iteration=loaded.iteration,
    )


def resume_config(
    run_dir: str | os.PathLike[str],
    given: Mapping[str, Any],
    model_given: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The training config to resume the run in ``run_dir`` with: its saved config, with the
    values the user gave explicitly on top.

    Args:
        run_dir: the run directory holding ``checkpoint.pt``.
        given: training options the user set (``iterations``, ``epochs``, ``device``, ...);
            giving one of ``iterations``/``epochs`` clears the other.
        model_given: model options the user set (``hidden``, ``width``, ...), merged into the
            saved model entry (training then refuses to resume if they differ from it).

    Raises:
        CheckpointError: nothing to resume there, or not a deconvviz training run.
    """
    if not (Path(run_dir) / CHECKPOINT_NAME).is_file():
        raise CheckpointError(
            f"nothing to resume: {run_dir} holds no {CHECKPOINT_NAME}; drop --resume to "
            "start a new run there"
        )
    ckpt = read_checkpoint(run_dir)
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{run_dir} holds no deconvviz training run to resume; drop --resume to start one"
        )
    over = dict(given)
    if "epochs" in over:
        over["iterations"] = None
    elif "iterations" in over:
        over["epochs"] = None
    if model_given:
        over["model"] = {**saved.get("model", {}), **model_given}
    return {**saved, **over}
