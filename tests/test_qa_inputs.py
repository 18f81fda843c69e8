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


def _picture_with_a_bright_top_left(path: Path) -> None:
    """A 60x40 picture: a dim head with a bright block in its top-left quarter as displayed."""
    pixels = np.zeros((60, 40), dtype=np.uint8)
    pixels[5:55, 5:35] = 60
    pixels[8:20, 8:16] = 250
    Image.fromarray(pixels).save(path)


def test_an_image_file_gets_picture_quarters_not_hemispheres_and_no_side_letters(tmp_path: Path) -> None:
    """A PNG has no anatomy: regions are the picture's quarters as displayed, the overlay shows it as stored
    (bright block top left) without A/P/L/R letters."""
    from mri_lrp.regions import builtin_partition
    from mri_lrp.render import compose_overlay
    from mri_lrp.scans import read_scan

    _picture_with_a_bright_top_left(tmp_path / "slice.png")
    refs, _ = discover([tmp_path])
    scan = read_scan(refs[0])
    part = builtin_partition(scan)
    assert part.names == ("outside_head", "image_top_left", "image_top_right", "image_bottom_left",
                          "image_bottom_right")
    assert part.names[int(part.index[10, 10, 0])] == "image_top_left"
    assert part.names[int(part.index[50, 30, 0])] == "image_bottom_right"
    overlay = compose_overlay(scan.data, np.zeros(scan.shape, np.float32), scan.affine, title="t", image=True)
    (panel,) = overlay.panels
    assert panel.sides == ("", "", "", "")
    grey = overlay.rgb[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width].mean(axis=2)
    h, w = grey.shape
    assert grey[h * 14 // 60, w * 12 // 40] > grey[h * 45 // 60, w * 28 // 40] + 50
    letters = compose_overlay(scan.data, np.zeros(scan.shape, np.float32), scan.affine, title="t")
    assert letters.panels[0].sides != ("", "", "", "")
