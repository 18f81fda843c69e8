"""Vision transformers under the ε rule agree with LXT, the AttnLRP authors' library, at the input.

LXT's efficient mode computes LRP as gradient × input with the gradient changed where a rule asks for it: its
LayerNorm patch holds σ constant, its GELU patch applies the identity rule, and its `divide_gradient` shares
each product of two signals (q and k by 4: q·kᵀ then A·v; v by 2). Everything else keeps its plain gradient,
which is LRP-0 with the bias in the denominator: convolutions, linear maps, residual sums and the
position-embedding add, whose constant keeps its share as a bias does. LXT's own patch for torchvision's
attention is CP-LRP (q and k detached), not AttnLRP, so the attention of both networks is written out here with
LXT's rule functions. Random weights, no downloads; float32, both libraries on the same input and target.

Runs in the vision venv (torchvision, timm and LXT do not install beside the main venv's torch):
`bash scripts/make_vision_venv.sh && .venv-vision/bin/pytest -q -m slow tests/test_lrp_lxt.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import MethodType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mri_lrp.lrp import Explainer

_HOW = "bash scripts/make_vision_venv.sh, then .venv-vision/bin/pytest -m slow tests/test_lrp_lxt.py"
lxt_rules = pytest.importorskip("lxt.efficient.rules", reason=f"needs LXT: {_HOW}")
lxt_patches = pytest.importorskip("lxt.efficient.patches", reason=f"needs LXT: {_HOW}")
tvm = pytest.importorskip("torchvision.models", reason=f"needs torchvision: {_HOW}")
timm = pytest.importorskip("timm", reason=f"needs timm: {_HOW}")
timm_attention = pytest.importorskip("timm.layers.attention", reason=f"needs timm: {_HOW}")

pytestmark = pytest.mark.slow

MIN_PEARSON = 0.99
MAX_RELATIVE_L2 = 0.05


def _attnlrp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v with LXT's uniform rule on both products; the softmax keeps its gradient."""
    q = lxt_rules.divide_gradient(q, 4)
    k = lxt_rules.divide_gradient(k, 4)
    v = lxt_rules.divide_gradient(v, 2)
    return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1) @ v


def _torchvision_attention(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, **_: object) -> tuple[torch.Tensor, None]:
    """torchvision's self-attention (query is key is value, batch first) with AttnLRP's products."""
    b, n, d = query.shape
    h = self.num_heads
    q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, n, h, d // h).transpose(1, 2)
    out = _attnlrp(heads(q), heads(k), heads(v), (d // h) ** -0.5).transpose(1, 2).reshape(b, n, d)
    return F.linear(out, self.out_proj.weight, self.out_proj.bias), None


def _timm_attention(self: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    is_causal: bool = False) -> torch.Tensor:
    """timm's Attention (no q/k norm, no gate, no mask) with AttnLRP's products."""
    assert attn_mask is None and not is_causal and self.gate is None
    assert all(isinstance(m, nn.Identity) for m in (self.q_norm, self.k_norm, self.norm))
    b, n, _ = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return self.proj(_attnlrp(q, k, v, self.scale).transpose(1, 2).reshape(b, n, self.attn_dim))


def lxt_relevance(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """LXT's input relevance for the target logit: a copy of the model with LXT's rules on its LayerNorm,
    GELU and attention modules (patched per module, so the classes stay as they are), gradient × input."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.forward = MethodType(lxt_patches.layer_norm_forward, m)
        elif isinstance(m, nn.GELU):
            m.original_forward = m.forward
            m.forward = MethodType(lxt_patches.non_linear_forward, m)
        elif isinstance(m, nn.MultiheadAttention):
            m.forward = MethodType(_torchvision_attention, m)
        elif isinstance(m, timm_attention.Attention):
            m.forward = MethodType(_timm_attention, m)
    x = x.clone().requires_grad_(True)
    model(x)[0, target].backward()
    return (x * x.grad).detach()


def _torchvision_vit() -> nn.Module:
    model = tvm.vit_b_16(num_classes=4)
    nn.init.normal_(model.heads.head.weight, 0, 0.05)  # torchvision starts the head at zero: nothing to explain
    return model


NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "torchvision_vit_b_16": _torchvision_vit,
    "timm_vit_tiny_patch16_224": lambda: timm.create_model("vit_tiny_patch16_224", num_classes=4),
}


def _agreement(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """(Pearson correlation, ‖ours − theirs‖ / ‖theirs‖) of two relevance maps."""
    a, b = ours.flatten().double(), theirs.flatten().double()
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return pearson, float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(NETWORKS))
def test_vit_input_relevance_under_epsilon_matches_lxt(name: str) -> None:
    torch.manual_seed(0)
    model = NETWORKS[name]().eval()
    x = torch.randn(1, 3, 224, 224)
    ours = Explainer(model, rule="epsilon")(x, init="logit")
    theirs = lxt_relevance(model, x, int(ours.target[0]))
    # the relevance of the whole image and of each pixel (summed over the colour channels, as a heatmap shows)
    for got, want in ((ours.relevance, theirs), (ours.relevance.sum(1), theirs.sum(1))):
        pearson, relative_l2 = _agreement(got, want)
        assert pearson >= MIN_PEARSON and relative_l2 <= MAX_RELATIVE_L2, (name, pearson, relative_l2)
