"""The report's generalisation gap per regulariser value, against hand-computed means."""

import pytest

from hpjax.report import regularisation
from tests.test_report_figures_and_markdown import assert_png


def _row(trial, dropout, train, val, status="budget_exhausted"):
    return dict(
        trial=trial,
        dropout=dropout,
        learning_rate=0.01,
        train_loss_at_best=train,
        best_val_loss=val,
        status=status,
    )


def test_the_gap_per_dropout_rate_and_its_trend(tmp_path):
    summary = [
        _row(0, 0.0, 0.1, 0.9),
        _row(1, 0.0, 0.3, 0.9),  # mean gap at 0.0: (0.8 + 0.6) / 2 = 0.7
        _row(2, 0.25, 0.4, 0.8),  # 0.4
        _row(3, 0.5, 0.6, 0.7),  # 0.1
        _row(4, 0.5, None, None, status="diverged"),  # no gap
    ]
    lines, tables, plots = regularisation.regularisation_section(str(tmp_path), summary)
    (title, rows, columns), = tables
    assert [r["dropout"] for r in rows] == [0.0, 0.25, 0.5]
    assert [r["trials"] for r in rows] == [2, 1, 1]
    assert [r["generalisation_gap"] for r in rows] == pytest.approx([0.7, 0.4, 0.1])
    assert rows[0]["train_loss_at_best"] == pytest.approx(0.2)
    assert "the gap shrinks as `dropout` grows, from 0.700 at dropout=0 to 0.100" in lines[0]
    assert plots == ["plots/dropout_vs_generalisation_gap.png"]
    assert_png(tmp_path / plots[0])


def test_a_gap_that_grows_is_called_so_and_a_study_without_regulariser_has_none(tmp_path):
    summary = [_row(0, 0.0, 0.5, 0.6), _row(1, 0.5, 0.1, 0.9)]
    lines, _, _ = regularisation.regularisation_section(str(tmp_path), summary)
    assert "the gap does not shrink as `dropout` grows" in lines[0]
    plain = [dict(r, dropout=0.0, learning_rate=lr) for r, lr in zip(summary, (0.1, 0.2))]
    assert regularisation.regularisation_section(str(tmp_path), plain) == ([], [], [])
