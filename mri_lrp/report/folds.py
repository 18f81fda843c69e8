"""A fold ensemble on a scan's page: each fold's prediction and agreement, and how to read the spread."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

#: folds.csv columns the scan page shows, with their headings.
FOLD_TABLE = (("fold", "fold"), ("predicted_class", "own prediction"), ("prob", "p (explained class)"),
              ("relevance_sum", "relevance sum"), ("map_correlation", "correlation with the others' mean"),
              ("checkpoint", "checkpoint"))


def fold_section(row: Mapping[str, str], folds: Sequence[Mapping[str, str]]) -> str:
    """The page's "Folds" section ("" for a one-checkpoint run): agreement figures, then a row per fold."""
    if not folds:
        return ""
    odd = row.get("outlier_fold", "")
    facts = (f"{escape(row.get('folds', str(len(folds))))} folds; the maps and tables above are their mean. "
             f"Prediction vote {escape(row.get('fold_vote', ''))}, spread of p {escape(row.get('prob_std', ''))}, "
             f"map agreement (mean pairwise correlation) {escape(row.get('map_agreement', ''))}, region agreement "
             f"(Kendall's W) {escape(row.get('region_agreement', '')) or 'n/a'}"
             + (f"; <strong>fold {escape(odd)} stands apart</strong>" if odd else "") + ".")
    head = "".join(f"<th scope=\"col\">{escape(title)}</th>" for _, title in FOLD_TABLE)
    outlier = ' class="outlier"'
    body = "".join(
        f"<tr{outlier if odd and r.get('fold') == odd else ''}>"
        + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c, _ in FOLD_TABLE) + "</tr>" for r in folds)
    return (f"<section id=\"folds\"><h2>Folds</h2><p>{facts}</p>"
            f"<table class=\"data folds\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            "<p class=\"hint\">The overlay's bottom row shows each fold's map on the mean's colour scale and the "
            "voxel-wise spread; <code>relevance_fold&lt;k&gt;.nii.gz</code> and <code>relevance_std.nii.gz</code> "
            "below hold them in full.</p></section>")
