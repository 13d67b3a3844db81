#!/usr/bin/python3
"""Detection quality of aeserve on labelled tabular sets, through a running aeserve (train over RPC,
score over RPC), beside the published AutoEncoder / VAE / IForest figures and scikit-learn's
IsolationForest run here on the same splits.

  PYTHONPATH=build/clients/python bench/quality/quality.py [--data DIR] [--seeds N] [--json FILE]
                                                           [--server HOST:PORT] [--sets a,b]

Every CSV in --data (numeric features, last column `label`, 1 = anomaly) is evaluated under two
protocols, each over --seeds random 60/40 splits:
  pyod: train on the whole training part, outliers included (PyOD's published protocol);
  semi: train on the inliers of the training part only (a service trained on normal traffic).
ROC-AUC and PR-AUC (average precision) are measured on the test part; precision, recall and F1 of
the server's own flags (its default threshold) are reported for the semi protocol. No per-set
settings: the model is the server's default for the set's feature count.
--missing F removes a share F of all values at random (seeded per split) from both parts: aeserve
gets them as NaN (gaps); IsolationForest, which cannot take NaN, gets them filled with the training
mean.
Without --server it starts build/server/aeserve (or $AESERVE_BINARY) on a free loopback port and
stops it at the end.
"""
import argparse
import glob
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split

from aeserve import AeserveError, Client
from aeserve.local import start_server as start_local, stop_server

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from variants import variant_args  # noqa: E402


def published(data_dir):
    """{set: {method: roc_auc}} from the SOURCE.md results table, if any: a table whose header
    starts with `set`; a cell is a ROC-AUC ("0.81"), a "ROC / PR" pair ("0.496 / 0.025": the
    ROC-AUC is kept) or "0.983 (IForest)" (kept); "n/a" is skipped."""
    out = {}
    path = os.path.join(data_dir, "SOURCE.md")
    if not os.path.exists(path):
        return out
    header = None
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0] == "set":
            header = [re.sub(r"\s+ROC.*$", "", h) for h in cells]
        elif header and len(cells) == len(header) and not cells[0].startswith("-"):
            row = {}
            for h, v in zip(header[1:], cells[1:]):
                m = re.match(r"^([0-9.]+)", v)
                if m:
                    row[h] = float(m.group(1))
            out[cells[0]] = row
        elif header and not line.strip():
            header = None
    return out


def start_server():
    try:
        return start_local(os.environ.get("AESERVE_BINARY", os.path.join(ROOT, "build", "server", "aeserve")),
                           tempfile.mkdtemp(prefix="aeserve_quality_"))
    except RuntimeError as e:
        sys.exit(str(e))


def remove_values(x, share, seed):
    """A copy of x with `share` of its values set to NaN at random."""
    if share <= 0:
        return x
    x = x.copy()
    x[np.random.default_rng(1000 + seed).random(x.shape) < share] = np.nan
    return x


def evaluate(client, name, x, y, seeds, train_args, missing=0.0):
    res = {"pyod": {"roc_auc": [], "pr_auc": []}, "semi": {"roc_auc": [], "pr_auc": [],
           "precision": [], "recall": [], "f1": []}, "iforest": {"roc_auc": [], "pr_auc": []}}
    for seed in range(seeds):
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.4, random_state=seed)
        if yte.sum() == 0 or yte.sum() == len(yte):
            continue
        xtr, xte = remove_values(xtr, missing, seed), remove_values(xte, missing, seed + 500)
        for protocol, rows in (("pyod", xtr), ("semi", xtr[ytr == 0])):
            model = f"q_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}_{protocol}"
            client.train(model, rows, seed=seed + 1, **train_args)  # no train_args: server defaults
            r = client.score(model, xte)
            # Samples skipped for missing too much rank last (never flagged).
            scores = r.scores
            if r.skipped is not None:
                scores = np.where(r.skipped, np.nanmin(scores) - 1, scores)
            res[protocol]["roc_auc"].append(roc_auc_score(yte, scores))
            res[protocol]["pr_auc"].append(average_precision_score(yte, scores))
            if protocol == "semi":
                tp = int((r.anomalous & (yte == 1)).sum())
                p = tp / max(int(r.anomalous.sum()), 1)
                rc = tp / max(int(yte.sum()), 1)
                res["semi"]["precision"].append(p)
                res["semi"]["recall"].append(rc)
                res["semi"]["f1"].append(2 * p * rc / (p + rc) if p + rc else 0.0)
        fill = np.nanmean(xtr, axis=0)
        xtr_f = np.where(np.isnan(xtr), fill, xtr)
        xte_f = np.where(np.isnan(xte), fill, xte)
        forest = IsolationForest(random_state=seed).fit(xtr_f)
        s = -forest.score_samples(xte_f)
        res["iforest"]["roc_auc"].append(roc_auc_score(yte, s))
        res["iforest"]["pr_auc"].append(average_precision_score(yte, s))
    summary = {}
    for k, v in res.items():
        summary[k] = {m: float(np.mean(vals)) for m, vals in v.items()}
        summary[k]["roc_auc_std"] = float(np.std(v["roc_auc"]))
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "odds"))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--json")
    p.add_argument("--server")
    p.add_argument("--sets", help="comma-separated subset of set names")
    p.add_argument("--max-rows", type=int, default=0,
                   help="subsample larger sets to this many rows (ADBench's protocol: 10000)")
    p.add_argument("--variant", help="Client.train settings for a variant run, e.g. neighbors=0")
    p.add_argument("--missing", type=float, default=0.0,
                   help="share of values removed at random (gaps), e.g. 0.1")
    args = p.parse_args()

    proc = None
    address = args.server
    if not address:
        proc, address = start_server()
    client = Client(address, timeout=600)
    pub = published(args.data)
    methods = []  # the published methods, in table order (at most 4 columns)
    for row in pub.values():
        methods += [m for m in row if m not in methods]
    methods = methods[:4]
    files = sorted(glob.glob(os.path.join(args.data, "*.csv")))
    if args.sets:
        wanted = set(args.sets.split(","))
        files = [f for f in files if os.path.basename(f)[:-4] in wanted]
    started = time.time()
    results = {}
    print(f"aeserve detection quality: {len(files)} sets from {args.data}, {args.seeds} seeds, 60/40 splits"
          + (f", variant {args.variant}" if args.variant else ", server defaults")
          + (f", {args.missing:.0%} of values missing" if args.missing else ""))
    print("ROC-AUC mean (std over seeds); pyod = trained with outliers, semi = trained on inliers")
    print(f"{'set':<12} {'rows':>6} {'d':>4} | {'aeserve pyod':>14} {'PR':>5} | {'aeserve semi':>14} {'PR':>5} "
          f"{'P':>5} {'R':>5} {'F1':>5} | {'IForest here':>12} | " + " ".join(f"{m[:8]:>8}" for m in methods))
    for f in files:
        name = os.path.basename(f)[:-4]
        data = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float32)
        x, y = data[:, :-1], data[:, -1].astype(int)
        if args.max_rows and len(x) > args.max_rows:
            keep = np.random.default_rng(0).choice(len(x), args.max_rows, replace=False)
            x, y = x[keep], y[keep]
        try:
            s = evaluate(client, name, x, y, args.seeds, variant_args(args.variant), args.missing)
        except AeserveError as e:
            print(f"{name:<12} failed: {e}")
            continue
        results[name] = s
        pb = pub.get(name, {})
        fmt = lambda v: f"{v:.4f}" if v is not None else "-"
        print(f"{name:<12} {len(x):>6} {x.shape[1]:>4} | {s['pyod']['roc_auc']:.4f} ({s['pyod']['roc_auc_std']:.3f}) "
              f"{s['pyod']['pr_auc']:.3f} | {s['semi']['roc_auc']:.4f} ({s['semi']['roc_auc_std']:.3f}) "
              f"{s['semi']['pr_auc']:.3f} {s['semi']['precision']:.2f} {s['semi']['recall']:.2f} {s['semi']['f1']:.2f} | "
              f"{s['iforest']['roc_auc']:>12.4f} | " + " ".join(f"{fmt(pb.get(m)):>8}" for m in methods),
              flush=True)
    if results:
        mean = lambda proto: np.mean([r[proto]["roc_auc"] for r in results.values()])
        print(f"{'mean':<12} {'':>6} {'':>4} | {mean('pyod'):.4f} {'':>14} | {mean('semi'):.4f} "
              f"{'':>32} | {mean('iforest'):>12.4f} |", end="")
        print(" " + " ".join(f"{np.mean([pub[n][m] for n in results if m in pub.get(n, {})]):>8.4f}"
                             if any(m in pub.get(n, {}) for n in results) else f"{'-':>8}"
                             for m in methods))
        for m in methods:
            with_pub = [n for n in results if m in pub.get(n, {})]
            if not with_pub:
                continue
            wins = [n for n in with_pub if results[n]["pyod"]["roc_auc"] > pub[n][m]]
            print(f"aeserve (pyod protocol) vs published {m}: wins on {len(wins)} of {len(with_pub)} sets; "
                  f"mean {np.mean([results[n]['pyod']['roc_auc'] for n in with_pub]):.4f} vs "
                  f"{np.mean([pub[n][m] for n in with_pub]):.4f}; losses: "
                  f"{', '.join(n for n in with_pub if n not in wins) or 'none'}")
        pr = lambda proto: np.mean([r[proto]["pr_auc"] for r in results.values()])
        print(f"means: ROC-AUC pyod {mean('pyod'):.4f}, semi {mean('semi'):.4f}, IsolationForest here "
              f"{mean('iforest'):.4f}; PR-AUC pyod {pr('pyod'):.4f}, semi {pr('semi'):.4f}, "
              f"IsolationForest here {pr('iforest'):.4f}")
    print(f"took {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    client.close()
    if proc:
        stop_server(proc)


if __name__ == "__main__":
    main()
