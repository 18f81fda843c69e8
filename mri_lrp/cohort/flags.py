"""Per-cluster numbers and the three kinds of shortcut flag, each with its reason.

A flag marks a cluster for a person to look at; it proves nothing by itself. A cluster is flagged when

* **outside**: its members' mean ``relevance_outside_head`` or ``relevance_border`` is at least
  ``OUTSIDE_SHARE`` (the relevance lies mostly in the air, on padding or at the field-of-view edge);
* **purity**: at least ``PURITY`` of its members (and at least ``MIN_CLUSTER`` of them) share a metadata value
  (site, vendor, field strength...) that is not the class name, and so pure a group is unlikely by chance:
  the hypergeometric probability of drawing as many scans with that value from the whole run is below
  ``ALPHA`` divided by the number of (cluster, column) pairs tested in the class (Bonferroni). Columns with
  more than ``MAX_LEVELS`` distinct values (ages, ids) are not tested;
* **focus**: its mean feature map puts at least ``FOCUS_MIN`` of the positive relevance on the same top
  ``FOCUS_SHARE`` of the feature grid's voxels, while the rest of its class puts less than ``1 / FOCUS_RATIO``
  of that share there (a few voxels every member uses and the others do not: a marker, a label, an edge; also a
  lesion that sits in one place in these scans only).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from scipy.stats import hypergeom

OUTSIDE_SHARE = 0.5
PURITY = 0.9
MIN_CLUSTER = 3
ALPHA = 0.05
MAX_LEVELS = 20
FOCUS_SHARE = 0.01
FOCUS_MIN = 0.5
FOCUS_RATIO = 2.0
PROBES = ("relevance_outside_head", "relevance_border")
#: Metadata fields that identify a scan rather than describe it: never purity columns.
KEY_FIELDS = ("scan_id", "source", "case_id", "participant_id", "session")


def purity_columns(metadata: list[dict[str, str]]) -> list[str]:
    """Metadata columns to report purity for, in first-seen order (join keys left out)."""
    columns: list[str] = []
    for meta in metadata:
        columns.extend(c for c in meta if c not in columns and c not in KEY_FIELDS)
    return columns


def testable(column: str, metadata: list[dict[str, str]]) -> bool:
    """A column a purity flag may use: a few distinct values (a category), not one per scan."""
    values = {m.get(column, "") for m in metadata} - {""}
    return 1 <= len(values) <= MAX_LEVELS


def _mean(values: list[Any]) -> float | str:
    numbers = [float(v) for v in values if v not in ("", None)]
    return round(float(np.mean(numbers)), 6) if numbers else ""


def cluster_table(class_name: str, names: list[str], labels: np.ndarray, rows: list[dict[str, Any]],
                  x: np.ndarray, pooled_shape: tuple[int, ...], factor: tuple[int, ...],
                  run_metadata: list[dict[str, str]], columns: list[str]) -> list[dict[str, Any]]:
    """One row per cluster of one class: size, probe means, top region, purity per column, flag and why.

    ``rows``: the members' summary rows with their metadata, in the order of ``labels`` and ``x`` (features).
    ``run_metadata``: every analysed scan's metadata, the population purity is judged against.
    """
    tested = [c for c in columns if testable(c, run_metadata)]
    eligible = [c for c in range(len(names)) if (labels == c).sum() >= MIN_CLUSTER]
    tests = max(1, len(eligible) * len(tested))
    population = {c: Counter(m.get(c, "") for m in run_metadata) for c in tested}
    out = []
    for c, name in enumerate(names):
        members = [r for r, label in zip(rows, labels, strict=True) if label == c]
        size = len(members)
        row: dict[str, Any] = {"cluster": name, "predicted_class": class_name, "size": size,
                               "share_of_class": round(size / len(rows), 6)}
        for probe in PROBES:
            row[probe] = _mean([m.get(probe, "") for m in members])
        regions = Counter(m.get("top_region", "") for m in members if m.get("top_region"))
        row["top_region"] = regions.most_common(1)[0][0] if regions else ""
        why = _outside(row)
        for column in columns:
            counts = Counter(m.get(column, "") for m in members if m.get(column, ""))
            value, count = counts.most_common(1)[0] if counts else ("", 0)
            row[f"purity_{column}"] = round(count / size, 6) if size else ""
            row[f"value_{column}"] = value
            if column in population and c in eligible:
                why.extend(_purity(column, value, count, size, population[column], class_name, tests))
        why.extend(_focus(c, labels, x, pooled_shape, factor))
        row["flag"] = "true" if why else "false"
        row["why"] = "; ".join(why)
        out.append(row)
    return out


def _outside(row: dict[str, Any]) -> list[str]:
    why = []
    head, border = row["relevance_outside_head"], row["relevance_border"]
    if head != "" and head >= OUTSIDE_SHARE:
        why.append(f"outside: {head:.0%} of the members' positive relevance lies outside the head")
    if border != "" and border >= OUTSIDE_SHARE:
        why.append(f"outside: {border:.0%} of the members' positive relevance lies on padding or within a few mm "
                   "of the field-of-view edge")
    return why


def _purity(column: str, value: str, count: int, size: int, population: Counter, class_name: str,
            tests: int) -> list[str]:
    if not value or size == 0 or count / size < PURITY or value.casefold() == class_name.casefold():
        return []
    total = sum(population.values())
    having = population[value]
    if having / total >= PURITY:  # the whole run is this pure: no group stands out
        return []
    p = float(hypergeom.sf(count - 1, total, having, size))
    if p * tests >= ALPHA:
        return []
    return [f"purity: {count} of {size} members have {column} = {value} (against {having / total:.0%} of the "
            f"run; chance of so pure a group p = {p:.1g}, {tests} tests)"]


def _focus(c: int, labels: np.ndarray, x: np.ndarray, pooled_shape: tuple[int, ...],
           factor: tuple[int, ...]) -> list[str]:
    inside, rest = x[labels == c], x[labels != c]
    if not len(inside) or not len(rest):
        return []
    mean = inside.mean(axis=0)
    count = max(1, int(round(FOCUS_SHARE * x.shape[1])))
    top = np.argsort(mean)[-count:]
    focus, elsewhere = float(mean[top].sum()), float(rest.mean(axis=0)[top].sum())
    if focus < FOCUS_MIN or elsewhere * FOCUS_RATIO > focus:
        return []
    peak = np.unravel_index(int(top[-1]), pooled_shape)
    voxel = tuple(int(i * f + f // 2) for i, f in zip(peak, factor, strict=True))
    return [f"focus: the members put {focus:.0%} of their positive relevance on the same {count} of "
            f"{x.shape[1]} feature voxels (peak near model voxel {voxel}); the rest of the class puts "
            f"{elsewhere:.0%} there"]
