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
stripped where the model's own names lack them. A pickled whole ``nn.Module`` is refused (unpickling
runs code from the file) unless ``trust_checkpoint=True``.

Input normalisation (:class:`Normalized`): a model trained on normalised inputs is wrapped so that
it takes *pixels* in [0, 1] and normalises them itself; the wrapper keeps the model's layer names
(``layer2.1`` still names the same module) and its ``state_dict`` keys.

Example::

    from deconvviz.loading import load_model

    loaded = load_model(model="their_resnet.py:resnet20", checkpoint="resnet20.th",
                        normalize="imagenet")
    print(loaded.message)   # resnet20.th: dict with 'state_dict' ..., stripped 'module.' ...
    loaded.model            # takes [N, 3, H, W] pixels in [0, 1]
"""

from __future__ import annotations

import ast
import importlib
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.errors import CheckpointError, DeconvvizError, InputError

__all__ = [
    "NORMALIZATIONS",
    "STATE_DICT_KEYS",
    "STRIP_PREFIXES",
    "LoadedModel",
    "Normalized",
    "build_from_spec",
    "extract_state_dict",
    "load_model",
    "parse_model_args",
    "parse_normalize",
]

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
        from deconvviz.checkpoint import resolve_factory

        return _call(resolve_factory(spec), spec, args)
    from deconvviz.models import MODELS, build_model

    if spec in MODELS:
        return build_model({"model": spec, **args})
    import torchvision.models as tvm

    try:
        builder = tvm.get_model_builder(spec)
    except ValueError:
        from deconvviz.errors import unknown_name

        names = sorted(set(MODELS) | set(tvm.list_models(module=tvm)))
        raise CheckpointError(
            unknown_name("model", spec, names)
            + "; or give 'package.module:factory', 'file.py:factory' or 'timm:NAME'"
        ) from None
    return _call(builder, spec, args)


# ------------------------------------------------------------------------------ checkpoints


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
    from deconvviz.checkpoint import read_checkpoint

    try:
        return read_checkpoint(path, map_location=map_location), False
    except CheckpointError as exc:
        cause = exc.__cause__
        if not isinstance(cause, pickle.UnpicklingError) or "Unsupported global" not in str(cause):
            raise
        if not trust:
            raise CheckpointError(
                f"{path} holds pickled Python objects (a whole model, not only weights); "
                "unpickling it would run code from the file, so it is refused: pass "
                "--trust-checkpoint (trust_checkpoint=True) if you trust its source, or save "
                "torch.save(model.state_dict(), path) and load that"
            ) from exc
    try:
        import sys

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


def extract_state_dict(obj: Any) -> tuple[dict[str, Tensor], str]:
    """The state dict inside a loaded checkpoint, and a few words naming the layout.

    Raises:
        CheckpointError: no state dict can be found (the message lists the dict's keys).
    """
    if _is_state_dict(obj):
        return dict(obj), "a bare state dict"
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict()), f"a dict holding a whole model under {key!r}"
            if _is_state_dict(inner) and isinstance(inner, Mapping):
                others = [str(k) for k in obj if k != key][:4]
                also = f" (also: {', '.join(others)})" if others else ""
                return dict(inner), f"a dict with the weights under {key!r}{also}"
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"found no weights in the checkpoint dict (keys: {keys}); it should hold a state "
            f"dict itself or under one of {', '.join(STATE_DICT_KEYS)}: save "
            "torch.save(model.state_dict(), path)"
        )
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), "a whole pickled model"
    raise CheckpointError(
        f"the checkpoint holds a {type(obj).__name__}, not weights; save it with "
        "torch.save(model.state_dict(), path)"
    )


def strip_prefixes(
    state: Mapping[str, Tensor], model_keys: Sequence[str]
) -> tuple[dict[str, Tensor], list[str]]:
    """Strip ``module.``/``model.``/``_orig_mod.`` prefixes the model's own keys lack.

    A prefix is stripped only when every key carries it and not every model key does; repeated
    (``_orig_mod.module.``) and in any order. Returns the state and the prefixes stripped.
    """
    out = dict(state)
    stripped: list[str] = []
    own = list(model_keys)
    changed = True
    while changed and out:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in out) and not (
                own and all(k.startswith(prefix) for k in own)
            ):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped.append(prefix)
                changed = True
    return out, stripped


def _few(keys: Sequence[str], n: int = 4) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _fit(model: nn.Module, state: Mapping[str, Tensor], path: Path, spec: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not missing and not unexpected and not shapes:
        model.load_state_dict(state)
        return
    hints = []
    if shapes and not missing and not unexpected:
        hints.append(
            "the layer sizes differ: build the model with the same sizes (e.g. --model-arg "
            "num_classes=N)"
        )
    if missing and unexpected:
        hints.append(
            f"--model {spec} names layers differently from the checkpoint: use the model "
            "definition the checkpoint was saved from"
        )
    elif missing:
        hints.append("the checkpoint lacks layers the model has: is it for a smaller model?")
    elif unexpected:
        hints.append("the checkpoint has layers the model lacks: is it for a larger model?")
    parts = [f"missing: {_few(missing)}", f"unexpected: {_few(unexpected)}"]
    if shapes:
        parts.append(f"shape (checkpoint vs model): {_few(shapes, 2)}")
    raise CheckpointError(
        f"the weights in {path} do not fit --model {spec} ({'; '.join(parts)}); " + "; ".join(hints)
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
    from deconvviz.checkpoint import FORMAT, checkpoint_path, load_run

    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
        raise InputError(f"--image-size must be a positive integer, got {image_size!r}")
    config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    iteration = 0
    path: Path | None = None
    net: nn.Module | None = model if isinstance(model, nn.Module) else None
    spec = model if isinstance(model, str) else getattr(model, "__name__", type(model).__name__)
    if checkpoint is None:
        if model is None:
            raise CheckpointError(
                "nothing to load: give a checkpoint (-c run-dir or weights file) or a model "
                "(--model torchvision.models:resnet18)"
            )
        if net is None:
            net = build_from_spec(model, model_args)
        message = f"--model {spec}: random weights (no checkpoint given)"
    else:
        path = checkpoint_path(checkpoint)
        obj, trusted = _read(path, trust_checkpoint, map_location, model)
        if isinstance(obj, Mapping) and obj.get("format") == FORMAT and model is None:
            run = load_run(path, map_location=map_location)
            net, config, metrics, iteration = (
                run.model,
                dict(run.config),
                run.metrics,
                (run.iteration),
            )
            message = f"{path.name}: a deconvviz run ({config.get('model', {}).get('model', '?')})"
        elif (
            model is None
            and isinstance(obj, Mapping)
            and isinstance(obj.get("model"), Mapping)
            and _is_state_dict(obj.get("state_dict"))
        ):
            from deconvviz.models import build_model

            # deconvviz's exported weights (the shipped zfnet-cifar): the model's config beside
            # the weights
            net = build_model(dict(obj["model"]))
            net.load_state_dict(obj["state_dict"])
            cfg = obj.get("config")
            config = dict(cfg) if isinstance(cfg, Mapping) else {"model": dict(obj["model"])}
            config.setdefault("model", dict(obj["model"]))
            metrics = dict(obj.get("metrics") or {})
            message = f"{path.name}: deconvviz exported weights ({obj['model'].get('model', '?')})"
        elif isinstance(obj, nn.Module) and model is None:
            net = obj
            message = f"{path.name}: a whole pickled {type(obj).__name__} (trusted)"
        else:
            if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
                config = dict(obj.get("config") or {})
                metrics = dict(obj.get("metrics") or {})
                iteration = int(obj.get("iteration") or 0)
            state, layout = extract_state_dict(obj)
            if model is None:
                raise CheckpointError(
                    f"{path} holds weights ({layout}) but no model to put them in; name the "
                    "model with --model (e.g. --model torchvision.models:resnet18 or --model "
                    "my_model.py:build)"
                )
            if net is None:
                net = build_from_spec(model, model_args)
            state, stripped = strip_prefixes(state, list(net.state_dict()))
            _fit(net, state, path, str(spec))
            what = (
                ", stripped " + " then ".join(f"{p!r} ({STRIP_PREFIXES[p]})" for p in stripped)
                if stripped
                else ", no prefix stripped"
            )
            trust = " (trusted unpickling)" if trusted else ""
            message = f"{path.name}: {layout}{trust}, {len(state)} tensors{what}"
    assert net is not None
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
    return LoadedModel(net, config, metrics, path, iteration, message)
