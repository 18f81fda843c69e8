"""Overlay pictures: valid PNGs of the expected size, world-aligned (never mirrored), robust to odd inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from mri_lrp import render
from mri_lrp.render import (
    GAP_PX,
    HEADER_PX,
    MIN_WIDTH_PX,
    MOSAIC_COLUMNS,
    PANEL_PX,
    compose_overlay,
    render_overlay,
)
from mri_lrp.render.text import header_strip


def world_volume(shape: tuple[int, int, int], affine: np.ndarray,
                 blob_mm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball centred on the world origin and a positive relevance blob, sampled at voxel centres."""
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    world = np.einsum("ab,bijk->aijk", affine[:3, :3], np.stack([ii, jj, kk]).astype(float))
    x, y, z = world + affine[:3, 3, None, None, None]
    scan = (x ** 2 + y ** 2 + z ** 2 <= 28.0 ** 2).astype(np.float32) * 100.0 + 5.0
    d2 = (x - blob_mm[0]) ** 2 + (y - blob_mm[1]) ** 2 + (z - blob_mm[2]) ** 2
    return scan, np.exp(-d2 / (2 * 4.0 ** 2)).astype(np.float32)


def centred(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def las_copy(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
    return data[::-1].copy(), affine @ flip


def red_columns(overlay: render.Overlay, panel: render.Panel) -> np.ndarray:
    """Column positions (relative to the panel) of strongly red pixels: positive relevance."""
    crop = overlay.rgb[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width].astype(int)
    red = (crop[..., 0] > 200) & (crop[..., 1] < 90) & (crop[..., 2] < 90)
    return np.nonzero(red)[1]


def test_3d_overlay_is_a_png_of_the_expected_size_and_content(tmp_path: Path) -> None:
    shape, spacing = (64, 64, 32), (1.0, 1.0, 2.0)       # a 64 mm cube: every panel is PANEL_PX square
    affine = centred(shape, spacing)
    scan, relevance = world_volume(shape, affine, (-10.0, 8.0, 6.0))
    path = tmp_path / "overlay.png"
    render_overlay(path, scan, relevance, affine, title="glioma (p=0.91)", subtitle="target glioma · αβ")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    overlay = compose_overlay(scan, relevance, affine, title="glioma (p=0.91)", subtitle="target glioma · αβ")
    mosaic_rows = -(-sum(p.plane == "axial" for p in overlay.panels[3:]) // MOSAIC_COLUMNS)
    width = MOSAIC_COLUMNS * PANEL_PX + (MOSAIC_COLUMNS - 1) * GAP_PX + 2 * GAP_PX
    height = HEADER_PX + (1 + mosaic_rows) * PANEL_PX + (2 + mosaic_rows) * GAP_PX
    assert image.shape[:2] == (height, width)
    np.testing.assert_array_equal((image[..., :3] * 255).round().astype(np.uint8), overlay.rgb)
    assert [p.plane for p in overlay.panels[:3]] == ["axial", "coronal", "sagittal"]
    assert all((p.height, p.width) == (PANEL_PX, PANEL_PX) for p in overlay.panels)
    assert not list(tmp_path.glob("*.tmp")), "the temporary file must be renamed, not left behind"


def test_panels_keep_the_physical_aspect_ratio_of_anisotropic_voxels() -> None:
    shape, spacing = (64, 64, 8), (1.0, 1.0, 4.0)        # 64 x 64 x 32 mm: coronal/sagittal half as tall
    affine = centred(shape, spacing)
    scan, relevance = world_volume(shape, affine, (-10.0, 8.0, 0.0))
    overlay = compose_overlay(scan, relevance, affine, title="t")
    axial, coronal, sagittal = overlay.panels[:3]
    assert (axial.height, axial.width) == (PANEL_PX, PANEL_PX)
    assert (coronal.height, coronal.width) == (PANEL_PX // 2, PANEL_PX)
    assert (sagittal.height, sagittal.width) == (PANEL_PX // 2, PANEL_PX)


def test_a_las_copy_renders_exactly_like_the_ras_scan_with_the_blob_on_the_labelled_left() -> None:
    shape = (48, 40, 36)
    affine = centred(shape, (1.5, 1.5, 1.5))
    scan, relevance = world_volume(shape, affine, (-15.0, 10.0, 5.0))   # world left, anterior, superior
    ras = compose_overlay(scan, relevance, affine, title="t")
    las_scan, las_affine = las_copy(scan, affine)
    las = compose_overlay(las_scan, las_copy(relevance, affine)[0], las_affine, title="t")
    np.testing.assert_array_equal(ras.rgb, las.rgb)
    for panel in ras.panels:
        if panel.plane in ("axial", "coronal"):
            assert panel.sides[:2] == ("L", "R")
            columns = red_columns(ras, panel)
            if columns.size:
                assert columns.mean() < panel.width / 2, f"blob not on the left of the {panel.plane} panel"
    axial = ras.panels[0]
    assert red_columns(ras, axial).size > 0
    # Anterior is up in the axial view: the blob sits in the top half.
    crop = ras.rgb[axial.top:axial.top + axial.height, axial.left:axial.left + axial.width].astype(int)
    rows = np.nonzero((crop[..., 0] > 200) & (crop[..., 1] < 90) & (crop[..., 2] < 90))[0]
    assert rows.mean() < axial.height / 2


def test_side_letters_are_drawn_inside_each_panel() -> None:
    shape = (40, 40, 40)
    affine = centred(shape, (1.5, 1.5, 1.5))
    scan, relevance = world_volume(shape, affine, (-15.0, 10.0, 5.0))
    overlay = compose_overlay(scan, relevance, affine, title="t")
    panel = overlay.panels[0]
    left_strip = overlay.rgb[panel.top:panel.top + panel.height, panel.left:panel.left + 20].astype(int)
    yellow = (left_strip[..., 0] > 200) & (left_strip[..., 1] > 150) & (left_strip[..., 2] < 80)
    assert yellow.sum() > 10


def test_oblique_scan_is_shown_on_its_closest_world_axes() -> None:
    shape = (48, 40, 36)
    affine = centred(shape, (1.5, 1.5, 1.5))
    angle = np.deg2rad(20)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    oblique = rotation @ affine
    scan, relevance = world_volume(shape, oblique, (-15.0, 10.0, 5.0))
    overlay = compose_overlay(scan, relevance, oblique, title="t")
    columns = red_columns(overlay, overlay.panels[0])
    assert columns.size and columns.mean() < overlay.panels[0].width / 2


def test_single_slice_gives_one_panel(tmp_path: Path) -> None:
    shape = (60, 50, 1)
    affine = centred(shape, (0.8, 0.8, 5.0))
    scan, relevance = world_volume(shape, affine, (-10.0, 5.0, 0.0))
    path = tmp_path / "slice.png"
    render_overlay(path, scan, relevance, affine, title="2D")
    overlay = compose_overlay(scan, relevance, affine, title="2D")
    assert len(overlay.panels) == 1 and overlay.panels[0].plane == "axial"
    assert imread(path).shape[:2] == (HEADER_PX + round(50 * 0.8 / (60 * 0.8 / PANEL_PX)) + 2 * GAP_PX,
                                      MIN_WIDTH_PX)
    assert red_columns(overlay, overlay.panels[0]).mean() < overlay.panels[0].width / 2


def test_a_2d_array_is_taken_as_a_single_slice() -> None:
    overlay = compose_overlay(np.ones((20, 30)), np.zeros((20, 30)), np.eye(4), title="t")
    assert len(overlay.panels) == 1


def test_zero_relevance_leaves_the_scan_grey(tmp_path: Path) -> None:
    shape = (32, 32, 32)
    affine = centred(shape, (2.0, 2.0, 2.0))
    scan, _ = world_volume(shape, affine, (0.0, 0.0, 0.0))
    render_overlay(tmp_path / "zero.png", scan, np.zeros(shape, np.float32), affine, title="t")
    overlay = compose_overlay(scan, np.zeros(shape, np.float32), affine, title="t")
    assert overlay.vmax == 1.0
    # The diverging map tints grey towards (1, t, t) for R > 0 and (t, t, 1) for R < 0; the yellow side
    # letters have R > G > B. No pixel may carry either tint.
    r, g, b = (overlay.rgb[HEADER_PX:, :, c].astype(int) for c in range(3))
    assert not ((r > g) & (g == b)).any()
    assert not ((b > r) & (r == g)).any()
    # Zero relevance is fully transparent: the two-valued scan stays exactly black and white.
    panel = overlay.panels[0]
    crop = overlay.rgb[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width]
    untouched = (crop[..., 0] == crop[..., 1]) & (crop[..., 1] == crop[..., 2])
    assert set(np.unique(crop[untouched][:, 0]).tolist()) == {0, 255}


def test_constant_relevance_and_constant_scan_render(tmp_path: Path) -> None:
    shape = (16, 16, 16)
    overlay = compose_overlay(np.full(shape, 7.0), np.full(shape, 0.5), np.eye(4), title="t")
    assert overlay.vmax == pytest.approx(0.5)
    panel = overlay.panels[0]
    centre = overlay.rgb[panel.top + panel.height // 2 - 20, panel.left + panel.width // 2]
    assert tuple(centre) == (255, 0, 0)                  # full positive relevance: pure red
    render_overlay(tmp_path / "c.png", np.full(shape, 7.0), np.full(shape, 0.5), np.eye(4), title="t")


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2), (1, 3, 5), (3, 1, 4)])
def test_tiny_volumes_render(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "tiny.png"
    render_overlay(path, rng.random(shape), rng.standard_normal(shape), np.eye(4), title="tiny")
    assert imread(path).shape[1] == MIN_WIDTH_PX


def test_negative_relevance_is_blue_and_clipping_is_symmetric() -> None:
    shape = (20, 20, 20)
    relevance = np.zeros(shape, np.float32)
    relevance[5, 10, 10] = -2.0
    relevance[15, 10, 10] = 1.0
    overlay = compose_overlay(np.ones(shape), relevance, np.eye(4), title="t", clip_percentile=100)
    assert overlay.vmax == 2.0
    axial = overlay.panels[0]                            # through the positive peak (z = 10)
    crop = overlay.rgb[axial.top:axial.top + axial.height, axial.left:axial.left + axial.width].astype(int)
    blue = (crop[..., 2] > 200) & (crop[..., 0] < 90)
    assert blue.any() and np.nonzero(blue)[1].mean() < axial.width / 2   # i = 5 is world left here


def test_nan_voxels_in_the_scan_or_relevance_do_not_spoil_the_picture() -> None:
    shape = (24, 24, 24)
    scan = np.full(shape, 50.0)
    scan[:4] = np.nan                                     # e.g. masked-out voxels of a float NIfTI
    relevance = np.zeros(shape)
    relevance[12, 12, 12] = 1.0
    relevance[0, 0, 0] = np.nan
    overlay = compose_overlay(scan, relevance, np.eye(4), title="t")
    assert overlay.vmax == 1.0
    panel = overlay.panels[0]
    crop = overlay.rgb[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width].astype(int)
    assert ((crop[..., 0] > 200) & (crop[..., 1] < 90)).any()


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ"):
        compose_overlay(np.zeros((4, 4, 4)), np.zeros((4, 4, 3)), np.eye(4), title="t")


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "overlay.png"
    path.write_bytes(b"previous")

    def broken(fd: int) -> None:  # the bytes are in the temporary file, the disk fills before they are synced
        raise OSError("disk full")

    monkeypatch.setattr("mri_lrp.outputs.os.fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        render_overlay(path, np.ones((4, 4, 4)), np.zeros((4, 4, 4)), np.eye(4), title="t")
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png"]


def green(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == render.CONTOUR[0]) & (rgb[..., 1] == render.CONTOUR[1]) & (rgb[..., 2] == render.CONTOUR[2])


def test_mask_outline_is_drawn_around_the_mask_on_every_panel_through_it() -> None:
    shape, spacing = (64, 64, 32), (1.0, 1.0, 2.0)
    affine = centred(shape, spacing)
    scan, relevance = world_volume(shape, affine, (-10.0, 8.0, 6.0))
    mask = np.zeros(shape, dtype=bool)
    mask[18:30, 34:46, 16:22] = True  # a box around the relevance blob
    plain = compose_overlay(scan, relevance, affine, title="t")
    outlined = compose_overlay(scan, relevance, affine, title="t", mask=mask)
    assert not green(plain.rgb[HEADER_PX:]).any()
    for panel in outlined.panels[:3]:  # the planes through the peak all cut the box
        crop = outlined.rgb[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width]
        rows, cols = np.nonzero(green(crop))
        assert rows.size > 0, panel.plane
        # An outline, not a filled box: the middle of the box is not green.
        assert not green(crop)[int(np.median(rows)), int(np.median(cols))], panel.plane


def test_header_labels_stay_inside_the_picture() -> None:
    long_title = "a scan id long enough to run past any picture " * 4
    strip = header_strip(MIN_WIDTH_PX, long_title, "subtitle", ("note",), 1.23456e-7, 99.5)
    assert strip.shape == (HEADER_PX, MIN_WIDTH_PX, 3)
    # Nothing drawn in the outermost columns: every label was placed (or shortened) inside the strip.
    assert not strip[:, :2].any() and not strip[:, -2:].any()
    # The colour bar's minimum label is there, left of the bar's start, and whole: ink on its left side.
    bar_left = 8 + 24
    label_rows = strip[HEADER_PX - 14:, : bar_left + 1]
    assert label_rows.max() > 128


def test_png_writer_round_trips_pixels_and_text(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    render.write_png(path, rgb, {"Warning": "made by the demo model"})
    with Image.open(path) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), rgb)
        assert img.text == {"Warning": "made by the demo model"}
