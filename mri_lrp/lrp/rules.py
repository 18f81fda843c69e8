"""LRP rules for conv/linear layers: each rule is one small class that shares a layer's output relevance.

Every rule follows the same recipe (Montavon et al. 2019): a modified forward z, a stabilised division
s = R / z, one transposed pass c = Wᵀs, and R_in = a ⊙ c. Rules run inside the backward of the layer's
autograd function, so they see the layer input `a`, the plain output `z` (with bias) and the output
relevance `R`. Adding a rule means adding one class here and one line in `RULES`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mri_lrp.errors import SettingsError

# The version of the relevance the engine gives (these rules and the ops, attention and composites that apply
# them). Bump it whenever any rule's maps change: the resume fingerprint holds it, so results of the old rules
# are explained again instead of resumed. 2: an add of a constant (x + c) is a bias to the rule.
RULES_VERSION = 2


@dataclass(frozen=True)
class Affine:
    """A conv (1-3d) or linear map with its own weight and bias tensors (never the user's Parameters)."""

    kind: str  # "linear" or "conv"
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    # modified weights per (rule, form, dtype, device), built on the first call and reused for every batch
    cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                groups: int | None = None) -> torch.Tensor:
        """The layer's map with a (possibly modified) weight: the 'modified forward' of a rule."""
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        conv = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 3]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, groups or self.groups)

    def transpose(self, grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor,
                  groups: int | None = None) -> torch.Tensor:
        """Wᵀ·grad: the gradient of forward(x, weight) with respect to x, without autograd."""
        if self.kind == "linear":
            return grad @ weight
        padding = self.padding
        if isinstance(padding, str):  # "same"/"valid": ask autograd once, it knows the implicit padding
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                return torch.autograd.grad(self.forward(xr, weight, groups=groups), xr, grad)[0]
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, list(self.stride), list(padding), list(self.dilation), False,
            [0] * len(self.stride), groups or self.groups, [True, False, False],
        )[0]

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias in x's dtype and device (a no-op when they already match)."""
        return self.cached(("params", x.dtype, x.device), lambda: (
            self.weight.to(device=x.device, dtype=x.dtype),
            None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)))

    def cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        """make() once per key: a rule's modified weights are a function of the layer alone, not of the batch."""
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = make()
        return hit


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z + ε·sign(z), sign(0) = +1, so the denominator is never zero when ε > 0.

    (z = −0.0 gets −ε: that only happens when every contribution is zero, so the shares are 0 either way.)
    """
    return torch.copysign(z.new_full((), epsilon), z).add_(z)


def nonzero(z: torch.Tensor) -> torch.Tensor:
    """z with exact zeros replaced by 1 (a comparison written as floats: much faster than masked_fill)."""
    return torch.eq(z, 0, out=torch.empty_like(z)).add_(z)


def safe_divide(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """r / z where z ≠ 0, else 0: a side with no contributions receives (and passes on) nothing."""
    return torch.ne(z, 0, out=torch.empty_like(z)).mul_(r / nonzero(z))


@dataclass(frozen=True)
class Rule:
    """Base class: `relevance(layer, a, z, R)` returns the input relevance of one layer."""

    name: ClassVar[str] = ""

    def scale(self) -> float:
        """How much relevance the rule passes on by design (α − β for αβ; 1 otherwise); used for `absorbed`."""
        return 1.0

    def relevance(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def includes_bias(self) -> bool:
        """Whether a bias takes a share of the relevance under this rule (False: the rule leaves it out)."""
        return False

    def bias_share(self, part: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Relevance of `part` in z = part + c, c a constant added outside any layer (a ViT's position
        embedding): one contribution and a bias, element by element. Only called where `includes_bias()`;
        elsewhere the constant is left out as the rule leaves out a layer's bias, and relevance passes."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line with the rule and its parameters (shown by `mri-lrp info`)."""
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{self.name}({args})" if args else self.name


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε: R_j = a_j Σ_k w_jk R_k / (z_k + ε·sign z_k); bias stays in z, so bias and ε absorb a little."""

    name: ClassVar[str] = "epsilon"
    epsilon: float = 1e-6

    def relevance(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w, _ = layer.params(a)
        return layer.transpose(r / stabilise(z, self.epsilon), w, a).mul_(a)

    def includes_bias(self) -> bool:
        return True

    def bias_share(self, part: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return part * r / stabilise(z, self.epsilon)


@dataclass(frozen=True)
class Zero(Rule):
    """LRP-0: R_j = a_j Σ_k w_jk R_k / z_k (gradient × input); outputs with z_k = 0 pass nothing on."""

    name: ClassVar[str] = "zero"

    def relevance(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w, _ = layer.params(a)
        return layer.transpose(safe_divide(r, z), w, a).mul_(a)

    def includes_bias(self) -> bool:
        return True

    def bias_share(self, part: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return part * safe_divide(r, z)


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ: weights w + γw⁺ favour positive contributions; assumes a ≥ 0 (lower/middle layers)."""

    name: ClassVar[str] = "gamma"
    gamma: float = 0.25
    epsilon: float = 1e-6
    include_bias: bool = False

    def relevance(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w, b = layer.params(a)
        wg, bg = layer.cached((self, a.dtype, a.device), lambda: (
            w + self.gamma * w.clamp(min=0),
            b + self.gamma * b.clamp(min=0) if (self.include_bias and b is not None) else None))
        zg = layer.forward(a, wg, bg)
        return a * layer.transpose(r / stabilise(zg, self.epsilon), wg, a)

    def includes_bias(self) -> bool:
        return self.include_bias

    def bias_share(self, part: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The weight 1 becomes 1 + γ, the constant c + γc⁺, as for a layer's weights and bias."""
        c = z - part
        boosted = part * (1.0 + self.gamma)
        return boosted * r / stabilise(boosted + c + self.gamma * c.clamp(min=0), self.epsilon)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ (Bach et al. 2015), sign-aware: positive parts a⁺w⁺ + a⁻w⁻ get αR, negative parts −βR.

    Bias excluded by default (as in the seed formula); `include_bias` adds b⁺ / b⁻ to the two sums.
    z⁻ comes from the plain forward as (z − b) − z⁺, so the rule costs one extra forward; when the layer
    input is non-negative (after a ReLU) only the w⁺/w⁻ pair is needed.
    """

    name: ClassVar[str] = "alphabeta"
    alpha: float = 2.0
    beta: float = 1.0
    include_bias: bool = False

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise SettingsError(f"alphabeta: alpha and beta must be >= 0 (got alpha={self.alpha}, beta={self.beta})")

    def scale(self) -> float:
        return self.alpha - self.beta

    def includes_bias(self) -> bool:
        return self.include_bias

    def bias_share(self, part: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The constant joins the side of its own sign: where it has the sign of `part`, the two share that
        side's relevance; where it has the other sign, `part` is alone on its side and keeps all of it. (The
        identity carries relevance at weight 1, not α or β: an add is no layer to rescale relevance.)"""
        c = z - part
        same = torch.where(part >= 0, c.clamp(min=0), c.clamp(max=0))
        return part * safe_divide(r, part + same)

    def relevance(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w, b = layer.params(a)
        if bool(a.amin() < 0):
            if layer.cache.get(("exact", self)):  # this layer needed the exact split before: skip the probe
                return self._signed_exact(layer, a, z, r, w, b)
            return self._signed(layer, a, z, r, w, b)
        groups, dim = layer.groups, (1 if layer.kind == "conv" else a.dim() - 1)
        wp, stacked = layer.cached((self, False, a.dtype, a.device), lambda: self._weights(w, groups))
        zp = layer.forward(a, wp)
        zn = torch.sub(z, zp)
        self._sides(zp, zn, z, b, layer.kind)
        # A sum of same-signed contributions is 0 only if each one is 0, so any finite denominator there
        # gives those outputs' relevance to nobody: the side is lost, as in the formula.
        zp.add_(zp == 0)  # in place: a fresh buffer costs more (page faults) than the add
        zn.add_(zn == 0)
        # αW⁺ᵀ(r/z⁺) − βW⁻ᵀ(r/z⁻) as ONE transposed pass: both sides stacked as output channels
        shares = _interleaved_divide(r, zp, zn, dim, groups)
        del zp, zn  # lower the peak: the shares are all the transposed pass needs
        return layer.transpose(shares, stacked, a).mul_(a)

    def _sides(self, zp: torch.Tensor, zn: torch.Tensor, z: torch.Tensor, b: torch.Tensor | None,
               kind: str) -> None:
        """z⁻ = z − b − z⁺ in place, and the bias halves on their sides when it is included."""
        if b is not None:
            zn.sub_(_channel_view(b, z, kind))
            if self.include_bias:
                zp.add_(_channel_view(b.clamp(min=0), z, kind))
                zn.add_(_channel_view(b.clamp(max=0), z, kind))

    def _signed(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None) -> torch.Tensor:
        """Signed inputs at the cost of non-negative ones. Per contribution, (a w)⁺ = (a w + |a||w|)/2 and
        (a w)⁻ = (a w − |a||w|)/2, so with m = Σ|a||w| (one forward with |W|): z⁺ = (z − b + m)/2,
        z⁻ = (z − b − m)/2, and
            R = α Σ (aw)⁺ s⁺ − β Σ (aw)⁻ s⁻ = (a ⊙ Wᵀ(αs⁺ − βs⁻) + |a| ⊙ |W|ᵀ(αs⁺ + βs⁻)) / 2,
        two transposed passes fused into one grouped pass. A side below 1e-3 of m anywhere in the batch makes
        the layer take the exact form instead (the fused pass's rounding error is then at most ~eps/1e-3)."""
        groups, dim = layer.groups, (1 if layer.kind == "conv" else a.dim() - 1)
        wabs, stacked = layer.cached((self, True, a.dtype, a.device), lambda: (
            w.abs(), _interleave(w, w.abs(), 0, groups) if layer.kind == "conv" else None))
        aabs = a.abs()
        m = layer.forward(aabs, wabs)
        zb = z if b is None else z - _channel_view(b, z, layer.kind)
        # A side that is small against m makes its share R/z large, and the fused pass would scale the rounding
        # of the other contributions by it: such layers take the exact split (a⁺, a⁻ as separate channels).
        # z⁺ < δm or −z⁻ < δm  ⟺  |z − b| > (1 − 2δ)·m (and m = 0 means z − b = 0: both sides exactly empty).
        if bool(torch.gt(zb.abs(), m * (1.0 - 2.0 * _NEAR_EMPTY)).any()):
            layer.cache[("exact", self)] = True  # small fan-ins (first layers, depthwise) stay exact
            return self._signed_exact(layer, a, z, r, w, b)
        zp = torch.add(zb, m).mul_(0.5)
        zn = torch.sub(zb, m).mul_(0.5)
        if b is not None and self.include_bias:
            zp.add_(_channel_view(b.clamp(min=0), z, layer.kind))
            zn.add_(_channel_view(b.clamp(max=0), z, layer.kind))
        # Past the probe, z⁺ > 0 > z⁻ wherever m > 0; where m = 0 every contribution is exactly zero, so any
        # finite share passes nothing on (the guard only keeps the division finite).
        sp, sn = r / zp.add_(zp == 0), r / zn.add_(zn == 0)
        del zp, zn, m
        u = torch.mul(sp, self.alpha).sub_(sn, alpha=self.beta)
        v = sp.mul_(self.alpha).add_(sn, alpha=self.beta)
        if layer.kind == "linear":
            return (u @ w).mul_(a).add_((v @ wabs).mul_(aabs)).mul_(0.5)
        x2 = _interleave(a, aabs, dim, groups)
        c = layer.transpose(_interleave(u, v, dim, groups), stacked, x2, groups=2 * groups).mul_(x2)
        return _fold_pairs(c, dim, groups).mul_(0.5)

    def _signed_exact(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor, w: torch.Tensor,
                      b: torch.Tensor | None) -> torch.Tensor:
        """a⁺ and a⁻ as separate input channels: positive side (w⁺|w⁻), negative side (w⁻|w⁺); every
        contribution is split exactly (twice the cost of the fused form)."""
        groups, dim = layer.groups, (1 if layer.kind == "conv" else a.dim() - 1)
        x = _interleave(a.clamp(min=0), a.clamp(max=0), dim, groups)
        wp, stacked = layer.cached((self, "exact", a.dtype, a.device), lambda: self._weights(w, groups, True))
        zp = layer.forward(x, wp)
        zn = torch.sub(z, zp)
        self._sides(zp, zn, z, b, layer.kind)
        zp.add_(zp == 0)
        zn.add_(zn == 0)
        shares = _interleaved_divide(r, zp, zn, dim, groups)
        del zp, zn
        return _fold_pairs(layer.transpose(shares, stacked, x).mul_(x), dim, groups)

    def _weights(self, w: torch.Tensor, groups: int, signed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The z⁺ forward's weight and the stacked αW⁺ | −βW⁻ weight of the one transposed pass."""
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        if signed:
            wp, wn = torch.cat([wp, wn], 1), torch.cat([wn, wp], 1)
        return wp, _interleave(self.alpha * wp, -self.beta * wn, 0, groups)


_NEAR_EMPTY = 1e-3  # a signed layer's αβ side this small against Σ|a||w| takes the exact form


def _interleave(u: torch.Tensor, v: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    """u and v stacked along `dim` group by group, [u_0, v_0, u_1, v_1, ...], so grouped convs stay grouped."""
    shape = list(u.shape)
    split = shape[:dim] + [groups, shape[dim] // groups] + shape[dim + 1:]
    pairs = torch.stack([u.reshape(split), v.reshape(split)], dim + 1)
    return pairs.reshape(shape[:dim] + [2 * shape[dim]] + shape[dim + 1:])


def _interleaved_divide(r: torch.Tensor, zp: torch.Tensor, zn: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    """_interleave(r / zp, r / zn) written straight into one buffer (no extra copy)."""
    shape = list(r.shape)
    c = shape[dim]
    split = shape[:dim] + [groups, c // groups] + shape[dim + 1:]
    out = r.new_empty(shape[:dim] + [groups, 2, c // groups] + shape[dim + 1:])
    rs = r.reshape(split)
    torch.div(rs, zp.reshape(split), out=out.select(dim + 1, 0))
    torch.div(rs, zn.reshape(split), out=out.select(dim + 1, 1))
    return out.view(shape[:dim] + [2 * c] + shape[dim + 1:])


def _fold_pairs(c: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    """Undo _interleave by adding each pair: the relevance of a⁺ and a⁻ of the same input."""
    shape = list(c.shape)
    half = shape[dim] // 2
    pairs = c.view(shape[:dim] + [groups, 2, half // groups] + shape[dim + 1:])
    return pairs.sum(dim + 1).view(shape[:dim] + [half] + shape[dim + 1:])


@dataclass(frozen=True)
class ZPlus(AlphaBeta):
    """z⁺: αβ with α = 1, β = 0 (only positive contributions)."""

    name: ClassVar[str] = "zplus"
    alpha: float = field(default=1.0, init=False)
    beta: float = field(default=0.0, init=False)

    def describe(self) -> str:
        return f"zplus(include_bias={self.include_bias!r})"


@dataclass(frozen=True)
class Box(Rule):
    """zᴮ: inputs bounded in [low, high]; R_j ∝ a_j w_jk − l_j w_jk⁺ − h_j w_jk⁻ (first layer).

    Bounds default to each sample's own data range (min and max of that sample's input).
    """

    name: ClassVar[str] = "box"
    low: float | None = None
    high: float | None = None
    epsilon: float = 1e-6

    def relevance(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w, _ = layer.params(a)
        wp, wn = layer.cached((self, a.dtype, a.device), lambda: (w.clamp(min=0), w.clamp(max=0)))
        lo, hi = self._bounds(a)
        zb = layer.forward(a, w) - layer.forward(lo, wp) - layer.forward(hi, wn)
        s = r / stabilise(zb, self.epsilon)
        return a * layer.transpose(s, w, a) - lo * layer.transpose(s, wp, a) - hi * layer.transpose(s, wn, a)

    def _bounds(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper input bounds shaped like `a`: the given values, else each sample's min and max."""
        shape = (-1,) + (1,) * (a.dim() - 1)
        flat = a.flatten(1)

        def bound(value: float | None, data: torch.Tensor) -> torch.Tensor:
            b = data.view(shape) if value is None else torch.tensor(value, dtype=a.dtype, device=a.device)
            return b.expand_as(a)

        return bound(self.low, flat.amin(1)), bound(self.high, flat.amax(1))


@dataclass(frozen=True)
class WSquare(Rule):
    """w²: R_j = Σ_k w_jk² / Σ_j w_jk² R_k; ignores the input values (first layer, unbounded inputs)."""

    name: ClassVar[str] = "wsquare"

    def relevance(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w, _ = layer.params(a)
        return _input_free(layer, w * w, a, r)


@dataclass(frozen=True)
class Flat(Rule):
    """flat: every input feeding output k gets an equal share of R_k (first layer; ignores inputs)."""

    name: ClassVar[str] = "flat"

    def relevance(self, layer: Affine, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w, _ = layer.params(a)
        return _input_free(layer, torch.ones_like(w), a, r)


def _input_free(layer: Affine, v: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Share R_k ∝ v_jk over the inputs that really feed k (zero padding feeds nothing)."""
    ones = torch.ones_like(a)
    return layer.transpose(safe_divide(r, layer.forward(ones, v)), v, a)


def _channel_view(b: torch.Tensor, z: torch.Tensor, kind: str) -> torch.Tensor:
    """Bias shaped to broadcast over z: channel dim 1 for convs (B, C, ...), last dim for linear layers."""
    return b.view((-1,) + (1,) * (z.dim() - 2)) if kind == "conv" else b


RULES: dict[str, type[Rule]] = {
    cls.name: cls for cls in (Zero, Epsilon, Gamma, AlphaBeta, ZPlus, Box, WSquare, Flat)
}
#: Other spellings users type for the same rules.
ALIASES = {"lrp0": "zero", "z": "zero", "eps": "epsilon", "ab": "alphabeta", "alpha-beta": "alphabeta",
           "z+": "zplus", "zb": "box", "zbox": "box", "w2": "wsquare", "w^2": "wsquare"}


def make_rule(name: str, params: dict[str, Any] | None = None, strict: bool = False) -> Rule:
    """Build a rule by name; `params` may hold more keys than the rule takes unless `strict`."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in RULES:
        raise SettingsError(f"unknown LRP rule '{name}' (known: {', '.join(RULES)})")
    cls = RULES[key]
    known = {f.name for f in fields(cls) if f.init}
    params = dict(params or {})
    extra = set(params) - known
    if strict and extra:
        raise SettingsError(f"rule '{key}' takes no parameter(s) {sorted(extra)} (takes: {sorted(known)})")
    kept = {k: v for k, v in params.items() if k in known}
    for f in fields(cls):
        if f.name in kept:
            _check_param(key, f.name, str(f.type), kept[f.name])
    return cls(**kept)


def _check_param(rule: str, name: str, annotation: str, value: Any) -> None:
    """A parameter of the wrong type or sign (from a config file, say) is a one-line error, not a crash."""
    if annotation == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"rule '{rule}': {name} must be true or false, got {value!r}")
        return
    if value is None and "None" in annotation:
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise SettingsError(f"rule '{rule}': {name} must be a number, got {value!r}")
    if "None" not in annotation and value < 0:  # bounds (low/high) may be negative; weights and stabilisers not
        raise SettingsError(f"rule '{rule}': {name} must be >= 0, got {value!r}")
