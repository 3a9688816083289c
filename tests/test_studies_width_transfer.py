"""The width-transfer study: its analysis against synthetic curves with a known answer, and the
quick variant end to end through experiments/width_transfer.py."""

import csv
import math
import os

import ml_collections
import numpy as np
import pytest

from hpjax.errors import ConfigError
from hpjax.studies import width_transfer as wt
from hpjax.studies import width_transfer_study as study
from tests.conftest import ROOT, load_config, run_experiment

RATES = [2.0**k for k in range(-12, -2)]
WIDTHS = (64, 128, 256, 512, 1024)


def _summary(best_log2, seeds=(0, 1, 2), diverged=()) -> list[dict]:
    """Rows whose loss is a parabola in log2(rate) with its minimum at ``best_log2(param, width,
    seed)``; (param, width, rate) in ``diverged`` diverge."""
    rows = []
    for param in ("standard", "mup"):
        for width in WIDTHS:
            for seed in seeds:
                centre = best_log2(param, width, seed)
                for rate in RATES:
                    rows.append(
                        dict(
                            parametrization=param,
                            hidden_units=width,
                            seed=seed,
                            learning_rate=rate,
                            num_params=width * 50,
                            best_val_loss=1.0 + 0.1 * (math.log2(rate) - centre) ** 2,
                            status="diverged"
                            if (param, width, rate) in diverged
                            else "budget_exhausted",
                        )
                    )
    return rows


def test_best_rate_is_the_parabola_vertex_between_grid_points():
    for centre in (-7.0, -6.7, -6.4, -6.2):
        best = wt.best_rate(RATES, [1.0 + 0.1 * (math.log2(r) - centre) ** 2 for r in RATES])
        assert best.refined and not best.at_edge
        assert math.log2(best.learning_rate) == pytest.approx(centre, abs=1e-9)
        assert best.grid_learning_rate == 2.0 ** round(centre)
    edge = wt.best_rate(RATES, [float(i) for i in range(len(RATES))])
    assert edge.at_edge and not edge.refined and edge.learning_rate == RATES[0]
    losses = [1.0 + 0.1 * (math.log2(r) + 6) ** 2 for r in RATES]
    losses[RATES.index(2.0**-5)] = math.inf  # a diverged neighbour: the grid argmin stands
    beside = wt.best_rate(RATES, losses)
    assert (beside.learning_rate, beside.refined, beside.at_edge) == (2.0**-6, False, False)
    assert wt.best_rate(RATES, [math.inf] * len(RATES)) is None


def test_shift_and_its_interval_have_the_known_answer():
    narrow = {0: 1e-3, 1: 2e-3, 2: 4e-3}
    shift = wt.rate_shift(narrow, {s: r / 8 for s, r in narrow.items()})
    assert (shift.factor, shift.log2, shift.seeds) == (pytest.approx(1 / 8), pytest.approx(-3), 3)
    assert (shift.low, shift.high) == (pytest.approx(1 / 8), pytest.approx(1 / 8))
    assert not shift.stable and shift.interval_excludes_none and shift.interval_moves
    assert "**This disagrees with the paper**, which claims that under μP" in study.verdict(
        "mup", shift
    )
    # The seeds' own moves -1, 0 and +2 octaves: mean 1/3, sd 1.5275, t(0.975, 2) = 4.3027.
    varied = wt.rate_shift(narrow, {0: 0.5e-3, 1: 2e-3, 2: 16e-3})
    half = 4.302652729911275 * float(np.std([-1, 0, 2], ddof=1)) / math.sqrt(3)
    assert varied.log2 == pytest.approx(1 / 3)
    assert math.log2(varied.low) == pytest.approx(1 / 3 - half)
    assert math.log2(varied.high) == pytest.approx(1 / 3 + half)
    assert (varied.per_seed_low, varied.per_seed_high) == (pytest.approx(0.5), pytest.approx(4))
    assert varied.stable and not varied.interval_stable and not varied.interval_moves
    assert "**Undecided**" in study.verdict("mup", varied)
    assert "**Undecided**" in study.verdict("standard", varied)
    one = wt.rate_shift({0: 1e-3}, {0: 1e-4})
    assert one.low is None and one.seeds == 1 and not one.interval_excludes_none
    assert study.verdict("standard", one).startswith("Undecided: one seed")
    assert wt.rate_shift({0: 1e-3}, {1: 1e-3}) is None


def test_the_analysis_finds_the_shift_built_into_synthetic_curves():
    """Standard: the best rate halves with each doubling of the width (factor 1/16 over 16x);
    μP: it stays at 2^-6.3 (seed offsets -0.2, 0, +0.2 octaves)."""

    def centre(param, width, seed):
        drift = -math.log2(width / 64) if param == "standard" else 0.0
        return -5.3 + drift + 0.2 * (seed - 1)

    rows = wt.with_rates(_summary(centre))
    best = wt.best_rates(rows, "hidden_units")
    assert len(best) == 2 * len(WIDTHS) * 3 and not any(r["at_edge"] for r in best)
    found = wt.shifts(best)
    assert found["standard"].factor == pytest.approx(1 / 16)
    assert found["mup"].factor == pytest.approx(1.0)
    assert found["standard"].low == pytest.approx(1 / 16)  # every seed shifts alike
    table = wt.width_table(best)
    widest = [r for r in table if r["width"] == 1024]
    assert {r["parametrization"]: round(r["log2_shift"], 6) for r in widest} == {
        "standard": -4,
        "mup": 0,
    }
    lines = "\n".join(study.findings_lines(best, RATES))
    assert "Under μP the best learning rate moves by a factor of 1 (log2 +0.00)" in lines
    assert "agrees with the paper's claim that under μP the best rate stays put" in lines
    assert "factor of 0.0625 (log2 -4.00) from width 64 to width 1024" in lines
    assert "This agrees with the paper: under the standard parametrisation" in lines
    assert "No seed's best rate sits at an edge" in lines
    assert "under μP spans 0.00 octaves" in lines and "the same at every width" in lines
    assert "as the paper claims" in lines
    assert "under the standard parametrisation spans 4.00 octaves" in lines
    assert "falling as the width grows, as the paper shows" in lines
    curves = wt.curves(rows, "hidden_units")
    assert len(curves) == 2 * len(WIDTHS) * len(RATES)
    assert all(c["seeds"] == 3 and c["diverged"] == 0 for c in curves)


def test_disagreements_and_edges_are_said_plainly():
    def centre(param, width, seed):
        return -6.0 + (math.log2(width / 64) if param == "mup" else 0.0)  # μP drifts up

    rows = wt.with_rates(_summary(centre, diverged={("mup", 64, 2.0**-5)}))
    best = wt.best_rates(rows, "hidden_units")
    lines = "\n".join(study.findings_lines(best, RATES))
    assert "**This disagrees with the paper**, which shows the best rate drifting" in lines
    # μP at 1024 wants 2^-2, beyond the grid's largest rate 2^-3: flagged
    assert "**At the edge of the learning-rate grid (0.000244 to 0.125)**" in lines
    assert "μP, width 1024, seed 0: 0.125" in lines
    assert "**Undecided**: a best rate at an end width lies at the edge" in lines
    assert "rising as the width grows. **This disagrees with the paper's claim**" in lines
    curve = [
        c
        for c in wt.curves(rows, "hidden_units")
        if (c["parametrization"], c["width"]) == ("mup", 64)
    ]
    assert [c["diverged"] for c in curve if c["learning_rate"] == 2.0**-5] == [3]


def test_config_checks():
    config = load_config("width_transfer", "quick")
    config.model_grid.hidden_units = (8,)
    with pytest.raises(ConfigError, match=r"model_grid\.hidden_units=\(8,\) must list at least"):
        study.validate_width_transfer_config(config)
    config = load_config("width_transfer", "quick")
    config.model = ml_collections.ConfigDict({"name": "rnn"})
    with pytest.raises(ConfigError, match=r"config\.model\.name='rnn' has no μP width"):
        study.validate_width_transfer_config(config)
    config = load_config("width_transfer", "quick")
    config.model_grid.num_layers = (1, 2)
    with pytest.raises(ConfigError, match=r"model_grid\.num_layers varies besides the width"):
        study.validate_width_transfer_config(config)
    config = load_config("width_transfer", "quick")
    config.weight_decays = (0.0, 0.1)
    with pytest.raises(ConfigError, match=r"config\.weight_decays=\(0\.0, 0\.1\) must hold one"):
        study.validate_width_transfer_config(config)


def _run_binary(*args: str):
    return run_experiment("width_transfer.py", *args)


def test_the_quick_study_end_to_end_through_the_binary(tmp_path):
    workdir = str(tmp_path / "width_transfer")
    config = os.path.join(ROOT, "experiments", "configs", "width_transfer.py") + ":quick"
    result = _run_binary("--workdir", workdir, "--config", config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "width transfer table:" in result.stdout
    with open(os.path.join(workdir, "width_transfer.csv")) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == study.CSV_COLUMNS
    quick = load_config("width_transfer", "quick")
    widths, rates = quick.model_grid.hidden_units, quick.learning_rates
    kinds = {k: [r for r in rows if r["kind"] == k] for k in ("best", "median_best", "curve")}
    assert len(kinds["best"]) == 2 * len(widths) * len(quick.seeds)
    assert len(kinds["median_best"]) == 2 * len(widths)
    assert len(kinds["curve"]) == 2 * len(widths) * len(rates)
    # At the base width the two parametrisations are one model: the same losses.
    base = [r for r in kinds["curve"] if int(r["width"]) == quick.model.base_width]
    by_param = {p: [r["val_loss"] for r in base if r["parametrization"] == p] for p in ("mup",)}
    assert by_param["mup"] == [r["val_loss"] for r in base if r["parametrization"] == "standard"]
    assert os.path.getsize(os.path.join(workdir, "plots", "width_transfer.png")) > 10_000
    text = open(os.path.join(workdir, "width_transfer_report.md")).read()
    for sentence in (
        "**Setup.** Model: mlp",
        "Under the standard parametrisation the best learning rate moves by a factor of",
        "Under μP the best learning rate moves by a factor of",
        "t-interval over 2 seeds",
        "the seeds' own shifts range from",
        "![width transfer](plots/width_transfer.png)",
    ):
        assert sentence in text, sentence
    assert np.isfinite([float(r["learning_rate"]) for r in kinds["best"]]).all()
    interior = "No seed's best rate sits at an edge of the learning-rate grid" in text
    assert interior != ("**At the edge of the learning-rate grid" in text)  # one of the two


def test_a_bad_config_fails_in_one_line_before_compiling(tmp_path):
    workdir = str(tmp_path / "never")
    config = os.path.join(ROOT, "experiments", "configs", "width_transfer.py") + ":quick"
    result = _run_binary(
        "--workdir", workdir, "--config", config, "--config.model_grid.parametrization=('mu',)"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.model.parametrization='mu' is unknown"), last
    assert not os.path.exists(workdir)
