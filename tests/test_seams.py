"""Exact at every seam: every public entry that projects, on a zoo of small models with the
non-local traps, equals a full-image, whole-batch computation, or says (a DeconvvizWarning)
why it cannot.

The oracle is written here, apart from the library: a float64 copy of the model whose ReLUs
(however the model spells them) are replaced by an autograd function with the deconvnet's ReLU
backward ``relu(g)``; the whole batch runs forward at once and each seed (one activation, its
own value) walks back on its own through ``torch.autograd.grad``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import deconvviz
from deconvviz import DeconvvizWarning
from deconvviz.analyses.reconstruct import reconstruct_dataset, reconstruct_images
from deconvviz.analyses.scan import project_layer, top_activations
from deconvviz.analyses.topk import project_top
from deconvviz.base.errors import UnsupportedLayerError
from deconvviz.engine.crops import scatter_windows

TOL = 1e-6  # relative; the library runs in float64 here too


# ---------------------------------------------------------------------- activations of the zoo


class _PlainGradReLU(torch.autograd.Function):
    """A user's ReLU as a custom autograd.Function (the plain gradient as its backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class CustomReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _PlainGradReLU.apply(x)


class WhereReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, 0.0)


class MaskReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * (x > 0)


class OracleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return g.clamp(min=0)


class _Oracle(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return OracleReLU.apply(x)


_RELUS = (nn.ReLU, CustomReLU, WhereReLU, MaskReLU)


# ---------------------------------------------------------------------- the traps


class ShapeScalar(nn.Module):
    """A scalar that depends on the input's size (right on full images, wrong on crops)."""

    def forward(self, h: Tensor) -> Tensor:
        return h * (8 / h.shape[-1])


class MeanItem(nn.Module):
    """A scalar read out of the activations (the whole batch's mean)."""

    def forward(self, h: Tensor) -> Tensor:
        return h * h.mean().item()


class Net(nn.Module):
    """conv - act1 - pool - trap - conv - relu(target 'r2') - pool - conv - relu."""

    def __init__(self, act1: type[nn.Module] = nn.ReLU, trap: nn.Module | None = None) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = act1()
        self.p1 = nn.MaxPool2d(2)
        self.trap = trap if trap is not None else nn.Identity()
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.r2 = nn.ReLU()
        self.p2 = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(6, 5, 3, padding=1)
        self.r3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.trap(self.p1(self.r1(self.c1(x))))
        return self.r3(self.c3(self.p2(self.r2(self.c2(h)))))


class BigRF(nn.Module):
    """A receptive field (13 px) larger than the image (8 px)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 5, padding=2)
        self.r1 = nn.ReLU()
        self.p1 = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(4, 6, 5, padding=2)
        self.r2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.r2(self.c2(self.p1(self.r1(self.c1(x)))))


def _shape_hook(model: nn.Module) -> nn.Module:
    model.p1.register_forward_hook(lambda m, i, o: o * (o.shape[-1] / 8))
    return model


@dataclass(frozen=True)
class Model:
    name: str
    make: Callable[[], nn.Module]
    size: int = 16
    exact: bool = False  # a control: must equal the oracle without a warning


def _bn() -> nn.Module:
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.2, 0.2)
    return Net(trap=bn)


ZOO = [
    Model("plain", Net, exact=True),
    Model("big-rf", BigRF, size=8, exact=True),
    Model("shape-scalar", lambda: Net(trap=ShapeScalar())),
    Model("mean-item", lambda: Net(trap=MeanItem())),
    Model("bn-batch-stats", _bn),
    Model("shape-hook", lambda: _shape_hook(Net())),
    Model("custom-autograd-relu", lambda: Net(act1=CustomReLU)),
    Model("where-relu", lambda: Net(act1=WhereReLU), exact=True),
    Model("mask-relu", lambda: Net(act1=MaskReLU), exact=True),
]
LAYER = "r2"
CHANNELS = [0, 3]


def _build(spec: Model) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = spec.make().double().eval()
    x = torch.rand(3, 3, spec.size, spec.size, dtype=torch.float64)
    return model, x


# ---------------------------------------------------------------------- the oracle


def _oracle_model(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)  # keeps the user's hooks
    for name, m in list(twin.named_modules()):
        if isinstance(m, _RELUS):
            parent = twin.get_submodule(name.rpartition(".")[0]) if "." in name else twin
            setattr(parent, name.rpartition(".")[2], _Oracle())
    return twin


def _oracle_out(model: nn.Module, x: Tensor, layer: str) -> tuple[Tensor, Tensor, nn.Module]:
    """The layer's output on the whole batch (with autograd) and the input leaf."""
    twin = _oracle_model(model)
    got: list[Tensor] = []
    handle = twin.get_submodule(layer).register_forward_hook(lambda m, i, o: got.append(o))
    xin = x.detach().clone().requires_grad_(True)
    try:
        twin(xin)
    finally:
        handle.remove()
    return got[0], xin, twin


def oracle(
    model: nn.Module, x: Tensor, layer: str, seeds: list[tuple[int, int, int, int]]
) -> Tensor:
    """``[S, C, H, W]``: seed ``(n, c, r, col)`` projected on the whole batch, image ``n``."""
    out, xin, _ = _oracle_out(model, x, layer)
    res = []
    for n, c, r, col in seeds:
        seed = torch.zeros_like(out)
        seed[n, c, r, col] = out[n, c, r, col].detach()
        (g,) = torch.autograd.grad(out, xin, seed, retain_graph=True)
        res.append(g[n])
    return torch.stack(res)


def strongest(model: nn.Module, x: Tensor, layer: str, n: int, c: int) -> tuple[int, int]:
    out, _, _ = _oracle_out(model, x, layer)
    flat = out[n, c].detach().flatten()
    i = int(flat.argmax())
    return i // out.shape[-1], i % out.shape[-1]


# ---------------------------------------------------------------------- the entries


def _uncanvas(canvas: Tensor, field: tuple[int, ...], size: tuple[int, int]) -> Tensor:
    """A project_top canvas put back into a zero image at the place it shows."""
    h, w = size
    y0, x0, y1, x1 = field
    oy = y0 if y1 - y0 <= h else max(y0, 0)
    ox = x0 if x1 - x0 <= w else max(x0, 0)
    big = canvas.new_zeros((canvas.shape[0], h + 2 * canvas.shape[1], w + 2 * canvas.shape[2]))
    py, px = canvas.shape[1], canvas.shape[2]
    big[:, py + oy : py + oy + canvas.shape[1], px + ox : px + ox + canvas.shape[2]] = canvas
    return big[:, py : py + h, px : px + w]


def _tops(model, x, res_recs, positions, indices, chans) -> tuple[Tensor, Tensor]:
    """Library canvases back in image space, beside the oracle, for top-k results."""
    rf = deconvviz.receptive_field(model, LAYER, tuple(x.shape))
    size = (x.shape[-2], x.shape[-1])
    got, seeds = [], []
    for ci, c in enumerate(chans):
        for j in range(indices.shape[1]):
            n = int(indices[c, j])
            if n < 0:
                continue
            r, col = (int(v) for v in positions[c, j])
            field = (0, 0, *size)  # no receptive field: the canvas is the image
            if rf is not None:
                field = tuple(int(v) for v in rf.boxes(torch.tensor([r, col]), clip=False))
            got.append(_uncanvas(res_recs[ci, j], field, size))
            seeds.append((n, c, r, col))
    return torch.stack(got), oracle(model, x, LAYER, seeds)


def e_project(model, x):
    rec = deconvviz.attach(model).project(x, LAYER, CHANNELS)
    seeds = [(n, c, *strongest(model, x, LAYER, n, c)) for n in range(len(x)) for c in CHANNELS]
    return rec.reshape(-1, *x.shape[1:]), oracle(model, x, LAYER, seeds)


def e_project_position(model, x):
    col = min(5, x.shape[-1] // 2 - 1)
    rec = deconvviz.attach(model).project(x, LAYER, CHANNELS, position=(1, col))
    seeds = [(n, c, 1, col) for n in range(len(x)) for c in CHANNELS]
    return rec.reshape(-1, *x.shape[1:]), oracle(model, x, LAYER, seeds)


_SEEDS = [(0, 0, 1, 1), (2, 3, 5, 6), (1, 5, 7, 0), (2, 0, 3, 3)]


def _seeds_for(x: Tensor) -> list[tuple[int, int, int, int]]:
    last = x.shape[-1] // 2 - 1
    return [(n, c, min(r, last), min(col, last)) for n, c, r, col in _SEEDS]


def e_project_seeds(model, x):
    seeds = _seeds_for(x)
    img, chan = [s[0] for s in seeds], [s[1] for s in seeds]
    pos = [(s[2], s[3]) for s in seeds]
    rec = deconvviz.attach(model).project_seeds(x, LAYER, img, chan, pos)
    return rec, oracle(model, x, LAYER, seeds)


def e_project_seeds_strongest(model, x):
    seeds = _seeds_for(x)
    img, chan = [s[0] for s in seeds], [s[1] for s in seeds]
    rec = deconvviz.attach(model).project_seeds(x, LAYER, img, chan)
    full = [(n, c, *strongest(model, x, LAYER, n, c)) for n, c in zip(img, chan, strict=True)]
    return rec, oracle(model, x, LAYER, full)


def e_project_windows(model, x):
    seeds = _seeds_for(x)
    img, chan = [s[0] for s in seeds], [s[1] for s in seeds]
    pos = [(s[2], s[3]) for s in seeds]
    out = x.new_zeros((len(seeds), *x.shape[1:]))
    for idx, grads, boxes in deconvviz.attach(model).project_windows(x, LAYER, img, chan, pos):
        scatter_windows(out, idx, grads, boxes)
    return out, oracle(model, x, LAYER, seeds)


def _top(model, x):
    ds = TensorDataset(x)
    top = top_activations(model, DataLoader(ds, batch_size=len(x)), LAYER, k=2, progress=False)
    return ds, top


def e_project_top(model, x):
    ds, top = _top(model, x)
    proj = project_top(model, ds, top, channels=CHANNELS, progress=False)
    return _tops(model, x, proj.reconstructions, top.positions, top.indices, CHANNELS)


def e_project_layer(model, x):
    ds, top = _top(model, x)
    proj = project_layer(model, ds, top, progress=False, distributed=False)
    chans = list(range(top.channels))
    return _tops(model, x, proj.reconstructions, top.positions, top.indices, chans)


def e_reconstruct_images(model, x):
    res = reconstruct_images(model, x, [LAYER], CHANNELS, progress=False)[LAYER]
    seeds = [
        (n, c, *(int(v) for v in res.positions[n, ci]))
        for n in range(len(x))
        for ci, c in enumerate(CHANNELS)
    ]
    full = [(n, c, *strongest(model, x, LAYER, n, c)) for n, c, _, _ in seeds]
    assert [s[2:] for s in seeds] == [s[2:] for s in full]
    return res.reconstructions.reshape(-1, *x.shape[1:]), oracle(model, x, LAYER, full)


def e_reconstruct_dataset(model, x):
    ds = TensorDataset(x)
    res = reconstruct_dataset(
        model, ds, [LAYER], k=2, channels=CHANNELS, batch_size=len(x), progress=False
    )[LAYER]
    return _tops(
        model,
        x,
        res.reconstructions,
        _full_rows(res.positions, CHANNELS),
        _full_rows(res.indices, CHANNELS),
        CHANNELS,
    )


def _full_rows(t: Tensor, chans: list[int]) -> Tensor:
    """``t`` (rows for ``chans`` only) spread to rows indexed by channel number."""
    out = t.new_zeros((max(chans) + 1, *t.shape[1:])) - (1 if t.dim() == 2 else 0)
    out[torch.tensor(chans)] = t
    return out


ENTRIES: dict[str, Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]] = {
    "project": e_project,
    "project(position=)": e_project_position,
    "project_seeds": e_project_seeds,
    "project_seeds(strongest)": e_project_seeds_strongest,
    "project_windows": e_project_windows,
    "project_top": e_project_top,
    "project_layer": e_project_layer,
    "reconstruct_images": e_reconstruct_images,
    "reconstruct_dataset": e_reconstruct_dataset,
}


def rel_err(got: Tensor, want: Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("spec", ZOO, ids=[m.name for m in ZOO])
def test_entry_equals_whole_batch_oracle_or_warns(spec: Model, entry: str) -> None:
    model, x = _build(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, want = ENTRIES[entry](model, x)
    warned = [w for w in caught if issubclass(w.category, DeconvvizWarning)]
    assert want.abs().max() > 0, "the oracle projected nothing: a useless case"
    err = rel_err(got, want)
    if spec.exact:
        assert err < TOL and not warned, (err, [str(w.message) for w in warned])
    else:
        assert err < TOL or warned, f"{entry} on {spec.name}: rel. err {err:.3g}, no warning"


def test_project_top_canvas_holds_the_whole_projection_when_the_field_is_larger():
    """Item 1 on its own: RF 13 px on 8 px images; sum |canvas| equals the full projection's."""
    model, x = _build(ZOO[1])
    rf = deconvviz.receptive_field(model, LAYER, tuple(x.shape))
    assert rf is not None and rf.size[0] > x.shape[-1]
    ds, top = _top(model, x)
    proj = project_top(model, ds, top, progress=False)
    for c in range(top.channels):
        for j in range(top.k):
            n = int(top.indices[c, j])
            r, col = (int(v) for v in top.positions[c, j])
            want = oracle(model, x, LAYER, [(n, c, r, col)])
            assert abs(float(proj.reconstructions[c, j].abs().sum() - want.abs().sum())) <= (
                1e-9 * float(want.abs().sum())
            ), (c, j)


def test_shipped_zfnet_relu5_canvases_hold_the_whole_projection():
    """The shipped zfnet-cifar: relu5's receptive field (39 px) is larger than its 32 px
    images; each canvas must hold all of the projection (against the float64 oracle)."""
    from deconvviz.sources.pretrained import load_pretrained

    model, _ = load_pretrained()
    model = model.double()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    ds = TensorDataset(x)
    top = top_activations(model, DataLoader(ds, batch_size=4), "relu5", k=2, progress=False)
    assert top.receptive_field is not None and top.receptive_field.size[0] > 32
    chans = [0, 7, 50]
    proj = project_top(model, ds, top, channels=chans, progress=False)
    # the oracle: autograd with relu(g) on the ReLU modules
    twin = _oracle_model(model)
    got: list[Tensor] = []
    twin.get_submodule("relu5").register_forward_hook(lambda m, i, o: got.append(o))
    for ci, c in enumerate(chans):
        for j in range(top.k):
            n = int(top.indices[c, j])
            r, col = (int(v) for v in top.positions[c, j])
            got.clear()
            xin = x[n : n + 1].clone().requires_grad_(True)
            twin(xin)
            out = got[0]
            seed = torch.zeros_like(out)
            seed[0, c, r, col] = out[0, c, r, col].detach()
            (g,) = torch.autograd.grad(out, xin, seed)
            whole, canvas = float(g.abs().sum()), float(proj.reconstructions[ci, j].abs().sum())
            assert whole > 0
            assert abs(canvas - whole) <= 1e-9 * whole, (c, j, canvas / whole)


def test_train_mode_is_said_once_naming_the_layers():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 2, 3)
    ).train()
    x = torch.rand(2, 3, 10, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with deconvviz.attach(model) as dn:
            dn.project(x, "4", 0)
            dn.project(x, "2", 1)
    said = [str(w.message) for w in caught if issubclass(w.category, DeconvvizWarning)]
    assert len(said) == 1 and "train() mode" in said[0]
    assert "'1'" in said[0] and "'3'" in said[0]
    assert model.training and model[1].training  # left as it was
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with deconvviz.attach(model.eval()) as dn:
            dn.project(x, "4", 0)


def test_strict_refuses_batch_statistics_and_custom_autograd_functions():
    for spec in ("bn-batch-stats", "custom-autograd-relu"):
        model, x = _build(next(m for m in ZOO if m.name == spec))
        with pytest.raises(UnsupportedLayerError, match="strict"):
            deconvviz.attach(model, strict=True).project(x, LAYER, 0)


def test_summary_does_not_claim_a_rule_through_a_custom_autograd_function():
    model, x = _build(next(m for m in ZOO if m.name == "custom-autograd-relu"))
    dn = deconvviz.attach(model)
    with pytest.warns(DeconvvizWarning, match="custom autograd.Function"):
        dn.project(x, LAYER, 0)
    text = dn.summary()
    assert "_PlainGradReLU.apply (a custom autograd.Function)" in text
    line = next(ln for ln in text.splitlines() if "clamp" in ln)
    assert "NO deconvnet rule" in line, text


class Flip(nn.Module):
    """A custom layer that only rearranges: exact under autograd, nothing to warn about."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.flip(x, dims=[-1])


class Square(nn.Module):
    """A custom layer that is not linear: its plain gradient is not a deconvnet step."""

    def forward(self, x: Tensor) -> Tensor:
        return x * x


def _weight_norm_net() -> nn.Module:
    from torch.nn.utils import parametrizations

    net = Net(trap=Flip())
    net.c1 = parametrizations.weight_norm(net.c1)
    net.c2 = parametrizations.weight_norm(net.c2)
    return net


def test_parametrized_convs_and_linear_custom_layers_are_exact_and_quiet():
    torch.manual_seed(0)
    model = _weight_norm_net().double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with deconvviz.attach(model, strict=True) as dn:
            rec = dn.project(x, LAYER, [0, 3], position=(2, 5))
            text = dn.summary()
    want = oracle(model, x, LAYER, [(n, c, 2, 5) for n in range(2) for c in (0, 3)])
    assert rel_err(rec.reshape(-1, *x.shape[1:]), want) < TOL
    assert "NO deconvnet rule" not in text


def test_a_nonlinear_custom_layer_is_warned_saying_what_was_checked():
    model = Net(trap=Square()).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with pytest.warns(DeconvvizWarning, match="unknown type: multiplies its input by itself"):
        deconvviz.attach(model).project(x, LAYER, 0)
    with pytest.raises(UnsupportedLayerError, match="strict"):
        deconvviz.attach(model, strict=True).project(x, LAYER, 0)
