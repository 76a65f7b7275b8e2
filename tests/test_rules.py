"""The public reverse-path building blocks, against autograd and hand-computed cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from deconvviz.base.errors import DeconvvizError, InputError
from deconvviz.engine.rules import (
    RULES,
    get_rule,
    rectify,
    register_rule,
    transposed_conv2d,
    unpool2d,
)


def test_rectify_is_relu_of_the_signal_not_a_mask():
    g = torch.tensor([-2.0, -0.0, 0.5, 3.0])
    assert torch.equal(rectify(g), torch.tensor([0.0, 0.0, 0.5, 3.0]))


def test_unpool_hand_computed_with_shared_switch():
    # 1x5 row, windows of 3 with stride 2 overlap at column 2, which holds the max of both
    x = torch.tensor([[[[1.0, 2.0, 9.0, 3.0, 4.0]]]], dtype=torch.float64)
    y, idx = F.max_pool2d(x, (1, 3), (1, 2), return_indices=True)
    assert idx.flatten().tolist() == [2, 2]
    g = torch.tensor([[[[10.0, 5.0]]]], dtype=torch.float64)
    out = unpool2d(g, idx, x.shape)
    assert out.flatten().tolist() == [0.0, 0.0, 15.0, 0.0, 0.0]  # the two values add up
    # F.max_unpool2d would keep only one of them: not the transpose of pooling
    assert F.max_unpool2d(g, idx, (1, 3), (1, 2), output_size=x.shape).flatten()[2] != 15.0


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(2, 2, 0), (3, 2, 0), (3, 2, 1), (3, 1, 1)]
)
def test_unpool_is_the_exact_transpose_of_max_pooling(kernel, stride, padding):
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    x = torch.randn(2, 3, 13, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    y, idx = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (ref,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(unpool2d(g, idx, x.shape[-2:]), ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups", "size"),
    [(1, 0, 1, 1, (9, 9)), (2, 1, 1, 1, (10, 9)), (3, 2, 1, 2, (14, 13)), (1, 2, 2, 1, (11, 12))],
)
def test_transposed_conv_is_the_adjoint_of_conv(stride, padding, dilation, groups, size):
    gen = torch.Generator().manual_seed(stride + 7 * padding)
    x = torch.randn(2, 4, *size, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // groups, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (ref,) = torch.autograd.grad(y, x, g)
    out = transposed_conv2d(
        g, w, size, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_building_block_errors():
    with pytest.raises(InputError, match="same shape"):
        unpool2d(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3, dtype=torch.long), (4, 4))
    with pytest.raises(InputError, match="cannot come from an input of size"):
        transposed_conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(2, 1, 3, 3), (20, 20))


def test_rule_registry():
    g = torch.tensor([-1.0, 2.0, -3.0, 4.0])
    mask = torch.tensor([True, False, True, True])
    assert get_rule("deconvnet")(g, mask).tolist() == [0.0, 2.0, 0.0, 4.0]
    assert get_rule("gradient")(g, mask).tolist() == [-1.0, 0.0, -3.0, 4.0]
    assert get_rule("guided")(g, mask).tolist() == [0.0, 0.0, 0.0, 4.0]
    with pytest.raises(DeconvvizError, match="already registered"):
        register_rule("deconvnet", lambda g, m: g, "twin")
    assert set(RULES) >= {"deconvnet", "gradient", "guided"}


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"), [(1, 2, 1, 1), (2, 1, 1, 1), (3, 0, 2, 2)]
)
def test_placed_filters_equal_the_transposed_conv_of_a_one_hot_seed(
    stride, padding, dilation, groups
):
    from deconvviz.engine import place_filters

    torch.manual_seed(stride)
    conv = torch.nn.Conv2d(4, 6, 3, stride, padding, dilation, groups).double()
    size = (13, 11)
    out = conv(torch.zeros(1, 4, *size, dtype=torch.float64))
    h, w = out.shape[-2:]
    seeds = [(0, 0, 0), (5, h - 1, w - 1), (3, h // 2, 1), (2, 0, w - 1)]
    chan, row, col = (torch.tensor(v) for v in zip(*seeds, strict=True))
    value = torch.tensor([1.5, -2.0, 0.25, 3.0], dtype=torch.float64)
    placed = place_filters(conv, (1, 4, *size), chan, row, col, value)
    for s, (c, r, q) in enumerate(seeds):
        one_hot = torch.zeros(1, 6, h, w, dtype=torch.float64)
        one_hot[0, c, r, q] = value[s]
        ref = transposed_conv2d(
            one_hot,
            conv.weight.detach(),
            size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
        )
        torch.testing.assert_close(placed[s : s + 1], ref, rtol=0, atol=1e-14)


def test_rules_are_objects_in_one_registry():
    from deconvviz.engine.rules import Rule, describe_rule, rule_names, uses_mask

    deconv = get_rule("deconvnet")
    assert isinstance(deconv, Rule) and deconv.name == "deconvnet" and not deconv.needs_mask
    assert uses_mask("guided") and uses_mask(get_rule("gradient")) and not uses_mask(deconv)
    assert rule_names()[:3] == ["deconvnet", "gradient", "guided"]
    assert describe_rule("guided") == get_rule("guided").description
    with pytest.raises(InputError, match="unknown rule"):
        get_rule("nope")
    with pytest.raises(DeconvvizError, match="already registered"):
        register_rule(Rule("guided", lambda g, m: g, "twin"))


def test_a_registered_rule_is_usable_from_attach_and_the_cli():
    import deconvviz
    from deconvviz.sources.models import LeNet5
    from deconvviz_cli.main import cli

    rule = register_rule(
        "abs-test", lambda g, m: g.abs(), "absolute value: |signal|", uses_mask=False
    )
    try:
        torch.manual_seed(0)
        model = LeNet5(in_channels=1, image_size=28).double().eval()
        x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
        with deconvviz.attach(model, rule="abs-test") as dn:
            assert dn.project(x, "conv2", 3).shape == x.shape
            assert "absolute value" in dn.summary()
        res = CliRunner().invoke(
            cli,
            [
                "inspect",
                "--model",
                "deconvviz.sources.models:LeNet5",
                "--model-arg",
                "in_channels=1",
            ]
            + ["--model-arg", "image_size=28", "--rule", rule.name],
        )
        assert res.exit_code == 0, res.output
        assert "rule 'abs-test'" in res.stdout and "absolute value: |signal|" in res.stdout
        assert "abs-test" in CliRunner().invoke(cli, ["reconstruct", "--help"]).stdout
    finally:
        RULES.pop("abs-test")
    res = CliRunner().invoke(cli, ["inspect", "--rule", "abs-test"])
    assert res.exit_code == 2 and "abs-test" in res.stderr
