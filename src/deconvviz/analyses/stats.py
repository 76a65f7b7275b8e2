"""Activation statistics streamed over a dataset: moments, dead units, histograms.

Moments are merged batch by batch with the pairwise update of Chan, Golub & LeVeque (1979) in
float64, so the mean and (population) variance over millions of elements match a two-pass
computation on the concatenated data. Nothing but the running sums is kept in memory.

By default the layers are the ones the origin report measured: the ReLU output of every
convolution layer, before pooling. They are found by watching a forward pass: a ReLU (an
``nn.ReLU`` module, or functional ``F.relu`` / ``torch.relu`` / ``Tensor.relu``) applied to the
output of a convolution (possibly through a BatchNorm) counts. A model without such ReLUs gets
its convolution outputs instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary
from tqdm.auto import tqdm

from deconvviz.base._display import render_png
from deconvviz.base._util import dead_units
from deconvviz.base.checks import (
    batch_images,
    check_layer,
    check_model,
    check_positive_int,
    to_model,
)
from deconvviz.base.errors import InputError, LayerError
from deconvviz.engine.support import RELU_FUNCS
from deconvviz.engine.tracer import Tracer, eval_mode

__all__ = [
    "LayerStats",
    "HiddenStateStats",
    "activation_stats",
    "hidden_state_stats",
    "report_lines",
]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class LayerStats:
    """Statistics of every element a layer output over a dataset.

    Attributes:
        name: the layer (``named_modules()`` name; ``"<conv>:relu"`` for a functional ReLU).
        source: the convolution whose ReLU output this is (None for an explicitly chosen layer
            that is not fed by a convolution, or for a convolution's own output).
        count: number of elements seen.
        mean: mean over all elements.
        var: population variance over all elements (divided by ``count``).
        min: smallest element.
        max: largest element.
        zero_fraction: fraction of elements exactly 0.
        channel_mean: ``[C]`` mean per channel (dimension 1 of the output).
        channel_var: ``[C]`` population variance per channel.
        channel_zero_fraction: ``[C]`` fraction of zeros per channel; 1.0 means a dead unit.
        hist_counts: ``[bins]`` histogram counts.
        hist_edges: ``[bins + 1]`` bin edges (the last bin includes its right edge).
        underflow: elements below ``hist_edges[0]`` (not in ``hist_counts``).
        overflow: elements above ``hist_edges[-1]`` (not in ``hist_counts``).
        channel_max: ``[C]`` largest value per channel (``None`` in results made without it).
    """

    name: str
    source: str | None
    count: int
    mean: float
    var: float
    min: float
    max: float
    zero_fraction: float
    channel_mean: Tensor
    channel_var: Tensor
    channel_zero_fraction: Tensor
    hist_counts: Tensor
    hist_edges: Tensor
    underflow: int
    overflow: int
    channel_max: Tensor | None = None

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.var)

    @property
    def dead_channels(self) -> Tensor:
        """Indices of the dead units: channels never above 0 on the scanned images
        (:func:`deconvviz.base._util.dead_units`, the definition every command uses; for a ReLU
        output, the channels that were 0 everywhere)."""
        if self.channel_max is None:  # an old result: the ReLU-output reading
            return (self.channel_zero_fraction >= 1.0).nonzero().flatten()
        return torch.tensor(dead_units(self.channel_max), dtype=torch.long)

    @property
    def report_name(self) -> str:
        """Name in the origin report's style: ``h_conv1`` for the ReLU output of ``conv1``.

        Only an alias, for the lines that reproduce the origin report's
        (:func:`report_lines`); tables and figures name the layer by :attr:`name`, its
        ``named_modules()`` name, like every other command."""
        return f"h_{self.source}" if self.source else self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for JSON)."""
        return {
            "name": self.name,
            "source": self.source,
            "count": self.count,
            "mean": self.mean,
            "var": self.var,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "zero_fraction": self.zero_fraction,
            "dead_channels": self.dead_channels.tolist(),
            "channel_max": None if self.channel_max is None else self.channel_max.tolist(),
            "channel_mean": self.channel_mean.tolist(),
            "channel_var": self.channel_var.tolist(),
            "channel_zero_fraction": self.channel_zero_fraction.tolist(),
            "hist_counts": self.hist_counts.tolist(),
            "hist_edges": self.hist_edges.tolist(),
            "underflow": self.underflow,
            "overflow": self.overflow,
        }

    def _repr_png_(self) -> bytes:
        """The activation histogram, for Jupyter."""
        return render_png(self)


@dataclass(frozen=True)
class HiddenStateStats:
    """Statistics of a recurrent model's hidden state at each time step, over a dataset.

    Attributes:
        mean: ``[T]`` mean over all images and hidden units at each step.
        var: ``[T]`` population variance at each step.
        saturated_fraction: ``[T]`` fraction of units with ``|h| > threshold``.
        threshold: the saturation threshold (0.99: a tanh unit stuck near +-1).
        count: elements per time step (images x hidden units).
    """

    mean: Tensor
    var: Tensor
    saturated_fraction: Tensor
    threshold: float
    count: int

    @property
    def steps(self) -> int:
        """Number of time steps T."""
        return int(self.mean.shape[0])

    @property
    def overall_mean(self) -> float:
        """Mean over all steps (every step has the same count)."""
        return float(self.mean.mean())

    @property
    def overall_var(self) -> float:
        """Population variance over all steps: mean of variances + variance of means."""
        return float(self.var.mean() + ((self.mean - self.mean.mean()) ** 2).mean())

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for JSON)."""
        return {
            "mean": self.mean.tolist(),
            "var": self.var.tolist(),
            "saturated_fraction": self.saturated_fraction.tolist(),
            "threshold": self.threshold,
            "count": self.count,
            "overall_mean": self.overall_mean,
            "overall_var": self.overall_var,
        }

    def _repr_png_(self) -> bytes:
        """The hidden-state statistics, for Jupyter."""
        return render_png(self)


# ---------------------------------------------------------------------------------------------
# streaming accumulators


def _merge(
    n_a: int, mean_a: Tensor, m2_a: Tensor, n_b: int, mean_b: Tensor, m2_b: Tensor
) -> tuple[int, Tensor, Tensor]:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations)."""
    n = n_a + n_b
    if n_a == 0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2


@dataclass
class _Running:
    name: str
    source: str | None
    bins: int
    hist_range: tuple[float, float] | None
    n: int = 0
    mean: Any = None
    m2: Any = None
    cmean: Any = None
    cm2: Any = None
    zeros: Any = None
    czeros: Any = None
    cmax: Any = None
    lo: Any = None
    hi: Any = None
    hist: Any = None
    under: Any = None
    over: Any = None
    channels: int = field(default=-1)

    def update(self, a: Tensor) -> None:
        a = a.detach()
        if not a.is_floating_point():
            raise InputError(f"layer {self.name!r} output is {a.dtype}, not floating point")
        if a.dim() < 2:
            a = a.reshape(-1, 1)
        c = a.shape[1]
        if self.channels == -1:
            self.channels = c
        elif c != self.channels:
            raise InputError(
                f"layer {self.name!r} gave {c} channels in one batch and {self.channels} in "
                "another; statistics per channel need the same channel count throughout"
            )
        a64 = a.double()
        nb = a64.numel()
        if nb == 0:
            return
        per_c = a64.transpose(0, 1).reshape(c, -1)
        cmean_b = per_c.mean(dim=1)
        cm2_b = ((per_c - cmean_b[:, None]) ** 2).sum(dim=1)
        # whole-batch moments from the per-channel ones (Chan's merge over equal-size groups)
        mean_b = cmean_b.mean()
        m2_b = cm2_b.sum() + ((cmean_b - mean_b) ** 2).sum() * (nb // c)
        iszero = per_c == 0
        czeros_b = iszero.sum(dim=1)
        n_a = self.n
        _, self.cmean, self.cm2 = _merge(n_a // c, self.cmean, self.cm2, nb // c, cmean_b, cm2_b)
        self.n, self.mean, self.m2 = _merge(n_a, self.mean, self.m2, nb, mean_b, m2_b)
        self.czeros = czeros_b if self.czeros is None else self.czeros + czeros_b
        cmax_b = per_c.amax(dim=1)
        self.cmax = cmax_b if self.cmax is None else torch.fmax(self.cmax, cmax_b)
        bmin, bmax = a64.min(), a64.max()
        self.lo = bmin if self.lo is None else torch.minimum(self.lo, bmin)
        self.hi = bmax if self.hi is None else torch.maximum(self.hi, bmax)
        if self.hist_range is None:  # fixed bins from the first batch, with some headroom
            lo, hi = float(bmin), float(bmax)
            span = hi - lo if hi > lo else max(abs(hi), 1.0)
            lo_e, hi_e = lo - 0.1 * span, hi + 0.1 * span
            if lo >= 0:
                lo_e = max(lo_e, 0.0)
            self.hist_range = (lo_e, hi_e)
        lo_r, hi_r = self.hist_range
        hist_b = torch.histc(a64, bins=self.bins, min=lo_r, max=hi_r)
        under_b = (a64 < lo_r).sum()
        over_b = (a64 > hi_r).sum()
        self.hist = hist_b if self.hist is None else self.hist + hist_b
        self.under = under_b if self.under is None else self.under + under_b
        self.over = over_b if self.over is None else self.over + over_b

    def result(self) -> LayerStats:
        if self.n == 0:
            raise InputError(f"layer {self.name!r} produced no elements")
        assert self.hist_range is not None
        c = self.channels
        per_c = self.n // c
        czeros = self.czeros.cpu().double()
        return LayerStats(
            name=self.name,
            source=self.source,
            count=self.n,
            mean=float(self.mean),
            var=float(self.m2) / self.n,
            min=float(self.lo),
            max=float(self.hi),
            zero_fraction=float(czeros.sum()) / self.n,
            channel_mean=self.cmean.cpu(),
            channel_var=(self.cm2 / per_c).cpu(),
            channel_zero_fraction=czeros / per_c,
            hist_counts=self.hist.cpu().round().long(),
            hist_edges=torch.linspace(*self.hist_range, self.bins + 1, dtype=torch.float64),
            underflow=int(self.under),
            overflow=int(self.over),
            channel_max=self.cmax.cpu(),
        )


# ---------------------------------------------------------------------------------------------
# finding and watching layers


class _ReluWatch(TorchFunctionMode):
    """Sees functional ReLUs (outside ``nn.ReLU`` modules) applied to convolution outputs."""

    def __init__(self, watcher: _Watcher) -> None:
        super().__init__()
        self.watcher = watcher

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        w = self.watcher
        if func in RELU_FUNCS and w.relu_depth == 0 and args and isinstance(args[0], Tensor):
            conv = w.conv_of.get(args[0])
            if conv is not None and isinstance(out, Tensor):
                w.record(f"{conv}:relu", conv, out)
        return out


class _Watcher:
    """Feeds layer outputs to ``sink`` during forward passes run by :meth:`run`.

    Its :attr:`tracer` watches the convolutions (which mark their outputs), batch norms (which
    pass the mark on), and either every ``nn.ReLU`` plus functional ReLUs (``layers`` None) or
    the explicitly named layers; a pass stops once ``expected_events`` outputs were recorded.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str] | None,
        sink: Callable[[str, str | None, Tensor], None] | None = None,
    ) -> None:
        self.layers = layers
        self.conv_of: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.relu_depth = 0
        self.seen: list[tuple[str, str | None]] = []
        self.sink = sink
        self.expected_events: int | None = None
        self.events = 0
        self.explicit = set(layers or ())
        watched: dict[nn.Module, str] = {}
        for name, m in model.named_modules():
            if isinstance(m, _CONV_TYPES + _NORM_TYPES) or self._relu(m) or name in self.explicit:
                watched.setdefault(m, name)
        mode = _ReluWatch(self) if layers is None else None
        self.tracer = Tracer(model, watched, mode=mode)
        self.tracer.on_call(self._on_call)
        self.tracer.on_return(self._on_return)

    def _relu(self, m: nn.Module) -> bool:
        return self.layers is None and isinstance(m, nn.ReLU)

    def run(self, x: Tensor) -> None:
        """One eval-mode pass without autograd (inside ``with self.tracer:``)."""
        self.events = 0
        self.relu_depth = 0
        self.tracer.run(x, exact=False)

    def record(self, name: str, source: str | None, out: Tensor) -> None:
        if self.layers is not None and name not in self.layers:
            return
        self.seen.append((name, source))
        if self.sink is not None:
            self.sink(name, source, out)
        self.events += 1
        if self.expected_events is not None and self.events >= self.expected_events:
            self.tracer.stop()

    def _on_call(self, name: str, call: int, m: nn.Module, args: Any) -> None:
        if self._relu(m):
            self.relu_depth += 1

    def _on_return(self, name: str, call: int, m: nn.Module, inp: Any, out: Any) -> None:
        x = inp[0] if inp and isinstance(inp[0], Tensor) else None
        if isinstance(m, _CONV_TYPES):
            if isinstance(out, Tensor):
                self.conv_of[out] = name
        elif isinstance(m, _NORM_TYPES) and x is not None and isinstance(out, Tensor):
            conv = self.conv_of.get(x)
            if conv is not None:
                self.conv_of[out] = conv
        if self._relu(m):
            self.relu_depth -= 1
            conv = self.conv_of.get(x) if x is not None else None
            if conv is not None:
                self.record(name, conv, out)
        elif name in self.explicit:
            source = None
            if not isinstance(m, _CONV_TYPES) and x is not None:
                source = self.conv_of.get(x)
            self.record(name, source, _first_tensor(name, out))


def _first_tensor(name: str, out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise LayerError(f"layer {name!r} outputs a {type(out).__name__}, not a tensor")


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


# ---------------------------------------------------------------------------------------------
# public functions


def activation_stats(
    model: nn.Module,
    loader: Iterable[Any],
    layers: list[str] | None = None,
    progress: bool = True,
    *,
    bins: int = 50,
    hist_range: tuple[float, float] | None = None,
) -> dict[str, LayerStats]:
    """Stream a dataset through ``model`` and collect statistics of layer outputs.

    The model runs in eval mode (restored afterwards) without gradients; each forward pass is
    stopped as soon as every watched layer has run.

    Args:
        model: any network.
        loader: iterable of image batches or ``(images, labels)`` pairs (a ``DataLoader``).
        layers: ``named_modules()`` names whose outputs to measure. Default: the ReLU output
            of every convolution layer (the report's ``h_conv`` tensors), or every convolution
            output when no ReLU follows one.
        progress: show a progress bar.
        bins: histogram bins.
        hist_range: histogram ``(low, high)``; default: the first batch's range plus 10%
            headroom (values outside are counted in ``underflow`` / ``overflow``).

    Returns:
        ``{layer name: LayerStats}`` in the order the layers run.

    Example:
        >>> from deconvviz.sources.models import LeNet5
        >>> stats = activation_stats(LeNet5(), [torch.rand(4, 1, 28, 28)], progress=False)
        >>> list(stats), [s.source for s in stats.values()]
        (['relu1', 'relu2'], ['conv1', 'conv2'])
        >>> report_lines(stats)[0].startswith("h_conv1_stats: mean = ")
        True
    """
    layers, hist_range = _check_stats_args(model, layers, bins, hist_range)
    running: dict[str, _Running] = {}

    def sink(name: str, source: str | None, out: Tensor) -> None:
        if name not in running:
            running[name] = _Running(name, source, bins, hist_range)
        running[name].update(out)

    if _stream(model, loader, layers, sink, progress) == 0:
        raise InputError("the loader yielded no batches; check the dataset and batch size")
    return {name: acc.result() for name, acc in running.items()}


def _check_stats_args(
    model: nn.Module,
    layers: list[str] | None,
    bins: int,
    hist_range: tuple[float, float] | None,
) -> tuple[list[str] | None, tuple[float, float] | None]:
    """:func:`activation_stats`'s arguments, checked: ``(layers, hist_range)``."""
    check_model(model)
    check_positive_int("bins", bins)
    if hist_range is not None:
        lo, hi = (float(v) for v in hist_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise InputError(f"hist_range must be (low, high) with low < high, got {hist_range!r}")
        hist_range = (lo, hi)
    if layers is not None:
        layers = list(layers)
        for name in layers:
            check_layer(model, name)
    return layers, hist_range


def _stream(
    model: nn.Module,
    loader: Iterable[Any],
    layers: list[str] | None,
    sink: Callable[[str, str | None, Tensor], None],
    progress: bool,
) -> int:
    """Run every batch of ``loader`` through ``model``, feeding ``sink``; returns the batch count.

    The first batch decides what is watched (:func:`_first_watcher`); later passes stop once
    every watched layer has run."""
    watcher: _Watcher | None = None
    batches = 0
    bar = tqdm(
        loader, total=_length(loader), desc="activation stats", unit="batch", disable=not progress
    )
    with ExitStack() as stack:
        for batch in bar:
            x = to_model(batch_images(batch), model)
            if watcher is None:
                watcher = _first_watcher(model, x, layers, sink)
                stack.enter_context(watcher.tracer)
            else:
                watcher.run(x)
            batches += 1
    return batches


def _first_watcher(
    model: nn.Module,
    x: Tensor,
    layers: list[str] | None,
    sink: Callable[[str, str | None, Tensor], None],
) -> _Watcher:
    """Run the first batch; returns the watcher for the rest (knowing how many outputs a pass
    has). Without ReLUs after convolutions the convolution outputs are watched instead."""
    watcher = _Watcher(model, layers, sink)
    with watcher.tracer:
        watcher.run(x)
    if watcher.events == 0:
        _fallback_or_fail(model, layers)
        watcher = _Watcher(model, conv_names(model), sink)
        with watcher.tracer:
            watcher.run(x)
    watcher.expected_events = watcher.events
    return watcher


def conv_names(model: nn.Module) -> list[str]:
    """Names of the convolution layers of ``model``, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, _CONV_TYPES)]


def _fallback_or_fail(model: nn.Module, layers: list[str] | None) -> None:
    if layers is not None:
        raise LayerError(f"layers {layers} did not run in the model's forward pass")
    if not conv_names(model):
        raise LayerError(
            f"{type(model).__name__} has no convolution layers to measure by default; name "
            "the layers: --layer NAME (layers=[...] in Python); a recurrent model's hidden "
            "states are measured by hidden_state_stats() (by deconvviz stats when the model "
            "has a hidden_states() method)"
        )


def report_lines(stats: dict[str, LayerStats]) -> list[str]:
    """The origin report's lines: ``h_conv1_stats: mean = ...; var = ...``, one per layer.

    Args:
        stats: what :func:`activation_stats` returned.

    Returns:
        One string per layer (mean and population variance to 4 significant digits).
    """
    return [
        f"{s.report_name}_stats: mean = {s.mean:.4g}; var = {s.var:.4g}" for s in stats.values()
    ]


def hidden_state_stats(
    model: nn.Module,
    loader: Iterable[Any],
    progress: bool = True,
    *,
    threshold: float = 0.99,
) -> HiddenStateStats:
    """Per-time-step statistics of a recurrent model's hidden state over a dataset.

    Args:
        model: a model with ``hidden_states(x) -> [N, T, hidden]`` (e.g.
            :class:`deconvviz.sources.models.RNNClassifier`).
        loader: iterable of image batches or ``(images, labels)`` pairs.
        progress: show a progress bar.
        threshold: ``|h|`` above which a unit counts as saturated (0.99 suits tanh).

    Returns:
        A :class:`HiddenStateStats` (mean, variance, saturated fraction per step).
    """
    if not callable(getattr(model, "hidden_states", None)):
        raise InputError(
            f"{type(model).__name__} has no hidden_states(x) method; hidden-state statistics "
            "need a recurrent model such as deconvviz.sources.models.RNNClassifier"
        )
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
        raise InputError(f"threshold must be a non-negative number, got {threshold!r}")
    n = 0
    mean: Tensor | None = None
    m2: Tensor | None = None
    sat: Tensor | None = None
    bar = tqdm(
        loader, total=_length(loader), desc="hidden-state stats", unit="batch", disable=not progress
    )
    with eval_mode(model), torch.no_grad():
        for batch in bar:
            x = to_model(batch_images(batch), model)
            h = _first_tensor("hidden_states", model.hidden_states(x))  # type: ignore[operator]
            mean_b, m2_b, sat_b = _step_moments(h, mean, threshold)
            nb = h.shape[0] * h.shape[2]  # elements per step: images x hidden units
            n, mean, m2 = _merge(n, mean, m2, nb, mean_b, m2_b)  # type: ignore[arg-type]
            sat = sat_b if sat is None else sat + sat_b
    if mean is None or m2 is None or sat is None or n == 0:
        raise InputError("the loader yielded no batches; check the dataset and batch size")
    return HiddenStateStats(
        mean=mean.cpu(),
        var=(m2 / n).cpu(),
        saturated_fraction=sat.cpu().double() / n,
        threshold=float(threshold),
        count=n,
    )


def _step_moments(
    h: Tensor, mean: Tensor | None, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of hidden states ``[N, T, hidden]``: per step, mean, sum of squared deviations
    and count of saturated units (``mean``: the running mean so far, to check ``T``)."""
    if h.dim() != 3:
        raise InputError(f"hidden_states returned shape {tuple(h.shape)}; expected [N, T, hidden]")
    if mean is not None and h.shape[1] != mean.shape[0]:
        raise InputError(
            f"sequences of different lengths ({mean.shape[0]} and {h.shape[1]} steps); "
            "per-step statistics need a fixed length"
        )
    h64 = h.detach().double().transpose(0, 1).reshape(h.shape[1], -1)
    mean_b = h64.mean(dim=1)
    m2_b = ((h64 - mean_b[:, None]) ** 2).sum(dim=1)
    sat_b = (h64.abs() > threshold).sum(dim=1)
    return mean_b, m2_b, sat_b
