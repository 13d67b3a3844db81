#!/usr/bin/python3
"""Train an autoencoder in aeserve on a labelled CSV, score the held-out part, print precision,
recall and ROC-AUC, and save three plots.

  PYTHONPATH=build/clients/python clients/python/examples/train_and_score.py \
      --server localhost:50051 --data ../shared/data/odds/cardio.csv --out /tmp/plots

The CSV has numeric feature columns and a last column `label` (1 = anomaly). The model trains on
the normal rows of a random 60% (how a service trained on normal traffic is used) and scores the
other 40%.
"""
import argparse
import os

import numpy as np

from aeserve import Client
from aeserve import plots


def roc_auc(scores, labels):
    """Probability that a random anomaly scores above a random normal sample (ties count half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    s = np.asarray(scores)
    for v in np.unique(s):  # average ranks of ties
        tie = s == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.environ.get("AESERVE_SERVER") or "localhost:50051")
    p.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "shared", "data", "odds", "cardio.csv"))
    p.add_argument("--model", default="example")
    p.add_argument("--out", default=".")
    p.add_argument("--prefix", default="", help="prefix of the plot file names (cardio- for docs/)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    with open(args.data) as f:
        names = f.readline().strip().split(",")[:-1]
    data = np.loadtxt(args.data, delimiter=",", skiprows=1, dtype=np.float32)
    x, y = data[:, :-1], data[:, -1].astype(int)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(x))
    cut = int(0.6 * len(x))
    train, test = perm[:cut], perm[cut:]
    normal_train = train[y[train] == 0]

    client = Client(args.server)
    print(f"training {args.model} on {len(normal_train)} normal rows x {x.shape[1]} features "
          f"(the server's default architecture)")
    job = client.train(args.model, x[normal_train], feature_names=names, epochs=args.epochs,
                       patience=10, seed=args.seed,
                       progress=lambda j: print(f"  epoch {j.epoch}/{j.epochs} train {j.train_loss:.4f} "
                                                f"val {j.validation_loss:.4f}", end="\r"))
    print(f"\nversion {job.version} trained in {job.elapsed_seconds:.2f} s")

    result = client.score(args.model, x[test])
    flagged, truth = result.anomalous, y[test] == 1
    tp = int((flagged & truth).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    print(f"test: {len(test)} rows, {int(truth.sum())} anomalies; flagged {int(flagged.sum())}")
    print(f"precision {precision:.3f} recall {recall:.3f} ROC-AUC {roc_auc(result.scores, y[test]):.3f}")

    os.makedirs(args.out, exist_ok=True)
    info = client.model(args.model, include_calibration=True)
    plots.plot_errors(result, info, os.path.join(args.out, args.prefix + "errors.png"), labels=y[test])
    plots.plot_training(job, os.path.join(args.out, args.prefix + "training.png"))
    stream = client.stream(args.model, [x[test][i:i + 100] for i in range(0, len(test), 100)])
    plots.plot_stream(stream, os.path.join(args.out, args.prefix + "stream.png"), labels=y[test])
    print(f"plots: {args.out}/{args.prefix}errors.png, {args.prefix}training.png, {args.prefix}stream.png")


if __name__ == "__main__":
    main()
