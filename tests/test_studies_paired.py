"""Paired comparisons over seeds against the closed-form Student-t interval."""

import math

import pytest

from hpjax.studies import paired


def test_interval_is_the_student_t_interval_of_the_mean_difference():
    a = {0: 1.0, 1: 1.1, 2: 1.2}
    b = {0: 0.9, 1: 0.9, 2: 0.9}  # differences -0.1, -0.2, -0.3: mean -0.2, sd 0.1
    p = paired.compare(a, b)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert p.seeds == 3 and p.b_lower == 3
    assert p.difference == pytest.approx(-0.2)
    assert (p.low, p.high) == (pytest.approx(-0.2 - half), pytest.approx(-0.2 + half))
    assert p.winner == "undecided"  # the interval [-0.45, 0.05] holds 0
    tight = paired.compare(a, {0: 0.89, 1: 0.99, 2: 1.11})  # -0.11, -0.11, -0.09
    assert tight.winner == "b" and tight.high < 0
    assert paired.compare({0: 0.89, 1: 0.99, 2: 1.11}, a).winner == "a"


def test_only_shared_finite_seeds_count_and_one_seed_is_undecided():
    p = paired.compare({0: 1.0, 1: 2.0, 2: float("nan")}, {0: 0.5, 2: 0.1, 3: 0.2})
    assert p.seeds == 1 and p.winner == "undecided" and p.low is None
    assert "one seed cannot separate them" in paired.describe(p, "A", "B")
    assert paired.compare({0: 1.0}, {1: 1.0}).seeds == 0


def test_claim_verdicts():
    b, a, u = (paired.Paired(3, 0.0, 0.0, 0.0, 0, w) for w in ("b", "a", "undecided"))
    assert paired.claim_verdict([]) == "not tested"
    assert paired.claim_verdict([b, b, u]) == "supported"
    assert paired.claim_verdict([a, a, b]) == "not supported"
    assert paired.claim_verdict([u, u]) == "undecided"
    assert paired.claim_verdict([b, a, u]) == "mixed"
    assert paired.claim_verdict([b, u, u, u]) == "undecided"  # one decided of four


def test_describe_names_the_winner_and_the_interval():
    p = paired.compare({0: 1.0, 1: 1.1, 2: 1.2}, {0: 0.89, 1: 0.99, 2: 1.11})
    text = paired.describe(p, "2 layers", "3 layers")
    assert text.startswith("3 layers minus 2 layers -0.103 [")
    assert text.endswith("over 3 seeds, 3 layers lower in 3 of 3: 3 layers lower")
