"""Plots of aeserve results with matplotlib (Agg backend: works without a display)."""
from __future__ import annotations

from typing import Iterable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from aeserve.client import ScoreResult  # noqa: E402


def plot_errors(result: ScoreResult, model_info=None, path: Optional[str] = None,
                labels: Optional[np.ndarray] = None, figsize=(8, 5), dpi=100):
    """Histogram of anomaly scores (reconstruction errors for models without neighbours) with the threshold line and, when `model_info` comes
    from Client.model(name, include_calibration=True), the calibration distribution. With
    `labels` (1 = known anomaly) the two classes are drawn apart."""
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    errors = np.asarray(result.scores if result.scores is not None else result.errors, dtype=np.float64)
    calib = np.asarray(model_info.calibration_errors, dtype=np.float64) if model_info is not None else np.array([])
    pooled = np.concatenate([errors, calib]) if calib.size else errors
    log_scale = bool((pooled > 0).all())  # reconstruction errors; anomaly scores can be negative
    if log_scale:
        lo = max(pooled.min(), 1e-6)
        bins = np.logspace(np.log10(lo), np.log10(max(pooled.max(), lo * 10)), 60)
    else:
        bins = np.linspace(pooled.min(), pooled.max(), 61)
    if calib.size:
        ax.hist(calib, bins=bins, density=True, alpha=0.4, label="calibration (held-out normal)", color="tab:gray")
    if labels is not None:
        labels = np.asarray(labels).astype(bool)
        ax.hist(errors[~labels], bins=bins, density=True, alpha=0.6, label="scored: normal", color="tab:blue")
        ax.hist(errors[labels], bins=bins, density=True, alpha=0.6, label="scored: anomaly", color="tab:red")
    else:
        ax.hist(errors, bins=bins, density=True, alpha=0.6, label="scored", color="tab:blue")
    ax.axvline(result.threshold, color="black", linestyle="--", label=f"threshold {result.threshold:.4g}")
    # The flagged tail: everything past the threshold.
    ax.axvspan(result.threshold, max(bins[-1], result.threshold), color="tab:red", alpha=0.08,
               label=f"flagged: {int(result.anomalous.sum())}")
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel("anomaly score" + ("" if result.scores is not None else " (reconstruction error)"))
    ax.set_ylabel("density")
    ax.set_title(f"{result.model} v{result.version}: {int(result.anomalous.sum())} of {len(errors)} flagged")
    ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig


def plot_training(history, path: Optional[str] = None, figsize=(8, 5), dpi=100):
    """Train and validation loss per epoch. `history` is a TrainingJob (its .history), a ModelInfo
    (its .history.epochs) or a list of EpochRecord."""
    if hasattr(history, "history") and hasattr(history.history, "epochs"):
        epochs = list(history.history.epochs)
    elif hasattr(history, "history"):
        epochs = list(history.history)
    else:
        epochs = list(history)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    x = [e.epoch for e in epochs]
    ax.plot(x, [e.train_loss for e in epochs], label="train")
    val = [e.validation_loss for e in epochs]
    if any(np.isfinite(val)):
        ax.plot(x, val, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    name = getattr(history, "model", "") or getattr(history, "name", "")
    version = getattr(history, "version", 0) or getattr(history, "active_version", 0)
    ax.set_title(f"training: {name} v{version}" if name else "training")
    ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig


def plot_stream(results: Iterable[ScoreResult], path: Optional[str] = None, figsize=(10, 4), dpi=100,
                labels: Optional[np.ndarray] = None, timestamps=None):
    """Anomaly score over the stream with flagged points and the threshold. `timestamps` (one per
    sample: datetime64 or ms since the epoch) put time on the x axis instead of the sample index;
    `labels` (1 = known anomaly) shade the known anomalies."""
    results = [r for r in results if isinstance(r, ScoreResult)]
    errors = (np.concatenate([r.scores if r.scores is not None else r.errors for r in results])
              if results else np.array([]))
    flagged = np.concatenate([r.anomalous for r in results]) if results else np.array([], dtype=bool)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    if timestamps is not None:
        t = np.asarray(timestamps)
        if not np.issubdtype(t.dtype, np.datetime64):
            t = t.astype("int64").astype("datetime64[ms]")
        t = t[:len(errors)]
        ax.set_xlabel("time (UTC)")
    else:
        t = np.arange(len(errors))
        ax.set_xlabel("sample")
    ax.plot(t, errors, linewidth=0.7, label="anomaly score")
    ax.scatter(t[flagged], errors[flagged], color="tab:red", s=10, label="flagged", zorder=3)
    if labels is not None:
        known = np.asarray(labels).astype(bool)[:len(errors)]
        for i in np.flatnonzero(known):
            ax.axvspan(t[i], t[min(i + 1, len(t) - 1)], color="tab:orange", alpha=0.3, linewidth=0,
                       label="known anomaly" if i == np.flatnonzero(known)[0] else None)
    if results:
        ax.axhline(results[-1].threshold, color="black", linestyle="--", label="threshold")
    if errors.size and (errors > 0).all():
        ax.set_yscale("log")
    ax.set_ylabel("anomaly score")
    ax.set_title(f"stream: {results[0].model} v{results[-1].version}, {int(flagged.sum())} of "
                 f"{len(errors)} flagged" if results else "stream")
    ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig
