"""Explanations that lose or create more than 5% of the output relevance say so (API warning, per-sample notes)."""

from __future__ import annotations

import csv
import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from mri_lrp.lrp import Explainer, explain
from mri_lrp.lrp.explain import CONSERVATION_TOLERANCE, conservation_note


def test_conservation_note_names_the_direction_only_beyond_the_tolerance() -> None:
    assert conservation_note(1.0, 1.0 - 0.9 * CONSERVATION_TOLERANCE, 1.0) == ""
    lost = conservation_note(1.0, 0.2, 1.0)
    assert lost.startswith("the explanation loses 80% of the output relevance") and "epsilon-plus" in lost
    created = conservation_note(0.5, 5e3, 0.5)
    assert created.startswith("the explanation creates relevance: its sum exceeds the output's by 1e+04x")
    assert "epsilon-plus" in created
    assert conservation_note(1.0, float("nan"), 1.0) == "relevance is not finite"


def _depthwise_separable() -> nn.Module:
    """MobileNet-style blocks: depthwise 3x3 + BatchNorm, then pointwise 1x1 + BatchNorm."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()]
    for _ in range(3):
        layers += [nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                   nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()]
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(0.5, 1.5)  # the merged shifts then carry much of every activation
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_depthwise_net_under_bias_free_alphabeta_warns_that_relevance_is_lost() -> None:
    x = torch.randn(2, 1, 16, 16)
    with pytest.warns(UserWarning, match="loses .* of the output relevance"):
        e = explain(_depthwise_separable(), x, rule="alphabeta")
    notes = e.notes()
    assert all(n.startswith("the explanation loses") for n in notes)
    # the notes judge the same figure the diagnostics report
    assert torch.all(e.conservation_error > CONSERVATION_TOLERANCE)


def test_conserving_explanation_carries_no_note_and_no_warning() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 5, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 3,
                                                                                             bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = explain(net, torch.randn(2, 1, 16, 16), rule="zero")
    assert e.notes() == ["", ""]


def test_notes_judge_the_sum_over_classes_with_target_all() -> None:
    e = Explainer(_depthwise_separable(), rule="alphabeta")(torch.randn(1, 1, 16, 16), target="all")
    assert len(e.notes()) == 1 and e.notes()[0].startswith("the explanation loses")


@pytest.mark.slow
@pytest.mark.monai
def test_monai_densenet121_with_default_epsilon_warns_that_relevance_is_created() -> None:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(2)
    model = nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with pytest.warns(UserWarning, match="creates relevance"):
        e = explain(model, torch.randn(1, 1, 32, 32), rule="epsilon")
    assert e.notes()[0].startswith("the explanation creates relevance")
    # the default rule (alpha-beta 2/1) conserves on the same network: no note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert explain(model, torch.randn(1, 1, 32, 32)).notes() == [""]


def test_explain_reuses_its_explainer_until_the_model_or_options_change() -> None:
    explain_module = importlib.import_module("mri_lrp.lrp.explain")  # the module, not the function

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    net.eval()
    x = torch.randn(1, 1, 8, 8)
    warnings.simplefilter("ignore")  # pytest restores the filters after the test
    explain(net, x)
    first = explain_module._BUILT[net][2]
    explain(net, x)
    assert explain_module._BUILT[net][2] is first  # same model, same options: nothing re-traced or re-merged
    explain(net, x, rule="epsilon")
    assert explain_module._BUILT[net][2] is not first
    eps = explain_module._BUILT[net][2]
    with torch.no_grad():
        net[1].running_mean.add_(1.0)  # an in-place change (as an optimiser or load_state_dict makes)
    after = explain(net, x, rule="epsilon")
    assert explain_module._BUILT[net][2] is not eps
    with torch.no_grad():
        torch.testing.assert_close(after.logits, net(x))  # the new BatchNorm statistics are merged


def test_pipeline_puts_the_note_in_summary_warnings_and_names_the_first_scan_in_the_log(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in sorted((Path(__file__).parent.parent / "sample_scans" / "t1").glob("*.nii.gz"))[:2]:
        shutil.copy(p, scans / p.name)
    out = tmp_path / "out"
    # alpha - beta = 2: every layer doubles the relevance, so every scan's explanation creates relevance
    res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(scans), "--out", str(out),
                          "--alpha", "3", "--beta", "1", "--workers", "0"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    with (out / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert all("the explanation creates relevance" in r["warnings"] for r in rows)
    log = res.stdout + res.stderr
    assert log.count("the explanation creates relevance") == 1  # once per run, naming the first scan
    assert any(f"{r['scan_id']}: the explanation creates relevance" in log for r in rows)
