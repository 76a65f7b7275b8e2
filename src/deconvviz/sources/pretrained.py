"""Weights shipped with deconvviz: a Zeiler & Fergus-style network trained on CIFAR-10.

The file ``deconvviz/assets/zfnet_cifar.pt`` is the output of
``deconvviz train zfnet-cifar ...`` (the exact command, seed, accuracy per class and wall time
are in ``docs/model-zfnet-cifar.md``), converted by :func:`export_weights` to half precision.
It holds only tensors and plain values, so it loads with ``torch.load(weights_only=True)``.

Example::

    from deconvviz.sources.pretrained import load_pretrained

    model, info = load_pretrained()       # ZFNetCifar in eval mode, float32
    info["test_accuracy"]                 # accuracy of these (half-precision) weights
"""

from __future__ import annotations

import os
import pickle
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deconvviz.base._io import save_torch
from deconvviz.base.errors import CheckpointError, InputError, unknown_name
from deconvviz.sources.models import build_model

__all__ = ["PRETRAINED", "export_weights", "load_pretrained", "pretrained_path"]

PRETRAINED = {"zfnet-cifar": "zfnet_cifar.pt"}
"""Shipped models: name -> file in ``deconvviz/assets``."""

FORMAT = "deconvviz-weights"


def pretrained_path(name: str = "zfnet-cifar") -> Path:
    """Path of a shipped weights file."""
    if name not in PRETRAINED:
        raise InputError(unknown_name("shipped model", str(name), sorted(PRETRAINED)))
    return Path(str(resources.files("deconvviz").joinpath("assets", PRETRAINED[name])))


def load_pretrained(name: str = "zfnet-cifar") -> tuple[nn.Module, dict[str, Any]]:
    """A shipped model in eval mode (float32 on the CPU) and what is known about it.

    Returns:
        ``(model, info)``; ``info`` holds ``config`` (the training config), ``metrics`` (with
        the training ``history``), ``test_accuracy`` and ``per_class_accuracy`` of the shipped
        weights, and ``classes``.

    Raises:
        CheckpointError: the file is missing or damaged (reinstall deconvviz).
    """
    path = pretrained_path(name)
    if not path.is_file():
        raise CheckpointError(
            f"the shipped weights {path} are missing from this installation; reinstall "
            "deconvviz, or retrain them (docs/model-zfnet-cifar.md gives the command)"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError("not a deconvviz weights file")
        model = build_model(blob["model"])
        model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"the shipped weights {path} are damaged ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'}); reinstall deconvviz"
        ) from exc
    info = {k: v for k, v in blob.items() if k not in ("state_dict", "format")}
    return model.eval(), info


def export_weights(
    model: nn.Module,
    out_path: str | os.PathLike[str],
    *,
    info: dict[str, Any],
    half: bool = True,
) -> Path:
    """Write ``model``'s weights (half precision by default) with ``info``, atomically.

    ``info`` must be plain values (it is loaded with ``weights_only=True``) and should hold the
    training ``config``, ``metrics`` and the accuracy of the *exported* weights.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise InputError("export_weights needs a deconvviz example model (with .config)")
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in model.state_dict().items()
    }
    blob = {"format": FORMAT, "model": dict(config), "state_dict": state, **info}
    return save_torch(out_path, blob)
