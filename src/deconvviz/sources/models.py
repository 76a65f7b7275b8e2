"""Example targets: the course's LeNet5 (CIFAR-10) and RNN/LSTM/GRU classifiers (MNIST).

Both models keep the configuration they were built from in ``model.config`` (a plain dict), so
that :func:`build_model` can rebuild them from a checkpoint.

Example::

    from deconvviz.sources.models import LeNet5, build_model

    net = LeNet5(in_channels=1, image_size=28)          # the course variant
    same = build_model(net.config)                      # same architecture, fresh weights
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from deconvviz.base.checks import check_positive_int
from deconvviz.base.errors import DeconvvizError, InputError, unknown_name

__all__ = [
    "LeNet5",
    "ZFNetCifar",
    "RNNClassifier",
    "MODELS",
    "build_model",
    "full_config",
    "register_model",
]

INITS = ("course", "pytorch")
CELLS = ("rnn", "lstm", "gru")


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(unknown_name(kind, str(value), choices))


class LeNet5(nn.Module):
    """The course's LeNet5: two 5x5 SAME conv + ReLU + 2x2 max-pool stages, FC 1024, dropout, FC.

    Submodules, called in this order: ``conv1`` (5x5, 32 filters, padding 2), ``relu1``,
    ``pool1`` (2x2), ``conv2`` (5x5, 64, padding 2), ``relu2``, ``pool2``, ``flatten``,
    ``fc1`` (to 1024), ``relu3``, ``dropout`` (p=0.5), ``fc2`` (to ``num_classes``).

    Args:
        in_channels: channels of the input images (1 for the course's greyscale variant, 3 for
            standard CIFAR-10).
        image_size: height and width of the (square) input images (28 or 32).
        num_classes: number of output classes.
        init: ``"course"`` (truncated normal std 0.1 cut at 2 std, biases 0.1, as the course's
            TensorFlow code did) or ``"pytorch"`` (PyTorch's default initialisation).

    Example::

        net = LeNet5(in_channels=3, image_size=32)
        logits = net(torch.rand(8, 3, 32, 32))   # [8, 10]
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        init: str = "course",
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("image_size", image_size)
        check_positive_int("num_classes", num_classes)
        _check_choice("init", init, INITS)
        if image_size < 4:
            raise InputError(f"image_size must be at least 4 (two 2x2 poolings), got {image_size}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.config: dict[str, Any] = {
            "model": "lenet5",
            "in_channels": in_channels,
            "image_size": image_size,
            "num_classes": num_classes,
            "init": init,
        }
        side = (image_size // 2) // 2
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * side * side, 1024)
        self.relu3 = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(1024, num_classes)
        if init == "course":
            self._course_init()

    def _course_init(self) -> None:
        with torch.no_grad():
            for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
                nn.init.trunc_normal_(layer.weight, mean=0.0, std=0.1, a=-0.2, b=0.2)
                nn.init.constant_(cast(torch.Tensor, layer.bias), 0.1)

    @staticmethod
    def _bad_input(expected: tuple[int, int, int], got: object) -> None:
        raise InputError(
            f"LeNet5 expects images [N, {expected[0]}, {expected[1]}, {expected[2]}], got {got}; "
            "batch single images with x.unsqueeze(0), or build the model with matching "
            "in_channels/image_size"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]`` for images ``[N, in_channels, S, S]``."""
        expected = (self.in_channels, self.image_size, self.image_size)
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else None
        if shape is None or len(shape) != 4 or shape[1] != self.in_channels:
            self._bad_input(expected, shape if shape is not None else type(x).__name__)
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        # The image size is checked here, where it matters (fc1), so that the conv layers also
        # run on crops (the deconvnet engine projects on receptive-field crops).
        if tuple(x.shape[-2:]) != (self.image_size // 4, self.image_size // 4):
            self._bad_input(expected, shape)
        x = self.flatten(x)
        x = self.dropout(self.relu3(self.fc1(x)))
        return self.fc2(x)


class RNNClassifier(nn.Module):
    """An image read row by row by a recurrent cell, its last output into a linear layer.

    An MNIST image ``[N, 1, 28, 28]`` (or ``[N, 28, 28]``) is 28 time steps of 28 pixels.

    Args:
        cell: ``"rnn"`` (tanh), ``"lstm"`` or ``"gru"``; the submodule is ``rnn``
            (``batch_first=True``), the output layer ``fc``.
        hidden: hidden size.
        input_size: pixels per time step (image width).
        num_classes: number of output classes.
        init: ``"course"`` (default; as the course's TensorFlow cells did it: recurrent weights
            Glorot-uniform over the concatenated ``[input, hidden]`` kernel, bound
            ``sqrt(6 / ((input_size + hidden) + gates * hidden))``, biases zero except the LSTM
            forget gate and the GRU reset/update gates (1), output layer weights and bias
            N(0, 1)) or ``"pytorch"`` (PyTorch's defaults).

    Example::

        net = RNNClassifier(cell="gru", hidden=256)
        logits = net(torch.rand(8, 1, 28, 28))      # [8, 10]
        states = net.hidden_states(torch.rand(8, 28, 28))  # [8, 28, 256]
    """

    def __init__(
        self,
        cell: str = "rnn",
        hidden: int = 128,
        input_size: int = 28,
        num_classes: int = 10,
        init: str = "course",
    ) -> None:
        super().__init__()
        _check_choice("cell", cell, CELLS)
        check_positive_int("hidden", hidden)
        check_positive_int("input_size", input_size)
        check_positive_int("num_classes", num_classes)
        _check_choice("init", init, INITS)
        self.cell = cell
        self.hidden = hidden
        self.input_size = input_size
        self.config: dict[str, Any] = {
            "model": "rnn",
            "cell": cell,
            "hidden": hidden,
            "input_size": input_size,
            "num_classes": num_classes,
            "init": init,
        }
        self.rnn: nn.RNNBase
        if cell == "rnn":
            self.rnn = nn.RNN(input_size, hidden, nonlinearity="tanh", batch_first=True)
        elif cell == "lstm":
            self.rnn = nn.LSTM(input_size, hidden, batch_first=True)
        else:
            self.rnn = nn.GRU(input_size, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)
        if init == "course":
            self._course_init()

    def _course_init(self) -> None:
        h, n_in = self.hidden, self.input_size
        fan_in = n_in + h
        with torch.no_grad():
            w_ih, w_hh, b_ih, b_hh = (
                cast(torch.Tensor, getattr(self.rnn, name))
                for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
            )
            b_ih.zero_()
            b_hh.zero_()
            if self.cell == "gru":
                # TensorFlow's GRUCell: a [input+h, 2h] gates kernel (reset, update) and a
                # [input+h, h] candidate kernel, each Glorot-uniform; gate biases 1.
                blocks = [(slice(0, 2 * h), 2 * h), (slice(2 * h, 3 * h), h)]
                b_ih[: 2 * h] = 1.0
            else:
                gates = 4 if self.cell == "lstm" else 1
                blocks = [(slice(0, gates * h), gates * h)]
                if self.cell == "lstm":  # PyTorch gate order i, f, g, o; forget_bias=1 in TF
                    b_ih[h : 2 * h] = 1.0
            for rows, fan_out in blocks:
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                w_ih[rows].uniform_(-bound, bound)
                w_hh[rows].uniform_(-bound, bound)
            nn.init.normal_(self.fc.weight, 0.0, 1.0)
            nn.init.normal_(self.fc.bias, 0.0, 1.0)

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.input_size:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(
                f"RNNClassifier expects images [N, 1, T, {self.input_size}] or sequences "
                f"[N, T, {self.input_size}], got {got}; batch single images with x.unsqueeze(0)"
            )
        return x

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden state at every time step, ``[N, T, hidden]`` (for LSTM: ``h``, not ``c``)."""
        out, _ = self.rnn(self._sequence(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]`` from the last time step's output."""
        return self.fc(self.hidden_states(x)[:, -1])


class ZFNetCifar(nn.Module):
    """A Zeiler & Fergus-style network for 32x32 colour images (the shipped demo model).

    Five convolution layers with ReLU and *overlapping* 3x3/2 max pooling (as in the paper),
    BatchNorm after every convolution (an affine map in eval mode, which the deconvnet walks back
    exactly), and a small fully connected head. No residual connections. Submodules, called in
    this order::

        conv1 (5x5, w)   bn1 relu1 pool1 (3x3/2)     32 -> 16
        conv2 (3x3, 2w)  bn2 relu2 pool2 (3x3/2)     16 -> 8
        conv3 (3x3, 4w)  bn3 relu3
        conv4 (3x3, 4w)  bn4 relu4
        conv5 (3x3, 4w)  bn5 relu5 pool5 (3x3/2)      8 -> 4
        flatten fc6 (hidden) relu6 dropout fc7 (num_classes)

    Args:
        width: channels of conv1 (``w`` above; later layers have 2w and 4w).
        hidden: units of the fully connected layer ``fc6``.
        in_channels: input channels (3 for CIFAR-10).
        image_size: input height and width (a multiple of 8).
        num_classes: output classes.
        dropout: dropout probability before ``fc7``.

    Inputs are pixels in ``[0, 1]`` (no mean/std normalisation: ``bn1`` takes care of scale).

    Example::

        net = ZFNetCifar()
        logits = net(torch.rand(8, 3, 32, 32))   # [8, 10]
    """

    def __init__(
        self,
        width: int = 64,
        hidden: int = 256,
        in_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        for kind, value in (
            ("width", width),
            ("hidden", hidden),
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("num_classes", num_classes),
        ):
            check_positive_int(kind, value)
        if image_size % 8:
            raise InputError(
                f"image_size must be a multiple of 8 (three 3x3/2 poolings), got {image_size}"
            )
        if not (isinstance(dropout, int | float) and 0 <= dropout < 1):
            raise InputError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.image_size = in_channels, image_size
        self.config: dict[str, Any] = {
            "model": "zfnet-cifar",
            "width": width,
            "hidden": hidden,
            "in_channels": in_channels,
            "image_size": image_size,
            "num_classes": num_classes,
            "dropout": dropout,
        }
        chans = (in_channels, width, 2 * width, 4 * width, 4 * width, 4 * width)
        for i in range(1, 6):
            k = 5 if i == 1 else 3
            self.add_module(f"conv{i}", nn.Conv2d(chans[i - 1], chans[i], k, padding=k // 2))
            self.add_module(f"bn{i}", nn.BatchNorm2d(chans[i]))
            self.add_module(f"relu{i}", nn.ReLU(inplace=True))
            if i in (1, 2, 5):
                self.add_module(f"pool{i}", nn.MaxPool2d(3, stride=2, padding=1))
        side = image_size // 8
        self.flatten = nn.Flatten()
        self.fc6 = nn.Linear(chans[5] * side * side, hidden)
        self.relu6 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc7 = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv stack's output ``[N, 4w, S/8, S/8]`` (runs on crops of any size)."""
        for i in range(1, 6):
            x = getattr(self, f"relu{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i in (1, 2, 5):
                x = getattr(self, f"pool{i}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]`` for images ``[N, in_channels, S, S]``."""
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else None
        if shape is None or len(shape) != 4 or shape[1] != self.in_channels:
            self._bad_input(shape if shape is not None else type(x).__name__)
        x = self.features(x)
        # The size is checked where it matters (fc6), so the conv layers also run on crops.
        side = self.image_size // 8
        if tuple(x.shape[-2:]) != (side, side):
            self._bad_input(shape)
        return self.fc7(self.dropout(self.relu6(self.fc6(self.flatten(x)))))

    def _bad_input(self, got: object) -> None:
        s, c = self.image_size, self.in_channels
        raise InputError(
            f"ZFNetCifar expects images [N, {c}, {s}, {s}], got {got}; batch single images "
            "with x.unsqueeze(0), or resize them to the model's image_size"
        )


ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that registers a model factory under ``name`` for :func:`build_model`.

    Raises:
        DeconvvizError: if ``name`` is already registered (pick another name).
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise DeconvvizError(
                f"a model named {name!r} is already registered; register yours under another name"
            )
        MODELS[name] = factory
        return factory

    return decorate


register_model("lenet5")(LeNet5)
register_model("rnn")(RNNClassifier)
register_model("zfnet-cifar")(ZFNetCifar)


def _split_config(config: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(config, dict) or "model" not in config:
        raise InputError(
            f"a model config must be a dict with a 'model' key (one of {sorted(MODELS)}), "
            f"got {config!r}"
        )
    kwargs = dict(config)
    name = kwargs.pop("model")
    if name not in MODELS:
        raise InputError(unknown_name("model", str(name), sorted(MODELS)))
    return name, kwargs


def full_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every constructor default written out (so two spellings compare equal).

    Example::

        full_config({"model": "rnn", "cell": "gru"})
        # {'model': 'rnn', 'cell': 'gru', 'hidden': 128, 'input_size': 28, 'num_classes': 10,
        #  'init': 'course'}

    Raises:
        InputError: unknown model name or constructor argument.
    """
    name, kwargs = _split_config(config)
    try:
        params = inspect.signature(MODELS[name]).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return {"model": name, **kwargs}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {
        k: p
        for k, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(set(kwargs) - set(named))
    if unknown and not takes_any:
        raise InputError(
            f"model {name!r} takes no argument(s) {unknown}; its arguments are {sorted(named)}"
        )
    out: dict[str, Any] = {"model": name}
    for k, p in named.items():
        if k in kwargs:
            out[k] = kwargs[k]
        elif p.default is not inspect.Parameter.empty:
            out[k] = p.default
    out.update({k: v for k, v in kwargs.items() if k not in out})
    return out


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a fresh model from its config dict (``{"model": name, **constructor kwargs}``).

    Args:
        config: e.g. ``{"model": "rnn", "cell": "gru", "hidden": 256}``; ``model.config`` of a
            built model is such a dict.

    Returns:
        The model (fresh weights, train mode).

    Raises:
        InputError: unknown model name or constructor argument.
    """
    name, kwargs = _split_config(config)
    try:
        return MODELS[name](**kwargs)
    except TypeError as exc:
        raise InputError(
            f"cannot build model {name!r} from {kwargs!r}: {exc}; "
            "pass only the arguments its constructor takes"
        ) from exc
