"""The built-in layer kinds: one `register` entry each (see kinds.py), plus the small pieces they need.

Parameters are read as detached tensors at build time; eval-mode semantics throughout (running BatchNorm
statistics, Dropout and stochastic depth as identities).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from mri_lrp.lrp.kinds import Build, RunContext, Step, name_of, register
from mri_lrp.lrp.ops import (
    ConstantAdd,
    ElementwiseEpsilon,
    Gate,
    LayerRule,
    Normalise,
    PassThrough,
    PositiveLinear,
    Routed,
    Sum,
)
from mri_lrp.lrp.rules import Affine

Z_RULE = "z-rule (share in proportion to each input)"
LAYER_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _plain(fn: Callable) -> Step:
    return lambda a, k, c: fn(*a, **k)


def _first_only(b: Build, what: str) -> None:
    """Ops with one rule for one tensor: the input must be the first argument, the others constants."""
    if b.tensor_deps != [0]:
        b.refuse(f"{what} of an input-dependent tensor other than its first argument: no LRP rule")


# --- conv / linear: the layers that get a rule ------------------------------------------------------------

@register("conv/linear", modules=LAYER_MODULES)
def _layer(b: Build) -> Step:
    module = b.module
    base = next(t for t in LAYER_MODULES if isinstance(module, t))
    if type(module).forward is not base.forward or getattr(module, "padding_mode", "zeros") != "zeros":
        b.refuse("custom forward or non-zero padding mode: no exact LRP rule")
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        layer = Affine("linear", module.weight.detach(), bias)
    else:
        layer = Affine("conv", module.weight.detach(), bias, tuple(module.stride), module.padding,
                       tuple(module.dilation), module.groups)
    index = b.add_site(layer)
    sites = b.state.sites
    return lambda a, k, c: LayerRule.apply(a[0], sites[index].layer, c.rules[index], c.tracker)


# --- BatchNorm (module and functional): merged into the conv before it, else passed or ε ------------------

def _exact(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def _bn_scale_shift(b: Build, mean: torch.Tensor | None, var: torch.Tensor | None, weight: torch.Tensor | None,
                    bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = scale·x + shift per channel (float64 on the CPU, for an exact merge on any
    device, including those without float64)."""
    if mean is None or var is None:
        b.refuse("batch statistics without running estimates: a sample's result would depend on its batch")
    scale = torch.rsqrt(_exact(var) + eps)
    if weight is not None:
        scale = scale * _exact(weight)
    shift = -_exact(mean) * scale
    if bias is not None:
        shift = shift + _exact(bias)
    return scale, shift


def _merge(layer: Affine, scale: torch.Tensor, shift: torch.Tensor) -> Affine:
    """BN(layer(x)) as one layer with new weight and bias tensors (bias absorbs the BN shift)."""
    w = _exact(layer.weight)
    w = w * scale.view((-1,) + (1,) * (w.dim() - 1))
    bias = shift + (_exact(layer.bias) * scale if layer.bias is not None else 0.0)
    like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    return Affine(layer.kind, w.to(**like), bias.to(**like), layer.stride, layer.padding, layer.dilation,
                  layer.groups)


def _value_users(node: fx.Node) -> list[fx.Node]:
    """The nodes that read a value, not just its shape (timm asserts `x.ndim` before its fused BatchNorm)."""
    return [u for u in node.users if not (u.op in ("call_function", "call_method") and name_of(u) in SHAPE_ONLY
                                          and (name_of(u) != "getattr" or u.args[1] in SHAPE_ATTRS))]


SHAPE_ONLY = {"size", "dim", "numel", "getattr", "len"}
SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}


def _channel_affine(scale: torch.Tensor, shift: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(t: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (t.dim() - 2)
        return t * scale.to(t).view(shape) + shift.to(t).view(shape)
    return fn


def _batchnorm_step(b: Build, scale: torch.Tensor, shift: torch.Tensor, like: torch.Tensor) -> Step:
    """Merge into the producing conv/linear when it has no other user, else the chosen unmerged rule."""
    producer = b.node.args[0]
    state = b.state
    if (isinstance(producer, fx.Node) and producer in state.site_of and len(_value_users(producer)) == 1
            and state.sites[state.site_of[producer]].merged is None):
        site = state.sites[state.site_of[producer]]
        site.layer, site.merged = _merge(site.layer, scale, shift), b.where
        b.row(f"merged into '{site.name}'")
        return lambda a, k, c: a[0]
    fn = _channel_affine(scale.to(like), shift.to(like))
    if b.options.batchnorm == "epsilon":
        eps = b.options.epsilon
        b.row(f"epsilon on the affine map (epsilon={eps:g})")
        return lambda a, k, c: ElementwiseEpsilon.apply(a[0], fn, eps, c.tracker)
    b.row("pass-through (cannot be merged: not directly after a conv/linear)")
    op, where = b.op, b.where
    return lambda a, k, c: PassThrough.apply(a[0], fn, op, where)


@register("batchnorm", modules=(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm))
def _batchnorm(b: Build) -> Step:
    bn = b.module
    if type(bn).forward not in (nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward):
        b.refuse("custom BatchNorm forward: no exact LRP rule")
    scale, shift = _bn_scale_shift(b, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    return _batchnorm_step(b, scale, shift, bn.running_var)


@register("functional batch_norm", functions=("batch_norm",))
def _functional_batchnorm(b: Build) -> Step:
    """F.batch_norm (timm's fused BatchNorm + activation traces into it): handled like the module."""
    _first_only(b, "batch_norm")
    if b.node.target is torch.batch_norm:  # (input, weight, bias, running_mean, running_var, training, m, eps)
        names = ("weight", "bias", "running_mean", "running_var")
    else:  # F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        names = ("running_mean", "running_var", "weight", "bias")
    got = {n: b.const(i + 1, n) for i, n in enumerate(names)}
    # the training flag is ignored: eval-mode semantics (running statistics), as for the module form
    scale, shift = _bn_scale_shift(b, got["running_mean"], got["running_var"], got["weight"], got["bias"],
                                   float(b.const(7, "eps", 1e-5)))
    return _batchnorm_step(b, scale, shift, got["running_var"])


# --- Layer / Group / Instance normalisation: σ held constant, then LRP-ε on the linear map ---------------

@dataclass(frozen=True)
class Norm:
    """y = γ·(x − μ)/σ + β over the last `dims` axes (LayerNorm) or over channel groups (GroupNorm; groups=0:
    one group per channel, InstanceNorm)."""

    groups: int | None
    dims: int
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.to(x)
        return t if self.groups is None else t.view((1, -1) + (1,) * (x.dim() - 2))

    def _flat(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if self.groups is None:
            return x, tuple(range(-self.dims, 0))
        return x.reshape(x.shape[0], self.groups or x.shape[1], -1), (-1,)

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        """σ per normalised group, shaped to broadcast over `_flat(x)`; the one part held constant."""
        flat, dims = self._flat(x.detach())
        return torch.sqrt(flat.var(dims, unbiased=False, keepdim=True) + self.eps)

    def transpose(self, s: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Lᵀs for L = diag(γ)·diag(1/σ)·C (C the centring within each group, symmetric): C(γ ⊙ s / σ)."""
        u = s if self.weight is None else s * self._view(self.weight, s)
        flat, dims = self._flat(u)
        flat = flat / sigma
        return (flat - flat.mean(dims, keepdim=True)).reshape(s.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer itself (torch's fused kernels)."""
        w = None if self.weight is None else self.weight.to(x)
        b = None if self.bias is None else self.bias.to(x)
        if self.groups is None:
            return F.layer_norm(x, x.shape[x.dim() - self.dims:], w, b, self.eps)
        return F.group_norm(x, self.groups or x.shape[1], w, b, self.eps)


def _norm_step(b: Build, norm: Norm) -> Step:
    eps = b.options.epsilon
    b.row(f"normalisation, sigma held constant; epsilon on the centring and affine map (epsilon={eps:g})")
    return lambda a, k, c: Normalise.apply(a[0], norm, eps, c.tracker)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


@register("layernorm", modules=(nn.LayerNorm,))
def _layernorm(b: Build) -> Step:
    m = b.module
    return _norm_step(b, Norm(None, len(m.normalized_shape), _detached(m.weight), _detached(m.bias), m.eps))


@register("groupnorm", modules=(nn.GroupNorm,))
def _groupnorm(b: Build) -> Step:
    m = b.module
    return _norm_step(b, Norm(m.num_groups, 0, _detached(m.weight), _detached(m.bias), m.eps))


@register("instancenorm", modules=(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d))
def _instancenorm(b: Build) -> Step:
    m = b.module
    if m.track_running_stats and not m.training:  # eval with running estimates: a per-channel affine map
        scale, shift = _bn_scale_shift(b, m.running_mean, m.running_var, m.weight, m.bias, m.eps)
        return _batchnorm_step(b, scale, shift, m.running_var)
    return _norm_step(b, Norm(0, 0, _detached(m.weight), _detached(m.bias), m.eps))


@register("functional layer_norm", functions=("layer_norm",))
def _functional_layernorm(b: Build) -> Step:
    _first_only(b, "layer_norm")
    shape = b.const(1, "normalized_shape")
    dims = 1 if isinstance(shape, int) else len(shape)
    return _norm_step(b, Norm(None, dims, b.const(2, "weight"), b.const(3, "bias"), float(b.const(4, "eps", 1e-5))))


@register("functional group_norm", functions=("group_norm",))
def _functional_groupnorm(b: Build) -> Step:
    _first_only(b, "group_norm")
    return _norm_step(b, Norm(int(b.const(1, "num_groups")), 0, b.const(2, "weight"), b.const(3, "bias"),
                              float(b.const(4, "eps", 1e-5))))


@register("functional instance_norm", functions=("instance_norm",))
def _functional_instancenorm(b: Build) -> Step:
    _first_only(b, "instance_norm")
    mean, var = b.const(1, "running_mean"), b.const(2, "running_var")
    weight, bias = b.const(3, "weight"), b.const(4, "bias")
    eps = float(b.const(7, "eps", 1e-5))
    if not b.const(5, "use_input_stats", True):
        scale, shift = _bn_scale_shift(b, mean, var, weight, bias, eps)
        return _batchnorm_step(b, scale, shift, var)
    return _norm_step(b, Norm(0, 0, weight, bias, eps))


@register("rmsnorm", modules=tuple(m for m in (getattr(nn, "RMSNorm", None),) if m is not None),
          functions=("rms_norm",))
def _rmsnorm(b: Build) -> Step:
    """x/rms(x)·γ with the rms held constant is a diagonal map without bias: relevance passes unchanged."""
    _first_only(b, "rms_norm")
    b.row("pass-through (rms held constant: a diagonal map)")
    make, op, where = b.bound(0), b.op, b.where
    return lambda a, k, c: PassThrough.apply(a[0], make(a, k), op, where)


# --- element-wise activations: relevance passes through ---------------------------------------------------

ACTIVATIONS = ("relu", "relu6", "leaky_relu", "prelu", "elu", "selu", "celu", "gelu", "silu", "mish", "softplus",
               "hardswish", "sigmoid", "hardsigmoid", "tanh", "hardtanh", "softsign", "tanhshrink", "logsigmoid",
               "hardshrink", "softshrink", "threshold", "rrelu", "clamp", "clip", "clamp_min", "clamp_max")
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                      nn.Mish, nn.Softplus, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Hardtanh,
                      nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.RReLU,
                      "monai.networks.blocks.activation.Swish", "monai.networks.blocks.activation.MemoryEfficientSwish",
                      "monai.networks.blocks.activation.Mish")


@register("element-wise activation", modules=ACTIVATION_MODULES, functions=ACTIVATIONS)
def _activation(b: Build) -> Step:
    op, where = b.op, b.where
    b.row("pass-through")
    module = b.module
    if module is not None and getattr(module, "inplace", False) is True:
        # An in-place activation would overwrite a value the rules keep for the backward: run an out-of-place
        # shallow copy of the module (one pass, where a copy of the input and then the in-place op take two).
        outplace = copy.copy(module)
        outplace.inplace = False
        return lambda a, k, c: PassThrough.apply(a[0], outplace.forward, op, where)
    if module is None:
        _first_only(b, name_of(b.node))
    make = b.bound(0)
    return lambda a, k, c: PassThrough.apply(a[0], make(a, k), op, where)


# --- routing: values moved, copied or selected; the gradient routes relevance unchanged -------------------

ROUTE = ("view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze",
         "contiguous", "split", "chunk", "unbind", "getitem", "movedim",
         "swapaxes", "narrow", "clone", "view_as", "reshape_as", "expand", "expand_as", "repeat", "tile", "flip",
         "roll", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "to", "float",
         "type_as")
MAX_POOLS = ("amax", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
             "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")


@register("routing", functions=ROUTE)
def _route(b: Build) -> Step:
    return _plain(b.fn)


@register("concatenation", functions=("cat", "concat", "concatenate", "stack"))
def _concat(b: Build) -> Step:
    """Routing; with constant operands (a ViT's class token) the relevance landing on them is absorbed."""
    parts = b.arg(0, "tensors")
    if not isinstance(parts, (list, tuple)):
        return _plain(b.fn)
    live = [i for i, p in enumerate(parts) if isinstance(p, fx.Node) and p in b.state.dep]
    if len(live) == len(parts):
        return _plain(b.fn)
    if len(live) > 1:
        b.refuse("concatenation of several input-dependent tensors with constants: no LRP rule here; "
                 "concatenate the constants onto one of them first")
    i, fn = live[0], b.fn
    b.row("routing (relevance on the constant operands is absorbed)")

    def step(a: tuple, k: dict, c: RunContext) -> torch.Tensor:
        parts = list(a[0])

        def joined(t: torch.Tensor) -> torch.Tensor:
            return fn([*parts[:i], t, *parts[i + 1:]], *a[1:], **k)
        return Routed.apply(parts[i], joined, c.tracker)
    return step


@register("max pooling", functions=MAX_POOLS, modules=(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                                                       nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                                                       nn.AdaptiveMaxPool3d))
def _max_pool(b: Build) -> Step:
    if b.node.op == "call_module":
        b.row("winner takes all")
    return _plain(b.fn)


@register("reshape module", modules=(nn.Flatten, nn.Unflatten, nn.ChannelShuffle, nn.PixelShuffle,
                                     nn.PixelUnshuffle))
def _reshape_module(b: Build) -> Step:
    b.row("routing")
    return _plain(b.fn)


# --- eval-mode identities ---------------------------------------------------------------------------------

DROPOUT = ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout, "torchvision.ops.stochastic_depth.StochasticDepth",
                    "timm.layers.drop.DropPath", "timm.models.layers.drop.DropPath",
                    "monai.networks.layers.drop_path.DropPath")


@register("eval-mode identity", modules=IDENTITY_MODULES, functions=DROPOUT)
def _identity(b: Build) -> Step:
    module = b.module
    if module is not None and not isinstance(module, (nn.Identity, nn.modules.dropout._DropoutNd)):
        b.row("identity (eval mode)")
    return lambda a, k, c: a[0]


@register("stochastic depth", functions=("torchvision.ops.stochastic_depth.stochastic_depth",))
def _stochastic_depth(b: Build) -> Step:
    b.row("identity (eval mode)")
    return lambda a, k, c: a[0]


# --- padding, pooling, interpolation: linear maps with non-negative weights ------------------------------

PAD_MODULES = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
               nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.ReflectionPad1d,
               nn.ReflectionPad2d, nn.ReflectionPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)


@register("padding", modules=PAD_MODULES, functions=("pad",))
def _pad(b: Build) -> Step:
    """Each output copies one input or is a constant: relevance on copies returns to their source (replicate,
    reflect, circular); relevance on constants is absorbed (none when the constant is 0)."""
    if b.node.op != "call_module":
        _first_only(b, "pad")
    b.row("routing (copies return their relevance to the source; constant padding absorbs its own)")
    make = b.bound(0)
    return lambda a, k, c: Routed.apply(a[0], make(a, k), c.tracker)


POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveAvgPool3d)
POOLS = ("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
         "adaptive_avg_pool3d", "mean", "sum")


@register("average pooling", modules=POOL_MODULES, functions=POOLS)
def _avg_pool(b: Build) -> Step:
    if b.node.op != "call_module":
        _first_only(b, name_of(b.node))
    b.row(Z_RULE)
    make = b.bound(0)
    return lambda a, k, c: PositiveLinear.apply(a[0], make(a, k), c.tracker)


UPSAMPLE_MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)


@register("upsampling", modules=UPSAMPLE_MODULES,
          functions=("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"))
def _upsample(b: Build) -> Step:
    """Nearest copies (routing); linear/area interpolation shares by contribution (z-rule; the weights are
    non-negative, so for non-negative inputs this is z⁺); bicubic weights can be negative (LRP-0 still)."""
    module = b.module
    if module is None:
        _first_only(b, name_of(b.node))
        name = name_of(b.node)
        mode = "nearest" if name == "upsample_nearest" else "bilinear" if name == "upsample_bilinear" \
            else b.const(3, "mode", "nearest")
    else:
        mode = getattr(module, "mode", "nearest")
    make = b.bound(0)
    if str(mode).startswith("nearest"):
        b.row(f"routing ({mode} copies)")
        return lambda a, k, c: Routed.apply(a[0], make(a, k), c.tracker)
    b.row(f"{Z_RULE}, {mode} weights")
    return lambda a, k, c: PositiveLinear.apply(a[0], make(a, k), c.tracker)


# --- arithmetic: residual sums, constant scaling, multiplicative gates -----------------------------------

SCALE = ("mul", "truediv", "div", "neg")
ADD = {"add": 1.0, "sub": -1.0}
GATE_ACTIVATIONS = {"sigmoid", "hardsigmoid"}
GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_TO_GATE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as",
            "contiguous", "view_as", "reshape_as", "permute", "transpose", "to", "float", "type_as"}


@register("add/sub", functions=tuple(ADD))
def _add(b: Build) -> Step:
    deps = b.tensor_deps
    op, where = b.op, b.where
    if len(deps) == 1:
        return _constant_add(b, deps[0])
    if deps == [0, 1]:
        sign = ADD[name_of(b.node)] * float(b.node.kwargs.get("alpha", 1.0))
        eps = b.options.residual_epsilon
        b.row(f"residual {op}: share in proportion to each operand (epsilon={eps:g})")
        return lambda a, k, c: Sum.apply(a[0], a[1], sign, eps, c.tracker, where)
    b.refuse()
    return _plain(b.fn)  # unreachable


def _constant_add(b: Build, i: int) -> Step:
    """x + c, x − c or c − x with c a parameter or constant: a bias, treated as the rule treats a layer's bias
    (kept out by αβ, z⁺ and γ unless include_bias; given its share by LRP-0 and ε)."""
    rule, op, where, make = b.options.constant_rule, b.op, b.where, b.bound(i)
    if rule is None or not rule.includes_bias():
        left_out = f": a bias, left out by {rule.name}" if rule is not None else ""
        b.row(f"pass-through (constant operand{left_out})")
        return lambda a, k, c: PassThrough.apply(a[i], make(a, k), op, where)
    scale = float(b.node.kwargs.get("alpha", 1.0)) if i == 1 else 1.0  # torch.add's alpha scales the second
    coefficient = -scale if (name_of(b.node) == "sub" and i == 1) else scale
    b.row(f"bias (constant operand) under {rule.describe()}: the constant keeps its share")
    return lambda a, k, c: ConstantAdd.apply(a[i], make(a, k), coefficient, rule, c.tracker, where)


def _gate_source(b: Build, node: fx.Node) -> bool:
    """Whether `node` is a gate: a sigmoid / hard-sigmoid output, seen through reshapes and broadcasts."""
    while True:
        if node.op == "call_module":
            return isinstance(b.model.get_submodule(str(node.target)), GATE_MODULES)
        if node.op not in ("call_function", "call_method"):
            return False
        name = name_of(node)
        if name in GATE_ACTIVATIONS:
            return True
        if name not in _TO_GATE or not node.args or not isinstance(node.args[0], fx.Node):
            return False
        node = node.args[0]


@register("scale/gate", functions=SCALE)
def _scale(b: Build) -> Step:
    deps, name = b.tensor_deps, name_of(b.node)
    op, where = b.op, b.where
    if len(deps) == 1 and not (name in {"div", "truediv"} and deps != [0]):
        b.row("pass-through (constant operand)")
        i, make = deps[0], b.bound(deps[0])
        return lambda a, k, c: PassThrough.apply(a[i], make(a, k), op, where)
    if name == "mul" and deps == [0, 1]:
        gates = [_gate_source(b, b.node.args[i]) for i in (0, 1)]
        if gates.count(True) == 1:
            gate = gates.index(True)
            signal = 1 - gate
            b.row("gate: relevance to the signal, the gate held constant (signal-take-all)")
            # the gate is detached: its branch then costs no backward at all (it would only carry zeros)
            return lambda a, k, c: Gate.apply(a[signal], a[gate].detach(), where)
        why = "both operands are gates" if all(gates) else "neither operand is a sigmoid/hard-sigmoid gate"
        b.refuse(f"product of two input-dependent tensors ({why}): no LRP rule; gates are recognised when one "
                 f"factor is torch.sigmoid / nn.Sigmoid / hardsigmoid of a branch")
    b.refuse("division by an input-dependent tensor: no LRP rule" if name in {"div", "truediv"} else
             "product of two input-dependent tensors: no LRP rule")
    return _plain(b.fn)  # unreachable
