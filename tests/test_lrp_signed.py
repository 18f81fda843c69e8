"""αβ on signed layer inputs: the fused form (one |W| forward, one grouped transposed pass) and the exact split
both agree with the float64 reference; near-empty sides take the exact split."""

from __future__ import annotations

import pytest
import torch
from lrp_reference import reference_lrp
from torch import nn

from mri_lrp.lrp import Explainer
from mri_lrp.lrp.rules import AlphaBeta


def _net(kind: str) -> nn.Sequential:
    torch.manual_seed(4)
    if kind == "linear":
        net = nn.Sequential(nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 3))
    else:  # wide grouped and plain convs after signed activations: sides are never near-empty
        net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 8, 3, padding=1, groups=2),
                            nn.Tanh(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))
    return net.double().eval()


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("spec", [{"alpha": 2.0, "beta": 1.0}, {"alpha": 1.0, "beta": 0.0, "include_bias": True}],
                         ids=["ab21", "ab10-bias"])
def test_fused_signed_form_matches_reference(kind: str, spec: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fallback(*args: object) -> None:
        raise AssertionError("the exact split was taken")

    monkeypatch.setattr(AlphaBeta, "_signed_exact", no_fallback)
    net = _net(kind)
    torch.manual_seed(5)
    x = torch.randn(2, *((64,) if kind == "linear" else (16, 6, 6)), dtype=torch.float64)
    got = Explainer(net, rule="alphabeta", **spec)(x)
    rule = {"rule": "alphabeta", **spec}
    for i in range(2):
        want, _ = reference_lrp(net, x[i], [rule] * 3, target=int(got.target[i]))
        assert (got.relevance[i] - want).abs().max() <= 1e-6 * want.abs().max()


def test_near_empty_side_takes_the_exact_split(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = []
    exact = AlphaBeta._signed_exact

    def spy(*args: object) -> torch.Tensor:
        taken.append(True)
        return exact(*args)

    monkeypatch.setattr(AlphaBeta, "_signed_exact", spy)
    # output 0: contributions −1, −2, −0.5 and one tiny positive 3e-6 (its positive side is near-empty)
    layer = nn.Linear(4, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.0, -1.0, 1.0, 1e-6], [1.0, -1.0, 1.0, -1.0]]))
    head = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, dtype=torch.float64))
    net = nn.Sequential(layer, head)
    x = torch.tensor([[1.0, 2.0, -0.5, 3.0]], dtype=torch.float64)
    got = Explainer(net, rule="alphabeta")(x, target=0)
    want, _ = reference_lrp(net, x[0], [{"rule": "alphabeta"}] * 2, target=0)
    assert taken
    assert torch.allclose(got.relevance[0], want, rtol=1e-9, atol=1e-12)
