"""Errors cross process boundaries intact: readers run in worker processes and return them."""

from __future__ import annotations

import pickle

import pytest

from mri_lrp.errors import CheckpointError, DiskFullError, ScanError, SettingsError, UnsupportedLayerError


@pytest.mark.parametrize("error", [
    ScanError("a/b.nii", "truncated", stage="read"),
    CheckpointError("m.pt", "not a checkpoint"),
    UnsupportedLayerError("sigmoid", "gate.1"),
    SettingsError("--beta: must be >= 0"),
    DiskFullError("results", 3),
])
def test_errors_survive_pickling_with_their_fields_and_message(error: Exception) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error)
