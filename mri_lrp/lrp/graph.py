"""Trace a model with torch.fx and rewrite every node into an op whose backward carries relevance.

The user's model is only read: its forward is traced once, and every input-dependent node becomes the op of
its registered layer kind (kinds.py; the built-in kinds are in layers.py), with eval-mode semantics (BatchNorm
with running statistics, Dropout as identity) and parameters used as detached tensors. (Python branches on
`self.training` inside the user's own modules are traced as the model's current mode takes them.) Anything
without a kind raises `UnsupportedLayerError` while building, before any heatmap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from mri_lrp.errors import UnsupportedLayerError
from mri_lrp.lrp import attention, layers, tracing  # noqa: F401 - importing them registers the layer kinds
from mri_lrp.lrp.kinds import (
    Build,
    BuildState,
    Options,
    RunContext,
    Site,
    Step,
    fetch,
    from_torch,
    is_leaf,
    name_of,
    node_kind,
)
from mri_lrp.lrp.rules import Rule

META = {"size", "dim", "numel", "getattr", "len"}
META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}
SOFTMAX = {"softmax", "log_softmax"}

__all__ = ["LrpGraph", "RunContext", "Site", "build", "trace"]


@dataclass
class LrpGraph:
    """The rewritten network: steps in graph order, conv/linear sites, and a per-node description."""

    steps: list[tuple[fx.Node, Step]]
    input: fx.Node
    output: fx.Node
    sites: list[Site]
    rows: list[tuple[str, str, str | int]]  # (name, type, text or index into sites)
    last_use: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)
    output_choice: str = ""  # which of several outputs is explained ("" when the forward returns one)

    def run(self, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """Forward through the rewritten ops; the backward of the result carries relevance."""
        env: dict[fx.Node, Any] = {}
        for node, step in self.steps:
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            env[node] = x if node is self.input else step(args, kwargs, ctx)
            for done in self.last_use.get(node, ()):
                env.pop(done, None)
        return env[self.output]


def trace(model: nn.Module) -> fx.Graph:
    """torch.fx graph of the model's forward (see tracing.py); a failure becomes a clear UnsupportedLayerError."""
    return tracing.trace(model, is_leaf)


def build(model: nn.Module, batchnorm: str = "pass", residual_epsilon: float = 1e-6,
          epsilon: float = 1e-6, model_output: str | int | None = None,
          constant_rule: Rule | None = None) -> LrpGraph:
    """Rewrite the traced model into LRP ops. `batchnorm` is the rule for BN that cannot be merged;
    `model_output` picks the logits of a forward that returns several values (see tracing.select_output);
    `constant_rule` is the rule whose bias treatment an add of a constant follows (None: relevance passes)."""
    graph = trace(model)
    output_choice = tracing.select_output(graph, model_output)
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output_node = next(n for n in nodes if n.op == "output")
    if not placeholders:
        raise UnsupportedLayerError("forward", type(model).__name__, "the model takes no input")
    for extra in placeholders[1:]:
        if not extra.args:
            raise UnsupportedLayerError("forward", extra.name, "the model needs more than one input")

    result = output_node.args[0]
    if not isinstance(result, fx.Node):
        raise UnsupportedLayerError("output", "output", "the model must return one tensor of class scores")
    skipped: set[fx.Node] = set()
    if _is_softmax(result, model):  # explanations start from the logits the softmax reads
        skipped.add(result)
        result = result.args[0]

    state = BuildState(model, Options(batchnorm, epsilon, residual_epsilon, constant_rule), dep={placeholders[0]})
    steps: list[tuple[fx.Node, Step]] = []
    for node in nodes:
        if node.op == "output" or node in skipped:
            continue
        inputs = node.all_input_nodes
        depends = any(i in state.dep for i in inputs)
        if any(i in state.after_layer or i in state.site_of for i in inputs):
            state.after_layer.add(node)
        if node.op == "placeholder":
            default = node.args[0] if node.args else None
            steps.append((node, lambda a, k, c, d=default: d))
            continue
        if node.op == "get_attr":
            steps.append((node, lambda a, k, c, t=node.target: fetch(model, t)))
            continue
        if not depends or (name_of(node) in META and node.op != "call_module"):
            if name_of(node) == "getattr" and depends and node.args[1] not in META_ATTRS:
                raise UnsupportedLayerError(f"getattr {node.args[1]}", Build(node, state).where,
                                            "no LRP rule for this attribute")
            steps.append((node, _plain(Build(node, state).fn)))
            continue
        state.dep.add(node)
        steps.append((node, _step(node, state)))

    if result.op == "placeholder":
        raise UnsupportedLayerError("output", "output", "the model returns its input unchanged")
    last_use = _last_uses(nodes, result)
    return LrpGraph(steps, placeholders[0], result, state.sites, state.rows, last_use, output_choice)


def _step(node: fx.Node, state: BuildState) -> Step:
    """The registered kind's op for an input-dependent node; a node no kind matches is refused by name."""
    b = Build(node, state)
    kind = node_kind(node, state.model)
    if kind is not None:
        return kind.builder(b)
    if node.op == "call_function" and not from_torch(node):
        target = f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}"
        raise UnsupportedLayerError(b.op, b.where, f"function {target} has no LRP rule (and fx could not see "
                                    f"inside it); rewrite it with torch operations or register a layer kind")
    if node.op == "call_module":
        raise UnsupportedLayerError(b.op, b.where, f"module type {type(b.module).__module__}."
                                    f"{type(b.module).__qualname__} has no LRP rule; replace it with supported "
                                    f"layers or register a layer kind for it")
    raise UnsupportedLayerError(b.op, b.where)


def _is_softmax(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), (nn.Softmax, nn.LogSoftmax))
    return node.op in ("call_function", "call_method") and name_of(node) in SOFTMAX and from_torch(node)


def _plain(fn: Callable[..., Any]) -> Step:
    return lambda a, k, c: fn(*a, **k)


def _last_uses(nodes: list[fx.Node], result: fx.Node) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values no later node reads (freed as soon as they are consumed)."""
    last: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        for i in node.all_input_nodes:
            last[i] = node
    out: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last.items():
        if value is not result and user.op != "output":
            out.setdefault(user, []).append(value)
    return out
