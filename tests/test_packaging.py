"""The built wheel: installs beside the user's own (newer) torch, current licence metadata, configs shipped.

The wheel is built from a copy of the source (so no stale build/ folder leaks in) with this environment's
setuptools, and installed with `pip install --dry-run` into a fresh venv that holds, as metadata only, every
package of this environment except torch, which is replaced by a newer torch 2.14.1 and a torchvision that
needs exactly that torch: the situation of a user with their own CUDA stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("mri_lrp", "configs", "pyproject.toml", "README.md", "LICENSE")


def build_wheel(tmp: Path, pyproject: str | None = None) -> tuple[Path, str]:
    """Copy the package sources to ``tmp/src`` (with another pyproject.toml text if given) and build a wheel
    there; returns it and the build log."""
    src = tmp / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    if pyproject is not None:
        (src / "pyproject.toml").write_text(pyproject)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("mri_lrp-*.whl")
    return wheel, res.stdout + res.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def fake_dist(site: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """An installed distribution as pip sees one: a dist-info folder with METADATA (no code needed)."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def venv_with_newer_torch(tmp: Path) -> Path:
    """A venv holding this environment's distributions (metadata only), with torch 2.14.1 + torchvision."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    here = Path(sysconfig.get_paths()["purelib"])
    for info in here.glob("*.dist-info"):
        if info.name.lower().startswith(("torch-", "mri_lrp-", "mri-lrp-")):
            continue
        (site / info.name).mkdir()
        for part in ("METADATA", "INSTALLER", "RECORD"):
            if (info / part).is_file():
                shutil.copy2(info / part, site / info.name / part)
    torch_meta = next(here.glob("torch-*.dist-info")) / "METADATA"
    torch_requires = tuple(line.split(":", 1)[1].strip() for line in torch_meta.read_text().splitlines()
                           if line.startswith("Requires-Dist:") and "extra ==" not in line)
    fake_dist(site, "torch", "2.14.1", torch_requires)
    fake_dist(site, "torchvision", "0.29.1", ("torch==2.14.1", "numpy"))
    return venv


def dry_run_install(venv: Path, wheel: Path, report: Path) -> subprocess.CompletedProcess:
    """`pip install --dry-run` of the wheel into ``venv``, offline, ignoring every pip configuration file and
    variable (no index, find-links or constraints of this machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                           "install", "--dry-run", "--no-index", "--report", str(report), str(wheel)],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_wheel_installs_beside_a_newer_torch_without_changing_it(wheel: tuple[Path, str], tmp_path: Path) -> None:
    venv = venv_with_newer_torch(tmp_path)
    res = dry_run_install(venv, wheel[0], tmp_path / "report.json")
    assert res.returncode == 0, res.stdout + res.stderr
    installs = json.loads((tmp_path / "report.json").read_text())["install"]
    assert [item["metadata"]["name"] for item in installs] == ["mri-lrp"]  # torch and the rest stay as they are

    # The check can fail: the same wheel with the old pin would have to replace torch, which pip refuses here.
    text = (ROOT / "pyproject.toml").read_text().replace('"torch>=2.1"', '"torch>=2.1,<=2.13.0"')
    assert "<=2.13.0" in text
    pinned, _ = build_wheel(tmp_path / "pinned", text)
    res = dry_run_install(venv, pinned, tmp_path / "pinned.json")
    assert res.returncode != 0 and "requirement torch<=2.13.0" in res.stdout + res.stderr  # needs another torch


def test_torch_is_required_with_no_upper_bound(wheel: tuple[Path, str]) -> None:
    with zipfile.ZipFile(wheel[0]) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    (torch_req,) = [line for line in meta.splitlines() if re.match(r"Requires-Dist: torch\b", line)]
    assert torch_req == "Requires-Dist: torch>=2.1"


def test_licence_is_an_spdx_expression_with_its_file_and_the_build_prints_no_deprecation(
        wheel: tuple[Path, str]) -> None:
    path, log = wheel
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert not re.search(r"^License: ", meta, re.M) and "Classifier: License" not in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "deprecat" not in log.lower(), [ln for ln in log.splitlines() if "eprecat" in ln]


def test_example_configs_ship_in_the_wheel_identical_to_the_top_level_ones(wheel: tuple[Path, str]) -> None:
    with zipfile.ZipFile(wheel[0]) as z:
        shipped = {Path(n).name: z.read(n) for n in z.namelist() if n.startswith("mri_lrp/data/configs/")}
    expected = {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.toml")}
    assert expected and shipped == expected


def test_the_python_version_is_stated_once_and_consistently() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    required = re.fullmatch(r">=(3\.\d+)", pyproject["project"]["requires-python"]).group(1)
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + required.replace(".", "")
    for name in ("README.md", "Makefile"):
        stated = set(re.findall(r"Python (3\.\d+)", (ROOT / name).read_text()))
        assert stated <= {required}, f"{name} states Python {stated}, the package requires {required}"


def test_the_version_has_one_source() -> None:
    import mri_lrp

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mri_lrp.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", mri_lrp.__version__)
