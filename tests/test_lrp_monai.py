"""The MONAI classifiers people fine-tune explain with αβ 2/1, ε and a composite; the books balance.

Random weights with non-trivial BatchNorm statistics and norm affine parameters; 2D variants at 32² keep the
CPU time down (the layer kinds are the same in 3D; MONAI resnet18 and DenseNet121 in 3D are covered in
test_lrp_conservation.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mri_lrp.lrp import Explainer, describe_rules

nets = pytest.importorskip("monai.networks.nets")
pytestmark = [pytest.mark.slow, pytest.mark.monai]


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
        if isinstance(m, (nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)) and m.weight is not None:
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def _resnet(norm: str | tuple) -> nn.Module:
    return nets.ResNet("basic", [1, 1, 1, 1], [32, 64, 128, 256], spatial_dims=2, n_input_channels=1, num_classes=3,
                       norm=norm, bias_downsample=True)


NETWORKS: dict[str, tuple[Callable[[], nn.Module], str, bool]] = {
    # name: (factory, a layer kind it must show in `info`, whether αβ conserves by construction there)
    "SEResNet50": (lambda: nets.SEResNet50(spatial_dims=2, in_channels=1, num_classes=3), "gate", True),
    "EfficientNetBN": (lambda: nets.EfficientNetBN("efficientnet-b0", spatial_dims=2, in_channels=1, num_classes=3,
                                                   pretrained=False), "gate", False),
    "Classifier": (lambda: nets.Classifier(in_shape=(1, 32, 32), classes=3, channels=(4, 8, 16), strides=(2, 2, 2)),
                   "normalisation", False),
    # affine: MONAI's ResNet initialisation fails on a plain (non-affine) InstanceNorm
    "ResNet-instance": (lambda: _resnet(("instance", {"affine": True})), "normalisation", False),
    "ResNet-group": (lambda: _resnet(("group", {"num_groups": 4})), "normalisation", False),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_monai_network_explains_with_alphabeta_epsilon_and_composite(name: str) -> None:
    make, kind, conserves = NETWORKS[name]
    model = _randomised(make())
    assert any(text.startswith(kind) for _, _, text in describe_rules(model))
    torch.manual_seed(1)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        reference = model(x)
    for rule in ("alphabeta", "epsilon", "epsilon-plus"):
        e = Explainer(model, rule=rule, alpha=2.0, beta=1.0)(x)
        torch.testing.assert_close(e.logits, reference, rtol=1e-4, atol=1e-4)
        assert torch.isfinite(e.relevance).all()
        scale = e.output_relevance_abs
        # whatever is missing is what the ops say they absorbed (biases, ε, empty αβ sides, norm shifts)
        unaccounted = (e.output_relevance - e.relevance_sum - e.absorbed).abs() / scale
        assert torch.all(unaccounted <= 1e-3), (rule, unaccounted)
        if conserves and rule in ("alphabeta", "epsilon-plus"):
            assert torch.all(e.conservation_error <= 1e-4), (rule, e.conservation_error)
