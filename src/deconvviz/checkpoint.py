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

    from deconvviz.checkpoint import load_run

    run = load_run("runs/lenet5")            # or the path of checkpoint.pt
    run.model                                # LeNet5 in eval mode
    run.metrics["final_test_acc"]
    user = load_run("weights.pt", model_factory="mypkg.nets:make_net")  # a bare state dict
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deconvviz._io import save_figure, save_torch, write_json
from deconvviz._util import json_safe
from deconvviz.errors import CheckpointError, DeconvvizError

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "Run",
    "checkpoint_path",
    "json_safe",
    "load_run",
    "read_checkpoint",
    "resolve_factory",
    "save_run",
]

FORMAT = "deconvviz-run"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"

ModelFactory = Callable[[], nn.Module]


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


def checkpoint_path(run_dir_or_file: str | os.PathLike[str]) -> Path:
    """The checkpoint file of a run directory (or the file itself).

    Raises:
        CheckpointError: nothing is there.
    """
    path = Path(run_dir_or_file).expanduser()
    if path.is_dir():
        ckpt = path / CHECKPOINT_NAME
        if not ckpt.is_file():
            raise CheckpointError(
                f"no {CHECKPOINT_NAME} in {path}; train a model there first (deconvviz train "
                f"lenet5 --out {path}) or pass the path of a checkpoint file"
            )
        return ckpt
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a run directory (made by deconvviz train) "
            "or a .pt file"
        )
    return path


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
            entry must rebuild the model with :func:`deconvviz.models.build_model`.
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


def read_checkpoint(run_dir_or_file: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` of a checkpoint, with clear errors.

    Raises:
        CheckpointError: missing, corrupt, or holding objects that are not plain tensors and
            values (the message names the file and the fix).
    """
    path = checkpoint_path(run_dir_or_file)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found is None:
            detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
            why = detail.group(1).strip() if detail else type(exc).__name__
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint ({why}); it is corrupt or "
                "truncated: train again, or resume from an intact copy"
            ) from exc
        raise CheckpointError(
            f"{path} holds objects that cannot be loaded safely with weights_only=True (a "
            f"pickled {found.group(1)}); save the weights alone with "
            "torch.save(model.state_dict(), path) and load them with a model factory"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0].rstrip(".")  # torch's own advice runs on for lines
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({first}); it is corrupt or "
            "truncated: train again, or resume from an intact copy"
        ) from exc


def resolve_factory(spec: str | ModelFactory) -> ModelFactory:
    """A model factory from a callable or ``"package.module:function"`` / ``"file.py:function"``.

    Raises:
        CheckpointError: the module or function cannot be found.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise CheckpointError(
            f"model factory {spec!r} must be a callable or 'package.module:function' "
            "(or 'path/to/file.py:function')"
        )
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).expanduser()
            if not file.is_file():
                raise CheckpointError(f"model factory file {file} does not exist; check the path")
            mod_spec = importlib.util.spec_from_file_location(
                f"_deconvviz_factory_{file.stem}", file
            )
            if mod_spec is None or mod_spec.loader is None:
                raise CheckpointError(f"cannot import {file}; is it a Python file?")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckpointError(
            f"cannot import {module_name!r} for model factory {spec!r} ({exc}); install it or add "
            "its folder to PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CheckpointError(
            f"{module_name!r} has no callable {attr!r} (model factory {spec!r}); "
            "name a function that returns the model"
        )
    return factory


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _device(map_location: Any) -> torch.device | None:
    """The device ``map_location`` names, checked to exist here (not a corrupt-file error)."""
    if isinstance(map_location, (str, torch.device)):
        from deconvviz.devices import resolve_device

        return resolve_device(map_location, auto=False)
    return None


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
    path = checkpoint_path(run_dir_or_file)
    device = _device(map_location)  # a device this machine lacks is not a corrupt checkpoint
    obj = read_checkpoint(path, map_location=map_location)
    config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    iteration = 0
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        state = obj.get("state_dict")
        config = dict(obj.get("config") or {})
        metrics = dict(obj.get("metrics") or {})
        iteration = int(obj.get("iteration") or 0)
    elif _is_state_dict(obj):
        state = obj
    elif isinstance(obj, Mapping) and (
        _is_state_dict(obj.get("state_dict")) or _is_state_dict(obj.get("model_state_dict"))
    ):
        state = (
            obj.get("state_dict")
            if _is_state_dict(obj.get("state_dict"))
            else obj.get("model_state_dict")
        )
        cfg = obj.get("config")
        config = dict(cfg) if isinstance(cfg, Mapping) else {}
    else:
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a model checkpoint; pass a run directory "
            "made by deconvviz train, or a file saved with torch.save(model.state_dict(), path)"
        )
    if state is None or not _is_state_dict(state):
        raise CheckpointError(f"{path} has no weights (empty state_dict); train or save it again")
    if model_factory is not None:
        try:
            model = resolve_factory(model_factory)()
        except DeconvvizError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"model factory {model_factory!r} failed: {type(exc).__name__}: {exc}; "
                "it must build the model with no arguments"
            ) from exc
        if not isinstance(model, nn.Module):
            raise CheckpointError(
                f"model factory {model_factory!r} returned a {type(model).__name__}, not an "
                "nn.Module; make it return the model"
            )
    else:
        model_cfg = config.get("model")
        if not isinstance(model_cfg, Mapping):
            raise CheckpointError(
                f"{path} has weights but no model config to rebuild the model from; pass "
                "--model MODULE:FACTORY naming a function that builds it (model_factory= in "
                "Python)"
            )
        from deconvviz.models import build_model

        try:
            model = build_model(dict(model_cfg))
        except DeconvvizError as exc:
            raise CheckpointError(
                f"{path}: cannot rebuild the model from its config ({exc}); pass --model "
                "MODULE:FACTORY to build it yourself (model_factory= in Python)"
            ) from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 400:
            detail = detail[:400] + "..."
        raise CheckpointError(
            f"the weights in {path} do not fit the model ({detail}); the model factory must build "
            "the same architecture the weights were saved from"
        ) from exc
    if device is not None:
        model.to(device)
    model.eval()
    return Run(model=model, config=config, metrics=metrics, path=path, iteration=iteration)
