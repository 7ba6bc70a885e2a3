"""Reporting student runs: mean ± std over seeds, and the papers' Markdown table with a `last` and a `best` row.

A run reports the **last** evaluation and the **best** one (highest `r_mean`); the best is selected on the test
split, as LoRS does, so it is optimistic. Several seeds give mean and sample standard deviation (ddof=1).

Example:
    >>> print(results_table([("distilled", results)]))  # results of `evaluate_dataset`  # doctest: +SKIP
    | set | epoch | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | r_mean |
    ...
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

BEST_IS_OPTIMISTIC = (
    "best = the evaluation with the highest r_mean, selected on the test split (as LoRS does): optimistic; "
    "last = the final epoch, the honest number."
)
# The six recall numbers in the papers' column order: IR = text->image, TR = image->text.
TABLE_COLUMNS = (
    ("IR@1", "t2i_R@1"),
    ("IR@5", "t2i_R@5"),
    ("IR@10", "t2i_R@10"),
    ("TR@1", "i2t_R@1"),
    ("TR@5", "i2t_R@5"),
    ("TR@10", "i2t_R@10"),
    ("r_mean", "r_mean"),
)


def summarize(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: mean and sample standard deviation (ddof=1; 0 for a single run) over runs.

    Example:
        >>> summarize([{"r_mean": 10.0}, {"r_mean": 12.0}])
        {'r_mean': {'mean': 11.0, 'std': 1.4142135623730951}}
    """
    out = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """`summarize` of the runs' last-epoch and best-epoch metrics: `{"last": ..., "best": ...}`.

    Example:
        >>> summarize_runs([{"last": {"r_mean": 10.0}, "best": {"r_mean": 12.0}}])["best"]
        {'r_mean': {'mean': 12.0, 'std': 0.0}}
    """
    return {which: summarize([run[which] for run in runs]) for which in ("last", "best")}


def mean_std_cell(stats: dict[str, float]) -> str:
    """Formats `{"mean": m, "std": s}` as a table cell, `"m ± s"` with one decimal."""
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def results_table(
    rows: Sequence[tuple[str, dict[str, Any]]] | Mapping[str, dict[str, Any]], with_epochs: bool = False
) -> str:
    """A Markdown table like the papers' (IR = text->image, TR = image->text), a `last` and a `best` row per set.

    Args:
        rows: (label, results of `evaluate_dataset` or `RetrievalEvaluator.evaluate`) pairs, or a mapping
            label -> results.
        with_epochs: the demo's layout: a `pairs (images)` column after the label, and in the epoch column the
            epochs the numbers come from (`last (E)`; `best (e1, e2, ...)`, one per run) instead of the seed count
            after the label.

    Example:
        >>> print(results_table([("random 100", results)]).splitlines()[0])  # doctest: +SKIP
        | set | epoch | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | r_mean |
        >>> print(results_table({"EDGE": results}, with_epochs=True).splitlines()[0])  # doctest: +SKIP
        | set | pairs (images) | epoch | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | r_mean |
    """
    lead = ["set", "pairs (images)", "epoch"] if with_epochs else ["set", "epoch"]
    lines = [_row([*lead, *(name for name, _ in TABLE_COLUMNS)]), "|" + "---|" * (len(lead) + len(TABLE_COLUMNS))]
    for label, results in rows.items() if isinstance(rows, Mapping) else rows:
        runs = results["runs"]
        if with_epochs:
            size = f"{results['train']['num_pairs']} ({results['train']['num_images']})"
            last = f"last ({runs[0]['evaluations'][-1]['epoch']})"
            best = "best (" + ", ".join(str(run["best_epoch"]) for run in runs) + ")"
            first_cells = {"last": [label, size, last], "best": [label, size, best]}
        else:
            name = f"{label} ({len(runs)} seed{'s' if len(runs) != 1 else ''})"
            first_cells = {"last": [name, "last"], "best": [name, "best"]}
        for which in ("last", "best"):
            stats = results["summary"][which]
            lines.append(_row([*first_cells[which], *(mean_std_cell(stats[key]) for _, key in TABLE_COLUMNS)]))
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
