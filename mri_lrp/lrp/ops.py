"""Autograd functions whose backward IS an LRP rule: what flows backwards through them is relevance.

Ops that only move values around (view, cat, max pool, ...) keep their plain gradient, which routes
relevance unchanged; everything else in a rewritten graph is one of the functions below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mri_lrp.errors import UnsupportedLayerError
from mri_lrp.lrp.rules import Affine, Rule, safe_divide, stabilise


class Tracker:
    """Per-call accumulator of what each op did not pass on (bias, ε, empty αβ sides), per sample."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.absorbed: torch.Tensor | None = None

    def record(self, r_out: torch.Tensor, r_in: torch.Tensor | tuple[torch.Tensor, ...],
               scale: float = 1.0) -> None:
        """Add scale·ΣR_out − ΣR_in for each sample. A leading dim that is a multiple of the batch (windows or
        heads folded into it, batch outermost) is summed per sample; other layouts are skipped."""
        ins = r_in if isinstance(r_in, tuple) else (r_in,)
        if any(t.dim() == 0 or t.shape[0] % self.batch for t in (r_out, *ins)):
            return

        def per_sample(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(self.batch, -1).sum(1)
        lost = per_sample(r_out) * scale - sum(per_sample(t) for t in ins)
        self.absorbed = lost if self.absorbed is None else self.absorbed + lost


class LayerRule(torch.autograd.Function):
    """A conv/linear layer: forward is the layer (with bias), backward applies the layer's rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Affine, rule: Rule, tracker: Tracker) -> torch.Tensor:
        w, b = layer.params(x)
        z = layer.forward(x, w, b)
        ctx.save_for_backward(x, z)
        ctx.layer, ctx.rule, ctx.tracker = layer, rule, tracker
        return z

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        x, z = ctx.saved_tensors
        r_in = ctx.rule.relevance(ctx.layer, x, z, r)
        ctx.tracker.record(r, r_in, ctx.rule.scale())
        return r_in, None, None, None


class PassThrough(torch.autograd.Function):
    """Element-wise maps (activations, constant scaling/shift, unmerged BatchNorm): relevance passes unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], op: str,
                where: str) -> torch.Tensor:
        y = fn(x)
        if y.shape != x.shape:
            raise UnsupportedLayerError(op, where, f"broadcasts its input {tuple(x.shape)} to {tuple(y.shape)}: "
                                        f"relevance cannot pass through unchanged")
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return r, None, None, None


class ConstantAdd(torch.autograd.Function):
    """y = s·x + c with c constant (a parameter or literal added outside any layer: a ViT's position
    embedding): a bias to the rule. Where the rule includes a layer's bias (LRP-0, ε, ...) c keeps its share,
    R_x = s·x / y · R under LRP-0, and it is recorded as absorbed."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], coefficient: float,
                rule: Rule, tracker: Tracker, where: str) -> torch.Tensor:
        y = fn(x)
        if y.shape != x.shape:
            raise UnsupportedLayerError("add", where, f"broadcasts its input {tuple(x.shape)} to "
                                        f"{tuple(y.shape)}: no LRP rule")
        ctx.save_for_backward(x, y)
        ctx.coefficient, ctx.rule, ctx.tracker = coefficient, rule, tracker
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None, None]:
        x, y = ctx.saved_tensors
        r_in = ctx.rule.bias_share(x * ctx.coefficient, y, r)
        ctx.tracker.record(r, r_in)
        return r_in, None, None, None, None, None


def add_constant(x: torch.Tensor, constant: torch.Tensor | float, rule: Rule | None, tracker: Tracker | None,
                 where: str) -> torch.Tensor:
    """x + constant, the constant a bias to `rule` (ConstantAdd) where the rule includes biases; elsewhere (and
    without a tracker: no relevance wanted) a plain add, whose gradient passes relevance unchanged."""
    if rule is None or tracker is None or not rule.includes_bias():
        return x + constant
    return ConstantAdd.apply(x, lambda t: t + constant, 1.0, rule, tracker, where)


class ElementwiseEpsilon(torch.autograd.Function):
    """LRP-ε on an element-wise affine map y = s·x + t: R_x = s·x / (y + ε sign y) · R (the shift absorbs)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], epsilon: float,
                tracker: Tracker) -> torch.Tensor:
        y = fn(x)
        ctx.save_for_backward(x, y)
        ctx.fn, ctx.epsilon, ctx.tracker = fn, epsilon, tracker
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        x, y = ctx.saved_tensors
        shift = ctx.fn(torch.zeros_like(x))
        r_in = (y - shift) * r / stabilise(y, ctx.epsilon)
        ctx.tracker.record(r, r_in)
        return r_in, None, None, None


class Sum(torch.autograd.Function):
    """y = a + sign·b (residual add/sub): each operand gets R in proportion to its share of y (ε-stabilised)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, sign: float, epsilon: float, tracker: Tracker,
                where: str) -> torch.Tensor:
        if a.shape != b.shape:
            raise UnsupportedLayerError("add", where, f"operands of shapes {tuple(a.shape)} and {tuple(b.shape)} "
                                        f"broadcast: no LRP rule")
        y = a + sign * b
        ctx.save_for_backward(a, b, y)
        ctx.sign, ctx.epsilon, ctx.tracker = sign, epsilon, tracker
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None, None, None]:
        a, b, y = ctx.saved_tensors
        s = r / stabilise(y, ctx.epsilon)
        ra, rb = a * s, ctx.sign * b * s
        ctx.tracker.record(r, (ra, rb))
        return ra, rb, None, None, None, None


class PositiveLinear(torch.autograd.Function):
    """A linear map with non-negative weights (average pooling, mean over dims): z-rule, R_j ∝ a_j."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
                tracker: Tracker) -> torch.Tensor:
        y = fn(x)
        ctx.save_for_backward(x, y)
        ctx.fn, ctx.tracker = fn, tracker
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, y = ctx.saved_tensors
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            c = torch.autograd.grad(ctx.fn(xr), xr, safe_divide(r, y))[0]
        r_in = x * c
        ctx.tracker.record(r, r_in)
        return r_in, None, None


class Gate(torch.autograd.Function):
    """y = signal · gate with the gate computed from the same input (squeeze-excitation, gated units).

    Signal-take-all (Arras et al. 2017): the gate is a constant weight, so y is linear in the signal and every
    output's relevance goes to its signal element (LRP-0 on y = g·s gives R_s = R); the gate branch gets none.
    """

    @staticmethod
    def forward(ctx: Any, signal: torch.Tensor, gate: torch.Tensor, where: str) -> torch.Tensor:
        y = signal * gate
        if y.shape != signal.shape:
            raise UnsupportedLayerError("mul", where, f"the signal {tuple(signal.shape)} is broadcast by its gate "
                                        f"to {tuple(y.shape)}: no LRP rule")
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return r, None, None


class Routed(torch.autograd.Function):
    """A map that only copies or drops values (padding, nearest upsampling): relevance follows the gradient, and
    what lands on values that came from no input (constant padding) is recorded as absorbed."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
                tracker: Tracker) -> torch.Tensor:
        ctx.fn, ctx.tracker = fn, tracker
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            r_in = torch.autograd.grad(ctx.fn(xr), xr, r)[0]
        ctx.tracker.record(r, r_in)
        return r_in, None, None


class Normalise(torch.autograd.Function):
    """Layer/Group/Instance normalisation y = γ·(x − μ)/σ + β with σ held constant (Ali et al. 2022, AttnLRP):
    a linear map L plus β, so LRP-ε applies: R_x = x ⊙ Lᵀ(R / (y + ε sign y)); β and ε absorb their share."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, norm: Any, epsilon: float, tracker: Tracker) -> torch.Tensor:
        y = norm.forward(x)
        ctx.save_for_backward(x, y)
        ctx.norm, ctx.epsilon, ctx.tracker = norm, epsilon, tracker
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        x, y = ctx.saved_tensors
        r_in = ctx.norm.transpose(r / stabilise(y, ctx.epsilon), ctx.norm.sigma(x)).mul_(x)
        ctx.tracker.record(r, r_in)
        return r_in, None, None, None
