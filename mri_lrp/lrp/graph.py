"""Trace a model with torch.fx and rewrite every node into an op whose backward carries relevance.

The user's model is only read: its forward is traced once, leaf layers are re-implemented here with their
eval-mode semantics (BatchNorm with running statistics, Dropout as identity), and parameters are used as
detached tensors. (Python branches on `self.training` inside the user's own modules are traced as the model's
current mode takes them.) BatchNorm directly after a conv/linear whose output has no other user is merged into it
(new tensors). Anything without a rule raises `UnsupportedLayerError` while building, before any heatmap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from mri_lrp.errors import UnsupportedLayerError
from mri_lrp.lrp.ops import ElementwiseEpsilon, LayerRule, PassThrough, PositiveLinear, Sum, Tracker
from mri_lrp.lrp.rules import Affine, Rule

# Function / method names (after stripping in-place spellings) by how relevance crosses them.
ROUTE = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze",
         "contiguous", "cat", "concat", "concatenate", "stack", "split", "chunk", "unbind", "getitem", "movedim",
         "swapaxes", "narrow", "clone", "view_as", "reshape_as", "max_pool1d", "max_pool2d", "max_pool3d",
         "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
         "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"}
DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
ACTIVATION = {"relu", "relu6", "leaky_relu", "prelu", "elu", "selu", "celu", "gelu", "silu", "mish", "softplus",
              "hardswish"}
SCALE = {"mul", "truediv", "div", "neg"}
ADD = {"add": 1.0, "sub": -1.0}
POSITIVE_LINEAR = {"avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                   "adaptive_avg_pool3d", "mean", "sum"}
SOFTMAX = {"softmax", "log_softmax"}
META = {"size", "dim", "numel", "getattr", "len"}
META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}
INPLACE_OPERATORS = {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv"}

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                      nn.Mish, nn.Softplus, nn.Hardswish)
ROUTE_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                 nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten)
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout)
POSITIVE_LINEAR_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                           nn.AdaptiveAvgPool3d)
LAYER_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)

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
class LrpGraph:
    """The rewritten network: steps in graph order, conv/linear sites, and a per-node description."""

    steps: list[tuple[fx.Node, Step]]
    input: fx.Node
    output: fx.Node
    sites: list[Site]
    rows: list[tuple[str, str, str | int]]  # (name, type, text or index into sites)
    last_use: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)

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


def _name_of(node: fx.Node) -> str:
    """The op's name with in-place spellings folded (relu_ → relu, iadd → add)."""
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    name = INPLACE_OPERATORS.get(name, name)
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _is_inplace(node: fx.Node) -> bool:
    """Whether the traced call would write into its input (we then run it on a copy)."""
    name = str(node.target if node.op == "call_method" else getattr(node.target, "__name__", ""))
    positional = _name_of(node) in ACTIVATION and any(a is True for a in node.args[1:])  # F.relu(x, True)
    return name.endswith("_") or name in INPLACE_OPERATORS or node.kwargs.get("inplace") is True or positional


def _from_torch(node: fx.Node) -> bool:
    """call_function targets we recognise by name must come from torch or the operator module."""
    if node.op != "call_function":
        return True
    module = getattr(node.target, "__module__", None) or ""
    return module == "" or module.split(".")[0] in {"torch", "_operator", "operator", "builtins"}


def _call(node: fx.Node, model: nn.Module) -> Callable[..., Any]:
    """The node's original callable (module calls bypass the user's hooks by calling .forward)."""
    if node.op == "call_function":
        return node.target
    if node.op == "call_method":
        return lambda obj, *a, **k: getattr(obj, node.target)(*a, **k)
    return model.get_submodule(node.target).forward


def _bind(fn: Callable[..., Any], args: tuple, kwargs: dict, index: int, copy: bool) -> Callable:
    """fn with every argument fixed except args[index], which becomes the single tensor input."""
    def bound(t: torch.Tensor) -> Any:
        full = list(args)
        full[index] = t.clone() if copy else t
        return fn(*full, **kwargs)
    return bound


def _fetch(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value.detach() if isinstance(value, torch.Tensor) else value


def _affine(module: nn.Module, name: str) -> Affine:
    """Conv/linear parameters as detached tensors; refuse subclasses that change what forward computes."""
    base = next(t for t in LAYER_MODULES if isinstance(module, t))
    if type(module).forward is not base.forward or getattr(module, "padding_mode", "zeros") != "zeros":
        raise UnsupportedLayerError(type(module).__name__, name,
                                    "custom forward or non-zero padding mode: no exact LRP rule")
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        return Affine("linear", module.weight.detach(), bias)
    return Affine("conv", module.weight.detach(), bias, tuple(module.stride), module.padding,
                  tuple(module.dilation), module.groups)


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as y = scale·x + shift per channel (float64 on the CPU, for an exact merge on any
    device, including those without float64)."""
    if type(bn).forward is not nn.modules.batchnorm._BatchNorm.forward:
        raise UnsupportedLayerError(type(bn).__name__, name, "custom BatchNorm forward: no exact LRP rule")
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedLayerError(type(bn).__name__, name, "batch statistics without running estimates: a "
                                    "sample's result would depend on its batch")
    var, mean = _exact(bn.running_var), _exact(bn.running_mean)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * _exact(bn.weight)
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + _exact(bn.bias)
    return scale, shift


def _exact(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def _merge(layer: Affine, scale: torch.Tensor, shift: torch.Tensor) -> Affine:
    """BN(layer(x)) as one layer with new weight and bias tensors (bias absorbs the BN shift)."""
    w = _exact(layer.weight)
    w = w * scale.view((-1,) + (1,) * (w.dim() - 1))
    b = shift + (_exact(layer.bias) * scale if layer.bias is not None else 0.0)
    like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    return Affine(layer.kind, w.to(**like), b.to(**like), layer.stride, layer.padding, layer.dilation,
                  layer.groups)


def trace(model: nn.Module) -> fx.Graph:
    """torch.fx graph of the model's forward; a failure becomes a clear UnsupportedLayerError."""
    try:
        return fx.Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means the same thing to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedLayerError("trace", type(model).__name__,
                                    f"the model is not traceable with torch.fx ({reason})") from exc


def build(model: nn.Module, batchnorm: str = "pass", residual_epsilon: float = 1e-6,
          epsilon: float = 1e-6) -> LrpGraph:
    """Rewrite the traced model into LRP ops. `batchnorm` is the rule for BN that cannot be merged."""
    graph = trace(model)
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

    dep: set[fx.Node] = {placeholders[0]}
    after_layer: set[fx.Node] = set()
    site_of: dict[fx.Node, int] = {}
    sites: list[Site] = []
    rows: list[tuple[str, str, str | int]] = []
    steps: list[tuple[fx.Node, Step]] = []

    for node in nodes:
        if node.op == "output" or node in skipped:
            continue
        inputs = node.all_input_nodes
        depends = any(i in dep for i in inputs)
        if any(i in after_layer or i in site_of for i in inputs):
            after_layer.add(node)
        if node.op == "placeholder":
            default = node.args[0] if node.args else None
            steps.append((node, lambda a, k, c, d=default: d))
            continue
        if node.op == "get_attr":
            steps.append((node, lambda a, k, c, t=node.target: _fetch(model, t)))
            continue
        if not depends or (_name_of(node) in META and node.op != "call_module"):
            if _name_of(node) == "getattr" and depends and node.args[1] not in META_ATTRS:
                raise UnsupportedLayerError(f"getattr {node.args[1]}", node.name, "no LRP rule for this attribute")
            steps.append((node, _plain(_call(node, model))))
            continue
        dep.add(node)
        if node.op == "call_module":
            step = _module_step(node, model, sites, site_of, rows, after_layer, batchnorm, epsilon)
        else:
            step = _function_step(node, model, dep, rows, residual_epsilon)
        steps.append((node, step))

    if result.op == "placeholder":
        raise UnsupportedLayerError("output", "output", "the model returns its input unchanged")
    last_use = _last_uses(nodes, result)
    return LrpGraph(steps, placeholders[0], result, sites, rows, last_use)


def _is_softmax(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), SOFTMAX_MODULES)
    return node.op in ("call_function", "call_method") and _name_of(node) in SOFTMAX and _from_torch(node)


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


def _module_step(node: fx.Node, model: nn.Module, sites: list[Site], site_of: dict[fx.Node, int],
                 rows: list, after_layer: set[fx.Node], batchnorm: str, epsilon: float) -> Step:
    name = str(node.target)
    module = model.get_submodule(name)
    tname = type(module).__name__
    if isinstance(module, LAYER_MODULES):
        index = len(sites)
        sites.append(Site(name, tname, _affine(module, name), first=node not in after_layer))
        site_of[node] = index
        rows.append((name, tname, index))
        return lambda a, k, c, i=index: LayerRule.apply(a[0], sites[i].layer, c.rules[i], c.tracker)
    if isinstance(module, BATCHNORM_MODULES):
        scale, shift = _bn_affine(module, name)
        producer = node.args[0]
        if (isinstance(producer, fx.Node) and producer in site_of and len(producer.users) == 1
                and sites[site_of[producer]].merged is None):
            site = sites[site_of[producer]]
            site.layer, site.merged = _merge(site.layer, scale, shift), name
            rows.append((name, tname, f"merged into '{site.name}'"))
            return lambda a, k, c: a[0]
        like = {"device": module.running_var.device, "dtype": module.running_var.dtype}
        fn = _batchnorm_fn(scale.to(**like), shift.to(**like))
        if batchnorm == "epsilon":
            rows.append((name, tname, f"epsilon on the affine map (epsilon={epsilon:g})"))
            return lambda a, k, c: ElementwiseEpsilon.apply(a[0], fn, epsilon, c.tracker)
        rows.append((name, tname, "pass-through (cannot be merged: not directly after a conv/linear)"))
        return lambda a, k, c: PassThrough.apply(a[0], fn, tname, name)
    if isinstance(module, ACTIVATION_MODULES):
        copy = bool(getattr(module, "inplace", False))
        rows.append((name, tname, "pass-through"))
        return lambda a, k, c: PassThrough.apply(a[0], _bind(module.forward, a, k, 0, copy), tname, name)
    if isinstance(module, ROUTE_MODULES):
        rows.append((name, tname, "winner takes all" if "Max" in tname else "routing"))
        return _plain(module.forward)
    if isinstance(module, IDENTITY_MODULES):
        return lambda a, k, c: a[0]
    if isinstance(module, POSITIVE_LINEAR_MODULES):
        rows.append((name, tname, "z-rule (share in proportion to each input)"))
        return lambda a, k, c: PositiveLinear.apply(a[0], module.forward, c.tracker)
    if isinstance(module, SOFTMAX_MODULES):
        raise UnsupportedLayerError(tname, name, "softmax is only supported as the last operation")
    raise UnsupportedLayerError(tname, name)


def _batchnorm_fn(scale: torch.Tensor, shift: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(t: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (t.dim() - 2)
        return t * scale.to(t).view(shape) + shift.to(t).view(shape)
    return fn


def _function_step(node: fx.Node, model: nn.Module, dep: set[fx.Node], rows: list,
                   residual_epsilon: float) -> Step:
    name = _name_of(node)
    fn = _call(node, model)
    copy = _is_inplace(node)  # in-place spellings run on a copy, so no traced value is overwritten
    tensor_deps = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a in dep]
    if not _from_torch(node):
        raise UnsupportedLayerError(name, node.name)
    if name in ROUTE:
        return _plain(fn)
    if name in DROPOUT:
        return lambda a, k, c: a[0]
    if name in SOFTMAX:
        raise UnsupportedLayerError(name, node.name, "softmax is only supported as the last operation")
    if len(tensor_deps) == 1 and tensor_deps[0] == 0 and name in ACTIVATION:
        rows.append((node.name, name, "pass-through"))
        return lambda a, k, c: PassThrough.apply(a[0], _bind(fn, a, k, 0, copy), name, node.name)
    if len(tensor_deps) == 1 and tensor_deps[0] == 0 and name in POSITIVE_LINEAR:
        rows.append((node.name, name, "z-rule (share in proportion to each input)"))
        return lambda a, k, c: PositiveLinear.apply(a[0], _bind(fn, a, k, 0, False), c.tracker)
    scalable = name in SCALE and not (name in {"div", "truediv"} and tensor_deps != [0])
    if len(tensor_deps) == 1 and (scalable or name in ADD):
        rows.append((node.name, name, "pass-through (constant operand)"))
        i = tensor_deps[0]
        return lambda a, k, c: PassThrough.apply(a[i], _bind(fn, a, k, i, copy), name, node.name)
    if tensor_deps == [0, 1] and name in ADD:
        sign = ADD[name] * float(node.kwargs.get("alpha", 1.0))
        rows.append((node.name, name, f"residual {name}: share in proportion to each operand "
                                      f"(epsilon={residual_epsilon:g})"))
        return lambda a, k, c: Sum.apply(a[0], a[1], sign, residual_epsilon, c.tracker, node.name)
    if name in SCALE and len(tensor_deps) > 1:
        raise UnsupportedLayerError(name, node.name, "product of two input-dependent tensors (e.g. gating): "
                                    "no LRP rule")
    raise UnsupportedLayerError(name, node.name)

