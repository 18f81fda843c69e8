"""PNG / JPEG / TIFF slices: discovered, read as torchvision's ToTensor gives them, explained end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from mri_lrp.errors import ScanError
from mri_lrp.model.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from mri_lrp.model.transform import to_model, to_scan
from mri_lrp.scans import discover, read_scan
from mri_lrp.scans.image2d import NO_GEOMETRY


def _brain(h: int = 60, w: int = 50, seed: int = 0) -> np.ndarray:
    """uint8 (h, w): a bright ellipse with texture on black, brightest towards the top left."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
    value = 120 + 80 * (1 - yy / h) * (1 - xx / w) + rng.normal(0, 10, (h, w))
    return np.clip(value * inside, 0, 255).astype(np.uint8)


def _read(path: Path):
    refs, skipped = discover([path])
    assert len(refs) == 1, skipped
    return read_scan(refs[0])


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for 8-bit PIL images, written out: (C, H, W) / 255."""
    a = np.asarray(image)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255)


def test_grey_png_reaches_the_model_as_to_tensor_gives_it(tmp_path: Path):
    pixels = _brain()
    Image.fromarray(pixels).save(tmp_path / "slice.png")
    scan = _read(tmp_path / "slice.png")
    assert scan.kind == "image" and scan.data.shape == (60, 50, 1) and scan.channels == ()
    assert NO_GEOMETRY in scan.warnings
    mi = to_model(scan, InputSpec(dims=2, normalization="none"))
    expected = _to_tensor(Image.open(tmp_path / "slice.png"))
    torch.testing.assert_close(mi.tensor[0], expected, rtol=0, atol=0)
    assert mi.notes == ()


def test_rgb_jpeg_keeps_its_three_channels_in_order(tmp_path: Path):
    rgb = np.stack([_brain(seed=1), _brain(seed=2) // 2, 255 - _brain(seed=3)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "colour.jpg", quality=95)
    scan = _read(tmp_path / "colour.jpg")
    assert scan.data.shape == (3, 60, 50, 1) and scan.channels == ("red", "green", "blue")
    mi = to_model(scan, InputSpec(dims=2, channels=3, normalization="none"))
    torch.testing.assert_close(mi.tensor[0], _to_tensor(Image.open(tmp_path / "colour.jpg").convert("RGB")))
    with pytest.raises(ScanError, match="colour image has 3 channels, the model takes 1"):
        to_model(scan, InputSpec(dims=2, channels=1))


def test_grey_image_for_an_imagenet_model_is_repeated_with_a_note(tmp_path: Path):
    """An RGB JPEG with equal channels (how slice exports are often saved) is grey; for a 3-channel ImageNet
    model it is repeated, scaled to [0, 1], then normalised with ImageNet's mean and std per channel."""
    grey = _brain()
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(tmp_path / "export.png")
    scan = _read(tmp_path / "export.png")
    assert scan.data.shape == (60, 50, 1)
    assert any("three equal channels read as grey" in w for w in scan.warnings)
    mi = to_model(scan, InputSpec(dims=2, channels=3, normalization="imagenet"))
    for c in range(3):
        np.testing.assert_allclose(mi.tensor[0, c].numpy(), (grey / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c],
                                   atol=1e-5)
    assert any(n.startswith("grey image repeated into the model's 3 colour channels") for n in mi.notes)
    back = to_scan(torch.ones_like(mi.tensor), mi)
    assert back.shape == (60, 50, 1) and back.sum(dtype=np.float64) == pytest.approx(3 * 60 * 50)


def test_alpha_is_dropped_and_16_bit_tiff_keeps_its_values(tmp_path: Path):
    rgba = np.dstack([_brain(seed=1), _brain(seed=2), _brain(seed=3), np.full((60, 50), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    scan = _read(tmp_path / "a.png")
    assert scan.data.shape == (3, 60, 50, 1) and any("alpha channel dropped" in w for w in scan.warnings)
    deep = (_brain().astype(np.uint16) * 200)
    Image.fromarray(deep).save(tmp_path / "b.tif")
    scan = _read(tmp_path / "b.tif")
    np.testing.assert_array_equal(scan.data[..., 0], deep.astype(np.float32))


def test_multipage_tiff_reads_the_first_page_and_says_so(tmp_path: Path):
    pages = [Image.fromarray(_brain(seed=s)) for s in range(3)]
    pages[0].save(tmp_path / "stack.tiff", save_all=True, append_images=pages[1:])
    scan = _read(tmp_path / "stack.tiff")
    np.testing.assert_array_equal(scan.data[..., 0], _brain(seed=0) / np.float32(255.0))
    assert any("first of the file's 3 pages" in w for w in scan.warnings)


def test_discovery_finds_every_image_suffix_and_skips_masks_outputs_and_junk(tmp_path: Path):
    for name in ("a.png", "b.JPG", "c.jpeg", "d.tif", "e.TIFF", "f_mask.png", "g_seg.png"):
        Image.fromarray(_brain()).convert("L").save(tmp_path / name, format="TIFF" if "tif" in name.lower()
                                                    else "JPEG" if "jp" in name.lower() else "PNG")
    earlier = tmp_path / "out" / "scans" / "x"
    earlier.mkdir(parents=True)
    Image.fromarray(_brain()).save(earlier / "overlay.png")
    (earlier / "regions.csv").write_text("scan_id\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    refs, skipped = discover([tmp_path])
    assert sorted(r.source for r in refs) == ["a.png", "b.JPG", "broken.png", "c.jpeg", "d.tif", "e.TIFF"]
    assert {r.kind for r in refs} == {"image"}
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "mask" in reasons["f_mask.png"] and "seg" in reasons["g_seg.png"]
    assert "earlier explain run" in reasons["overlay.png"]
    with pytest.raises(ScanError, match="cannot decode the image"):
        read_scan(next(r for r in refs if r.source == "broken.png"))


def test_image_file_model_input_equals_torchvision_to_tensor_resize_normalize(tmp_path):
    """With torchvision installed (the vision venv): a PNG through ToTensor -> Resize((224, 224)) ->
    Normalize(ImageNet) is our image reader + resize + imagenet."""
    tv = pytest.importorskip("torchvision.transforms")
    from mri_lrp.scans.image2d import read_image
    from mri_lrp.scans.refs import ScanRef

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:260]
    grey = np.clip(128 + 60 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + rng.normal(0, 20, (300, 260)), 0, 255)
    rgb = np.stack([grey, np.roll(grey, 5, 0), 255 - grey], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    scan = read_image(ScanRef("image", "x.png", "x", (str(tmp_path / "x.png"),), "x.png"))
    ours = to_model(scan, InputSpec(dims=2, channels=3, shape=(224, 224), resize=True, antialias=True,
                                    normalization="imagenet")).tensor[0]
    reference = tv.Compose([tv.ToTensor(), tv.Resize((224, 224), antialias=True),
                            tv.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(Image.open(tmp_path / "x.png"))
    for c in range(3):
        assert float((ours[c] - reference[c]).norm() / reference[c].norm()) <= 1e-4


@pytest.mark.slow
def test_explain_a_folder_of_jpeg_slices_with_an_imagenet_style_2d_model(tmp_path: Path):
    """End to end: a 3-channel 2D model resized to 64² with ImageNet scaling; outputs as for other scans."""
    from typer.testing import CliRunner

    from mri_lrp.cli import app
    from mri_lrp.model.checkpoint import save_checkpoint
    from mri_lrp.model.zoo import build_model

    scans = tmp_path / "slices"
    scans.mkdir()
    for s in range(2):
        Image.fromarray(np.repeat(_brain(90, 70, seed=s)[..., None], 3, axis=-1)).save(scans / f"s{s}.jpg")
    torch.manual_seed(0)
    net = build_model("cnn2d", in_channels=3, num_classes=3, width=4, depth=2)
    spec = InputSpec(dims=2, channels=3, shape=(64, 64), resize=True, antialias=True, normalization="imagenet")
    save_checkpoint(tmp_path / "m.pt", net, architecture="cnn2d",
                    kwargs={"in_channels": 3, "num_classes": 3, "width": 4, "depth": 2},
                    class_names=["a", "b", "c"], input_spec=spec)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["explain", str(scans), "--checkpoint", str(tmp_path / "m.pt"), "--out",
                                   str(out), "--workers", "0", "--save-model-input"])
    assert res.exit_code == 0, res.output
    with (out / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        assert float(row["conservation_error"]) < 1e-4
        assert "no world geometry" in row["warnings"]
        folder = out / "scans" / row["scan_id"]
        rel = nib.load(folder / "relevance.nii.gz")
        assert rel.shape == (90, 70, 1)
        assert (folder / "overlay.png").exists()
        seen = nib.load(folder / "model_input.nii.gz")
        assert seen.shape == (64, 64, 1, 3)
        done = json.loads((folder / "result.json").read_text())
        assert "model_input.nii.gz" in done["files"]
