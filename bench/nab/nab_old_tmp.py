#!/usr/bin/python3
"""aeserve on the Numenta Anomaly Benchmark's real server streams, as live telemetry.

  PYTHONPATH=build/clients/python bench/nab/nab.py [--data ../shared/data/nab] [--out DIR]
                                                   [--server HOST:PORT] [--files a,b]

For each series in realKnownCause/ and realAWSCloudwatch/: a model is trained over RPC on the
first 15% (NAB's probationary period), on sliding windows of the last W values plus the time of day
(sin and cos of the hour); then every later point is scored in order through StreamScore, its
window as one sample, with the service's per-stream alarm debounce (K anomalous of the last N
points). A detection is the rising edge of the alarm. Detections are written in NAB's results
format and scored here with NAB's published rules: anomaly windows from combined_windows.json; the
first detection in a window earns tp_weight x scaled_sigmoid(position in the window); a detection
outside every window costs fp_weight x scaled_sigmoid(distance after the last window), or the full
fp_weight before any window; a window without a detection costs fn_weight; the probationary period
is not scored; the total over all files is normalised between the null detector (no detections:
0) and the perfect one (100). Profiles: standard (tp 1, fp 0.11, fn 1), reward_low_FP_rate (fp
0.22), reward_low_FN_rate (fn 2).

Default settings (used for every series, none tuned per series): W = 12 (an hour of 5-minute
points), min-max scaling of the training part, default architecture, 100 epochs with early stopping
(patience 10), threshold at the 99.5th percentile of held-out errors, debounce 3 of the last 5
points, and after a detection a quiet period of 5% of the stream (about one NAB anomaly window:
NAB's windows take 10% of a stream, shared by its anomalies), so one incident raises one alarm.
The model learns as the stream goes on, the way an operator runs the service: each time the history
has grown by as many points as the first training set (the probationary period), a new version is
trained over RPC on the whole history and activated, and streaming continues with it
(--refit_every 0 keeps the first model for the whole stream). NAB lets detectors learn online;
every detector on its scoreboard does.
"""
import argparse
import csv
import json
import math
import os
import re
import tempfile
import time
from datetime import datetime

import numpy as np

from aeserve import Client, ScoreResult
from aeserve.local import start_server as start_local, stop_server

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROFILES = {
    "standard": dict(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": dict(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": dict(tp=1.0, fp=0.11, fn=2.0),
}
WINDOW, DEBOUNCE, PERCENTILE, SUPPRESS, REFIT_EVERY = 12, (3, 5), 99.5, 0.05, 1.0


def parse_time(s):
    return datetime.strptime(s.split(".")[0], "%Y-%m-%d %H:%M:%S")


def scaled_sigmoid(position):
    """NAB's weighting: near 1 at the start of a window, 0 at its end, toward -1 after it."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def score_file(times, detections, windows, probation, weights):
    """NAB's raw score of one file for one profile (detections: list of bools per row)."""
    idx_windows = []
    for start, end in windows:
        s, e = parse_time(start), parse_time(end)
        rows = [i for i, t in enumerate(times) if s <= t <= e]
        if rows:
            idx_windows.append((rows[0], rows[-1]))
    tp_scores = {}
    fp_total = 0.0
    prev = None  # (end index, length) of the last window before the current row
    for i, det in enumerate(detections):
        inside = next((w for w in idx_windows if w[0] <= i <= w[1]), None)
        if inside is not None:
            prev = (inside[1], inside[1] - inside[0] + 1)
        if not det or i < probation:
            continue
        if inside is not None:
            length = inside[1] - inside[0] + 1
            position = -(inside[1] - i + 1) / length
            tp_scores[inside] = max(tp_scores.get(inside, -1e9), weights["tp"] * scaled_sigmoid(position))
        elif prev is not None:
            position = abs(prev[0] - i) / max(prev[1] - 1, 1)
            fp_total += weights["fp"] * scaled_sigmoid(position)
        else:
            fp_total += -1.0 * weights["fp"]
    missed = sum(1 for w in idx_windows if w not in tp_scores)
    return sum(tp_scores.values()) + fp_total - weights["fn"] * missed, idx_windows


DIFFS = False


def features(times, values):
    """Row t: the last WINDOW values (and, with DIFFS, their first differences) and the time of
    day; rows before WINDOW-1 have no window."""
    v = np.asarray(values, dtype=np.float32)
    rows = []
    for t in range(WINDOW - 1, len(v)):
        hour = times[t].hour + times[t].minute / 60.0
        w = v[t - WINDOW + 1:t + 1]
        parts = [w, np.diff(v[max(t - WINDOW, 0):t + 1])[-(WINDOW - 1):]] if DIFFS else [w]
        rows.append(np.concatenate(parts + [[math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24)]]))
    return np.array(rows, dtype=np.float32)


def train(client, model, x, args):
    client.train(model, x, seed=args.seed, scaling="minmax", epochs=100, patience=10,
                 percentile=args.percentile, validation_split=0.2)


def stream_with_refits(client, model, x, n_train, first, args, debounce):
    """Trains on x[:n_train], then streams x[first:] through StreamScore in order; whenever the
    history has grown by refit_every x n_train points since the last training, retrains on all of
    it (the new version is activated) and streams on. Returns the alarm of every streamed row."""
    train(client, model, x[:n_train], args)
    step = max(int(args.refit_every * n_train), 1) if args.refit_every > 0 else len(x)
    bounds = list(range(first, len(x), step)) + [len(x)]
    alarms = []
    for seg_start, seg_end in zip(bounds[:-1], bounds[1:]):
        if seg_start > first:
            train(client, model, x[:seg_start], args)
        seg = x[seg_start:seg_end]
        for item in client.stream(model, [seg[i:i + 64] for i in range(0, len(seg), 64)], debounce=debounce):
            if isinstance(item, ScoreResult):
                alarms.extend(item.alarm.tolist())
    return alarms


def start_server():
    return start_local(os.path.join(ROOT, "build", "server", "aeserve"),
                       tempfile.mkdtemp(prefix="aeserve_nab_"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "nab"))
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "aeserve_nab_results"))
    p.add_argument("--server")
    p.add_argument("--files", help="comma-separated subset of file names (without .csv)")
    p.add_argument("--window", type=int, default=12, help="values per sample")
    p.add_argument("--percentile", type=float, default=PERCENTILE, help="threshold percentile")
    p.add_argument("--debounce", default=f"{DEBOUNCE[0]},{DEBOUNCE[1]}", help="K,N: alarm when K of the last N points are anomalous")
    p.add_argument("--diffs", action="store_true", help="also feed the first differences of the window")
    p.add_argument("--suppress", type=float, default=SUPPRESS,
                   help="after a detection, no new one for this share of the stream's length")
    p.add_argument("--refit_every", type=float, default=REFIT_EVERY,
                   help="retrain on the whole history each time it has grown by this many times the "
                        "first training set (0: never retrain)")
    p.add_argument("--seed", type=int, default=1, help="training seed")
    args = p.parse_args()
    globals()["WINDOW"] = args.window
    globals()["DIFFS"] = args.diffs
    debounce = tuple(int(v) for v in args.debounce.split(","))
    proc, address = (None, args.server) if args.server else start_server()
    client = Client(address, timeout=600)
    windows = json.load(open(os.path.join(args.data, "combined_windows.json")))
    files = []
    for category in ("realKnownCause", "realAWSCloudwatch"):
        for name in sorted(os.listdir(os.path.join(args.data, category))):
            if name.endswith(".csv") and (not args.files or name[:-4] in args.files.split(",")):
                files.append(f"{category}/{name}")
    started = time.time()
    raw = {k: 0.0 for k in PROFILES}
    null = {k: 0.0 for k in PROFILES}
    perfect = {k: 0.0 for k in PROFILES}
    print(f"aeserve on NAB: {len(files)} streams; W={WINDOW}, debounce {debounce[0]} of {debounce[1]}, "
          f"threshold p{args.percentile}, quiet {args.suppress:.0%} of the stream after a detection, "
          f"retrain every {args.refit_every:g}x the first training set, seed {args.seed}")
    for rel in files:
        with open(os.path.join(args.data, rel)) as f:
            rows = list(csv.DictReader(f))
        times = [parse_time(r["timestamp"]) for r in rows]
        values = [float(r["value"]) for r in rows]
        probation = int(0.15 * len(rows))
        x = features(times, values)  # x[j] is row j + WINDOW - 1
        train = x[:max(probation - WINDOW + 1, 10)]
        model = "nab_" + re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(rel)[:-4])
        alarms = stream_with_refits(client, model, x, len(train), max(probation - WINDOW + 1, 0),
                                    args, debounce)
        first_scored = len(rows) - len(alarms)
        detections = [False] * len(rows)
        previous = False
        quiet_until = -1
        for j, a in enumerate(alarms):
            i = first_scored + j
            if a and not previous and i > quiet_until:  # rising edge, outside the quiet period
                detections[i] = True
                quiet_until = i + int(args.suppress * len(rows))
            previous = a
        file_windows = windows.get(rel, [])
        file_scores = {}
        for prof, w in PROFILES.items():
            score, idx_windows = score_file(times, detections, file_windows, probation, w)
            file_scores[prof] = score
            raw[prof] += score
            null[prof] += -w["fn"] * len(idx_windows)
            perfect_det = [False] * len(rows)
            for s, _ in idx_windows:
                perfect_det[s] = True
            perfect[prof] += score_file(times, perfect_det, file_windows, probation, w)[0]
        # NAB's results format: timestamp,value,anomaly_score,label
        out_dir = os.path.join(args.out, "aeserve", os.path.dirname(rel))
        os.makedirs(out_dir, exist_ok=True)
        label_rows = set()
        for s, e in file_windows:
            st, en = parse_time(s), parse_time(e)
            label_rows.update(i for i, t in enumerate(times) if st <= t <= en)
        with open(os.path.join(out_dir, "aeserve_" + os.path.basename(rel)), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["timestamp", "value", "anomaly_score", "label"])
            for i, r in enumerate(rows):
                wr.writerow([r["timestamp"], r["value"], 1.0 if detections[i] else 0.0, int(i in label_rows)])
        print(f"  {rel:<58} {len(rows):>6} rows, {len(file_windows)} windows, {sum(detections):>3} detections, "
              f"standard {file_scores['standard']:+.2f}", flush=True)
    print(f"\nNAB score (normalised: null detector 0, perfect 100) on these {len(files)} streams only —"
          " the published totals cover all 58 NAB streams:")
    published = json.load(open(os.path.join(args.data, "final_results.json")))
    print(f"{'detector':<26} {'standard':>9} {'low FP':>8} {'low FN':>8}")
    ours = {k: 100 * (raw[k] - null[k]) / (perfect[k] - null[k]) for k in PROFILES}
    print(f"{'aeserve (these streams)':<26} {ours['standard']:>9.1f} {ours['reward_low_FP_rate']:>8.1f} "
          f"{ours['reward_low_FN_rate']:>8.1f}")
    for name, s in sorted(published.items(), key=lambda kv: -kv[1]["standard"]):
        print(f"{name + ' (published)':<26} {s['standard']:>9.1f} {s['reward_low_FP_rate']:>8.1f} {s['reward_low_FN_rate']:>8.1f}")
    print(f"results in {args.out}; took {time.time() - started:.0f} s")
    client.close()
    if proc:
        stop_server(proc)


if __name__ == "__main__":
    main()
