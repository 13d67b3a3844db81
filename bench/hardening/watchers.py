#!/usr/bin/python3
"""Score latency with idle anomaly watchers (issue #12, item 6): a 2,000-row batch whose rows are
all flagged, scored with 0, 1, 100 and 1,000 WatchAnomalies calls open that never read, on the demo
model; median and p90 of 30 calls each (after 5 warm-up calls, which fill the watchers' HTTP/2
windows so that they stall), and the server's resident memory. The 0-watcher run is the reference
in the same run.

    PYTHONPATH=build/clients/python bench/hardening/watchers.py [--binary build/server/aeserve]
    ... watchers.py --paired 1000 --calls 300   # two servers, calls alternating: a same-run ratio
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np

from aeserve.local import start_server, stop_server
from aeserve.v1 import scoring_pb2, scoring_pb2_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


# Opens N watchers on its own channel, says "ready", and waits (to be SIGSTOPped by the bench).
FROZEN_CLIENT = """
import sys, threading, grpc
from aeserve.v1 import scoring_pb2, scoring_pb2_grpc
ch = grpc.insecure_channel(sys.argv[1])
stub = scoring_pb2_grpc.ScoringStub(ch)
calls = [stub.WatchAnomalies(scoring_pb2.WatchAnomaliesRequest(), timeout=3600) for _ in range(int(sys.argv[2]))]
print("ready", flush=True)
threading.Event().wait()
"""


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def demo_server(binary, store):
    proc, addr = start_server(binary, store, [
        "--demo_csv=" + os.path.join(ROOT, "deploy/demo/smd-machine-3-4-train.csv"),
        "--max_watchers=100000"])
    channel = grpc.insecure_channel(addr)
    stub = scoring_pb2_grpc.ScoringStub(channel)
    for _ in range(600):  # the demo model trains at start-up
        try:
            info = stub.GetModel(scoring_pb2.GetModelRequest(model="demo"), timeout=5)
            return proc, addr, channel, stub, info
        except grpc.RpcError:
            time.sleep(0.1)
    raise RuntimeError("the demo model did not load")


def paired(a):
    """Same-run ratio: server B has a.paired frozen watchers, server A none; calls alternate."""
    with tempfile.TemporaryDirectory() as sa, tempfile.TemporaryDirectory() as sb:
        servers = [demo_server(a.binary, sa), demo_server(a.binary, sb)]
        d = servers[0][4].num_features
        req = scoring_pb2.ScoreRequest(model="demo")
        req.samples.num_features = d
        req.samples.values.extend(np.full(2000 * d, 1e3, dtype=np.float32))
        frozen = subprocess.Popen([sys.executable, "-c", FROZEN_CLIENT, servers[1][1], str(a.paired)],
                                  stdout=subprocess.PIPE, text=True)
        frozen.stdout.readline()
        time.sleep(1)
        frozen.send_signal(signal.SIGSTOP)
        for _ in range(a.warmup):
            for s in servers:
                s[3].Score(req, timeout=60)
        time.sleep(1)
        times = [[], []]
        for i in range(2 * a.calls):
            k = i % 2 if (i // 2) % 2 == 0 else 1 - i % 2  # ABBA: neither always goes first
            t = time.perf_counter()
            r = servers[k][3].Score(req, timeout=60)
            times[k].append((time.perf_counter() - t) * 1e3)
            assert r.num_anomalies == 2000
        frozen.kill()
        frozen.wait()
        p50 = [statistics.median(t) for t in times]
        print(f"{'watchers':>9} {'p50 ms':>8} {'p90 ms':>8} {'RSS MB':>8}")
        for k, n in ((0, 0), (1, a.paired)):
            t = sorted(times[k])
            print(f"{n:>9} {p50[k]:>8.2f} {t[int(0.9 * len(t))]:>8.2f} {rss_mb(servers[k][0].pid):>8.0f}")
        print(f"p50 with {a.paired} frozen watchers / without: {p50[1] / p50[0]:.3f}")
        rc = 0
        for s in servers:
            s[2].close()
            rc |= stop_server(s[0])
        return 0 if rc == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build/server/aeserve"))
    ap.add_argument("--watchers", default="0,1,100,1000")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="calls before timing at each watcher count")
    ap.add_argument("--frozen", action="store_true",
                    help="open the watchers in another process and SIGSTOP it: watchers whose "
                         "client reads nothing at all (a hung client), so their windows fill")
    ap.add_argument("--paired", type=int, metavar="N", default=0,
                    help="two servers side by side, one with N frozen watchers and one with none; "
                         "calls alternate between them (a same-run ratio, robust to the machine's "
                         "drift); --calls per server")
    a = ap.parse_args()
    if a.paired:
        return paired(a)
    with tempfile.TemporaryDirectory() as store:
        proc, addr = start_server(a.binary, store, [
            "--demo_csv=" + os.path.join(ROOT, "deploy/demo/smd-machine-3-4-train.csv"),
            "--max_watchers=100000"])
        channel = grpc.insecure_channel(addr)
        stub = scoring_pb2_grpc.ScoringStub(channel)
        for _ in range(600):  # the demo model trains at start-up
            try:
                info = stub.GetModel(scoring_pb2.GetModelRequest(model="demo"), timeout=5)
                break
            except grpc.RpcError:
                time.sleep(0.1)
        d = info.num_features
        req = scoring_pb2.ScoreRequest(model="demo")
        req.samples.num_features = d
        req.samples.values.extend(np.full(2000 * d, 1e3, dtype=np.float32))
        # The watchers come from another connection, as they would from other clients.
        watch_channel = grpc.insecure_channel(addr)
        watch_stub = scoring_pb2_grpc.ScoringStub(watch_channel)
        watchers = []
        frozen = []  # processes holding frozen watchers
        print(f"{'watchers':>9} {'p50 ms':>8} {'p90 ms':>8} {'RSS MB':>8}")
        for n in [int(x) for x in a.watchers.split(",")]:
            if a.frozen:
                have = sum(k for _, k in frozen)
                if n > have:
                    p = subprocess.Popen([sys.executable, "-c", FROZEN_CLIENT, addr, str(n - have)],
                                         stdout=subprocess.PIPE, text=True)
                    p.stdout.readline()  # "ready": its calls are open
                    frozen.append((p, n - have))
            while not a.frozen and len(watchers) < n:  # open calls that are never read
                watchers.append(watch_stub.WatchAnomalies(scoring_pb2.WatchAnomaliesRequest(), timeout=600))
            time.sleep(1)  # let the server accept the new calls
            for p, _ in frozen:
                p.send_signal(signal.SIGSTOP)
            for _ in range(a.warmup):  # warm-up: the watchers' flow-control windows fill
                stub.Score(req, timeout=60)
            time.sleep(1)
            times = []
            for _ in range(a.calls):
                t = time.perf_counter()
                r = stub.Score(req, timeout=60)
                times.append((time.perf_counter() - t) * 1e3)
                assert r.num_anomalies == 2000
            times.sort()
            print(f"{n:>9} {statistics.median(times):>8.2f} {times[int(0.9 * len(times))]:>8.2f} "
                  f"{rss_mb(proc.pid):>8.0f}", flush=True)
        for p, _ in frozen:
            p.kill()
            p.wait()
        for w in watchers:
            w.cancel()
        watch_channel.close()
        channel.close()
        return 0 if stop_server(proc) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
