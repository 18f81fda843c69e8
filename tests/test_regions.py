"""Region tables: exact sums on a synthetic atlas, world-space octants, masks, label tables, class means."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.regions import (
    REGION_COLUMNS,
    atlas_partition,
    builtin_partition,
    by_class_table,
    find_mask,
    head_mask,
    load_atlas,
    load_mask,
    mask_metrics,
    read_label_table,
    region_rows,
    resample_nearest,
    top_region,
    voxel_volume_ml,
)
from mri_lrp.scans.scan import Scan

SAMPLES = Path(__file__).resolve().parents[1] / "sample_scans" / "t1"


def make_scan(data: np.ndarray, affine: np.ndarray, scan_id: str = "s", source: str = "s.nii.gz") -> Scan:
    return Scan(scan_id=scan_id, source=source, kind="nifti", data=np.asarray(data, dtype=np.float32),
                affine=np.asarray(affine, dtype=np.float64))


def flipped_i(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with the first axis reversed (e.g. RAS -> LAS): same world content."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
    return data[::-1].copy(), affine @ flip


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["region_name"]: row for row in rows}


# ------------------------------------------------------------------------------------- synthetic atlas

def atlas_labels() -> np.ndarray:
    """4x4x4 labels: 1 = i<2 (32 voxels), 2 = i>=2 & j<2 (16), 5 = i>=2 & j>=2 & k==0 (4), else 0 (12)."""
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[:2] = 1
    labels[2:, :2] = 2
    labels[2:, 2:, 0] = 5
    return labels


@pytest.fixture
def atlas_files(tmp_path: Path) -> tuple[Path, Path]:
    """The atlas stored LAS (flipped first axis) so the resampling has to go through both affines."""
    data, affine = flipped_i(atlas_labels(), np.eye(4))
    labels_path = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), labels_path)
    table = tmp_path / "atlas.tsv"
    table.write_text("id\tname\n0\tUnknown\n1\tfrontal\n2\tparietal\n7\tunused\n")
    return labels_path, table


def test_atlas_sums_are_exact_on_a_grid_larger_than_the_atlas(atlas_files: tuple[Path, Path]) -> None:
    # Scan: 6x4x4 RAS at 1 mm, the atlas covers i < 4; i = 4, 5 fall outside it and count as background.
    relevance = np.ones((6, 4, 4), dtype=np.float32)
    relevance[:2] = 0.5                    # frontal: 32 voxels x 0.5 = 16
    relevance[2:4, :2] = -1.0              # parietal: 16 voxels x -1 = -16
    relevance[2:4, 2:, 0] = 4.0            # label 5: 4 voxels x 4 = 16
    relevance[2:4, 2:, 1:] = 2.0           # background inside the atlas: 12 voxels x 2 = 24
    relevance[4:] = 0.25                   # background outside the atlas: 32 voxels x 0.25 = 8
    scan = make_scan(np.zeros((6, 4, 4)), np.eye(4))
    atlas = load_atlas(*atlas_files)
    rows = region_rows("s", relevance, atlas_partition(atlas, scan), voxel_volume_ml(scan.affine))

    assert [r["region_name"] for r in rows] == ["background", "frontal", "parietal", "label_5"]
    assert [r["region_id"] for r in rows] == [0, 1, 2, 5]
    table = by_name(rows)
    expected = {"background": (44, 32.0, 32.0, 0.0), "frontal": (32, 16.0, 16.0, 0.0),
                "parietal": (16, -16.0, 0.0, -16.0), "label_5": (4, 16.0, 16.0, 0.0)}
    for name, (voxels, total, pos, neg) in expected.items():
        row = table[name]
        assert row["voxels"] == voxels
        assert row["relevance_sum"] == total
        assert row["relevance_pos"] == pos and row["relevance_neg"] == neg
        assert row["volume_ml"] == pytest.approx(voxels / 1000.0)
        assert row["relevance_fraction"] == pytest.approx(total / 48.0)
        assert row["relevance_density"] == pytest.approx(total / (voxels / 1000.0))
    assert [table[n]["rank"] for n in ("background", "frontal", "label_5", "parietal")] == [1, 2, 3, 4]
    assert all(list(row) == [c for c in REGION_COLUMNS if c != "channel"] for row in rows)  # the writer adds it


def test_atlas_partition_adds_up_on_an_oblique_scan(atlas_files: tuple[Path, Path]) -> None:
    rotation = np.eye(4)
    c, s = np.cos(0.4), np.sin(0.4)
    rotation[:2, :2] = [[c, -s], [s, c]]
    affine = rotation @ np.diag([0.7, 0.7, 0.9, 1.0])
    relevance = np.random.default_rng(0).normal(size=(7, 7, 5)).astype(np.float32)
    scan = make_scan(np.zeros((7, 7, 5)), affine)
    rows = region_rows("s", relevance, atlas_partition(load_atlas(*atlas_files), scan), 1.0)
    assert sum(r["relevance_sum"] for r in rows) == pytest.approx(float(relevance.sum(dtype=np.float64)))
    assert sum(r["voxels"] for r in rows) == relevance.size
    assert sum(r["relevance_fraction"] for r in rows) == pytest.approx(1.0)


def test_nearest_neighbour_resampling_through_affines_matches_world_positions() -> None:
    source = np.arange(4 * 4 * 4).reshape(4, 4, 4)
    source_affine = np.diag([2.0, 2.0, 2.0, 1.0])          # voxel centres at 0, 2, 4, 6 mm
    target_affine = np.eye(4)
    target_affine[:3, 3] = [0.2, 2.1, 3.9]                 # target voxel (i, j, k) at (i+0.2, j+2.1, k+3.9)
    out = resample_nearest(source, source_affine, (3, 3, 3), target_affine, fill=-1)
    # world x = 0.2, 1.2, 2.2 -> source i = 0, 1, 1; y = 2.1, 3.1, 4.1 -> j = 1, 2, 2;
    # z = 3.9, 4.9, 5.9 -> k = 2, 2, 3
    assert out[1, 2, 2] == source[1, 2, 3]
    assert out[0, 0, 0] == source[0, 1, 2]
    far_affine = np.eye(4)
    far_affine[0, 3] = 50.0                                # entirely outside the source image
    assert (resample_nearest(source, source_affine, (2, 2, 2), far_affine, fill=-1) == -1).all()


# -------------------------------------------------------------------------------------- label tables

@pytest.mark.parametrize("text, expected", [
    ("1\tfrontal lobe\n2\tparietal\n", {1: "frontal lobe", 2: "parietal"}),
    ("label,name\n3,\"cingulate, anterior\"\n4,insula\n", {3: "cingulate, anterior", 4: "insula"}),
    ("name,index\nputamen,12\n", {12: "putamen"}),
    ("# FreeSurfer colour table\n#No. Label Name:  R   G   B   A\n\n0   Unknown   0 0 0 0\n"
     "17  Left-Hippocampus  220 216 20 0\n53  Right-Hippocampus 220 216 20 0\n",
     {0: "Unknown", 17: "Left-Hippocampus", 53: "Right-Hippocampus"}),
    ('# ITK-SnAP Label Description File\n    0     0    0    0        0  0  0    "Clear Label"\n'
     '    1   255    0    0        1  1  1    "Tumour core"\n', {0: "Clear Label", 1: "Tumour core"}),
], ids=["tsv-no-header", "csv-quoted", "csv-swapped-header", "freesurfer-lut", "itksnap"])
def test_label_tables_parse_in_every_supported_format(tmp_path: Path, text: str, expected: dict) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(text)
    assert read_label_table(path) == expected


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("id,name\n", "no rows"),
    ("1,frontal\nx2,parietal\n", "line 2: label id 'x2'"),
    ("1,frontal\n1,parietal\n", "named twice"),
    ("1\n", "expected a label id and a name"),
])
def test_bad_label_tables_name_the_file_and_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SettingsError, match=str(path).replace("\\", "\\\\")) as err:
        read_label_table(path)
    assert reason in str(err.value)


def test_bad_atlas_images_are_settings_errors(tmp_path: Path) -> None:
    table = tmp_path / "t.tsv"
    table.write_text("1\ta\n")
    fractional = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, dtype=np.float32), np.eye(4)), fractional)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti file")
    for path, reason in ((fractional, "whole numbers"), (junk, "not a readable"),
                         (tmp_path / "missing.nii.gz", "not found")):
        with pytest.raises(SettingsError, match=reason) as err:
            load_atlas(path, table)
        assert str(path) in str(err.value)
    with pytest.raises(SettingsError, match="label table not found"):
        load_atlas(fractional, tmp_path / "nope.tsv")


# ------------------------------------------------------------------------------------ built-in regions

def phantom_in_world(affine: np.ndarray, shape: tuple[int, int, int],
                     blob_mm: tuple[float, float, float] = (-30.0, 25.0, 20.0)
                     ) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid head centred on the world origin and a relevance blob, sampled at the voxel centres."""
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    world = np.einsum("ab,bijk->aijk", affine[:3, :3], np.stack([ii, jj, kk]).astype(float))
    world += affine[:3, 3, None, None, None]
    x, y, z = world
    head = ((x / 70) ** 2 + (y / 85) ** 2 + (z / 65) ** 2 <= 1).astype(np.float32) * 100.0
    distance2 = (x - blob_mm[0]) ** 2 + (y - blob_mm[1]) ** 2 + (z - blob_mm[2]) ** 2
    relevance = np.exp(-distance2 / (2 * 6.0 ** 2)).astype(np.float32)
    return head, relevance


def centred_affine(shape: tuple[int, int, int], spacing: float,
                   rotation: np.ndarray | None = None) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rotation is None else rotation) * spacing
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def rotation_xyz(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def builtin_table(data: np.ndarray, relevance: np.ndarray, affine: np.ndarray) -> list[dict]:
    scan = make_scan(data, affine)
    return region_rows("s", relevance, builtin_partition(scan), voxel_volume_ml(affine))


def test_blob_on_the_left_anterior_superior_side_lands_there_for_ras_las_and_oblique() -> None:
    shape = (48, 56, 44)
    ras = centred_affine(shape, 4.0)
    head, relevance = phantom_in_world(ras, shape)
    las_head, las_rel = flipped_i(head, ras)[0], flipped_i(relevance, ras)[0]
    las = flipped_i(head, ras)[1]
    oblique = centred_affine(shape, 4.0, rotation_xyz(0.3, -0.2, 0.5))
    obl_head, obl_rel = phantom_in_world(oblique, shape)

    tables = [builtin_table(head, relevance, ras), builtin_table(las_head, las_rel, las),
              builtin_table(obl_head, obl_rel, oblique)]
    for rows in tables:
        assert top_region(rows) == "left_anterior_superior"
        assert by_name(rows)["left_anterior_superior"]["relevance_fraction"] > 0.95
        assert len(rows) == 9 and rows[0]["region_name"] == "outside_head"
    # A LAS copy of the same scan gives the same table (to float rounding of the sums).
    for a, b in zip(tables[0], tables[1], strict=True):
        assert a["region_name"] == b["region_name"] and a["voxels"] == b["voxels"]
        assert a["relevance_sum"] == pytest.approx(b["relevance_sum"], rel=1e-9, abs=1e-12)


def test_builtin_octants_sit_around_the_head_centre_not_the_grid_centre() -> None:
    # The head is shifted 40 mm to the right inside the grid; its left half must still be "left".
    shape = (40, 20, 20)
    affine = centred_affine(shape, 4.0)
    data = np.zeros(shape, dtype=np.float32)
    data[20:36, 4:16, 4:16] = 100.0                        # world x from 2 to 62 mm; centre 32 mm
    rows = by_name(builtin_table(data, np.ones(shape, np.float32), affine))
    left = sum(r["voxels"] for n, r in rows.items() if n.startswith("left"))
    right = sum(r["voxels"] for n, r in rows.items() if n.startswith("right"))
    assert left == right == 16 * 12 * 12 // 2
    assert rows["outside_head"]["voxels"] == data.size - 16 * 12 * 12


def test_head_mask_fills_dark_tissue_enclosed_by_bright_tissue() -> None:
    data = np.full((30, 30, 30), 2.0, dtype=np.float32)    # background noise level
    data[5:25, 5:25, 5:25] = 100.0                         # bright shell...
    data[9:21, 9:21, 9:21] = 1.0                           # ...around a dark core (skull, CSF, necrosis)
    mask = head_mask(data)
    assert mask[9:21, 9:21, 9:21].all()
    assert mask.sum() == 20 ** 3


def test_single_slice_scans_get_two_part_region_names() -> None:
    shape = (32, 32, 1)
    affine = centred_affine(shape, 3.0)
    head, relevance = phantom_in_world(affine, shape, blob_mm=(-30.0, 25.0, 0.0))
    rows = builtin_table(head, relevance, affine)
    assert [r["region_name"] for r in rows] == ["outside_head", "left_posterior", "left_anterior",
                                                "right_posterior", "right_anterior"]
    assert top_region(rows) == "left_anterior"
    # A slice stored without a slice direction (zero third column) still drops the axis along its normal.
    flat = affine.copy()
    flat[:3, 2] = 0.0
    assert len(builtin_table(head, relevance, flat)) == 5


# ----------------------------------------------------------------------------------------------- masks

def test_mask_rows_form_a_second_partition_that_adds_up() -> None:
    relevance = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10.0
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[1, :, :2] = True
    scan = make_scan(np.ones((2, 3, 4)), np.eye(4))
    rows = region_rows("s", relevance, builtin_partition(scan), 0.001, mask=mask)
    inside, outside = by_name(rows)["inside_mask"], by_name(rows)["outside_mask"]
    assert inside["voxels"] == 6 and outside["voxels"] == 18
    assert inside["relevance_sum"] == float(relevance[mask].sum())
    assert inside["relevance_sum"] + outside["relevance_sum"] == pytest.approx(float(relevance.sum()))
    assert {inside["rank"], outside["rank"]} == {1, 2}
    assert top_region(rows) != "inside_mask"


@pytest.mark.parametrize("values, expected_accuracy, expected_pointing", [
    ({(0, 0, 0): 3.0, (1, 1, 1): 1.0, (1, 0, 0): -5.0}, 0.75, True),
    ({(0, 0, 0): 1.0, (1, 1, 1): 3.0}, 0.25, False),
    ({}, 0.0, False),
    ({(0, 0, 0): -2.0}, 0.0, False),
], ids=["peak-inside", "peak-outside", "zero-relevance", "only-negative"])
def test_mask_metrics_on_known_cases(values: dict, expected_accuracy: float, expected_pointing: bool) -> None:
    relevance = np.zeros((2, 2, 2), dtype=np.float32)
    for index, value in values.items():
        relevance[index] = value
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[0] = True                                       # 4 voxels of 8 ml each
    metrics = mask_metrics(relevance, mask, 8.0)
    assert metrics == {"relevance_mass_accuracy": pytest.approx(expected_accuracy),
                       "pointing_game": expected_pointing, "mask_volume_ml": 32.0}


def test_zero_total_relevance_gives_zero_fractions_not_nan() -> None:
    scan = make_scan(np.ones((2, 2, 2)), np.eye(4))
    relevance = np.zeros((2, 2, 2), dtype=np.float32)
    relevance[0, 0, 0], relevance[1, 1, 1] = 1.0, -1.0
    rows = region_rows("s", relevance, builtin_partition(scan), 0.001)
    assert all(row["relevance_fraction"] == 0.0 for row in rows)
    assert any(row["relevance_sum"] != 0.0 for row in rows)


def test_find_mask_matches_by_path_scan_id_or_stem_and_refuses_to_guess(tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    (masks / "sub-1").mkdir(parents=True)
    (masks / "sub-1" / "t1.nii.gz").write_bytes(b"")
    (masks / "sub-2_t1_mask.nii.gz").write_bytes(b"")
    (masks / "t2.nii").write_bytes(b"")
    (masks / "series-9").mkdir()
    (masks / "series-9" / "IM0001").write_bytes(b"")
    scan = make_scan(np.zeros((1, 1, 1)), np.eye(4), scan_id="sub-1_t1", source="sub-1/t1.nii.gz")
    assert find_mask(masks, scan) == masks / "sub-1" / "t1.nii.gz"
    scan = make_scan(np.zeros((1, 1, 1)), np.eye(4), scan_id="sub-2_t1", source="sub-2/t1.nii.gz")
    assert find_mask(masks, scan) == masks / "sub-2_t1_mask.nii.gz"
    scan = make_scan(np.zeros((1, 1, 1)), np.eye(4), scan_id="x_t2", source="x/t2.nii.gz")
    assert find_mask(masks, scan) == masks / "t2.nii"
    scan = make_scan(np.zeros((1, 1, 1)), np.eye(4), scan_id="dicom_series-9", source="dicom/series-9")
    assert find_mask(masks, scan) == masks / "series-9"
    scan = make_scan(np.zeros((1, 1, 1)), np.eye(4), scan_id="other", source="other.nii.gz")
    assert find_mask(masks, scan) is None
    (masks / "more").mkdir()
    (masks / "more" / "t2.nii.gz").write_bytes(b"")
    with pytest.raises(ScanError, match="several masks match 't2'"):
        find_mask(masks, make_scan(np.zeros((1, 1, 1)), np.eye(4), scan_id="x_t2", source="x/t2.nii.gz"))


def test_load_mask_resamples_a_las_mask_onto_a_ras_scan(tmp_path: Path) -> None:
    mask = np.zeros((6, 5, 4), dtype=np.uint8)
    mask[0:2, 1:3, 1] = 4                                  # any non-zero label counts
    stored, affine = flipped_i(mask, np.eye(4))
    path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), path)
    loaded = load_mask(path, make_scan(np.zeros((6, 5, 4)), np.eye(4)))
    assert loaded.dtype == bool
    np.testing.assert_array_equal(loaded, mask > 0)


def test_unreadable_mask_is_a_scan_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.nii.gz"
    path.write_bytes(b"garbage")
    with pytest.raises(ScanError, match="m.nii.gz"):
        load_mask(path, make_scan(np.zeros((2, 2, 2)), np.eye(4)))


@pytest.mark.skipif(not (SAMPLES / "masks" / "sub-05_T1w.nii.gz").exists(),
                    reason="sample scans not generated")
def test_mask_metrics_on_a_sample_scan_with_its_ground_truth_mask() -> None:
    img = nib.load(SAMPLES / "sub-05_T1w.nii.gz")
    scan = make_scan(img.get_fdata(dtype=np.float32), img.affine, scan_id="sub-05_T1w",
                     source="sub-05_T1w.nii.gz")
    path = find_mask(SAMPLES / "masks", scan)
    assert path == SAMPLES / "masks" / "sub-05_T1w.nii.gz"
    mask = load_mask(path, scan)
    assert 0 < mask.sum() < mask.size
    # Relevance exactly on the lesion scores perfectly; a blob on the mirrored side of the head misses.
    on_lesion = mask.astype(np.float32)
    off_lesion = np.flip(on_lesion, axis=0) * (~mask)
    voxel_ml = voxel_volume_ml(scan.affine)
    hit = mask_metrics(on_lesion, mask, voxel_ml)
    miss = mask_metrics(off_lesion, mask, voxel_ml)
    assert hit["relevance_mass_accuracy"] == 1.0 and hit["pointing_game"] is True
    assert miss["relevance_mass_accuracy"] == 0.0 and miss["pointing_game"] is False
    assert hit["mask_volume_ml"] == pytest.approx(float(mask.sum()) * voxel_ml)
    rows = region_rows(scan.scan_id, on_lesion, builtin_partition(scan), voxel_ml, mask=mask)
    assert by_name(rows)["inside_mask"]["relevance_fraction"] == pytest.approx(1.0)
    assert by_name(rows)["outside_head"]["relevance_sum"] == 0.0     # the lesion lies inside the head


# ------------------------------------------------------------------------------------------- by class

def test_by_class_table_averages_per_predicted_class_and_region(tmp_path: Path) -> None:
    summary = [{"scan_id": "a", "predicted_class": "glioma"}, {"scan_id": "b", "predicted_class": "glioma"},
               {"scan_id": "c", "predicted_class": "meningioma"}, {"scan_id": "d", "predicted_class": ""}]
    regions = []
    for scan_id, values in (("a", (1.0, 3.0)), ("b", (3.0, 5.0)), ("c", (10.0, 0.0)), ("d", (99.0, 99.0))):
        for name, value in zip(("left", "right"), values, strict=True):
            regions.append({"scan_id": scan_id, "region_name": name, "relevance_sum": value,
                            "relevance_fraction": value / 10, "relevance_density": value * 2})
    # Rows read back from CSV are strings: the table must not care.
    path = tmp_path / "regions.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(regions[0]))
        writer.writeheader()
        writer.writerows(regions)
    with path.open() as f:
        table = by_class_table(summary, list(csv.DictReader(f)))
    assert [(r["predicted_class"], r["region_name"], r["scans"]) for r in table] == [
        ("glioma", "left", 2), ("glioma", "right", 2), ("meningioma", "left", 1), ("meningioma", "right", 1)]
    glioma_right = table[1]
    assert glioma_right["mean_relevance_sum"] == pytest.approx(4.0)
    assert glioma_right["mean_relevance_fraction"] == pytest.approx(0.4)
    assert glioma_right["mean_relevance_density"] == pytest.approx(8.0)


def test_by_class_table_says_which_partition_each_mean_belongs_to() -> None:
    summary = [{"scan_id": s, "predicted_class": "glioma"} for s in ("a", "b")]
    regions = [{"scan_id": s, "partition": part, "region_name": name, "relevance_sum": f,
                "relevance_fraction": f, "relevance_density": 0.0}
               for s, (left, inside) in (("a", (0.3, 0.9)), ("b", (0.5, 0.6)))
               for part, name, f in (("builtin", "left", left), ("builtin", "right", 1 - left),
                                     ("mask", "inside_mask", inside), ("mask", "outside_mask", 1 - inside))]
    table = by_class_table(summary, regions)
    assert [(r["partition"], r["region_name"]) for r in table] == [
        ("builtin", "left"), ("builtin", "right"), ("mask", "inside_mask"), ("mask", "outside_mask")]
    for part in ("builtin", "mask"):  # each partition's means add up to 1; both together would give 2
        assert sum(r["mean_relevance_fraction"] for r in table if r["partition"] == part) == pytest.approx(1.0)


def test_by_class_table_keeps_target_classes_apart() -> None:
    summary = [{"scan_id": "a", "predicted_class": "glioma"}]
    regions = [{"scan_id": "a", "target_class": t, "region_name": "left", "relevance_sum": v,
                "relevance_fraction": 0.0, "relevance_density": 0.0}
               for t, v in (("glioma", 1.0), ("none", -1.0))]
    table = by_class_table(summary, regions)
    assert [(r["target_class"], r["mean_relevance_sum"]) for r in table] == [("glioma", 1.0), ("none", -1.0)]


def _has_scan_readers() -> bool:
    import mri_lrp.scans

    return hasattr(mri_lrp.scans, "discover") and hasattr(mri_lrp.scans, "read_scan")


@pytest.mark.skipif(not (SAMPLES / "dicom" / "sub-01").is_dir() or not _has_scan_readers(),
                    reason="needs the sample DICOM series and the package's scan readers")
def test_a_dicom_series_folder_loads_as_a_mask_on_its_own_grid() -> None:
    from mri_lrp.scans import discover, read_scan

    folder = SAMPLES / "dicom" / "sub-01"
    refs, _ = discover([str(folder)], volume=None)
    scan = read_scan(refs[0])
    mask = load_mask(folder, scan)
    np.testing.assert_array_equal(mask, scan.data != 0)
    # Given as the root itself its source is "."; the series folder's name still finds its NIfTI mask.
    assert find_mask(SAMPLES / "masks", scan) == (SAMPLES / "masks" / "sub-01.nii.gz").resolve()


# ------------------------------------------------------------------ one labelled pass vs per-region sums

def reference_octant_rows(scan: Scan, relevance: np.ndarray) -> dict[str, tuple[int, float, float, float]]:
    """Per region, the slow way: every voxel's world position by a full matrix product, the head centre as
    the mean of those inside the head, each region's voxels picked by a boolean mask and summed on its own."""
    shape = scan.shape
    ijk = np.indices(shape).reshape(3, -1).T.astype(np.float64)
    world = ijk @ scan.affine[:3, :3].T + scan.affine[:3, 3]
    head = head_mask(scan.data).reshape(-1)
    centre = world[head].mean(axis=0)
    words = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))
    names = np.array(["_".join(words[a][int(world[v, a] - centre[a] > -1e-6)] for a in range(3)) if head[v]
                      else "outside_head" for v in range(len(world))])
    rel = relevance.reshape(-1).astype(np.float64)
    out = {}
    for name in np.unique(names):
        pick = rel[names == name]
        out[str(name)] = (pick.size, float(pick.sum()), float(pick[pick > 0].sum()), float(pick[pick < 0].sum()))
    return out


@pytest.mark.parametrize("rotation", [None, rotation_xyz(0.3, -0.2, 0.5)], ids=["axis-aligned", "oblique"])
def test_labelled_pass_equals_the_per_region_formula(rotation: np.ndarray | None) -> None:
    rng = np.random.default_rng(3)
    shape = (14, 12, 10)
    data = np.zeros(shape, dtype=np.float32)
    data[2:12, 2:10, 1:9] = 100.0 + rng.random((10, 8, 8)) * 10
    relevance = rng.standard_normal(shape).astype(np.float32)
    scan = make_scan(data, centred_affine(shape, 1.5, rotation))
    rows = region_rows("s", relevance, builtin_partition(scan), voxel_volume_ml(scan.affine))
    want = reference_octant_rows(scan, relevance)
    got = {r["region_name"]: (r["voxels"], r["relevance_sum"], r["relevance_pos"], r["relevance_neg"])
           for r in rows if r["voxels"]}
    assert got.keys() == want.keys()
    for name, (voxels, total, pos, neg) in want.items():
        assert got[name][0] == voxels
        assert got[name][1:] == pytest.approx((total, pos, neg), rel=1e-9, abs=1e-9), name


def test_atlas_and_mask_rows_equal_the_per_region_formula_and_carry_their_partition(
        atlas_files: tuple[Path, Path]) -> None:
    rng = np.random.default_rng(4)
    scan = make_scan(np.zeros((6, 4, 4)), np.eye(4))
    relevance = rng.standard_normal((6, 4, 4)).astype(np.float32)
    mask = np.zeros((6, 4, 4), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    atlas = load_atlas(*atlas_files)
    rows = region_rows("s", relevance, atlas_partition(atlas, scan), 1.0, mask=mask)
    labels = resample_nearest(atlas.labels, atlas.affine, scan.shape, scan.affine, fill=0)
    rel = relevance.astype(np.float64)
    for row in rows:
        if row["partition"] == "atlas":
            pick = rel[labels == row["region_id"]]
        else:
            assert row["partition"] == "mask"
            pick = rel[mask == bool(row["region_id"])]
        assert row["voxels"] == pick.size
        assert row["relevance_sum"] == pytest.approx(pick.sum(), abs=1e-9)
        assert row["relevance_pos"] == pytest.approx(pick[pick > 0].sum(), abs=1e-9)
        assert row["relevance_neg"] == pytest.approx(pick[pick < 0].sum(), abs=1e-9)
    assert [r["partition"] for r in rows].count("mask") == 2
    assert list(rows[0])[:3] == ["scan_id", "partition", "region_id"]


def test_atlas_label_image_is_resampled_once_per_scan_geometry(atlas_files: tuple[Path, Path]) -> None:
    atlas = load_atlas(*atlas_files)
    first = atlas_partition(atlas, make_scan(np.zeros((6, 4, 4)), np.eye(4)))
    same_grid = atlas_partition(atlas, make_scan(np.ones((6, 4, 4)), np.eye(4), scan_id="t"))
    shifted = np.eye(4)
    shifted[0, 3] = 1.0
    other = atlas_partition(atlas, make_scan(np.zeros((6, 4, 4)), shifted))
    assert same_grid is first and other is not first
    assert not np.array_equal(other.index, first.index)


def test_mask_metrics_from_the_rows_equal_the_direct_ones() -> None:
    rng = np.random.default_rng(5)
    scan = make_scan(rng.random((8, 8, 8)) * 100, np.eye(4))
    relevance = rng.standard_normal((8, 8, 8)).astype(np.float32)
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[2:5, 3:7, 1:4] = True
    rows = region_rows("s", relevance, builtin_partition(scan), 0.001, mask=mask)
    direct = mask_metrics(relevance, mask, 0.001)
    from_rows = mask_metrics(relevance, mask, 0.001, rows)
    assert from_rows["pointing_game"] == direct["pointing_game"]
    assert from_rows["mask_volume_ml"] == pytest.approx(direct["mask_volume_ml"])
    assert from_rows["relevance_mass_accuracy"] == pytest.approx(direct["relevance_mass_accuracy"], rel=1e-12)


def reference_head_fill(bright: np.ndarray) -> np.ndarray:
    """Inside = some bright voxel at or before it and some at or after it, on every axis: one voxel at a time."""
    inside = np.zeros(bright.shape, dtype=bool)
    for i, j, k in np.ndindex(bright.shape):
        inside[i, j, k] = (bright[:i + 1, j, k].any() and bright[i:, j, k].any()
                           and bright[i, :j + 1, k].any() and bright[i, j:, k].any()
                           and bright[i, j, :k + 1].any() and bright[i, j, k:].any())
    return inside


@pytest.mark.parametrize("shape", [(9, 7, 5), (17, 1, 12), (3, 11, 1), (1, 1, 1)])
def test_head_mask_fills_what_bright_voxels_enclose_along_every_axis(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    data = np.where(rng.random(shape) > 0.55, 100.0, 0.0).astype(np.float32)
    low, high = np.percentile(data, [2.0, 98.0])
    assert np.array_equal(head_mask(data), reference_head_fill(data > low + 0.1 * (high - low)))
