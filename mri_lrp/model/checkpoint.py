"""Checkpoints: the project's own self-describing format, plain state_dicts, and (only when trusted) pickles.

Our format is one ``torch.save`` file holding a dict of plain values::

    {"format": "mri-lrp-checkpoint", "version": 1,
     "meta": '<JSON: architecture, kwargs, class_names, input_spec, extra, versions>',
     "state_dict": {name: tensor, ...}}

It is read with ``torch.load(weights_only=True)``, whose unpickler only builds tensors and plain containers,
so opening a checkpoint never runs code stored in it. The architecture is a zoo name (``"cnn3d"``) or an
import path ``"package.module:ClassName"`` of an installed ``torch.nn.Module`` subclass (or of a factory
function annotated to return one, such as ``monai.networks.nets:resnet18``); nothing else is called, and
only with the stored JSON keyword arguments. Importing that module runs installed code, never the file's.

Other files users already have:

* a bare ``state_dict``, or one under ``"state_dict"``, ``"model_state_dict"``, ``"model"`` or ``"net"``,
  with DDP ``module.`` (and ``torch.compile`` ``_orig_mod.``) prefixes stripped; the architecture comes from
  the ``model`` argument (``--model MODULE:CLASS --model-kwargs JSON``, or a zoo name);
* a whole pickled model (``torch.save(model)``): unpickling it can run arbitrary code, so it is refused
  unless ``trust_checkpoint=True`` (``--trust-checkpoint``);
* TorchScript archives are refused: LRP rewrites the Python module structure, which they do not keep.

When a file does not say, the defaults are: class names ``class_0 ... class_{K-1}`` for a model with K
outputs (found by a dry forward pass on zeros, or from the last ``nn.Linear``), and
``InputSpec(dims=<2 for a first Conv2d, 3 for Conv3d>, channels=<its in_channels>, shape=None (the scan's
native grid), spacing=None, orientation="RAS", normalization="zscore")``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mri_lrp import __version__
from mri_lrp.errors import CheckpointError, SettingsError, UnsupportedLayerError
from mri_lrp.model.checkpoint_file import first_line, read_checkpoint_file
from mri_lrp.model.logits import HOW, choose, element, kind_of
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.zoo import build_model
from mri_lrp.outputs import atomic_path

FORMAT = "mri-lrp-checkpoint"
VERSION = 1
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "demo_model.pt"
DEMO_NOTICE = ("DEMO MODEL trained on synthetic heads, not on patients: its classes and heatmaps say nothing "
               "about real scans (give --checkpoint)")

#: Keys under which training scripts commonly nest the state_dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Key prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Grid size per spatial axis for the dry forward pass that counts outputs when the spec has no shape.
PROBE_SIZE = {2: 64, 3: 32}
_LIST_LIMIT = 5


@dataclass
class LoadedModel:
    """A model ready for explanation (eval mode, on the CPU) plus what it expects and where it came from."""

    model: nn.Module
    class_names: list[str]
    input_spec: InputSpec
    architecture: str
    sha256: str
    path: Path
    source: str  # "mri-lrp" | "state_dict" | "pickle"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    is_demo: bool = False     # a shipped demo model (trained on synthetic heads), however it was named
    assumed: str = ""         # what was assumed because neither the file nor the user said (spec, class names)


# ----------------------------------------------------------------------------------------------- save


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, architecture: str,
                    kwargs: dict[str, Any], class_names: list[str], input_spec: InputSpec,
                    extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` in our format, after checking the file will load back into the same network.

    ``architecture`` is a zoo name or ``"package.module:ClassName"``; ``kwargs`` rebuild it and must be
    JSON values. The file is written atomically (a partial file never replaces a good one).
    """
    path = Path(path)
    kwargs = dict(kwargs)
    extra = dict(extra or {})
    class_names = _check_class_names(path, class_names)
    try:
        meta = json.dumps({
            "architecture": architecture, "kwargs": kwargs, "class_names": class_names,
            "input_spec": input_spec.to_dict(), "extra": extra,
            "mri_lrp_version": __version__, "torch_version": torch.__version__,
        }, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _err(path, f"kwargs and extra must be JSON values: {exc}") from None
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    rebuilt = resolve_architecture(architecture, kwargs, path)
    problems = _fit_problems(state_dict, rebuilt.state_dict())
    if problems:
        raise _err(path, f"architecture {architecture!r} with {kwargs} does not rebuild this "
                         f"model: {problems}")
    _check_spec_fits(path, model, input_spec)
    _check_outputs(path, model, input_spec, class_names)
    payload = {"format": FORMAT, "version": VERSION, "meta": meta, "state_dict": state_dict}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# ----------------------------------------------------------------------------------------------- load


def load_checkpoint(path: str | os.PathLike[str] | None = None, *, model: str | None = None,
                    model_kwargs: dict[str, Any] | None = None, class_names: list[str] | None = None,
                    input_spec: InputSpec | dict[str, Any] | None = None,
                    trust_checkpoint: bool = False, model_output: str | int | None = None) -> LoadedModel:
    """Load a checkpoint (the shipped demo model when ``path`` is None) into a model in eval mode.

    ``model``/``model_kwargs`` name the architecture for plain state_dicts (and override the one stored in
    our format); ``class_names``/``input_spec`` override or supply what the file does not say. An
    ``input_spec`` dict updates the file's spec (or the default one) key by key, so a user who states only
    the shape keeps the checkpoint's spacing and normalisation. ``model_output`` picks the logits of a
    forward that returns several values (an index or key; the first of a tuple or list by default). Every
    problem is a ``CheckpointError`` naming the file and the reason.
    """
    path = Path(DEMO_CHECKPOINT if path is None else path)
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise _err(path, f"model kwargs must be a JSON object, not {model_kwargs!r}")
    if class_names is not None:
        class_names = _check_class_names(path, class_names)
    if path == DEMO_CHECKPOINT and not path.exists():
        raise _err(path, "the demo model is not installed; pass --checkpoint PATH")
    obj = read_checkpoint_file(path, trust_checkpoint)
    sha256 = _sha256(path)

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        loaded = _load_ours(path, obj, sha256, model, model_kwargs, class_names, input_spec, model_output)
        loaded.is_demo = _is_demo(path, sha256)
        return loaded
    pickled = obj if isinstance(obj, nn.Module) else _nested_module(obj)
    if pickled is not None:
        net, source = pickled, "pickle"
    else:
        state_dict = _find_state_dict(path, obj)
        if model is None:
            raise _err(path, "holds a plain state_dict with no architecture; name it with "
                             "--model MODULE:CLASS (and --model-kwargs JSON) or a zoo name")
        net = resolve_architecture(model, model_kwargs or {}, path)
        _load_weights(path, net, state_dict, model)
        source = "state_dict"

    architecture = f"{type(net).__module__}:{type(net).__qualname__}" if source == "pickle" else str(model)
    net = net.cpu().eval()
    spec = _updated_spec(path, default_input_spec(net, path), input_spec)
    _check_spec_fits(path, net, spec)
    names = _check_outputs(path, net, spec, class_names, model_output)
    return LoadedModel(net, names, spec, architecture, sha256, path, source, dict(model_kwargs or {}),
                       is_demo=_is_demo(path, sha256), assumed=_assumed(path, spec, input_spec, class_names, names))


def _assumed(path: Path, spec: InputSpec, given: InputSpec | dict[str, Any] | None, class_names: list[str] | None,
             names: list[str]) -> str:
    """One sentence naming what a plain state_dict or pickle was given by default: the user must know that
    the scans are fed on their native grid with z-scoring unless they say otherwise."""
    parts = []
    if given is None or (isinstance(given, dict) and not {"shape", "spacing", "normalization"} & set(given)):
        parts.append(f"input {spec.dims}D with {spec.channels} channel(s) on the scan's own grid "
                     f"(shape {'native' if spec.shape is None else 'x'.join(map(str, spec.shape))}, spacing "
                     f"{'native' if spec.spacing is None else 'x'.join(f'{v:g}' for v in spec.spacing)} mm), "
                     f"orientation {spec.orientation}, {spec.normalization} intensities")
    if class_names is None:
        parts.append(f"class names {', '.join(names)}")
    if not parts:
        return ""
    return (f"{path.name} does not say how its model was trained, so mri-lrp assumed: {'; '.join(parts)}. "
            "If that is not how it was trained, give [input_spec] and class_names in a --config")


def _is_demo(path: Path, sha256: str) -> bool:
    """One of the shipped demo models (the default, the four-sequence one, the folds), also when a copy of one
    is given as --checkpoint."""
    shipped = sorted(DEMO_CHECKPOINT.parent.glob("demo_*.pt"))
    if path.resolve() in shipped:
        return True
    try:
        size = path.stat().st_size
        return any(demo.stat().st_size == size and _sha256(demo) == sha256 for demo in shipped)
    except OSError:
        return False


def _load_ours(path: Path, obj: dict[str, Any], sha256: str, model: str | None,
               model_kwargs: dict[str, Any] | None, class_names: list[str] | None,
               input_spec: InputSpec | dict[str, Any] | None,
               model_output: str | int | None = None) -> LoadedModel:
    """Rebuild a model from our format's metadata (flags given by the user take precedence)."""
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise _err(path, f"format version {version!r} is newer than this mri-lrp reads "
                         f"({VERSION}); upgrade mri-lrp")
    try:
        meta = json.loads(obj["meta"])
        architecture = model or meta["architecture"]
        kwargs = model_kwargs if model is not None else meta["kwargs"]
        names = class_names or _check_class_names(path, meta["class_names"])
        spec = _updated_spec(path, InputSpec.from_dict(meta["input_spec"], stored=True), input_spec)
        extra = meta.get("extra") or {}
        state_dict = obj["state_dict"]
        if not (isinstance(architecture, str) and isinstance(kwargs, (dict, type(None)))
                and isinstance(extra, dict) and _is_tensor_dict(state_dict)):
            raise TypeError("architecture, kwargs, extra or state_dict has the wrong type")
    except (KeyError, TypeError, ValueError) as exc:
        raise _err(path, f"damaged mri-lrp checkpoint metadata ({first_line(exc)})") from None
    net = resolve_architecture(architecture, kwargs or {}, path)
    _load_weights(path, net, state_dict, architecture)
    net.eval()
    if model is not None or class_names is not None or input_spec is not None or model_output is not None:
        _check_spec_fits(path, net, spec)
        names = _check_outputs(path, net, spec, names, model_output)
    return LoadedModel(net, names, spec, architecture, sha256, path, "mri-lrp", dict(kwargs or {}), extra)


def _updated_spec(path: Path, base: InputSpec, given: InputSpec | dict[str, Any] | None) -> InputSpec:
    """``given`` as a whole spec, or ``base`` with the keys ``given`` states."""
    if given is None or isinstance(given, InputSpec):
        return given or base
    try:
        return InputSpec.from_dict({**base.to_dict(), **given})
    except (TypeError, ValueError) as exc:
        raise _err(path, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None


def resolve_architecture(architecture: str, kwargs: dict[str, Any],
                         path: str | os.PathLike[str] = "<model>") -> nn.Module:
    """Build the network named by a zoo name or ``"package.module:ClassName"``.

    Only ``torch.nn.Module`` subclasses, and factory functions annotated to return one (MONAI's
    ``resnet18``), are called, so a name stored in a file cannot call an arbitrary function
    (``os:system``) with its kwargs.
    """
    if ":" not in architecture:
        try:
            return build_model(architecture, **kwargs)
        except SettingsError as exc:
            raise _err(path, f"{exc}; for your own class use MODULE:CLASS") from None
    module_name, _, attr = architecture.partition(":")
    if not module_name or not attr:
        raise _err(path, f"model {architecture!r} must look like package.module:ClassName")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # importing user code may fail in any way; report it, never a traceback
        raise _err(path, f"cannot import {module_name!r} for model {architecture!r} "
                         f"({first_line(exc)})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise _err(path, f"model {architecture!r}: {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not _builds_module(target):
        raise _err(path, f"model {architecture!r} is neither a torch.nn.Module class nor a function "
                         "annotated to return one")
    try:
        return target(**kwargs)
    except Exception as exc:  # the class's own constructor rejects the kwargs
        raise _err(path, f"cannot build {architecture!r} with kwargs {kwargs} "
                         f"({first_line(exc)})") from None


def _builds_module(target: Any) -> bool:
    """True for an nn.Module class, or a function whose return annotation resolves to one."""
    if isinstance(target, type):
        return issubclass(target, nn.Module)
    if not inspect.isfunction(target):
        return False
    try:
        returned = typing.get_type_hints(target).get("return")
    except Exception:  # unresolvable annotations: treat as unknown, hence refused
        return False
    return isinstance(returned, type) and issubclass(returned, nn.Module)


def _nested_module(obj: Any) -> nn.Module | None:
    """A trusted training dict may carry the whole model under "model" or "net"."""
    if not isinstance(obj, dict):
        return None
    for key in ("model", "net"):
        if isinstance(obj.get(key), nn.Module):
            return obj[key]
    return None


def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _find_state_dict(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """The state_dict itself, or the one nested under a conventional key."""
    if _is_tensor_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return obj[key]
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise _err(path, f"found no state_dict (a dict of tensors, bare or under "
                         f"{'/'.join(STATE_DICT_KEYS)}); top-level keys: {keys}")
    raise _err(path, f"holds a {type(obj).__name__}, not a model or a state_dict")


def _strip_prefixes(state_dict: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove DDP/compile prefixes that every key carries, unless the model's own keys carry them too."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if (all(k.startswith(prefix) for k in state_dict)
                    and not all(k.startswith(prefix) for k in expected)):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f" (and {len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else "")


def _fit_problems(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """Missing keys, unexpected keys and shape mismatches between a file and a model, as one line."""
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} (file {_shape(state_dict[k])}, model {_shape(expected[k])})"
              for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {_listing(shapes)}")
    return "; ".join(parts)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _load_weights(path: Path, net: nn.Module, state_dict: dict[str, torch.Tensor], architecture: str) -> None:
    expected = net.state_dict()
    state_dict = _strip_prefixes(state_dict, set(expected))
    problems = _fit_problems(state_dict, expected)
    if problems:
        raise _err(path, f"weights do not fit model {architecture!r}: {problems}")
    net.load_state_dict(state_dict, strict=False)


# ------------------------------------------------------------------------------- defaults and checks


def _first_conv(net: nn.Module) -> nn.Module | None:
    return next((m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)


def default_input_spec(net: nn.Module, path: str | os.PathLike[str] = "<model>") -> InputSpec:
    """The documented default spec: dims and channels from the first convolution, native grid, z-score."""
    conv = _first_conv(net)
    if not isinstance(conv, (nn.Conv2d, nn.Conv3d)):
        raise _err(path, "cannot infer the input spec (no Conv2d/Conv3d layer); give it "
                         "(dims, channels, ...) in the config")
    return InputSpec(dims=2 if isinstance(conv, nn.Conv2d) else 3, channels=conv.in_channels, shape=None,
                     spacing=None, orientation="RAS", normalization="zscore")


def _check_spec_fits(path: Path, net: nn.Module, spec: InputSpec) -> None:
    """A spec that contradicts the first convolution would fail on every scan: refuse it up front."""
    conv = _first_conv(net)
    if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
        dims = 2 if isinstance(conv, nn.Conv2d) else 3
        if (dims, conv.in_channels) != (spec.dims, spec.channels):
            raise _err(path, f"input spec says {spec.dims}D with {spec.channels} channel(s) but "
                             f"the model's first convolution takes {dims}D input with "
                             f"{conv.in_channels} channel(s)")


def count_outputs(net: nn.Module, spec: InputSpec, model_output: str | int | None = None,
                  path: str | os.PathLike[str] = "<model>") -> int | None:
    """Number of class scores: a dry forward pass on zeros of the spec's shape, else the last Linear.

    A forward that returns several values is counted at the element `model_output` names (the first of a
    tuple or list by default, see mri_lrp.model.logits); an element that is not (batch, classes) is refused."""
    shape = spec.shape or (PROBE_SIZE[spec.dims],) * spec.dims
    first = next(iter(net.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros((1, spec.channels, *shape), device=device))
    except Exception:  # any model may reject the probe size; fall back to its last Linear
        out = None
    finally:
        net.train(was_training)
    if out is not None:
        try:
            scores, how = choose(out, model_output)
        except UnsupportedLayerError as exc:
            raise _err(path, exc.reason) from None
        if isinstance(scores, torch.Tensor) and scores.ndim == 2:
            return int(scores.shape[1])
        if how:
            found = f"of shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else f"a {kind_of(scores)}"
            raise _err(path, f"the explained output, {element(how)}, is {found}, not class scores of "
                             f"shape (batch, classes); set {HOW} to the logits")
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _check_outputs(path: Path, net: nn.Module, spec: InputSpec, class_names: list[str] | None,
                   model_output: str | int | None = None) -> list[str]:
    """Class names that match the model's outputs: the given ones (checked) or class_0 ... class_{K-1}."""
    n = count_outputs(net, spec, model_output, path)
    if n == 1:  # softmax over one score is always 1: every scan would be 'class_0, p=1' whatever it shows
        raise _err(path, "the model has a single output (a one-logit binary classifier?); explanations need "
                         "one score per class, so give it two outputs (e.g. [-z, z]) and re-save it")
    if class_names is None:
        if n is None:
            raise _err(path, "cannot tell how many classes the model has; give the class names")
        return [f"class_{i}" for i in range(n)]
    if n is not None and n != len(class_names):
        raise _err(path, f"{len(class_names)} class names for a model with {n} outputs")
    return class_names


def _check_class_names(path: Path, names: Any) -> list[str]:
    if (not isinstance(names, (list, tuple)) or not names
            or not all(isinstance(n, str) and n.strip() for n in names)):
        raise _err(path, f"class names must be a non-empty list of names, not {names!r}")
    if len(set(names)) != len(names):
        raise _err(path, f"class names must be unique: {list(names)}")
    return list(names)


def _err(path: str | os.PathLike[str], reason: str) -> CheckpointError:
    return CheckpointError(str(path), reason)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- info


def describe_model(loaded: LoadedModel, *, rule: str = "alphabeta", composite: str | None = None,
                   **rule_params: Any) -> dict[str, Any]:
    """What ``mri-lrp info`` shows: classes, input spec, size, provenance and the LRP rule of each layer."""
    from mri_lrp.lrp import describe_rules  # lazy: loading a model never needs the engine

    rules = describe_rules(loaded.model, rule=rule, composite=composite, **rule_params)
    return {
        "path": str(loaded.path),
        "sha256": loaded.sha256,
        "source": loaded.source,
        "architecture": loaded.architecture,
        "model_kwargs": loaded.model_kwargs,
        "classes": list(loaded.class_names),
        "input_spec": loaded.input_spec.to_dict(),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "extra": loaded.extra,
        **({"warning": DEMO_NOTICE} if loaded.is_demo else {}),
        **({"assumed": loaded.assumed} if loaded.assumed else {}),
        "layers": [{"name": name, "type": kind, "rule": text} for name, kind, text in rules],
    }
