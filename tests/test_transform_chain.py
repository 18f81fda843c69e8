"""The preprocessing chain (spacing grid, crop_foreground, resize or crop/pad, padding, intensity keys,
channels): relevance goes back through the exact transpose and every sum is accounted for."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mri_lrp.errors import ScanError
from mri_lrp.model.spec import IMAGENET_MEAN, IMAGENET_STD, CropForeground, InputSpec
from mri_lrp.model.transform import outside_relevance, to_model, to_scan, to_scan_channels
from mri_lrp.scans.scan import Scan

CHAINS = {
    "spacing": {"spacing": [3.0, 2.5, 4.0]},
    "spacing_up_nearest": {"spacing": [1.3, 1.7, 1.1], "interpolation": "nearest"},
    "spacing_antialias": {"spacing": [5.0, 6.0, 3.0], "antialias": True},
    "crop_resize_linear": {"spacing": [2.5, 2.5, 2.5], "crop_foreground": {"margin": 3}, "resize": True,
                           "shape": [20, 24, 16]},
    "crop_past_edge_zeros": {"crop_foreground": {"threshold": 50.0, "margin": 40}, "padding": "zeros"},
    "crop_past_edge_edge": {"crop_foreground": {"threshold": 50.0, "margin": 40}, "padding": "edge"},
    "resize_area": {"resize": True, "shape": [12, 17, 9], "interpolation": "area"},
    "resize_nearest_up": {"resize": True, "shape": [50, 70, 31], "interpolation": "nearest"},
    "resize_antialias": {"resize": True, "shape": [15, 13, 11], "antialias": True},
    "pad_crop_zeros": {"shape": [48, 30, 33]},
    "pad_crop_edge": {"shape": [48, 30, 33], "padding": "edge"},
    "centred": {"spacing": [3.0, 3.0, 3.0], "shape": [24, 30, 20], "align": "centre", "padding": "zeros"},
}
# Chains that never read past the scan (border or edge padding only): no relevance can fall outside it.
NO_PADDING = {"spacing", "spacing_up_nearest", "spacing_antialias", "crop_past_edge_edge", "resize_area",
              "resize_nearest_up", "resize_antialias", "pad_crop_edge"}


def _scan(data: np.ndarray, affine: np.ndarray, name: str = "test") -> Scan:
    return Scan(scan_id=name, source=name, kind="nifti", data=np.asarray(data, dtype=np.float32),
                affine=np.asarray(affine, dtype=np.float64))


@pytest.fixture(scope="module")
def anatomical(nibabel_data: Path) -> Scan:
    """33x41x25 LAS, 2 mm; background exactly 0."""
    img = nib.load(nibabel_data / "anatomical.nii")
    return _scan(img.get_fdata(dtype=np.float32), img.affine, "anatomical")


@pytest.fixture(scope="module")
def two_channel(anatomical: Scan) -> Scan:
    data = np.stack([anatomical.data, np.sqrt(np.abs(anatomical.data)) * 3.0]).astype(np.float32)
    return Scan("case", "case", "nifti", data, anatomical.affine, channels=("t1", "t2"))


def _spec(chain: str, **extra) -> InputSpec:
    return InputSpec.from_dict({"normalization": "none", **CHAINS[chain], **extra})


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_to_scan_is_the_exact_transpose_of_the_model_map(anatomical: Scan, chain: str):
    """<A x, r> == <x, A^T r> in float64: relevance goes back through the very weights that built the input."""
    mi = to_model(anatomical, _spec(chain))
    r = torch.rand(mi.tensor.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lhs = float((mi.tensor.double() * r).sum())
    rhs = float((anatomical.data.astype(np.float64) * to_scan(r, mi).astype(np.float64)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-6)


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_relevance_sum_is_conserved_up_to_what_falls_on_zero_padding(anatomical: Scan, chain: str):
    mi = to_model(anatomical, _spec(chain, channels=2))
    r = torch.randn(mi.tensor.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    outside = outside_relevance(r, mi)
    back = to_scan(r, mi).sum(dtype=np.float64)
    assert back == pytest.approx(float(r.sum()) - outside, rel=1e-6, abs=1e-6 * float(r.abs().sum()))
    if chain in NO_PADDING:
        assert outside == 0.0
    else:
        assert outside != 0.0
    per_channel = to_scan_channels(r, mi)
    assert per_channel.shape == (2, *anatomical.shape)
    np.testing.assert_allclose(per_channel.sum(axis=0), to_scan(r, mi), rtol=1e-5, atol=1e-6)


def test_zero_padding_reads_zeros_and_edge_padding_repeats_the_edge(anatomical: Scan):
    bright = _scan(np.abs(anatomical.data) + 10.0, anatomical.affine)
    zeros = to_model(bright, _spec("pad_crop_zeros")).tensor[0]
    edge = to_model(bright, _spec("pad_crop_edge")).tensor[0]
    # 33 -> 48 on the first axis: 7 voxels of padding before (MONAI's floor), 8 after.
    assert (zeros[:7] == 0).all() and (zeros[-8:] == 0).all() and (zeros[7:-8, :, 4:-4] > 0).all()
    torch.testing.assert_close(edge[:7], edge[7:8].expand(7, -1, -1))
    torch.testing.assert_close(edge[-8:], edge[-9:-8].expand(8, -1, -1))
    r = torch.zeros((1, *zeros.shape), dtype=torch.float64)
    r[0, 0, 5, 5] = 1.0  # a padded voxel
    assert outside_relevance(r, to_model(bright, _spec("pad_crop_zeros"))) == 1.0
    assert to_scan(r, to_model(bright, _spec("pad_crop_edge"))).sum(dtype=np.float64) == pytest.approx(1.0)


def test_crop_foreground_box_is_the_thresholded_voxels_plus_margin(anatomical: Scan):
    spec = InputSpec(normalization="none", orientation=None, crop_foreground=CropForeground(100.0, (2, 0, 1)))
    mi = to_model(anatomical, spec)
    hit = np.argwhere(anatomical.data > 100.0)
    lo, hi = hit.min(axis=0) - [2, 0, 1], hit.max(axis=0) + [2, 0, 1] + 1
    expected = np.zeros(tuple(hi - lo), dtype=np.float32)
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, anatomical.shape)
    expected[tuple(slice(a - b, c - b) for a, b, c in zip(src_lo, lo, src_hi, strict=True))] = \
        anatomical.data[tuple(slice(a, c) for a, c in zip(src_lo, src_hi, strict=True))]
    np.testing.assert_array_equal(mi.tensor[0].numpy(), expected)


def test_crop_foreground_with_nothing_above_threshold_keeps_the_image_and_warns(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(normalization="none", crop_foreground=CropForeground(1e9, (0,))))
    assert mi.tensor.shape == (1, 33, 41, 25)
    assert any(n.startswith("warning: no voxel above the crop_foreground threshold") for n in mi.notes)


def test_model_affine_maps_model_voxels_to_the_world_points_they_sample(anatomical: Scan):
    """A scan equal to its own world x coordinate, through spacing, crop and resize, reads the world x of each
    model voxel's centre (linear maps reproduce linear functions away from the edges)."""
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in anatomical.shape], indexing="ij")
    world_x = anatomical.affine[0, 0] * ii + anatomical.affine[0, 3] + 300.0  # positive: all foreground
    scan = _scan(world_x, anatomical.affine)
    spec = InputSpec(spacing=(1.5, 3.0, 2.5), crop_foreground=CropForeground(0.0, (1,)), resize=True,
                     shape=(30, 20, 16), normalization="none", padding="edge")
    mi = to_model(scan, spec)
    xs = np.arange(30)[:, None, None] * np.ones((1, 20, 16))
    expected = mi.space.affine[0, 0] * xs + mi.space.affine[0, 3] + 300.0
    inside = (expected > world_x.min() + 3) & (expected < world_x.max() - 3)
    assert inside.sum() > 5000
    np.testing.assert_allclose(mi.tensor[0].numpy()[inside], expected[inside], atol=1e-3)


def test_spacing_grid_is_monai_first_voxel_and_rounded_size(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(spacing=(3.0, 3.0, 3.0), normalization="none"))
    # round((n - 1) * 2 / 3) + 1 for n = 33, 41, 25
    assert mi.tensor.shape == (1, 22, 28, 17)
    first = mi.space.affine @ np.array([0, 0, 0, 1.0])
    ras = nib.as_closest_canonical(nib.Nifti1Image(anatomical.data, anatomical.affine))
    np.testing.assert_allclose(first, ras.affine @ np.array([0, 0, 0, 1.0]))


def test_multichannel_case_keeps_channel_order_and_maps_back_per_channel(two_channel: Scan):
    mi = to_model(two_channel, _spec("crop_resize_linear", channels=2))
    single = to_model(_scan(two_channel.data[1], two_channel.affine), _spec("crop_resize_linear"))
    # crop_foreground looks at every channel; both share the same foreground here, so channel 1 alone matches
    torch.testing.assert_close(mi.tensor[1], single.tensor[0])
    assert mi.notes == ()
    r = torch.zeros(mi.tensor.shape, dtype=torch.float64)
    r[1] = torch.rand(mi.tensor.shape[1:], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    per_channel = to_scan_channels(r, mi)
    assert (per_channel[0] == 0).all()
    expected = float(r[1].sum()) - outside_relevance(r, mi)  # the margin passes the scan: zero padding
    assert per_channel[1].sum(dtype=np.float64) == pytest.approx(expected, rel=1e-6)


def test_single_image_into_a_multichannel_model_is_repeated_with_a_warning(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(channels=4, spacing=(3.0, 3.0, 3.0)))
    assert mi.tensor.shape[0] == 4
    torch.testing.assert_close(mi.tensor[0], mi.tensor[3])
    assert [n for n in mi.notes if n.startswith("warning: one image repeated into all 4 model channels")]
    assert to_scan_channels(torch.ones_like(mi.tensor), mi).shape == (4, *anatomical.shape)


def test_grey_volume_into_an_rgb_slice_model_is_a_colour_repeat_not_a_sequence_warning(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(dims=2, channels=3, normalization="imagenet", shape=(32, 32), resize=True))
    assert not [n for n in mi.notes if n.startswith("warning:")]
    assert any("repeated into the model's 3 colour channels" in n for n in mi.notes)


def test_case_with_the_wrong_channel_count_is_a_scan_error(two_channel: Scan):
    with pytest.raises(ScanError, match="the case has 2 channels, the model takes 4") as err:
        to_model(two_channel, InputSpec(channels=4))
    assert err.value.stage == "preprocess"


def test_range_normalisation_is_monai_scale_intensity_range(anatomical: Scan):
    spec = InputSpec(normalization="range", range=(0.0, 200.0, -1.0, 1.0), range_clip=True, orientation=None)
    out = to_model(anatomical, spec).tensor[0].numpy()
    np.testing.assert_allclose(out, np.clip(anatomical.data / 200.0 * 2.0 - 1.0, -1.0, 1.0), atol=1e-6)
    unclipped = to_model(anatomical, InputSpec(normalization="range", range=(0.0, 200.0, -1.0, 1.0),
                                               orientation=None)).tensor
    assert float(unclipped.max()) > 1.0


def test_meanstd_and_imagenet_scale_each_channel_with_its_own_constants(anatomical: Scan):
    grey = _scan(anatomical.data / anatomical.data.max(), anatomical.affine)
    mi = to_model(grey, InputSpec(channels=3, normalization="imagenet", orientation=None))
    for c in range(3):
        np.testing.assert_allclose(mi.tensor[c].numpy(), (grey.data - IMAGENET_MEAN[c]) / IMAGENET_STD[c],
                                   atol=1e-5)
    mi = to_model(grey, InputSpec(channels=2, normalization="meanstd", mean=(0.5,), std=(0.25, 2.0),
                                  orientation=None))
    np.testing.assert_allclose(mi.tensor[1].numpy(), (grey.data - 0.5) / 2.0, atol=1e-6)


def test_channel_wise_zscore_uses_each_channels_own_nonzero_statistics(two_channel: Scan):
    out = to_model(two_channel, InputSpec(channels=2, channel_wise=True, orientation=None)).tensor.numpy()
    joint = to_model(two_channel, InputSpec(channels=2, orientation=None)).tensor.numpy()
    for c in range(2):
        x = two_channel.data[c]
        inside = x != 0
        expected = (x[inside] - x[inside].mean(dtype=np.float64)) / x[inside].std(dtype=np.float64)
        np.testing.assert_allclose(out[c][inside], expected, atol=1e-4)
        assert (out[c][~inside] == 0).all()
    assert not np.allclose(out, joint)


def test_normalisation_first_takes_statistics_on_the_scan_grid(anatomical: Scan):
    first = to_model(anatomical, InputSpec(spacing=(4.0, 4.0, 4.0), normalization="minmax",
                                           normalization_order="first")).tensor
    last = to_model(anatomical, InputSpec(spacing=(4.0, 4.0, 4.0), normalization="minmax")).tensor
    assert float(last.max()) == pytest.approx(1.0)
    assert float(first.max()) < 1.0  # the brightest scan voxel was smoothed by the resampling after it


def test_checkpoint_spec_written_before_align_keeps_the_centred_grid():
    old = {"dims": 3, "channels": 1, "shape": [56, 64, 56], "spacing": [3.5, 3.5, 3.5], "orientation": "RAS",
           "normalization": "zscore", "clip": [0.5, 99.5], "slice_axis": "S"}
    stored = InputSpec.from_dict(old, stored=True)
    assert (stored.align, stored.padding, stored.antialias) == ("centre", "edge", True)
    assert InputSpec.from_dict(old).align == "corner"
    assert InputSpec.from_dict(stored.to_dict(), stored=True) == stored


@pytest.mark.parametrize(("keys", "message"), [
    ({"resize": True}, "resize = true needs a shape"),
    ({"normalization": "range"}, "needs range"),
    ({"normalization": "meanstd", "mean": [0.5], "std": [0.0]}, "std values must be > 0"),
    ({"normalization": "imagenet"}, "3-channel models"),
    ({"interpolation": "cubic"}, "interpolation must be one of"),
    ({"padding": "reflect"}, "padding must be one of"),
    ({"align": "centre", "resize": True, "shape": [4, 4, 4]}, "align = 'corner'"),
    ({"crop_foreground": {"margin": -1}}, "margin must be >= 0"),
    ({"crop_foreground": {"margn": 1}}, "unknown key"),
    ({"crop_foreground": {"margin": "2"}}, "whole-number"),
    ({"resize": "yes", "shape": [4, 4, 4]}, "true or false"),
    ({"range": ["a", 1, 0, 1], "normalization": "range"}, "list of numbers"),
    ({"channel_names": ["t1", "t2"]}, "2 names for 1 channels"),
])
def test_bad_spec_keys_are_one_clear_error(keys: dict, message: str):
    with pytest.raises(ValueError, match=message):
        InputSpec.from_dict(keys)


def test_saved_model_input_is_the_tensor_on_the_model_grid_channels_last(two_channel: Scan, tmp_path: Path):
    from mri_lrp.model.transform import model_volume
    from mri_lrp.outputs import save_nifti

    mi = to_model(two_channel, _spec("crop_resize_linear", channels=2))
    save_nifti(tmp_path / "m.nii.gz", model_volume(mi.tensor, mi.space), mi.space.affine)
    img = nib.load(tmp_path / "m.nii.gz")
    assert img.shape == (20, 24, 16, 2)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[..., 1], mi.tensor[1].numpy())
    np.testing.assert_allclose(img.affine, mi.space.affine, atol=1e-4)
    slices = to_model(two_channel, InputSpec(dims=2, channels=2, shape=(30, 36), resize=True))
    seen = model_volume(slices.tensor, slices.space)
    assert seen.shape == (30, 36, slices.tensor.shape[0], 2)
    np.testing.assert_array_equal(seen[:, :, 4, 1], slices.tensor[4, 1].numpy())


def test_relevance_on_zero_padding_is_reported_not_hidden(anatomical: Scan):
    from mri_lrp.pipeline.write import padding_note

    mi = to_model(anatomical, _spec("pad_crop_zeros"))
    r = np.zeros((1, *mi.tensor.shape), dtype=np.float32)
    r[0, 0, 0, 10, 10] = 0.25  # a padded voxel
    r[0, 0, 20, 20, 12] = 0.75
    assert padding_note(r, mi.space, 1.0).startswith("25.0% of the relevance lies on zero padding")
    r[0, 0, 0, 10, 10] = 0.0
    assert padding_note(r, mi.space, 1.0) == ""


def test_the_demo_checkpoint_keeps_its_centred_single_step_grid():
    """The shipped demo model was trained on the centred, anti-aliased, edge-padded grid of its era."""
    from mri_lrp.model.checkpoint import load_checkpoint

    spec = load_checkpoint(None).input_spec
    assert (spec.align, spec.padding, spec.antialias, spec.resize) == ("centre", "edge", True, False)
    assert spec.shape == (56, 64, 56) and spec.spacing == (3.5, 3.5, 3.5)


def test_imagenet_slice_config_is_a_valid_spec_matching_torchvision_resize():
    from mri_lrp.settings import load_config

    config = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "imagenet-2d-slices.toml"))
    spec = InputSpec.from_dict(config["input_spec"])
    assert (spec.dims, spec.channels, spec.shape, spec.resize, spec.antialias) == (2, 3, (224, 224), True, True)
    assert spec.mean_std() == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("padding", ["edge", "zeros"])
def test_slice_model_chain_maps_back_per_channel(two_channel: Scan, padding: str):
    """A box past the image, then a resize: with edge padding the way back is the exact transpose; with zero
    padding, model voxels that read the image in part send all their relevance to what they read."""
    spec = InputSpec(dims=2, channels=2, spacing=(1.5, 1.7), crop_foreground=CropForeground(0.0, (2,)),
                     resize=True, shape=(28, 30), normalization="none", slice_axis="A", padding=padding)
    mi = to_model(two_channel, spec)
    assert mi.tensor.shape == (41, 2, 28, 30)
    r = torch.rand(mi.tensor.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    per_channel = to_scan_channels(r, mi)
    if padding == "edge":
        for c in range(2):
            lhs = float((mi.tensor[:, c].double() * r[:, c]).sum())
            rhs = float((two_channel.data[c].astype(np.float64) * per_channel[c].astype(np.float64)).sum())
            assert lhs == pytest.approx(rhs, rel=1e-6)
        assert outside_relevance(r, mi) == 0.0
    else:
        assert outside_relevance(r, mi) > 0.0
    total = per_channel.sum(dtype=np.float64)
    assert total == pytest.approx(float(r.sum()) - outside_relevance(r, mi), rel=1e-6)
