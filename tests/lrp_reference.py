"""A slow, obviously-right float64 LRP reference for small sequential networks (the tests' oracle).

Each conv/linear/avg-pool layer becomes its explicit dense matrix (built by applying it to basis vectors),
and every rule is its textbook formula written over that matrix, one sample and one output neuron at a time.
Nothing here is shared with the fast path in mri_lrp.lrp.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def dense_matrix(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) with layer(x).flatten() == W @ x.flatten() + b, W of shape (n_out, n_in)."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        bias = layer(torch.zeros(1, *in_shape, dtype=torch.float64)).reshape(-1)
        cols = layer(basis).reshape(n, -1) - bias
    return cols.T.contiguous(), bias


class SqueezeExcite(nn.Module):
    """x · sigmoid(fc(pool(x))): a squeeze-excitation gate (signal-take-all: relevance stays with x)."""

    def __init__(self, channels: int, spatial_dims: int, hidden: int = 2) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.fc(x.flatten(2).mean(2))
        for _ in range(self.spatial_dims):
            g = g.unsqueeze(-1)
        return x * g


class AddConstant(nn.Module):
    """y = x + c, or c − x when `negate` (a ViT's position embedding): c is a parameter, a bias outside any layer."""

    def __init__(self, shape: tuple[int, ...], negate: bool = False) -> None:
        super().__init__()
        self.constant = nn.Parameter(torch.empty(shape).uniform_(-1.0, 1.0))
        self.negate = negate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.constant - x if self.negate else x + self.constant


def bias_add_shares(rule: dict | None, part: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per element of y = part + c (part = ±x, c constant): the share of R that part gets, written from how each
    rule treats a layer's bias, as a layer with one input of weight 1 per output. LRP-0 and ε include the bias:
    part / (part + c) (ε-stabilised); γ and αβ / z⁺ include it only with include_bias (γ: weight 1 + γ, bias
    c + γc⁺; αβ: c joins the side of its own sign, the identity's relevance is not scaled by α or β); every
    other rule (and no rule) leaves it out: share 1."""
    shares = torch.ones(part.numel(), dtype=torch.float64)
    if rule is None:
        return shares
    name = rule["rule"]
    for j, (x, b) in enumerate(zip(part.tolist(), c.tolist(), strict=True)):
        if name == "zero":
            shares[j] = x / (x + b) if x + b != 0 else 0.0
        elif name == "epsilon":
            shares[j] = x / _stab(x + b, rule.get("epsilon", 1e-6))
        elif name == "gamma" and rule.get("include_bias", False):
            g = rule.get("gamma", 0.25)
            shares[j] = (1 + g) * x / _stab((1 + g) * x + b + g * max(b, 0.0), rule.get("epsilon", 1e-6))
        elif name in ("alphabeta", "zplus") and rule.get("include_bias", False):
            z = x + (max(b, 0.0) if x >= 0 else min(b, 0.0))
            shares[j] = x / z if z != 0 else 0.0
    return shares


NORMS = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
COPIES = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad2d, nn.ReplicationPad1d,
          nn.ReplicationPad2d, nn.ReplicationPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d)


def norm_matrix(layer: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(L, β, eps) of a Layer/Group/Instance norm on ONE sample a (C, ...): y = L a + β with σ frozen at a.

    Written from the definition: within a group G of N entries, L[k, j] = γ_k (δ_kj − 1/N) / σ_G.
    """
    shape = a.shape
    n = a.numel()
    if isinstance(layer, nn.LayerNorm):
        per = math.prod(layer.normalized_shape)
        group = torch.arange(n) // per
        gamma = layer.weight.detach().reshape(-1).repeat(n // per) if layer.weight is not None else torch.ones(n)
        beta = layer.bias.detach().reshape(-1).repeat(n // per) if layer.bias is not None else torch.zeros(n)
    else:
        groups = layer.num_groups if isinstance(layer, nn.GroupNorm) else shape[0]
        per_channel = math.prod(shape[1:])
        group = torch.arange(n) // (n // groups)
        channel = torch.arange(n) // per_channel
        weight = getattr(layer, "weight", None)
        bias = getattr(layer, "bias", None)
        gamma = weight.detach()[channel] if weight is not None else torch.ones(n)
        beta = bias.detach()[channel] if bias is not None else torch.zeros(n)
    flat = a.reshape(-1)
    L = torch.zeros(n, n, dtype=torch.float64)
    for g in group.unique():
        idx = (group == g).nonzero().reshape(-1)
        vals = flat[idx]
        sigma = math.sqrt(float(((vals - vals.mean()) ** 2).mean()) + layer.eps)
        centring = torch.eye(len(idx), dtype=torch.float64) - 1.0 / len(idx)
        L[idx.view(-1, 1), idx.view(1, -1)] = gamma[idx].to(torch.float64).view(-1, 1) * centring / sigma
    return L, beta.to(torch.float64), layer.eps


def _stab(z: float, eps: float) -> float:
    return z + eps * (1.0 if z >= 0 else -1.0)


def rule_matrix(rule: dict, W: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Share matrix S (n_out, n_in): R_in[j] = Σ_k S[k, j] R_out[k], written out per output neuron k."""
    name = rule["rule"]
    n_out, n_in = W.shape
    S = torch.zeros(n_out, n_in, dtype=torch.float64)
    for k in range(n_out):
        w = W[k]
        if name in ("zero", "epsilon"):
            contrib = a * w
            z = float(contrib.sum() + b[k])
            eps = rule.get("epsilon", 1e-6) if name == "epsilon" else 0.0
            den = _stab(z, eps) if name == "epsilon" else z
            S[k] = contrib / den if den != 0 else 0.0
        elif name == "gamma":
            g = rule.get("gamma", 0.25)
            contrib = a * (w + g * w.clamp(min=0))
            z = float(contrib.sum())
            if rule.get("include_bias", False):
                z += float(b[k]) + g * max(float(b[k]), 0.0)
            S[k] = contrib / _stab(z, rule.get("epsilon", 1e-6))
        elif name in ("alphabeta", "zplus"):
            alpha, beta = (1.0, 0.0) if name == "zplus" else (rule.get("alpha", 2.0), rule.get("beta", 1.0))
            contrib = a * w
            pos, neg = contrib.clamp(min=0), contrib.clamp(max=0)
            zp, zn = float(pos.sum()), float(neg.sum())
            if rule.get("include_bias", False):
                zp += max(float(b[k]), 0.0)
                zn += min(float(b[k]), 0.0)
            S[k] = (alpha * pos / zp if zp != 0 else 0.0) - (beta * neg / zn if zn != 0 else 0.0)
        elif name == "box":
            lo = float(a.min()) if rule.get("low") is None else rule["low"]
            hi = float(a.max()) if rule.get("high") is None else rule["high"]
            contrib = a * w - lo * w.clamp(min=0) - hi * w.clamp(max=0)
            S[k] = contrib / _stab(float(contrib.sum()), rule.get("epsilon", 1e-6))
        elif name == "wsquare":
            S[k] = w * w / float((w * w).sum())
        elif name == "flat":
            connected = (w != 0).to(torch.float64)
            S[k] = connected / float(connected.sum())
        else:
            raise ValueError(name)
    return S


def init_relevance(logits: torch.Tensor, target: int, init: str) -> torch.Tensor:
    """Output relevance of one sample, written from the definitions."""
    p = torch.exp(logits - logits.max())
    p = p / p.sum()
    r = torch.zeros_like(logits)
    if init == "prob":
        r[target] = p[target]
    elif init == "logit":
        r[target] = logits[target]
    else:  # sglrp
        for n in range(len(logits)):
            r[n] = p[target] * (1 - p[target]) if n == target else -p[target] * p[n]
    return r


def reference_lrp(model: nn.Sequential, x: torch.Tensor, rules: list[dict], target: int | None = None,
                  init: str = "prob", norm_epsilon: float = 1e-6,
                  constant_rule: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(relevance of x, output relevance) for ONE sample x (no batch dim) of a sequential float64 model.

    `rules` holds one rule dict per conv/linear layer (or Sequential block), in order; `constant_rule` is the
    rule whose bias treatment each AddConstant follows (None: relevance passes it unchanged). Normalisation layers get
    the ε rule on their frozen-σ matrix with `norm_epsilon`; padding and nearest upsampling return relevance to
    the copied input; other upsampling gets LRP-0 on its matrix; activations and gates pass it unchanged.
    """
    model = model.double()
    acts, mats = [x.double().reshape(1, *x.shape)], []
    rule_iter = iter(rules)
    for layer in model:
        a = acts[-1]
        in_shape = tuple(a.shape[1:])
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Sequential)):
            W, b = dense_matrix(layer, in_shape)  # a Sequential is one affine block (conv + BatchNorm, merged)
            mats.append(("layer", W, b, next(rule_iter), in_shape))
        elif isinstance(layer, NORMS):
            L, beta, _ = norm_matrix(layer, a[0])
            mats.append(("layer", L, beta, {"rule": "epsilon", "epsilon": norm_epsilon}, in_shape))
        elif isinstance(layer, COPIES) or (isinstance(layer, nn.Upsample) and layer.mode == "nearest"):
            W, _ = dense_matrix(layer, in_shape)  # 0/1 copies: relevance returns to the source (the transpose)
            mats.append(("copy", W, in_shape))
        elif isinstance(layer, nn.Upsample):
            W, b = dense_matrix(layer, in_shape)
            mats.append(("layer", W, b, {"rule": "zero"}, in_shape))
        elif isinstance(layer, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                                nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            W, b = dense_matrix(layer, in_shape)
            mats.append(("layer", W, b, {"rule": "zero"}, in_shape))
        elif isinstance(layer, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            mats.append(("max", layer, in_shape))
        elif isinstance(layer, AddConstant):
            sign = -1.0 if layer.negate else 1.0
            mats.append(("bias", sign, layer.constant.detach().double().reshape(-1)))
        else:  # ReLU, GELU, Tanh, ..., SqueezeExcite, Flatten: relevance passes unchanged / is reshaped
            mats.append(("same", None, in_shape))
        with torch.no_grad():
            acts.append(layer(a))
    logits = acts[-1].reshape(-1)
    t = int(logits.argmax()) if target is None else target
    r_out = init_relevance(logits, t, init)
    r = r_out.clone()
    for (kind, *rest), a in zip(reversed(mats), reversed(acts[:-1]), strict=True):
        flat_a = a.reshape(-1)
        if kind == "layer":
            W, b, rule, in_shape = rest
            r = rule_matrix(rule, W, b, flat_a).T @ r
        elif kind == "copy":
            r = rest[0].T @ r
        elif kind == "bias":
            sign, c = rest
            r = bias_add_shares(constant_rule, sign * flat_a, c) * r
        elif kind == "max":
            layer, in_shape = rest
            pool = type(layer).__name__[-2:]
            fn = {"1d": F.max_pool1d, "2d": F.max_pool2d, "3d": F.max_pool3d}[pool]
            _, idx = fn(a, layer.kernel_size, layer.stride, layer.padding, layer.dilation, return_indices=True)
            idx = idx.reshape(a.shape[1], -1)
            per_channel = math.prod(in_shape[1:])
            r_in = torch.zeros(math.prod(in_shape), dtype=torch.float64)
            r_ch = r.reshape(a.shape[1], -1)
            for c in range(a.shape[1]):
                for o in range(idx.shape[1]):
                    r_in[c * per_channel + int(idx[c, o])] += r_ch[c, o]
            r = r_in
        # "same": nothing to do; shapes are handled by flattening
    return r.reshape(x.shape), r_out
