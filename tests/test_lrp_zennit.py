"""Our αβ (bias excluded, BatchNorm merged) equals Zennit's AlphaBeta(zero_params='bias') where both apply.

Zennit is not a dependency: the test is skipped when it is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch
from torch import nn

from mri_lrp.lrp import explain

pytestmark = pytest.mark.skipif(importlib.util.find_spec("zennit") is None, reason="zennit not installed")


@pytest.fixture(scope="module")
def zennit() -> types.SimpleNamespace:
    """Import zennit; its package imports torchvision's ResNet blocks, so stand in empty classes if absent."""
    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        stubs = {"torchvision": types.ModuleType("torchvision"),
                 "torchvision.models": types.ModuleType("torchvision.models"), "torchvision.models.resnet": resnet}
        sys.modules.update(stubs)
    try:
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import LayerMapComposite, layer_map_base
        from zennit.rules import AlphaBeta
        from zennit.types import Convolution, Linear
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(Gradient=Gradient, SequentialMergeBatchNorm=SequentialMergeBatchNorm,
                                 LayerMapComposite=LayerMapComposite, layer_map_base=layer_map_base,
                                 AlphaBeta=AlphaBeta, Convolution=Convolution, Linear=Linear)


def _model(dims: int) -> nn.Sequential:
    torch.manual_seed(dims)
    conv, bn, pool = {2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d), 3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)}[dims]
    avg = nn.AdaptiveAvgPool2d(2) if dims == 2 else nn.AdaptiveAvgPool3d(2)
    model = nn.Sequential(conv(1, 8, 5, padding=2), bn(8), nn.ReLU(), pool(2), conv(8, 16, 3, padding=1), bn(16),
                          nn.ReLU(), avg, nn.Flatten(), nn.Linear(16 * 2 ** dims, 10), nn.ReLU(), nn.Linear(10, 3))
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            # Zennit leaves a merged BN computing x / sqrt(1 + eps); eps = 0 makes that the exact identity
            m.eps = 0.0
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.double().eval()


@pytest.mark.parametrize(("dims", "alpha", "beta"), [(2, 2.0, 1.0), (3, 1.0, 0.0)])
def test_alphabeta_matches_zennit_with_bias_excluded_and_batchnorm_merged(zennit: types.SimpleNamespace,
                                                                          dims: int, alpha: float,
                                                                          beta: float) -> None:
    model = _model(dims)
    x = torch.randn(3, 1, *(12,) * dims, dtype=torch.float64)
    ours = explain(model, x, rule="alphabeta", alpha=alpha, beta=beta)

    # a negligible stabiliser: ours divides exactly (a side with no contributions passes nothing on)
    rule = zennit.AlphaBeta(alpha=alpha, beta=beta, stabilizer=1e-30, zero_params="bias")
    composite = zennit.LayerMapComposite(
        layer_map=zennit.layer_map_base(1e-30) + [(zennit.Convolution, rule), (zennit.Linear, rule)],
        canonizers=[zennit.SequentialMergeBatchNorm()])
    theirs_model = _model(dims)
    seed = torch.zeros(3, 3, dtype=torch.float64).scatter(1, ours.target[:, None], ours.output_relevance[:, None])
    with zennit.Gradient(model=theirs_model, composite=composite) as attributor:
        _, theirs = attributor(x, seed)
    scale = theirs.abs().max()
    assert (ours.relevance - theirs).abs().max() <= 1e-9 * scale
