"""Inputs as users bring them (public JPEG sets, BraTS, MSD, PACS exports): regressions found using the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from case_factory import bids
from PIL import Image

from mri_lrp.model.spec import InputSpec
from mri_lrp.scans import discover
from mri_lrp.scans.cases import ChannelPlan

COLOUR_2D = InputSpec(dims=2, channels=3, shape=(64, 64), resize=True, normalization="imagenet")


def test_a_colour_model_reads_grey_slices_and_bids_volumes_as_single_images_not_cases(tmp_path: Path) -> None:
    """The three channels of an ImageNet-style model are red/green/blue, not sequences: no case grouping, so no
    'fits no case' warning on a grey JPEG and no case failure for BIDS volumes with no channel names."""
    assert ChannelPlan.of(COLOUR_2D) is None
    grey = (np.arange(40 * 30).reshape(40, 30) % 255).astype(np.uint8)
    (tmp_path / "Training" / "glioma").mkdir(parents=True)
    Image.fromarray(grey, mode="L").save(tmp_path / "Training" / "glioma" / "Tr-gl_0000.jpg")
    Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(tmp_path / "Training" / "glioma" / "Tr-gl_0001.png")
    bids(tmp_path / "bids")
    refs, _ = discover([tmp_path], channels=ChannelPlan.of(COLOUR_2D))
    assert len(refs) == 6 and all(not r.channels and not r.error and not r.notes for r in refs)
