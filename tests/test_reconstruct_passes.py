"""``reconstruct_images`` runs the batch forward once per layer to find the strongest
activations, and the engine does not search again (issue 19: checks and passes once).

A wrapper module counts the model's forward calls; the passes that read values (no gradient) on
the whole batch are the searches. The projections themselves run on receptive-field crops, or
with gradients on whole images, and are not searches."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import deconvviz


class Counted(nn.Module):
    """``net`` with every forward call's input recorded (its shape, whether it needs grad)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((tuple(x.shape), x.requires_grad))
        return self.net(x)


def _model() -> Counted:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )
    return Counted(net.double().eval())


def test_each_layer_is_searched_with_one_forward_pass_of_the_batch() -> None:
    model = _model()
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    layers = ["net.0", "net.4", "net.7"]  # crops, crops, a vector layer (whole images)
    res = deconvviz.reconstruct_images(model, x, layers, progress=False)
    searches = [c for c in model.calls if c == (tuple(x.shape), False)]
    assert len(searches) == len(layers), model.calls
    # and the answer is the engine's own search's
    with deconvviz.attach(model, warn=False) as dn:
        for layer in layers:
            n_ch = dn.layer_output(x, layer).shape[1]
            ref = dn.project(x, layer, list(range(n_ch)))
            assert ref.abs().max() > 0
            torch.testing.assert_close(res[layer].reconstructions, ref, rtol=1e-12, atol=1e-12)
