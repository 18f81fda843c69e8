"""Tracing that does not give up: torch.fx with fallbacks for what fx alone cannot enter.

- Modules with a registered layer kind are leaves (fx never looks inside them), einops' `Rearrange` / `Reduce`
  included, so their shape arithmetic on traced values never runs; `einops.rearrange` / `reduce` / `repeat`
  called as functions are recorded as single calls too.
- A module built inside `forward` (not a submodule, e.g. the pooling of MONAI ResNet's `shortcut_type="A"`) is
  traced through: its forward's operations are recorded in place of the call.
- `x.data` and `x.detach()` are the same values as `x`: relevance crosses them unchanged.
- Tensor factories given traced sizes (`torch.zeros(x.size(0), c, *x.shape[2:])`) are recorded as calls; torch's
  argument parser would reject the traced sizes.
- Unpacking a shape (`*x.shape[2:]`, as MONAI's shortcut does) needs the tensor's rank, which fx does not know:
  it is read off the layers that produced the tensor (a Conv3d's output has rank 5, element-wise ops keep it).
When a network still cannot be traced, the error names the innermost module being traced (its path and
type), fx's reason, and what the user can do. (torch.export is no fallback here: its graph is ATen-level, with
parameters lifted to inputs, which the layer kinds do not match.)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from mri_lrp.errors import UnsupportedLayerError
from mri_lrp.lrp.kinds import Build, Step, is_leaf, register
from mri_lrp.lrp.ops import PositiveLinear
from mri_lrp.model.logits import HOW, choose, element, kind_of

try:  # einops is optional: only models that use it need it
    import einops
except ImportError:  # pragma: no cover - depends on the environment
    einops = None

_EINOPS_FUNCTIONS = () if einops is None else (einops.rearrange, einops.reduce, einops.repeat)
_FACTORIES = ("zeros", "ones", "empty", "full")
_IDENTITY_METHODS = {"detach"}
_IDENTITY_ATTRS = {"data"}
_ADVICE = {
    "control flow": "its forward branches on tensor values (a Python if/for/while on data); rewrite the branch "
                    "with torch operations (torch.where), or register a layer kind for this module type "
                    "(mri_lrp.lrp.kinds.register) so it is kept whole",
    "default": "register a layer kind for this module type (mri_lrp.lrp.kinds.register) so it is kept whole, "
               "or rewrite its forward with plain torch operations",
}


def _recorded(tracer: fx.Tracer, fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn, recorded as one graph call when any argument is a traced value."""
    def call(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, fx.Proxy) for a in (*args, *kwargs.values())):
            return tracer.create_proxy("call_function", fn, args, kwargs)
        return fn(*args, **kwargs)
    return call


class _Proxy(fx.Proxy):
    """A traced value whose length is known when it is a tensor's shape (or a slice of it) of a known rank."""

    def __len__(self) -> int:
        n = _shape_length(self.node, self.tracer.root)
        return super().__len__() if n is None else n


class Tracer(fx.Tracer):
    """fx's tracer with the fallbacks above; remembers the module path being traced when something fails."""

    def __init__(self, leaf: Callable[[nn.Module], bool] = is_leaf) -> None:
        super().__init__(autowrap_functions=_EINOPS_FUNCTIONS)
        self._leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self._leaf(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        try:
            path = self.path_of_module(m)
        except NameError:  # built inside forward: not part of the model, so record what it computes
            path = None
        try:
            if path is None:
                return forward(*args, **kwargs)
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if not hasattr(exc, "_mri_lrp_where"):  # the innermost module is the one to name
                exc._mri_lrp_where = (path or f"(a {type(m).__name__} built inside forward)", m)
            raise

    def trace(self, root: nn.Module | Callable[..., Any], concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        patched = [(torch, name) for name in _FACTORIES]
        if einops is not None:
            patched += [(einops, fn.__name__) for fn in _EINOPS_FUNCTIONS]
        originals = [(owner, name, getattr(owner, name)) for owner, name in patched]
        try:
            for owner, name, fn in originals:
                setattr(owner, name, _recorded(self, fn))
            return super().trace(root, concrete_args)
        finally:
            for owner, name, fn in originals:
                setattr(owner, name, fn)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def iter(self, obj: fx.Proxy) -> Any:
        """Unpack `x.shape`, `x.size()` or a slice of them when x's rank is known from the layers that made it."""
        n = _shape_length(obj.node, self.root)
        return iter([obj[i] for i in range(n)]) if n is not None else super().iter(obj)


def trace(model: nn.Module, leaf: Callable[[nn.Module], bool] = is_leaf) -> fx.Graph:
    """The model's forward as an fx graph; a failure is one UnsupportedLayerError saying where, why and what to do."""
    try:
        graph = Tracer(leaf).trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means the same thing to the user
        raise _trace_error(model, exc) from exc
    _fold_identities(graph)
    return graph


def _trace_error(model: nn.Module, exc: Exception) -> UnsupportedLayerError:
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    path, module = getattr(exc, "_mri_lrp_where", (None, model))
    where = path or type(model).__name__
    kind = "control flow" if "control flow" in text or "iterate" in text else "default"
    cls = type(module)
    return UnsupportedLayerError(cls.__name__, where,
                                 f"torch.fx cannot trace {cls.__module__}.{cls.__qualname__} ({reason}); "
                                 f"{_ADVICE[kind]}")


def _fold_identities(graph: fx.Graph) -> None:
    """Replace `x.data` and `x.detach()` by `x`: the same values, so relevance passes as through an identity."""
    for node in list(graph.nodes):
        attr = node.op == "call_function" and node.target is getattr and len(node.args) == 2 \
            and node.args[1] in _IDENTITY_ATTRS
        method = node.op == "call_method" and node.target in _IDENTITY_METHODS and len(node.args) == 1
        if (attr or method) and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


_RANK_KEEPING = {"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh",
                 "hardswish", "hardsigmoid", "add", "sub", "mul", "truediv", "neg", "clone", "contiguous",
                 "batch_norm", "layer_norm", "group_norm", "instance_norm", "dropout", "pad", "to", "float", "detach"}
_RANK_KEEPING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Sigmoid,
                         nn.Tanh, nn.Identity, nn.Dropout, nn.LayerNorm, nn.GroupNorm, nn.Sequential)
_SPATIAL = re.compile(r"([123])d$")


def _rank(node: Any, root: nn.Module) -> int | None:
    """The rank of a traced tensor, from the layer that produced it (None when that is not known)."""
    for _ in range(10_000):  # walks back along first arguments; bounded so a cycle can never hang
        if not isinstance(node, fx.Node) or node.op not in ("call_module", "call_function", "call_method"):
            return None
        if node.op == "call_module":
            module = root.get_submodule(str(node.target))
            found = _SPATIAL.search(type(module).__name__)
            if found:
                return int(found.group(1)) + 2
            if not isinstance(module, _RANK_KEEPING_MODULES) or isinstance(module, nn.Sequential):
                return None
        else:
            name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
            name = name.rstrip("_")
            if name == "getattr" and node.args[1] in _IDENTITY_ATTRS:
                name = "detach"
            found = _SPATIAL.search(name)
            if found:
                return int(found.group(1)) + 2
            if name not in _RANK_KEEPING:
                return None
        node = node.args[0] if node.args else None
    return None


def _shape_length(node: fx.Node, root: nn.Module) -> int | None:
    """How many values `x.shape`, `x.size()` or `x.shape[a:b]` holds, when x's rank is known."""
    index = None
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], slice):
        node, index = node.args[0], node.args[1]
    if not isinstance(node, fx.Node):
        return None
    shape = (node.op == "call_function" and node.target is getattr and node.args[1] == "shape") or \
        (node.op == "call_method" and node.target == "size" and len(node.args) == 1 and not node.kwargs)
    rank = _rank(node.args[0], root) if shape else None
    if rank is None:
        return None
    return len(range(rank)[index]) if index is not None else rank


def select_output(graph: fx.Graph, model_output: str | int | None = None) -> str:
    """Make the graph return only the class scores of a forward that returns several values (MONAI's ViT
    returns (logits, hidden states)): the element `model_output` names, else the first of a tuple or list
    (see mri_lrp.model.logits). Returns how it was chosen ("" for a forward that returns one value)."""
    output = next(n for n in graph.nodes if n.op == "output")
    chosen, how = choose(output.args[0], model_output)
    if how and not isinstance(chosen, fx.Node):
        raise UnsupportedLayerError("output", "output", f"the chosen output, {element(how)}, is a {kind_of(chosen)}, "
                                    f"not a tensor of class scores; set {HOW} to the logits")
    output.args = (chosen,)
    return how


# --- einops: its layers and functions as single calls -----------------------------------------------------

@register("einops rearrange/repeat", modules=("einops.layers.torch.Rearrange",),
          functions=("einops.einops.rearrange", "einops.einops.repeat"))
def _einops_route(b: Build) -> Step:
    """A permutation / reshape / broadcast: the plain gradient routes relevance unchanged."""
    if b.node.op == "call_module":
        b.row("routing")
    fn = b.fn
    return lambda a, k, c: fn(*a, **k)


@register("einops reduce", modules=("einops.layers.torch.Reduce",), functions=("einops.einops.reduce",))
def _einops_reduce(b: Build) -> Step:
    """sum / mean: non-negative weights, the z-rule; max / min: winner takes all; anything else is refused."""
    module = b.module
    reduction = module.reduction if module is not None else b.arg(2, "reduction")
    if b.tensor_deps != [0]:
        b.refuse("einops reduce of an input-dependent tensor other than its first argument: no LRP rule")
    if reduction in ("max", "min"):
        b.row("winner takes all")
        fn = b.fn
        return lambda a, k, c: fn(*a, **k)
    if reduction not in ("sum", "mean"):
        b.refuse(f"einops reduction {reduction!r}: no LRP rule (sum, mean, max and min have one)")
    b.row("z-rule (share in proportion to each input)")
    make = b.bound(0)
    return lambda a, k, c: PositiveLinear.apply(a[0], make(a, k), c.tracker)

