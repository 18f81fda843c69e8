"""The by-class table of a run: mean relevance per region over the scans of each predicted (and target) class."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

BY_CLASS_COLUMNS = ["predicted_class", "target_class", "partition", "region_name", "scans", "mean_relevance_sum",
                    "mean_relevance_fraction", "mean_relevance_density"]


def by_class_table(summary_rows: Iterable[Mapping], region_rows: Iterable[Mapping]) -> list[dict]:
    """Mean relevance_sum, fraction and density per (predicted class, target class, region), with scan count.

    Relevance for different target classes is never averaged together: rows carrying ``target_class`` (runs
    with ``--target all``) are grouped by it too; without it the column is empty. Works on fresh rows or rows
    read back from CSV (strings); scans without a predicted class in the summary (failed ones) are left out.
    Classes sort by name; regions keep their first-seen order.
    """
    predicted = {str(row["scan_id"]): str(row["predicted_class"]) for row in summary_rows
                 if row.get("predicted_class") not in (None, "")}
    groups: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    region_order: dict[str, int] = {}
    partition_of: dict[str, str] = {}  # names are unique in a scan; the column says which set a mean sums within
    for row in region_rows:
        cls = predicted.get(str(row["scan_id"]))
        if cls is None or row.get("channel", "all") not in ("all", "", None):  # a case's summed rows only
            continue
        name = str(row["region_name"])
        region_order.setdefault(name, len(region_order))
        partition_of.setdefault(name, str(row.get("partition") or ""))
        key = (cls, str(row.get("target_class") or ""), name)
        groups.setdefault(key, []).append((float(row["relevance_sum"]), float(row["relevance_fraction"]),
                                           float(row["relevance_density"])))
    table = []
    for (cls, target, name) in sorted(groups, key=lambda key: (key[0], key[1], region_order[key[2]])):
        values = np.asarray(groups[(cls, target, name)], dtype=np.float64)
        means = values.mean(axis=0)
        table.append({"predicted_class": cls, "target_class": target, "partition": partition_of[name],
                      "region_name": name,
                      "scans": len(values),
                      "mean_relevance_sum": float(means[0]), "mean_relevance_fraction": float(means[1]),
                      "mean_relevance_density": float(means[2])})
    return table
