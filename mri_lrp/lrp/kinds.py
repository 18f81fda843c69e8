"""The registry of layer kinds: what an fx node matches → the op that carries relevance through it.

A kind is one `register(...)` call on a builder. The builder runs once per matching node while the graph is
built; it gets a `Build` (the node, its module or function, build-time helpers) and returns a `Step`, the
callable that runs the node when relevance is computed: `step(args, kwargs, ctx)` with the node's arguments
already evaluated and `ctx` the call's `RunContext` (rules and the relevance tracker). Whatever the step
returns takes the node's place; its autograd backward is what relevance does there (see `ops.py`).

Matching: a module call by the module's class (its own or a base class, most specific first; a class may be
given as a dotted name, so no optional library has to be imported); a function or method call by its name
(in-place spellings folded: `relu_` → `relu`, `iadd` → `add`) when it comes from torch or `operator`, or by
its dotted name (`torchvision.ops.stochastic_depth.stochastic_depth`) when it comes from elsewhere.
A module class that matches a kind (and does not override that class's forward) is a leaf for the tracer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from mri_lrp.errors import UnsupportedLayerError
from mri_lrp.lrp.ops import Tracker
from mri_lrp.lrp.rules import Affine, Rule

INPLACE_OPERATORS = {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv"}

Step = Callable[[tuple, dict, "RunContext"], Any]


@dataclass
class Site:
    """One conv/linear call in the graph; it gets one rule."""

    name: str
    type_name: str
    layer: Affine
    first: bool
    merged: str | None = None

    @property
    def kind(self) -> str:
        return self.layer.kind


@dataclass
class RunContext:
    """What one explanation call hands to the steps: the rule of every site and the diagnostics tracker."""

    rules: list[Rule]
    tracker: Tracker


@dataclass
class Options:
    """Build-time choices that kinds read (the Explainer's parameters)."""

    batchnorm: str = "pass"            # rule for BatchNorm that cannot be merged: "pass" or "epsilon"
    epsilon: float = 1e-6              # ε of element-wise ε maps and normalisation layers
    residual_epsilon: float = 1e-6     # stabiliser of residual additions
    constant_rule: Rule | None = None  # whose bias treatment an add of a constant follows (None: it passes)


@dataclass
class BuildState:
    """What the graph builder knows so far, shared by every node's Build."""

    model: nn.Module
    options: Options
    sites: list[Site] = field(default_factory=list)
    site_of: dict[fx.Node, int] = field(default_factory=dict)
    rows: list[tuple[str, str, str | int]] = field(default_factory=list)  # (name, type, text or site index)
    dep: set[fx.Node] = field(default_factory=set)          # nodes whose value depends on the input
    after_layer: set[fx.Node] = field(default_factory=set)  # nodes downstream of a conv/linear


@dataclass
class Build:
    """One node being rewritten: what a kind's builder reads, and the helpers it uses."""

    node: fx.Node
    state: BuildState

    @property
    def model(self) -> nn.Module:
        return self.state.model

    @property
    def options(self) -> Options:
        return self.state.options

    @property
    def module(self) -> nn.Module | None:
        """The called module (call_module nodes), else None."""
        return self.model.get_submodule(str(self.node.target)) if self.node.op == "call_module" else None

    @property
    def op(self) -> str:
        """What the user would call the operation: the module's class name or the function's name."""
        module = self.module
        return type(module).__name__ if module is not None else name_of(self.node)

    @property
    def where(self) -> str:
        """The module path of a module call; for functions the enclosing module's path and the node name."""
        if self.node.op == "call_module":
            return str(self.node.target)
        stack = self.node.meta.get("nn_module_stack") or {}
        path = ""
        if stack:  # {key: (path, type)}; older torch versions key by the path itself
            key, value = next(reversed(stack.items()))
            path = value[0] if isinstance(value, tuple) else str(key)
        return f"{path} ({self.node.name})" if path else self.node.name

    @property
    def fn(self) -> Callable[..., Any]:
        """The node's original callable (module calls bypass the user's hooks by calling .forward)."""
        node = self.node
        if node.op == "call_function":
            return node.target
        if node.op == "call_method":
            return lambda obj, *a, **k: getattr(obj, node.target)(*a, **k)
        return self.module.forward

    @property
    def inplace(self) -> bool:
        """Whether the traced call would write into its input (steps then run it on a copy)."""
        node = self.node
        raw = str(node.target if node.op == "call_method" else getattr(node.target, "__name__", ""))
        module = self.module
        if module is not None:
            return bool(getattr(module, "inplace", False))
        positional = any(a is True for a in node.args[1:]) and name_of(node) in _INPLACE_FLAG  # F.relu(x, True)
        return raw.endswith("_") or raw in INPLACE_OPERATORS or node.kwargs.get("inplace") is True or positional

    @property
    def tensor_deps(self) -> list[int]:
        """Positions of the positional arguments whose value depends on the model input."""
        return [i for i, a in enumerate(self.node.args) if isinstance(a, fx.Node) and a in self.state.dep]

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """An argument as traced (positional or keyword), unevaluated."""
        if index < len(self.node.args):
            return self.node.args[index]
        return self.node.kwargs.get(name, default)

    def const(self, index: int, name: str, default: Any = None) -> Any:
        """An argument's value at build time (a parameter, buffer or literal); input-dependent ones are refused."""
        value = self.arg(index, name, default)
        if not isinstance(value, fx.Node):
            return value
        if value in self.state.dep:
            self.refuse(f"argument '{name}' depends on the input: no LRP rule")
        if value.op == "get_attr":
            return fetch(self.model, str(value.target))
        self.refuse(f"argument '{name}' is computed inside forward; make it a parameter or buffer")
        return None  # unreachable

    def row(self, text: str, name: str | None = None) -> None:
        """Describe what relevance does at this node (shown by `mri-lrp info`)."""
        self.state.rows.append((name or self.where, self.op, text))

    def add_site(self, layer: Affine) -> int:
        """Register a conv/linear map that gets a rule; returns its index into `ctx.rules`."""
        state = self.state
        index = len(state.sites)
        state.sites.append(Site(self.where, self.op, layer, first=self.node not in state.after_layer))
        state.site_of[self.node] = index
        state.rows.append((self.where, self.op, index))
        return index

    def refuse(self, reason: str = "no LRP rule for this operation") -> None:
        """Stop building: the error names the module path, the type, why, and (in `reason`) what to do."""
        raise UnsupportedLayerError(self.op, self.where, reason)

    def bound(self, index: int = 0) -> Callable[[tuple, dict], Callable[[torch.Tensor], Any]]:
        """(args, kwargs) → the call with every argument fixed except args[index] (copied if in-place)."""
        fn, copy = self.fn, self.inplace

        def make(args: tuple, kwargs: dict) -> Callable[[torch.Tensor], Any]:
            def call(t: torch.Tensor) -> Any:
                full = list(args)
                full[index] = t.clone() if copy else t
                return fn(*full, **kwargs)
            return call
        return make


Builder = Callable[[Build], Step]


@dataclass(frozen=True)
class Kind:
    """One layer kind: its name (for messages and docs) and the builder of its op."""

    name: str
    builder: Builder


_MODULES: dict[type | str, Kind] = {}
_FUNCTIONS: dict[str, Kind] = {}
_INPLACE_FLAG = {"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "silu", "mish", "hardswish", "hardsigmoid",
                 "hardtanh", "threshold", "rrelu", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                 "feature_alpha_dropout"}


def register(name: str, *, modules: Iterable[type | str] = (), functions: Iterable[str] = (),
             replace: bool = False) -> Callable[[Builder], Builder]:
    """Decorator: the builder handles nodes calling these module classes or functions (see module docs).

    A second registration of the same class or function name is an error unless `replace` is set.
    """
    def decorate(builder: Builder) -> Builder:
        kind = Kind(name, builder)
        for table, keys in ((_MODULES, modules), (_FUNCTIONS, functions)):
            for key in keys:
                if key in table and not replace:
                    raise ValueError(f"layer kind for {key!r} already registered ({table[key].name})")
                table[key] = kind
        return builder
    return decorate


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"


def module_kind(module: nn.Module) -> tuple[Kind, type] | None:
    """The kind of a module and the class it was registered under (most specific class first)."""
    for cls in type(module).__mro__:
        kind = _MODULES.get(cls) or _MODULES.get(_qualname(cls))
        if kind is not None:
            return kind, cls
    return None


def is_leaf(module: nn.Module) -> bool:
    """A registered module class the tracer must not enter (a subclass with its own forward is entered)."""
    found = module_kind(module)
    return found is not None and type(module).forward is found[1].forward


def from_torch(node: fx.Node) -> bool:
    """call_function targets recognised by name must come from torch or the operator module."""
    if node.op != "call_function":
        return True
    module = getattr(node.target, "__module__", None) or ""
    return module == "" or module.split(".")[0] in {"torch", "_operator", "operator", "builtins"}


def name_of(node: fx.Node) -> str:
    """The op's name with in-place spellings folded (relu_ → relu, iadd → add)."""
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    name = INPLACE_OPERATORS.get(name, name)
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def node_kind(node: fx.Node, model: nn.Module) -> Kind | None:
    """The kind that handles a call node, or None."""
    if node.op == "call_module":
        found = module_kind(model.get_submodule(str(node.target)))
        return found[0] if found else None
    if node.op == "call_function" and not from_torch(node):
        return _FUNCTIONS.get(_qualname(node.target))
    return _FUNCTIONS.get(name_of(node))


def fetch(model: nn.Module, target: str) -> Any:
    """A get_attr target's value, detached."""
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value.detach() if isinstance(value, torch.Tensor) else value


def registered() -> dict[str, list[str]]:
    """Kind name → what it matches (for documentation and tests)."""
    out: dict[str, list[str]] = {}
    for table in (_MODULES, _FUNCTIONS):
        for key, kind in table.items():
            out.setdefault(kind.name, []).append(key.__name__ if isinstance(key, type) else key)
    return out
