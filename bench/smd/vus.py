"""VUS-PR / VUS-ROC exactly as TSB-AD computes them (numpy only).

Metric: "Volume Under the Surface" (Paparrizos et al., VLDB 2022), in the
form that TSB-AD (Liu & Paparrizos, NeurIPS 2024) reports as ``VUS-PR``.
No point adjustment is involved anywhere.

What each piece follows (github.com/TheDatumOrg/TSB-AD; the same code ships in
the PyPI release tsb_ad 1.5):

* ``vus_pr`` / ``vus_roc`` / ``range_curves``:
  ``TSB_AD/evaluation/basic_metrics.py`` at commit 4361675e82,
  ``basic_metricor.RangeAUC_volume_opt`` (the ``version='opt'`` default; the
  ``'opt_mem'`` variant computes the same numbers) with ``thre=250``, reached
  via ``generate_curve`` from ``TSB_AD/evaluation/metrics.py`` at commit
  2b929f9126, ``get_metrics(score, labels, slidingWindow, version='opt',
  thre=250)``.  Helpers: ``range_convers_new`` -> ``anomaly_segments``,
  ``sequencing`` -> ``buffered_labels``, ``new_sequence`` ->
  ``_merged_extents``.
* ``find_length_rank``: ``TSB_AD/utils/slidingWindows.py`` at commit
  23d609e40c (statsmodels ``acf(x, nlags=400, fft=True)`` + scipy
  ``argrelextrema(acf, np.greater)``), called the way
  ``benchmark_exp/Run_Detector_U.py`` / ``Run_Detector_M.py`` (commits
  4361675e82 / 467a2eb8c4) call it: ``find_length_rank(data[:, 0].reshape(-1,
  1), rank=1)``, i.e. on the FIRST channel only.

The definition, for labels y (0/1, length n, P = sum(y) > 0) and a score s:

1. Window sizes.  The surface is averaged over every window size
   w = 0, 1, ..., sliding_window.  Current TSB-AD passes ``slidingWindow``
   unchanged as the maximum window; an older TSB-AD commit (23d609e40c) and
   the standalone VUS repo's original ``get_metrics`` passed
   ``2*slidingWindow``.  To reproduce those, call with ``2 * sliding_window``.
2. Buffered labels for window w (``sequencing``).  h = w // 2.  Around each
   anomaly segment [s, e], the h points on each side get the weight
   sqrt(1 - d / w), d = 1..h being the distance to the segment (clipped at the
   series edges); weights from neighbouring segments add and the sum is
   clipped to 1; anomaly points stay 1.  So w = 0 and w = 1 add nothing.
3. Thresholds.  score sorted descending; the 250 thresholds are
   sorted[floor(linspace(0, n - 1, 250))] (duplicates kept); a point is
   predicted anomalous at threshold t iff s >= t.  The first threshold is the
   max score, the last the min score (everything predicted).
4. At one threshold and window (weights g from step 2, pred the prediction):
   TP = sum(g * pred)                   (anomaly points count 1, buffer points g)
   B  = TP - #(predicted anomaly points) (buffer credit earned)
   P_new = P + B / 2
   recall = min(TP / P_new, 1)
   existence = fraction of extents with at least one predicted point, where
       the extents are the segments widened by h on each side, merged when
       widened neighbours overlap or touch (e_i + h >= s_{i+1} - h)
   TPR = recall * existence
   FPR = (#pred - TP) / (n - P_new)
   precision = TP / #pred
5. Integration per window.  AP = sum_k (TPR_k - TPR_{k-1}) * precision_k over
   the 250 thresholds with TPR_0 = 0 (right-endpoint step sum, no
   interpolation, no final point); ROC AUC = trapezoid over
   (0,0), (FPR_k, TPR_k)..., (1,1).
6. VUS-PR = mean of AP over the windows of step 1; VUS-ROC likewise.

Because thresholds are picked by rank, the result is unchanged by any
strictly increasing transform of the score (e.g. TSB-AD's min-max scaling).

Deviations from TSB-AD (none changes a value TSB-AD would return):
* Vectorized: each point's first threshold index is found once with
  ``searchsorted`` and per-threshold sums are cumulative ``bincount``s, so a
  24,000-point series takes well under a second instead of a Python loop over
  250 thresholds x windows.  Sums are added in a different order, so results
  can differ from TSB-AD in the last few ulps.
* Input checks: labels must be 0/1 with at least one anomaly and one normal
  point, the score must be finite and the same length (TSB-AD crashes or
  returns nan there instead).
* ``find_length_rank``: the ACF is computed with numpy's FFT instead of
  statsmodels (same formula: demeaned, unadjusted, lags 0..400); 2-D input
  uses its first column (TSB-AD's function itself returns 0 for multi-column
  input; its benchmark scripts pass the first column); ranks 0, 1, 2 only;
  series shorter than 2 points or constant return the 125 fallback.
"""

import numpy as np

N_THRESHOLDS = 250  # TSB-AD get_metrics(thre=250)
FALLBACK_PERIOD = 125  # find_length_rank's answer when no usable period


def _check_inputs(labels, score):
    labels = np.asarray(labels)
    score = np.asarray(score, dtype=float)
    if labels.ndim != 1 or score.shape != labels.shape:
        raise ValueError("labels and score must be 1-D arrays of the same length")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0/1")
    labels = labels.astype(int)
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise ValueError("labels need at least one anomaly and one normal point")
    if not np.all(np.isfinite(score)):
        raise ValueError("score must be finite")
    return labels, score


def anomaly_segments(labels):
    """Inclusive (starts, ends) of the runs of 1s (TSB-AD range_convers_new)."""
    edges = np.diff(np.concatenate(([0], np.asarray(labels, dtype=int), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


def buffered_labels(labels, window):
    """Labels with the sqrt-shaped buffer of width window // 2 on both sides
    of every anomaly segment (TSB-AD basic_metricor.sequencing)."""
    out = np.asarray(labels, dtype=float).copy()
    half = window // 2
    if half == 0:
        return out
    starts, ends = anomaly_segments(labels)
    dist = np.arange(1, half + 1)
    ramp = np.sqrt(1 - dist / window)
    positions = np.concatenate([ends[:, None] + dist, starts[:, None] - dist])
    weights = np.broadcast_to(ramp, positions.shape)
    inside = (positions >= 0) & (positions < len(out))
    np.add.at(out, positions[inside], weights[inside])  # overlapping buffers add
    return np.minimum(out, 1.0)


def _merged_extents(starts, ends, window, n):
    """Segments widened by window // 2 and merged where the widened
    neighbours overlap or touch (TSB-AD basic_metricor.new_sequence)."""
    half = window // 2
    lo, hi = starts - half, ends + half
    opens = np.concatenate(([True], hi[:-1] < lo[1:]))
    closes = np.concatenate((opens[1:], [True]))
    return np.maximum(lo[opens], 0), np.minimum(hi[closes], n - 1)


def threshold_indices(n, n_thresholds=N_THRESHOLDS):
    """Positions in the descending-sorted score used as thresholds."""
    return np.linspace(0, n - 1, n_thresholds).astype(int)


def _first_hits(score, n_thresholds):
    """thresholds, and for every point the index of the first threshold at
    which it is predicted (pred_j = score >= thresholds[j] holds for all
    j >= first_hit since thresholds never increase)."""
    thresholds = np.sort(score)[::-1][threshold_indices(len(score), n_thresholds)]
    first_hit = np.searchsorted(-thresholds, -score, side="left")
    return thresholds, first_hit


def _curves(labels, first_hit, n_thresholds, window):
    """TPR, FPR, precision at every threshold for one window size."""
    n = len(labels)

    def count_by_threshold(idx, w=None):  # sum of w over points predicted at each threshold
        return np.cumsum(np.bincount(idx, weights=w, minlength=n_thresholds))

    n_pred = count_by_threshold(first_hit)
    weights = buffered_labels(labels, window)
    tp = count_by_threshold(first_hit, weights)
    buffer_credit = count_by_threshold(first_hit, weights * (labels == 0))
    p_new = labels.sum() + buffer_credit / 2
    recall = np.minimum(tp / p_new, 1.0)

    starts, ends = _merged_extents(*anomaly_segments(labels), window, n)
    # first threshold at which each extent holds a predicted point
    padded = np.append(first_hit, n_thresholds)
    bounds = np.column_stack([starts, ends + 1]).ravel()
    extent_hit = np.minimum.reduceat(padded, bounds)[::2]
    existence = count_by_threshold(extent_hit) / len(starts)

    tpr = recall * existence
    fpr = (n_pred - tp) / (n - p_new)
    precision = tp / n_pred
    return tpr, fpr, precision


def range_curves(labels, score, window, n_thresholds=N_THRESHOLDS):
    """Range-based (tpr, fpr, precision, thresholds) for one window size, one
    entry per threshold (without TSB-AD's synthetic start/end points)."""
    labels, score = _check_inputs(labels, score)
    thresholds, first_hit = _first_hits(score, n_thresholds)
    return (*_curves(labels, first_hit, n_thresholds, window), thresholds)


def range_ap(tpr, precision):
    """Right-endpoint step sum, starting from TPR = 0."""
    return float(np.sum(np.diff(tpr, prepend=0.0) * precision))


def range_roc_auc(tpr, fpr):
    """Trapezoid from (0, 0) through the curve to (1, 1)."""
    x = np.concatenate(([0.0], fpr, [1.0]))
    y = np.concatenate(([0.0], tpr, [1.0]))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def vus(labels, score, sliding_window, n_thresholds=N_THRESHOLDS):
    """(VUS-ROC, VUS-PR) averaged over windows 0..sliding_window."""
    labels, score = _check_inputs(labels, score)
    if int(sliding_window) != sliding_window or sliding_window < 0:
        raise ValueError("sliding_window must be a non-negative integer")
    _, first_hit = _first_hits(score, n_thresholds)
    rocs, aps = [], []
    for window in range(int(sliding_window) + 1):
        tpr, fpr, precision = _curves(labels, first_hit, n_thresholds, window)
        rocs.append(range_roc_auc(tpr, fpr))
        aps.append(range_ap(tpr, precision))
    return float(np.mean(rocs)), float(np.mean(aps))


def vus_pr(labels, score, sliding_window):
    """TSB-AD's VUS-PR (get_metrics(score, labels, slidingWindow)['VUS-PR'])."""
    return vus(labels, score, sliding_window)[1]


def vus_roc(labels, score, sliding_window):
    """TSB-AD's VUS-ROC (get_metrics(score, labels, slidingWindow)['VUS-ROC'])."""
    return vus(labels, score, sliding_window)[0]


def _acf(x, max_lag):
    """Unadjusted, demeaned sample autocorrelation for lags 0..max_lag
    (statsmodels acf(x, nlags=max_lag, fft=True) defaults)."""
    x = x - x.mean()
    n = len(x)
    nfft = 1 << (2 * n - 1).bit_length()  # >= 2n - 1: no circular wrap-around
    spectrum = np.fft.rfft(x, nfft)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), nfft)[:n] / n
    return acov[: max_lag + 1] / acov[0]


def find_length_rank(data, rank=1):
    """TSB-AD's period estimate (used as slidingWindow): the lag of the
    highest local maximum of the ACF over lags 3..400 of the first 20,000
    points of the first channel, or 125 if there is none or it is outside
    lags 6..303."""
    if rank not in (0, 1, 2):
        raise ValueError("rank must be 0, 1 or 2")
    x = np.asarray(data, dtype=float)
    if x.ndim > 1:
        x = x.reshape(len(x), -1)[:, 0]
    if rank == 0:
        return 1
    x = x[:20000]
    base = 3
    if len(x) < 2 or not np.isfinite(x).all() or np.all(x == x[0]):
        return FALLBACK_PERIOD
    corr = _acf(x, 400)[base:]
    # strict interior local maxima (scipy argrelextrema(corr, np.greater))
    peaks = np.flatnonzero((corr[1:-1] > corr[:-2]) & (corr[1:-1] > corr[2:])) + 1
    if len(peaks) == 0:
        return FALLBACK_PERIOD
    order = np.argsort(corr[peaks])[::-1]  # highest first, same call as TSB-AD
    chosen = order[0]
    if rank == 2:  # next-highest peak at a longer lag, if any
        chosen = next((i for i in order[1:] if i > order[0]), order[0])
    if peaks[chosen] < 3 or peaks[chosen] > 300:
        return FALLBACK_PERIOD
    return int(peaks[chosen] + base)
