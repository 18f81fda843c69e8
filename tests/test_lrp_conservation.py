"""Relevance is conserved (α − β = 1, bias excluded) through BatchNorm, residual adds, concatenations, MONAI nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mri_lrp.lrp import Explainer, describe_rules, explain
from mri_lrp.model.checkpoint import load_checkpoint


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (as after training)."""
    torch.manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


class Cnn3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(inplace=True), nn.MaxPool3d(2),
            nn.Conv3d(8, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(inplace=True), nn.AvgPool3d(2),
            nn.Conv3d(16, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(F.adaptive_avg_pool3d(x, 1), 1)
        return self.head(x)


class Block(nn.Module):
    """A ResNet basic block that reuses one ReLU module and adds the shortcut in place."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            # 3x3 projection: a 1x1 one over only 8 channels often sees a single sign after the ReLU
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += residual
        return self.relu(out)


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2), Block(16, 16, 1))
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = x.mean(dim=(2, 3))
        return self.fc(x.view(x.size(0), -1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], dim=1)


class DenseNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 5, padding=2)
        self.layers = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4), DenseLayer(16, 4))
        self.norm5 = nn.BatchNorm2d(20)
        self.classifier = nn.Linear(20, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm5(self.layers(self.conv0(x))))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _assert_conserved(model: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> None:
    """αβ conserves wherever both sides of every neuron have contributions (stems of 5x5 or more make a
    neuron whose contributions all share one sign vanishingly rare; 3x3 single-channel stems do not)."""
    e = explain(model, x, rule="alphabeta", alpha=2.0, beta=1.0)
    assert torch.all(e.output_relevance > 0)
    assert torch.all(e.conservation_error <= tol), e.conservation_error
    # what is missing is exactly what the diagnostics say was absorbed
    assert torch.allclose(e.output_relevance - e.relevance_sum, e.absorbed, atol=1e-5)


def test_relevance_is_conserved_through_3d_cnn_with_batchnorm() -> None:
    torch.manual_seed(0)
    _assert_conserved(_randomise_batchnorm(Cnn3d()), torch.randn(3, 1, 16, 16, 16))


def test_relevance_is_conserved_through_residual_blocks_with_inplace_add_and_reused_relu() -> None:
    torch.manual_seed(1)
    _assert_conserved(_randomise_batchnorm(ResNetLike()), torch.randn(3, 1, 24, 24))


def test_relevance_is_conserved_through_concat_with_batchnorm_after_concat() -> None:
    torch.manual_seed(2)
    _assert_conserved(_randomise_batchnorm(DenseNetLike()), torch.randn(3, 1, 20, 20))


def test_batchnorm_after_conv_is_merged_and_batchnorm_after_concat_passes_through() -> None:
    rows = {name: text for name, _, text in describe_rules(_randomise_batchnorm(DenseNetLike()))}
    assert rows["layers.0.norm"].startswith("pass-through")
    assert rows["norm5"].startswith("pass-through")
    rows = {name: text for name, _, text in describe_rules(_randomise_batchnorm(ResNetLike()))}
    assert rows["blocks.0.bn1"] == "merged into 'blocks.0.conv1'"
    assert "BatchNorm 'blocks.1.down.1' merged" in rows["blocks.1.down.0"]
    assert rows["blocks.0 (add)"].startswith("residual add")


def test_merged_batchnorm_network_computes_the_same_logits_as_the_eval_model() -> None:
    torch.manual_seed(3)
    model = _randomise_batchnorm(ResNetLike()).double()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    e = explain(model, x)
    with torch.no_grad():
        assert torch.allclose(e.logits, model(x), atol=1e-12)


def test_unmerged_batchnorm_epsilon_option_absorbs_the_shift() -> None:
    torch.manual_seed(4)
    model = _randomise_batchnorm(DenseNetLike()).double()
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    e = Explainer(model, batchnorm="epsilon")(x)
    assert torch.all(e.conservation_error > 1e-6)  # the BN shift took its share
    assert torch.allclose(e.output_relevance - e.relevance_sum, e.absorbed, atol=1e-10)


class Scaled(nn.Module):
    """Bias-free layers with constant scalings, and optionally a literal added before the last layer."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x * 2.0) / 3.0)
        x = x.mean((2, 3))
        return self.fc(x + self.shift if self.shift else x)


def test_constant_scaling_passes_relevance_unchanged_instead_of_scaling_it() -> None:
    torch.manual_seed(5)
    # LRP-0 without biases conserves exactly; the gradient of these ops would scale relevance by 2/3
    e = explain(Scaled().double(), torch.randn(2, 1, 8, 8, dtype=torch.float64), rule="zero")
    assert torch.all(e.conservation_error < 1e-9)


def test_a_literal_added_inside_the_network_is_a_bias_that_keeps_its_share_under_lrp0() -> None:
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match="loses"):  # beyond the 5 % tolerance: the user is told
        e = explain(Scaled(shift=1.0).double(), torch.randn(2, 1, 8, 8, dtype=torch.float64), rule="zero")
    assert torch.all(e.conservation_error > 1e-3)  # the constant took its share ...
    assert torch.allclose(e.output_relevance - e.relevance_sum, e.absorbed, rtol=0, atol=1e-12)  # ... and it shows


monai = pytest.importorskip  # alias used below to skip cleanly without MONAI


@pytest.mark.slow
@pytest.mark.monai
def test_relevance_is_conserved_on_monai_resnet18_3d() -> None:
    nets = monai("monai.networks.nets")
    torch.manual_seed(6)
    model = _randomise_batchnorm(nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=3))
    _assert_conserved(model, torch.randn(1, 1, 32, 32, 32))


@pytest.mark.slow
@pytest.mark.monai
def test_relevance_is_conserved_on_monai_densenet121_3d() -> None:
    nets = monai("monai.networks.nets")
    torch.manual_seed(7)
    model = _randomise_batchnorm(nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=3))
    _assert_conserved(model, torch.randn(1, 1, 32, 32, 32))


def test_demo_model_has_no_add_of_a_constant_so_no_rule_changes_its_relevance() -> None:
    model = load_checkpoint().model
    for rule in ("epsilon", "zero", "alphabeta"):
        rows = [text for _, _, text in describe_rules(model, rule=rule)]
        assert not any("constant operand" in text for text in rows), rule
