"""Relevance per region: atlas labels, built-in world-space octants, tumour masks, and their sums.

A *partition* (``partition``) gives every voxel of a scan exactly one region, so the region sums of a partition
always add up to the scan's total relevance. Regions come from a registered atlas (``atlas``: resampled
nearest-neighbour through the two affines), or, without one, from the head's octants in world RAS coordinates
(``builtin``), which makes the table the same for a LAS and a RAS copy of one scan. A tumour mask (``masks``)
adds a second partition: ``inside_mask`` and ``outside_mask``. ``sums`` turns a map into one scan's rows;
``by_class`` averages the rows of a run per class.

Conventions chosen here (the CSV reader can rely on them):
- ``partition`` says which set a row belongs to: ``builtin`` (octants), ``atlas`` or ``mask``; each set adds up
  to the scan's total on its own, so sums are grouped by (scan, partition).
- ``channel`` is ``all`` for rows of the scan's relevance; a multi-channel case adds one row set per channel
  (its own map, fractions of its own total), so sums are grouped by (scan, partition, channel).
- ``region_name`` is unique within a scan; ``region_id`` is the label value inside its own partition.
- Atlas label 0 and every voxel that falls outside the atlas image are region 0, ``background``.
- ``relevance_fraction`` is 0 for every region when the scan's total relevance is exactly 0 (nothing to share
  out); ``relevance_density`` is 0 for a region with no voxels.
- ``rank`` is 1 for the region with the largest ``relevance_sum`` within its partition (ties: lower id first).
"""

from mri_lrp.regions.atlas import BACKGROUND, Atlas, atlas_partition, load_atlas, read_label_table
from mri_lrp.regions.builtin import IMAGE_REGIONS, OUTSIDE_HEAD, builtin_partition, head_mask
from mri_lrp.regions.by_class import BY_CLASS_COLUMNS, by_class_table
from mri_lrp.regions.masks import (
    INSIDE_MASK,
    MASK_REGION_NAMES,
    OUTSIDE_MASK,
    find_mask,
    load_mask,
    mask_partition,
)
from mri_lrp.regions.partition import Partition, resample_nearest, voxel_volume_ml
from mri_lrp.regions.sums import REGION_COLUMNS, mask_metrics, region_rows, top_region

__all__ = [
    "BACKGROUND", "BY_CLASS_COLUMNS", "IMAGE_REGIONS", "INSIDE_MASK", "MASK_REGION_NAMES", "OUTSIDE_HEAD",
    "OUTSIDE_MASK", "REGION_COLUMNS", "Atlas", "Partition", "atlas_partition", "builtin_partition",
    "by_class_table", "find_mask", "head_mask", "load_atlas", "load_mask", "mask_metrics", "mask_partition",
    "read_label_table", "region_rows", "resample_nearest", "top_region", "voxel_volume_ml",
]
