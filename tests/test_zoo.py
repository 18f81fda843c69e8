"""The model zoo: shapes, sizes from kwargs, fx-traceability and the structures the LRP engine must meet."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from mri_lrp.errors import SettingsError
from mri_lrp.model.zoo import ZOO, build_model

INPUTS = {"cnn3d": (2, 1, 16, 16, 16), "cnn2d": (2, 1, 16, 16), "resnet3d": (2, 1, 16, 16, 16)}


def test_zoo_lists_the_three_architectures() -> None:
    assert set(ZOO) == {"cnn3d", "cnn2d", "resnet3d"}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_each_model_gives_one_score_per_class_for_a_batch(name: str) -> None:
    model = build_model(name, num_classes=5).eval()
    out = model(torch.randn(INPUTS[name]))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_in_channels_sets_the_first_convolution(name: str) -> None:
    model = build_model(name, in_channels=3).eval()
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    assert first.in_channels == 3
    shape = list(INPUTS[name])
    shape[1] = 3
    assert model(torch.randn(shape)).shape == (2, 4)


@pytest.mark.parametrize("name", ["cnn3d", "cnn2d"])
def test_width_doubles_per_block_up_to_depth(name: str) -> None:
    model = build_model(name, width=6, depth=3)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    assert [c.out_channels for c in convs] == [6, 12, 24]
    assert model.classifier.in_features == 24
    assert sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules()) == 3
    assert sum(isinstance(m, (nn.MaxPool2d, nn.MaxPool3d)) for m in model.modules()) == 3


def test_cnn2d_uses_2d_layers_and_cnn3d_uses_3d_layers() -> None:
    kinds2 = {type(m) for m in build_model("cnn2d").modules()}
    kinds3 = {type(m) for m in build_model("cnn3d").modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d} <= kinds2
    assert not kinds2 & {nn.Conv3d, nn.BatchNorm3d}
    assert {nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d} <= kinds3


def test_dropout_is_added_only_when_asked_and_is_inert_in_eval_mode() -> None:
    assert not any(isinstance(m, nn.Dropout) for m in build_model("cnn3d").modules())
    model = build_model("cnn3d", dropout=0.5, width=4, depth=2).eval()
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_every_model_traces_with_fx_to_the_same_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(INPUTS[name])
    torch.testing.assert_close(traced(x), model(x))


def test_resnet3d_blocks_sum_a_residual_and_reuse_one_relu_twice() -> None:
    model = build_model("resnet3d", depth=3, blocks=2)
    graph = torch.fx.symbolic_trace(model).graph
    blocks = [name for name, m in model.named_modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 6
    adds = [n for n in graph.nodes if n.op == "call_function" and "add" in getattr(n.target, "__name__", "")]
    assert len(adds) == len(blocks)
    for block in blocks:
        calls = [n for n in graph.nodes if n.op == "call_module" and n.target == f"{block}.relu"]
        assert len(calls) == 2, block
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())


def test_resnet3d_stages_halve_the_grid_and_project_the_shortcut() -> None:
    model = build_model("resnet3d", width=4, depth=3).eval()
    grids = []
    for stage in model.stages:
        stage.register_forward_hook(lambda m, i, o: grids.append(tuple(o.shape)))
    model(torch.zeros(1, 1, 16, 16, 16))
    assert grids == [(1, 4, 8, 8, 8), (1, 8, 4, 4, 4), (1, 16, 2, 2, 2)]
    assert isinstance(model.stages[0][0].shortcut, nn.Identity)
    assert isinstance(model.stages[1][0].shortcut, nn.Sequential)


def test_unknown_name_is_a_settings_error_listing_the_zoo() -> None:
    with pytest.raises(SettingsError, match="unknown model 'vgg'.*cnn2d, cnn3d, resnet3d"):
        build_model("vgg")


@pytest.mark.parametrize("kwargs, text", [
    ({"width": 0}, "width must be a positive integer"),
    ({"depth": 2.5}, "depth must be a positive integer"),
    ({"num_classes": True}, "num_classes must be a positive integer"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"colour": "red"}, "bad arguments.*colour"),
])
def test_bad_kwargs_are_settings_errors_naming_the_argument(kwargs: dict, text: str) -> None:
    with pytest.raises(SettingsError, match=text):
        build_model("cnn3d", **kwargs)


def test_same_seed_builds_identical_weights() -> None:
    torch.manual_seed(3)
    a = build_model("resnet3d").state_dict()
    torch.manual_seed(3)
    b = build_model("resnet3d").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
