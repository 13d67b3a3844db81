#!/usr/bin/python3
"""aeserve on the Numenta Anomaly Benchmark's real server streams, as live telemetry.

  PYTHONPATH=build/clients/python bench/nab/nab.py [--data ../shared/data/nab] [--out DIR]
                                                   [--server HOST:PORT] [--files a,b]

For each series in realKnownCause/ and realAWSCloudwatch/: a series model is trained over RPC on
the first 15% (NAB's probationary period), sent as raw points with their timestamps: the server
builds the samples itself, windows of the last W values plus the time of day (ModelSpec.window);
then every later point is sent in order through one StreamScore stream, one row per time step (the
server keeps the window), with the service's per-stream alarm debounce (K anomalous of the last N
points). A point whose timestamp goes backwards (one in machine_temperature) is not sent, as a
client would drop it, and is never a detection. A detection is the rising edge of the alarm. Detections are written in NAB's results
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
The model learns as the stream goes on, and the server does it, not this script: the model gets a
retrain policy (issue #15's autopilot: keep every scored point as history; each time the history has
grown by as many points as the first training set — the probationary period — retrain on all of it
and activate the new version) and its first training set is kept as history too. The stream
continues with each new version (its window survives the swap; --refit_every 0 sets no policy and
keeps the first model for the whole stream). Points are sent in batches of 16, each once the
previous one is answered and any retrain it triggered has ended, as time would pass for live
telemetry (a point every 5 minutes, a retrain in seconds). NAB lets detectors learn online; every
detector on its scoreboard does.
"""
import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

import numpy as np

from aeserve import AeserveError, Client, ScoreResult
from aeserve.local import start_server as start_local, stop_server

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from variants import variant_args  # noqa: E402
PROFILES = {
    "standard": dict(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": dict(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": dict(tp=1.0, fp=0.11, fn=2.0),
}
WINDOW, DEBOUNCE, PERCENTILE, SUPPRESS, REFIT_EVERY, BATCH = 12, (3, 5), 99.5, 0.05, 1.0, 16


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


def train(client, model, values, stamps, args, retain=False):
    """A series model over the raw points: the server builds windows of WINDOW values and the
    time of day."""
    client.train(model, values.reshape(-1, 1), feature_names=["value"], timestamps=stamps,
                 window=WINDOW, time_features=["hour"], seed=args.seed, scaling="minmax",
                 epochs=100, patience=10, percentile=args.percentile, validation_split=0.2,
                 max_gap_steps=args.max_gap_steps, gap_fill=args.gap_fill, hold_out=args.hold_out,
                 retain=retain, **variant_args(args.variant))


def wait_for_retrains(client, model):
    """Lets time pass while a retrain the server started runs (live telemetry would bring a point
    every five minutes; a retrain takes seconds)."""
    deadline = time.time() + 600
    while any(j.trigger != "upload" and j.state in (1, 2) for j in client.jobs(model)):  # QUEUED, RUNNING
        if time.time() > deadline:
            raise RuntimeError(f"{model}: a retrain did not end within 600 s")
        time.sleep(0.02)


def stream_with_autopilot(client, model, values, stamps, n_train, args, debounce):
    """Gives the model a retrain policy (keep the whole history; each time it has grown by
    refit_every x the first training set's windows, retrain on all of it and activate the result),
    trains the first version on the first n_train points — kept as history —, then streams the
    points from n_train - (WINDOW - 1) on (those first ones warm the window up) through one
    StreamScore stream. The harness never trains or activates anything after the first version:
    the server retrains itself. Each batch is sent once the previous one is answered and any
    retrain it triggered has ended. Returns the alarm of every streamed point."""
    samples = n_train - (WINDOW - 1)  # windows in the first training set
    step = max(int(args.refit_every * samples), 1)
    autopilot = args.refit_every > 0
    if autopilot:
        client.set_retrain_policy(model, 10_000_000, grown_rows=step, min_rows=WINDOW + 10,
                                  min_interval_seconds=0, promotion="activate",
                                  fine_tune=args.fine_tune)
    train(client, model, values[:n_train], stamps[:n_train], args, retain=autopilot)
    n = len(values)
    first = max(n_train - (WINDOW - 1), 0)
    # Batches end where the policy's trigger falls (every `step` points streamed), so each version
    # scores exactly the points after the history it learnt from — as with live telemetry, where
    # the trigger falls between two points.
    triggers = set(range(n_train + step, n, step)) if autopilot else set()
    bounds = sorted(set(range(first, n, BATCH)) | triggers | {n})
    answered = threading.Condition()
    done = [0]  # batches answered

    def batches():
        for k, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            if autopilot and k > 0:
                with answered:  # the trigger is decided when a batch is scored
                    answered.wait_for(lambda: done[0] == k, timeout=600)
                wait_for_retrains(client, model)
            yield values[start:end].reshape(-1, 1), stamps[start:end]

    alarms = []
    for item in client.stream(model, batches(), debounce=debounce, names=["value"]):
        if isinstance(item, ScoreResult):
            alarms.extend(item.alarm.tolist())
            with answered:
                done[0] += 1
                answered.notify_all()
        elif isinstance(item, AeserveError):  # a batch the server refused
            raise RuntimeError(f"{model}: {item}")
    if autopilot:
        retrains = [j for j in client.jobs(model) if j.trigger == "growth"]
        failed = [j for j in retrains if j.state != 3]
        if failed:
            raise RuntimeError(f"{model}: retrain {failed[0].id} ended {failed[0].state}: {failed[0].error}")
    return alarms


def start_server():
    return start_local(os.environ.get("AESERVE_BINARY", os.path.join(ROOT, "build", "server", "aeserve")),
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
    p.add_argument("--suppress", type=float, default=SUPPRESS,
                   help="after a detection, no new one for this share of the stream's length")
    p.add_argument("--refit_every", type=float, default=REFIT_EVERY,
                   help="retrain on the whole history each time it has grown by this many times the "
                        "first training set (0: never retrain)")
    p.add_argument("--seed", type=int, default=1, help="training seed")
    p.add_argument("--fine_tune", action="store_true",
                   help="each retrain starts from the active version's weights (RetrainPolicy.fine_tune)")
    p.add_argument("--variant", help="more Client.train settings for a variant run, e.g. neighbors=0")
    p.add_argument("--max_gap_steps", type=int, default=None,
                   help="the models' ScoringPolicy.max_gap_steps (default: the server's, the window "
                        "length): missed steps up to this are missing values, a longer gap restarts "
                        "the window")
    p.add_argument("--hold_out", choices=("random", "last"), default=None,
                   help="which windows calibrate the threshold (default: the server's)")
    p.add_argument("--gap_fill", choices=("join", "missing"), default=None,
                   help="the models' ScoringPolicy.gap_fill (default: the server's)")
    args = p.parse_args()
    globals()["WINDOW"] = args.window
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
        probation = int(0.15 * len(rows))
        # The points sent: all but those whose time goes backwards (NAB times are local, UTC here).
        sent, latest = [], None
        for i, t in enumerate(times):
            if latest is None or t >= latest:
                sent.append(i)
                latest = t
        values = np.array([float(rows[i]["value"]) for i in sent], dtype=np.float32)
        stamps = np.array([int(times[i].replace(tzinfo=timezone.utc).timestamp() * 1000) for i in sent],
                          dtype=np.int64)
        n_train = max(sum(1 for i in sent if i < probation), WINDOW + 10)
        model = "nab_" + re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(rel)[:-4])
        alarms = stream_with_autopilot(client, model, values, stamps, n_train, args, debounce)
        first_sent = len(sent) - len(alarms)
        detections = [False] * len(rows)
        previous = False
        quiet_until = -1
        for j, a in enumerate(alarms):
            i = sent[first_sent + j]
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
