"""The model input equals what MONAI's own transforms (and torch's resizing, as torchvision uses it) give for the
same preprocessing, on oblique, LPS and anisotropic scans: ≤ 1e-4 relative L2 per channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mri_lrp.model.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from mri_lrp.model.transform import to_model
from mri_lrp.scans.scan import Scan

monai = pytest.importorskip("monai")
T = pytest.importorskip("monai.transforms")
MetaTensor = pytest.importorskip("monai.data").MetaTensor

SHAPE = (30, 34, 22)
SCANS = {  # name -> (spacing, direction)
    "oblique": ((1.1, 1.0, 1.2), "oblique"),
    "lps": ((1.1, 1.0, 1.2), "lps"),
    "anisotropic": ((0.9, 1.3, 2.4), "ras"),
}


def _rotation(degrees: float) -> np.ndarray:
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _affine(name: str) -> np.ndarray:
    spacing, direction = SCANS[name]
    rotation = {"oblique": _rotation(17.0), "lps": np.diag([-1.0, -1.0, 1.0]), "ras": np.eye(3)}[direction]
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = [10.0, -20.0, 5.0]
    return affine


def _head(channels: int, seed: int = 0) -> np.ndarray:
    """(C, I, J, K) float32: textured ellipsoids on an exactly-zero background."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    inside = np.sqrt(sum((g / 0.75) ** 2 for g in grid)) < 0.8
    return np.stack([((rng.normal(size=SHAPE) * 0.3 + 2 + c + np.sin(4 * grid[0] + c)) * inside)
                     for c in range(channels)]).astype(np.float32)


def _compare(name: str, spec: dict, chain: list, channels: int = 1) -> None:
    data, affine = _head(channels), _affine(name)
    scan = Scan(name, name, "nifti", data if channels > 1 else data[0], affine)
    ours = to_model(scan, InputSpec.from_dict({"channels": channels, **spec})).tensor
    x = MetaTensor(torch.from_numpy(data.copy()), affine=torch.from_numpy(affine))
    for transform in chain:
        x = transform(x)
    reference = x.as_tensor().to(torch.float32)
    assert tuple(ours.shape) == tuple(reference.shape)
    for c in range(channels):
        error = float((ours[c] - reference[c]).norm() / reference[c].norm())
        assert error <= 1e-4, f"channel {c}: relative L2 {error:.2e}"


def _exact_background(x: torch.Tensor) -> torch.Tensor:
    """MONAI's grid_sample leaves float noise (~1e-16) on background next to tissue, which
    ``NormalizeIntensity(nonzero=True)`` would count as tissue; ours keeps background exactly 0 ("non-zero" means
    exactly != 0). Zeroing |x| < 1e-9 max |x| gives MONAI's result for that clean background."""
    return torch.where(x.abs() < 1e-9 * x.abs().max(), torch.zeros_like(x), x)


# (our [input_spec] keys, the MONAI chain a user trained with, channels). Spacings differ from the scans' own on
# every axis: MONAI interpolates even an identity step, and its float noise around exactly-zero background
# would move a foreground box.
CHAINS = {
    "spacing": ({"spacing": [1.5, 1.5, 1.5], "normalization": "none"},
                lambda: [T.Orientation("RAS"), T.Spacing((1.5, 1.5, 1.5))], 1),
    "spacing_crop_resize_zscore": (
        {"spacing": [1.5, 1.4, 1.3], "crop_foreground": {"margin": 2}, "resize": True, "shape": [20, 24, 16]},
        lambda: [T.Orientation("RAS"), T.Spacing((1.5, 1.4, 1.3)), T.CropForeground(margin=2),
                 T.Resize((20, 24, 16), mode="trilinear"), _exact_background, T.NormalizeIntensity(nonzero=True)], 1),
    "upsample_crop_area_channelwise": (
        {"spacing": [0.8, 1.05, 0.9], "crop_foreground": {"margin": 3}, "resize": True, "shape": [20, 24, 16],
         "interpolation": "area", "channel_wise": True},
        lambda: [T.Orientation("RAS"), T.Spacing((0.8, 1.05, 0.9)), T.CropForeground(margin=3),
                 T.Resize((20, 24, 16), mode="area"), _exact_background,
                 T.NormalizeIntensity(nonzero=True, channel_wise=True)], 2),
    "pad_or_crop_range_clip": (
        {"spacing": [2.0, 2.0, 2.0], "shape": [24, 11, 30], "normalization": "range", "range": [0, 3, -1, 1],
         "range_clip": True},
        lambda: [T.Orientation("RAS"), T.Spacing((2.0, 2.0, 2.0)), T.ResizeWithPadOrCrop((24, 11, 30)),
                 T.ScaleIntensityRange(0, 3, -1, 1, clip=True)], 1),
    "nearest": (
        {"spacing": [1.23, 1.71, 1.13], "shape": [18, 25, 16], "resize": True, "interpolation": "nearest",
         "normalization": "none"},
        lambda: [T.Orientation("RAS"), T.Spacing((1.23, 1.71, 1.13), mode="nearest"),
                 T.Resize((18, 25, 16), mode="nearest")], 1),
    "normalise_first_edge_box": (
        {"spacing": [1.5, 1.6, 1.45], "shape": [24, 24, 24], "resize": True, "normalization_order": "first",
         "crop_foreground": {"margin": [1, 9, 2]}, "padding": "edge"},
        lambda: [T.Orientation("RAS"), T.NormalizeIntensity(nonzero=True), T.Spacing((1.5, 1.6, 1.45)),
                 T.CropForeground(margin=(1, 9, 2), mode="edge"), T.Resize((24, 24, 24), mode="trilinear")], 1),
    "threshold_box_zero_pad_minmax": (
        {"crop_foreground": {"threshold": 2.5, "margin": 6}, "normalization": "minmax", "orientation": "LPS"},
        lambda: [T.Orientation("LPS"), T.CropForeground(select_fn=lambda x: x > 2.5, margin=6),
                 T.ScaleIntensity(minv=0.0, maxv=1.0)], 2),
}


@pytest.mark.parametrize("scan_name", sorted(SCANS))
@pytest.mark.parametrize("chain_name", sorted(CHAINS))
def test_model_input_equals_monai_chain(scan_name: str, chain_name: str):
    spec, chain, channels = CHAINS[chain_name]
    _compare(scan_name, spec, chain(), channels)


@pytest.mark.parametrize("size", [(224, 224), (97, 150), (300, 260)])
@pytest.mark.parametrize("antialias", [True, False])
def test_2d_resize_equals_torch_bilinear_as_torchvision_resizes(size: tuple[int, int], antialias: bool):
    """torchvision's Resize on a tensor is F.interpolate(bilinear, align_corners=False, antialias), then
    Normalize(ImageNet): our resize = true, antialias, imagenet."""
    rgb = np.random.default_rng(1).random((3, 181, 217)).astype(np.float32)
    scan = Scan("img", "img.png", "image", rgb[..., None], np.eye(4), channels=("red", "green", "blue"))
    spec = InputSpec(dims=2, channels=3, shape=size, resize=True, antialias=antialias, normalization="imagenet")
    ours = to_model(scan, spec).tensor
    resized = F.interpolate(torch.from_numpy(rgb)[None], size=size, mode="bilinear", align_corners=False,
                            antialias=antialias)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    reference = (resized - mean) / std
    assert ours.shape == reference.shape
    for c in range(3):
        assert float((ours[0, c] - reference[0, c]).norm() / reference[0, c].norm()) <= 1e-4


@pytest.mark.parametrize("mode", ["area", "nearest"])
def test_2d_area_and_nearest_resize_equal_torch(mode: str):
    grey = np.random.default_rng(2).random((181, 217, 1)).astype(np.float32)
    scan = Scan("img", "img.png", "image", grey, np.eye(4))
    ours = to_model(scan, InputSpec(dims=2, shape=(64, 100), resize=True, interpolation=mode,
                                    normalization="none")).tensor
    reference = F.interpolate(torch.from_numpy(grey[..., 0])[None, None], size=(64, 100), mode=mode)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
