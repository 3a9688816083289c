"""The report's generalisation gap per regulariser value, against hand-computed means."""

import pytest

from hpjax.report import regularisation
from tests.test_report_figures_and_markdown import assert_png


def _row(trial, dropout, train, val, steps=100, status="budget_exhausted"):
    """A summary row whose losses at the end are ``train``, ``val``; at its best step the
    validation loss is 0.1 lower and the training loss 0.2 higher."""
    return dict(
        trial=trial,
        dropout=dropout,
        learning_rate=0.01,
        final_train_loss=train,
        final_val_loss=val,
        train_loss_at_best=None if train is None else train + 0.2,
        best_val_loss=None if val is None else val - 0.1,
        steps=steps,
        status=status,
    )


def test_the_gap_per_dropout_rate_and_its_trend_at_an_equal_budget(tmp_path):
    summary = [
        _row(0, 0.0, 0.1, 0.9),
        _row(1, 0.0, 0.3, 0.9),  # mean gap at 0.0: (0.8 + 0.6) / 2 = 0.7
        _row(2, 0.25, 0.4, 0.8),  # 0.4
        _row(3, 0.5, 0.6, 0.7),  # 0.1
        _row(4, 0.5, None, None, steps=20, status="diverged"),  # no gap
    ]
    lines, tables, plots = regularisation.regularisation_section(str(tmp_path), summary)
    ((title, rows, columns),) = tables
    assert [r["dropout"] for r in rows] == [0.0, 0.25, 0.5]
    assert [r["trials"] for r in rows] == [2, 1, 1]
    assert [r["gap_at_end"] for r in rows] == pytest.approx([0.7, 0.4, 0.1])
    assert [r["gap_at_best"] for r in rows] == pytest.approx([0.4, 0.1, -0.2])
    assert rows[0]["final_train_loss"] == pytest.approx(0.2)
    assert "loss at the end of training" in lines[0]
    assert "the gap shrinks as `dropout` grows, from 0.700 at dropout=0 to 0.100" in lines[0]
    assert plots == ["plots/dropout_vs_gap_at_end.png"]
    assert_png(tmp_path / plots[0])


def test_early_stopped_trials_are_compared_at_their_best_steps(tmp_path):
    summary = [_row(0, 0.0, 0.5, 0.6, steps=40), _row(1, 0.5, 0.1, 0.9, steps=90)]
    lines, _, plots = regularisation.regularisation_section(str(tmp_path), summary)
    assert "at each trial's best step" in lines[0]
    assert "the gap does not shrink as `dropout` grows (-0.200 at dropout=0" in lines[0]
    assert plots == ["plots/dropout_vs_gap_at_best.png"]


def test_a_study_without_a_varied_regulariser_has_no_section(tmp_path):
    summary = [dict(_row(0, 0.0, 0.5, 0.6), learning_rate=0.1), _row(1, 0.0, 0.1, 0.9)]
    assert regularisation.regularisation_section(str(tmp_path), summary) == ([], [], [])
