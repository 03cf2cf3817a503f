"""Confidence intervals and paired tests for a study's cells (several seeds, per-item scores).

Two kinds of metric, two methods, both named in the report's caption:

- A number per fine-tune (training or held-out loss): the mean over seeds with a Student-t
  95% interval (``scipy.stats.t``), and a paired t-test against the reference cell over seeds,
  seed s of one cell against seed s of the other (``scipy.stats.ttest_rel``): the same seed
  means the same data order and initialisation, so the pairing removes that shared noise.
- A score per evaluation item (accuracy, a judge's grade): a paired bootstrap over seeds and
  items (Efron & Tibshirani 1993; for NLP, Koehn 2004 and Berg-Kirkpatrick et al. 2012). Each
  resample draws seeds and items with replacement, the same ones for both cells, and takes the
  mean difference. The interval is the percentile interval; the two-sided p-value counts the
  resampled differences at least as far from the observed one as the observed one is from 0
  (the shifted-null bootstrap test), with the usual +1 correction. scipy's ``bootstrap`` gives
  intervals but no p-value and no two-level resampling, hence our own (vectorised) loop.

Scores are arrays of shape (seeds, items); a missing score (None: unscorable item) is excluded
by removing that item from both cells.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0  # the bootstrap's own random seed: the same inputs always give the same interval and p-value


def t_interval(values, level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """``(mean, low, high)`` of ``values`` with a Student-t interval; no interval for fewer than 2 values.

    Args:
        values: one number per seed.
        level: the interval's coverage (0.95: 95%).
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        raise ValueError("t_interval: no values")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def paired_t(values, reference) -> tuple[float, float | None]:
    """``(mean difference, two-sided p)`` of a paired t-test over seeds; p None below 2 pairs.

    Identical pairs give p = 1; a constant non-zero difference (zero variance) gives p = 0.
    """
    from scipy import stats

    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_t: {a.size} values against {b.size} reference values; pair them by seed")
    diff = a - b
    if diff.size < 2:
        return float(diff.mean()), None
    if np.allclose(diff, diff[0]):
        return float(diff.mean()), 1.0 if abs(diff[0]) < 1e-12 else 0.0
    return float(diff.mean()), float(stats.ttest_rel(a, b).pvalue)


def _matrix(scores) -> np.ndarray:
    m = np.asarray([[np.nan if v is None else v for v in row] for row in scores], dtype=float)
    if m.ndim != 2 or m.size == 0:
        raise ValueError("scores must be a non-empty (seeds, items) table")
    return m


def _resampled_means(d: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``d`` (seeds, items) over seeds and items drawn with replacement, ``resamples`` times."""
    rng = np.random.default_rng(seed)
    k, n = d.shape
    out = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // max(k * n, 1)))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        seeds = rng.integers(0, k, size=(b, k)) if k > 1 else np.zeros((b, 1), dtype=int)
        items = rng.integers(0, n, size=(b, n))
        out[start:start + b] = d[seeds[:, :, None], items[:, None, :]].mean(axis=(1, 2))
    return out


def bootstrap_interval(scores, level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = SEED) -> tuple[float, float, float]:
    """``(mean, low, high)``: percentile interval of the mean score, resampling seeds and items.

    Args:
        scores: (seeds, items) per-item scores, None for an unscorable item (dropped).
    """
    m = _matrix(scores)
    m = m[:, ~np.isnan(m).any(axis=0)]
    if m.shape[1] == 0:
        raise ValueError("bootstrap_interval: no item is scored in every seed")
    means = _resampled_means(m, resamples, seed)
    tail = (1 - level) / 2
    return float(m.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_bootstrap(scores, reference, level: float = LEVEL, resamples: int = RESAMPLES,
                     seed: int = SEED) -> dict:
    """Paired bootstrap of ``scores`` minus ``reference`` over seeds and items.

    Args:
        scores, reference: (seeds, items) tables over the same items in the same order; seed s
            of one is paired with seed s of the other. A table with one row (e.g. an untuned
            model, whose greedy answers do not depend on a seed) is paired with every row.

    Returns:
        ``{"diff", "low", "high", "p", "items", "seeds"}``: the mean difference, its percentile
        interval and the two-sided p-value ``(1 + #{|d* - d| >= |d|}) / (resamples + 1)``.
    """
    a, b = _matrix(scores), _matrix(reference)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired_bootstrap: {a.shape[1]} items against {b.shape[1]} reference items; "
                         "both cells must be scored on the same items")
    if a.shape[0] != b.shape[0]:
        if 1 not in (a.shape[0], b.shape[0]):
            raise ValueError(f"paired_bootstrap: {a.shape[0]} seeds against {b.shape[0]}; pair them by seed")
        rows = max(a.shape[0], b.shape[0])
        a, b = np.repeat(a, rows // a.shape[0], axis=0), np.repeat(b, rows // b.shape[0], axis=0)
    d = a - b
    d = d[:, ~np.isnan(d).any(axis=0)]
    if d.shape[1] == 0:
        raise ValueError("paired_bootstrap: no item is scored in both cells")
    observed = float(d.mean())
    means = _resampled_means(d, resamples, seed)
    tail = (1 - level) / 2
    extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - 1e-12))
    return {"diff": observed, "low": float(np.quantile(means, tail)), "high": float(np.quantile(means, 1 - tail)),
            "p": min(1.0, (1 + extreme) / (resamples + 1)), "items": int(d.shape[1]), "seeds": int(d.shape[0])}
