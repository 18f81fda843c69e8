"""Scan <-> model space: geometry, normalisation, and relevance going back with its sum and location kept.

These use the centred single-step grid (``align = "centre"``, what checkpoints written before ``align`` mean);
the MONAI-style chain is checked in test_transform_chain.py and test_preprocess_monai.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from mri_lrp.errors import ScanError
from mri_lrp.model.intensity import normalise
from mri_lrp.model.resample import Linear
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.transform import ModelInput, to_model, to_scan
from mri_lrp.scans.scan import Scan

CENTRED = {"align": "centre", "padding": "edge", "antialias": True}


def _scan(data: np.ndarray, affine: np.ndarray, name: str = "test") -> Scan:
    return Scan(scan_id=name, source=name, kind="nifti", data=np.asarray(data, dtype=np.float32),
                affine=np.asarray(affine, dtype=np.float64))


@pytest.fixture(scope="module")
def anatomical(nibabel_data: Path) -> Scan:
    """33x41x25 LAS, 2 mm."""
    img = nib.load(nibabel_data / "anatomical.nii")
    return _scan(img.get_fdata(dtype=np.float32), img.affine, "anatomical")


@pytest.fixture(scope="module")
def example4d(nibabel_data: Path) -> Scan:
    """First volume of example4d: 128x96x24, LAS and slightly oblique."""
    img = nib.load(nibabel_data / "example4d.nii.gz")
    return _scan(np.asarray(img.dataobj[..., 0], dtype=np.float32), img.affine, "example4d")


def _nearest_scan_voxel(scan: Scan, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ijk = (np.linalg.inv(scan.affine) @ np.append(world, 1.0))[:3]
    return np.round(ijk).astype(int), ijk


def _assert_point_lands_at_world(scan: Scan, mi: ModelInput, model_index: tuple, world_voxel: tuple) -> None:
    """Relevance at one model voxel goes back to the scan voxel nearest that voxel's world position."""
    relevance = torch.zeros_like(mi.tensor)
    relevance[model_index] = 2.5
    back = to_scan(relevance, mi)
    world = (mi.space.affine @ np.array([*world_voxel, 1.0]))[:3]
    expected, exact = _nearest_scan_voxel(scan, world)
    assert np.all(np.abs(np.abs(exact - np.round(exact)) - 0.5) > 0.05), "test point is ambiguous"
    assert np.unravel_index(np.argmax(back), back.shape) == tuple(expected)
    assert back.dtype == np.float32 and back.shape == scan.shape
    assert back.sum(dtype=np.float64) == pytest.approx(2.5, rel=1e-6)
    assert (back >= 0).all()


@pytest.mark.parametrize("point", [(10, 17, 8), (3, 25, 14), (20, 5, 2)])
def test_relevance_point_returns_to_its_world_position_in_las_scan(anatomical: Scan, point):
    spec = InputSpec(spacing=(3.0, 3.0, 3.0), shape=(24, 30, 20), normalization="none", **CENTRED)
    mi = to_model(anatomical, spec)
    assert mi.tensor.shape == (1, 24, 30, 20)
    _assert_point_lands_at_world(anatomical, mi, (0, *point), point)


@pytest.mark.parametrize("point", [(40, 30, 9), (90, 70, 30), (5, 60, 15)])
def test_relevance_point_returns_to_its_world_position_in_oblique_scan(example4d: Scan, point):
    spec = InputSpec(spacing=(1.5, 1.5, 1.5), shape=(160, 128, 40), normalization="zscore", channels=2, **CENTRED)
    mi = to_model(example4d, spec)
    _assert_point_lands_at_world(example4d, mi, (1, *point), point)


def test_model_affine_maps_model_voxels_to_the_world_points_they_sample(anatomical: Scan):
    """A scan equal to its own world x coordinate resamples to the world x of each model voxel."""
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in anatomical.shape], indexing="ij")
    world_x = anatomical.affine[0, 0] * ii + anatomical.affine[0, 3]
    scan = _scan(world_x, anatomical.affine)
    mi = to_model(scan, InputSpec(spacing=(1.0, 3.0, 2.5), shape=(60, 20, 16), normalization="none", **CENTRED))
    xs, ys, zs = np.meshgrid(*[np.arange(n) for n in mi.tensor.shape[1:]], indexing="ij")
    expected = mi.space.affine[0, 0] * xs + mi.space.affine[0, 3]
    inside = (expected >= world_x.min()) & (expected <= world_x.max())
    np.testing.assert_allclose(mi.tensor[0].numpy()[inside], expected[inside], atol=1e-4)


def test_relevance_sum_is_preserved_for_random_relevance(example4d: Scan):
    mi = to_model(example4d, InputSpec(spacing=(3.0, 2.5, 4.0), shape=(90, 64, 16), channels=3, **CENTRED))
    relevance = torch.randn(mi.tensor.shape, generator=torch.Generator().manual_seed(0))
    back = to_scan(relevance, mi)
    assert back.sum(dtype=np.float64) == pytest.approx(float(relevance.double().sum()), rel=1e-5, abs=1e-3)


def test_to_scan_is_the_exact_transpose_of_the_model_map(example4d: Scan):
    """<A x, r> == <x, A^T r>: relevance goes back through the very weights that built the model input."""
    spec = InputSpec(spacing=(3.0, 3.0, 3.0), shape=(50, 40, 20), normalization="none", channels=2,
                     orientation="PSL", **CENTRED)
    mi = to_model(example4d, spec)
    r = torch.rand(mi.tensor.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    lhs = float((mi.tensor.double() * r.double()).sum())
    rhs = float((example4d.data.astype(np.float64) * to_scan(r, mi).astype(np.float64)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-6)


@pytest.mark.parametrize("codes", ["RAS", "LAS", "PIR", "SLA", "IPL"])
def test_reorientation_is_exact_and_round_trips(anatomical: Scan, codes: str):
    mi = to_model(anatomical, InputSpec(orientation=codes, normalization="none", **CENTRED))
    change = ornt_transform(io_orientation(anatomical.affine), axcodes2ornt(tuple(codes)))
    np.testing.assert_array_equal(mi.tensor[0].numpy(), apply_orientation(anatomical.data, change))
    assert nib.aff2axcodes(mi.space.affine) == tuple(codes)
    reoriented = nib.Nifti1Image(anatomical.data, anatomical.affine).as_reoriented(change)
    np.testing.assert_allclose(mi.space.affine, reoriented.affine)
    np.testing.assert_array_equal(to_scan(mi.tensor, mi), anatomical.data)


def test_no_orientation_keeps_the_stored_voxel_order(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(orientation=None, normalization="none", **CENTRED))
    np.testing.assert_array_equal(mi.tensor[0].numpy(), anatomical.data)
    np.testing.assert_array_equal(mi.space.affine, anatomical.affine)


def test_las_and_ras_copies_of_the_same_data_give_the_same_model_tensor(nibabel_data: Path):
    img = nib.load(nibabel_data / "anatomical.nii")
    ras = nib.as_closest_canonical(img)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    las_scan = _scan(img.get_fdata(dtype=np.float32), img.affine)
    ras_scan = _scan(ras.get_fdata(dtype=np.float32), ras.affine)
    spec = InputSpec(spacing=(3.0, 2.5, 3.5), shape=(24, 30, 20), normalization="zscore", **CENTRED)
    las_mi, ras_mi = to_model(las_scan, spec), to_model(ras_scan, spec)
    torch.testing.assert_close(las_mi.tensor, ras_mi.tensor, rtol=0, atol=1e-6)
    np.testing.assert_allclose(las_mi.space.affine, ras_mi.space.affine)


def test_resampling_matches_torch_trilinear_interpolation_when_upsampling():
    data = np.random.default_rng(2).random((8, 10, 6)).astype(np.float32)
    scan = _scan(data, np.diag([1.0, 1.0, 1.0, 1.0]))
    mi = to_model(scan, InputSpec(spacing=(0.5, 0.5, 0.5), normalization="none", **CENTRED))
    expected = F.interpolate(torch.from_numpy(data)[None, None], scale_factor=2, mode="trilinear",
                             align_corners=False)[0]
    torch.testing.assert_close(mi.tensor, expected, rtol=0, atol=1e-6)


def test_downsampling_weights_match_torch_antialiased_interpolation():
    image = torch.rand(32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = torch.from_numpy(Linear(n_in=32, n_out=8, start=1.5, step=4.0, half_width=4.0).matrix())
    expected = F.interpolate(image[None, None], size=(8, 8), mode="bilinear", antialias=True,
                             align_corners=False)[0, 0]
    torch.testing.assert_close(w @ image @ w.T, expected, rtol=0, atol=1e-6)


def test_weight_rows_sum_to_one_including_padding_outside_the_scan():
    w = Linear(n_in=5, n_out=12, start=-3.3, step=0.9).matrix()
    np.testing.assert_allclose(w.sum(axis=1), np.ones(12))
    assert w[0, 0] == 1.0 and w[-1, -1] == 1.0  # wholly outside: the nearest edge voxel


def test_downsampling_by_four_spreads_relevance_over_every_covered_voxel(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(spacing=(8.0, 8.0, 8.0), normalization="none", **CENTRED))
    assert mi.tensor.shape == (1, 8, 10, 6)
    steps = [m.steps[0] for m in mi.space.maps]
    assert all(s.step == 4.0 and s.half_width == 4.0 for s in steps)
    # The model positions land on whole scan voxels, so plain trilinear would touch only one voxel in 4³.
    assert all(float(s.start).is_integer() for s in steps)
    back = to_scan(torch.ones_like(mi.tensor), mi)
    assert (back > 0).all()
    assert back.sum(dtype=np.float64) == pytest.approx(mi.tensor.numel(), rel=1e-6)
    point = torch.zeros_like(mi.tensor)
    point[0, 4, 5, 3] = 1.0
    assert np.count_nonzero(to_scan(point, mi)) == 7**3


def test_zscore_uses_nonzero_voxels_and_keeps_background_zero():
    data = np.zeros((6, 6, 6), dtype=np.float32)
    data[1:5, 1:5, 1:5] = np.random.default_rng(4).normal(100.0, 15.0, (4, 4, 4))
    out = normalise(torch.from_numpy(data)[None], InputSpec(normalization="zscore"))[0].numpy()
    inside = data != 0
    expected = (data[inside] - data[inside].mean(dtype=np.float64)) / data[inside].std(dtype=np.float64)
    np.testing.assert_allclose(out[inside], expected, atol=1e-5)
    assert (out[~inside] == 0).all()


def test_percentile_clips_and_scales_to_unit_range():
    data = np.random.default_rng(5).gamma(2.0, 50.0, (20, 20, 20)).astype(np.float32)
    out = normalise(torch.from_numpy(data)[None], InputSpec(normalization="percentile", clip=(1.0, 99.0)))[0].numpy()
    lo, hi = np.percentile(data.astype(np.float64), [1.0, 99.0])
    np.testing.assert_allclose(out, (np.clip(data, lo, hi) - lo) / (hi - lo), atol=1e-5)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_minmax_scales_to_unit_range_and_none_leaves_values():
    data = torch.tensor([[[-3.0, 1.0], [5.0, 0.0]]])
    torch.testing.assert_close(normalise(data, InputSpec(normalization="minmax")),
                               torch.tensor([[[0.0, 0.5], [1.0, 0.375]]]))
    assert normalise(data, InputSpec(normalization="none")) is data


@pytest.mark.parametrize("method", ["zscore", "percentile", "minmax", "none"])
@pytest.mark.parametrize("value", [0.0, 7.5])
def test_constant_image_gives_finite_values(method: str, value: float):
    scan = _scan(np.full((5, 6, 7), value), np.diag([2.0, 2.0, 2.0, 1.0]))
    mi = to_model(scan, InputSpec(normalization=method, spacing=(3.0, 3.0, 3.0), **CENTRED))
    assert torch.isfinite(mi.tensor).all()
    if method != "none":
        assert (mi.tensor == 0).all()


def test_2d_spec_feeds_every_axial_slice_in_plane_resampled(anatomical: Scan):
    spec = InputSpec(dims=2, channels=3, shape=(48, 56), spacing=(1.5, 1.5), slice_axis="S", **CENTRED)
    mi = to_model(anatomical, spec)
    assert mi.tensor.shape == (25, 3, 48, 56)
    assert mi.space.slice_axis == 2
    assert len(mi.notes) == 1 and mi.notes[0].startswith("grey image repeated into the model's 3 colour channels")
    torch.testing.assert_close(mi.tensor[:, 0], mi.tensor[:, 2])
    _assert_point_lands_at_world(anatomical, mi, (11, 1, 20, 30), (20, 30, 11))
    relevance = torch.randn(mi.tensor.shape, generator=torch.Generator().manual_seed(6))
    assert to_scan(relevance, mi).sum(dtype=np.float64) == pytest.approx(float(relevance.double().sum()),
                                                                         rel=1e-5, abs=1e-3)


def test_2d_spec_native_grid_slices_are_the_ras_volume_slices(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(dims=2, orientation=None, normalization="none", slice_axis="R", **CENTRED))
    ras = nib.as_closest_canonical(nib.Nifti1Image(anatomical.data, anatomical.affine)).get_fdata()
    assert mi.tensor.shape == (33, 1, 41, 25)
    np.testing.assert_array_equal(mi.tensor[:, 0].numpy(), ras.astype(np.float32))
    np.testing.assert_array_equal(to_scan(mi.tensor, mi), anatomical.data)


def test_2d_spec_on_a_single_axial_slice(anatomical: Scan):
    scan = _scan(anatomical.data[:, :, 12:13], anatomical.affine @ _translate(0, 0, 12))
    assert scan.is_2d
    mi = to_model(scan, InputSpec(dims=2, channels=2, shape=(64, 64), **CENTRED))
    assert mi.tensor.shape == (1, 2, 64, 64)
    back = to_scan(torch.ones_like(mi.tensor), mi)
    assert back.shape == (33, 41, 1)
    assert back.sum(dtype=np.float64) == pytest.approx(2 * 64 * 64, rel=1e-6)


def test_2d_spec_on_a_single_sagittal_slice_cuts_through_its_own_plane(anatomical: Scan):
    # A sagittal slice stored as (J, K, 1): its columns are the volume's A and S axes, its normal is L.
    aff = anatomical.affine @ _translate(16, 0, 0)
    affine = np.column_stack([aff[:, 1], aff[:, 2], aff[:, 0], aff[:, 3]])
    scan = _scan(anatomical.data[16:17, :, :].transpose(1, 2, 0), affine)
    mi = to_model(scan, InputSpec(dims=2, shape=(48, 32), normalization="none", slice_axis="S", **CENTRED))
    assert mi.tensor.shape == (1, 1, 48, 32)
    assert mi.notes and "slice axis S" in mi.notes[0]
    back = to_scan(torch.ones_like(mi.tensor), mi)
    assert back.shape == (41, 25, 1)
    assert back.sum(dtype=np.float64) == pytest.approx(48 * 32, rel=1e-6)


def test_3d_spec_on_a_single_slice_is_a_one_slice_volume(anatomical: Scan):
    scan = _scan(anatomical.data[:, :, 12:13], anatomical.affine @ _translate(0, 0, 12))
    mi = to_model(scan, InputSpec(spacing=(2.0, 2.0, 2.0), shape=(32, 40, 4), normalization="none", **CENTRED))
    assert mi.tensor.shape == (1, 32, 40, 4)
    torch.testing.assert_close(mi.tensor[0, :, :, 0], mi.tensor[0, :, :, 3])
    back = to_scan(torch.ones_like(mi.tensor), mi)
    assert back.shape == (33, 41, 1)
    assert back.sum(dtype=np.float64) == pytest.approx(32 * 40 * 4, rel=1e-6)


def test_model_input_and_its_small_space_pickle_and_map_back_the_same(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(spacing=(3.0, 3.0, 3.0), shape=(20, 20, 20), **CENTRED))
    copy = pickle.loads(pickle.dumps(mi))
    relevance = torch.rand(mi.tensor.shape, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(to_scan(relevance, copy), to_scan(relevance, mi))
    space = pickle.loads(pickle.dumps(mi.space))
    np.testing.assert_array_equal(to_scan(relevance, space), to_scan(relevance, mi))
    assert len(pickle.dumps(mi.space)) < 4096


def test_relevance_of_the_wrong_shape_is_refused(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(**CENTRED))
    with pytest.raises(ValueError, match="relevance has shape"):
        to_scan(mi.tensor[0], mi)


def test_absurd_model_grid_is_refused_before_allocation(anatomical: Scan):
    with pytest.raises(ScanError, match="too large") as err:
        to_model(anatomical, InputSpec(spacing=(0.01, 0.01, 0.01), **CENTRED))
    assert err.value.stage == "preprocess" and err.value.path == "anatomical"


def test_degenerate_affine_is_a_scan_error():
    scan = _scan(np.ones((4, 4, 4)), np.zeros((4, 4)))
    with pytest.raises(ScanError, match="orientation"):
        to_model(scan, InputSpec(**CENTRED))


def test_device_cpu_is_honoured(anatomical: Scan):
    mi = to_model(anatomical, InputSpec(spacing=(3.0, 3.0, 3.0), **CENTRED), device=torch.device("cpu"))
    assert mi.tensor.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_cuda_gives_the_same_tensor_and_relevance_as_cpu(example4d: Scan):
    spec = InputSpec(spacing=(3.0, 3.0, 3.0), shape=(64, 64, 24), channels=2, normalization="percentile", **CENTRED)
    cpu, gpu = to_model(example4d, spec, "cpu"), to_model(example4d, spec, "cuda")
    assert gpu.tensor.device.type == "cuda"
    torch.testing.assert_close(gpu.tensor.cpu(), cpu.tensor, rtol=1e-5, atol=1e-5)
    relevance = torch.rand(cpu.tensor.shape, generator=torch.Generator().manual_seed(8))
    np.testing.assert_allclose(to_scan(relevance.cuda(), gpu), to_scan(relevance, cpu), rtol=1e-5, atol=1e-7)


def _translate(i: float, j: float, k: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = (i, j, k)
    return t
