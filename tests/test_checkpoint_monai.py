"""MONAI networks as users bring them: DDP-wrapped state_dicts of DenseNet121 and ResNet-18, 2D and 3D, and a ViT
whose forward returns (logits, hidden states)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mri_lrp.errors import CheckpointError
from mri_lrp.model.checkpoint import describe_model, load_checkpoint, save_checkpoint
from mri_lrp.model.spec import InputSpec

nets = pytest.importorskip("monai.networks.nets")
pytestmark = pytest.mark.monai

CASES = [
    ("monai.networks.nets:DenseNet121", {"in_channels": 1, "out_channels": 3}),
    ("monai.networks.nets:resnet18", {"n_input_channels": 1, "num_classes": 3}),
]


def _build(architecture: str, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(nets, architecture.split(":")[1])(**kwargs).eval()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("architecture, kwargs", CASES, ids=["densenet121", "resnet18"])
def test_monai_state_dict_with_ddp_prefixes_loads_to_the_same_outputs(tmp_path: Path, architecture: str,
                                                                     kwargs: dict, dims: int) -> None:
    kwargs = {**kwargs, "spatial_dims": dims}
    model = _build(architecture, kwargs)
    wrapped = {"epoch": 10, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "monai.pt")
    loaded = load_checkpoint(tmp_path / "monai.pt", model=architecture, model_kwargs=kwargs)
    assert loaded.source == "state_dict"
    assert loaded.class_names == ["class_0", "class_1", "class_2"]
    assert (loaded.input_spec.dims, loaded.input_spec.channels) == (dims, 1)
    x = torch.randn((1, 1) + (32,) * dims)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)


def test_monai_network_with_wrong_kwargs_lists_the_mismatches(tmp_path: Path) -> None:
    architecture, kwargs = CASES[1]
    model = _build(architecture, {**kwargs, "spatial_dims": 2})
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "monai.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches: conv1.weight \(file 64x1x7x7, model "
                                              r"64x1x7x7x7\)"):
        load_checkpoint(tmp_path / "monai.pt", model=architecture, model_kwargs={**kwargs, "spatial_dims": 3})


def test_monai_network_saved_in_our_format_round_trips_and_describes(tmp_path: Path) -> None:
    architecture, kwargs = CASES[0]
    kwargs = {**kwargs, "spatial_dims": 2}
    model = _build(architecture, kwargs)
    save_checkpoint(tmp_path / "m.pt", model, architecture=architecture, kwargs=kwargs,
                    class_names=["glioma", "meningioma", "none"],
                    input_spec=InputSpec(dims=2, shape=(64, 64)))
    loaded = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    info = describe_model(loaded)
    assert info["classes"] == ["glioma", "meningioma", "none"]
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert sum(row["type"] == "Conv2d" for row in info["layers"]) == sum(
        isinstance(m, torch.nn.Conv2d) for m in model.modules())


VIT = ("monai.networks.nets:ViT", {"in_channels": 1, "img_size": 32, "patch_size": 16, "hidden_size": 16,
                                   "mlp_dim": 32, "num_layers": 1, "num_heads": 2, "classification": True,
                                   "num_classes": 3, "spatial_dims": 3})
SCAN = Path(__file__).resolve().parents[1] / "sample_scans" / "t1" / "sub-03_T1w.nii.gz"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_monai_vit_state_dict_counts_its_classes_at_the_logits_it_returns_first(tmp_path: Path) -> None:
    torch.save(_build(*VIT).state_dict(), tmp_path / "vit.pt")
    loaded = load_checkpoint(tmp_path / "vit.pt", model=VIT[0], model_kwargs=VIT[1])
    assert loaded.class_names == ["class_0", "class_1", "class_2"]
    with pytest.raises(CheckpointError, match=r"4 class names for a model with 3 outputs"):
        load_checkpoint(tmp_path / "vit.pt", model=VIT[0], model_kwargs=VIT[1], class_names=list("abcd"))
    with pytest.raises(CheckpointError, match=r"element 1 of a tuple of 2 values, is a list, not class scores"):
        load_checkpoint(tmp_path / "vit.pt", model=VIT[0], model_kwargs=VIT[1], model_output=1)


@pytest.mark.slow
def test_monai_vit_explains_from_the_command_line_and_says_which_output(tmp_path: Path) -> None:
    torch.save(_build(*VIT).state_dict(), tmp_path / "vit.pt")
    model = ["--model", VIT[0], "--model-kwargs", json.dumps(VIT[1])]
    res = _cli("explain", str(SCAN), "--checkpoint", str(tmp_path / "vit.pt"), *model, "--input-shape", "32,32,32",
               "--rule", "epsilon", "--workers", "0", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "model output explained: element 0 of a tuple of 2 values (picked unasked" in res.stdout + res.stderr
    assert (tmp_path / "out" / "scans" / "sub-03_T1w" / "relevance.nii.gz").is_file()

    config = tmp_path / "vit.toml"
    config.write_text(f'checkpoint = "vit.pt"\nmodel = "{VIT[0]}"\nmodel_output = 0\nmodel_kwargs = '
                      f'{json.dumps(VIT[1]).replace(":", " =")}\n'
                      "[input_spec]\nshape = [32, 32, 32]\n")
    res = _cli("info", "--config", str(config), "--rule", "epsilon", "--json")
    assert res.returncode == 0, res.stderr
    layers = json.loads(res.stdout)["layers"]
    assert layers[-1] == {"name": "output", "type": "output",
                          "rule": "explained: element 0 of a tuple of 2 values (model_output)"}
    assert any(la["rule"].startswith("bias (constant operand) under epsilon") for la in layers)
    for choice, says in (("1", "element 1 of a tuple of 2 values, is a list"), ("logits", "give an index 0..1")):
        res = _cli("info", "--config", str(config), "--model-output", choice)
        assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr, res.stderr

