"""The MONAI classifiers people fine-tune explain with αβ 2/1, ε and a composite; the books balance. MONAI's ViT,
whose forward returns (logits, hidden states), is explained at its logits without a wrapper.

Random weights with non-trivial BatchNorm statistics and norm affine parameters; 2D variants at 32² keep the
CPU time down (the layer kinds are the same in 3D; MONAI resnet18 and DenseNet121 in 3D are covered in
test_lrp_conservation.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mri_lrp.errors import UnsupportedLayerError
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


def _vit() -> nn.Module:
    """MONAI's ViT as a classifier: forward returns (logits, hidden states of every block)."""
    torch.manual_seed(0)
    return _randomised(nets.ViT(in_channels=1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2,
                                num_heads=2, classification=True, num_classes=3, spatial_dims=2))


@pytest.mark.parametrize("rule", ["alphabeta", "epsilon", "epsilon-plus"])
def test_monai_vit_explains_its_logits_picked_unasked_with_every_loss_accounted_for(rule: str) -> None:
    model = _vit()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits, hidden = model(x)
    explainer = Explainer(model, rule=rule, alpha=2.0, beta=1.0)
    assert explainer.output_choice.startswith("element 0 of a tuple of 2 values")
    e = explainer(x, class_names=["a", "b", "c"])
    torch.testing.assert_close(e.logits, logits, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
    # the position embedding keeps its share under ε (a bias), none under αβ; either way it is in `absorbed`
    unaccounted = (e.output_relevance - e.relevance_sum - e.absorbed).abs() / e.output_relevance_abs
    assert torch.all(unaccounted <= 1e-3), unaccounted
    assert torch.equal(Explainer(model, rule=rule, model_output=0)(x).relevance, e.relevance)
    with pytest.raises(UnsupportedLayerError, match=r"has 3 entries, not one per class \(4 class names\)"):
        explainer(x, class_names=["a", "b", "c", "d"])
    assert len(hidden) == 2  # what was left out: the hidden states of the two blocks


def test_monai_vit_without_classification_head_is_told_to_choose_the_logits() -> None:
    torch.manual_seed(0)
    model = nets.ViT(in_channels=1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=1,
                     num_heads=2, classification=False, spatial_dims=2).eval()
    with pytest.raises(UnsupportedLayerError, match=r"the explained output, element 0 of a tuple of 2 values, "
                                                    r"expected class scores of shape \(batch, classes\), got "
                                                    r"\(1, 16, 32\); set model_output"):
        Explainer(model)(torch.randn(1, 1, 32, 32))
