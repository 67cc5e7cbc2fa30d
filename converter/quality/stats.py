"""The statistics behind `qconv eval`'s per-suite figures and gates: bootstrap intervals for the text suites'
token statistics, and the paired comparison (exact McNemar test, Newcombe interval, detectability) of the
reference's and the quantized model's answers on a task suite.

Only numpy and the standard library: the evaluation runs where scipy may not be installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

P99_RESAMPLES = 200  # the 99th percentile needs one pass over the tokens per resample: its bootstrap is capped
TOO_HARD_ACCURACY = 0.2  # a task the reference itself mostly fails says little about what quantization lost
NO_INTERVAL = (math.nan, math.nan)


# ---------------------------------------------------------------- bootstrap over chunks
#
# Percentile bootstrap (Efron): resample the suite's chunks with replacement, recompute the statistic, and take the
# (1-level)/2 and (1+level)/2 percentiles of the resampled values. Whole chunks are resampled, not tokens: the tokens
# of one context window share a topic and a cache and are correlated, so a token bootstrap would treat a few hundred
# windows as hundreds of thousands of independent draws and give intervals far too narrow. An interval needs at
# least 2 chunks (one chunk resamples only to itself); with fewer, the interval is (nan, nan) and callers print "n/a".


def resample_indices(n_chunks: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_chunks) chunk indices, each row one bootstrap resample; every bootstrap here draws from this,
    so that the vectorised statistics and a plain loop over the rows see the same resamples."""
    return np.random.default_rng(seed).integers(0, n_chunks, size=(n_resamples, n_chunks))


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(lo), float(hi)


def _check_bootstrap_args(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"bootstrap: n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level must lie strictly between 0 and 1, got {level}")


def bootstrap_ci(
    chunks: Sequence,
    statistic: Callable[[list], float],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(chunk payloads), resampling whole chunks with replacement.
    One Python call of `statistic` per resample: for the text suites' statistics use text_suite_cis."""
    _check_bootstrap_args(n_resamples, level)
    if len(chunks) < 2:
        return NO_INTERVAL
    rows = resample_indices(len(chunks), n_resamples, seed)
    values = np.array([statistic([chunks[i] for i in row]) for row in rows], dtype=np.float64)
    return _percentile_interval(values, level)


def mean_ci(
    values: Sequence[float], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of independent values (one per item, e.g. the cosine of each
    sentence's two vectors): bootstrap_ci with every value its own chunk, vectorised over the resamples."""
    _check_bootstrap_args(n_resamples, level)
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2:
        return NO_INTERVAL
    rows = resample_indices(values.size, n_resamples, seed)
    return _percentile_interval(values[rows].mean(axis=1), level)


def _resample_counts(rows: np.ndarray, n_chunks: int) -> np.ndarray:
    """How often each chunk is drawn in each resample: the (n_resamples, n_chunks) multinomial count matrix."""
    offsets = np.arange(rows.shape[0])[:, None] * n_chunks
    return np.bincount((rows + offsets).ravel(), minlength=rows.size).reshape(rows.shape)


def _weighted_percentiles(values: np.ndarray, chunk_of: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """np.percentile(concatenation of the resampled chunks, q) for each row of counts, without concatenating.

    The values are sorted once; a resample is the same sorted values, each repeated as often as its chunk was drawn,
    so the cumulative repeat counts locate the order statistics that numpy's default ('linear') method interpolates
    between. One O(tokens) cumsum per resample instead of a copy and a partition."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    sorted_chunks = chunk_of[order]
    out = np.full(counts.shape[0], math.nan)  # a resample without tokens has no percentile
    if values.size == 0:
        return out
    for r, row in enumerate(counts):
        cumulative = np.cumsum(row[sorted_chunks])
        total = int(cumulative[-1])
        if total == 0:
            continue
        position = q / 100.0 * (total - 1)
        below = math.floor(position)
        above = min(below + 1, total - 1)
        x_below, x_above = sorted_values[np.searchsorted(cumulative, [below, above], side="right")]
        out[r] = x_below + (position - below) * (x_above - x_below)
    return out


def text_suite_cis(
    kld_chunks: Sequence[np.ndarray],
    top1_chunks: Sequence[np.ndarray],
    nll_ref_chunks: Sequence[np.ndarray],
    nll_quant_chunks: Sequence[np.ndarray],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Chunk-bootstrap intervals of a text suite's token-weighted statistics: {"kld_mean", "kld_p99", "top1",
    "ppl_ratio"} -> (lo, hi), each statistic taken over all tokens of the resampled chunks (ppl_ratio:
    exp(mean NLL quant - mean NLL ref)). (nan, nan) everywhere with fewer than 2 chunks.

    The same resamples as bootstrap_ci with the same seed. Mean, top-1 and perplexity ratio come from per-chunk sums
    and token counts times the multinomial count matrix (no loop over resamples); the 99th percentile needs the
    tokens themselves and uses the first min(n_resamples, P99_RESAMPLES) resamples."""
    _check_bootstrap_args(n_resamples, level)
    n_chunks = len(kld_chunks)
    if not n_chunks == len(top1_chunks) == len(nll_ref_chunks) == len(nll_quant_chunks):
        raise ValueError(
            "text_suite_cis: one entry per chunk expected in every list, got "
            f"{n_chunks} kld, {len(top1_chunks)} top-1, {len(nll_ref_chunks)} NLL ref, {len(nll_quant_chunks)} NLL quant"
        )
    keys = ("kld_mean", "kld_p99", "top1", "ppl_ratio")
    if n_chunks < 2:
        return dict.fromkeys(keys, NO_INTERVAL)

    kld = [np.asarray(c, dtype=np.float64).ravel() for c in kld_chunks]
    top1 = [np.asarray(c).ravel() for c in top1_chunks]
    nll_ref = [np.asarray(c, dtype=np.float64).ravel() for c in nll_ref_chunks]
    nll_quant = [np.asarray(c, dtype=np.float64).ravel() for c in nll_quant_chunks]
    for i, (r, q) in enumerate(zip(nll_ref, nll_quant)):
        if r.size != q.size:
            raise ValueError(f"text_suite_cis: chunk {i} has {r.size} NLLs of the reference but {q.size} of the quant")

    # Per chunk: sums and token counts in float64; a resample's total is counts @ per-chunk sums.
    kld_tokens = np.array([c.size for c in kld], dtype=np.float64)
    kld_sums = np.array([c.sum() for c in kld])
    top1_tokens = np.array([c.size for c in top1], dtype=np.float64)
    top1_sums = np.array([np.count_nonzero(c) for c in top1], dtype=np.float64)
    nll_tokens = np.array([c.size for c in nll_ref], dtype=np.float64)
    # The NLL difference is summed per chunk before resampling: exp(mean q - mean r) over the same tokens.
    nll_diff_sums = np.array([(q - r).sum() for r, q in zip(nll_ref, nll_quant)])

    rows = resample_indices(n_chunks, n_resamples, seed)
    counts = _resample_counts(rows, n_chunks)
    weights = counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of empty chunks has no mean: nan
        kld_mean = (weights @ kld_sums) / (weights @ kld_tokens)
        top1_rate = (weights @ top1_sums) / (weights @ top1_tokens)
        ppl_ratio = np.exp((weights @ nll_diff_sums) / (weights @ nll_tokens))

    all_kld = np.concatenate(kld)
    chunk_of = np.repeat(np.arange(n_chunks), [c.size for c in kld])
    kld_p99 = _weighted_percentiles(all_kld, chunk_of, counts[: min(n_resamples, P99_RESAMPLES)], 99.0)

    return {
        "kld_mean": _percentile_interval(kld_mean, level),
        "kld_p99": _percentile_interval(kld_p99, level),
        "top1": _percentile_interval(top1_rate, level),
        "ppl_ratio": _percentile_interval(ppl_ratio, level),
    }


# ---------------------------------------------------------------- paired task comparison


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of b discordant pairs one way and c the other:
    min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2); 1 when there are no discordant pairs.

    P(X <= k) = C(n, k) / 2^n * (1 + k/(n-k+1) + k(k-1)/((n-k+1)(n-k+2)) + ...). C(n, k) / 2^n is one correctly
    rounded division of exact integers (math.comb; Python's int / int rounds once, however large the operands),
    and the series of ratios has positive terms only, each a product of ratios below 1, summed in float64 until the
    terms stop mattering: relative error near 1e-14 for n up to 10^5 and beyond, where lgamma differences would lose
    ~1e-10 to cancellation. Below ~1e-308 the probability underflows to 0.0."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: counts of discordant pairs must be non-negative, got b={b}, c={c}")
    n = b + c
    k = min(b, c)
    if n == 0 or 2 * k >= n:  # b == c: P(X <= n/2) >= 1/2, so the doubled tail is at least 1
        return 1.0
    head = math.comb(n, k) / 2**n
    series = 1.0
    term = 1.0
    for j in range(k):
        term *= (k - j) / (n - k + 1 + j)
        series += term
        if term < series * 1e-17:
            break
    return min(1.0, 2.0 * head * series)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927); exact 0 and 1 at the edges."""
    if n <= 0:
        return NO_INTERVAL
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    z2 = z * z
    # (2x + z^2 -+ z sqrt(z^2 + 4x(n-x)/n)) / (2(n + z^2)): no cancellation between p and the half-width.
    root = z * math.sqrt(z2 + 4.0 * successes * (n - successes) / n)
    lo = 0.0 if successes == 0 else (2.0 * successes + z2 - root) / (2.0 * (n + z2))
    hi = 1.0 if successes == n else (2.0 * successes + z2 + root) / (2.0 * (n + z2))
    return max(0.0, lo), min(1.0, hi)


def paired_difference_ci(n11: int, n10: int, n01: int, n00: int, level: float = 0.95) -> tuple[float, float]:
    """Interval for acc_ref - acc_quant = (n10 - n01) / n of paired answers (n10: the reference right and the quant
    wrong, n01 the reverse, n11 and n00 both right and both wrong). (nan, nan) when n = 0.

    Newcombe's hybrid score ("square-and-add") interval for paired data: R.G. Newcombe, Improved confidence intervals
    for the difference between binomial proportions based on paired data, Stat Med 1998;17:2635-2650, method 10.
    Wilson intervals (l1, u1), (l2, u2) of the two marginal accuracies are combined with the correlation phi of the
    paired table, continuity-corrected as Newcombe specifies for phi (also in method 10; as in Altman et al.,
    Statistics with Confidence, 2nd ed., and Fagerland, Lydersen & Laake, Statistical Analysis of Contingency
    Tables, 2017, section 8.5). Unlike the Wald interval it does not collapse to zero width when n10 = n01 = 0 and
    stays inside [-1, 1] at the edges."""
    if min(n11, n10, n01, n00) < 0:
        raise ValueError(f"paired_difference_ci: negative count in n11={n11}, n10={n10}, n01={n01}, n00={n00}")
    n = n11 + n10 + n01 + n00
    if n == 0:
        return NO_INTERVAL
    ref_right, quant_right = n11 + n10, n11 + n01
    p1, p2 = ref_right / n, quant_right / n
    l1, u1 = wilson_interval(ref_right, n, level)
    l2, u2 = wilson_interval(quant_right, n, level)

    margins = ref_right * (n - ref_right) * quant_right * (n - quant_right)
    phi = 0.0
    if margins > 0:
        cross = n11 * n00 - n10 * n01
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    difference = p1 - p2
    lower_gap = (p1 - l1) ** 2 - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    upper_gap = (p2 - l2) ** 2 - 2.0 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    lo = difference - math.sqrt(max(0.0, lower_gap))
    hi = difference + math.sqrt(max(0.0, upper_gap))
    return max(-1.0, lo), min(1.0, hi)


def _best_case_discordant(max_drop: float, n: int) -> int:
    """Discordant pairs of the most favourable suite of n items dropping max_drop: ceil(max_drop * n), all against
    the quant, at least one (a drop of 0 is a drop of one item) and at most n. max_drop * n is rounded to 9 decimals
    first so that 0.07 * 100 = 7.000000000000001 counts as 7 items."""
    return min(n, max(1, math.ceil(round(max_drop * n, 9))))


def _detectable(max_drop: float, n: int, alpha: float) -> bool:
    return n > 0 and mcnemar_exact(_best_case_discordant(max_drop, n), 0) < alpha


def min_items_to_detect(max_drop: float, alpha: float = 0.05) -> int | None:
    """The smallest suite size at which a drop of max_drop could reach p < alpha in the best case (every item that
    changed went against the quant); None when no size can (max_drop <= 0)."""
    if max_drop <= 0.0 or not 0.0 < alpha <= 1.0:
        return None
    needed = 1  # best-case p with k discordant pairs is 2^(1-k): the smallest k with 2^(1-k) < alpha
    while mcnemar_exact(needed, 0) >= alpha:
        needed += 1
    # The best case for n items has ceil(max_drop * n) pairs (capped at n), nondecreasing in n: start just below the
    # estimate and walk up, so the answer agrees with _detectable to the item.
    n = max(1, math.floor(needed / max_drop) - 2)
    while n > 1 and _detectable(max_drop, n - 1, alpha):
        n -= 1
    while not _detectable(max_drop, n, alpha):
        n += 1
    return n


@dataclass(frozen=True)
class TaskComparison:
    """The reference's and the quantized model's answers on one task suite, compared item by item."""

    n: int
    ref_accuracy: float
    quant_accuracy: float
    drop: float  # ref_accuracy - quant_accuracy; negative when the quant did better
    drop_ci: tuple[float, float]  # Newcombe's paired interval of the drop
    b: int  # items the reference got right and the quant wrong
    c: int  # items the quant got right and the reference wrong
    p_value: float  # exact McNemar test of b against c
    significant: bool  # p_value < alpha and the quant did worse
    detectable: bool | None  # could this many items show a drop of max_drop at all; None without a max_drop
    min_items: int | None  # the fewest items that could show it
    too_hard: bool  # the reference itself is below TOO_HARD_ACCURACY

    def fails(self, max_drop: float) -> bool:
        """The gate: the accuracy dropped by more than max_drop and the drop is significant."""
        return self.drop > max_drop and self.significant

    def as_dict(self) -> dict:
        record = asdict(self)
        record["drop_ci"] = list(self.drop_ci)
        return record


def compare_tasks(
    ref_ok: Sequence[bool], quant_ok: Sequence[bool], max_drop: float | None, alpha: float = 0.05
) -> TaskComparison:
    """Paired comparison of the reference's and the quant's right/wrong answers on the same items, in order."""
    if len(ref_ok) != len(quant_ok):
        raise ValueError(f"compare_tasks: {len(ref_ok)} reference answers but {len(quant_ok)} quant answers")
    n = len(ref_ok)
    if n == 0:
        raise ValueError("compare_tasks: the task suite has no items")
    ref = np.asarray(ref_ok, dtype=bool)
    quant = np.asarray(quant_ok, dtype=bool)
    n11 = int(np.count_nonzero(ref & quant))
    n10 = int(np.count_nonzero(ref & ~quant))
    n01 = int(np.count_nonzero(~ref & quant))
    n00 = n - n11 - n10 - n01
    ref_accuracy = (n11 + n10) / n
    quant_accuracy = (n11 + n01) / n
    drop = (n10 - n01) / n  # not ref_accuracy - quant_accuracy: one rounding, and exactly 0 when n10 == n01
    p_value = mcnemar_exact(n10, n01)
    return TaskComparison(
        n=n,
        ref_accuracy=ref_accuracy,
        quant_accuracy=quant_accuracy,
        drop=drop,
        drop_ci=paired_difference_ci(n11, n10, n01, n00, level=1.0 - alpha),
        b=n10,
        c=n01,
        p_value=p_value,
        significant=bool(p_value < alpha and n10 > n01),
        detectable=None if max_drop is None else _detectable(max_drop, n, alpha),
        min_items=None if max_drop is None else min_items_to_detect(max_drop, alpha),
        too_hard=ref_accuracy < TOO_HARD_ACCURACY,
    )
