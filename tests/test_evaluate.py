"""`evaluate`: region perturbation and the randomisation test, on phantoms and a model that sees only the lesion."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mri_lrp.evaluate import EvaluateOptions, run_evaluate
from mri_lrp.evaluate.perturb import (
    baseline_volume,
    cube_grid,
    order_ranks,
    perturbation_curves,
    perturbation_curves_loop,
)
from mri_lrp.evaluate.sanity import cascade_points, parameter_layers, randomised_copies, spearman, ssim
from mri_lrp.phantoms import generate_phantom
from mri_lrp.progress import Reporter
from mri_lrp.settings import build_settings

LESION_VALUE = 4.0


class LesionNet(nn.Module):
    """Class 0 ('lesion') is scored by how much of the volume is brighter than the head: only the lesion is."""

    def __init__(self, threshold: float, scale: float) -> None:
        super().__init__()
        self.detect = nn.Conv3d(1, 1, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.detect.weight.zero_()
            self.detect.weight[0, 0, 1, 1, 1] = 1.0
            self.detect.bias.fill_(-threshold)
            self.head.weight.copy_(torch.tensor([[scale], [-scale]]))
            self.head.bias.copy_(torch.tensor([0.0, 5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.relu(self.detect(x)))))


class DenseLesionNet(nn.Module):
    """The lesion detector read out by a dense layer: no pooling, so the flat rule's map is fixed by the
    architecture alone and must survive any randomisation of the weights."""

    def __init__(self, shape: tuple[int, int, int], threshold: float, scale: float) -> None:
        super().__init__()
        self.detect = LesionNet(threshold, scale).detect
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(int(np.prod(shape)), 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0] = scale / float(np.prod(shape))
            self.head.bias.copy_(torch.tensor([0.0, 5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.relu(self.detect(x))))


SHAPE = (36, 40, 32)


def _lesion_scans(folder: Path, seeds: tuple[int, ...]) -> list[np.ndarray]:
    """Glioma phantoms on a coarse grid with the lesion made brighter than any tissue; their lesion masks (NIfTI
    label maps) in a sibling ``masks`` folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "masks").mkdir(exist_ok=True)
    volumes = []
    for seed in seeds:
        p = generate_phantom(seed, "glioma", shape=SHAPE, spacing=(5.0, 5.0, 5.0), orientation="RAS")
        vol = p.volume / max(float(p.volume.max()), 1e-6)
        vol[p.mask > 0] = LESION_VALUE
        nib.save(nib.Nifti1Image(vol.astype(np.float32), p.affine), folder / f"sub-{seed:02d}_T1w.nii.gz")
        mask = nib.Nifti1Image(p.mask.astype(np.uint8), p.affine)
        mask.header.set_intent("label")
        nib.save(mask, folder.parent / "masks" / f"sub-{seed:02d}_T1w.nii.gz")
        volumes.append(vol)
    return volumes


@pytest.fixture()
def lesion_setup(tmp_path: Path) -> dict:
    scans = tmp_path / "scans"
    volumes = _lesion_scans(scans, (1, 2))
    excess = float(np.mean([np.maximum(v - 2.0, 0).mean() for v in volumes]))
    torch.save(LesionNet(threshold=2.0, scale=10.0 / excess).eval(), tmp_path / "lesion.pt")
    torch.save(DenseLesionNet(SHAPE, threshold=2.0, scale=10.0 / excess).eval(), tmp_path / "dense.pt")
    return {"scans": scans, "checkpoint": tmp_path / "lesion.pt", "dense": tmp_path / "dense.pt",
            "out": tmp_path / "eval"}


def _settings(setup: dict, out: Path, checkpoint: str = "checkpoint") -> object:
    return build_settings({
        "scans": [str(setup["scans"])], "checkpoint": str(setup[checkpoint]), "trust_checkpoint": True,
        "class_names": ["lesion", "clear"], "out": str(out), "workers": 0,
        "input_spec": {"dims": 3, "channels": 1, "orientation": "RAS", "normalization": "none"},
    })


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _metric(rows: list[dict[str, str]], rule: str, metric: str) -> list[float]:
    return [float(r["value"]) for r in rows if r["rule"] == rule and r["metric"] == metric]


def test_morf_drops_the_score_faster_than_lerf_and_random_for_alphabeta(lesion_setup: dict) -> None:
    options = EvaluateOptions(rules=("alphabeta", "epsilon"), steps=8, fraction=0.3, baseline="mean",
                              random_repeats=2, sanity_scans=1, sanity_steps=2)
    code = run_evaluate(_settings(lesion_setup, lesion_setup["out"]), options, Reporter(quiet=True))
    assert code == 0
    rows = _read(lesion_setup["out"] / "faithfulness.csv")
    morf = _metric(rows, "alphabeta", "aopc_morf")
    lerf = _metric(rows, "alphabeta", "aopc_lerf")
    rnd = _metric(rows, "alphabeta", "aopc_random")
    assert len(morf) == 2
    for m, le, r in zip(morf, lerf, rnd, strict=True):
        assert m > r > le - 1e-9
        assert m > 0.5  # removing the lesion first removes the evidence
    curves = _read(lesion_setup["out"] / "curves.csv")
    assert {r["order"] for r in curves} == {"morf", "lerf", "random"}
    assert (lesion_setup["out"] / "curves.png").stat().st_size > 1000
    ranking = _read(lesion_setup["out"] / "ranking.csv")
    assert {r["rule"]: r["survives_randomisation"] for r in ranking} == {"alphabeta": "false", "epsilon": "false"}


def test_maps_that_ignore_the_weights_are_flagged_by_the_randomisation_test(lesion_setup: dict) -> None:
    options = EvaluateOptions(rules=("epsilon", "flat"), steps=4, random_repeats=1, sanity_scans=1,
                              sanity_steps=2)
    run_evaluate(_settings(lesion_setup, lesion_setup["out"], "dense"), options, Reporter(quiet=True))
    ranking = {r["rule"]: r for r in _read(lesion_setup["out"] / "ranking.csv")}
    assert ranking["flat"]["survives_randomisation"] == "true"
    assert [r["rule"] for r in _read(lesion_setup["out"] / "ranking.csv")][-1] == "flat"
    sanity = _read(lesion_setup["out"] / "sanity.csv")
    assert {r["layer"] for r in sanity} >= {"head", "detect"}
    assert (lesion_setup["out"] / "sanity.png").exists()


def test_evaluation_numbers_are_reproducible_from_the_seed(lesion_setup: dict, tmp_path: Path) -> None:
    options = EvaluateOptions(rules=("alphabeta",), steps=4, random_repeats=2, sanity_scans=1, sanity_steps=2,
                              seed=7)
    tables = []
    for name in ("a", "b"):
        run_evaluate(_settings(lesion_setup, tmp_path / name), options, Reporter(quiet=True))
        rows = [r for r in _read(tmp_path / name / "faithfulness.csv") if r["metric"] != "seconds"]
        tables.append((rows, _read(tmp_path / name / "sanity.csv")))
    assert tables[0] == tables[1]


def test_batched_curves_equal_the_one_forward_per_step_loop() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 10, 9, 7, generator=g)
    rel = torch.randn(2, 10, 9, 7, generator=g)
    weights = torch.randn(2, 10, 9, 7, generator=g)

    def scorer(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((batch * weights).flatten(1).sum(1) / 50)

    kwargs = {"cube": (3, 3, 2), "steps": 5, "fraction": 0.6, "baseline": "blur"}
    batched = perturbation_curves(v, rel, scorer, batch_size=3, **kwargs)
    loop = perturbation_curves_loop(v, rel, scorer, **kwargs)
    for order in ("morf", "lerf"):
        assert torch.allclose(batched.scores[order], torch.tensor(loop[order], dtype=torch.float64), atol=1e-6)


def test_cubes_sum_relevance_over_channels_and_partial_edge_cubes() -> None:
    rel = torch.arange(2 * 5 * 4 * 3, dtype=torch.float64).reshape(2, 5, 4, 3)
    grid = cube_grid(rel, (2, 2, 2))
    assert grid.shape == (3, 2, 2)
    assert torch.isclose(grid.sum(), rel.sum())
    assert torch.isclose(grid[2, 1, 1], rel[:, 4:5, 2:4, 2:3].sum())
    ranks = order_ranks(grid, "morf")
    assert int(ranks.flatten()[grid.flatten().argmax()]) == 0
    assert sorted(ranks.flatten().tolist()) == list(range(grid.numel()))


def test_blur_baseline_keeps_the_mean_and_smooths() -> None:
    v = torch.zeros(1, 21, 21, 21)
    v[0, 10, 10, 10] = 1.0
    b = baseline_volume(v, "blur", sigma=2.0)
    assert abs(float(b.sum()) - 1.0) < 1e-5
    assert float(b.max()) < 0.05
    assert torch.equal(baseline_volume(v, "zero", 2.0), torch.zeros_like(v))


def test_similarity_measures_match_their_definitions() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([3.0, 3.0, 4.0])) == pytest.approx(1.0)
    m = torch.rand(12, 12, 12, generator=torch.Generator().manual_seed(1))
    assert ssim(m, 3 * m) == pytest.approx(1.0)
    assert ssim(m, torch.rand(12, 12, 12, generator=torch.Generator().manual_seed(2))) < 0.5


def test_cascade_randomises_from_the_output_down_and_keeps_the_model() -> None:
    model = LesionNet(2.0, 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = parameter_layers(model)
    assert layers == ["detect", "head"]
    copies = list(randomised_copies(model, cascade_points(layers, 5), seed=0))
    assert [(n, name) for n, name, _ in copies] == [(1, "head"), (2, "detect")]
    first = copies[0][2]
    assert torch.equal(first.detect.weight, model.detect.weight)
    assert not torch.equal(first.head.weight, model.head.weight)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", "evaluate", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_evaluate_command_writes_the_tables_and_prints_the_ranking(lesion_setup: dict, tmp_path: Path) -> None:
    config = tmp_path / "lesion.toml"
    config.write_text('class_names = ["lesion", "clear"]\ntrust_checkpoint = true\n'
                      '[input_spec]\ndims = 3\nchannels = 1\norientation = "RAS"\nnormalization = "none"\n')
    res = _cli(str(lesion_setup["scans"]), "--checkpoint", str(lesion_setup["checkpoint"]), "--config", str(config),
               "--rules", "alphabeta,epsilon-plus-flat", "--steps", "4", "--sanity-scans", "1", "--sanity-steps", "2",
               "--out", str(tmp_path / "ev"))
    assert res.returncode == 0, res.stderr
    assert "rules ranked by ABPC" in res.stdout and "epsilon-plus-flat" in res.stdout
    for name in ("faithfulness.csv", "curves.csv", "sanity.csv", "ranking.csv", "evaluation.json", "curves.png"):
        assert (tmp_path / "ev" / name).is_file(), name
    manifest = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert manifest["options"]["rules"] == ["alphabeta", "epsilon-plus-flat"]


def test_evaluate_refuses_an_unknown_rule_in_one_line(tmp_path: Path) -> None:
    res = _cli(str(tmp_path), "--rules", "alphabeta,nonsense", "--out", str(tmp_path / "ev"))
    assert res.returncode == 2
    assert "nonsense" in res.stderr and "Traceback" not in res.stderr


def test_evaluating_into_an_explain_run_adds_a_section_to_its_report(lesion_setup: dict) -> None:
    from mri_lrp.pipeline import run_explain

    settings = _settings(lesion_setup, lesion_setup["out"])
    assert run_explain(settings, Reporter(quiet=True)) == 0
    assert 'id="evaluation"' not in (lesion_setup["out"] / "report.html").read_text()
    options = EvaluateOptions(rules=("alphabeta", "zplus"), steps=4, random_repeats=1, sanity_scans=0)
    assert run_evaluate(settings, options, Reporter(quiet=True)) == 0
    page = (lesion_setup["out"] / "report.html").read_text()
    assert 'id="evaluation"' in page and "zplus" in page and "curves.png" in page


def test_evaluate_loads_the_model_as_explain_does_and_says_when_it_is_the_demo_model(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "sub-04_T1w.nii.gz").write_bytes((Path(__file__).parents[1] / "sample_scans/t1/sub-04_T1w.nii.gz")
                                              .read_bytes())
    # a partial [input_spec] replaces one key of the demo model's spec; its 3.5 mm spacing and centring stay
    settings = build_settings({"scans": [str(scans)], "out": str(tmp_path / "ev"), "workers": 0,
                               "input_spec": {"shape": [56, 64, 56]}})
    options = EvaluateOptions(rules=("zplus",), steps=1, random_repeats=1, sanity_scans=0)
    assert run_evaluate(settings, options, Reporter(quiet=True)) == 0
    spec = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["checkpoint"]["input_spec"]
    assert spec["spacing"] == [3.5, 3.5, 3.5] and spec["align"] == "centre" and spec["shape"] == [56, 64, 56]
    captured = capsys.readouterr()
    assert "DEMO MODEL" in captured.out + captured.err


def test_evaluating_into_an_explain_run_keeps_that_runs_failures(lesion_setup: dict) -> None:
    from mri_lrp.pipeline import run_explain

    (lesion_setup["scans"] / "broken.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    settings = _settings(lesion_setup, lesion_setup["out"])
    assert run_explain(settings, Reporter(quiet=True)) == 3
    explain_failures = (lesion_setup["out"] / "failures.csv").read_text()
    assert "broken" in explain_failures
    options = EvaluateOptions(rules=("zplus",), steps=2, random_repeats=1, sanity_scans=0)
    assert run_evaluate(settings, options, Reporter(quiet=True)) == 3
    assert (lesion_setup["out"] / "failures.csv").read_text() == explain_failures
    assert [r["scan_id"] for r in _read(lesion_setup["out"] / "evaluation_failures.csv")] == ["broken"]


def test_a_multi_sequence_case_is_evaluated_as_one_input_not_one_per_file(tmp_path: Path) -> None:
    from case_factory import brats2021
    from test_cases_pipeline import one_channel_model

    brats2021(tmp_path / "scans")
    settings = build_settings({"scans": [str(tmp_path / "scans")], "out": str(tmp_path / "ev"), "workers": 0,
                               "checkpoint": str(one_channel_model(tmp_path / "m.pt", 2))})
    options = EvaluateOptions(rules=("alphabeta",), steps=3, random_repeats=1, sanity_scans=0)
    assert run_evaluate(settings, options, Reporter(quiet=True)) == 0
    assert {r["scan_id"] for r in _read(tmp_path / "ev" / "faithfulness.csv")} == {"BraTS2021_00007"}


def test_mask_metrics_score_every_rule_against_the_lesion_mask(lesion_setup: dict) -> None:
    settings = build_settings({**_settings(lesion_setup, lesion_setup["out"]).to_json(),
                               "masks": str(lesion_setup["scans"].parent / "masks")})
    options = EvaluateOptions(rules=("alphabeta", "zplus"), steps=3, random_repeats=1, sanity_scans=0)
    assert run_evaluate(settings, options, Reporter(quiet=True)) == 0
    rows = _read(lesion_setup["out"] / "faithfulness.csv")
    for rule in ("alphabeta", "zplus"):
        assert min(_metric(rows, rule, "relevance_mass_accuracy")) > 0.9  # the model sees only the lesion
        assert _metric(rows, rule, "pointing_game") == [1.0, 1.0]
