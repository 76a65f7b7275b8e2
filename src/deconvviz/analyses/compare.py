"""Our deconvnet beside captum's attribution methods, for the same images and class.

:func:`compare_methods` computes, for each image and its target class:

==========================  ==================================================================
method                      what it is
==========================  ==================================================================
``deconvnet``               deconvviz's deconvnet projection of the class logit (Zeiler &
                            Fergus), seeded with 1 like the others, so it is in their units
``saliency``                captum ``Saliency`` (the signed gradient, ``abs=False``)
``guided_backprop``         captum ``GuidedBackprop``
``integrated_gradients``    captum ``IntegratedGradients`` from a constant baseline
``occlusion``               captum ``Occlusion``: the drop of the class logit when a square
                            patch is covered, averaged over the windows covering each pixel
==========================  ==================================================================

The result holds tensors only; :func:`deconvviz.render.reconstruct.comparison_figure` draws it.
Captum's gradient methods act on ``nn.ReLU`` modules only: on models that call ``F.relu``
they silently give the plain gradient, while deconvviz's engine sees every ReLU call.

Example::

    from deconvviz.analyses.compare import compare_methods
    from deconvviz.render.reconstruct import comparison_figure

    comp = compare_methods(model, images, target=labels)
    comp["deconvnet"].shape          # [N, C, H, W]
    fig = comparison_figure(comp, class_names=test_set.classes)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from deconvviz.base.checks import check_model, check_positive_int, model_device_dtype
from deconvviz.base.errors import InputError, unknown_name
from deconvviz.engine.deconvnet import attach
from deconvviz.engine.support import RELU_FUNCS
from deconvviz.engine.tracer import Tracer, eval_mode, exact_cuda

__all__ = [
    "METHODS",
    "Comparison",
    "captum_relu_note",
    "compare_methods",
    "project_class",
    "relu_calls",
]

METHODS: tuple[str, ...] = (
    "deconvnet",
    "saliency",
    "guided_backprop",
    "integrated_gradients",
    "occlusion",
)

# Captum's notes that are not problems here (we pass inputs that require grad, and its hooks are
# removed when it returns).
_CAPTUM_NOTES = (
    r"Setting backward hooks on ReLU activations",
    r"Input Tensor \d+ did not already require gradients",
)


@dataclass(frozen=True)
class Comparison:
    """Attribution maps of several methods for the same images and classes.

    Attributes:
        images: ``[N, C, H, W]`` the inputs.
        target: ``[N]`` the class each map explains.
        probability: ``[N]`` the model's softmax probability of that class.
        methods: the method names, in the order of ``attributions``.
        attributions: ``[M, N, C, H, W]`` one map per method and image.
        notes: plain sentences a reader of the maps must know (e.g. captum's guided backprop
            is the plain gradient on a model that calls ``F.relu``).
    """

    images: Tensor
    target: Tensor
    probability: Tensor
    methods: tuple[str, ...]
    attributions: Tensor
    notes: tuple[str, ...] = ()

    def __getitem__(self, method: str) -> Tensor:
        """The ``[N, C, H, W]`` maps of one method."""
        if method not in self.methods:
            raise InputError(unknown_name("method", str(method), self.methods))
        return self.attributions[self.methods.index(method)]


class _UnitSeed(nn.Module):
    """Identity in gradient, 1 in value: seeds a projection of the class scores with 1."""

    def forward(self, scores: Tensor) -> Tensor:
        return scores - scores.detach() + 1.0


class _Scored(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seed = _UnitSeed()

    def forward(self, x: Tensor) -> Tensor:
        return self.seed(self.model(x))


def project_class(
    model: nn.Module,
    images: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    rule: str = "deconvnet",
) -> Tensor:
    """Project each image's class score back to pixel space, seeded with 1 (captum's convention).

    The engine seeds a projection with the activation's own value; a logit can be negative,
    and the deconvnet's rectification is not odd, so here the class score goes through an
    extra unit that is 1 in value and the identity in gradient: the projection is exactly the
    one seeded with 1 at the logit, as captum's ``Deconvolution`` (``GuidedBackprop``,
    ``Saliency``) do for models with ``nn.ReLU`` modules.

    Args:
        model: a classifier mapping ``[N, C, H, W]`` to logits ``[N, classes]``.
        images: ``[N, C, H, W]`` in the model's input space.
        target: the class per image (one for all, one each, or ``None``: the predicted class).
        rule: ``"deconvnet"``, ``"gradient"`` or ``"guided"``.

    Returns:
        ``[N, C, H, W]`` projections.
    """
    check_model(model)
    device, dtype = model_device_dtype(model)
    x = _check_images(images).to(device=device, dtype=dtype)
    logits = _logits(model, x)
    tgt = _targets(target, logits).to(device)
    out = torch.zeros_like(x)
    with attach(_Scored(model), rule, warn=False) as dn:
        for cls in torch.unique(tgt).tolist():
            idx = (tgt == cls).nonzero().flatten()
            out[idx] = dn.project(x[idx], "seed", channel=int(cls)).detach()
    return out


def _check_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise InputError(f"images must be a tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] == 0 or not images.is_floating_point():
        raise InputError(
            f"images must be a non-empty floating-point batch [N, C, H, W], got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    return images.detach()


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    with eval_mode(model), torch.no_grad():
        out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(
            f"this needs a classifier returning logits [N, classes]; the model returned {got}; "
            "wrap it so that it returns the logits tensor"
        )
    return out


def compare_methods(
    model: nn.Module,
    images: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    *,
    methods: Sequence[str] = METHODS,
    baseline: float = 0.0,
    ig_steps: int = 32,
    occlusion_size: int = 8,
    occlusion_stride: int = 4,
    progress: bool = True,
) -> Comparison:
    """Attribution maps of our deconvnet and captum's methods for the same images and classes.

    Args:
        model: a classifier mapping ``[N, C, H, W]`` to logits ``[N, classes]``.
        images: ``[N, C, H, W]`` (or one ``[C, H, W]``) in the model's input space.
        target: the class to explain: one for all images, one per image, or ``None`` for the
            class the model predicts.
        methods: any of :data:`METHODS`, in the order to show them.
        baseline: the constant input value integrated gradients starts from and occlusion
            fills with (0.0 is black for [0, 1] pixels).
        ig_steps: integration steps of integrated gradients.
        occlusion_size: side of the occluding square, in pixels.
        occlusion_stride: step between occluder positions.
        progress: show a progress bar over the methods.

    Returns:
        A :class:`Comparison`.
    """
    check_model(model)
    methods = _check_methods(methods)
    for label, value in (
        ("ig_steps", ig_steps),
        ("occlusion_size", occlusion_size),
        ("occlusion_stride", occlusion_stride),
    ):
        check_positive_int(label, value)
    device, dtype = model_device_dtype(model)
    x = _check_images(images).to(device=device, dtype=dtype)
    n, c, h, w = x.shape
    if occlusion_size > min(h, w) and "occlusion" in methods:
        raise InputError(
            f"occlusion_size {occlusion_size} is larger than the images ({h}x{w}); "
            "pick a smaller one"
        )
    logits = _logits(model, x)
    tgt = _targets(target, logits)
    rows = torch.arange(n, device=logits.device)
    probability = torch.softmax(logits.double(), dim=1)[rows, tgt.to(logits.device)]
    settings = (baseline, ig_steps, occlusion_size, occlusion_stride)
    return Comparison(
        images=x.cpu(),
        target=tgt.cpu(),
        probability=probability.cpu(),
        methods=methods,
        attributions=_all_maps(model, x, tgt.to(device), methods, settings, progress),
        notes=_notes(model, x, methods),
    )


def _notes(model: nn.Module, x: Tensor, methods: Sequence[str]) -> tuple[str, ...]:
    """What a reader of these maps must know about captum on this model."""
    if "guided_backprop" not in methods:
        return ()
    note = captum_relu_note(model, x)
    return () if note is None else (note,)


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` as a tuple, each one of :data:`METHODS`, named once."""
    methods = tuple(methods)
    if not methods:
        raise InputError(f"give at least one method of {METHODS}")
    for m in methods:
        if m not in METHODS:
            raise InputError(unknown_name("method", str(m), METHODS))
    if len(set(methods)) != len(methods):
        raise InputError(f"methods {methods} name one method twice; list each once")
    return methods


def _all_maps(
    model: nn.Module,
    x: Tensor,
    tgt: Tensor,
    methods: tuple[str, ...],
    settings: tuple[float, int, int, int],
    progress: bool,
) -> Tensor:
    """``[M, N, C, H, W]`` each method's maps of ``x`` for classes ``tgt``, on the CPU in
    ``x``'s dtype (``settings``: baseline, ig_steps, occlusion size and stride)."""
    from tqdm.auto import tqdm

    maps = []
    with eval_mode(model):
        for method in tqdm(methods, desc="attributions", unit="method", disable=not progress):
            maps.append(
                _attribute(model, x, tgt, method, *settings)
                .detach()
                .to(x.dtype)  # captum's occlusion accumulates in float32
                .cpu()
            )
    return torch.stack(maps)


def _targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    n, k = logits.shape
    if target is None:
        return logits.argmax(dim=1).cpu()
    if isinstance(target, bool):
        raise InputError(f"target must be a class index or one per image, got {target!r}")
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.is_complex():
        raise InputError(f"target must hold integer class indices, got {target!r}")
    t = t.to(torch.long).flatten().cpu()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise InputError(f"got {t.numel()} targets for {n} images; give one, or one per image")
    if int(t.min()) < 0 or int(t.max()) >= k:
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise InputError(
            f"target class {bad} is out of range: the model has {k} classes; give one of "
            f"0..{k - 1} (--target)"
        )
    return t


def _attribute(
    model: nn.Module,
    x: Tensor,
    tgt: Tensor,
    method: str,
    baseline: float,
    ig_steps: int,
    size: int,
    stride: int,
) -> Tensor:
    if method == "deconvnet":
        return project_class(model, x, tgt, "deconvnet")
    try:
        # the same arithmetic as the engine's projections: no TF32 on CUDA, cuDNN off for RNNs
        with exact_cuda(x, list(model.modules())):
            return _captum(model, x, tgt, method, baseline, ig_steps, size, stride)
    except RuntimeError as exc:  # e.g. backward hooks on in-place ReLUs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"captum's {method} failed on this model ({first}); deconvviz's own deconvnet works "
            f"on it: use deconvviz reconstruct --image (methods= without {method!r} in Python)"
        ) from exc


def _captum(
    model: nn.Module,
    x: Tensor,
    tgt: Tensor,
    method: str,
    baseline: float,
    ig_steps: int,
    size: int,
    stride: int,
) -> Tensor:
    from captum.attr import GuidedBackprop, IntegratedGradients, Occlusion, Saliency

    xin = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        for note in _CAPTUM_NOTES:
            warnings.filterwarnings("ignore", message=note, category=UserWarning)
        if method == "saliency":
            return Saliency(model).attribute(xin, target=tgt, abs=False)
        if method == "guided_backprop":
            return GuidedBackprop(model).attribute(xin, target=tgt)
        if method == "integrated_gradients":
            return IntegratedGradients(model).attribute(
                xin,
                baselines=float(baseline),
                target=tgt,
                n_steps=ig_steps,
                internal_batch_size=max(1, x.shape[0]) * 8,
            )
        c = x.shape[1]
        with torch.no_grad():
            return Occlusion(model).attribute(
                x,
                target=tgt,
                sliding_window_shapes=(c, size, size),
                strides=(c, stride, stride),
                baselines=float(baseline),
                perturbations_per_eval=64,
            )


class _CountRelus(TorchFunctionMode):
    """Counts ReLU calls, and those made inside an ``nn.ReLU`` module (the only ones captum's
    module hooks see)."""

    def __init__(self, stack: list[str], relu_modules: set[str]) -> None:
        super().__init__()
        self.stack = stack
        self.relu_modules = relu_modules
        self.total = 0
        self.in_modules = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in RELU_FUNCS:
            self.total += 1
            if self.stack and self.stack[-1] in self.relu_modules:
                self.in_modules += 1
        return func(*args, **(kwargs or {}))


def relu_calls(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """``(all ReLU calls, those inside nn.ReLU modules)`` of one forward pass on ``x``."""
    relus = {name for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    stack: list[str] = []
    counter = _CountRelus(stack, relus)
    tracer = Tracer(model, mode=counter)
    counter.stack = tracer.stack
    with tracer:
        tracer.run(x[:1])
    return counter.total, counter.in_modules


def captum_relu_note(model: nn.Module, x: Tensor) -> str | None:
    """A sentence when captum's guided backprop / deconvolution would miss ReLU calls of
    ``model`` (``F.relu``, ``torch.relu``, ``x.relu()``: captum hooks ``nn.ReLU`` modules only),
    else ``None``."""
    total, seen = relu_calls(model, x)
    if total == 0 or seen == total:
        return None
    if seen == 0:
        return (
            f"This model calls its ReLUs as functions (F.relu; {total} calls) and has no nn.ReLU "
            "module, which is all captum hooks: captum's guided backprop (and Deconvolution) "
            "here equals the plain gradient (saliency). deconvviz's own rules see every call."
        )
    return (
        f"captum hooks nn.ReLU modules only: {total - seen} of this model's {total} ReLU calls "
        "are functional (F.relu), so captum's guided backprop treats them as in the plain "
        "gradient. deconvviz's own rules see every call."
    )
