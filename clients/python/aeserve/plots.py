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
    ax.set_title("training")
    ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig


def plot_stream(results: Iterable[ScoreResult], path: Optional[str] = None, figsize=(10, 4), dpi=100):
    """Reconstruction error over time (sample index) with flagged points and the threshold."""
    results = [r for r in results if isinstance(r, ScoreResult)]
    errors = (np.concatenate([r.scores if r.scores is not None else r.errors for r in results])
              if results else np.array([]))
    flagged = np.concatenate([r.anomalous for r in results]) if results else np.array([], dtype=bool)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    t = np.arange(len(errors))
    ax.plot(t, errors, linewidth=0.7, label="anomaly score")
    ax.scatter(t[flagged], errors[flagged], color="tab:red", s=10, label="flagged", zorder=3)
    if results:
        ax.axhline(results[-1].threshold, color="black", linestyle="--", label="threshold")
    if errors.size and (errors > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("sample")
    ax.set_ylabel("anomaly score")
    ax.set_title("stream")
    ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig
