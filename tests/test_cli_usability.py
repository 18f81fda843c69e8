"""The command line as a new user meets it: --version, -h, python -m, help content, --dry-run, hints, configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mri_lrp import __version__
from mri_lrp.cli import CLUSTER, INPUTS, MODEL, OUTPUTS, REGIONS, RULES_PANEL, app
from mri_lrp.lrp import COMPOSITES, RULES
from mri_lrp.lrp.explain import INITS
from mri_lrp.model.spec import NORMALIZATIONS
from mri_lrp.scans.ids import NIFTI_SUFFIXES
from mri_lrp.settings import DEVICES, LAYOUTS, TARGET_KEYWORDS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans" / "t1"
PANELS = {MODEL, RULES_PANEL, INPUTS, OUTPUTS, REGIONS, CLUSTER}


def run(*args: str, module: str = "mri_lrp", cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}  # wide: help lines are not wrapped
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def in_process(*args: str) -> tuple[int, str]:
    """Exit code and output of a command run in this process (help and configs need no subprocess)."""
    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    return res.exit_code, res.output


def one_line(text: str) -> str:
    """Help text with the rich table's borders and line breaks removed, for substring checks."""
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag_prints_the_package_version(flag: str) -> None:
    res = run(flag)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"mri-lrp {__version__}"


def test_python_dash_m_mri_lrp_is_the_same_command_line() -> None:
    res = run("-h")
    assert res.returncode == 0
    for command in ("explain", "inspect", "info", "merge", "config"):
        assert command in res.stdout
    assert run("inspect", str(SAMPLES / "sub-02_T1w.nii.gz")).stdout.startswith("scan_id\tsource\tkind")


@pytest.mark.parametrize("command", ["explain", "inspect", "info", "merge", "config"])
def test_dash_h_is_help_for_every_command_with_an_example(command: str) -> None:
    code, text = in_process(command, "-h")
    assert code == 0
    assert "Usage:" in text and "Example" in text


def test_explain_help_shows_defaults_and_every_allowed_value_from_the_registries() -> None:
    text = one_line(in_process("explain", "--help")[1])
    for default in ("--rule -r <str> LRP rule", "[default: (alphabeta)]", "[default: (2)]", "[default: (1)]",
                    "[default: (prob)]", "[default: (predicted)]", "[default: (auto)]", "[default: (--resume)]",
                    "[default: (mri-lrp-out)]"):
        assert default in text, default
    for names in (RULES, COMPOSITES, INITS, NORMALIZATIONS, TARGET_KEYWORDS, DEVICES, LAYOUTS):
        assert " | ".join(names) in text, names
    assert "mri-lrp explain scans/ --rule alphabeta --alpha 2 --beta 1" in text  # the examples epilog


def test_every_explain_option_sits_in_one_of_the_six_panels() -> None:
    command = typer.main.get_command(app).commands["explain"]
    options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
    assert len(options) > 25
    outside = [p.name for p in options if getattr(p, "rich_help_panel", None) not in PANELS]
    assert outside == []
    text = in_process("explain", "-h")[1]
    for panel in PANELS:
        assert f"─ {panel} ─" in text


def test_dry_run_prints_the_plan_and_writes_no_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run("explain", str(SAMPLES), "--dry-run", "--out", str(out), "--shard", "1/3", "--rule", "epsilon",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "scans: 12 found" in text and "skipped" in text and "sub-02_T1w.nii.gz" in text
    assert "shard: 1/3:" in text
    assert "model: " in text and "classes: glioma, meningioma, pituitary, no_tumour" in text
    assert "input spec: dims=3" in text
    layers = text.split("rule per layer:")[1].splitlines()
    assert any("Conv3d" in line and "epsilon" in line for line in layers)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_input_spec_options_update_the_checkpoints_spec_key_by_key(tmp_path: Path) -> None:
    res = run("explain", str(SAMPLES / "sub-02_T1w.nii.gz"), "--dry-run", "--input-shape", "48,64,48",
              "--normalization", "minmax", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    spec_line = next(line for line in res.stdout.splitlines() if line.startswith("input spec:"))
    assert "shape=(48, 64, 48)" in spec_line and "normalization=minmax" in spec_line
    assert "spacing=(3.5, 3.5, 3.5)" in spec_line  # the demo model's own spacing is kept
    res = run("explain", str(SAMPLES / "sub-02_T1w.nii.gz"), "--dry-run", "--input-spacing", "2,2,2.5",
              "--out", str(tmp_path / "out"))
    spec_line = next(line for line in res.stdout.splitlines() if line.startswith("input spec:"))
    assert "spacing=(2.0, 2.0, 2.5)" in spec_line and "shape=(56, 64, 56)" in spec_line


def test_a_partial_input_spec_takes_the_rest_from_a_2d_checkpoint(tmp_path: Path) -> None:
    from mri_lrp.model.checkpoint import save_checkpoint
    from mri_lrp.model.spec import InputSpec
    from mri_lrp.model.zoo import build_model

    checkpoint = tmp_path / "slices.pt"
    kwargs = {"in_channels": 1, "num_classes": 2, "width": 4, "depth": 2}
    save_checkpoint(checkpoint, build_model("cnn2d", **kwargs).eval(), architecture="cnn2d", kwargs=kwargs,
                    class_names=["tumour", "none"], input_spec=InputSpec(dims=2, shape=(64, 64)))
    res = run("explain", str(SAMPLES / "sub-02_T1w.nii.gz"), "--checkpoint", str(checkpoint), "--dry-run",
              "--input-shape", "32,32", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    spec_line = next(line for line in res.stdout.splitlines() if line.startswith("input spec:"))
    assert "dims=2" in spec_line and "shape=(32, 32)" in spec_line


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "96,x,96"], "--input-shape: expected whole numbers"),
    (["--input-shape", "96,96"], "shape needs 3 values"),
    (["--normalization", "sometimes"], "normalization must be one of"),
])
def test_bad_input_spec_options_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = run("explain", str(SAMPLES / "sub-02_T1w.nii.gz"), "--dry-run", "--out", str(tmp_path / "o"), *args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_an_empty_folder_says_what_was_looked_for_and_where(tmp_path: Path) -> None:
    empty = tmp_path / "incoming"
    empty.mkdir()
    res = run("explain", str(empty), "--out", str(tmp_path / "out"), "--quiet")
    assert res.returncode == 4
    text = res.stdout + res.stderr
    assert f"looked for image files ({', '.join(NIFTI_SUFFIXES)}) and DICOM files" in text and str(empty) in text
    assert "there are no files there" in text


def test_a_folder_of_masks_is_recognised_as_such(tmp_path: Path) -> None:
    res = run("explain", str(SAMPLES / "masks"), "--dry-run", "--out", str(tmp_path / "out"))
    assert res.returncode == 4
    assert "These look like masks or label maps" in res.stderr and "--masks DIR" in res.stderr
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_fit_the_model_exit_2_with_a_hint(tmp_path: Path) -> None:
    import torch

    from mri_lrp.model.zoo import build_model

    weights = tmp_path / "state_dict.pt"
    torch.save(build_model("cnn3d", in_channels=1, num_classes=4, width=8).state_dict(), weights)
    res = run("explain", str(SAMPLES / "sub-02_T1w.nii.gz"), "--checkpoint", str(weights), "--model", "cnn3d",
              "--model-kwargs", '{"in_channels": 1, "num_classes": 4, "width": 4}', "--dry-run",
              "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    error, hint = res.stderr.strip().splitlines()
    assert error.startswith("mri-lrp: error: ") and "state_dict.pt" in error and "do not fit" in error
    assert hint.startswith("mri-lrp: hint: ") and "--model-kwargs" in hint


def write_part(folder: Path, fingerprint: str, rule: str) -> None:
    """The tables of a finished run with one scan, as explain writes them (enough for merge)."""
    folder.mkdir(parents=True)
    (folder / "summary.csv").write_text(f"scan_id,status\n{folder.name}_scan,ok\n")
    (folder / "regions.csv").write_text("scan_id,region_id\n")
    (folder / "failures.csv").write_text("scan_id,source,stage,error\n")
    run_json = {"fingerprint": fingerprint, "checkpoint": {"sha256": "same"}, "settings": {"rule": rule}}
    (folder / "run.json").write_text(json.dumps(run_json))


def test_merge_refuses_parts_made_with_different_settings_unless_allowed(tmp_path: Path) -> None:
    write_part(tmp_path / "monday", "aaaa", "alphabeta")
    write_part(tmp_path / "tuesday", "bbbb", "epsilon")
    res = run("merge", str(tmp_path / "monday"), str(tmp_path / "tuesday"), "--out", str(tmp_path / "all"))
    assert res.returncode == 2
    assert "different settings" in res.stderr and "settings that differ: rule" in res.stderr
    assert "--allow-mixed" in res.stderr and not (tmp_path / "all").exists()
    res = run("merge", str(tmp_path / "monday"), str(tmp_path / "tuesday"), "--out", str(tmp_path / "all"),
              "--allow-mixed")
    assert res.returncode == 0, res.stderr
    assert "fingerprint differs" in res.stdout + res.stderr


def test_config_examples_are_listed_and_print_the_shipped_files(tmp_path: Path) -> None:
    code, listed = in_process("config", "list")
    assert code == 0
    names = [line.split("\t")[0] for line in listed.splitlines()]
    assert names == sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))
    for name in names:
        code, text = in_process("config", "example", name)
        assert code == 0
        assert text == (ROOT / "configs" / f"{name}.toml").read_text()
        tomllib.loads(text)
    code, text = in_process("config", "example", "nope")
    assert code == 2 and "alphabeta" in text


def test_a_saved_example_config_runs_a_dry_run(tmp_path: Path) -> None:
    config = tmp_path / "my.toml"
    config.write_text(in_process("config", "example", "epsilon_gamma_box")[1])
    res = run("explain", str(SAMPLES / "sub-02_T1w.nii.gz"), "--config", str(config), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "epsilon" in res.stdout.split("rule per layer:")[1] and not (tmp_path / "results").exists()
