"""Attention by AttnLRP (Achtibat et al. 2024): the softmax linearised at its input, products of two signals shared
half and half.

- Softmax s = softmax(x) (Proposition 3.1, a first-order Taylor expansion at x itself):
  R_x = x ⊙ (R − s · Σ R), sums along the softmax axis. It does not conserve: what it does not pass on (the
  expansion's bias term) is reported as absorbed. Masked inputs (−inf) get no relevance.
- A bilinear map z = f(a, b) of two input-dependent tensors (q·kᵀ, A·v, einsum, matmul; Proposition 3.3): each
  product term gets its share of R by the ε rule, half to each factor: R_a = ½ a ⊙ ∂⟨f(a, b), S⟩/∂a with
  S = R / (z + ε sign z), likewise for b. When only one operand depends on the input (a functional linear map
  with a constant matrix), that operand gets all of it.
- `nn.MultiheadAttention` and `F.scaled_dot_product_attention` are re-expressed with these two ops (and the
  conv/linear rule of each projection), so no attention weight is ever treated as a constant.
- A float mask or a relative position bias added to the scores is a bias to the rule an add of a constant
  follows (see layers.py); a boolean or causal mask only forbids positions, and relevance passes it unchanged.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from mri_lrp.errors import UnsupportedLayerError
from mri_lrp.lrp import layers  # noqa: F401 - the built-in kinds first: the softmax kind below replaces theirs
from mri_lrp.lrp.kinds import Build, RunContext, Site, Step, register
from mri_lrp.lrp.ops import LayerRule, PassThrough, Routed, Tracker, add_constant
from mri_lrp.lrp.rules import Affine, Rule, stabilise

Pair = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Softmax(torch.autograd.Function):
    """softmax along `dim`; backward is the AttnLRP softmax rule R_x = x ⊙ (R − s Σ R)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, tracker: Tracker | None) -> torch.Tensor:
        s = torch.softmax(x, dim)
        ctx.save_for_backward(x, s)
        ctx.dim, ctx.tracker = dim, tracker
        return s

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, s = ctx.saved_tensors
        x = torch.where(torch.isinf(x), torch.zeros_like(x), x)  # masked scores (−inf) have s = 0: no share
        r_in = x * (r - s * r.sum(ctx.dim, keepdim=True))
        if ctx.tracker is not None:
            ctx.tracker.record(r, r_in)
        return r_in, None, None


class Bilinear(torch.autograd.Function):
    """z = fn(a, b), bilinear in (a, b); backward is the uniform ε rule (half the relevance to each signal)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, fn: Pair, signals: tuple[bool, bool], epsilon: float,
                tracker: Tracker | None) -> torch.Tensor:
        z = fn(a, b)
        ctx.save_for_backward(a, b, z)
        ctx.fn, ctx.signals, ctx.epsilon, ctx.tracker = fn, signals, epsilon, tracker
        return z

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None,
                                                     None]:
        a, b, z = ctx.saved_tensors
        share = 1.0 / sum(ctx.signals)
        s = r * share / stabilise(z, ctx.epsilon)
        with torch.enable_grad():
            ar = a.detach().requires_grad_(ctx.signals[0])
            br = b.detach().requires_grad_(ctx.signals[1])
            wanted = [t for t, on in zip((ar, br), ctx.signals, strict=True) if on]
            grads = iter(torch.autograd.grad(ctx.fn(ar, br), wanted, s))
        ra = a * next(grads) if ctx.signals[0] else None
        rb = b * next(grads) if ctx.signals[1] else None
        if ctx.tracker is not None:
            ctx.tracker.record(r, tuple(t for t in (ra, rb) if t is not None))
        return ra, rb, None, None, None, None


def _scores(scale: float) -> Pair:
    return lambda q, k: torch.matmul(q, k.transpose(-2, -1)) * scale


def _mix(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, v)


def additive_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A boolean mask (True = may attend, as `scaled_dot_product_attention` reads it) or a float mask as one
    float tensor to add to the scores (−inf where attending is not allowed)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(~mask, float("-inf"))
    return mask.to(like.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None,
              epsilon: float, tracker: Tracker | None, is_causal: bool = False,
              bias_rule: Rule | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ · scale + mask) v, every step carrying relevance; returns (output, attention weights).

    A float mask is a bias added to the scores (a relative position bias, ALiBi): it follows `bias_rule`'s
    treatment of a bias. A boolean or causal mask only forbids positions: relevance passes it unchanged."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = Bilinear.apply(q, k, _scores(scale), (True, True), epsilon, tracker)
    if is_causal:
        n, m = q.shape[-2], k.shape[-2]
        causal = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        scores = scores + additive_mask(causal, scores)
    extra = additive_mask(mask, scores)
    if extra is not None:
        scores = add_constant(scores, extra, bias_rule if mask.is_floating_point() else None, tracker,
                              "attention mask")
    weights = Softmax.apply(scores, -1, tracker)
    return Bilinear.apply(weights, v, _mix, (True, True), epsilon, tracker), weights


def scaled_dot_product_attention(epsilon: float, tracker: Tracker | None, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False, *, bias_rule: Rule | None = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention` (dropout is off: the explained network is the eval-mode one); a float
    attn_mask is a bias to `bias_rule`."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
    return attention(query, key, value, attn_mask, scale, epsilon, tracker, is_causal, bias_rule)[0]


def multihead_projections(module: nn.MultiheadAttention, name: str) -> list[tuple[str, Affine]]:
    """The four linear maps of a MultiheadAttention (query, key, value, output), each a layer with its own rule."""
    if module.bias_k is not None or module.add_zero_attn:
        raise UnsupportedLayerError(type(module).__name__, name, "add_bias_kv / add_zero_attn: no LRP rule "
                                    "(learned key/value rows are constants with no input)")
    e = module.embed_dim
    if module.in_proj_weight is not None:
        weights = module.in_proj_weight.detach().split(e)
    else:
        weights = (module.q_proj_weight.detach(), module.k_proj_weight.detach(), module.v_proj_weight.detach())
    biases = (None,) * 3 if module.in_proj_bias is None else module.in_proj_bias.detach().split(e)
    out = module.out_proj
    parts = [(f"{name}.{p}_proj", Affine("linear", w, b)) for p, w, b in zip("qkv", weights, biases, strict=True)]
    out_bias = None if out.bias is None else out.bias.detach()
    return parts + [(f"{name}.out_proj", Affine("linear", out.weight.detach(), out_bias))]


def multihead_attention(module: nn.MultiheadAttention, project: Callable[[int, torch.Tensor], torch.Tensor],
                        epsilon: float, tracker: Tracker | None, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                        attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                        is_causal: bool = False, *,
                        bias_rule: Rule | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`nn.MultiheadAttention.forward` in eval mode, written with the relevance-carrying ops.

    `project(i, x)` applies projection i of `multihead_projections` (0-2: q, k, v; 3: output) with its rule; a
    float attn_mask is a bias to `bias_rule` (a boolean one, and key padding, only forbid positions).
    """
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    if not module.batch_first:  # (L, B, E) -> (B, L, E)
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    b, n, _ = query.shape
    h = module.num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], h, -1).transpose(1, 2)

    q, k, v = heads(project(0, query)), heads(project(1, key)), heads(project(2, value))
    mask = _multihead_mask(attn_mask, key_padding_mask, b, h, n, k.shape[2], q)
    float_mask = attn_mask is not None and attn_mask.is_floating_point()
    out, weights = attention(q, k, v, mask, None, epsilon, tracker, is_causal and attn_mask is None,
                             bias_rule if float_mask else None)
    out = project(3, out.transpose(1, 2).reshape(b, n, -1))
    if not module.batch_first:
        out = out.transpose(0, 1)
    if not batched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    weights = weights.mean(1) if average_attn_weights else weights
    return out, (weights if batched else weights.squeeze(0))


def _multihead_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, b: int, h: int, n: int,
                    s: int, like: torch.Tensor) -> torch.Tensor | None:
    """MultiheadAttention's masks (boolean True = masked out, or additive floats) as one additive mask (B, H, L, S)."""
    total = None
    if attn_mask is not None:
        add = additive_mask(~attn_mask if attn_mask.dtype == torch.bool else attn_mask, like)
        total = add.view(b, h, n, s) if add.dim() == 3 else add.view(1, 1, n, s)
    if key_padding_mask is not None:
        pad = key_padding_mask
        add = additive_mask(~pad if pad.dtype == torch.bool else pad, like).view(b, 1, 1, s)
        total = add if total is None else total + add
    return total


def softmax_dim(args: tuple, kwargs: dict) -> int | None:
    """The axis of a traced softmax call (F.softmax(x, dim), x.softmax(dim), torch.softmax(x, dim=...))."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim if isinstance(dim, int) else None


def softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None, tracker: Tracker | None) -> torch.Tensor:
    """A softmax inside the network (not the final one) with the AttnLRP rule; `dtype` as torch.softmax's."""
    return Softmax.apply(x if dtype is None else x.to(dtype), dim, tracker)


def einsum_pair(equation: str) -> Pair:
    """The bilinear map of a two-operand einsum."""
    return lambda a, b: torch.einsum(equation, a, b)


def matmul_pair(name: str) -> Pair:
    """The bilinear map of a matmul-like call (`@`, matmul, bmm, mm)."""
    return {"bmm": torch.bmm, "mm": torch.mm}.get(name, torch.matmul)



# --- layer kinds ------------------------------------------------------------------------------------------

def _depends(b: Build, value: Any) -> bool:
    return isinstance(value, fx.Node) and value in b.state.dep


@register("softmax (AttnLRP)", modules=(nn.Softmax,), functions=("softmax",), replace=True)
def _softmax(b: Build) -> Step:
    """A softmax inside the network (the final one is stripped before building: explanations start at logits)."""
    if b.module is not None:
        dim, dtype = b.module.dim, None
    else:
        if b.tensor_deps != [0]:
            b.refuse("softmax of an input-dependent tensor other than its first argument: no LRP rule")
        dim, dtype = softmax_dim(b.node.args, b.node.kwargs), b.node.kwargs.get("dtype")
    if not isinstance(dim, int):
        b.refuse("softmax without an explicit dim: give nn.Softmax / softmax its dim")
    b.row("AttnLRP softmax: linearised at its input (the expansion's bias is absorbed)")
    return lambda a, k, c: softmax(a[0], dim, dtype, c.tracker)


@register("matrix product", functions=("matmul", "bmm", "mm", "einsum"))
def _product(b: Build) -> Step:
    """Two input-dependent factors: the uniform rule; one: the ε rule with the constant factor held."""
    name = b.op
    offset = 1 if name == "einsum" else 0
    operands = b.node.args[offset:]
    if name == "einsum" and not isinstance(b.node.args[0], str):
        b.refuse("einsum with a non-literal equation: no LRP rule")
    if len(operands) != 2 or b.node.kwargs:
        b.refuse(f"{name} of {len(operands)} operands: LRP rules cover products of two tensors")
    signals = (_depends(b, operands[0]), _depends(b, operands[1]))
    fn = einsum_pair(b.node.args[0]) if name == "einsum" else matmul_pair(name)
    eps = b.options.residual_epsilon
    b.row(f"uniform rule: half to each factor, epsilon={eps:g}" if all(signals) else
          f"epsilon={eps:g}, the constant factor held")
    i, j = offset, offset + 1
    return lambda a, k, c: Bilinear.apply(a[i], a[j], fn, signals, eps, c.tracker)


@register("scaled dot-product attention", functions=("scaled_dot_product_attention",))
def _sdpa(b: Build) -> Step:
    mask = b.arg(3, "attn_mask")
    if _depends(b, mask):
        b.refuse("attention mask computed from the input: no LRP rule")
    eps = b.options.residual_epsilon
    dropout = b.arg(4, "dropout_p", 0.0)
    note = " (dropout_p ignored: the explained network is the eval-mode one)" if dropout else ""
    b.row(f"AttnLRP: uniform rule on q·kᵀ and A·v (epsilon={eps:g}), softmax linearised{note}")
    rule = b.options.constant_rule
    return lambda a, k, c: scaled_dot_product_attention(eps, c.tracker, *a, **k, bias_rule=rule)


@register("multi-head attention", modules=(nn.MultiheadAttention,))
def _multihead(b: Build) -> Step:
    """The four projections become layers with rules (named `<path>.q_proj` ... `<path>.out_proj`)."""
    module, where, state = b.module, b.where, b.state
    for name, value in b.node.kwargs.items():
        if name.endswith("mask") and _depends(b, value):
            b.refuse(f"{name} computed from the input: no LRP rule")
    for user in b.node.users:
        if user.target is operator.getitem and user.args[1] == 1 and user.users:
            b.refuse("its attention weights are used downstream: relevance has a rule through the output only; "
                     "call it with need_weights=False or drop the weights")
    first = b.node not in state.after_layer
    indices = []
    for name, layer in multihead_projections(module, where):
        indices.append(len(state.sites))
        state.sites.append(Site(name, "Linear", layer, first=first and not name.endswith("out_proj")))
        state.rows.append((name, "Linear", indices[-1]))
    state.site_of[b.node] = indices[-1]
    eps, rule = b.options.residual_epsilon, b.options.constant_rule
    b.row(f"AttnLRP: uniform rule on q·kᵀ and A·v (epsilon={eps:g}), softmax linearised")
    sites = state.sites

    def step(a: tuple, k: dict, c: RunContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        def project(i: int, t: torch.Tensor) -> torch.Tensor:
            return LayerRule.apply(t, sites[indices[i]].layer, c.rules[indices[i]], c.tracker)
        return multihead_attention(module, project, eps, c.tracker, *a, **k, bias_rule=rule)
    return step


_ADDS = (torch.add, torch.Tensor.add, torch.Tensor.__add__)
_SCALINGS = (torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.div,
             torch.Tensor.div, torch.Tensor.__truediv__)


class _WindowOps(TorchFunctionMode):
    """Runs a window-attention function as written, with its linear maps, matrix products, softmax, padding and
    constant scalings swapped for their relevance ops. Windows are stacked as (batch · windows, ...), batch
    outermost: they are regrouped per sample around each op, so the tracker gives each sample what it absorbed."""

    def __init__(self, batch: int, linear: dict[int, Callable[[torch.Tensor], torch.Tensor]], epsilon: float,
                 tracker: Tracker, bias_rule: Rule | None) -> None:
        super().__init__()
        self.batch, self.linear, self.epsilon, self.tracker = batch, linear, epsilon, tracker
        self.bias_rule = bias_rule

    def _grouped(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.batch, -1, *t.shape[1:])

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and id(args[1]) in self.linear:
            x = args[0]
            y = self.linear[id(args[1])](x.reshape(self.batch, -1, x.shape[-1]))
            return y.reshape(*x.shape[:-1], y.shape[-1])
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__):
            a, b = args
            z = Bilinear.apply(self._grouped(a), self._grouped(b), torch.matmul, (True, True), self.epsilon,
                               self.tracker)
            return z.reshape(-1, *z.shape[2:])
        if func in (F.softmax, torch.softmax, torch.Tensor.softmax):
            dim = softmax_dim(args, kwargs)
            if dim is None or dim < 0 and dim != -1 or dim == 0:
                raise UnsupportedLayerError("softmax", "window attention", f"softmax over dim {dim}: no LRP rule")
            return Softmax.apply(self._grouped(args[0]), -1 if dim == -1 else dim + 1, self.tracker) \
                .reshape(args[0].shape)
        if func in _SCALINGS and sum(isinstance(t, torch.Tensor) for t in args) == 1 and isinstance(args[0],
                                                                                               torch.Tensor):
            # q · scale: relevance passes unchanged (the plain gradient would scale it)
            return PassThrough.apply(args[0], lambda t: func(t, *args[1:], **kwargs), "mul", "window attention")
        if func in (F.pad, torch._C._nn.pad):
            return Routed.apply(args[0], lambda t: func(t, *args[1:], **kwargs), self.tracker)
        if func in _ADDS and len(args) == 2 and not kwargs and isinstance(args[0], torch.Tensor) \
                and args[0].requires_grad and not (isinstance(args[1], torch.Tensor) and args[1].requires_grad):
            # the relative position bias and the shift mask added to the scores: constants, a bias to the rule
            return add_constant(args[0], args[1], self.bias_rule, self.tracker, "window attention")
        return func(*args, **kwargs)


@register("shifted-window attention (Swin)",
          functions=("torchvision.models.swin_transformer.shifted_window_attention",))
def _shifted_window(b: Build) -> Step:
    """torchvision's Swin attention, run as written with AttnLRP ops; its qkv and proj maps get rules."""
    if b.tensor_deps != [0]:
        b.refuse("window attention whose weights depend on the input: no LRP rule")
    if b.arg(11, "logit_scale") is not None:
        b.refuse("cosine attention (Swin V2: normalised q and k): no LRP rule")
    state, path = b.state, b.where.split(" (")[0]
    first = b.node not in state.after_layer
    indices = []
    for part, (w, bias) in (("qkv", (1, 9)), ("proj", (2, 10))):
        layer = Affine("linear", b.const(w, f"{part}_weight"), b.const(bias, f"{part}_bias"))
        indices.append(len(state.sites))
        state.sites.append(Site(f"{path}.{part}", "Linear", layer, first=first and part == "qkv"))
        state.rows.append((f"{path}.{part}", "Linear", indices[-1]))
    state.site_of[b.node] = indices[-1]
    eps, rule = b.options.residual_epsilon, b.options.constant_rule
    b.row(f"AttnLRP: uniform rule on q·kᵀ and A·v (epsilon={eps:g}), softmax linearised, windows routed")
    fn, sites = b.fn, state.sites

    def step(a: tuple, k: dict, c: RunContext) -> torch.Tensor:
        def layer(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda t: LayerRule.apply(t, sites[i].layer, c.rules[i], c.tracker)
        linear = {id(a[1]): layer(indices[0]), id(a[2]): layer(indices[1])}
        with _WindowOps(a[0].shape[0], linear, eps, c.tracker, rule):
            return fn(*a, **k)
    return step


@register("patch merging (Swin)", functions=("torchvision.models.swin_transformer._patch_merging_pad",))
def _patch_merging(b: Build) -> Step:
    """Zero padding to even sizes, then the 2×2 neighbours stacked as channels: values only move (routing)."""
    if b.tensor_deps != [0]:
        b.refuse()
    b.row("routing (padding absorbs its own)")
    fn = b.fn
    return lambda a, k, c: Routed.apply(a[0], fn, c.tracker)
