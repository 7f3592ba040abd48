"""The summary's statistics: the bootstrap interval, AlpacaEval 2.0's length-controlled win rate,
Pareto fronts."""
from __future__ import annotations

import pytest

from moa_dsl.evaluation.stats import bootstrap_ci, lc_win_rate, pareto_flags, win_rate

# Fixed verdict sets. The reference numbers were computed once with the `alpaca_eval` package
# (0.6.6, with pandas 3.1.1, scikit-learn 1.9.1, patsy 1.0.3) in a throwaway venv -- it is not a
# test dependency: it pulls in `datasets`, scikit-learn, scipy, pandas, openai and tiktoken (660 MB).
# Each set became one annotation per item: output_1 = "b" * base_len (the baseline), output_2 =
# "c" * cand_len, preference = 1 + score, generator_1 = "base", generator_2 = "cand"; then
#   alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate(annotations, save_weights_dir=None,
#       is_warn_extreme_changes=False, glm_info={
#           "formula": "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1",
#           "regularize_to_baseline_lambda": None,
#           "kwargs": {"n_splits": 0, "C": 1e6, "tol": 1e-12, "max_iter": 10000}})
# i.e. AlpacaEval's own "length_controlled_minimal" formula (no instruction difficulty, no
# regularisation towards gamed baselines), fitted without cross-validation and with a negligible
# penalty (C = 1e6) so that it is the plain maximum-likelihood fit. `hf_hub_download` (which fetches
# the per-instruction difficulties this formula never uses) was pointed at a local CSV of zeros.
# It printed win_rate and length_controlled_winrate (in percent):
#   longer: 58.333333333333336 55.11435194729898
#   mixed:  56.25              57.34708494894816
LONGER = {"cand_len": [120, 340, 80, 500, 260, 90, 410, 150, 300, 60, 220, 380], "base_len": [200] * 12,
          "scores": [0.5, 1, 0, 1, 1, 1, 1, 0, 0.5, 0, 1, 0]}
MIXED = {"cand_len": [150, 90, 300, 210, 180, 400, 75, 260], "base_len": [160, 300, 120, 200, 380, 100, 90, 250],
         "scores": [1, 0.5, 0, 1, 0.5, 0, 1, 0.5]}


@pytest.mark.parametrize("verdicts, raw, lc", [(LONGER, 58.333333333333336, 55.11435194729898),
                                               (MIXED, 56.25, 57.34708494894816)])
def test_lc_win_rate_matches_alpaca_eval(verdicts, raw, lc):
    scores = verdicts["scores"]
    assert win_rate(scores)[0] * 100 == pytest.approx(raw)
    assert lc_win_rate(scores, verdicts["cand_len"], verdicts["base_len"]) * 100 == pytest.approx(lc, abs=1e-4)


def test_a_judge_that_prefers_length_gets_a_lower_lc_win_rate():
    base = [100] * 10
    cand = [50, 60, 70, 80, 90, 160, 170, 180, 190, 200]     # half shorter, half longer
    scores = [0, 0, 0, 0.5, 0, 1, 1, 1, 0.5, 1]               # the longer one wins, mostly
    raw = win_rate(scores)[0]
    assert raw == 0.5
    longer = [c + 100 for c in cand]                          # the candidate is now longer on average
    lc = lc_win_rate(scores, longer, base)
    assert lc < raw
    # the same verdicts with no length difference to explain them: nothing to correct
    assert lc_win_rate(scores, base, base) == raw


def test_lc_win_rate_edge_cases():
    assert lc_win_rate([], [], []) is None
    assert lc_win_rate([1.0], [5], [3]) == 1.0
    assert lc_win_rate([1, 1, 1], [3, 50, 9], [1, 1, 1]) == 1.0      # separable: the fit's limit
    assert 0 < lc_win_rate([1, 0, 1, 0], [10, 9, 30, 2], [5, 5, 5, 5]) < 1
    with pytest.raises(ValueError):
        lc_win_rate([1], [1, 2], [1])


@pytest.mark.parametrize("scores", [[1, 0, 1, 1], [0.5] * 7, [1.0], [0, 0, 0.5, 1, 1, 1, 0.5, 0, 1, 1, 1, 0] * 5])
def test_bootstrap_interval_contains_the_estimate_and_is_reproducible(scores):
    low, high = bootstrap_ci(scores)
    mean = win_rate(scores)[0]
    assert 0 <= low <= mean <= high <= 1
    assert bootstrap_ci(scores) == (low, high)
    assert bootstrap_ci([]) is None


def test_bootstrap_interval_narrows_with_more_items():
    few, many = bootstrap_ci([1, 0] * 5), bootstrap_ci([1, 0] * 200)
    assert many[1] - many[0] < few[1] - few[0]


def test_pareto_front_on_hand_made_points():
    # (cost, win rate)
    points = [(1.0, 0.50),    # cheapest: on the front
              (2.0, 0.45),    # dearer and worse than the first: off
              (2.0, 0.70),    # on
              (3.0, 0.70),    # same quality, dearer: off
              (4.0, 0.90),    # best: on
              (None, 0.99),   # no cost: never on
              (5.0, 0.90),    # dominated by (4, 0.9)
              (1.0, 0.50)]    # a tie with the first: neither dominates the other
    assert pareto_flags(points) == [True, False, True, False, True, False, False, True]
    assert pareto_flags([]) == []
