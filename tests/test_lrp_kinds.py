"""The layer kinds beyond conv/linear/BatchNorm agree with the slow float64 reference, module and functional forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lrp_reference import SqueezeExcite, reference_lrp
from torch import nn

from mri_lrp.errors import UnsupportedLayerError
from mri_lrp.lrp import Explainer, describe_rules, explain
from mri_lrp.lrp.kinds import registered


def _randomise_affine(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)) and m.weight is not None:
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return net.eval()


def _net2d() -> nn.Sequential:
    torch.manual_seed(0)
    return _randomise_affine(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.GELU(), SqueezeExcite(4, 2),
        nn.ZeroPad2d(1), nn.Conv2d(4, 4, 3), nn.InstanceNorm2d(4, affine=True), nn.SiLU(),
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.AvgPool2d(2), nn.ReplicationPad2d((1, 0, 0, 1)),
        nn.Conv2d(4, 3, 3, stride=2), nn.LayerNorm([3, 3, 3]), nn.Tanh(), nn.Flatten(), nn.Linear(27, 3),
    ).double())


def _net3d() -> nn.Sequential:
    torch.manual_seed(1)
    return _randomise_affine(nn.Sequential(
        nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.BatchNorm3d(3)), nn.Hardswish(),
        nn.ConstantPad3d(1, 0.5), nn.Conv3d(3, 4, 3, stride=2), nn.InstanceNorm3d(4), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Dropout3d(0.3), nn.Identity(), SqueezeExcite(4, 3),
        nn.Conv3d(4, 2, 3, stride=2), nn.Sigmoid(), nn.Flatten(), nn.Linear(16, 3),
    ).double())


INPUT = {2: (2, 6, 6), 3: (1, 6, 6, 6)}
NETS = {2: _net2d, 3: _net3d}
RULES = [{"rule": "zero"}, {"rule": "epsilon", "epsilon": 0.01}, {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0}]


def _check(net: nn.Module, reference_net: nn.Sequential, x: torch.Tensor, spec: dict, norm_epsilon: float) -> None:
    params = {k: v for k, v in spec.items() if k != "rule"} | {"epsilon": norm_epsilon}
    explainer = Explainer(net, rule=spec["rule"], **params)
    got = explainer(x)
    with torch.no_grad():
        assert torch.allclose(got.logits, reference_net(x), atol=1e-10)
    rules = [spec | {"epsilon": norm_epsilon}] * len(explainer.graph.sites)  # ε of the ε and γ rules too
    for i in range(x.shape[0]):
        want, _ = reference_lrp(reference_net, x[i], rules, target=int(got.target[i]), norm_epsilon=norm_epsilon)
        assert (got.relevance[i] - want).abs().max() <= 1e-6 * want.abs().max()
    # what is missing is what the ops recorded as absorbed (β of the norms, constant padding, ε, biases)
    assert torch.allclose(got.output_relevance - got.relevance_sum, got.absorbed, atol=1e-9)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("spec", RULES, ids=lambda s: s["rule"])
def test_norms_gates_padding_upsampling_activations_match_dense_reference(dims: int, spec: dict) -> None:
    net = NETS[dims]()
    torch.manual_seed(10 + dims)
    x = torch.randn(2, *INPUT[dims], dtype=torch.float64)
    _check(net, net, x, spec, norm_epsilon=0.01)


class Functional2d(nn.Module):
    """The same maps as `_functional_twin` in functional spelling (F.group_norm, F.pad, F.interpolate, ...)."""

    def __init__(self, twin: nn.Sequential) -> None:
        super().__init__()
        self.conv1, self.gn, self.conv2, self.ln_w = twin[0], twin[1], twin[4], twin[5]
        self.conv3, self.bn, self.fc = twin[8], twin[9], twin[11]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = F.group_norm(x, 2, self.gn.weight, self.gn.bias, self.gn.eps)
        x = F.pad(F.silu(x), (1, 1, 1, 1), mode="replicate")
        x = self.conv2(x)
        x = F.layer_norm(x, self.ln_w.normalized_shape, self.ln_w.weight, self.ln_w.bias, self.ln_w.eps)
        x = F.interpolate(F.gelu(x), scale_factor=2, mode="bilinear")
        x = F.instance_norm(x)
        x = self.conv3(x)
        x = F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, False, 0.1,
                         self.bn.eps)
        x = torch.tanh(x)
        return self.fc(x.flatten(1))


def _functional_twin() -> nn.Sequential:
    torch.manual_seed(2)
    return _randomise_affine(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU(), nn.ReplicationPad2d(1), nn.Conv2d(4, 4, 3),
        nn.LayerNorm([4, 6, 6]), nn.GELU(), nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(4, 2, 3, stride=2),
        nn.BatchNorm2d(2), nn.Tanh(), nn.Linear(50, 3),
    ).double())


@pytest.mark.parametrize("spec", RULES[1:3], ids=lambda s: s["rule"])
def test_functional_norm_pad_interpolate_batchnorm_match_module_reference(spec: dict) -> None:
    twin = _functional_twin()
    net = Functional2d(twin).double().eval()
    # the same network written as modules, for the reference (conv + BatchNorm as one merged affine block)
    reference = nn.Sequential(twin[0], twin[1], twin[2], twin[3], twin[4], twin[5], twin[6], twin[7],
                              nn.InstanceNorm2d(4), nn.Sequential(twin[8], twin[9]), twin[10], nn.Flatten(), twin[11])
    x = torch.randn(2, *INPUT[2], dtype=torch.float64)
    _check(net, reference, x, spec, norm_epsilon=0.01)
    rows = {name: text for name, _, text in describe_rules(net)}
    assert rows["batch_norm"] == "merged into 'conv3'"


def test_gate_branch_gets_no_relevance_and_the_signal_gets_all() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.signal, self.gate = nn.Conv2d(1, 4, 3, bias=False), nn.Conv2d(1, 4, 3, bias=False)
            self.fc = nn.Linear(4, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc((torch.sigmoid(self.gate(x)) * self.signal(x)).mean((2, 3)))

    torch.manual_seed(3)
    net = Gated().double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    e = explain(net, x, rule="zero")
    # gate held constant: the relevance is LRP-0 through the signal conv alone, conserved exactly
    assert torch.all(e.conservation_error < 1e-9)
    with torch.no_grad():
        g = torch.sigmoid(net.gate(x))
    signal_only = nn.Sequential(net.signal).double()
    xr = x.clone().requires_grad_(True)
    z = signal_only(xr)
    r_out = e.output_relevance.view(-1, 1, 1, 1)
    y = g * z
    logits = net.fc(y.mean((2, 3)))
    share = torch.autograd.grad(logits, y, torch.zeros_like(logits).scatter(1, e.target.view(-1, 1), 1.0))[0]
    r_y = y * share / logits.gather(1, e.target.view(-1, 1)).view(-1, 1, 1, 1) * r_out
    want = x * torch.autograd.grad(z, xr, r_y / z)[0]
    assert torch.allclose(e.relevance, want, atol=1e-10)


def test_new_kinds_show_their_rule_in_info() -> None:
    rows = {name: (kind, text) for name, kind, text in describe_rules(NETS[2]())}
    assert rows["1"][0] == "GroupNorm" and rows["1"][1].startswith("normalisation, sigma held constant")
    assert rows["3 (mul)"][1].startswith("gate: relevance to the signal")
    assert rows["4"][1].startswith("routing")
    assert rows["8"][1].startswith("z-rule") and "bilinear" in rows["8"][1]
    assert rows["2"] == ("GELU", "pass-through")
    assert set(registered()) >= {"scale/gate", "layernorm", "groupnorm", "instancenorm",
                                 "padding", "upsampling", "eval-mode identity", "functional batch_norm"}


def test_refusals_name_the_module_path_type_and_what_to_do() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) * F.gelu(self.b(x))

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Inner()
            self.lstm = nn.GRU(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.block(x))

    with pytest.raises(UnsupportedLayerError) as info:
        Explainer(Outer())
    assert info.value.layer == "block (mul)" and info.value.op == "mul"
    assert "neither operand is a sigmoid" in info.value.reason

    class WithGru(Outer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.lstm(x)[0])

    with pytest.raises(UnsupportedLayerError) as info:
        Explainer(WithGru())
    assert info.value.layer == "lstm" and info.value.op == "GRU"
    assert "torch.nn.modules.rnn.GRU has no LRP rule" in info.value.reason and "register a layer kind" in \
        info.value.reason


def test_fused_batchnorm_act_that_checks_the_input_rank_is_still_merged() -> None:
    class BatchNormAct(nn.BatchNorm2d):
        """As timm's BatchNormAct2d: the module's forward asserts the rank, then F.batch_norm and an activation."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch._assert(x.ndim == 4, "expected 4D input")
            x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
            return F.silu(x)

    torch.manual_seed(6)
    net = _randomise_affine(nn.Sequential(nn.Conv2d(1, 4, 3), BatchNormAct(4), nn.Flatten(),
                                          nn.Linear(4 * 6 * 6, 2)).double())
    rows = {name: text for name, _, text in describe_rules(net)}
    assert rows["1 (batch_norm)"] == "merged into '0'"
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(Explainer(net).logits(x), net(x))


def test_clamp_and_amax_route_relevance_unchanged() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3, bias=False)
            self.fc = nn.Linear(4, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).clamp(min=0.0).amax(2))  # a ReLU and a global max pool in other words

    torch.manual_seed(7)
    net = Net().double()
    x = torch.randn(2, 1, 12, dtype=torch.float64)
    e = explain(net, x, rule="zero")  # bias-free LRP-0 through pass-through ops conserves exactly
    assert torch.all(e.conservation_error < 1e-12)
    relu_net = nn.Sequential(net.conv, nn.ReLU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(), net.fc)
    assert torch.allclose(e.relevance, explain(relu_net, x, rule="zero").relevance, atol=1e-14)
