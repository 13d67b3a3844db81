#!/usr/bin/python3
"""The Python client against a real aeserve server on 127.0.0.1."""
import json
import os
import re
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import grpc
import numpy as np

from aeserve import AeserveError, Client, ScoreResult, StreamStats
from aeserve import plots
from aeserve.client import replica_addresses
from aeserve.local import start_server, stop_server
from aeserve.v1 import model_pb2

SOURCE = os.environ.get("AESERVE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BINARY = os.environ.get("AESERVE_BINARY", os.path.join(SOURCE, "build", "server", "aeserve"))
AECTL = os.environ.get("AECTL_BINARY", os.path.join(SOURCE, "build", "clients", "cpp", "aectl"))
TRAIN = os.path.join(SOURCE, "deploy", "demo", "smd-machine-3-4-train.csv")
TEST = os.path.join(SOURCE, "deploy", "demo", "smd-machine-3-4-test.csv")


def read_csv(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    if header[-1] == "label":
        return data[:, :-1], data[:, -1], header[:-1]
    return data, None, header


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.proc, cls.address = start_server(BINARY, cls.dir.name, ["--demo_csv=" + TRAIN])
        cls.client = Client(cls.address)
        deadline = time.time() + 60
        while True:
            try:
                if cls.client.model("demo").state == 2:  # READY
                    break
            except AeserveError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the demo model did not become READY within 60 s")
            time.sleep(0.01)
        cls.x, cls.labels, cls.names = read_csv(TEST)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.proc.terminate()
        cls.proc.wait(timeout=30)
        cls.dir.cleanup()

    def test_score_equals_the_cli(self):
        r = self.client.score("demo", self.x, top_k=2)
        self.assertIsInstance(r, ScoreResult)
        self.assertEqual(r.errors.shape, (len(self.x),))
        self.assertEqual(r.anomalous.dtype, bool)
        self.assertEqual(r.top_features.shape, (len(self.x), 2))
        out = subprocess.run([AECTL, "--server", self.address, "score", "--model", "demo",
                              "--format", "json", TEST], capture_output=True, text=True, check=True)
        cli = [json.loads(line) for line in out.stdout.splitlines()]
        self.assertEqual(len(cli), len(self.x))
        np.testing.assert_allclose(r.errors, [c["error"] for c in cli], rtol=1e-6)
        self.assertEqual(list(r.anomalous), [c["anomalous"] for c in cli])
        np.testing.assert_allclose(r.p_values, [c["p_value"] for c in cli], rtol=1e-5)

    def test_stream_answers_in_order_and_matches_unary(self):
        batches = [self.x[i:i + 100] for i in range(0, 1000, 100)]
        items = list(self.client.stream("demo", batches, stats_every_batches=5, debounce=(2, 3),
                                        stream_id="py"))
        results = [i for i in items if isinstance(i, ScoreResult)]
        stats = [i for i in items if isinstance(i, StreamStats)]
        self.assertEqual([r.sequence for r in results], list(range(10)))
        self.assertEqual(len(stats), 2)
        self.assertEqual(stats[0].samples, 500)
        unary = self.client.score("demo", self.x[:1000])
        np.testing.assert_array_equal(np.concatenate([r.errors for r in results]), unary.errors)
        self.assertEqual(results[0].alarm.shape, (100,))
        # Each alarm is an incident: opened, maybe updated, closed, with one id.
        changes = [c for r in results for c in r.incidents]
        self.assertTrue(changes)
        self.assertEqual(changes[0].state, 1)  # INCIDENT_OPENED
        self.assertEqual({c.stream_id for c in changes}, {"py"})

    def test_a_bad_batch_in_a_stream_is_an_error_item(self):
        bad = np.full((3, 38), np.inf, dtype=np.float32)
        items = list(self.client.stream("demo", [self.x[:10], bad, self.x[10:20]]))
        self.assertIsInstance(items[0], ScoreResult)
        self.assertIsInstance(items[1], AeserveError)
        self.assertEqual(items[1].code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIsInstance(items[2], ScoreResult)

    def test_columns_by_name_and_gaps(self):
        import pandas as pd
        want = self.client.score("demo", self.x[:200], top_k=2)
        self.assertEqual(want.missing, None)
        frame = pd.DataFrame(self.x[:200], columns=self.names)
        shuffled = frame[list(reversed(self.names))]  # columns reversed: matched by name
        got = self.client.score("demo", shuffled, top_k=2)
        np.testing.assert_array_equal(got.scores, want.scores)
        self.assertEqual(got.top_feature_names[0, 0], self.names[got.top_features[0, 0]])
        got = self.client.score("demo", shuffled.to_numpy(), names=list(shuffled.columns))
        np.testing.assert_array_equal(got.scores, want.scores)
        # By position the reversed columns are another (wrong) input.
        self.assertFalse(np.array_equal(self.client.score("demo", shuffled.to_numpy()).scores,
                                        want.scores))
        extra = frame.assign(cpu_user=1.0)
        with self.assertRaises(AeserveError) as e:
            self.client.score("demo", extra)
        self.assertIn("unknown feature 'cpu_user'", e.exception.message)
        np.testing.assert_array_equal(
            self.client.score("demo", extra, ignore_unknown=True).scores, want.scores)
        # Gaps: one missing value per row is filled in; rows missing most features are skipped.
        gaps = frame.copy()
        gaps.iloc[:, 3] = np.nan
        gaps.iloc[:5, :30] = np.nan
        r = self.client.score("demo", gaps)
        self.assertEqual(list(r.missing[:6]), [30] * 5 + [1])
        self.assertEqual(list(r.skipped[:6]), [True] * 5 + [False])
        self.assertTrue(np.isnan(r.scores[:5]).all() and np.isfinite(r.scores[5:]).all())
        self.assertIn("5 samples miss more features", r.skip_reason)
        # Streams take the DataFrame's columns once.
        results = [i for i in self.client.stream("demo", [shuffled[:100], shuffled[100:]])
                   if isinstance(i, ScoreResult)]
        np.testing.assert_array_equal(np.concatenate([r.scores for r in results]), want.scores)

    def test_errors_become_exceptions_with_the_servers_message(self):
        with self.assertRaises(AeserveError) as e:
            self.client.score("nope", self.x[:2])
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("unknown model 'nope'", e.exception.message)
        with self.assertRaises(AeserveError) as e:
            self.client.score("demo", self.x[:2, :10])
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("num_features 10", e.exception.message)
        with self.assertRaises(AeserveError) as e:
            self.client.train("t", self.x[:100], layers=(8,), code=0, epochs=1)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("code_size", e.exception.message)

    def test_train_with_progress_then_threshold_and_activate(self):
        seen = []
        job = self.client.train("py", self.x, feature_names=self.names, layers=(32, 16), code=4,
                                epochs=8, progress=seen.append)
        self.assertEqual(job.version, 1)
        epochs = [j.epoch for j in seen]
        # A slow watcher gets the latest state, never a backlog (admin.proto): not one update per
        # epoch, but each epoch reported once, in order, up to the last (#16 item 10: the last
        # epoch used to come twice, RUNNING and then SUCCEEDED).
        self.assertEqual(epochs, sorted(set(epochs)))
        self.assertEqual(epochs[-1], 8)
        self.assertGreaterEqual(len(seen), 2)
        self.assertEqual(job.state, 3)  # JOB_STATE_SUCCEEDED
        info = self.client.model("py", include_calibration=True)
        self.assertEqual(list(info.feature_names), self.names)
        self.assertEqual(len(info.calibration_errors), len(self.x) // 10)  # 10% held out
        brief = self.client.set_threshold("py", "percentile", 90, critical=("median_mad", 10))
        self.assertGreater(brief.critical_threshold_value, brief.threshold_value)
        r = self.client.score("py", self.x[:50])
        self.assertAlmostEqual(r.threshold, brief.threshold_value)
        self.assertEqual(r.severity.shape, (50,))
        job2 = self.client.train("py", self.x, fine_tune=True, epochs=2, activate=False)
        self.assertEqual(job2.version, 2)
        self.assertEqual(self.client.score("py", self.x[:5]).version, 1)
        self.client.activate("py", 2)
        self.assertEqual(self.client.score("py", self.x[:5]).version, 2)
        self.assertTrue(any(j.id == job.id for j in self.client.jobs("py")))

    def test_ingest_binding_recording_and_training_from_it(self):
        st = self.client.set_ingest_binding(
            "ing", {"user": 'rate(node_cpu_seconds_total{mode="user"})', "load": "node_load1"},
            entity_label="instance")
        self.assertEqual([f.name for f in st.binding.features], ["user", "load"])
        self.assertEqual(st.binding.tolerance_ms, 2000)  # the server's default, filled in
        rec = self.client.record_ingest("ing", 5)
        self.assertTrue(rec.recording_now)
        with self.assertRaises(AeserveError) as e:  # nothing was sent, so nothing was recorded
            self.client.train("ing", None, from_recording=True, epochs=2)
        self.assertEqual(e.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("0 recorded rows", e.exception.message)
        with self.assertRaises(ValueError):
            self.client.train("ing", self.x, from_recording=True)
        self.assertFalse(self.client.record_ingest("ing", stop=True).recording_now)
        self.client.set_ingest_binding("ing", {}, clear=True)
        with self.assertRaises(AeserveError) as e:
            self.client.record_ingest("ing")
        self.assertEqual(e.exception.code, grpc.StatusCode.FAILED_PRECONDITION)

    def test_series_model_from_a_dataframe_with_times(self):
        import pandas as pd
        hours = pd.date_range("2024-01-01", periods=24 * 20 + 48, freq="h")
        step = np.arange(len(hours))
        frame = pd.DataFrame({"load": np.sin(2 * np.pi * step / 24),
                              "temp": 0.5 * np.cos(2 * np.pi * step / 24) + 1}, index=hours)
        train, test = frame.iloc[:24 * 20], frame.iloc[24 * 20:].copy()
        test.iloc[30, 0] += 4  # a spike
        self.client.train("pyseries", train, window=6, time_features=["hour"], epochs=30)
        info = self.client.model("pyseries")
        self.assertEqual(list(info.feature_names), ["load", "temp"])
        self.assertEqual(info.spec.window.interval_ms, 3600 * 1000)
        r = self.client.score("pyseries", test)
        self.assertEqual(len(r.scores), 48)
        self.assertEqual(r.warming_up[:6].tolist(), [True] * 5 + [False])
        self.assertTrue(np.isnan(r.scores[:5]).all())
        self.assertTrue(r.anomalous[30])
        # Streamed as (rows, timestamps) pairs, the window goes on across batches.
        ms = test.index.values.astype("datetime64[ms]").astype(np.int64)
        values = test.to_numpy(np.float32)
        results = [x for x in self.client.stream(
            "pyseries", [(values[i:i + 10], ms[i:i + 10]) for i in range(0, 48, 10)],
            names=["load", "temp"]) if isinstance(x, ScoreResult)]
        streamed = np.concatenate([x.scores for x in results])
        np.testing.assert_array_equal(streamed[5:], r.scores[5:])
        with self.assertRaises(AeserveError) as e:
            self.client.score("pyseries", values)  # no times
        self.assertIn("every row needs a timestamp", e.exception.message)
        # Time-zone aware times are the same instants in UTC; NaT is refused.
        aware = test.tz_localize("UTC").tz_convert("Europe/Berlin")
        np.testing.assert_array_equal(self.client.score("pyseries", aware).scores[5:], r.scores[5:])
        broken = test.copy()
        broken.index = broken.index.where(np.arange(len(broken)) != 3, pd.NaT)
        with self.assertRaises(ValueError):
            self.client.score("pyseries", broken)

    def test_autopilot_retrains_on_growth_and_the_history_says_so(self):
        c = self.client
        c.train("ap", self.x[:500], layers=[16], code=4, epochs=3)
        with self.assertRaises(AeserveError) as e:
            c.retrain("ap")  # no policy yet
        self.assertEqual(e.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        status = c.set_retrain_policy("ap", 5000, grown_rows=400, min_rows=100,
                                      min_interval_seconds=0, promotion="activate",
                                      flagged_rows="keep-unless-incident")
        self.assertEqual(status.policy.retain_rows, 5000)
        self.assertEqual(status.policy.shadow_samples, 10000)  # the server's default, filled in
        self.assertIsNone(c.autopilot("demo"))
        c.score("ap", self.x[500:900])  # 400 rows: the growth trigger fires before the answer
        jobs = [j for j in c.jobs("ap") if j.trigger == "growth"]
        self.assertEqual(len(jobs), 1)
        self.assertEqual(jobs[0].actor, "autopilot")
        deadline = time.time() + 60
        while c.job(jobs[0].id).state not in (3, 4, 5) and time.time() < deadline:
            time.sleep(0.05)
        done = c.job(jobs[0].id)
        self.assertEqual(done.state, 3, done.error)  # SUCCEEDED
        self.assertEqual(done.rows, 400)
        self.assertEqual(c.model("ap").active_version, 2)
        self.assertGreaterEqual(c.autopilot("ap").retained_rows, 400)
        actions = [e.action for e in c.history("ap")]
        self.assertEqual(actions, ["train", "set-retrain-policy", "retrain", "train"])
        self.assertEqual(c.history("ap", limit=1)[0].actor, "autopilot")
        with self.assertRaises(ValueError):
            c.set_retrain_policy("ap", 10, promotion="sometimes")
        c.set_retrain_policy("ap", clear=True)
        self.assertIsNone(c.autopilot("ap"))

    def test_bad_choices_list_the_valid_values(self):
        with self.assertRaises(ValueError) as e:
            self.client.train("bad", self.x[:50], kind="denoise")
        self.assertIn("denoising", str(e.exception))
        self.assertIn("variational", str(e.exception))
        with self.assertRaises(ValueError) as e:
            self.client.train("bad", self.x[:50], gap_fill="zero")
        self.assertIn("join, missing", str(e.exception))

    def test_precision_at_training_and_by_policy(self):
        self.client.train("prec", self.x[:300], feature_names=self.names, epochs=2,
                          precision="bf16")
        bf16 = self.client.score("prec", self.x[:50]).scores
        if self.client.model("prec").versions[0].precision != model_pb2.PRECISION_BF16:
            self.skipTest("the server's CPU has no AVX-512: bf16 versions score in f32")
        self.client.set_policy("prec", precision="f32")
        self.assertEqual(self.client.model("prec").versions[0].precision, model_pb2.PRECISION_F32)
        f32 = self.client.score("prec", self.x[:50]).scores
        self.assertFalse(np.array_equal(bf16, f32))
        np.testing.assert_allclose(bf16, f32, rtol=0.05, atol=0.05)
        with self.assertRaises(ValueError) as e:
            self.client.set_policy("prec", precision="f16")
        self.assertIn("f32, bf16", str(e.exception))

    def test_watch_receives_flagged_samples(self):
        events = []
        watcher = self.client.watch("demo")
        got = threading.Event()

        def read():
            for e in watcher:
                events.append(e)
                if len(events) >= 3:
                    got.set()
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        for _ in range(100):  # until the subscription is in place and events arrive
            self.client.score("demo", self.x[:5] + 10.0)
            if got.wait(0.05):
                break
        self.assertTrue(got.is_set())
        self.assertEqual(events[0].model, "demo")
        self.assertGreater(events[0].error, events[0].threshold)
        self.assertEqual(len(events[0].top_feature_names), 3)

    def test_watch_merges_the_feeds_of_replicas(self):
        # A second replica on the same store; one watch over both sees what each one flags.
        proc, other = start_server(BINARY, self.dir.name)
        try:
            with Client(other) as second:
                deadline = time.time() + 60
                while True:  # the replica serves the demo model once it has loaded the store
                    try:
                        if second.model("demo").state == 2:
                            break
                    except AeserveError:
                        pass
                    self.assertLess(time.time(), deadline, "the replica did not load the store")
                    time.sleep(0.01)
                self.assertEqual(replica_addresses(f"{self.address},{other}"),
                                 [self.address, other])
                self.assertEqual(replica_addresses("dns:///localhost:50051")[0].split(":")[-1],
                                 "50051")
                seen = set()
                got = threading.Event()
                feed = self.client.watch("demo", replicas=[self.address, other])

                def read():
                    for e in feed:
                        seen.add(e.stream_id)
                        if {"from-a", "from-b"} <= seen:
                            got.set()
                            return

                t = threading.Thread(target=read, daemon=True)
                t.start()
                for _ in range(200):  # until both subscriptions are in place and events arrive
                    list(self.client.stream("demo", [self.x[:5] + 10.0], stream_id="from-a"))
                    list(second.stream("demo", [self.x[:5] + 10.0], stream_id="from-b"))
                    if got.wait(0.05):
                        break
                self.assertTrue(got.is_set(), seen)
                feed.close()  # ends both feeds
                t.join(timeout=10)
                self.assertFalse(t.is_alive())
        finally:
            stop_server(proc)

    def test_plots_write_pngs_of_the_right_size(self):
        r = self.client.score("demo", self.x)
        info = self.client.model("demo", include_calibration=True)
        with tempfile.TemporaryDirectory() as d:
            paths = [os.path.join(d, n) for n in ("errors.png", "training.png", "stream.png")]
            plots.plot_errors(r, info, paths[0], labels=self.labels, figsize=(8, 5), dpi=100)
            plots.plot_training(info, paths[1], figsize=(6, 4), dpi=50)
            items = self.client.stream("demo", [self.x[i:i + 500] for i in range(0, len(self.x), 500)])
            fig = plots.plot_stream(items, paths[2], figsize=(10, 4), dpi=100, labels=self.labels)
            self.assertIn("demo v1", fig.axes[0].get_title())
            self.assertIn("known anomaly", fig.axes[0].get_legend_handles_labels()[1])
            ms = 1_700_000_000_000 + 60_000 * np.arange(len(self.x))
            fig = plots.plot_stream(items, None, timestamps=ms)
            self.assertEqual(fig.axes[0].get_xlabel(), "time (UTC)")
            self.assertIn("demo v1", plots.plot_training(info).axes[0].get_title())
            self.assertEqual(png_size(paths[0]), (800, 500))
            self.assertEqual(png_size(paths[1]), (300, 200))
            self.assertEqual(png_size(paths[2]), (1000, 400))
            for p in paths:
                self.assertGreater(os.path.getsize(p), 5000)

    def test_example_script_runs(self):
        data = os.path.join(SOURCE, "..", "shared", "data", "odds", "cardio.csv")
        with tempfile.TemporaryDirectory() as d:
            out = subprocess.run(
                ["/usr/bin/python3", os.path.join(SOURCE, "clients", "python", "examples", "train_and_score.py"),
                 "--server", self.address, "--data", data, "--out", d, "--epochs", "20"],
                capture_output=True, text=True, env=dict(os.environ), timeout=120)
            self.assertEqual(out.returncode, 0, out.stderr)
            m = re.search(r"ROC-AUC (\d\.\d+)", out.stdout)
            self.assertIsNotNone(m, out.stdout)
            self.assertGreater(float(m.group(1)), 0.8)
            for n in ("errors.png", "training.png", "stream.png"):
                self.assertTrue(os.path.getsize(os.path.join(d, n)) > 5000)

    def test_channel_options_reach_the_channel(self):
        # A receive limit below the answer's size: the call fails on the client, so the option
        # was applied (and placed over the client's own limits).
        with Client(self.address, options=[("grpc.max_receive_message_length", 1024)]) as small:
            with self.assertRaises(AeserveError) as e:
                small.score("demo", self.x[:200])
            self.assertEqual(e.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED)


class TlsTest(unittest.TestCase):
    """`tls=` takes PEM paths or a grpc.ChannelCredentials, against a real TLS server."""

    def test_credentials_object_and_pem_paths(self):
        with tempfile.TemporaryDirectory() as d:
            cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                            "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                           check=True, capture_output=True)
            proc, address = start_server(BINARY, os.path.join(d, "models"),
                                         ["--tls_cert=" + cert, "--tls_key=" + key])
            try:
                creds = grpc.ssl_channel_credentials(open(cert, "rb").read())
                for tls in (creds, {"ca": cert}):
                    with Client(address, tls=tls) as c:
                        self.assertEqual(c.models(), [])
                with Client(address) as plain:  # no TLS: refused by the handshake
                    with self.assertRaises(AeserveError):
                        plain.models()
            finally:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    unittest.main()
