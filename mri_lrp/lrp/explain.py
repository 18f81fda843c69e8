"""explain(): one forward through the rewritten graph, one backward seeded with the output relevance."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mri_lrp.errors import SettingsError, UnsupportedLayerError
from mri_lrp.lrp.composites import assign, constant_rule
from mri_lrp.lrp.graph import LrpGraph, RunContext, build
from mri_lrp.lrp.ops import Tracker
from mri_lrp.lrp.rules import AlphaBeta
from mri_lrp.model.logits import HOW, element

INITS = ("prob", "logit", "sglrp")
#: Share of the output relevance an explanation may lose or create before it carries a warning. Rules that
#: conserve by construction stay far below it (≤ 1e-4); 5% is where a heatmap starts to show what the biases,
#: stabilisers or numerical noise did rather than what the input did.
CONSERVATION_TOLERANCE = 0.05
Target = int | str | torch.Tensor | Sequence[int] | None


@dataclass(frozen=True)
class Explanation:
    """Relevance and per-sample diagnostics, all on the input's device.

    With ``target="all"`` every per-sample field gains a class axis: relevance (B, K, ...), the rest (B, K).
    conservation_error = |Σ R_in − Σ R_out| / Σ |R_out| (the denominator is |R_out| whenever only the target
    neuron starts with relevance; SGLRP's output relevance sums to zero, so its L1 size is used).
    absorbed = what bias, ε and empty αβ sides kept, summed over layers (beyond the α − β scaling); it is
    negative where a neuron's contributions all had one sign, so the α share had no −β share to offset it.
    """

    relevance: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    target: torch.Tensor
    output_relevance: torch.Tensor
    relevance_sum: torch.Tensor
    conservation_error: torch.Tensor
    absorbed: torch.Tensor
    output_relevance_abs: torch.Tensor  # Σ |R_out|: the scale the conservation error is measured against

    def notes(self, tolerance: float = CONSERVATION_TOLERANCE) -> list[str]:
        """Per sample, a warning when the explanation lost or created more than `tolerance` of the output
        relevance ("" when it did not); with target="all" the sums over the classes are judged."""
        flat = [t.detach().reshape(t.shape[0], -1).double().sum(1).cpu() for t in
                (self.output_relevance, self.relevance_sum, self.output_relevance_abs)]
        return [conservation_note(float(o), float(r), float(a), tolerance) for o, r, a in zip(*flat, strict=True)]


def conservation_note(output_relevance: float, relevance_sum: float, output_abs: float,
                      tolerance: float = CONSERVATION_TOLERANCE) -> str:
    """A one-line warning when |ΣR_in − ΣR_out| / Σ|R_out| exceeds `tolerance`, saying which way and what to try;
    "" otherwise."""
    scale = output_abs if output_abs > 0 else abs(output_relevance)
    error = abs(relevance_sum - output_relevance) / scale if scale > 0 else 0.0
    if not error > tolerance:  # also catches NaN
        return "" if error == error else "relevance is not finite"
    sums = f"relevance sum {relevance_sum:.3g} for an output relevance of {output_relevance:.3g}"
    if abs(relevance_sum) > abs(output_relevance):
        return (f"the explanation creates relevance: its sum exceeds the output's by {error:.3g}x ({sums}); "
                f"positive and negative relevance amplified by small denominators (epsilon on DenseNet-style "
                f"nets, where BatchNorm cannot be merged, does this: use alpha-beta or a composite such as "
                f"epsilon-plus, or a larger --epsilon), or alpha-beta with alpha > 1 on neurons whose inputs "
                f"are all of one sign (alpha times their relevance kept, the beta side has nowhere to go: "
                f"--rule zplus conserves)")
    return (f"the explanation loses {min(error, 1.0):.0%} of the output relevance ({sums}): biases, epsilon and "
            f"one-signed alpha-beta sides absorbed it (depthwise convolutions under bias-free alpha-beta lose "
            f"most); compare --rule epsilon-plus or include_bias")

class Explainer:
    """Trace, merge BatchNorm and assign rules once; then call it on as many batches as needed.

    Parameters beyond the rule choice: alpha, beta, epsilon, gamma, include_bias, low, high (rule
    parameters), batchnorm ("pass" or "epsilon": the rule for BatchNorm that cannot be merged),
    residual_epsilon (the stabiliser of residual additions) and model_output (which output holds the logits
    when the forward returns a tuple, list or dict: an index or a key; default the first of a tuple or list,
    checked to be one score per class; `output_choice` says which was taken). Merged BatchNorm layers are
    snapshots of the weights at build time: build a new Explainer after changing the model.
    """

    def __init__(self, model: nn.Module, rule: str = "alphabeta", composite: str | None = None,
                 overrides: Mapping[str, Any] | None = None, **params: Any) -> None:
        batchnorm = params.pop("batchnorm", "pass")
        if batchnorm not in ("pass", "epsilon"):
            raise SettingsError(f"batchnorm rule must be 'pass' or 'epsilon', got {batchnorm!r}")
        residual_epsilon = float(params.pop("residual_epsilon", 1e-6))
        model_output = params.pop("model_output", None)
        self._picked_unasked = model_output is None  # then the first of several outputs must be class scores
        self.graph: LrpGraph = build(model, batchnorm, residual_epsilon, float(params.get("epsilon", 1e-6)),
                                     model_output, constant_rule(rule, composite, params))
        if not self.graph.sites:
            raise UnsupportedLayerError("model", type(model).__name__, "no conv or linear layer to explain")
        self.rules = assign(self.graph.sites, rule, composite, overrides, params)
        unconserved = {(r.alpha, r.beta) for r in self.rules if isinstance(r, AlphaBeta)
                       and abs(r.alpha - r.beta - 1.0) > 1e-12}
        for alpha, beta in sorted(unconserved):
            warnings.warn(f"alphabeta with alpha={alpha:g}, beta={beta:g}: alpha - beta != 1, so relevance is "
                          f"not conserved (each layer scales it by {alpha - beta:g})", stacklevel=2)

    def describe(self) -> list[tuple[str, str, str]]:
        """(layer name, layer type, what relevance does there) in graph order, each layer once; last, which
        output is explained when the forward returns several."""
        out, seen = [], set()
        for name, type_name, what in self.graph.rows:
            text = self.rules[what].describe() if isinstance(what, int) else what
            if isinstance(what, int) and self.graph.sites[what].merged:
                text += f" (BatchNorm '{self.graph.sites[what].merged}' merged)"
            if (name, text) not in seen:
                seen.add((name, text))
                out.append((name, type_name, text))
        if self.output_choice:
            out.append(("output", "output", f"explained: {self.output_choice}"))
        return out

    def __call__(self, x: torch.Tensor, target: Target = None, init: str = "prob",
                 class_names: Sequence[str] | None = None) -> Explanation:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise SettingsError("input must be a floating-point tensor with a batch dimension")
        if init not in INITS:
            raise SettingsError(f"unknown init '{init}' (known: {', '.join(INITS)})")
        batch = x.shape[0]
        every = isinstance(target, str) and target == "all"
        if every:
            with torch.no_grad():
                classes = self._forward(x.detach(), Tracker(batch)).shape[1]
            x = x.repeat_interleave(classes, dim=0)
            target = torch.arange(classes, device=x.device).repeat(batch)
        xr = x.detach().requires_grad_(True)
        tracker = Tracker(xr.shape[0])
        with torch.enable_grad():
            logits = self._forward(xr, tracker)
            if class_names is not None and self._picked_unasked and self.output_choice \
                    and logits.shape[1] != len(class_names):
                raise UnsupportedLayerError("output", "output", f"{element(self.output_choice)} has "
                                            f"{logits.shape[1]} entries, not one per class ({len(class_names)} "
                                            f"class names); set {HOW} to the logits")
            targets = resolve_target(target, logits.detach(), class_names)
            r_out = output_relevance(logits.detach(), targets, init)
            relevance = torch.autograd.grad(logits, xr, r_out, allow_unused=True)[0]
        if relevance is None:
            relevance = torch.zeros_like(xr)
        logits = logits.detach()
        probs = torch.softmax(logits, dim=1)
        out_sum = r_out.sum(1)
        out_abs = r_out.abs().sum(1)
        in_sum = relevance.flatten(1).sum(1)
        error = (in_sum - out_sum).abs() / out_abs.clamp_min(torch.finfo(r_out.dtype).tiny)
        absorbed = tracker.absorbed if tracker.absorbed is not None else torch.zeros_like(out_sum)
        result = Explanation(relevance.detach(), logits, probs, targets, out_sum, in_sum, error, absorbed.detach(),
                             out_abs)
        return _per_class(result, batch) if every else result

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of the explained (eval-mode, Softmax-stripped) network, without relevance."""
        with torch.no_grad():
            return self._forward(x.detach(), Tracker(x.shape[0]))

    @property
    def output_choice(self) -> str:
        """Which output is explained when the forward returns several ("" when it returns one tensor)."""
        return self.graph.output_choice

    def _forward(self, x: torch.Tensor, tracker: Tracker) -> torch.Tensor:
        logits = self.graph.run(x, RunContext(self.rules, tracker))
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            chosen = f"the explained output, {element(self.output_choice)}, " if self.output_choice else ""
            raise UnsupportedLayerError("output", "output", f"{chosen}expected class scores of shape "
                                        f"(batch, classes), got {shape}" +
                                        (f"; set {HOW} to the logits" if chosen else ""))
        return logits


def _per_class(e: Explanation, batch: int) -> Explanation:
    """Fold the class-expanded batch of target="all" back into a class axis."""
    def fold(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, -1, *t.shape[1:])
    first = slice(None, None, e.logits.shape[0] // batch)
    return Explanation(fold(e.relevance), e.logits[first], e.probs[first], fold(e.target), fold(e.output_relevance),
                       fold(e.relevance_sum), fold(e.conservation_error), fold(e.absorbed),
                       fold(e.output_relevance_abs))


def resolve_target(target: Target, logits: torch.Tensor, class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Per-sample class indices: predicted (None/"predicted"), an index, a class name, or a tensor/list."""
    batch, classes = logits.shape
    if target is None or (isinstance(target, str) and target == "predicted"):
        return logits.argmax(1)
    if isinstance(target, str):
        if target.lstrip("-").isdigit():
            target = int(target)
        elif class_names is not None and target in class_names:
            target = list(class_names).index(target)
        else:
            known = f"known: {', '.join(class_names)}" if class_names else "no class names given"
            raise SettingsError(f"unknown target class '{target}' ({known})")
    if isinstance(target, int) and not isinstance(target, bool):
        t = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch).clone()
        if t.shape != (batch,):
            raise SettingsError(f"target must give one class per sample ({batch}), got {t.numel()}")
    if bool(((t < 0) | (t >= classes)).any()):
        raise SettingsError(f"target class index out of range 0..{classes - 1}: {t.tolist()}")
    return t


def output_relevance(logits: torch.Tensor, target: torch.Tensor, init: str = "prob") -> torch.Tensor:
    """Relevance at the output neurons: target probability, target logit, or SGLRP's contrastive split."""
    probs = torch.softmax(logits, dim=1)
    pick = target.view(-1, 1)
    p_t = probs.gather(1, pick)
    r = torch.zeros_like(logits)
    if init == "prob":
        return r.scatter(1, pick, p_t)
    if init == "logit":
        return r.scatter(1, pick, logits.gather(1, pick))
    return (-p_t * probs).scatter(1, pick, p_t * (1 - p_t))


def explain(model: nn.Module, x: torch.Tensor, rule: str = "alphabeta", alpha: float = 2.0, beta: float = 1.0,
            epsilon: float = 1e-6, gamma: float = 0.25, target: Target = None, init: str = "prob",
            composite: str | None = None, overrides: Mapping[str, Any] | None = None,
            class_names: Sequence[str] | None = None, model_output: int | str | None = None,
            **rule_kwargs: Any) -> Explanation:
    """LRP relevance of `x` (batch first, 2D or 3D, any device/dtype) for `model`'s target class.

    `model_output` says which output holds the logits when the forward returns a tuple, list (an index) or
    dict (a key); by default the first element of a tuple or list, which must hold one score per class.
    Warns (UserWarning) when a sample lost or created more than CONSERVATION_TOLERANCE of its output relevance.
    """
    options = {"rule": rule, "composite": composite, "overrides": overrides, "alpha": alpha, "beta": beta,
               "epsilon": epsilon, "gamma": gamma, "model_output": model_output, **rule_kwargs}
    result = _explainer_for(model, options)(x, target=target, init=init, class_names=class_names)
    notes = result.notes()
    bad = [i for i, n in enumerate(notes) if n]
    if bad:
        warnings.warn(f"sample {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") +
                      f": {notes[bad[0]]}", stacklevel=2)
    return result


def warm_up_autograd() -> None:
    """One vector-Jacobian product on a one-element tensor. torch imports its symbolic-shape machinery (sympy,
    about half a CPU-second) at the first ``autograd.grad`` given a gradient tensor; a run calls this on a
    background thread while it waits for its first scans, so that import is not on the first batch's path."""
    x = torch.zeros(1, requires_grad=True)
    torch.autograd.grad(x * 1.0, x, torch.ones(1))


_BUILT: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[torch.Tensor], Explainer]] = \
    weakref.WeakKeyDictionary()


def _explainer_for(model: nn.Module, options: dict[str, Any]) -> Explainer:
    """The explainer of the last call on this model, while neither the options nor the model changed.

    "Changed" is judged by every parameter and buffer being the same tensor object with the same in-place
    version counter (an optimiser step, load_state_dict or .to() change one of them) and every module's
    training flag. One explainer per model; the cache lets the model be collected (the tensors it keeps are
    the ones the explainer's merged weights already reference).
    """
    tensors = [*model.parameters(), *model.buffers()]
    key = (repr(sorted(options.items(), key=lambda kv: kv[0])), tuple(t._version for t in tensors),
           tuple(m.training for m in model.modules()))
    hit = _BUILT.get(model)
    if hit is not None and hit[0] == key and len(hit[1]) == len(tensors) and \
            all(a is b for a, b in zip(hit[1], tensors, strict=True)):
        return hit[2]
    options = dict(options)
    explainer = Explainer(model, rule=options.pop("rule"), composite=options.pop("composite"),
                          overrides=options.pop("overrides"), **options)
    _BUILT[model] = (key, tensors, explainer)
    return explainer


def describe_rules(model: nn.Module, rule: str = "alphabeta", composite: str | None = None,
                   overrides: Mapping[str, Any] | None = None, **params: Any) -> list[tuple[str, str, str]]:
    """Which rule each layer of `model` gets (for `mri-lrp info`), without running it. Warnings (αβ that does
    not conserve, an override that matches no layer) are issued as when explaining."""
    return Explainer(model, rule=rule, composite=composite, overrides=overrides, **params).describe()
