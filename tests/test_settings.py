"""Settings: defaults < TOML < command line, and validation before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mri_lrp.errors import SettingsError
from mri_lrp.settings import Settings, build_settings, load_config


@pytest.fixture
def scan_dir(tmp_path: Path) -> Path:
    d = tmp_path / "scans"
    d.mkdir()
    return d


def test_command_line_wins_over_config_and_config_over_defaults(tmp_path: Path, scan_dir: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('rule = "alphabeta"\nalpha = 3.0\nbeta = 2.0\nbatch-size = 4\n')
    s = build_settings({"scans": [str(scan_dir)], "alpha": 1.0, "beta": None}, str(cfg))
    assert (s.alpha, s.beta, s.batch_size, s.init) == (1.0, 2.0, "4", "prob")


def test_config_paths_are_relative_to_the_config_file(tmp_path: Path, scan_dir: Path) -> None:
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "run.toml").write_text('scans = ["../scans"]\nout = "results"\n')
    s = build_settings({}, str(sub / "run.toml"))
    assert Path(s.scans[0]) == scan_dir.resolve()
    assert Path(s.out) == (sub / "results").resolve()


@pytest.mark.parametrize("option, value, message", [
    ("beta", -1.0, "--beta"),
    ("rule", "nonsense", "unknown rule"),
    ("batch_size", "zero", "--batch-size"),
    ("device", "tpu", "--device"),
    ("init", "softmax", "--init"),
    ("shard", "3/3", "3/3"),
    ("composite", "nope", "unknown composite"),
])
def test_bad_options_are_usage_errors_naming_the_option(scan_dir: Path, option: str, value: object,
                                                        message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        build_settings({"scans": [str(scan_dir)], option: value})


def test_missing_scan_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file or folder"):
        build_settings({"scans": [str(tmp_path / "absent")]})


def test_unwritable_out_is_a_usage_error(tmp_path: Path, scan_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SettingsError, match="not a folder"):
        build_settings({"scans": [str(scan_dir)], "out": str(blocker)})


def test_unknown_config_key_is_reported_with_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("colour = 'red'\n")
    with pytest.raises(SettingsError, match="bad.toml: unknown option 'colour'"):
        load_config(cfg)


def test_fingerprint_changes_with_the_rule_but_not_with_the_device(scan_dir: Path) -> None:
    base = Settings(scans=(str(scan_dir),))
    assert base.fingerprint("abc") == Settings(scans=(str(scan_dir),), device="cpu", workers=7).fingerprint("abc")
    assert base.fingerprint("abc") != Settings(scans=(str(scan_dir),), beta=0.0, alpha=1.0).fingerprint("abc")
    assert base.fingerprint("abc") != base.fingerprint("abd")


def test_shipped_example_configs_parse(tmp_path: Path) -> None:
    for cfg in sorted((Path(__file__).parents[1] / "configs").glob("*.toml")):
        values = load_config(cfg)
        assert values, cfg
