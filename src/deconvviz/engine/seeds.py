"""What a projection may be asked for, checked once: the layer (it runs, it returns a projectable
tensor, the path to it has a rule), the model's mode, and the seeds (images, channels, positions,
values). Refusals are :class:`~deconvviz.base.errors.InputError` /
:class:`~deconvviz.base.errors.LayerError`
naming the fix; what is allowed but worth knowing is said once per handle as a
:class:`~deconvviz.engine.probe.DeconvvizWarning`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.base.checks import call_key, check_channels, split_call
from deconvviz.base.errors import InputError, LayerError, UnsupportedLayerError, unknown_name
from deconvviz.engine.probe import DeconvvizWarning, _LayerInfo, _Probe
from deconvviz.engine.support import has_no_rule

#: Layers whose forward depends on ``training`` (projections run in eval mode).
_MODE_DEPENDENT: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.dropout._DropoutNd,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass(frozen=True)
class Seeds:
    """The seeds of one projection, checked once at the door and trusted inside.

    Seed ``s`` is channel ``channels[s]`` of image ``images[s]``, at ``(rows[s], cols[s])`` of
    the feature map (``None``: each seed's strongest activation, which the scheduler finds; zeros
    for ``[N, C]`` vector layers), whose activation value is ``values[s]`` where known (each
    crop's value is checked against it). Index tensors are int64, on the CPU.
    """

    images: Tensor
    channels: Tensor
    rows: Tensor | None = None
    cols: Tensor | None = None
    values: Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: Tensor) -> Seeds:
        """The seeds ``idx`` (a CPU index tensor), in that order."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx.to(t.device)]

        rows, cols, values = pick(self.rows), pick(self.cols), pick(self.values)
        return Seeds(self.images[idx], self.channels[idx], rows, cols, values)


@dataclass
class Validator:
    """The checks of one handle: its modules by name, ``strict``, ``warn``, what was said."""

    modules: dict[str, nn.Module]
    strict: bool = False
    warn: bool = True
    warned: set[tuple[str, str]] = field(default_factory=set)

    def check_rules(self) -> None:
        """Refuse (strict) or warn about layers with no deconvnet rule."""
        no_rule = [n for n, m in self.modules.items() if has_no_rule(m)]
        if not no_rule:
            return
        listed = ", ".join(f"{n!r} ({type(self.modules[n]).__name__})" for n in no_rule)
        if self.strict:
            raise UnsupportedLayerError(
                f"strict mode: these layers have no deconvnet rule: {listed}; replace them by "
                "ReLU, or attach with strict=False to use their plain gradient"
            )
        if self.warn:
            warnings.warn(
                f"no deconvnet rule for {listed}: their plain gradient is used; "
                "attach(..., strict=True) refuses such models",
                DeconvvizWarning,
                stacklevel=4,
            )

    def layer(self, probe: _Probe, layer: str, known: list[str]) -> _LayerInfo:
        """The probe's record of ``layer``, once it is known to be projectable."""
        if not isinstance(layer, str):
            raise LayerError(f"layer must be a name as named_modules() spells it, got {layer!r}")
        info = self.layer_call(probe, layer, known)
        if info.out_shape is None:
            raise LayerError(
                f"layer {layer!r} does not return a tensor; pick one of its submodules"
            )
        if len(info.out_shape) not in (1, 3):
            raise LayerError(
                f"layer {layer!r} outputs shape [N, {', '.join(map(str, info.out_shape))}]; only "
                "[N, C, H, W] feature maps and [N, C] vectors can be projected"
            )
        self.check_path(probe, info, layer)
        self.check_batch(info, layer)
        return info

    def seeds(
        self,
        x: Tensor,
        info: _LayerInfo,
        layer: str,
        image: Any,
        channel: Any,
        position: Any,
        values: Any,
    ) -> Seeds:
        """:meth:`~deconvviz.engine.deconvnet.Deconvnet.project_seeds`'s seeds, checked (and
        the model's mode)."""
        img, chan = seed_index(x, info, image, channel)
        rows, cols = seed_positions(info, layer, position, len(img))
        self.check_train_mode()
        return Seeds(img, chan, rows, cols, seed_values(values, rows, x.dtype, len(img)))

    def grid(
        self, info: _LayerInfo, layer: str, n_images: int, channel: Any, position: Any
    ) -> tuple[Seeds, bool]:
        """:meth:`~deconvviz.engine.deconvnet.Deconvnet.project`'s seeds, checked (and the
        model's mode): each channel of ``channel`` in each image (image-major), at ``position``
        or (``None``) the strongest; and whether ``channel`` was one channel, not a list."""
        assert info.out_shape is not None
        chans, single = check_channels(channel, info.out_shape[0])
        pos = one_position(info, layer, position)
        self.check_train_mode()
        k = len(chans)
        images = torch.arange(n_images).repeat_interleave(k)
        channels = torch.tensor(chans, dtype=torch.long).repeat(n_images)
        if pos is None:
            return Seeds(images, channels), single
        rows = torch.full((n_images * k,), pos[0], dtype=torch.long)
        cols = torch.full((n_images * k,), pos[1], dtype=torch.long)
        return Seeds(images, channels, rows, cols), single

    def check_batch(self, info: _LayerInfo, layer: str) -> None:
        """Refuse (strict) or say once that a layer's activations depend on the whole batch."""
        if not info.batch_stats:
            return
        where = ", ".join(repr(n or "forward") for n in info.batch_stats)
        if self.strict:
            raise UnsupportedLayerError(
                f"strict mode: the path to {layer!r} normalises with the batch's own statistics "
                f"({where}: BatchNorm without running statistics), so every activation and its "
                "projection depend on which images share the batch; give the layer running "
                "statistics (track_running_stats=True), or attach with strict=False"
            )
        self.warn_once(
            ("batch", layer),
            f"the path to {layer!r} normalises with the batch's own statistics ({where}): its "
            "activations and projections depend on which images share the batch; each call "
            "projects with the whole batch it is given (no crops), so another batch gives "
            "another answer; attach(..., strict=True) refuses this",
        )

    def check_train_mode(self) -> None:
        """Say once that a model in train() mode is projected in eval mode."""
        layers = [
            n
            for n, m in self.modules.items()
            if m.training
            and isinstance(m, _MODE_DEPENDENT)
            and getattr(m, "track_running_stats", True)  # batch statistics either way
        ]
        if not layers:
            return
        shown = ", ".join(repr(n) for n in layers[:6]) + (
            f" (+{len(layers) - 6} more)" if len(layers) > 6 else ""
        )
        self.warn_once(
            ("train", ""),
            f"the model is in train() mode; deconvviz projects in eval mode (BatchNorm uses its "
            f"running statistics, Dropout is off), which changes {shown}; call model.eval() "
            "first to silence this",
        )

    def warn_once(self, key: tuple[str, str], message: str) -> None:
        if key in self.warned:
            return
        self.warned.add(key)
        warnings.warn(message, DeconvvizWarning, stacklevel=5)

    def layer_call(self, probe: _Probe, layer: str, known: list[str]) -> _LayerInfo:
        """Resolve ``"name"`` or ``"name:call"`` to one call the forward pass makes."""
        name, call = split_call(layer)
        if name not in self.modules:
            raise LayerError(unknown_name("layer", layer, known))
        info = probe.layers.get(name)
        if info is None:
            raise LayerError(
                f"layer {name!r} is not called by the model's forward pass, so it has no "
                "activations; pick one of the layers that run: " + ", ".join(probe.order[:12])
            )
        if call is None and info.calls > 1:
            raise LayerError(
                f"layer {layer!r} is called {info.calls} times per forward pass (a shared module), "
                f"so its activations are ambiguous; name one call: '{name}:0' ... "
                f"'{name}:{info.calls - 1}', in the order they run"
            )
        if call is None:
            return info
        if call >= info.calls:
            raise LayerError(
                f"layer {name!r} is called {info.calls} time(s) per forward pass; its calls "
                f"are '{name}:0' ... '{name}:{info.calls - 1}'"
            )
        return probe.layers[call_key(name, call)]

    def check_path(self, probe: _Probe, info: _LayerInfo, layer: str) -> None:
        """Refuse (strict) or warn once about activations with no rule on the path to a layer."""
        unsupported = [e for e in probe.events[: info.events_before] if not e.supported]
        if not unsupported:
            return
        where = ", ".join(sorted({f"{e.func} in {e.module or 'forward'!r}" for e in unsupported}))
        if self.strict:
            raise UnsupportedLayerError(
                f"strict mode: the path to {layer!r} calls activations with no deconvnet rule "
                f"({where}); use ReLU, or attach with strict=False to use their plain gradient"
            )
        key = (layer, where)
        # what the engine cannot see through is said even where warn=False (which only hides
        # the plain activations without a rule, tanh and the like, that the caller knows of)
        hidden = any("(" in e.func for e in unsupported)
        checked = ""
        if any("unknown type" in e.func for e in unsupported):
            checked = (
                " (a layer of unknown type is checked by tracing its forward: it gets the "
                "exact reverse step when every torch call it makes is linear in its input, a "
                "flip, a crop, a scaling; a ReLU inside it gets the rule)"
            )
        if (self.warn or hidden) and key not in self.warned:
            self.warned.add(key)
            warnings.warn(
                f"no deconvnet rule for {where} on the path to {layer!r}: their plain "
                f"gradient is used{checked}; attach(..., strict=True) refuses this",
                DeconvvizWarning,
                stacklevel=5,
            )


def seed_index(x: Tensor, info: _LayerInfo, image: Any, channel: Any) -> tuple[Tensor, Tensor]:
    """The seeds' image and channel indices, checked, as CPU tensors."""
    assert info.out_shape is not None
    img = torch.as_tensor(image, dtype=torch.long).flatten().cpu()
    chan = torch.as_tensor(channel, dtype=torch.long).flatten().cpu()
    if len(img) != len(chan) or len(img) == 0:
        raise InputError(
            f"image and channel must be equally long, non-empty lists (got {len(img)} and "
            f"{len(chan)})"
        )
    if int(img.min()) < 0 or int(img.max()) >= x.shape[0]:
        raise InputError(f"image indices must lie in 0..{x.shape[0] - 1} (x has {x.shape[0]})")
    check_channels(chan.tolist(), info.out_shape[0])
    return img, chan


def seed_positions(
    info: _LayerInfo, layer: str, position: Any, n_seeds: int
) -> tuple[Tensor | None, Tensor | None]:
    """The seeds' rows and columns, checked; ``None`` when not given (the strongest)."""
    assert info.out_shape is not None
    if position is None:
        return None, None
    if len(info.out_shape) != 3:
        raise InputError(f"layer {layer!r} outputs vectors, which have no positions")
    pos = torch.as_tensor(position, dtype=torch.long).reshape(n_seeds, 2).cpu()
    rows, cols = pos[:, 0], pos[:, 1]
    fh, fw = info.out_shape[1:]
    if not (((rows >= 0) & (rows < fh) & (cols >= 0) & (cols < fw)).all()):
        raise InputError(f"positions must lie in the {fh}x{fw} feature map of {layer!r}")
    return rows, cols


def seed_values(
    values: Any, rows: Tensor | None, dtype: torch.dtype, n_seeds: int
) -> Tensor | None:
    """The seeds' given activation values, checked (one per seed, only with positions)."""
    if values is None:
        return None
    if rows is None:
        raise InputError("values= needs position= (the values of the seeds there)")
    given = torch.as_tensor(values, dtype=dtype).flatten()
    if len(given) != n_seeds:
        raise InputError(f"values must hold one value per seed ({n_seeds})")
    return given


def one_position(info: _LayerInfo, layer: str, position: Any) -> tuple[int, int] | None:
    """:meth:`~deconvviz.engine.deconvnet.Deconvnet.project`'s ``position``, checked."""
    assert info.out_shape is not None
    if len(info.out_shape) != 3:
        if position is not None:
            raise InputError(
                f"layer {layer!r} outputs [N, {info.out_shape[0]}] vectors, which have no "
                "positions; drop position="
            )
        return None
    if position is None:
        return None
    try:
        r, c = (int(p) for p in position)
    except (TypeError, ValueError):
        raise InputError(f"position must be a (row, col) pair, got {position!r}") from None
    h, w = info.out_shape[1:]
    if not (0 <= r < h and 0 <= c < w):
        raise InputError(
            f"position {(r, c)} is outside the {h}x{w} feature map of {layer!r} "
            f"(rows 0..{h - 1}, cols 0..{w - 1})"
        )
    return r, c
