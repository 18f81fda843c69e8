"""The demo training script: a seconds-long smoke run writes a checkpoint that loads with its record."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mri_lrp.mni_heads import LABELS
from mri_lrp.model.checkpoint import load_checkpoint
from mri_lrp.model.spec import InputSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_writes_a_loadable_checkpoint_and_record(tmp_path: Path) -> None:
    out = tmp_path / "demo.pt"
    script = ROOT / "scripts" / "train_demo.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = load_checkpoint(out)
    assert loaded.class_names == list(LABELS)
    spec = loaded.input_spec
    assert spec.dims == 3 and spec.orientation == "RAS" and spec.shape is not None
    with torch.no_grad():
        logits = loaded.model(torch.zeros(1, spec.channels, *spec.shape))
    assert logits.shape == (1, len(LABELS))
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["data"]["train_samples"] == len(LABELS) and record["training"]["epochs"] == 1
    assert 0.0 <= record["heldout"]["accuracy"] <= 1.0 and record["class_names"] == list(LABELS)


@pytest.mark.parametrize("name", ["demo_model", "demo_multiseq", "demo_fold1", "demo_fold2", "demo_fold3"])
def test_each_shipped_demo_model_matches_its_record_and_is_known_as_a_demo(name: str, tmp_path: Path) -> None:
    """The packaged models load, their records' class order and input spec are the checkpoints' own, and a copy
    under another name still carries the demo notice."""
    record_path = ROOT / "mri_lrp" / "data" / f"{name}.json"
    record = json.loads(record_path.read_text())
    checkpoint = record_path.with_suffix(".pt")
    loaded = load_checkpoint(checkpoint)
    assert loaded.class_names == record["class_names"] == list(LABELS) and loaded.is_demo
    assert loaded.input_spec == InputSpec.from_dict(record["input_spec"], stored=True)
    assert record["heldout"]["samples"] > 0 and record["evaluation"]["rules"]
    copy = tmp_path / "best.pt"
    copy.write_bytes(checkpoint.read_bytes())
    assert load_checkpoint(copy).is_demo
    assert loaded.input_spec.channels == (4 if name == "demo_multiseq" else 1)


def _evaluate_module():
    spec = importlib.util.spec_from_file_location("evaluate_demo", ROOT / "scripts" / "evaluate_demo.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_relevance_scores_count_positive_mass_inside_the_mask_and_the_peak() -> None:
    evaluate = _evaluate_module()
    mask = np.zeros((7, 7, 7), dtype=bool)
    mask[3, 3, 3] = True
    relevance = np.zeros((7, 7, 7))
    relevance[3, 3, 3], relevance[3, 3, 4], relevance[0, 0, 0], relevance[1, 1, 1] = 2.0, 1.0, 1.0, -5.0
    near = evaluate.dilate(mask, 1)
    assert near.sum() == 7 and evaluate.dilate(mask, 2).sum() == 25
    air = np.zeros_like(mask)
    air[0] = True
    scores = evaluate.score(relevance, mask, near, air)
    assert scores == {"mass_accuracy": 0.5, "pointing": 1.0, "near_mask": 0.75, "air": 0.25}
    relevance[6, 6, 6] = 9.0  # the peak moves outside the mask
    assert evaluate.score(relevance, mask)["pointing"] == 0.0
