"""Checkpoints in the oldest layouts we can write honestly load as PyTorch loads them.

* no BatchNorm ``num_batches_tracked`` (PyTorch < 0.4.1 did not have it), with the state dict's
  ``_metadata`` absent (a plain dict) or present and saying BatchNorm version 1 (what such a
  PyTorch wrote): ``load_state_dict`` fills the counter, so deconvviz must too, in every command;
* ``module.`` keys under ``state_dict`` (DataParallel);
* a Lightning-style ``.ckpt``: ``model.``-prefixed weights under ``state_dict`` beside pickled
  hyper-parameters (an ``argparse.Namespace``, a config class), read weights-only without
  ``--trust-checkpoint``;
* a real mismatch still lists the missing and unexpected keys side by side.
"""

from __future__ import annotations

import argparse
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from deconvviz.base.errors import CheckpointError
from deconvviz.sources.loading import load_model
from test_loading import _run_commands

BN_MODEL = textwrap.dedent(
    """
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 4 * 4, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
            x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
            return self.fc(x.flatten(1))

    def build(num_classes=10):
        return Net(num_classes)
    """
)


class HParams:
    """A user's config class, pickled into a Lightning checkpoint's hyper-parameters."""

    def __init__(self) -> None:
        self.depth = 20


@pytest.fixture
def bn_model(tmp_path: Path) -> tuple[Path, nn.Module]:
    path = tmp_path / "bn_net.py"
    path.write_text(BN_MODEL)
    from deconvviz.sources.loading import build_from_spec

    torch.manual_seed(0)
    net = build_from_spec(f"{path}:build")
    with torch.no_grad():  # running statistics that differ from the defaults, so loading shows
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    return path, net.eval()


def _old_state(net: nn.Module, metadata: bool) -> dict[str, torch.Tensor]:
    """``net``'s weights as PyTorch < 0.4.1 saved them: no ``num_batches_tracked``; with
    ``metadata``, the ``_metadata`` of that PyTorch (BatchNorm at version 1)."""
    sd = net.state_dict()
    state = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert len(state) < len(sd)
    if metadata:
        meta = OrderedDict((k, dict(v)) for k, v in sd._metadata.items())  # type: ignore[attr-defined]
        for name, m in net.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                meta[name]["version"] = 1
        state._metadata = meta  # type: ignore[attr-defined]
    return state


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, sb[k]), k


@pytest.mark.parametrize("metadata", [False, True], ids=["no-metadata", "metadata-v1"])
@pytest.mark.parametrize("wrap", ["bare", "module-under-state_dict"])
def test_checkpoint_without_num_batches_tracked_loads(bn_model, tmp_path, metadata, wrap):
    path, net = bn_model
    state = _old_state(net, metadata)
    if wrap == "bare":
        obj: object = state
    else:
        prefixed = OrderedDict((f"module.{k}", v) for k, v in state.items())
        if metadata:
            prefixed._metadata = OrderedDict(  # type: ignore[attr-defined]
                (f"module.{k}" if k else "module", v)
                for k, v in state._metadata.items()  # type: ignore[attr-defined]
            )
        obj = {"state_dict": prefixed, "best_prec1": 91.7}
    ckpt = tmp_path / "old.th"
    torch.save(obj, ckpt)
    loaded = load_model(model=f"{path}:build", checkpoint=ckpt)
    _same_weights(loaded.model, net)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))  # eval: the running statistics were loaded


def test_checkpoint_without_num_batches_tracked_runs_every_command(bn_model, tmp_path):
    path, net = bn_model
    ckpt = tmp_path / "old.th"
    torch.save({"state_dict": _old_state(net, metadata=False)}, ckpt)
    said = _run_commands(tmp_path, path, ckpt)
    assert all(
        line.startswith("old.th: a dict with the weights under 'state_dict'") for line in said
    )


def test_lightning_checkpoint_with_pickled_hyper_parameters_loads_weights_only(bn_model, tmp_path):
    path, net = bn_model
    ckpt = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "epoch": 3,
            "pytorch-lightning_version": "2.2.0",
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"args": argparse.Namespace(lr=0.1), "cfg": HParams()},
        },
        ckpt,
    )
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(ckpt, weights_only=True)  # the layout really holds pickled objects
    loaded = load_model(model=f"{path}:build", checkpoint=ckpt)
    _same_weights(loaded.model, net)
    assert "stripped 'model.' (Lightning)" in loaded.message


def test_whole_pickled_model_is_still_refused_without_trust(bn_model, tmp_path):
    path, net = bn_model
    ckpt = tmp_path / "whole.pt"
    torch.save({"model": nn.Sequential(nn.Conv2d(3, 4, 3))}, ckpt)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model(model=f"{path}:build", checkpoint=ckpt)


def test_real_mismatch_lists_missing_and_unexpected_side_by_side(bn_model, tmp_path):
    path, net = bn_model
    state = OrderedDict(net.state_dict())
    state["head.weight"] = state.pop("fc.weight")
    ckpt = tmp_path / "renamed.pt"
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError) as err:
        load_model(model=f"{path}:build", checkpoint=ckpt)
    msg = str(err.value)
    assert "missing: fc.weight" in msg and "unexpected: head.weight" in msg
    assert "num_batches_tracked" not in msg
    # a model passed in is left as it was when its checkpoint does not fit
    mine = net.__class__()
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_model(model=mine, checkpoint=ckpt)
    for k, v in mine.state_dict().items():
        assert torch.equal(v, before[k]), k
