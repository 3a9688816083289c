"""A study over several optimizers (``config.optimizers``): each at its best configuration,
compared seed by seed with the paired verdicts of :mod:`hpjax.studies.paired`.

Each optimizer's configurations are its trials grouped by every varied hyperparameter but the
seed; its best is the one of lowest mean validation loss over the seeds. The best optimizer is
then paired with each other one by seed (the same seed gives both the same data order and
initial key): the mean difference of their validation losses with its 95% Student-t interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpjax.report.labels import is_finite_number, varying_hparams
from hpjax.studies import paired

COLUMNS = ["optimizer", "configuration", "seeds", "mean_best_val_loss", "mean_test_loss"]
NOTE = (
    "Each optimizer at its own best configuration (lowest mean validation loss over the seeds), "
    "paired by seed against the best optimizer: the mean difference of validation losses with "
    "its 95% Student-t interval; **undecided** means the seeds do not separate the two."
)


def _mean(rows: Sequence[Mapping], key: str) -> float | None:
    values = [float(r[key]) for r in rows if is_finite_number(r.get(key))]
    return float(np.mean(values)) if values else None


def best_configurations(summary: Sequence[Mapping]) -> dict[str, tuple[str, list[Mapping]]]:
    """optimizer -> (its best configuration as ``key=value`` text, that configuration's rows,
    one per seed)."""
    keys = [k for k in varying_hparams(summary) if k not in ("seed", "optimizer")]
    configurations: dict[str, dict[tuple, list[Mapping]]] = {}
    for row in summary:
        point = tuple((k, row.get(k)) for k in keys)
        configurations.setdefault(str(row.get("optimizer")), {}).setdefault(point, []).append(row)

    def score(item: tuple[tuple, list[Mapping]]) -> tuple[bool, float]:
        value = _mean(item[1], "best_val_loss")
        return (value is None, value or 0.0)

    best = {}
    for name, points in configurations.items():
        point, rows = min(points.items(), key=score)
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in point)
        best[name] = (text or "its only one", rows)
    return best


def optimizer_section(summary: Sequence[Mapping]) -> tuple[list[str], list[tuple], list[Any]]:
    """The report's lines and table comparing the optimizers of a study (empty: one optimizer)."""
    if len({str(r.get("optimizer")) for r in summary}) < 2:
        return [], [], []
    best = best_configurations(summary)
    rows = [
        {
            "optimizer": name,
            "configuration": text,
            "seeds": len(members),
            "mean_best_val_loss": _mean(members, "best_val_loss"),
            "mean_test_loss": _mean(members, "test_loss"),
        }
        for name, (text, members) in best.items()
    ]
    rows.sort(key=lambda r: (r["mean_best_val_loss"] is None, r["mean_best_val_loss"] or 0.0))
    leader = rows[0]["optimizer"]
    rows[0]["paired_verdict"] = "best"
    verdicts = []
    for row in rows[1:]:
        other = row["optimizer"]
        p = paired.compare(paired.seed_values(best[leader][1]), paired.seed_values(best[other][1]))
        row["paired_verdict"] = {"a": f"{leader} lower", "b": f"{other} lower"}.get(
            p.winner, "undecided"
        )
        verdicts.append(paired.describe(p, leader, other))
    lines = [f"Optimizers compared: {leader} is best; " + "; ".join(verdicts) + ".", NOTE]
    title = "Optimizers, each at its best configuration"
    return lines, [(title, rows, [*COLUMNS, "paired_verdict"])], []
