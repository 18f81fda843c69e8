"""torchvision and timm classifiers (random weights, eval mode) explained with αβ 2/1, ε and a composite.

torchvision and timm do not install beside the main venv's torch, so this runs in its own venv:
`bash scripts/make_vision_venv.sh && .venv-vision/bin/pytest -q -m slow tests/test_zoo_torchvision.py`.
Elsewhere it is skipped with that instruction.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache

import pytest
import torch
from torch import nn

from mri_lrp.lrp import Explainer

tvm = pytest.importorskip("torchvision.models", reason="needs torchvision: bash scripts/make_vision_venv.sh, then "
                                                       ".venv-vision/bin/pytest -m slow tests/test_zoo_torchvision.py")
timm = pytest.importorskip("timm", reason="needs timm: bash scripts/make_vision_venv.sh, then "
                                          ".venv-vision/bin/pytest -m slow tests/test_zoo_torchvision.py")

pytestmark = pytest.mark.slow

#: name -> (constructor, input side). Inputs are small; the transformers get the size they were built for.
NETWORKS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=4), 32),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=4), 32),
    "regnet_y_400mf": (lambda: tvm.regnet_y_400mf(num_classes=4), 32),
    "vit_b_16": (lambda: tvm.vit_b_16(num_classes=4, image_size=32), 32),
    "swin_t": (lambda: tvm.swin_t(num_classes=4), 32),
    "convnext_tiny": (lambda: tvm.convnext_tiny(num_classes=4), 32),
    "vgg16_bn": (lambda: tvm.vgg16_bn(num_classes=4), 32),
    "resnet18": (lambda: tvm.resnet18(num_classes=4), 32),
    "densenet121": (lambda: tvm.densenet121(num_classes=4), 32),
    "timm_convnext_atto": (lambda: timm.create_model("convnext_atto", num_classes=4), 32),
    "timm_vit_tiny": (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32), 32),
    "timm_swin_tiny": (lambda: timm.create_model("swin_tiny_patch4_window7_224", num_classes=4, img_size=32,
                                                 window_size=4), 32),
    "timm_efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", num_classes=4), 32),
}
RULES = {"alphabeta": {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0}, "epsilon": {"rule": "epsilon"},
         "composite": {"composite": "epsilon-plus"}}

#: Known cases where relevance is not accounted for, and why (each must still be flagged to the user).
UNACCOUNTED = {
    ("densenet121", "epsilon"): "epsilon=1e-6 on DenseNet (BatchNorm before each conv, not mergeable) creates "
                                "relevance 1e14-1e20x the output's, beyond what floating point (float64 too) can "
                                "account for to 1e-3; the engine warns",
    ("timm_efficientnet_b0", "epsilon"): "timm's BatchNormAct2d (functional batch_norm) is not merged into the conv "
                                         "before it, so epsilon=1e-6 creates relevance (1e45x in float64, inf/NaN "
                                         "in float32); the engine warns",
}


@cache
def _network(name: str) -> nn.Module:
    """The network with random weights: non-trivial BatchNorm statistics, no all-zero layer (torchvision's ViT
    starts its head at zero, which would leave nothing to explain)."""
    torch.manual_seed(0)
    model = NETWORKS[name][0]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and not m.weight.any():
                m.weight.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_explains_with_finite_accounted_relevance(name: str, rule: str) -> None:
    model = _network(name)
    torch.manual_seed(1)
    side = NETWORKS[name][1]
    x = torch.rand(1, 3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diagnostics (e.g. relevance lost) are not what this test checks
        explainer = Explainer(model, **RULES[rule])
        e = explainer(x)
    with torch.no_grad():
        torch.testing.assert_close(e.logits, model(x), rtol=1e-4, atol=1e-5)
    # |ΣR_in + absorbed − R_out| / |R_out|: whatever a rule does not pass on, the engine says where it went
    unexplained = (e.output_relevance - e.relevance_sum - e.absorbed).abs() / e.output_relevance_abs
    finite = bool(torch.isfinite(e.relevance).all())
    if (name, rule) in UNACCOUNTED and not (finite and unexplained.max() <= 1e-3):
        note = e.notes()[0]
        assert "creates relevance" in note or "not finite" in note  # the user is told
        pytest.xfail(UNACCOUNTED[name, rule])
    assert finite
    assert e.relevance.abs().sum() > 0
    assert unexplained.max() <= 1e-3, unexplained
