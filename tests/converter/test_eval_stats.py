"""The statistics behind `qconv eval`'s figures and gates: the exact McNemar test against scipy, the Wilson and
Newcombe intervals against published values and their properties, the task gate's decisions, and the chunk
bootstrap against a plain loop over the same resamples, its coverage and its speed."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy.stats import binomtest

from qconv.converter.quality import stats as st

# ---------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    "b, c",
    [(b, c) for b in range(0, 26, 5) for c in range(0, 26, 3)]
    + [(1, 0), (0, 1), (6, 0), (4, 0), (17, 18), (100, 130), (999, 1000), (2000, 2200), (40, 400)]
    + [(49_000, 51_000), (49_900, 50_100), (50_000, 50_000), (10, 99_990), (45_000, 55_000)],
)
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
    expected = binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert st.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_exact_edges():
    assert st.mcnemar_exact(0, 0) == 1.0
    assert st.mcnemar_exact(6, 0) == 2.0**-5  # 2 * (1/2)^6
    assert st.mcnemar_exact(3, 3) == 1.0
    assert st.mcnemar_exact(3, 7) == st.mcnemar_exact(7, 3) == pytest.approx(0.34375, rel=1e-15)
    assert st.mcnemar_exact(0, 100_000) == 0.0  # 2^-99999 underflows; it does not raise
    with pytest.raises(ValueError, match="non-negative"):
        st.mcnemar_exact(-1, 3)


# ---------------------------------------------------------------- Wilson and Newcombe intervals


@pytest.mark.parametrize(
    "x, n, lo, hi",
    # Newcombe, Two-sided confidence intervals for the single proportion, Stat Med 1998;17:857-872, method 3
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombes_examples(x, n, lo, hi):
    got = st.wilson_interval(x, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_interval_edges_are_exact():
    assert st.wilson_interval(0, 7)[0] == 0.0 and st.wilson_interval(7, 7)[1] == 1.0
    assert all(math.isnan(v) for v in st.wilson_interval(0, 0))


def test_paired_difference_ci_matches_the_published_example():
    # Cavo et al. 2012, complete response before/after consolidation: 59 both, 6 before only, 16 after only, 80 neither;
    # Fagerland, Lydersen & Laake 2017 (ch. 8) give -0.0621 (95% CI -0.1186 to -0.0046) for Newcombe's interval.
    lo, hi = st.paired_difference_ci(59, 6, 16, 80)
    assert (lo, hi) == pytest.approx((-0.1186, -0.0046), abs=5e-5)


def test_paired_difference_ci_properties():
    rng = np.random.default_rng(3)
    for _ in range(300):
        n11, n10, n01, n00 = (int(v) for v in rng.integers(0, 40, size=4))
        n = n11 + n10 + n01 + n00
        if n == 0:
            continue
        lo, hi = st.paired_difference_ci(n11, n10, n01, n00)
        estimate = (n10 - n01) / n
        assert -1.0 <= lo <= estimate <= hi <= 1.0
        assert hi - lo > 0.0
        # swapping the models mirrors the interval
        mirrored = st.paired_difference_ci(n11, n01, n10, n00)
        assert mirrored == pytest.approx((-hi, -lo), abs=1e-12)
        # a wider level gives a wider interval
        lo99, hi99 = st.paired_difference_ci(n11, n10, n01, n00, level=0.99)
        assert lo99 <= lo and hi <= hi99


def test_paired_difference_ci_narrows_as_n_grows():
    widths = []
    for scale in (1, 4, 16, 64, 256):
        lo, hi = st.paired_difference_ci(20 * scale, 6 * scale, 2 * scale, 12 * scale)
        assert lo <= 0.1 <= hi
        widths.append(hi - lo)
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[-1] < widths[0] / 10  # about 1/sqrt(n): 16x the width over 256x the items


def test_paired_difference_ci_degenerate_tables():
    lo, hi = st.paired_difference_ci(25, 0, 0, 15)  # no discordant pair: zero difference, but not a zero-width interval
    assert lo < 0.0 < hi and lo == pytest.approx(-hi, abs=1e-15)
    lo, hi = st.paired_difference_ci(40, 0, 0, 0)  # all right for both
    assert lo < 0.0 < hi and hi < 0.1
    lo, hi = st.paired_difference_ci(0, 40, 0, 0)  # the quant lost every item
    assert hi == 1.0 and 0.8 < lo < 1.0
    lo, hi = st.paired_difference_ci(0, 0, 30, 0)
    assert lo == -1.0 and -1.0 < hi < -0.8
    assert all(math.isnan(v) for v in st.paired_difference_ci(0, 0, 0, 0))


# ---------------------------------------------------------------- task comparison and the gate


def answers(n: int, ref_right: list[int], quant_right: list[int]) -> tuple[list[bool], list[bool]]:
    ref, quant = set(ref_right), set(quant_right)
    return [i in ref for i in range(n)], [i in quant for i in range(n)]


def test_one_lost_item_is_not_significant_and_does_not_fail_a_zero_drop_gate():
    ref, quant = answers(40, list(range(30)), list(range(29)))
    t = st.compare_tasks(ref, quant, max_drop=0.0)
    assert (t.n, t.b, t.c) == (40, 1, 0)
    assert t.ref_accuracy == 0.75 and t.quant_accuracy == 0.725 and t.drop == pytest.approx(0.025)
    assert t.p_value == 1.0 and not t.significant
    assert t.drop > 0.0 and not t.fails(0.0)
    assert t.drop_ci[0] < 0.0 < t.drop_ci[1]
    assert not t.too_hard


def test_a_large_drop_is_significant_and_fails():
    ref, quant = answers(40, list(range(22)), list(range(4)))
    t = st.compare_tasks(ref, quant, max_drop=0.10)
    assert (t.b, t.c) == (18, 0)
    assert t.drop == pytest.approx(0.45)
    assert t.p_value == pytest.approx(2.0**-17) and t.significant
    assert t.fails(0.10) and not t.fails(0.5)
    assert 0.10 < t.drop_ci[0] < 0.45 < t.drop_ci[1]
    # 40 items cannot show a drop of exactly 0.10 (4 pairs at best: p = 0.125), yet this much larger drop is shown
    assert t.detectable is False and t.min_items == 51


def test_a_quant_that_does_better_is_never_significant():
    ref, quant = answers(40, list(range(4)), list(range(22)))
    t = st.compare_tasks(ref, quant, max_drop=0.0)
    assert t.drop < 0.0 and t.p_value < 1e-4 and not t.significant and not t.fails(-1.0)


def test_detectable_and_min_items():
    ref, quant = answers(40, list(range(20)), list(range(20)))
    small = st.compare_tasks(ref, quant, max_drop=0.10)
    assert small.detectable is False  # best case: 4 pairs, p = 0.125
    assert st.mcnemar_exact(4, 0) == 0.125
    ref, quant = answers(60, list(range(30)), list(range(30)))
    large = st.compare_tasks(ref, quant, max_drop=0.10)
    assert large.detectable is True  # best case: 6 pairs, p = 0.03125
    assert st.mcnemar_exact(6, 0) == 0.03125
    assert small.min_items == large.min_items == 51  # 6 pairs needed; ceil(0.1 * 51) = 6
    assert st.compare_tasks(ref, quant, max_drop=None).detectable is None
    assert st.compare_tasks(ref, quant, max_drop=None).min_items is None


@pytest.mark.parametrize("max_drop", [0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 1 / 3, 0.5, 1.0])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_min_items_is_where_detectable_turns_true(max_drop, alpha):
    m = st.min_items_to_detect(max_drop, alpha)
    assert m is not None and m >= 1

    def detectable(n):
        ref, quant = answers(n, list(range(n)), [])
        return st.compare_tasks(ref, quant, max_drop=max_drop, alpha=alpha).detectable

    assert detectable(m) is True
    assert m == 1 or detectable(m - 1) is False
    assert detectable(m + 7) is True


def test_a_drop_of_7_percent_of_100_items_is_7_items_despite_rounding():
    # 0.07 * 100 = 7.000000000000001 in float64; at alpha = 0.01, 7 pairs (p = 2^-6) are not enough and 8 (2^-7) are
    ref, quant = answers(100, list(range(50)), list(range(50)))
    assert st.compare_tasks(ref, quant, max_drop=0.07, alpha=0.01).detectable is False
    assert st.min_items_to_detect(0.07, alpha=0.01) == 101


def test_min_items_without_a_drop_to_detect():
    assert st.min_items_to_detect(0.0) is None
    ref, quant = answers(1000, list(range(500)), list(range(500)))
    assert st.compare_tasks(ref, quant, max_drop=0.0).detectable is False  # one item's drop: p = 1


def test_too_hard_and_as_dict():
    ref, quant = answers(50, list(range(9)), list(range(7)))
    t = st.compare_tasks(ref, quant, max_drop=0.03)
    assert t.too_hard and t.ref_accuracy == 0.18
    record = json.loads(json.dumps(t.as_dict()))
    assert record["n"] == 50 and record["b"] == 2 and record["c"] == 0
    assert record["drop_ci"] == [pytest.approx(v) for v in t.drop_ci]
    assert record["detectable"] is False and record["min_items"] == st.min_items_to_detect(0.03)
    assert set(record) >= {"ref_accuracy", "quant_accuracy", "drop", "p_value", "significant", "too_hard"}


def test_compare_tasks_input_errors():
    with pytest.raises(ValueError, match="3 reference answers but 2 quant"):
        st.compare_tasks([True, True, False], [True, False], max_drop=0.1)
    with pytest.raises(ValueError, match="no items"):
        st.compare_tasks([], [], max_drop=0.1)


# ---------------------------------------------------------------- bootstrap


def text_chunks(rng, n_chunks: int, lengths: tuple[int, int]):
    """A text suite's per-chunk arrays with per-chunk levels (tokens of a window are correlated), ragged lengths and
    one position fewer of NLLs than of KL (the last position's next token is unknown)."""
    kld, top1, nll_ref, nll_quant = [], [], [], []
    for _ in range(n_chunks):
        m = int(rng.integers(*lengths))
        level = rng.exponential(0.05)
        kld.append(rng.exponential(level, m))
        top1.append(rng.random(m) < 0.85 + 0.1 * rng.random())
        ref = rng.exponential(2.0 + rng.random(), m - 1)
        nll_ref.append(ref)
        nll_quant.append(ref + rng.normal(0.02, 0.2, m - 1))
    return kld, top1, nll_ref, nll_quant


def reference_text_cis(kld, top1, nll_ref, nll_quant, n_resamples, level, seed):
    """The same bootstrap as a plain loop: concatenate each resample's chunks and take the statistics over tokens."""
    rows = st.resample_indices(len(kld), n_resamples, seed)
    values = {"kld_mean": [], "kld_p99": [], "top1": [], "ppl_ratio": []}
    for r, row in enumerate(rows):
        k = np.concatenate([kld[i] for i in row])
        values["kld_mean"].append(k.mean())
        values["top1"].append(np.concatenate([top1[i] for i in row]).mean())
        nr = np.concatenate([nll_ref[i] for i in row])
        nq = np.concatenate([nll_quant[i] for i in row])
        values["ppl_ratio"].append(math.exp(nq.mean()) / math.exp(nr.mean()))
        if r < st.P99_RESAMPLES:
            values["kld_p99"].append(np.percentile(k, 99))
    tail = 100 * (1 - level) / 2
    return {key: tuple(np.percentile(v, [tail, 100 - tail])) for key, v in values.items()}


@pytest.mark.parametrize("n_resamples, level, seed", [(1000, 0.95, 0), (150, 0.9, 7)])
def test_text_suite_cis_match_a_plain_bootstrap_over_the_same_resamples(n_resamples, level, seed):
    rng = np.random.default_rng(11)
    chunks = text_chunks(rng, 40, (20, 120))
    got = st.text_suite_cis(*chunks, n_resamples=n_resamples, level=level, seed=seed)
    expected = reference_text_cis(*chunks, n_resamples, level, seed)
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
        assert got[key][0] < got[key][1], key
    # the generic bootstrap draws the same resamples
    kld = chunks[0]
    generic = st.bootstrap_ci(
        kld, lambda cs: np.concatenate(cs).mean(), n_resamples=n_resamples, level=level, seed=seed
    )
    assert generic == pytest.approx(got["kld_mean"], rel=1e-9)


def test_text_suite_cis_contain_the_suite_values():
    rng = np.random.default_rng(5)
    kld, top1, nll_ref, nll_quant = text_chunks(rng, 60, (50, 200))
    cis = st.text_suite_cis(kld, top1, nll_ref, nll_quant)
    all_kld = np.concatenate(kld)
    ppl_ratio = math.exp(np.concatenate(nll_quant).mean() - np.concatenate(nll_ref).mean())
    point = {
        "kld_mean": all_kld.mean(),
        "kld_p99": np.percentile(all_kld, 99),
        "top1": np.concatenate(top1).mean(),
        "ppl_ratio": ppl_ratio,
    }
    for key, value in point.items():
        lo, hi = cis[key]
        assert lo < value < hi, key


def test_fewer_than_two_chunks_have_no_interval():
    one = [np.array([0.1, 0.2, 0.3])]
    cis = st.text_suite_cis(one, [np.array([True, False, True])], [np.ones(2)], [np.ones(2)])
    assert set(cis) == {"kld_mean", "kld_p99", "top1", "ppl_ratio"}
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in cis.values())
    assert all(math.isnan(v) for v in st.bootstrap_ci(one, lambda cs: 0.0))
    assert all(math.isnan(v) for v in st.bootstrap_ci([], lambda cs: 0.0))


def test_chunks_without_tokens_give_nan_not_an_error():
    empty = [np.zeros(0), np.zeros(0)]
    with np.errstate(all="ignore"):
        cis = st.text_suite_cis(empty, empty, empty, empty)
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in cis.values())


def test_bootstrap_input_errors():
    two = [np.ones(3), np.ones(3)]
    with pytest.raises(ValueError, match="one entry per chunk"):
        st.text_suite_cis(two, two[:1], two, two)
    with pytest.raises(ValueError, match="chunk 1 has 3 NLLs of the reference but 2"):
        st.text_suite_cis(two, two, two, [np.ones(3), np.ones(2)])
    with pytest.raises(ValueError, match="level"):
        st.bootstrap_ci(two, lambda cs: 0.0, level=95)


def test_chunk_bootstrap_covers_the_true_mean_about_95_percent_of_the_time():
    # Chunks whose tokens share a chunk-level offset: the chunk is the unit of independent information.
    rng = np.random.default_rng(2024)
    true_mean, covered = 1.0, 0
    for rep in range(200):
        levels = true_mean + rng.normal(0.0, 0.5, 30)
        chunks = [(float(x.sum()), x.size) for x in (lv + rng.normal(0.0, 1.0, 40) for lv in levels)]
        lo, hi = st.bootstrap_ci(
            chunks, lambda cs: sum(s for s, _ in cs) / sum(m for _, m in cs), n_resamples=400, seed=rep
        )
        covered += lo <= true_mean <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_text_suite_cis_are_fast():
    rng = np.random.default_rng(9)
    kld = [rng.exponential(0.05, 512) for _ in range(300)]
    top1 = [rng.random(512) < 0.9 for _ in range(300)]
    nll_ref = [rng.exponential(2.0, 511) for _ in range(300)]
    nll_quant = [x + 0.01 for x in nll_ref]
    start = time.perf_counter()
    cis = st.text_suite_cis(kld, top1, nll_ref, nll_quant)
    assert time.perf_counter() - start < 1.0
    assert cis["ppl_ratio"] == pytest.approx((math.exp(0.01), math.exp(0.01)), rel=1e-9)
