"""Sanity checks of projections: how far can a deconvnet picture be trusted?

* :func:`randomisation_test` -- Adebayo et al. 2018, "Sanity checks for saliency maps": the
  weights are randomised layer by layer from the top down (cascading randomisation) and the
  projections of the randomised models are compared with the trained model's (Spearman rank
  correlation and SSIM). A method whose pictures barely change when the weights are destroyed
  shows the image (edges, switches) rather than what the network learnt.
* :func:`sensitivity_check` -- Mahendran & Vedaldi 2016, "Salient deconvolutional networks":
  the projections of *different* channels (or classes) on the same image are compared with each
  other. High similarity means the picture says little about which unit was chosen.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.analyses._common import forward_trace, output_layer, parametric_layers
from deconvviz.analyses.metrics import rankdata, spearman, ssim
from deconvviz.analyses.registry import Analysis, ReportSection, register_analysis
from deconvviz.base.checks import (
    check_channels,
    check_images,
    check_layers,
    check_positive_int,
)
from deconvviz.base.errors import InputError, LayerError, unknown_name
from deconvviz.engine.deconvnet import attach, layer_output
from deconvviz.engine.rules import RULES

__all__ = [
    "SanityResult",
    "SensitivityResult",
    "randomisation_test",
    "sensitivity_check",
    "projection_map",
    "compare_maps",
]

DEFAULT_RULES = ("deconvnet", "gradient", "guided")


def projection_map(rec: Tensor, absolute: bool = True) -> Tensor:
    """One map per projection: ``|rec|`` (or ``rec``) summed over the input channels.

    Args:
        rec: ``[..., C, H, W]`` projections.
        absolute: take absolute values first (Adebayo et al.'s main setting).

    Returns:
        ``[..., H, W]`` float64 maps.
    """
    r = rec.detach().double()
    return (r.abs() if absolute else r).sum(dim=-3)


def _normalised(m: Tensor) -> Tensor:
    """Each map divided by its largest magnitude (all-zero maps stay zero)."""
    scale = m.abs().flatten(-2).amax(dim=-1)[..., None, None]
    return torch.where(
        scale > 0, m / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(m)
    )


def compare_maps(a: Tensor, b: Tensor, absolute: bool = True) -> tuple[Tensor, Tensor]:
    """Spearman rank correlation and SSIM between the maps of projections ``a`` and ``b``.

    Maps come from :func:`projection_map`; for SSIM each map is divided by its largest
    magnitude (range [0, 1] with ``absolute``, else [-1, 1]).

    Args:
        a: ``[..., C, H, W]`` projections.
        b: same shape.
        absolute: compare absolute maps.

    Returns:
        ``(spearman, ssim)``, each ``[...]`` float64 (Spearman is NaN where a map is constant,
        e.g. an all-zero projection).
    """
    ma, mb = projection_map(a, absolute), projection_map(b, absolute)
    rho = spearman(ma.flatten(-2), mb.flatten(-2))
    s = ssim(_normalised(ma), _normalised(mb), data_range=1.0 if absolute else 2.0)
    return rho, s


def _pairwise(maps: Tensor, absolute: bool) -> tuple[Tensor, Tensor]:
    """Spearman and SSIM between every two of ``K`` maps ``[..., K, H, W]`` -> ``[..., K, K]``."""
    ranks = rankdata(maps.flatten(-2))
    ranks = ranks - ranks.mean(dim=-1, keepdim=True)
    norm = ranks.norm(dim=-1, keepdim=True)
    unit = torch.where(
        norm > 0,
        ranks / torch.where(norm > 0, norm, torch.ones_like(norm)),
        torch.full_like(ranks, float("nan")),
    )
    rho = (unit @ unit.transpose(-1, -2)).clamp(-1.0, 1.0)
    k = maps.shape[-3]
    scaled = _normalised(maps)
    sim = torch.ones(rho.shape, dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            v = ssim(
                scaled[..., i, :, :], scaled[..., j, :, :], data_range=1.0 if absolute else 2.0
            )
            sim[..., i, j] = v
            sim[..., j, i] = v
    return rho, sim


def _check_rules(rules: Sequence[str]) -> tuple[str, ...]:
    if isinstance(rules, str):
        rules = (rules,)
    out = tuple(rules)
    if not out:
        raise InputError("rules is empty; give at least one of " + ", ".join(sorted(RULES)))
    for r in out:
        if r not in RULES:
            raise InputError(unknown_name("rule", str(r), sorted(RULES)))
    return tuple(dict.fromkeys(out))


def _layer_shape(model: nn.Module, x: Tensor, layer: str) -> tuple[int, ...]:
    order, shapes, calls = forward_trace(model, x)
    if layer not in shapes:
        raise LayerError(
            f"layer {layer!r} is not called by the model's forward pass; pick a layer that runs"
        )
    shape = shapes[layer]
    if shape is None or len(shape) not in (1, 3):
        raise LayerError(
            f"layer {layer!r} outputs {shape}; only [N, C, H, W] maps and [N, C] vectors can be "
            "projected"
        )
    return shape


def _project_per_image(dn: Any, x: Tensor, layer: str, channels: Tensor) -> Tensor:
    """Projection of channel ``channels[n]`` for image ``n`` (its strongest activation), all
    in one batched call."""
    unique = channels.unique().tolist()
    if len(unique) == 1:
        return dn.project(x, layer, int(unique[0]))
    recs = dn.project(x, layer, [int(c) for c in unique])  # [N, K, C, H, W]
    which = torch.tensor([unique.index(int(c)) for c in channels.tolist()], device=recs.device)
    return recs[torch.arange(x.shape[0], device=recs.device), which]


def _strongest_channels(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    acts = layer_output(model, x, layer)
    flat = acts.flatten(2).amax(dim=2) if acts.dim() == 4 else acts
    return flat.argmax(dim=1).cpu()


def _check_channels(channel: Any, n: int, n_channels: int) -> Tensor:
    try:
        t = torch.as_tensor(channel)
    except (TypeError, ValueError):
        raise InputError(f"channel must be an int or one int per image, got {channel!r}") from None
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(f"channel must be integer, got {channel!r}")
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise InputError(f"channel must be an int or a list of {n} ints (one per image)")
    t = t.to(torch.long).cpu()
    check_channels(t.tolist(), n_channels)
    return t


@dataclass(frozen=True)
class SanityResult:
    """Projections of a model whose weights are randomised step by step, vs the trained one's.

    ``R`` rules, ``S`` steps (step 0 is the trained model), ``N`` images.

    Attributes:
        layer: the projected layer.
        channels: ``[N]`` the channel (or class) projected for each image.
        rules: the ReLU rules compared.
        steps: ``S`` labels: ``"trained"``, then the layer randomised at each step. In
            ``"cascade"`` mode step ``s`` has every layer of steps ``1..s`` randomised (top
            down); in ``"independent"`` mode only its own layer.
        mode: ``"cascade"`` or ``"independent"``.
        spearman: ``[R, S, N]`` Spearman rank correlation with the trained model's projection
            (NaN where a projection is all zero).
        ssim: ``[R, S, N]`` SSIM with the trained model's projection.
        projections: ``[R, S, N, C, H, W]`` every projection.
        absolute: whether maps were compared as absolute values.
        seed: seed of the random weights.
        randomised: how many layers the cascade randomised in all; more than ``S - 1`` where
            ``max_steps`` showed the cascade at fewer steps (each step then randomises every
            layer from the previous one down to its own). 0: one per step.
    """

    layer: str
    channels: Tensor
    rules: tuple[str, ...]
    steps: tuple[str, ...]
    mode: str
    spearman: Tensor
    ssim: Tensor
    projections: Tensor
    absolute: bool
    seed: int
    randomised: int = 0

    def summary(self) -> dict[str, dict[str, list[float]]]:
        """Per rule: mean Spearman and SSIM over images at each step (NaNs skipped)."""
        return {
            rule: {
                "spearman": self.spearman[i].nanmean(dim=1).tolist(),
                "ssim": self.ssim[i].nanmean(dim=1).tolist(),
            }
            for i, rule in enumerate(self.rules)
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON (without the projections)."""
        return {
            "analysis": "randomisation",
            "layer": self.layer,
            "channels": self.channels.tolist(),
            "rules": list(self.rules),
            "steps": list(self.steps),
            "layers_randomised": self.randomised or len(self.steps) - 1,
            "mode": self.mode,
            "absolute": self.absolute,
            "seed": self.seed,
            "mean": self.summary(),
            "spearman": self.spearman.tolist(),
            "ssim": self.ssim.tolist(),
        }


REPORT_MAX_STEPS = 12
"""Cascade steps the report's randomisation figure shows at most (its figure says when the
cascade had more: a ResNet-18's 41 steps took most of the analyses' time, for a figure too wide to
read)."""


def _randomise_(module: nn.Module, generator: torch.Generator) -> None:
    """Replace the module's own parameters by Gaussian noise of the same RMS (in place)."""
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            rms = float(p.detach().double().pow(2).mean().sqrt()) if p.numel() else 0.0
            if rms == 0.0:
                rms = 1.0 / max(1, p.shape[-1]) ** 0.5
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64) * rms
            p.copy_(noise.to(device=p.device, dtype=p.dtype))


def _layers_to_randomise(
    model: nn.Module, xs: Tensor, target: str, layers: Sequence[str] | None
) -> list[str]:
    """The parametric layers feeding ``target`` to randomise (``layers`` or all), bottom up."""
    order = parametric_layers(model, xs, upto=target)
    if layers is None:
        chosen = order
    else:
        chosen = list(check_layers(model, layers))
        unused = [n for n in chosen if n not in order]
        if unused:
            raise LayerError(
                f"layer {unused[0]!r} has no parameters or does not feed {target!r}; randomise "
                "layers among: " + ", ".join(order)
            )
        chosen = [n for n in order if n in chosen]
    if not chosen:
        raise LayerError(
            f"no layer with parameters feeds {target!r}; there is nothing to randomise"
        )
    return chosen


def _copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to randomise (the caller's model is not touched)."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:  # a model that cannot be copied
        raise InputError(
            f"could not copy the model to randomise it ({type(exc).__name__}: {exc}); make it "
            "deep-copyable (copy.deepcopy(model))"
        ) from exc


def _randomise_step(
    modules: dict[str, nn.Module],
    step: str,
    mode: str,
    backup: dict[str, list[Tensor]],
    generator: torch.Generator,
) -> None:
    """Randomise layer ``step``; in ``"independent"`` mode first restore the previous one."""
    if mode == "independent":
        for name, saved in backup.items():
            with torch.no_grad():
                for p, v in zip(modules[name].parameters(recurse=False), saved, strict=True):
                    p.copy_(v)
        backup.clear()
        backup[step] = [p.detach().clone() for p in modules[step].parameters(recurse=False)]
    _randomise_(modules[step], generator)


def _project_randomised(
    work: nn.Module,
    xs: Tensor,
    target: str,
    chans: Tensor,
    rule_names: tuple[str, ...],
    steps: tuple[str, ...],
    mode: str,
    generator: torch.Generator,
    progress: bool,
    groups: dict[str, tuple[str, ...]] | None = None,
) -> Tensor:
    """``[R, S, N, C, H, W]``: every rule's projections after each randomisation step (a step
    randomises the layers ``groups[step]``, in order; default: its own layer)."""
    from tqdm.auto import tqdm

    modules = dict(work.named_modules())
    recs = xs.new_zeros((len(rule_names), len(steps), *xs.shape)).cpu()
    bar = tqdm(
        total=len(steps) * len(rule_names),
        desc=f"randomising ({mode})",
        disable=not progress,
        unit="projection",
        leave=False,
    )
    # one handle per rule for the whole run: the engine reads the weights at each pass, so the
    # randomised copy is seen as it changes, and the model's geometry is probed once
    handles = {rule: attach(work, rule=rule) for rule in rule_names}
    try:
        backup: dict[str, list[Tensor]] = {}
        for s, step in enumerate(steps):
            if step != "trained":
                for name in (groups or {}).get(step, (step,)):
                    _randomise_step(modules, name, mode, backup, generator)
            for r, rule in enumerate(rule_names):
                recs[r, s] = _project_per_image(handles[rule], xs, target, chans).cpu()
                bar.update(1)
    finally:
        bar.close()
        for dn in handles.values():
            dn.detach()
    return recs


def randomisation_test(
    model: nn.Module,
    x: Tensor,
    layer: str | None = None,
    channel: int | Sequence[int] | None = None,
    rules: Sequence[str] = DEFAULT_RULES,
    *,
    mode: str = "cascade",
    layers: Sequence[str] | None = None,
    absolute: bool = True,
    seed: int = 0,
    progress: bool = True,
    max_steps: int | None = None,
) -> SanityResult:
    """Adebayo et al.'s model-randomisation test, for each projection rule side by side.

    The parametric layers that feed ``layer`` are randomised from the top down (weights and
    biases replaced by Gaussian noise of the same RMS, on a copy of the model: yours is not
    touched); after each step every image's projection is compared with the trained model's.
    A trustworthy visualisation changes a lot (low correlation) once the weights it claims to
    show are gone.

    Args:
        model: the trained network.
        x: ``[N, C, H, W]`` images.
        layer: the layer to project; default: the model's output layer (class scores).
        channel: the channel (or class) to project: one for all images or one per image;
            default: per image, the predicted class (output layer) or the channel holding the
            image's largest activation.
        rules: the ReLU rules to compare.
        mode: ``"cascade"`` (cumulative, top down) or ``"independent"`` (one layer at a time).
        layers: the layers to randomise (default: every layer with parameters up to
            ``layer``), ordered top down automatically.
        absolute: compare absolute maps (``|projection|`` summed over input channels).
        seed: seed of the random weights (the global RNG is not touched).
        progress: show a progress bar.
        max_steps: cascade mode: project after at most this many steps, evenly spaced over
            the layers and always after the last (a ResNet-18 has 41 parametric layers). The
            cascade still randomises every layer, in the same order and with the same noise,
            so each step shown is exactly the full cascade's at that layer. Default: every
            step.

    Returns:
        A :class:`SanityResult`.

    Example:
        >>> res = randomisation_test(model, x[:4])          # doctest: +SKIP
        >>> res.summary()["deconvnet"]["spearman"]          # doctest: +SKIP
        [1.0, 0.93, 0.91, 0.88, 0.87]
    """
    if mode not in ("cascade", "independent"):
        raise InputError(unknown_name("mode", str(mode), ("cascade", "independent")))
    rule_names = _check_rules(rules)
    xs = check_images(model, x, "x")
    target = output_layer(model, xs) if layer is None else check_layers(model, [layer])[0]
    shape = _layer_shape(model, xs, target)
    if channel is None:
        chans = _strongest_channels(model, xs, target)
    else:
        chans = _check_channels(channel, xs.shape[0], shape[0])
    chosen = _layers_to_randomise(model, xs, target, layers)
    top_down = list(reversed(chosen))
    groups: dict[str, tuple[str, ...]] = {}
    if max_steps is not None:
        check_positive_int("max_steps", max_steps)
    if max_steps is not None and mode == "cascade" and len(top_down) > max_steps:
        n = len(top_down)
        ends = sorted({-(-n * (j + 1) // max_steps) for j in range(max_steps)})  # ceil, to n
        starts = [0, *ends[:-1]]
        groups = {top_down[e - 1]: tuple(top_down[a:e]) for a, e in zip(starts, ends, strict=True)}
        top_down = [top_down[e - 1] for e in ends]
    steps = ("trained", *top_down)
    work = _copy_model(model)
    generator = torch.Generator().manual_seed(int(seed))
    recs = _project_randomised(
        work, xs, target, chans, rule_names, steps, mode, generator, progress, groups
    )
    ref = recs[:, :1].expand_as(recs)
    rho, sim = compare_maps(recs, ref, absolute)
    return SanityResult(
        layer=target,
        channels=chans,
        rules=rule_names,
        steps=steps,
        mode=mode,
        spearman=rho,
        ssim=sim,
        projections=recs,
        absolute=absolute,
        seed=int(seed),
        randomised=len(chosen) if groups else 0,
    )


@dataclass(frozen=True)
class SensitivityResult:
    """How much projections of different channels (or classes) of one layer differ per image.

    ``R`` rules, ``N`` images, ``K`` channels.

    Attributes:
        layer: the projected layer.
        channels: the ``K`` channels (classes, for an output layer) projected in every image.
        rules: the ReLU rules compared.
        spearman: ``[R, N, K, K]`` Spearman rank correlation between the maps of channels
            ``i`` and ``j`` (1 on the diagonal unless a map is all zero: NaN).
        ssim: ``[R, N, K, K]`` SSIM between them.
        projections: ``[R, N, K, C, H, W]``.
        absolute: whether maps were compared as absolute values.
    """

    layer: str
    channels: tuple[int, ...]
    rules: tuple[str, ...]
    spearman: Tensor
    ssim: Tensor
    projections: Tensor
    absolute: bool

    def _off_diagonal(self, t: Tensor) -> Tensor:
        k = t.shape[-1]
        mask = ~torch.eye(k, dtype=torch.bool)
        return t[..., mask]  # [R, N, K(K-1)]

    @property
    def mean_similarity(self) -> Tensor:
        """``[R]`` mean Spearman correlation between projections of different channels (NaNs
        skipped). High: the rule's pictures hardly depend on the channel chosen."""
        return self._off_diagonal(self.spearman).flatten(1).nanmean(dim=1)

    @property
    def mean_ssim(self) -> Tensor:
        """``[R]`` mean SSIM between projections of different channels."""
        return self._off_diagonal(self.ssim).flatten(1).nanmean(dim=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON (without the projections)."""
        return {
            "analysis": "sensitivity",
            "layer": self.layer,
            "channels": list(self.channels),
            "rules": list(self.rules),
            "absolute": self.absolute,
            "mean_spearman": dict(zip(self.rules, self.mean_similarity.tolist(), strict=True)),
            "mean_ssim": dict(zip(self.rules, self.mean_ssim.tolist(), strict=True)),
            "spearman": self.spearman.tolist(),
            "ssim": self.ssim.tolist(),
        }


def _sensitivity_channels(
    model: nn.Module,
    xs: Tensor,
    target: str,
    shape: tuple[int, ...],
    channels: Sequence[int] | None,
    max_channels: int,
) -> list[int]:
    """The channels to compare: ``channels``, else the first classes or the strongest maps."""
    if channels is None:
        k = min(max_channels, shape[0])
        if len(shape) == 1:
            chans = list(range(k))
        else:
            acts = layer_output(model, xs, target)
            peak = acts.flatten(2).amax(dim=2).mean(dim=0)
            chans = sorted(peak.topk(k).indices.tolist())
    else:
        chans = [int(c) for c in _check_channels(list(channels), len(list(channels)), shape[0])]
    if len(chans) < 2:
        raise InputError("give at least two channels to compare")
    return chans


def _project_channels(
    model: nn.Module,
    xs: Tensor,
    target: str,
    chans: list[int],
    rule_names: tuple[str, ...],
    progress: bool,
) -> Tensor:
    """``[R, N, K, C, H, W]``: every rule's projections of ``chans`` in every image."""
    from tqdm.auto import tqdm

    recs = torch.zeros((len(rule_names), xs.shape[0], len(chans), *xs.shape[1:]), dtype=xs.dtype)
    bar = tqdm(
        total=len(rule_names), desc="sensitivity", disable=not progress, unit="rule", leave=False
    )
    try:
        for r, rule in enumerate(rule_names):
            with attach(model, rule=rule) as dn:
                recs[r] = dn.project(xs, target, chans).cpu()
            bar.update(1)
    finally:
        bar.close()
    return recs


def sensitivity_check(
    model: nn.Module,
    x: Tensor,
    layer: str | None = None,
    channels: Sequence[int] | None = None,
    rules: Sequence[str] = DEFAULT_RULES,
    *,
    max_channels: int = 10,
    absolute: bool = True,
    progress: bool = True,
) -> SensitivityResult:
    """Mahendran & Vedaldi's check: do projections of different units differ on one image?

    Every image's projections for ``channels`` (the classes, at the output layer) are compared
    pairwise. Mahendran & Vedaldi found deconvnet pictures of different neurons (and classes)
    nearly identical -- they show the image's structure through the pooling switches more than
    the unit -- while gradients stay unit-specific.

    Args:
        model: the network.
        x: ``[N, C, H, W]`` images.
        layer: the layer; default: the output layer (class scores), so channels are classes.
        channels: the channels to project in every image; default: the first ``max_channels``
            classes for a ``[N, C]`` layer, else the ``max_channels`` channels with the largest
            mean (over images) peak activation.
        rules: the ReLU rules to compare.
        max_channels: how many channels the default takes.
        absolute: compare absolute maps.
        progress: show a progress bar.

    Returns:
        A :class:`SensitivityResult`; see ``mean_similarity``.

    Example:
        >>> res = sensitivity_check(model, x[:2])                          # doctest: +SKIP
        >>> dict(zip(res.rules, res.mean_similarity.tolist()))             # doctest: +SKIP
        {'deconvnet': 0.71, 'gradient': 0.12, 'guided': 0.80}
    """
    rule_names = _check_rules(rules)
    xs = check_images(model, x, "x")
    target = output_layer(model, xs) if layer is None else check_layers(model, [layer])[0]
    shape = _layer_shape(model, xs, target)
    if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 2:
        raise InputError(f"max_channels must be an integer >= 2, got {max_channels!r}")
    chans = _sensitivity_channels(model, xs, target, shape, channels, max_channels)
    recs = _project_channels(model, xs, target, chans, rule_names, progress)
    rho, sim = _pairwise(projection_map(recs, absolute), absolute)
    return SensitivityResult(
        layer=target,
        channels=tuple(chans),
        rules=rule_names,
        spearman=rho,
        ssim=sim,
        projections=recs,
        absolute=absolute,
    )


def _randomisation_summary(res: SanityResult) -> str:
    summary = res.summary()
    last = "; ".join(f"{r} {summary[r]['spearman'][-1]:.2f}" for r in res.rules)
    return f"Spearman with the trained projection once every layer is randomised: {last}"


def _sensitivity_summary(res: SensitivityResult) -> str:
    sims = "; ".join(
        f"{r} {float(v):.2f}" for r, v in zip(res.rules, res.mean_similarity, strict=True)
    )
    return f"mean Spearman between projections of different units: {sims}"


def _register() -> None:
    register_analysis(
        Analysis(
            name="sanity",
            result=SanityResult,
            figure="deconvviz.render.analyses:randomisation_figure",
            table="deconvviz.render.analyses:randomisation_table",
            compute=lambda model, x, y=None, **kw: randomisation_test(model, x, **kw),
            summary=_randomisation_summary,
            command="sanity",
            report=(
                ReportSection(
                    "Sanity check: cascading model randomisation. A deconvnet row that barely "
                    "changes as the layers are randomised from the top down means its pictures "
                    "are made by the architecture and the image (pooling switches, edges), not "
                    "by what the trained weights learned, so they cannot show what the network "
                    "learned (Adebayo et al., 2018; Mahendran & Vedaldi, 2016)",
                    "randomisation",
                    lambda i: randomisation_test(
                        i.model, i.few, progress=False, max_steps=REPORT_MAX_STEPS
                    ),
                    images=lambda i: len(i.few),
                    order=30,
                ),
            ),
        )
    )
    register_analysis(
        Analysis(
            name="sensitivity",
            result=SensitivityResult,
            figure="deconvviz.render.analyses:sensitivity_figure",
            table="deconvviz.render.analyses:sensitivity_table",
            compute=lambda model, x, y=None, **kw: sensitivity_check(model, x, **kw),
            summary=_sensitivity_summary,
            command="sensitivity",
            report=(
                ReportSection(
                    "Sanity check: class sensitivity of projections",
                    "sensitivity",
                    lambda i: sensitivity_check(i.model, i.few[:2], progress=False),
                    images=lambda i: min(2, len(i.few)),
                    order=40,
                ),
            ),
        )
    )


_register()
