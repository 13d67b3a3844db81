#!/usr/bin/python3
"""Writes the demo series of the README's time-series example (deterministic, seed 7):
  load-history.csv  7 days of one host's cpu and memory use every 5 minutes (2016 rows), normal:
                    a daily cycle plus noise;
  load-live.csv     the next day (288 rows), with an incident from 14:00 to 14:30 (cpu pinned high
                    while memory stays at its usual level), label 1 on those rows.
Columns: timestamp (ISO 8601, UTC), cpu, mem[, label].
  deploy/demo/make_series.py [--out deploy/demo]"""
import argparse
import datetime as dt
import math
import os
import random


def rows(start, n, rng, incident=None):
    for i in range(n):
        t = start + dt.timedelta(minutes=5 * i)
        day = (t.hour * 60 + t.minute) / 1440
        cpu = 35 + 25 * math.sin(2 * math.pi * (day - 0.3)) + rng.gauss(0, 3)
        mem = 55 + 10 * math.sin(2 * math.pi * (day - 0.25)) + rng.gauss(0, 1.5)
        bad = incident is not None and incident[0] <= t < incident[1]
        if bad:
            cpu = 97 + rng.gauss(0, 1)
        yield t, max(cpu, 0), mem, int(bad)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = p.parse_args()
    rng = random.Random(7)
    start = dt.datetime(2024, 3, 4)
    with open(os.path.join(a.out, "load-history.csv"), "w") as f:
        f.write("timestamp,cpu,mem\n")
        for t, cpu, mem, _ in rows(start, 7 * 288, rng):
            f.write(f"{t:%Y-%m-%dT%H:%M:%SZ},{cpu:.2f},{mem:.2f}\n")
    live = start + dt.timedelta(days=7)
    incident = (live + dt.timedelta(hours=14), live + dt.timedelta(hours=14, minutes=30))
    with open(os.path.join(a.out, "load-live.csv"), "w") as f:
        f.write("timestamp,cpu,mem,label\n")
        for t, cpu, mem, bad in rows(live, 288, rng, incident):
            f.write(f"{t:%Y-%m-%dT%H:%M:%SZ},{cpu:.2f},{mem:.2f},{bad}\n")


if __name__ == "__main__":
    main()
