"""AttnLRP ops against explicit float64 formulas written element by element (the softmax Jacobian, the product
terms of a matrix product), and the MultiheadAttention re-expression against torch's own module."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mri_lrp.lrp.attention import (
    Bilinear,
    Softmax,
    einsum_pair,
    matmul_pair,
    multihead_attention,
    multihead_projections,
    scaled_dot_product_attention,
)
from mri_lrp.lrp.ops import Tracker
from mri_lrp.lrp.rules import Affine, Epsilon

D = torch.float64


def _relevance(fn, inputs: tuple[torch.Tensor, ...], r: torch.Tensor) -> tuple[torch.Tensor, ...]:
    xs = tuple(t.clone().requires_grad_(True) for t in inputs)
    out = fn(*xs)
    return torch.autograd.grad(out, xs, r)


def _softmax_reference(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """R_i = x_i Σ_j (∂s_j/∂x_i) R_j / s_j with the Jacobian s_j (δ_ij − s_i), row by row (last axis)."""
    out = torch.zeros_like(x)
    for idx in itertools.product(*(range(n) for n in x.shape[:-1])):
        row = x[idx]
        s = torch.exp(row - row.max()) / torch.exp(row - row.max()).sum()
        n = row.shape[0]
        for i in range(n):
            total = 0.0
            for j in range(n):
                jac = float(s[j]) * ((1.0 if i == j else 0.0) - float(s[i]))
                total += jac * float(r[idx][j]) / float(s[j])
            out[idx + (i,)] = float(row[i]) * total
    return out


def _matmul_reference(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """z_jp = Σ_i a_ji b_ip; each term a_ji b_ip gets R_jp a_ji b_ip / (z_jp + ε sign z_jp), half to each factor."""
    ra, rb = torch.zeros_like(a), torch.zeros_like(b)
    for lead in itertools.product(*(range(n) for n in a.shape[:-2])):
        A, B, R = a[lead], b[lead], r[lead]
        for j in range(A.shape[0]):
            for p in range(B.shape[1]):
                z = sum(float(A[j, i]) * float(B[i, p]) for i in range(A.shape[1]))
                den = z + (eps if z >= 0 else -eps)
                for i in range(A.shape[1]):
                    term = float(A[j, i]) * float(B[i, p]) * float(R[j, p]) / den
                    ra[lead + (j, i)] += term / 2
                    rb[lead + (i, p)] += term / 2
    return ra, rb


def test_softmax_rule_is_the_taylor_expansion_at_its_input() -> None:
    torch.manual_seed(0)
    x, r = torch.randn(2, 3, 5, dtype=D) * 2, torch.randn(2, 3, 5, dtype=D)
    got, = _relevance(lambda t: Softmax.apply(t, -1, None), (x,), r)
    torch.testing.assert_close(got, _softmax_reference(x, r), rtol=1e-10, atol=1e-12)


def test_softmax_rule_reports_what_it_does_not_pass_on_as_absorbed() -> None:
    torch.manual_seed(1)
    x, r = torch.randn(3, 4, dtype=D), torch.rand(3, 4, dtype=D)
    tracker = Tracker(3)
    got, = _relevance(lambda t: Softmax.apply(t, 1, tracker), (x,), r)
    torch.testing.assert_close(tracker.absorbed, r.sum(1) - got.sum(1))
    assert tracker.absorbed.abs().min() > 1e-6  # the rule really does not conserve: the tracker must say so


def test_softmax_rule_gives_masked_scores_nothing() -> None:
    x = torch.tensor([[0.5, float("-inf"), -1.0]], dtype=D)
    r = torch.tensor([[1.0, 0.0, 2.0]], dtype=D)
    got, = _relevance(lambda t: Softmax.apply(t, -1, None), (x,), r)
    assert torch.isfinite(got).all() and got[0, 1] == 0
    torch.testing.assert_close(got[:, [0, 2]], _softmax_reference(x[:, [0, 2]], r[:, [0, 2]]))


@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_matmul_uniform_rule_matches_the_product_terms(eps: float) -> None:
    torch.manual_seed(2)
    a, b = torch.randn(2, 3, 4, dtype=D), torch.randn(2, 4, 5, dtype=D)
    r = torch.randn(2, 3, 5, dtype=D)
    got = _relevance(lambda u, v: Bilinear.apply(u, v, matmul_pair("matmul"), (True, True), eps, None), (a, b), r)
    for g, want in zip(got, _matmul_reference(a, b, r, eps), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)


def test_uniform_rule_conserves_without_epsilon() -> None:
    torch.manual_seed(3)
    a, b, r = torch.randn(4, 3, 6, dtype=D), torch.randn(4, 6, 2, dtype=D), torch.randn(4, 3, 2, dtype=D)
    tracker = Tracker(4)
    ra, rb = _relevance(lambda u, v: Bilinear.apply(u, v, torch.matmul, (True, True), 0.0, tracker), (a, b), r)
    torch.testing.assert_close(ra.flatten(1).sum(1) + rb.flatten(1).sum(1), r.flatten(1).sum(1))
    torch.testing.assert_close(tracker.absorbed, torch.zeros(4, dtype=D), atol=1e-12, rtol=0)


def test_einsum_attention_scores_match_the_explicit_product_terms() -> None:
    torch.manual_seed(4)
    q, k = torch.randn(1, 2, 3, 4, dtype=D), torch.randn(1, 2, 5, 4, dtype=D)
    r = torch.randn(1, 2, 3, 5, dtype=D)
    got = _relevance(lambda u, v: Bilinear.apply(u, v, einsum_pair("bhxd,bhyd->bhxy"), (True, True), 1e-9, None),
                     (q, k), r)
    want_q, want_kt = _matmul_reference(q, k.transpose(-2, -1), r, 1e-9)
    torch.testing.assert_close(got[0], want_q, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[1], want_kt.transpose(-2, -1), rtol=1e-9, atol=1e-12)


def test_constant_operand_gives_the_signal_all_relevance() -> None:
    torch.manual_seed(5)
    a, w, r = torch.randn(3, 4, dtype=D), torch.randn(4, 2, dtype=D), torch.randn(3, 2, dtype=D)
    ra, = _relevance(lambda u: Bilinear.apply(u, w, torch.matmul, (True, False), 0.0, None), (a,), r)
    z = a @ w
    want = torch.stack([torch.stack([sum(a[n, i] * w[i, p] * r[n, p] / z[n, p] for p in range(2))
                                     for i in range(4)]) for n in range(3)])
    torch.testing.assert_close(ra, want)


def _sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor, scale: float,
                    eps: float) -> tuple[torch.Tensor, ...]:
    """Chain of the per-step reference formulas: A·v, then the softmax, then q·kᵀ·scale."""
    scores = q @ k.transpose(-2, -1) * scale
    a = torch.softmax(scores, -1)
    r_a, r_v = _matmul_reference(a, v, r, eps)
    r_s = _softmax_reference(scores, r_a)
    r_q, r_kt = _matmul_reference(q, k.transpose(-2, -1) * scale, r_s, eps)
    return r_q, r_kt.transpose(-2, -1), r_v


def test_scaled_dot_product_attention_chains_the_three_rules() -> None:
    torch.manual_seed(6)
    q, k, v = (torch.randn(1, 2, 3, 4, dtype=D) for _ in range(3))
    r = torch.randn(1, 2, 3, 4, dtype=D)
    out = scaled_dot_product_attention(1e-9, None, q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    got = _relevance(lambda a, b, c: scaled_dot_product_attention(1e-9, None, a, b, c), (q, k, v), r)
    for g, want in zip(got, _sdpa_reference(q, k, v, r, 0.5, 1e-9), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "causal"])
def test_scaled_dot_product_attention_masks_match_torch(mask_kind: str) -> None:
    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 2, 4, 3, dtype=D) for _ in range(3))
    kwargs: dict = {"is_causal": True} if mask_kind == "causal" else {}
    if mask_kind == "bool":
        kwargs["attn_mask"] = torch.rand(4, 4) > 0.3
        kwargs["attn_mask"][:, 0] = True
    elif mask_kind == "float":
        kwargs["attn_mask"] = torch.randn(4, 4, dtype=D)
    torch.testing.assert_close(scaled_dot_product_attention(1e-9, None, q, k, v, **kwargs),
                               F.scaled_dot_product_attention(q, k, v, **kwargs))
    got = _relevance(lambda a, b, c: scaled_dot_product_attention(1e-9, None, a, b, c, **kwargs), (q, k, v),
                     torch.randn(2, 2, 4, 3, dtype=D))
    assert all(torch.isfinite(g).all() for g in got)


def test_float_attention_mask_is_a_bias_that_keeps_its_epsilon_share() -> None:
    """A float mask added to the scores (a relative position bias) takes x / (x + m + ε sign) of the relevance at
    the softmax input, element by element; a boolean mask takes nothing."""
    torch.manual_seed(8)
    eps = 1e-9
    q, k, v = (torch.randn(2, 2, 4, 3, dtype=D) for _ in range(3))
    mask, r = torch.randn(4, 4, dtype=D), torch.randn(2, 2, 4, 3, dtype=D)
    tracker = Tracker(2)
    got = _relevance(lambda a, b, c: scaled_dot_product_attention(eps, tracker, a, b, c, attn_mask=mask,
                                                                  bias_rule=Epsilon(eps)), (q, k, v), r)
    scale = 3 ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    x = scores + mask
    r_a, r_v = _matmul_reference(torch.softmax(x, -1), v, r, eps)
    r_x = _softmax_reference(x, r_a)
    r_scores = torch.zeros_like(r_x)
    for idx in itertools.product(*(range(n) for n in x.shape)):
        r_scores[idx] = float(scores[idx]) / (float(x[idx]) + (eps if x[idx] >= 0 else -eps)) * float(r_x[idx])
    r_q, r_kt = _matmul_reference(q, k.transpose(-2, -1) * scale, r_scores, eps)
    for g, want in zip(got, (r_q, r_kt.transpose(-2, -1), r_v), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-8, atol=1e-10)
    kept = (r_x - r_scores).sum(dim=(1, 2, 3))
    assert kept.abs().min() > 1e-3 * r.abs().sum()  # the mask's share is real: passing it on whole would fail
    boolean = _relevance(lambda a, b, c: scaled_dot_product_attention(eps, Tracker(2), a, b, c,
                                                                      attn_mask=torch.ones(4, 4, dtype=torch.bool),
                                                                      bias_rule=Epsilon(eps)), (q, k, v), r)
    unmasked = _relevance(lambda a, b, c: scaled_dot_product_attention(eps, None, a, b, c), (q, k, v), r)
    for g, want in zip(boolean, unmasked, strict=True):  # a boolean mask only forbids positions
        torch.testing.assert_close(g, want, rtol=0, atol=0)


def _epsilon_linear(layer: Affine, x: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """ε rule of a linear layer term by term: R_i = Σ_k x_i w_ki R_k / (z_k + ε sign z_k)."""
    w = layer.weight
    z = x @ w.T + (0 if layer.bias is None else layer.bias)
    den = z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)
    return torch.einsum("...i,ki,...k->...i", x, w, r / den)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_is_the_projections_and_the_attention_rules(batch_first: bool) -> None:
    torch.manual_seed(8)
    mha = nn.MultiheadAttention(4, 2, batch_first=batch_first).to(D).eval()
    x = torch.randn(1, 3, 4, dtype=D) if batch_first else torch.randn(3, 1, 4, dtype=D)
    parts = multihead_projections(mha, "attn")
    assert [n for n, _ in parts] == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"]
    eps = 1e-9

    class Project(torch.autograd.Function):  # the ε rule of projection i, as the engine's layer op would apply it
        @staticmethod
        def forward(ctx, t, i):
            ctx.save_for_backward(t)
            ctx.i = i
            layer = parts[i][1]
            return layer.forward(t, layer.weight, layer.bias)

        @staticmethod
        def backward(ctx, r):
            return _epsilon_linear(parts[ctx.i][1], ctx.saved_tensors[0], r, eps), None

    def run(t: torch.Tensor) -> torch.Tensor:
        return multihead_attention(mha, lambda i, u: Project.apply(u, i), eps, None, t, t, t, need_weights=False)[0]

    want_out, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(run(x), want_out)
    r = torch.randn_like(want_out)
    got, = _relevance(run, (x,), r)

    # the reference: every step by its explicit formula, batch first, one head at a time
    xb = x if batch_first else x.transpose(0, 1)
    rb = r if batch_first else r.transpose(0, 1)
    lay = [p[1] for p in parts]
    q, k, v = (xb @ layer.weight.T + layer.bias for layer in lay[:3])
    heads = [(q[..., h * 2:(h + 1) * 2], k[..., h * 2:(h + 1) * 2], v[..., h * 2:(h + 1) * 2]) for h in range(2)]
    mixed = torch.cat([torch.softmax(a @ b.transpose(-2, -1) / 2 ** 0.5, -1) @ c for a, b, c in heads], -1)
    r_mixed = _epsilon_linear(lay[3], mixed, rb, eps)
    r_q, r_k, r_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for h, (a, b, c) in enumerate(heads):
        sl = slice(h * 2, (h + 1) * 2)
        hq, hk, hv = _sdpa_reference(a, b, c, r_mixed[..., sl], 2 ** -0.5, eps)
        r_q[..., sl], r_k[..., sl], r_v[..., sl] = hq, hk, hv
    want = sum(_epsilon_linear(layer, xb, rr, eps) for layer, rr in zip(lay[:3], (r_q, r_k, r_v), strict=True))
    torch.testing.assert_close(got if batch_first else got.transpose(0, 1), want, rtol=1e-7, atol=1e-10)


def test_multihead_attention_masks_and_weights_match_torch() -> None:
    torch.manual_seed(9)
    mha = nn.MultiheadAttention(6, 3, batch_first=True).to(D).eval()
    x = torch.randn(2, 5, 6, dtype=D)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    parts = multihead_projections(mha, "m")

    def project(i: int, t: torch.Tensor) -> torch.Tensor:
        return parts[i][1].forward(t, parts[i][1].weight, parts[i][1].bias)

    out, w = multihead_attention(mha, project, 1e-9, None, x, x, x, key_padding_mask=pad, attn_mask=causal)
    want, want_w = mha(x, x, x, key_padding_mask=pad, attn_mask=causal)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(w, want_w)
