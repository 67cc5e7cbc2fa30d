"""The per-position comparison of a candidate with its reference, kept per chunk (context window): KL(ref || quant),
top-1 agreement and both models' NLL of the next token, summarised with 95% bootstrap intervals over chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qconv.runtime.logit_stats import logit_stats


@dataclass
class TokenStats:
    """Per chunk (window) and scored position: KL(ref || quant), whether the argmaxes agree, and each model's NLL of
    the next token. Kept per chunk: the confidence intervals resample whole chunks."""

    kld: list[np.ndarray] = field(default_factory=list)
    top1: list[np.ndarray] = field(default_factory=list)
    nll_ref: list[np.ndarray] = field(default_factory=list)
    nll_quant: list[np.ndarray] = field(default_factory=list)

    def add(self, ref_logits: np.ndarray, quant_logits: np.ndarray, next_tokens: np.ndarray) -> None:
        """Logits of the same positions from both models; next_tokens[i] follows position i (-1: none known).
        The per-row log-softmaxes run in C (qconv.runtime.logit_stats), threaded, accurate to float64's 1e-6."""
        nxt = np.asarray(next_tokens, dtype=np.int32)
        self.add_stats(logit_stats(ref_logits, quant_logits, nxt), nxt)

    def add_stats(self, stats, next_tokens: np.ndarray) -> None:
        """One chunk's per-row statistics (a logit_stats.LogitStats, from live logits or a reference cache)."""
        known = np.asarray(next_tokens) >= 0
        self.kld.append(stats.kld)
        self.top1.append(stats.argmax_ref == stats.argmax_quant)
        self.nll_ref.append(stats.nll_ref[known])
        self.nll_quant.append(stats.nll_quant[known])

    def summary(self, intervals: bool = True) -> dict:
        kld = np.concatenate(self.kld) if self.kld else np.zeros(0)
        nll_r = np.concatenate(self.nll_ref) if self.nll_ref else np.zeros(0)
        nll_q = np.concatenate(self.nll_quant) if self.nll_quant else np.zeros(0)
        ppl_ref = float(np.exp(nll_r.mean())) if nll_r.size else float("nan")
        ppl_quant = float(np.exp(nll_q.mean())) if nll_q.size else float("nan")
        row = {
            "tokens": int(kld.size),
            "chunks": len(self.kld),
            "kld_mean": float(kld.mean()),
            "kld_p99": float(np.percentile(kld, 99)),
            "kld_median": float(np.median(kld)),
            "top1": float(np.concatenate(self.top1).mean()),
            "ppl_ref": ppl_ref,
            "ppl_quant": ppl_quant,
            "ppl_ratio": ppl_quant / ppl_ref,
        }
        if intervals:
            from qconv.converter.quality.stats import text_suite_cis

            cis = text_suite_cis(self.kld, self.top1, self.nll_ref, self.nll_quant)
            row.update({f"{key}_ci": [float(lo), float(hi)] for key, (lo, hi) in cis.items()})
        return row
