#!/usr/bin/python3
"""aeserve on multivariate server telemetry (SMD, ASD): VUS-PR as TSB-AD measures it, and the
service's own use, through a running aeserve (train over RPC, score over RPC).

  PYTHONPATH=build/clients/python bench/smd/smd.py [--data DIR] [--json FILE] [--server HOST:PORT]
                                                   [--tsb-tr machine=N,...] [--machines a,b]
                                                   [--window K] [--seed S] [--seeds N]

DIR holds one folder per machine with `train.csv` (features) and `test.csv` (features, `label`
last, 1 = anomaly); every such folder is evaluated (sets never seen before included). Two protocols:
  tsb:   TSB-AD's (Liu & Paparrizos, NeurIPS 2024): the series is the machine's test half; the model
         is trained on its first `tr` points (--tsb-tr; SMD machine-2-1: 5923, machine-3-4: 2634 as
         in TSB-AD's file names; other folders: the first 30% of the test half) and scores the
         whole series. Metrics: VUS-PR (bench/smd/vus.py, TSB-AD's definition, sliding window from
         find_length_rank on the first channel), PR-AUC (average precision), ROC-AUC.
  split: the service's own use: trained on train.csv, scores test.csv; VUS-PR, PR-AUC, ROC-AUC and
         the precision / recall / F1 of the server's own flags (its default threshold).
No per-machine settings. The model is a series model (ModelSpec.window): each sample is a window of
the last K rows (--window, default 8; 1 = the row alone; 8 chosen over 1 and 4 by the mean VUS-PR
over SMD and ASD, both protocols, see bench/RESULTS.md), built by the server from rows sent with
their timestamps (one a minute); the score of a point is the anomaly score of the window ending at
it, and the first K-1 points, which warm the window up, take the first window's score.
JSON: {machine: {"tsb": {"vus_pr", "pr_auc", "roc_auc"}, "split": {... "precision", "recall",
"f1"}}}. Without --server it starts build/server/aeserve (or $AESERVE_BINARY) on a free loopback
port and stops it.
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vus import find_length_rank, vus_pr  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from variants import variant_args  # noqa: E402

from aeserve import Client  # noqa: E402
from aeserve.local import start_server as start_local, stop_server  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TSB_TR = {"machine-2-1": 5923, "machine-3-4": 2634}  # TSB-AD's tr_ for these SMD series
TSB_TR_FALLBACK = 0.3
# TSB-AD's published VUS-PR for these series (../shared/data/smd/SOURCE.md).
PUBLISHED_AE = {"machine-2-1": 0.350, "machine-3-4": 0.428}


def load(path, labelled):
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    if labelled:
        return data[:, :-1], data[:, -1].astype(int)
    return data, None


STEP_MS = 60_000  # SMD and ASD are one-minute series without timestamps of their own


def series_scores(client, model, x):
    """Scores the series `x` (rows in time order) with the series model `model` in one call: the
    server keeps the window; its first window-1 steps warm up and take the first full window's
    score (as if the series had started earlier at the same level)."""
    r = client.score(model, x, timestamps=np.arange(len(x), dtype=np.int64) * STEP_MS)
    scores = np.asarray(r.scores, dtype=np.float64)
    warm = r.warming_up if r.warming_up is not None else np.zeros(len(scores), dtype=bool)
    first = int(np.argmin(warm)) if not warm.all() else len(scores)
    scores[:first] = scores[first] if first < len(scores) else 0.0
    return scores, r.anomalous


def metrics(labels, score, sliding_window):
    return {"vus_pr": float(vus_pr(labels, score, sliding_window)),
            "pr_auc": float(average_precision_score(labels, score)),
            "roc_auc": float(roc_auc_score(labels, score)),
            "sliding_window": int(sliding_window)}


def flags(labels, anomalous):
    tp = int((anomalous & (labels == 1)).sum())
    p = tp / max(int(anomalous.sum()), 1)
    r = tp / max(int(labels.sum()), 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "flagged": int(anomalous.sum())}


def evaluate(client, name, folder, tr, k, seed, train_args):
    model = "smd_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    test_x, test_y = load(os.path.join(folder, "test.csv"), True)
    out = {}
    sw = find_length_rank(test_x, rank=1)
    if tr is None:
        tr = int(TSB_TR_FALLBACK * len(test_x))

    def train(name, x):
        client.train(name, x, window=k, timestamps=np.arange(len(x), dtype=np.int64) * STEP_MS,
                     seed=seed, **train_args)

    train(model + "_tsb", test_x[:tr])
    scores, _ = series_scores(client, model + "_tsb", test_x)
    out["tsb"] = metrics(test_y, scores, sw)
    out["tsb"]["train_points"] = tr
    if os.path.exists(os.path.join(folder, "train.csv")):
        train_x, _ = load(os.path.join(folder, "train.csv"), False)
        train(model + "_split", train_x)
        scores, anomalous = series_scores(client, model + "_split", test_x)
        out["split"] = metrics(test_y, scores, sw)
        out["split"].update(flags(test_y, anomalous))
    return out


def mean_of(runs):
    """The per-protocol mean of each metric over seed runs (one run: itself)."""
    out = {}
    for protocol in runs[0]:
        out[protocol] = {k: float(np.mean([r[protocol][k] for r in runs])) for k in runs[0][protocol]}
    return out


def print_line(label, res, pub):
    t, s = res["tsb"], res.get("split")
    line = (f"{label:<12} | {t['vus_pr']:>10.3f} {t['pr_auc']:>6.3f} {t['roc_auc']:>6.3f} "
            f"{pub if pub is not None else '-':>6} |")
    if s:
        line += (f" {s['vus_pr']:>12.3f} {s['pr_auc']:>6.3f} {s['roc_auc']:>6.3f} "
                 f"{s['precision']:>5.2f} {s['recall']:>5.2f} {s['f1']:>5.2f}")
    print(line, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "smd"))
    p.add_argument("--json")
    p.add_argument("--server")
    p.add_argument("--tsb-tr", default="", help="machine=N,... training points for the tsb protocol")
    p.add_argument("--machines", help="comma-separated subset of machine folders")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", type=int, default=1,
                   help="run seeds --seed .. --seed+N-1 and report each and their mean (VUS-PR on "
                        "one series moves by up to 0.1 between training seeds)")
    p.add_argument("--variant", help="Client.train settings for a variant run, e.g. neighbors=0")
    args = p.parse_args()
    tsb_tr = dict(TSB_TR)
    for item in filter(None, args.tsb_tr.split(",")):
        m, n = item.split("=")
        tsb_tr[m] = int(n)

    proc, address = None, args.server
    if not address:
        try:
            proc, address = start_local(os.environ.get("AESERVE_BINARY", os.path.join(ROOT, "build", "server", "aeserve")),
                                        tempfile.mkdtemp(prefix="aeserve_smd_"))
        except RuntimeError as e:
            sys.exit(str(e))
    client = Client(address, timeout=1200)
    folders = sorted(d for d in os.listdir(args.data)
                     if os.path.exists(os.path.join(args.data, d, "test.csv")))
    if args.machines:
        folders = [d for d in folders if d in args.machines.split(",")]
    started = time.time()
    seeds = list(range(args.seed, args.seed + args.seeds))
    print(f"aeserve on {len(folders)} series from {args.data}; window {args.window}, "
          f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}, "
          + (f"variant {args.variant}" if args.variant else "server defaults"))
    print(f"{'machine':<12} | {'tsb VUS-PR':>10} {'PR':>6} {'ROC':>6} {'pub AE':>6} | "
          f"{'split VUS-PR':>12} {'PR':>6} {'ROC':>6} {'P':>5} {'R':>5} {'F1':>5}")
    results = {}
    for name in folders:
        runs = []
        for seed in seeds:
            runs.append(evaluate(client, name, os.path.join(args.data, name), tsb_tr.get(name),
                                 args.window, seed, variant_args(args.variant)))
            if len(seeds) > 1:
                print_line(f"{name[:7]} s{seed}", runs[-1], PUBLISHED_AE.get(name))
        res = mean_of(runs)
        if len(seeds) > 1:
            res["per_seed"] = {str(seed): r for seed, r in zip(seeds, runs)}
        results[name] = res
        print_line(name if len(seeds) == 1 else f"{name[:7]} mean", res, PUBLISHED_AE.get(name))
    print(f"took {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    client.close()
    if proc:
        stop_server(proc)


if __name__ == "__main__":
    main()
