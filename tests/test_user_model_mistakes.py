"""Regressions from trying models, checkpoints and LRP options the way users get them wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mri_lrp.errors import CheckpointError, SettingsError
from mri_lrp.lrp import Explainer, make_rule
from mri_lrp.model.checkpoint import load_checkpoint
from mri_lrp.model.zoo import cnn3d
from mri_lrp.settings import build_settings

ROOT = Path(__file__).resolve().parents[1]
SCAN = ROOT / "sample_scans" / "t1" / "sub-02_T1w.nii.gz"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("toml", "says"), [
    ('alpha = "x"', "option 'alpha' must be a number"),
    ("epsilon = true", "option 'epsilon' must be a number"),
    ('resume = "no"', "option 'resume' must be true or false"),
    ('workers = "3"', "option 'workers' must be a whole number"),
    ('volume = "1"', "option 'volume' must be a whole number"),
    ("device = 0", "option 'device' must be a string"),
    ("shard = 1", "option 'shard' must be a string"),
    ("scans = 5", "option 'scans' must be a path or a list of paths"),
    ('class_names = "abc"', "option 'class_names' must be a list of names"),
    ("overrides = 3", "option 'overrides' must be a table"),
    ('input_spec = "x"', "option 'input_spec' must be a table"),
    ("[input_spec]\ndims = 4", "dims must be 2 or 3"),
    ("[input_spec]\ndims = 3\nshape = [10, 10]", "shape needs 3 values"),
    ('[input_spec]\nchannels = "1"', "channels must be a whole number"),
    ("[input_spec]\nshape = [0, 64, 64]", "shape values must be > 0"),
    ("[input_spec]\nfoo = 1", "unknown key(s) ['foo']"),
    ('[overrides]\n"*" = {rule = "alphabeta", alpha = "x"}', "override '*': rule 'alphabeta': alpha must be a number"),
    ('[overrides]\n"*" = {rule = "epsilon", epsilon = -1}', "epsilon must be >= 0"),
    ('[overrides]\n"features.*" = "nosuch"', "override 'features.*': unknown LRP rule 'nosuch'"),
    ("model_output = true", "option 'model_output' must be an index or a key"),
])
def test_config_value_of_the_wrong_type_is_a_settings_error_naming_file_and_option(
        tmp_path: Path, toml: str, says: str) -> None:
    config = _config(tmp_path, toml + "\n")
    with pytest.raises(SettingsError) as err:
        build_settings({"scans": [str(SCAN)], "out": str(tmp_path / "out")}, str(config))
    assert str(config) in str(err.value) and says in str(err.value)


def test_integer_target_in_a_config_is_read_as_a_class_index(tmp_path: Path) -> None:
    config = _config(tmp_path, "target = 2\n")
    settings = build_settings({"scans": [str(SCAN)], "out": str(tmp_path / "out")}, str(config))
    assert settings.target == "2"


def test_integer_model_output_in_a_config_is_read_as_an_index(tmp_path: Path) -> None:
    config = _config(tmp_path, "model_output = 0\n")
    settings = build_settings({"scans": [str(SCAN)], "out": str(tmp_path / "out")}, str(config))
    assert settings.model_output == "0"


def test_model_output_for_a_model_with_one_output_exits_2_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(SCAN), "--model-output", "logits",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "model_output 'logits': forward returns one value" in res.stderr and "Traceback" not in res.stderr


def test_rule_parameter_of_the_wrong_type_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="gamma must be a number"):
        make_rule("gamma", {"gamma": "big"})
    with pytest.raises(SettingsError, match="include_bias must be true or false"):
        make_rule("alphabeta", {"include_bias": "yes"})
    assert make_rule("box", {"low": -3.0, "high": 3.0}).low == -3.0  # bounds may be negative


def test_override_pattern_that_matches_no_layer_warns_naming_it() -> None:
    with pytest.warns(UserWarning, match="override 'featurs.0' matches no conv/linear layer"):
        Explainer(cnn3d(width=2, depth=2), rule="epsilon", overrides={"featurs.0": "gamma"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pattern that matches stays silent
        Explainer(cnn3d(width=2, depth=2), rule="epsilon", overrides={"features.*": "gamma"})


def test_single_logit_binary_classifier_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "binary.pth"
    torch.save(cnn3d(num_classes=1, width=2, depth=2).state_dict(), path)
    with pytest.raises(CheckpointError, match="single output"):
        load_checkpoint(path, model="cnn3d", model_kwargs={"num_classes": 1, "width": 2, "depth": 2})


def test_explain_with_a_badly_typed_config_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, 'target = 2\n[input_spec]\ndims = 3\nchannels = "1"\n')
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(SCAN), "--config", str(config),
                          "--out", str(out)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and str(config) in res.stderr and "channels" in res.stderr
    assert not out.exists()


def test_info_reads_class_names_input_spec_and_rule_parameters_from_a_config(tmp_path: Path) -> None:
    torch.save({"state_dict": {f"module.{k}": v for k, v in cnn3d(width=2, depth=2).state_dict().items()}},
               tmp_path / "net.pth")
    config = _config(tmp_path, 'checkpoint = "net.pth"\nmodel = "cnn3d"\nmodel_kwargs = {width = 2, depth = 2}\n'
                               'class_names = ["glioma", "meningioma", "pituitary", "none"]\nrule = "alphabeta"\n'
                               "[input_spec]\nshape = [32, 32, 32]\nspacing = [6.0, 6.0, 6.0]\n")
    res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "info", "--config", str(config), "--alpha", "3",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    desc = json.loads(res.stdout)
    assert desc["classes"] == ["glioma", "meningioma", "pituitary", "none"]
    assert desc["input_spec"]["shape"] == [32, 32, 32] and desc["source"] == "state_dict"
    assert "alphabeta(alpha=3.0, beta=1.0" in desc["layers"][0]["rule"]


def test_a_file_that_is_not_a_pickle_is_unreadable_without_weights_only_advice(tmp_path: Path) -> None:
    path = tmp_path / "weights.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + bytes(range(64)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model="cnn3d")
    assert "not a readable PyTorch checkpoint" in str(err.value) and "weights_only" not in str(err.value)


def test_checkpoint_that_is_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="is a folder, not a checkpoint file"):
        build_settings({"scans": [str(SCAN)], "checkpoint": str(tmp_path), "out": str(tmp_path / "out")})


def test_info_shows_an_override_that_matches_nothing_as_one_warning_line_on_stderr(tmp_path: Path) -> None:
    config = _config(tmp_path, '[overrides]\n"classifer" = "epsilon"\n')
    res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "info", "--config", str(config), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    json.loads(res.stdout)  # stdout stays parseable JSON
    assert res.stderr.strip().splitlines() == [
        "mri-lrp: warning: override 'classifer' matches no conv/linear layer (layers: features.0, features.4, "
        "features.8, features.12, classifier)"]
