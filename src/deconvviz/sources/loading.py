"""Load a user's model and checkpoint as they have them: one way in for every command.

:func:`load_model` builds a model from a *spec* and fills it from a checkpoint in any of the
common layouts, loaded with ``torch.load(..., weights_only=True)``:

Model specs (:func:`build_from_spec`):

* ``"torchvision.models:resnet18"``, ``"pkg.module:factory"`` -- a callable in an importable
  module, called with ``model_args`` as keyword arguments;
* ``"path/to/file.py:factory"`` -- a callable in a Python file;
* ``"timm:NAME"`` -- ``timm.create_model(NAME, pretrained=False, **model_args)`` (needs the
  ``timm`` extra: ``pip install 'deconvviz[timm]'``);
* ``"resnet18"`` -- a bare name: a deconvviz model (``lenet5``, ``zfnet-cifar``, ...) or a
  torchvision classification model.

Checkpoint layouts (:func:`extract_state_dict`): a deconvviz run (directory or
``checkpoint.pt``); a bare state dict (torchvision's own ``.pth`` files are such); a dict holding
it under ``state_dict``, ``model``, ``model_state_dict``, ``net`` or ``weights``; keys prefixed by
``module.`` (DataParallel/DDP), ``model.`` (Lightning) or ``_orig_mod.`` (``torch.compile``),
stripped where the model's own names lack them (with PyTorch's
``consume_prefix_in_state_dict_if_present``). The weights go in with the model's own
``load_state_dict(strict=True)``, so what PyTorch loads loads (a checkpoint older than BatchNorm's
``num_batches_tracked``, say); the side-by-side key report only explains a real failure. A
pickled whole ``nn.Module`` is refused (unpickling runs code from the file) unless
``trust_checkpoint=True``; pickled objects *beside* plain-tensor weights (a Lightning ``.ckpt``'s
hyper-parameters) are read as empty stand-ins, weights-only, and the weights are used.

Input normalisation (:class:`Normalized`): a model trained on normalised inputs is wrapped so that
it takes *pixels* in [0, 1] and normalises them itself; the wrapper keeps the model's layer names
(``layer2.1`` still names the same module) and its ``state_dict`` keys.

Example::

    from deconvviz.sources.loading import load_model

    loaded = load_model(model="their_resnet.py:resnet20", checkpoint="resnet20.th",
                        normalize="imagenet")
    print(loaded.message)   # resnet20.th: dict with 'state_dict' ..., stripped 'module.' ...
    loaded.model            # takes [N, 3, H, W] pixels in [0, 1]
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from deconvviz.analyses._common import pick_images
from deconvviz.base.checks import batch_images, model_device_dtype
from deconvviz.base.errors import CheckpointError, DeconvvizError, InputError
from deconvviz.engine.tracer import eval_mode
from deconvviz.sources.models import MODELS, build_model

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "NORMALIZATIONS",
    "STATE_DICT_KEYS",
    "STRIP_PREFIXES",
    "LoadedModel",
    "Normalized",
    "build_from_spec",
    "checkpoint_path",
    "dataset_images",
    "extract_state_dict",
    "load_model",
    "model_outputs",
    "load_weights",
    "parse_model_args",
    "parse_normalize",
    "read_checkpoint",
    "resolve_factory",
]

#: ``"format"`` of the checkpoint dict a run saves (:func:`deconvviz.sources.checkpoint.save_run`).
FORMAT = "deconvviz-run"
#: The checkpoint file of a run directory.
CHECKPOINT_NAME = "checkpoint.pt"

ModelFactory = Callable[[], nn.Module]

#: Entries of a checkpoint dict that may hold the state dict, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
#: Key prefixes stripped when the model's own names lack them, with who adds them.
STRIP_PREFIXES = {
    "module.": "DataParallel/DDP",
    "model.": "Lightning",
    "_orig_mod.": "torch.compile",
}
#: Named input normalisations: per-channel ``(mean, std)``.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
}


# ------------------------------------------------------------------------------ normalisation


def parse_normalize(
    value: str | Sequence[float] | None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` from ``"imagenet"``, ``"cifar10"``, ``"mnist"``, ``"none"`` or
    ``"MEAN,STD[,MEAN,STD...]"`` (one pair per channel, or one pair for all channels).

    Example:
        >>> parse_normalize("0.5,0.25")
        ((0.5,), (0.25,))
        >>> parse_normalize("cifar10")[0]
        (0.4914, 0.4822, 0.4465)
    """
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower()
        if key in ("", "none"):
            return None
        if key in NORMALIZATIONS:
            return NORMALIZATIONS[key]
        try:
            numbers = [float(v) for v in key.split(",") if v.strip()]
        except ValueError:
            raise InputError(
                f"--normalize {value!r} is neither a name ({', '.join(NORMALIZATIONS)}, none) nor "
                "numbers; give e.g. --normalize imagenet or --normalize 0.5,0.25"
            ) from None
    else:
        numbers = [float(v) for v in value]
    if not numbers or len(numbers) % 2:
        raise InputError(
            f"--normalize needs MEAN,STD pairs (one per channel), got {len(numbers)} numbers in "
            f"{value!r}; e.g. --normalize 0.5,0.25 or --normalize 0.49,0.25,0.48,0.24,0.45,0.26"
        )
    mean, std = tuple(numbers[0::2]), tuple(numbers[1::2])
    if any(s <= 0 for s in std):
        raise InputError(f"--normalize standard deviations must be positive, got {std}")
    return mean, std


class Normalized(nn.Module):
    """``model`` fed ``(x - mean) / std``: takes pixels in [0, 1], keeps the model's names.

    The wrapper shares the model's submodules, parameters and buffers (not copies), so
    ``named_modules()`` and ``state_dict()`` spell every name exactly as the model does and a
    layer such as ``"layer2.1"`` resolves to the same module. The normalisation is an affine
    map, so a deconvnet projection through it is the projection in the model's space divided by
    ``std`` per channel: exact, and shown in pixel space.

    Example:
        >>> net = Normalized(nn.Sequential(nn.Conv2d(3, 4, 3)), (0.5, 0.5, 0.5), (0.25,) * 3)
        >>> [n for n, _ in net.named_modules()]
        ['', '0']
    """

    inner: nn.Module
    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        object.__setattr__(self, "inner", model)
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self._non_persistent_buffers_set = model._non_persistent_buffers_set
        object.__setattr__(self, "mean", torch.tensor(list(mean), dtype=torch.float64))
        object.__setattr__(self, "std", torch.tensor(list(std), dtype=torch.float64))
        if hasattr(model, "config"):
            object.__setattr__(self, "config", model.config)
        self.training = model.training

    @property
    def training(self) -> bool:
        inner = self.__dict__.get("inner")
        return bool(inner.training) if inner is not None else True

    @training.setter
    def training(self, mode: bool) -> None:
        inner = self.__dict__.get("inner")
        if inner is not None:
            inner.training = mode

    def forward(self, x: Tensor) -> Any:
        c = x.shape[1] if x.dim() >= 2 else 0
        # device=/dtype= (not .to(x)), so the receptive-field tracker sees constants
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = self.std.to(device=x.device, dtype=x.dtype)
        if mean.numel() not in (1, c):
            raise InputError(
                f"--normalize gives {mean.numel()} channel(s) but the input has {c}; give one "
                "MEAN,STD pair per channel (or one for all)"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.inner((x - mean.view(shape)) / std.view(shape))

    def extra_repr(self) -> str:
        return f"mean={tuple(self.mean.tolist())}, std={tuple(self.std.tolist())}, " + (
            f"model={type(self.inner).__name__}"
        )


# ------------------------------------------------------------------------------ model specs


def parse_model_args(pairs: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["num_classes=10", "pretrained=False"]`` -> ``{"num_classes": 10, "pretrained": False}``.

    Values are read as Python literals (numbers, booleans, ``None``, tuples, quoted strings);
    anything else stays a string.
    """
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        return dict(pairs)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = str(pair).partition("=")
        if not eq or not key.strip().isidentifier():
            raise InputError(
                f"--model-arg {pair!r} is not KEY=VALUE; e.g. --model-arg num_classes=10"
            )
        text = raw.strip()
        low = text.lower()
        if low in ("true", "false", "none"):
            text = {"true": "True", "false": "False", "none": "None"}[low]
        try:
            out[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


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
    _check_factory(factory, spec)
    return factory


def _check_factory(factory: Any, spec: str) -> None:
    """Refuse, before calling it, a named callable that cannot be a model factory: a class
    that is not an ``nn.Module``, a built-in or standard-library function (``os:system``), a
    function annotated to return something else. Whatever is called, its result must be an
    ``nn.Module`` (checked right after the call, before it is used)."""
    import inspect

    fix = "name a function or an nn.Module class that builds the model"
    if isinstance(factory, type):
        if not issubclass(factory, nn.Module):
            raise CheckpointError(
                f"model factory {spec!r} is the class {factory.__name__}, not an nn.Module; {fix}"
            )
        return
    home = str(getattr(factory, "__module__", None) or "")
    name = f"{home}.{getattr(factory, '__name__', type(factory).__name__)}".lstrip(".")
    if inspect.isbuiltin(factory) or home.split(".")[0] in sys.stdlib_module_names:
        raise CheckpointError(
            f"model factory {spec!r} is {name}, a built-in or standard-library function, not a "
            f"model factory; it was not called; {fix}"
        )
    plain = inspect.isfunction(factory) or inspect.ismethod(factory)
    wrapped = hasattr(factory, "__wrapped__") or callable(getattr(factory, "func", None))
    if not (plain or wrapped):
        raise CheckpointError(
            f"model factory {spec!r} is a {type(factory).__name__} object, not a function or "
            f"an nn.Module class; it was not called; {fix}"
        )
    try:
        ret = inspect.signature(factory, eval_str=True).return_annotation
    except Exception:  # an annotation that does not evaluate: no claim to check
        return
    empty = inspect.Signature.empty
    if isinstance(ret, type) and ret is not empty and not issubclass(ret, nn.Module):
        raise CheckpointError(
            f"model factory {spec!r} is declared to return {ret.__name__}, not an "
            f"nn.Module; it was not called; {fix}"
        )


def _call(factory: Callable[..., Any], spec: str, args: Mapping[str, Any]) -> nn.Module:
    try:
        model = factory(**args)
    except DeconvvizError:
        raise
    except TypeError as exc:
        raise CheckpointError(
            f"model {spec!r} does not take these arguments ({exc}); check the --model-arg "
            "names against its signature"
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"building model {spec!r} failed: {type(exc).__name__}: {exc}; check --model and "
            "--model-arg"
        ) from exc
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"model {spec!r} returned a {type(model).__name__}, not an nn.Module; name a "
            "function or class that builds the model"
        )
    return model


def build_from_spec(spec: str | Callable[..., nn.Module], model_args: Any = None) -> nn.Module:
    """Build an (untrained) model from a spec; see the module docstring for the forms.

    Raises:
        CheckpointError: the spec cannot be imported or found, or building it failed (the
            message names the spec and the fix).
    """
    args = parse_model_args(model_args)
    if callable(spec):
        return _call(spec, getattr(spec, "__name__", repr(spec)), args)
    if not isinstance(spec, str) or not spec.strip():
        raise CheckpointError(f"--model must name a model, got {spec!r}")
    spec = spec.strip()
    if spec.startswith("timm:"):
        try:
            timm = importlib.import_module("timm")
        except ImportError:
            raise CheckpointError(
                f"--model {spec} needs timm, which is not installed; install the extra with "
                "pip install 'deconvviz[timm]'"
            ) from None
        name = spec[len("timm:") :]
        return _call(lambda **kw: timm.create_model(name, pretrained=False, **kw), spec, args)
    if ":" in spec:
        return _call(resolve_factory(spec), spec, args)

    if spec in MODELS:
        return build_model({"model": spec, **args})
    import torchvision.models as tvm

    try:
        builder = tvm.get_model_builder(spec)
    except ValueError:
        from deconvviz.base.errors import unknown_name

        names = sorted(set(MODELS) | set(tvm.list_models(module=tvm)))
        raise CheckpointError(
            unknown_name("model", spec, names)
            + "; or give 'package.module:factory', 'file.py:factory' or 'timm:NAME'"
        ) from None
    return _call(builder, spec, args)


# ------------------------------------------------------------------------------ checkpoints


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
            raise _unreadable(path) from exc
        raise CheckpointError(
            f"{path} holds objects that cannot be loaded safely with weights_only=True (a "
            f"pickled {found.group(1)}); save the weights alone with "
            "torch.save(model.state_dict(), path) and load them with a model factory"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise _unreadable(path) from exc


def _unreadable(path: Path) -> CheckpointError:
    """One plain line for a file ``torch.load`` cannot read: truncated, not a PyTorch
    checkpoint at all, or otherwise unreadable, with the fixes that fit. torch's own words
    stay on the exception's ``__cause__`` (``DECONVVIZ_TRACEBACK=1`` shows them on the CLI)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
        is_zip = zipfile.is_zipfile(path)
    except OSError:
        size, head, is_zip = -1, b"", False
    if path.name == CHECKPOINT_NAME:  # a run's own file: there is nothing to download
        again = "restore it from an intact copy of the run or train again"
    else:
        again = "download or save it again"
    if size == 0:
        what = "is empty (0 bytes, as after an interrupted download or save)"
    elif head == b"PK\x03\x04" and not is_zip:
        what = "is truncated (its zip archive ends early, as after an interrupted download or save)"
    elif head[:2] == b"\x80\x02" or is_zip:  # torch.save's zip or legacy pickle format
        what = "is a damaged PyTorch checkpoint (truncated or corrupt)"
    else:
        return CheckpointError(
            f"{path} is not a PyTorch checkpoint (not a file torch.save writes); pass the "
            "weights file (.pt / .pth) instead"
        )
    return CheckpointError(f"{path} {what}; {again}, or pass the right file")


def _device(map_location: Any) -> torch.device | None:
    """The device ``map_location`` names, checked to exist here (not a corrupt-file error)."""
    if isinstance(map_location, (str, torch.device)):
        from deconvviz.base.devices import resolve_device

        return resolve_device(map_location, auto=False)
    return None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _read(path: Path, trust: bool, map_location: Any, spec: Any = None) -> tuple[Any, bool]:
    """The loaded object, and whether it needed the unsafe (trusted) load.

    For a trusted pickle whose classes live in a model file (``--model file.py:factory``), the
    file's folder is on ``sys.path`` while unpickling, so ``import file`` works as it did when
    the model was saved.
    """
    try:
        return read_checkpoint(path, map_location=map_location), False
    except CheckpointError as exc:
        cause = exc.__cause__
        if not isinstance(cause, pickle.UnpicklingError) or "Unsupported global" not in str(cause):
            raise
        if not trust:
            weights = _weights_beside_objects(path, map_location)
            if weights is not None:
                return weights, False
            raise CheckpointError(
                f"{path} holds pickled Python objects (a whole model, not only weights), which "
                "torch.load(weights_only=True) refuses: unpickling it would run code from the "
                "file. Pass --trust-checkpoint (trust_checkpoint=True) if you trust its source, "
                "or save torch.save(model.state_dict(), path) and load that"
            ) from exc
    try:
        folder = None
        if isinstance(spec, str) and ":" in spec and spec.rpartition(":")[0].endswith(".py"):
            folder = str(Path(spec.rpartition(":")[0]).expanduser().resolve().parent)
            sys.path.insert(0, folder)
        try:
            return torch.load(path, map_location=map_location, weights_only=False), True
        finally:
            if folder is not None and folder in sys.path:
                sys.path.remove(folder)
    except Exception as exc:
        raise CheckpointError(
            f"{path} could not be unpickled even with --trust-checkpoint ({type(exc).__name__}: "
            f"{exc}); import the module that defines its classes first, or save a state dict"
        ) from exc


class _StandIn:
    """What a pickled Python object beside the weights (a Lightning checkpoint's
    ``hyper_parameters``: an ``argparse.Namespace``, a config class) is read as when the
    weights are loaded without ``--trust-checkpoint``: an empty object. Nothing from the file
    runs: the object's class is never imported, its constructor and ``__setstate__`` are ours
    and do nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<unread {type(self).__qualname__}>"


def _weights_beside_objects(path: Path, map_location: Any) -> Any:
    """A checkpoint whose *weights* are plain tensors but which also holds pickled Python
    objects (a Lightning ``.ckpt`` with pickled hyper-parameters), read with
    ``weights_only=True`` and every such object replaced by an empty :class:`_StandIn`; or
    ``None`` where the weights themselves are not plain tensors (a whole pickled model)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        stand_ins: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
            (type(n.rpartition(".")[2] or "Object", (_StandIn,), {"__module__": __name__}), n)
            for n in names
        ]
        with torch.serialization.safe_globals(stand_ins):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        return None
    if not isinstance(obj, Mapping):
        return None
    try:
        state, _ = extract_state_dict(obj)
    except CheckpointError:
        return None
    if any(isinstance(v, _StandIn) for v in state.values()):  # pragma: no cover - not tensors
        return None
    return obj


def _with_metadata(state: Mapping[str, Tensor], source: Any) -> dict[str, Tensor]:
    """A copy of ``state`` that keeps PyTorch's ``_metadata`` (the per-module versions that
    ``load_state_dict`` reads, e.g. to fill BatchNorm's ``num_batches_tracked`` in checkpoints
    saved before it existed)."""
    out: dict[str, Tensor] = OrderedDict(state)
    meta = getattr(source, "_metadata", None)
    if meta is not None:
        out._metadata = OrderedDict(meta)  # type: ignore[attr-defined]
    return out


def extract_state_dict(obj: Any) -> tuple[dict[str, Tensor], str]:
    """The state dict inside a loaded checkpoint, and a few words naming the layout.

    Raises:
        CheckpointError: no state dict can be found (the message lists the dict's keys).
    """
    if _is_state_dict(obj):
        return _with_metadata(obj, obj), "a bare state dict"
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict()), f"a dict holding a whole model under {key!r}"
            if _is_state_dict(inner) and isinstance(inner, Mapping):
                others = [str(k) for k in obj if k != key][:4]
                also = f" (also: {', '.join(others)})" if others else ""
                return _with_metadata(inner, inner), f"a dict with the weights under {key!r}{also}"
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"found no weights in the checkpoint dict (keys: {keys}); it should hold a state "
            f"dict itself or under one of {', '.join(STATE_DICT_KEYS)}: save "
            "torch.save(model.state_dict(), path)"
        )
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), "a whole pickled model"
    raise CheckpointError(
        f"the checkpoint holds a {type(obj).__name__}, not a model checkpoint (no weights); "
        "save it with torch.save(model.state_dict(), path)"
    )


def strip_prefixes(
    state: Mapping[str, Tensor], model_keys: Sequence[str]
) -> tuple[dict[str, Tensor], list[str]]:
    """Strip ``module.``/``model.``/``_orig_mod.`` prefixes the model's own keys lack.

    A prefix is stripped only when every key carries it and not every model key does; repeated
    (``_orig_mod.module.``) and in any order. Returns the state and the prefixes stripped.
    """
    out = _with_metadata(state, state)
    stripped: list[str] = []
    own = list(model_keys)
    changed = True
    while changed and out:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in out) and not (
                own and all(k.startswith(prefix) for k in own)
            ):
                # PyTorch's own stripping: the keys and the _metadata entries alike
                consume_prefix_in_state_dict_if_present(out, prefix)
                stripped.append(prefix)
                changed = True
    return out, stripped


def _few(keys: Sequence[str], n: int = 4) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _fit(model: nn.Module, state: Mapping[str, Tensor], path: Path, what: str) -> None:
    """Load ``state`` into ``model``, or say side by side what does not fit (``what`` names
    the model: ``"--model SPEC"``, or ``"the model"`` where it was rebuilt from a config)."""
    # PyTorch decides: load_state_dict(strict=True) accepts what PyTorch accepts (a
    # checkpoint saved before BatchNorm had num_batches_tracked, say: it fills them). The key
    # comparison below only explains a real failure. A failed load may have copied some
    # tensors already, so the model's own are put back first.
    own = model.state_dict()
    backup = {k: v.detach().clone() for k, v in own.items()}
    try:
        model.load_state_dict(state, strict=True)
        return
    except RuntimeError as exc:
        torch_says = str(exc)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if k in backup:
                    v.copy_(backup[k])
    missing = [k for k in own if k not in state and f'"{k}"' in torch_says]
    unexpected = [k for k in state if k not in own and f'"{k}"' in torch_says]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not missing and not unexpected and not shapes:
        first = torch_says.strip().splitlines()[-1].strip() if torch_says.strip() else ""
        raise CheckpointError(
            f"the weights in {path} do not fit the model ({first}); use the model definition "
            "the checkpoint was saved from"
        )
    hints = []
    if shapes and not missing and not unexpected:
        hints.append(
            "the layer sizes differ: build the model with the same sizes (e.g. --model-arg "
            "num_classes=N)"
        )
    if missing and unexpected:
        hints.append(
            f"{what} names layers differently from the checkpoint: use the model "
            "definition the checkpoint was saved from"
        )
    elif missing:
        hints.append("the checkpoint lacks layers the model has: is it for a smaller model?")
    elif unexpected:
        hints.append("the checkpoint has layers the model lacks: is it for a larger model?")
    parts = [f"missing: {_few(missing)}", f"unexpected: {_few(unexpected)}"]
    if shapes:
        parts.append(f"shape (checkpoint vs model): {_few(shapes, 2)}")
    fit = "fit the model" if what == "the model" else f"fit the model of {what}"
    raise CheckpointError(
        f"the weights in {path} do not {fit} ({'; '.join(parts)}); " + "; ".join(hints)
    )


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to analyse, with where it came from.

    Attributes:
        model: the model in eval mode (wrapped in :class:`Normalized` when inputs are
            normalised); it takes pixels in [0, 1].
        config: the run's config (deconvviz runs) plus ``image_size``/``normalize`` when set.
        metrics: the run's metrics (``{}`` for other checkpoints).
        path: the checkpoint file, or ``None`` (random weights).
        iteration: training iterations (deconvviz runs).
        message: one line: the checkpoint layout found and the prefixes stripped.
    """

    model: nn.Module
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    iteration: int = 0
    message: str = ""


def load_model(
    *,
    model: str | Callable[..., nn.Module] | nn.Module | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    model_args: Sequence[str] | Mapping[str, Any] | None = None,
    trust_checkpoint: bool = False,
    normalize: str | Sequence[float] | None = None,
    image_size: int | None = None,
    map_location: Any = "cpu",
) -> LoadedModel:
    """Build (or rebuild) a model and load its weights; see the module docstring.

    Args:
        model: a model spec (``"torchvision.models:resnet18"``, ``"file.py:factory"``,
            ``"timm:NAME"``, ``"resnet18"``), a callable or a module; ``None`` for a deconvviz
            run, which rebuilds its own model.
        checkpoint: a run directory, or a weights file in any supported layout; ``None`` keeps
            the model's own (random) weights.
        model_args: keyword arguments for the model's constructor (``["num_classes=10"]`` or a
            dict).
        trust_checkpoint: allow unpickling a checkpoint that holds Python objects (runs code).
        normalize: the input normalisation the model was trained with (see
            :func:`parse_normalize`); default: the run's stored one, else none.
        image_size: the input side the model expects (images are resized to it).
        map_location: where the model goes (``"cpu"``, ``"cuda"``, ...).

    Returns:
        A :class:`LoadedModel`; its ``message`` says which layout was found.

    Raises:
        CheckpointError: the model cannot be built, the checkpoint is unreadable or refused, or
            the weights do not fit (first missing and unexpected keys listed side by side).
    """
    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
        raise InputError(f"--image-size must be a positive integer, got {image_size!r}")
    if checkpoint is None:
        loaded = _random_weights(model, model_args)
    else:
        loaded = load_weights(
            checkpoint,
            model,
            model_args=model_args,
            trust_checkpoint=trust_checkpoint,
            map_location=map_location,
            check_device=False,
        )
    return _fed(loaded, normalize, image_size, map_location)


def load_weights(
    checkpoint: str | os.PathLike[str],
    model: str | Callable[..., nn.Module] | nn.Module | None = None,
    *,
    model_args: Sequence[str] | Mapping[str, Any] | None = None,
    trust_checkpoint: bool = False,
    map_location: Any = "cpu",
    check_device: bool = True,
) -> LoadedModel:
    """The model of a checkpoint in any supported layout, as stored (no input normalisation):
    what :func:`load_model` and :func:`deconvviz.sources.checkpoint.load_run` both load through.

    Args:
        checkpoint: a run directory or a weights file.
        model: builds the model (see :func:`load_model`); ``None`` where the checkpoint says
            how (a deconvviz run, deconvviz exported weights, a trusted whole model).
        model_args: keyword arguments for the model's constructor.
        trust_checkpoint: allow unpickling Python objects (runs code from the file).
        map_location: where the model goes.
        check_device: refuse a device this machine lacks before reading (an
            :class:`~deconvviz.base.errors.InputError`, not a corrupt-checkpoint error).

    Raises:
        CheckpointError: unreadable, refused or weightless checkpoint; no model to put the
            weights in; weights that do not fit.
    """
    path = checkpoint_path(checkpoint)
    device = _device(map_location) if check_device else None
    obj, trusted = _read(path, trust_checkpoint, map_location, model)
    loaded = _own_model(obj, path) if model is None else None
    if loaded is None:
        loaded = _user_model(obj, path, model, model_args, trusted)
    if device is not None:
        loaded.model.to(device)
    loaded.model.eval()
    return loaded


def _random_weights(
    model: str | Callable[..., nn.Module] | nn.Module | None, model_args: Any
) -> LoadedModel:
    """``model`` with its own (random) weights: no checkpoint given."""
    if model is None:
        raise CheckpointError(
            "nothing to load: give a checkpoint (-c run-dir or weights file) or a model "
            "(--model torchvision.models:resnet18)"
        )
    net = model if isinstance(model, nn.Module) else build_from_spec(model, model_args)
    return LoadedModel(
        net, message=f"--model {_spec_name(model)}: random weights (no checkpoint given)"
    )


def _spec_name(model: Any) -> str:
    return model if isinstance(model, str) else getattr(model, "__name__", type(model).__name__)


def _run_meta(obj: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(config, metrics, iteration)`` stored beside the weights (empty for other files)."""
    if not isinstance(obj, Mapping):
        return {}, {}, 0
    cfg, met = obj.get("config"), obj.get("metrics")
    config = dict(cfg) if isinstance(cfg, Mapping) else {}
    metrics = dict(met) if isinstance(met, Mapping) and obj.get("format") == FORMAT else {}
    return config, metrics, int(obj.get("iteration") or 0) if obj.get("format") == FORMAT else 0


def rebuild_model(config: Mapping[str, Any], path: Path) -> nn.Module:
    """The (untrained) deconvviz model ``config["model"]`` describes.

    Raises:
        CheckpointError: no model config, or one :func:`deconvviz.sources.models.build_model`
        refuses.
    """
    model_cfg = config.get("model")
    if not isinstance(model_cfg, Mapping):
        raise CheckpointError(
            f"{path} has weights but no model config to rebuild the model from; pass "
            "--model MODULE:FACTORY naming a function that builds it (model_factory= in "
            "Python)"
        )

    try:
        return build_model(dict(model_cfg))
    except DeconvvizError as exc:
        raise CheckpointError(
            f"{path}: cannot rebuild the model from its config ({exc}); pass --model "
            "MODULE:FACTORY to build it yourself (model_factory= in Python)"
        ) from exc


def _own_model(obj: Any, path: Path) -> LoadedModel | None:
    """A checkpoint that says which model it holds: a deconvviz run, deconvviz exported weights
    (the shipped zfnet-cifar: the model's config beside the weights), a config with a model
    entry beside the weights, or a trusted whole model; ``None`` for weights alone."""
    if isinstance(obj, nn.Module):
        message = f"{path.name}: a whole pickled {type(obj).__name__} (trusted)"
        return LoadedModel(obj, path=path, message=message)
    if not isinstance(obj, Mapping):
        return None
    config, metrics, iteration = _run_meta(obj)
    exported = (
        obj.get("format") != FORMAT
        and isinstance(obj.get("model"), Mapping)
        and _is_state_dict(obj.get("state_dict"))
    )
    if exported:
        config.setdefault("model", dict(obj["model"]))
    if not isinstance(config.get("model"), Mapping):
        return None
    state, _ = extract_state_dict({"state_dict": obj["state_dict"]} if exported else obj)
    net = rebuild_model(config, path)
    _fit(net, state, path, "the model")
    name = config["model"].get("model", "?")
    if obj.get("format") == FORMAT:
        message = f"{path.name}: a deconvviz run ({name})"
    elif exported:
        metrics = dict(obj.get("metrics") or {})
        message = f"{path.name}: deconvviz exported weights ({name})"
    else:
        message = f"{path.name}: weights with the config of a deconvviz model ({name})"
    return LoadedModel(net, config, metrics, path, iteration, message)


def _user_model(obj: Any, path: Path, model: Any, model_args: Any, trusted: bool) -> LoadedModel:
    """Weights in any layout, put into the model ``model`` builds (prefixes stripped)."""
    config, metrics, iteration = _run_meta(obj)
    if not (isinstance(obj, Mapping) and obj.get("format") == FORMAT):
        config = {}  # a user's own checkpoint: its extra entries are not a deconvviz config
    state, layout = extract_state_dict(obj)
    if model is None:
        raise CheckpointError(
            f"{path} holds weights ({layout}) but no model to put them in; name the model with "
            "--model MODULE:FACTORY (e.g. --model torchvision.models:resnet18 or --model "
            "my_model.py:build; model=/model_factory= in Python)"
        )
    net = model if isinstance(model, nn.Module) else build_from_spec(model, model_args)
    state, stripped = strip_prefixes(state, list(net.state_dict()))
    _fit(net, state, path, f"--model {_spec_name(model)}")
    what = (
        ", stripped " + " then ".join(f"{p!r} ({STRIP_PREFIXES[p]})" for p in stripped)
        if stripped
        else ", no prefix stripped"
    )
    trust = " (trusted unpickling)" if trusted else ""
    message = f"{path.name}: {layout}{trust}, {len(state)} tensors{what}"
    return LoadedModel(net, config, metrics, path, iteration, message)


def _fed(
    loaded: LoadedModel, normalize: Any, image_size: int | None, map_location: Any
) -> LoadedModel:
    """``loaded`` fed as the model was trained: normalised inputs, the input side, on the
    device, in eval mode."""
    config, net, message = dict(loaded.config), loaded.model, loaded.message
    norm = parse_normalize(normalize if normalize is not None else config.get("normalize"))
    if image_size is not None:
        config["image_size"] = int(image_size)
    if norm is not None:
        config["normalize"] = [v for pair in zip(*norm, strict=True) for v in pair]
        net = Normalized(net, *norm)
        note = f"inputs normalised with mean {norm[0]}, std {norm[1]}"
        message = f"{message}; {note}" if message else note
    device = torch.device(map_location) if isinstance(map_location, str) else None
    if device is not None:
        net.to(device)
    net.eval()
    return LoadedModel(net, config, loaded.metrics, loaded.path, loaded.iteration, message)


# ------------------------------------------------------------------------------ images


def dataset_images(
    dataset: Any, indices: Sequence[int] = (), n: int = 8, split: str = "test"
) -> tuple[Tensor, Tensor, list[int]]:
    """The images a command analyses: ``dataset[i]`` for ``indices``, else ``n`` images spread
    evenly over the dataset (:func:`deconvviz.analyses.pick_images`).

    Returns:
        ``(images [N, C, H, W], labels [N], dataset indices)``.

    Raises:
        InputError: an index past the end (the message names the ``split``), or a dataset
            without labels.
    """
    if indices:
        bad = [i for i in indices if i >= len(dataset)]
        if bad:
            raise InputError(
                f"--index {bad[0]} is out of range: the {split} split has {len(dataset)} images"
            )
        items = [dataset[i] for i in indices]
        x = torch.stack([it[0] for it in items])
        return x, torch.tensor([int(it[1]) for it in items]), list(indices)

    x, labels, idx = pick_images(dataset, n)
    if labels is None:  # pragma: no cover - deconvviz datasets always carry labels
        raise InputError("the dataset has no labels")
    return x, labels, idx


def model_outputs(model: nn.Module, dataset: Sequence[Any]) -> int | None:
    """How many classes ``model`` scores (its output's last size for one image), or None when
    its output is not ``[1, classes]`` (whoever runs the model next reports its errors)."""
    device, dtype = model_device_dtype(model)
    try:
        x = batch_images(dataset[0]).unsqueeze(0).to(device, dtype)
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except Exception:  # noqa: BLE001 - the callers run the model again and say what went wrong
        return None
    return int(out.shape[-1]) if isinstance(out, Tensor) and out.dim() == 2 else None
