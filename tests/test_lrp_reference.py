"""The fast LRP engine agrees with the slow dense-matrix reference for every rule and init mode."""

from __future__ import annotations

import pytest
import torch
from lrp_reference import AddConstant, reference_lrp
from torch import nn

from mri_lrp.lrp import Explainer


def _net(dims: int) -> nn.Sequential:
    torch.manual_seed(dims)
    if dims == 1:
        layers = [nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(3, 4, 3, padding="same",
                  dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)]
    elif dims == 2:
        layers = [nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(3, 4, 3, padding=1, stride=2),
                  nn.ReLU(), nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3)]
    elif dims == 4:  # grouped 2D convs (signed input into a grouped first layer)
        layers = [nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, groups=2),
                  nn.ReLU(), nn.Flatten(), nn.Linear(54, 3)]
    else:
        layers = [nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(2, 3, 3, padding=1), nn.ReLU(),
                  nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 3)]
    net = nn.Sequential(*layers).double()
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.uniform_(m.bias, -0.3, 0.3)
    return net


INPUT = {1: (2, 8), 2: (1, 8, 8), 3: (1, 6, 6, 6), 4: (2, 8, 8)}
RULES = [
    {"rule": "zero"},
    {"rule": "epsilon", "epsilon": 0.1},
    {"rule": "gamma", "gamma": 0.25},
    {"rule": "gamma", "gamma": 1.0, "include_bias": True},
    {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0},
    {"rule": "alphabeta", "alpha": 1.0, "beta": 0.0, "include_bias": True},
    {"rule": "zplus"},
    {"rule": "box"},
    {"rule": "box", "low": -3.0, "high": 3.0},
    {"rule": "wsquare"},
    {"rule": "flat"},
]


def _compare(net: nn.Sequential, x: torch.Tensor, rules: list[dict], explainer: Explainer, init: str,
             constant_rule: dict | None = None) -> None:
    got = explainer(x, init=init)
    for i in range(x.shape[0]):
        want, r_out = reference_lrp(net, x[i], rules, target=int(got.target[i]), init=init,
                                    constant_rule=constant_rule)
        scale = want.abs().max()
        assert (got.relevance[i] - want).abs().max() <= 1e-6 * scale
        assert torch.allclose(got.output_relevance[i], r_out.sum(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3, 4])
@pytest.mark.parametrize("spec", RULES, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_every_rule_matches_dense_reference_with_signed_inputs(dims: int, spec: dict) -> None:
    net = _net(dims)
    torch.manual_seed(100 + dims)
    x = torch.randn(3, *INPUT[dims], dtype=torch.float64)
    params = {k: v for k, v in spec.items() if k != "rule"}
    explainer = Explainer(net, rule=spec["rule"], **params)
    n_layers = len(explainer.graph.sites)
    _compare(net, x, [spec] * n_layers, explainer, "prob")


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("init", ["prob", "logit", "sglrp"])
@pytest.mark.parametrize("rule", ["alphabeta", "epsilon"])
def test_every_init_mode_matches_dense_reference(dims: int, init: str, rule: str) -> None:
    net = _net(dims)
    x = torch.randn(2, *INPUT[dims], dtype=torch.float64)
    explainer = Explainer(net, rule=rule, epsilon=0.05)
    spec = {"rule": rule, "epsilon": 0.05}
    _compare(net, x, [spec] * len(explainer.graph.sites), explainer, init)


def test_composite_with_override_matches_reference_layer_by_layer() -> None:
    net = _net(2)
    x = torch.randn(2, *INPUT[2], dtype=torch.float64)
    explainer = Explainer(net, composite="epsilon-gamma-box", overrides={"8": {"rule": "zero"}}, epsilon=0.01)
    rules = [{"rule": "box", "epsilon": 0.01}, {"rule": "gamma", "epsilon": 0.01}, {"rule": "epsilon", "epsilon": 0.01},
             {"rule": "zero"}]
    _compare(net, x, rules, explainer, "prob")


def _with_constant_add(negate: bool, bias: bool = True) -> nn.Sequential:
    """conv → + c (or c − ·) → ReLU → linear: a position embedding between two layers."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=bias), AddConstant((3, 8, 8), negate), nn.ReLU(),
                         nn.Flatten(), nn.Linear(192, 3, bias=bias)).double()


@pytest.mark.parametrize("negate", [False, True], ids=["x+c", "c-x"])
@pytest.mark.parametrize("spec", RULES, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_constant_add_is_a_bias_to_every_rule_as_in_the_dense_reference(spec: dict, negate: bool) -> None:
    net = _with_constant_add(negate)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    explainer = Explainer(net, rule=spec["rule"], **{k: v for k, v in spec.items() if k != "rule"})
    _compare(net, x, [spec, spec], explainer, "prob", constant_rule=spec)


def test_composite_gives_a_constant_add_the_epsilon_share_of_its_dense_layers() -> None:
    net = _with_constant_add(False)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    explainer = Explainer(net, composite="epsilon-plus", epsilon=0.01)
    epsilon = {"rule": "epsilon", "epsilon": 0.01}
    _compare(net, x, [{"rule": "zplus"}, epsilon], explainer, "prob", constant_rule=epsilon)


@pytest.mark.parametrize("rule", ["zero", "alphabeta"])
def test_absorbed_counts_what_a_constant_add_keeps(rule: str) -> None:
    """`absorbed` is what the reference loses: under LRP-0 (bias-free layers conserve) exactly the constant's share,
    under αβ 1/0 (which leaves the constant out) only what empty positive sides lost."""
    net = _with_constant_add(False, bias=False)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    spec = {"rule": rule, "alpha": 1.0, "beta": 0.0}
    got = Explainer(net, rule=rule, alpha=1.0, beta=0.0)(x)
    for i in range(2):
        want, r_out = reference_lrp(net, x[i], [spec, spec], target=int(got.target[i]), constant_rule=spec)
        kept = float(r_out.sum() - want.sum())
        assert got.absorbed[i].item() == pytest.approx(kept, rel=1e-9, abs=1e-12)
        if rule == "zero":  # the constant kept a real share
            assert abs(kept) > 1e-3 * float(r_out.abs().sum())
