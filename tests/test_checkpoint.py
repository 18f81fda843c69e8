"""Checkpoint loading: our format, plain state_dicts, pickles (refused unless trusted), and every failure."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

import mri_lrp.model.checkpoint as ckpt
from mri_lrp.errors import CheckpointError
from mri_lrp.model.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.zoo import build_model

CLASSES = ["glioma", "meningioma", "pituitary", "no_tumour"]
KWARGS = {"width": 2, "depth": 2}
SPEC = InputSpec(dims=3, channels=1, shape=(8, 8, 8), spacing=(2.0, 2.0, 2.0), normalization="percentile")


@pytest.fixture()
def net() -> nn.Module:
    """A tiny cnn3d with non-trivial BatchNorm statistics, so a lost buffer changes the outputs."""
    torch.manual_seed(0)
    model = build_model("cnn3d", **KWARGS)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 8, 8, 8) * 3 + 1)
    return model.eval()


@pytest.fixture()
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 1, 8, 8, 8)


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of the user's own, defining a network class and a model factory."""
    name = f"usernets_{uuid.uuid4().hex[:8]}"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(
        "from torch import nn\n\n"
        "class SliceNet(nn.Module):\n"
        "    def __init__(self, channels=3, classes=2):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(channels, 4, 3, padding=1)\n"
        "        self.pool = nn.AdaptiveAvgPool2d(1)\n"
        "        self.head = nn.Linear(4, classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.head(self.pool(self.conv(x)).flatten(1))\n\n"
        "def make_slicenet(classes: int = 2) -> SliceNet:\n"
        "    return SliceNet(classes=classes)\n\n"
        "class FixedGrid(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, 2, 3)\n"
        "        self.head = nn.Linear(2 * 10 * 10, 5)\n\n"
        "    def forward(self, x):\n"
        "        return self.head(self.conv(x).flatten(1))\n\n"
        "def not_a_model(path: str = '') -> int:\n"
        "    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    yield name
    sys.modules.pop(name, None)


def _save_ours(path: Path, model: nn.Module, **overrides: object) -> Path:
    args = {"architecture": "cnn3d", "kwargs": KWARGS, "class_names": CLASSES, "input_spec": SPEC}
    args.update(overrides)
    save_checkpoint(path, model, **args)
    return path


# ------------------------------------------------------------------------------------------ our format


def test_our_format_round_trips_weights_classes_spec_and_extra(tmp_path: Path, net: nn.Module,
                                                               x: torch.Tensor) -> None:
    path = _save_ours(tmp_path / "m.pt", net, extra={"accuracy": 0.93, "seed": 7})
    loaded = load_checkpoint(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.source == "mri-lrp"
    assert loaded.architecture == "cnn3d"
    assert loaded.model_kwargs == KWARGS
    assert loaded.class_names == CLASSES
    assert loaded.input_spec == SPEC
    assert loaded.extra == {"accuracy": 0.93, "seed": 7}
    assert loaded.path == path
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.model.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("name, shape", [("cnn2d", (1, 1, 16, 16)), ("resnet3d", (1, 1, 8, 8, 8))])
def test_other_zoo_models_round_trip_to_the_same_outputs(tmp_path: Path, name: str, shape: tuple) -> None:
    torch.manual_seed(2)
    model = build_model(name, width=2, depth=2, num_classes=3).eval()
    spec = InputSpec(dims=len(shape) - 2)
    save_checkpoint(tmp_path / "m.pt", model, architecture=name,
                    kwargs={"width": 2, "depth": 2, "num_classes": 3}, class_names=["a", "b", "c"],
                    input_spec=spec)
    loaded = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.input_spec == spec


def test_our_format_is_plain_data_readable_with_weights_only(tmp_path: Path, net: nn.Module) -> None:
    raw = torch.load(_save_ours(tmp_path / "m.pt", net), weights_only=True)
    assert raw["format"] == "mri-lrp-checkpoint" and raw["version"] == 1
    meta = json.loads(raw["meta"])
    assert meta["architecture"] == "cnn3d" and meta["class_names"] == CLASSES
    assert InputSpec.from_dict(meta["input_spec"]) == SPEC
    assert set(raw["state_dict"]) == set(net.state_dict())


def test_a_users_own_class_round_trips_by_import_path(tmp_path: Path, user_module: str) -> None:
    module = __import__(user_module)
    model = module.SliceNet(channels=3, classes=2).eval()
    save_checkpoint(tmp_path / "m.pt", model, architecture=f"{user_module}:SliceNet",
                    kwargs={"channels": 3, "classes": 2}, class_names=["no", "yes"],
                    input_spec=InputSpec(dims=2, channels=3))
    loaded = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(1, 3, 10, 10)
    assert torch.equal(loaded.model(x), model(x))
    assert loaded.architecture == f"{user_module}:SliceNet"


def test_flags_override_class_names_and_spec_stored_in_our_format(tmp_path: Path, net: nn.Module) -> None:
    path = _save_ours(tmp_path / "m.pt", net)
    spec = InputSpec(dims=3, shape=(16, 16, 16))
    loaded = load_checkpoint(path, class_names=["a", "b", "c", "d"], input_spec=spec)
    assert loaded.class_names == ["a", "b", "c", "d"] and loaded.input_spec == spec


def test_save_writes_atomically_and_replaces_an_old_file(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "sub" / "m.pt"
    _save_ours(path, net, extra={"n": 1})
    _save_ours(path, net, extra={"n": 2})
    assert load_checkpoint(path).extra == {"n": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("overrides, text", [
    ({"kwargs": {"width": 3, "depth": 2}}, "does not rebuild this model: .*shape mismatches"),
    ({"kwargs": {"width": 2, "depth": 3}}, "does not rebuild this model: .*missing keys"),
    ({"architecture": "resnet3d"}, "does not rebuild this model"),
    ({"architecture": "nosuchnet"}, "unknown model 'nosuchnet'"),
    ({"kwargs": {"width": 2, "depth": 2, "dropout": float("nan")}}, "must be JSON values"),
    ({"extra": {"when": object()}}, "must be JSON values"),
    ({"class_names": ["a", "b"]}, "2 class names for a model with 4 outputs"),
    ({"class_names": ["a", "a", "b", "c"]}, "class names must be unique"),
    ({"class_names": []}, "non-empty list"),
    ({"input_spec": InputSpec(dims=2)}, "input spec says 2D with 1 channel.*takes 3D input"),
    ({"input_spec": InputSpec(dims=3, channels=2)}, "2 channel"),
])
def test_save_refuses_a_checkpoint_that_would_not_load_back(tmp_path: Path, net: nn.Module,
                                                            overrides: dict, text: str) -> None:
    path = tmp_path / "m.pt"
    with pytest.raises(CheckpointError, match=text):
        _save_ours(path, net, **overrides)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_newer_format_version_asks_to_upgrade(tmp_path: Path, net: nn.Module) -> None:
    path = _save_ours(tmp_path / "m.pt", net)
    raw = torch.load(path, weights_only=True)
    raw["version"] = 2
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="format version 2 is newer.*upgrade"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", [
    lambda raw: raw.update(meta="{not json"),
    lambda raw: raw.update(meta=json.dumps({"architecture": "cnn3d"})),
    lambda raw: raw.update(meta=json.dumps({**json.loads(raw["meta"]), "input_spec": {"dims": 5}})),
    lambda raw: raw.pop("state_dict"),
    lambda raw: raw.update(state_dict=[1, 2]),
    lambda raw: raw.update(meta=json.dumps({**json.loads(raw["meta"]), "architecture": 3})),
])
def test_damaged_metadata_is_a_checkpoint_error(tmp_path: Path, net: nn.Module, damage) -> None:
    path = _save_ours(tmp_path / "m.pt", net)
    raw = torch.load(path, weights_only=True)
    damage(raw)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="damaged mri-lrp checkpoint metadata"):
        load_checkpoint(path)


def test_without_a_path_the_demo_checkpoint_is_loaded(tmp_path: Path, net: nn.Module,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    demo = _save_ours(tmp_path / "demo_model.pt", net)
    monkeypatch.setattr(ckpt, "DEMO_CHECKPOINT", demo)
    assert load_checkpoint().path == demo


def test_a_missing_demo_checkpoint_says_to_pass_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt, "DEMO_CHECKPOINT", tmp_path / "demo_model.pt")
    with pytest.raises(CheckpointError, match="demo model is not installed; pass --checkpoint"):
        load_checkpoint()


def test_demo_checkpoint_path_points_into_the_package_data() -> None:
    assert ckpt.DEMO_CHECKPOINT == Path(ckpt.__file__).parents[1] / "data" / "demo_model.pt"


@pytest.mark.skipif(not ckpt.DEMO_CHECKPOINT.exists(), reason="the demo model has not been trained yet")
def test_the_shipped_demo_model_loads_in_our_format() -> None:
    loaded = load_checkpoint(ckpt.DEMO_CHECKPOINT)
    assert loaded.source == "mri-lrp"
    assert len(loaded.class_names) >= 2


# ------------------------------------------------------------------------------------ plain state_dicts


def test_bare_state_dict_loads_with_a_zoo_name_and_defaults(tmp_path: Path, net: nn.Module,
                                                            x: torch.Tensor) -> None:
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=KWARGS)
    assert loaded.source == "state_dict" and loaded.architecture == "cnn3d"
    assert loaded.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert loaded.input_spec == InputSpec(dims=3, channels=1, shape=None, spacing=None, orientation="RAS",
                                          normalization="zscore")
    assert not loaded.model.training
    assert torch.equal(loaded.model(x), net(x))


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net"])
def test_state_dict_nested_under_a_conventional_key_loads(tmp_path: Path, net: nn.Module, x: torch.Tensor,
                                                         key: str) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    net(x).sum().backward()
    optimizer.step()
    net.eval()
    torch.save({"epoch": 3, key: net.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt", model="cnn3d", model_kwargs=KWARGS)
    assert torch.equal(loaded.model(x), net(x))


@pytest.mark.parametrize("prefix", ["module.", "module.module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_and_compile_prefixes_are_stripped(tmp_path: Path, net: nn.Module, x: torch.Tensor,
                                               prefix: str) -> None:
    torch.save({"state_dict": {prefix + k: v for k, v in net.state_dict().items()}}, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt", model="cnn3d", model_kwargs=KWARGS)
    assert torch.equal(loaded.model(x), net(x))


def test_a_model_whose_own_keys_start_with_module_is_left_alone(tmp_path: Path, net: nn.Module,
                                                                 user_module: str) -> None:
    module = __import__(user_module)
    (Path(module.__file__).parent / f"{user_module}_wrap.py").write_text(
        f"from torch import nn\nfrom {user_module} import SliceNet\n\n"
        "class Wrapped(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.module = SliceNet()\n\n"
        "    def forward(self, x):\n"
        "        return self.module(x)\n"
    )
    wrapped = __import__(f"{user_module}_wrap").Wrapped()
    try:
        torch.save(wrapped.state_dict(), Path(module.__file__).parent / "w.pt")
        loaded = load_checkpoint(Path(module.__file__).parent / "w.pt", model=f"{user_module}_wrap:Wrapped")
        assert set(loaded.model.state_dict()) == set(wrapped.state_dict())
    finally:
        sys.modules.pop(f"{user_module}_wrap", None)


def test_users_own_class_with_defaults_from_its_first_conv_and_output_size(tmp_path: Path,
                                                                           user_module: str) -> None:
    module = __import__(user_module)
    model = module.SliceNet(channels=3, classes=5)
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt", model=f"{user_module}:SliceNet",
                             model_kwargs={"channels": 3, "classes": 5})
    assert loaded.input_spec.dims == 2 and loaded.input_spec.channels == 3
    assert loaded.input_spec.shape is None and loaded.input_spec.normalization == "zscore"
    assert loaded.class_names == [f"class_{i}" for i in range(5)]


def test_a_factory_annotated_to_return_a_module_is_accepted(tmp_path: Path, user_module: str) -> None:
    model = __import__(user_module).make_slicenet(classes=3)
    torch.save(model.state_dict(), tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt", model=f"{user_module}:make_slicenet",
                             model_kwargs={"classes": 3})
    assert len(loaded.class_names) == 3


def test_given_class_names_and_spec_replace_the_defaults(tmp_path: Path, net: nn.Module) -> None:
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=KWARGS, class_names=CLASSES,
                             input_spec=SPEC)
    assert loaded.class_names == CLASSES and loaded.input_spec == SPEC


def test_class_count_falls_back_to_the_last_linear_when_the_probe_does_not_fit(tmp_path: Path,
                                                                               user_module: str) -> None:
    model = __import__(user_module).FixedGrid()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", model=f"{user_module}:FixedGrid")
    assert loaded.class_names == [f"class_{i}" for i in range(5)]
    sized = load_checkpoint(tmp_path / "sd.pt", model=f"{user_module}:FixedGrid",
                            input_spec=InputSpec(dims=2, shape=(12, 12)))
    assert len(sized.class_names) == 5


def test_wrong_class_name_count_is_refused(tmp_path: Path, net: nn.Module) -> None:
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="3 class names for a model with 4 outputs"):
        load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=KWARGS, class_names=["a", "b", "c"])


def test_a_spec_that_contradicts_the_first_conv_is_refused(tmp_path: Path, net: nn.Module) -> None:
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="input spec says 2D with 1 channel.*takes 3D input"):
        load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=KWARGS, input_spec=InputSpec(dims=2))


def test_state_dict_without_model_asks_for_model_flag(tmp_path: Path, net: nn.Module) -> None:
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="no architecture; name it with --model MODULE:CLASS"):
        load_checkpoint(tmp_path / "sd.pt")


def test_missing_keys_are_listed(tmp_path: Path, net: nn.Module) -> None:
    sd = net.state_dict()
    del sd["classifier.weight"]
    torch.save(sd, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"sd.pt: weights do not fit model 'cnn3d': 1 missing keys: "
                                              r"classifier.weight$"):
        load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=KWARGS)


def test_unexpected_keys_are_listed_and_long_lists_truncated(tmp_path: Path, net: nn.Module) -> None:
    sd = dict(net.state_dict())
    sd.update({f"extra.{i}": torch.zeros(1) for i in range(8)})
    torch.save(sd, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"8 unexpected keys: extra.0, extra.1, extra.2, extra.3, "
                                              r"extra.4 \(and 3 more\)") as info:
        load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=KWARGS)
    assert "\n" not in str(info.value)


def test_shape_mismatches_are_listed_with_both_shapes(tmp_path: Path, net: nn.Module) -> None:
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches: classifier.weight \(file 4x4, model 3x4\), "
                                              r"classifier.bias \(file 4, model 3\)"):
        load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs={**KWARGS, "num_classes": 3})


def test_missing_batchnorm_counters_from_old_files_are_tolerated(tmp_path: Path, net: nn.Module,
                                                                x: torch.Tensor) -> None:
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=KWARGS)
    assert torch.equal(loaded.model(x), net(x))


@pytest.mark.parametrize("model, kwargs, text", [
    ("no_such_pkg.nets:Net", {}, "cannot import 'no_such_pkg.nets' for model 'no_such_pkg.nets:Net'"),
    ("torch.nn:NoSuchNet", {}, "'torch.nn' has no 'NoSuchNet'"),
    (":Net", {}, "must look like package.module:ClassName"),
    ("cnn4d", {}, "unknown model 'cnn4d'"),
    ("cnn3d", {"widht": 2}, "bad arguments"),
    ("torch.nn:Conv3d", {"in_channels": 1}, "cannot build 'torch.nn:Conv3d'"),
])
def test_an_architecture_that_cannot_be_built_is_named(tmp_path: Path, net: nn.Module, model: str,
                                                       kwargs: dict, text: str) -> None:
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=text):
        load_checkpoint(tmp_path / "sd.pt", model=model, model_kwargs=kwargs)


def test_an_architecture_string_never_calls_a_non_model_function(tmp_path: Path, net: nn.Module,
                                                                 user_module: str) -> None:
    marker = tmp_path / "ran"
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    for target, kwargs in [("os:system", {"command": f"touch {marker}"}),
                           ("pathlib:Path.touch", {"self": str(marker)}),
                           (f"{user_module}:not_a_model", {"path": str(marker)})]:
        with pytest.raises(CheckpointError, match="neither a torch.nn.Module class nor a function"):
            load_checkpoint(tmp_path / "sd.pt", model=target, model_kwargs=kwargs)
    assert not marker.exists()


def test_a_stored_architecture_cannot_call_a_function_either(tmp_path: Path, net: nn.Module) -> None:
    path = _save_ours(tmp_path / "m.pt", net)
    raw = torch.load(path, weights_only=True)
    marker = tmp_path / "ran"
    raw["meta"] = json.dumps({**json.loads(raw["meta"]), "architecture": "os:system",
                              "kwargs": {"command": f"touch {marker}"}})
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="'os:system' is neither"):
        load_checkpoint(path)
    assert not marker.exists()


def test_model_kwargs_must_be_a_dict(tmp_path: Path, net: nn.Module) -> None:
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="model kwargs must be a JSON object"):
        load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=[2, 2])


# ----------------------------------------------------------------------------- pickles and TorchScript


def test_a_pickled_whole_model_is_refused_naming_the_flag(tmp_path: Path, net: nn.Module) -> None:
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"whole.pt: holds a pickled Python object "
                                              r"\(mri_lrp.model.zoo.PlainCNN\); unpickling can run arbitrary "
                                              r"code.*--trust-checkpoint"):
        load_checkpoint(tmp_path / "whole.pt")


def test_a_trusted_pickled_model_loads(tmp_path: Path, net: nn.Module, x: torch.Tensor) -> None:
    torch.save(net.train(), tmp_path / "whole.pt")
    loaded = load_checkpoint(tmp_path / "whole.pt", trust_checkpoint=True, class_names=CLASSES)
    assert loaded.source == "pickle"
    assert loaded.architecture == "mri_lrp.model.zoo:PlainCNN"
    assert not loaded.model.training
    assert loaded.class_names == CLASSES and loaded.input_spec.dims == 3
    assert torch.equal(loaded.model(x), net.eval()(x))


def test_a_trusted_training_dict_with_the_model_object_inside_loads(tmp_path: Path, net: nn.Module) -> None:
    torch.save({"epoch": 1, "model": net}, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt", trust_checkpoint=True).source == "pickle"


def test_a_trusted_state_dict_with_pickled_extras_loads_with_model(tmp_path: Path, net: nn.Module,
                                                                   x: torch.Tensor) -> None:
    import argparse

    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": net.state_dict()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"argparse.Namespace"):
        load_checkpoint(tmp_path / "c.pt", model="cnn3d", model_kwargs=KWARGS)
    loaded = load_checkpoint(tmp_path / "c.pt", model="cnn3d", model_kwargs=KWARGS, trust_checkpoint=True)
    assert loaded.source == "state_dict"
    assert torch.equal(loaded.model(x), net(x))


class _Payload:
    """Unpickling this creates the file at ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_malicious_pickle_runs_no_code_without_trust(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = {"state_dict": {"w": torch.zeros(1)}, "hook": _Payload(marker)}
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError, match=r"pickled Python object \((posix|nt|os)\.mkdir\).*"
                                              r"--trust-checkpoint"):
        load_checkpoint(path, model="cnn3d")
    assert not marker.exists()
    # The payload is live: plain unpickling would have run it.
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))
    assert (tmp_path / "control").is_dir()


def test_torchscript_archives_get_a_clear_message(tmp_path: Path, net: nn.Module) -> None:
    torch.jit.script(net).save(str(tmp_path / "ts.pt"))
    with pytest.raises(CheckpointError, match="TorchScript archive; LRP needs the Python module structure.*"
                                              "state_dict"):
        load_checkpoint(tmp_path / "ts.pt", trust_checkpoint=True)


def test_traced_torchscript_is_refused_too(tmp_path: Path, net: nn.Module, x: torch.Tensor) -> None:
    torch.jit.trace(net, x).save(str(tmp_path / "traced.pt"))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(tmp_path / "traced.pt", model="cnn3d")


# ------------------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize("content, text", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"this is not a checkpoint at all\n" * 4, "not a readable PyTorch checkpoint"),
    (b"PK\x03\x04" + os.urandom(200), "not a readable PyTorch checkpoint"),
    (b"\x80\x04" + os.urandom(64), "not a readable PyTorch checkpoint"),
])
def test_missing_empty_and_garbage_files_are_checkpoint_errors(tmp_path: Path, content: bytes | None,
                                                               text: str) -> None:
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=text) as info:
        load_checkpoint(path, model="cnn3d")
    assert info.value.path == str(path)


def test_a_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_a_truncated_checkpoint_is_a_checkpoint_error(tmp_path: Path, net: nn.Module) -> None:
    data = _save_ours(tmp_path / "m.pt", net).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("obj, text", [
    ([torch.zeros(2)], "holds a list, not a model or a state_dict"),
    ({"epoch": 3, "lr": 0.1}, "found no state_dict.*'epoch', 'lr'"),
    ({}, "found no state_dict"),
])
def test_files_without_weights_are_refused(tmp_path: Path, obj: object, text: str) -> None:
    torch.save(obj, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=text):
        load_checkpoint(tmp_path / "c.pt", model="cnn3d")


# ----------------------------------------------------------------------------------------------- info


def test_describe_model_reports_classes_spec_size_provenance_and_a_rule_per_layer(tmp_path: Path,
                                                                                  net: nn.Module) -> None:
    path = _save_ours(tmp_path / "m.pt", net, extra={"accuracy": 0.9})
    info = ckpt.describe_model(load_checkpoint(path))
    assert info["classes"] == CLASSES
    assert InputSpec.from_dict(info["input_spec"]) == SPEC
    assert info["parameters"] == sum(p.numel() for p in net.parameters())
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info["architecture"], info["source"], info["path"]) == ("cnn3d", "mri-lrp", str(path))
    assert info["model_kwargs"] == KWARGS and info["extra"] == {"accuracy": 0.9}
    rules = {row["name"]: row for row in info["layers"]}
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            assert rules[name]["type"] == type(module).__name__
            assert rules[name]["rule"].startswith("alphabeta(alpha=2.0, beta=1.0")
    json.dumps(info)


def test_describe_model_passes_the_rule_and_its_parameters_on(tmp_path: Path, net: nn.Module) -> None:
    loaded = load_checkpoint(_save_ours(tmp_path / "m.pt", net))
    eps = ckpt.describe_model(loaded, rule="epsilon", epsilon=0.25)
    assert eps["layers"][0]["rule"].startswith("epsilon(epsilon=0.25)")
    default = ckpt.describe_model(loaded)
    composite = ckpt.describe_model(loaded, composite="epsilon-plus")
    assert [r["rule"] for r in composite["layers"]] != [r["rule"] for r in default["layers"]]


def test_describe_model_with_an_unknown_composite_is_a_settings_error(tmp_path: Path, net: nn.Module) -> None:
    from mri_lrp.errors import SettingsError

    loaded = load_checkpoint(_save_ours(tmp_path / "m.pt", net))
    with pytest.raises(SettingsError, match="unknown composite"):
        ckpt.describe_model(loaded, composite="no-such-composite")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_saved_from_cuda_loads_on_the_cpu_and_moves_back(tmp_path: Path, net: nn.Module,
                                                                 x: torch.Tensor) -> None:
    expected = net(x)
    _save_ours(tmp_path / "m.pt", net.cuda())
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    for loaded in (load_checkpoint(tmp_path / "m.pt"),
                   load_checkpoint(tmp_path / "sd.pt", model="cnn3d", model_kwargs=KWARGS)):
        assert next(loaded.model.parameters()).device.type == "cpu"
        torch.testing.assert_close(loaded.model(x), expected.cpu())
        torch.testing.assert_close(loaded.model.cuda()(x.cuda()).cpu(), expected.cpu())
