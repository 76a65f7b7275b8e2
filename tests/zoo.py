"""The model zoo every engine test runs over, and an independent deconvnet oracle.

The oracle is written here, apart from the library: for chains it walks the layers explicitly
(record inputs and switches on the way up; rectify, unpool by scatter-add, transposed filters on
the way down); for graphs (ResNet) it reruns the network functionally with its own ReLU autograd
function. Both are dense (full image), float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


class FunctionalNet(nn.Module):
    """Calls F.relu, torch.relu, x.relu_() and F.max_pool2d functionally (no nn.ReLU at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2)
        x = torch.relu(self.conv2(x))
        x = self.conv3(x).relu_()
        return self.fc(x.flatten(1))


class _SliceBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:  # the CIFAR ResNet's option A: slice and zero-pad
            shortcut = F.pad(
                x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)
            )
        return F.relu(out + shortcut)


class SliceResNet(nn.Module):
    """A small CIFAR ResNet (He et al.'s option A): strided convolutions, no max pooling, a
    shortcut written as ``x[:, :, ::2, ::2]`` plus zero channels, functional ReLUs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(_SliceBlock(8, 8, 1))
        self.layer2 = nn.Sequential(_SliceBlock(8, 16, 2), _SliceBlock(16, 16, 1))
        self.layer3 = nn.Sequential(_SliceBlock(16, 32, 2))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class CourseLeNet5(nn.Module):
    """The course's LeNet5 spelled out in the tests (the library's own is tested too)."""

    def __init__(self, in_channels: int = 1, size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * (size // 4) ** 2, 1024)
        self.relu3 = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.children():
            x = m(x)
        return x


def seq_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),  # overlapping
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(8 * 2 * 2, 7),
    )


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    layers: tuple[str, ...]  # layers to test (spatial and not)
    chain: bool  # the explicit layer-by-layer oracle applies (modules run in order)


# torchvision's own networks; only their 100M-parameter classifier heads are shrunk, to keep the
# tests fast (the engine's behaviour there is that of any Linear layer, tested elsewhere).
def _alexnet() -> nn.Module:
    model = torchvision.models.alexnet(weights=None)
    model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(256 * 6 * 6, 10))
    return model


def _vgg11_bn() -> nn.Module:
    model = torchvision.models.vgg11_bn(weights=None)
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 10))
    return model


def _resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


CASES = [
    Case("sequential", seq_net, (2, 3, 28, 28), ("0", "1", "4", "5", "6", "8", "12"), True),
    Case(
        "lenet5",
        CourseLeNet5,
        (2, 1, 28, 28),
        ("conv1", "relu1", "pool1", "conv2", "relu2", "fc1", "fc2"),
        True,
    ),
    Case("functional", FunctionalNet, (2, 3, 16, 16), ("conv2", "conv3", "fc"), False),
    Case(
        "alexnet",
        _alexnet,
        (2, 3, 71, 71),
        ("features.1", "features.3", "features.4", "features.11"),
        True,
    ),
    Case(
        "vgg11_bn",
        _vgg11_bn,
        (2, 3, 32, 32),
        ("features.6", "features.8", "features.13", "features.20"),
        True,
    ),
    Case(
        "resnet18",
        _resnet18,
        (2, 3, 40, 40),
        ("conv1", "relu", "layer1.1", "layer2.0.conv2", "layer2.0", "layer3.1.bn2"),
        False,
    ),
]


def build(case: Case, seed: int = 0) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(seed)
    model = case.build().double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    _randomise_bn(model, gen)
    x = torch.rand(case.input_shape, generator=gen, dtype=torch.float64)
    return model, x


# ------------------------------------------------------------------------ the oracle


class OracleReLU(torch.autograd.Function):
    """ReLU whose backward is chosen by name; used by the graph oracle."""

    @staticmethod
    def forward(ctx, x, rule):  # type: ignore[override]
        ctx.rule = rule
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        mask = (out > 0).to(g.dtype)
        if ctx.rule == "deconvnet":
            return g.clamp(min=0), None
        if ctx.rule == "gradient":
            return g * mask, None
        return g.clamp(min=0) * mask, None


def chain_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf layers in the order a chain model runs them, with dotted names."""
    if isinstance(model, torchvision.models.AlexNet | torchvision.models.VGG):
        out = [(f"features.{i}", m) for i, m in enumerate(model.features)]
        return out  # the oracle stops at the features
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def _seed_like(h: Tensor, seeds: list[tuple[int, int, int, int]]) -> Tensor:
    """Seed tensor for a batch whose item s is seed s: that activation's value, zeros elsewhere."""
    g = torch.zeros_like(h)
    s = torch.arange(len(seeds))
    ch = torch.tensor([c for _, c, _, _ in seeds])
    if h.dim() == 4:
        r = torch.tensor([r for _, _, r, _ in seeds])
        c = torch.tensor([c for _, _, _, c in seeds])
        g[s, ch, r, c] = h[s, ch, r, c].detach()
    else:
        g[s, ch] = h[s, ch].detach()
    return g


@torch.no_grad()
def chain_oracle(
    model: nn.Module,
    x: Tensor,
    layer: str,
    seeds: list[tuple[int, int, int, int]],
    rule: str = "deconvnet",
) -> Tensor:
    """Explicit layer-by-layer reverse path for chain models. seeds: (image, channel, row, col);
    row/col ignored for vector outputs. Each seed is one item of a batch. Returns [S, C, H, W]."""
    mods = chain_modules(model)
    names = [n for n, _ in mods]
    stop = names.index(layer)
    h = x[torch.tensor([img for img, _, _, _ in seeds])]
    record = []
    for _name, m in mods[: stop + 1]:
        inp = h
        if isinstance(m, nn.MaxPool2d):
            h, idx = F.max_pool2d(
                h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True
            )
            record.append((m, inp, idx))
        else:
            h = m(h)
            record.append((m, inp, None))
    g = _seed_like(h, seeds)
    for m, inp, idx in reversed(record):
        if isinstance(m, nn.ReLU):
            if rule == "deconvnet":
                g = g.clamp(min=0)
            elif rule == "gradient":
                g = g * (inp > 0)
            else:
                g = g.clamp(min=0) * (inp > 0)
        elif isinstance(m, nn.Conv2d):
            natural = [
                (g.shape[-2 + d] - 1) * m.stride[d]
                - 2 * m.padding[d]
                + m.dilation[d] * (m.kernel_size[d] - 1)
                + 1
                for d in (0, 1)
            ]
            op = tuple(inp.shape[-2 + d] - natural[d] for d in (0, 1))
            g = F.conv_transpose2d(g, m.weight, None, m.stride, m.padding, op, m.groups, m.dilation)
        elif isinstance(m, nn.MaxPool2d):
            n, c = g.shape[:2]
            flat = torch.zeros(n, c, inp.shape[-2] * inp.shape[-1], dtype=g.dtype)
            flat.scatter_add_(2, idx.flatten(2), g.flatten(2))  # shared switches add up
            g = flat.view_as(inp)
        elif isinstance(m, nn.AvgPool2d):
            k = m.kernel_size
            g = g.repeat_interleave(k, 2).repeat_interleave(k, 3) / (k * k)
            full = torch.zeros_like(inp)
            full[..., : g.shape[-2], : g.shape[-1]] = g
            g = full
        elif isinstance(m, nn.BatchNorm2d):
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            g = g * scale.view(1, -1, 1, 1)
        elif isinstance(m, nn.Linear):
            g = g @ m.weight
        elif isinstance(m, nn.Flatten):
            g = g.view_as(inp)
        elif isinstance(m, nn.Dropout):
            pass
        else:
            raise AssertionError(f"oracle has no step for {type(m).__name__}")
    return g


def _resnet_forward(model: torchvision.models.ResNet, x: Tensor, layer: str, rule: str) -> Tensor:
    """torchvision's ResNet18 forward, rewritten with the oracle's ReLU; stops at ``layer``."""
    relu = lambda t: OracleReLU.apply(t, rule)  # noqa: E731
    caught: dict[str, Tensor] = {}

    def mark(name: str, t: Tensor) -> Tensor:
        caught.setdefault(name, t)
        return t

    h = mark("bn1", model.bn1(mark("conv1", model.conv1(x))))
    h = mark("relu", relu(h))
    h = mark("maxpool", model.maxpool(h))
    for lname in ("layer1", "layer2", "layer3", "layer4"):
        for bi, block in enumerate(getattr(model, lname)):
            p = f"{lname}.{bi}"
            identity = h
            out = mark(f"{p}.bn1", block.bn1(mark(f"{p}.conv1", block.conv1(h))))
            out = mark(f"{p}.relu:0", relu(out))
            out = mark(f"{p}.bn2", block.bn2(mark(f"{p}.conv2", block.conv2(out))))
            if block.downsample is not None:
                identity = mark(f"{p}.downsample", block.downsample(h))
            h = mark(f"{p}.relu:1", mark(p, relu(out + identity)))
            if layer in caught:
                return caught[layer]
        mark(lname, h)
        if layer in caught:
            return caught[layer]
    raise AssertionError(layer)


def _functional_forward(model: FunctionalNet, x: Tensor, layer: str, rule: str) -> Tensor:
    relu = lambda t: OracleReLU.apply(t, rule)  # noqa: E731
    h = model.conv1(x)
    h = F.max_pool2d(relu(h), 2)
    h = model.conv2(h)
    if layer == "conv2":
        return h
    h = relu(h)
    h = model.conv3(h)
    if layer == "conv3":
        return h
    return model.fc(relu(h).flatten(1))


def graph_oracle(
    model: nn.Module,
    x: Tensor,
    layer: str,
    seeds: list[tuple[int, int, int, int]],
    rule: str = "deconvnet",
) -> Tensor:
    """Autograd with the ReLU backward replaced, on a functional rewrite of the model."""
    fwd = _resnet_forward if isinstance(model, torchvision.models.ResNet) else _functional_forward
    xi = x[torch.tensor([img for img, _, _, _ in seeds])].clone().requires_grad_(True)
    h = fwd(model, xi, layer, rule)  # type: ignore[arg-type]
    (g,) = torch.autograd.grad(h, xi, _seed_like(h, seeds))
    return g


def oracle(
    case: Case,
    model: nn.Module,
    x: Tensor,
    layer: str,
    seeds: list[tuple[int, int, int, int]],
    rule: str = "deconvnet",
) -> Tensor:
    fn = chain_oracle if case.chain else graph_oracle
    return fn(model, x, layer, seeds, rule)


def layer_value(case: Case, model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The layer's output computed by the oracle's own forward (for choosing max positions)."""
    with torch.no_grad():
        if case.chain:
            h = x
            for name, m in chain_modules(model):
                h = m(h)
                if name == layer:
                    return h
            raise AssertionError(layer)
        fwd = (
            _resnet_forward if isinstance(model, torchvision.models.ResNet) else _functional_forward
        )
        return fwd(model, x, layer, "deconvnet")  # type: ignore[arg-type]


# ------------------------------------------------------------------ position-dependent models
#
# Each op below acts on conv1's output [N, C, H, W] with an effect that depends on the absolute
# position (rows 0..1, a column mask, a ramp, coordinate channels...). A receptive-field crop
# would see that effect at the crop's own rows 0..1 instead of the image's: crops must not be
# used downstream of them. The last ones are position-free controls (crops are valid there).


def _set_rows(x: Tensor) -> Tensor:
    x[:, :, :2] = 0
    return x


def _zero_view(x: Tensor) -> Tensor:
    x[:, :, :2].zero_()
    return x


def _narrow_zero(x: Tensor) -> Tensor:
    x.narrow(2, 0, 2).zero_()
    return x


def _scale_rows(x: Tensor) -> Tensor:
    x[:, :, :2] *= 0.5
    return x


def _row_mask_in_place(x: Tensor) -> Tensor:
    mask = (torch.arange(x.shape[2]) >= 2).to(x.dtype).view(1, 1, -1, 1)
    return x.mul_(mask)


def _col_mask(x: Tensor) -> Tensor:
    return x * (torch.arange(x.shape[3]) >= 2).view(1, 1, 1, -1)


def _row_ramp(x: Tensor) -> Tensor:
    return x + torch.linspace(0, 1, x.shape[2], dtype=x.dtype).view(1, 1, -1, 1)


def _coord_channel(x: Tensor) -> Tensor:
    n, _, h, w = x.shape
    rows = torch.linspace(-1, 1, h, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    return torch.cat([x[:, :-1], rows], 1)


def _cat_rows(x: Tensor) -> Tensor:
    return torch.cat([x[:, :, :2] * 0.5, x[:, :, 2:]], 2)


def _shift_pad(x: Tensor) -> Tensor:
    return F.pad(x, (1, 0, 1, 0))


def _index_select(x: Tensor) -> Tensor:
    keep = torch.arange(x.shape[3] - 1, -1, -1)
    return x.index_select(3, keep)


def _data_write(x: Tensor) -> Tensor:
    x.data[:, :, :2] = 0  # behind autograd's back
    return x


def _roll(x: Tensor) -> Tensor:
    return torch.roll(x, 1, 2)


def _channel_scale(x: Tensor) -> Tensor:  # control: per-channel constants are position-free
    scale = torch.linspace(0.5, 1.5, x.shape[1], dtype=x.dtype).view(1, -1, 1, 1)
    x[:, :1] = x[:, :1] * 2  # a channel write leaves positions alone
    return x * scale + torch.zeros(1, 1, x.shape[2], 1, dtype=x.dtype)  # a constant profile


def _identity(x: Tensor) -> Tensor:  # control
    return x


#: name -> (op, position-dependent?)
POSITION_OPS: dict[str, tuple[Callable[[Tensor], Tensor], bool]] = {
    "setitem": (_set_rows, True),
    "zero_view": (_zero_view, True),
    "narrow_zero": (_narrow_zero, True),
    "scale_rows": (_scale_rows, True),
    "row_mask_in_place": (_row_mask_in_place, True),
    "col_mask": (_col_mask, True),
    "row_ramp": (_row_ramp, True),
    "coord_channel": (_coord_channel, True),
    "cat_rows": (_cat_rows, True),
    "shift_pad": (_shift_pad, True),
    "index_select": (_index_select, True),
    "data_write": (_data_write, True),
    "roll": (_roll, True),
    "channel_scale": (_channel_scale, False),
    "identity": (_identity, False),
}


class PositionNet(nn.Module):
    """conv1 -> op -> relu1 -> conv2 -> bn2 -> relu2 -> pool -> conv3 -> relu3, where ``op`` is
    one of POSITION_OPS. conv1 is upstream of the op (crops stay valid); the rest is downstream."""

    def __init__(self, op: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.op = op
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.op(self.conv1(x)))
        h = self.relu2(self.bn2(self.conv2(h)))
        return self.relu3(self.conv3(self.pool(h)))


def position_net(name: str, seed: int = 0, size: int = 40) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(seed)
    model = PositionNet(POSITION_OPS[name][0]).double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    _randomise_bn(model, gen)
    x = torch.rand(2, 3, size, size, generator=gen, dtype=torch.float64)
    return model, x


class _OracleAct(nn.Module):
    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, x: Tensor) -> Tensor:
        return OracleReLU.apply(x, self.rule)


class _Stop(Exception):
    pass


def module_oracle(
    model: nn.Module,
    x: Tensor,
    layer: str,
    seeds: list[tuple[int, int, int, int]],
    rule: str = "deconvnet",
) -> Tensor:
    """Plain autograd on a copy of ``model`` whose nn.ReLU modules (its only activations) are the
    oracle's ReLU; stops at ``layer``'s output (after any hooks) and seeds it. Dense, full image.
    """
    import copy

    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, nn.ReLU):
            parent = twin.get_submodule(name.rpartition(".")[0]) if "." in name else twin
            setattr(parent, name.rpartition(".")[2], _OracleAct(rule))
    caught: list[Tensor] = []

    def stop(module: nn.Module, args: object, out: Tensor) -> None:
        caught.append(out)
        raise _Stop

    handle = twin.get_submodule(layer).register_forward_hook(stop)
    xi = x[torch.tensor([img for img, _, _, _ in seeds])].clone().requires_grad_(True)
    try:
        twin(xi)
    except _Stop:
        pass
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(caught[0], xi, _seed_like(caught[0], seeds))
    return g
