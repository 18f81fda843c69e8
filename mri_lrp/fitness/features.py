"""The model's own view of an input: the features that enter its classifier head.

They are read off the explainer's traced graph, in the forward pass that LRP runs anyway: the step that
produces the input of the last linear layer is wrapped to keep a detached copy of its output. No second
forward pass, no hook on the user's module (the graph runs rewritten ops, not the modules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from mri_lrp.errors import UnsupportedLayerError
from mri_lrp.lrp import Explainer


class FeatureTap:
    """Keeps the classifier head's input from the explainer's last forward pass (one row per sample)."""

    def __init__(self, explainer: Explainer, model: nn.Module) -> None:
        node = head_input(explainer, model)
        self.layer = node.name
        self._last: torch.Tensor | None = None
        steps = explainer.graph.steps
        at = next(i for i, (n, _) in enumerate(steps) if n is node)
        steps[at] = (node, self._recording(steps[at][1]))

    def _recording(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def run(args: Any, kwargs: Any, ctx: Any) -> Any:
            out = step(args, kwargs, ctx)
            if isinstance(out, torch.Tensor):
                self._last = out.detach()
            return out
        return run

    def take(self, samples: int) -> torch.Tensor | None:
        """The last pass's features as float64 (samples, D) on the CPU, or None when there was none. A pass
        over a class-expanded batch (``target="all"``) holds each sample once per class: one row is kept.
        Token or grid features (B, ..., D) are averaged to one vector per sample."""
        last, self._last = self._last, None
        if last is None or last.shape[0] % samples:
            return None
        last = last[:: last.shape[0] // samples]
        if last.dim() > 2:
            last = last.flatten(1, -2).mean(dim=1)
        return last.to("cpu", torch.float64)


def head_input(explainer: Explainer, model: nn.Module) -> fx.Node:
    """The node whose value enters the last linear layer of the traced graph."""
    for node, _ in reversed(explainer.graph.steps):
        linear = (node.op == "call_module" and isinstance(model.get_submodule(str(node.target)), nn.Linear)) or \
            (node.op == "call_function" and node.target is F.linear)
        if linear and isinstance(node.args[0], fx.Node) and node.args[0] is not explainer.graph.input:
            return node.args[0]
    raise UnsupportedLayerError("features", type(model).__name__,
                                "no linear classifier head found in the traced graph: the feature check needs one")
