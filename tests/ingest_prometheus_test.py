#!/usr/bin/python3
"""Prometheus into aeserve, for real (issue #18), with aectl alone as a user would do it.

Debian's prometheus-node-exporter (cpu collector only) is scraped every 500 ms by Debian's
prometheus, which remote-writes the node series to aeserve's /api/v1/write — over HTTPS on the
ingest port, with a bearer token, as in production (aeserve runs with TLS and tokens; aectl uses
them too) — and evaluates an alert rule on aeserve's own /metrics. aectl binds the model's features to CPU-time counters, records
the ingested rows, trains on the recording, and watches the anomaly feed; then a bounded CPU burn
(one core, at most 25 s) must show up for that instance on aeserve's /metrics, in the feed and as
a firing alert in that Prometheus. Before the burn, the share of rows flagged is measured and must
stay low (the model flags the burn, not everything).

Everything runs on 127.0.0.1 on free ports and is stopped by the test; every wait is bounded.
Environment: AESERVE_BUILD_DIR. Label ingest (`make ingest-test`, a CI step), not `make test`.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from local_services import free_port, gauge, http, stop, wait_for

BUILD = os.environ["AESERVE_BUILD_DIR"]
AESERVE = os.path.join(BUILD, "server", "aeserve")
AECTL = os.path.join(BUILD, "clients", "cpp", "aectl")
SCRAPE = "500ms"


def make_certificates(work):
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    script = (
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
        "-subj /CN=aeserve-test-ca && "
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=aeserve && "
        "printf 'subjectAltName=IP:127.0.0.1' > san.ext && "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "-out server.pem -days 1 -extfile san.ext")
    r = subprocess.run(script, shell=True, cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def main():
    work = tempfile.mkdtemp(prefix="aeserve_ingest_prom_")
    procs = []

    def start(args, log):
        p = subprocess.Popen(args, stdout=open(os.path.join(work, log), "w"),
                             stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        port, mport, nport, pport = free_port(), free_port(), free_port(), free_port()
        iport = free_port()
        server = f"127.0.0.1:{port}"
        instance = f"127.0.0.1:{nport}"
        make_certificates(work)
        with open(os.path.join(work, "tokens"), "w") as f:
            f.write("ops-secret admin ops\nprom-secret score prometheus\n")
        client = [AECTL, "--server", server, "--tls-ca", f"{work}/ca.pem", "--token", "ops-secret"]

        def aectl(*args, check=True, timeout=120):
            r = subprocess.run([*client, *args], capture_output=True, text=True, timeout=timeout)
            if check and r.returncode != 0:
                raise AssertionError(f"aectl {' '.join(args)}: exit {r.returncode}\n{r.stderr}")
            return r

        start([AESERVE, "--host", "127.0.0.1", f"--port={port}", f"--metrics_port={mport}",
               f"--ingest_port={iport}", f"--tls_cert={work}/server.pem",
               f"--tls_key={work}/server.key", f"--auth_tokens={work}/tokens",
               f"--model_dir={work}/store"], "aeserve.log")
        wait_for("aeserve to serve", lambda: aectl("health", check=False).returncode == 0, 30)
        start(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{nport}",
               "--collector.disable-defaults", "--collector.cpu"], "node_exporter.log")
        wait_for("node exporter", lambda: "node_cpu_seconds_total" in
                 http(f"http://127.0.0.1:{nport}/metrics"), 30)

        # 1. Bind: three features from the per-mode CPU-time counters, summed over CPUs, per host.
        modes = ["user", "system", "idle"]
        bind = ["ingest", "bind", "host", "--entity-label", "instance", "--tolerance-ms", "200",
                "--flush-ms", "3000"]
        for m in modes:
            bind += ["--feature", f'{m}=rate(node_cpu_seconds_total{{mode="{m}"}})']
        print(aectl(*bind).stdout, end="")
        print(aectl("ingest", "record", "host", "--minutes", "5").stdout, end="")

        # 2. Prometheus: scrape the node exporter and aeserve, remote-write the node series,
        #    alert on aeserve's verdict.
        with open(os.path.join(work, "rules.yml"), "w") as f:
            f.write("""groups:
  - name: aeserve
    rules:
      - alert: HostAnomalous
        expr: min_over_time(aeserve_ingest_anomalous{model="host"}[2s]) == 1
        labels: {severity: page}
""")
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            f.write(f"""global:
  scrape_interval: {SCRAPE}
  evaluation_interval: {SCRAPE}
rule_files: [{work}/rules.yml]
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ['{instance}']}}]
  - job_name: aeserve
    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]
remote_write:
  - url: https://127.0.0.1:{iport}/api/v1/write
    tls_config: {{ca_file: {work}/ca.pem}}
    authorization: {{credentials: prom-secret}}
    queue_config: {{batch_send_deadline: 500ms, min_backoff: 100ms, max_backoff: 1s}}
    write_relabel_configs:
      - {{source_labels: [job], regex: node, action: keep}}
""")
        check = subprocess.run(["promtool", "check", "config", f"{work}/prometheus.yml"],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        start(["prometheus", f"--config.file={work}/prometheus.yml",
               f"--storage.tsdb.path={work}/tsdb", f"--web.listen-address=127.0.0.1:{pport}"],
              "prometheus.log")

        # 3. Record ~60 rows (30 s of scrapes), then train on them. (With 40, half of them for
        #    calibration, a CI machine's passing load once put 6 of 20 quiet rows over the line.)
        metrics_url = f"http://127.0.0.1:{mport}/metrics"
        wait_for("60 recorded rows", lambda: (gauge(http(metrics_url), "aeserve_ingest_rows_total",
                                                    model="host", result="failed") or 0) >= 60, 120)
        print(aectl("ingest", "record", "host", "--stop").stdout, end="")
        r = aectl("train", "--model", "host", "--from-recording", "--validation-split", "0.5",
                  "--percentile", "100", timeout=300)
        print(r.stdout, end="")

        # 4. The model scores what Prometheus sends: wait for 5 scored rows, then measure the flag
        #    rate over 15 s of ordinary load.
        # (read from /metrics: polling with aectl would itself be load the recording never saw)
        def scored():
            text = http(metrics_url)
            return (gauge(text, "aeserve_ingest_rows_total", model="host", result="scored") or 0,
                    gauge(text, "aeserve_ingest_anomalies_total", model="host") or 0)

        wait_for("rows scored by the new model", lambda: scored()[0] >= 5, 60)
        rows0, flagged0 = scored()
        wait_for("30 more rows scored", lambda: scored()[0] >= rows0 + 30, 60)
        rows1, flagged1 = scored()
        quiet_rate = (flagged1 - flagged0) / max(1, rows1 - rows0)
        print(f"before the burn: {flagged1 - flagged0} of {rows1 - rows0} rows flagged "
              f"({quiet_rate:.1%})")
        assert quiet_rate <= 0.25, f"the model flags ordinary load: {quiet_rate:.1%}"

        # 5. Watch the feed, then burn one core until the anomaly is seen everywhere (<= 25 s).
        watch = subprocess.Popen([*client, "watch", "host", "--seconds", "60"],
                                 stdout=subprocess.PIPE, text=True)
        procs.append(watch)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)
        reader.start()
        burn_ms = time.time() * 1000

        def burn_events():  # server_time_ms,model,version,entity,...
            out = []
            for line in list(lines)[1:]:
                f = line.split(",")
                if len(f) > 3 and f[1] == "host" and f[3] == instance and \
                        float(f[0]) >= burn_ms + 1000:
                    out.append(line.strip())
            return out

        burn = subprocess.Popen([sys.executable, "-c",
                                 "import time\ne = time.time() + 25\nwhile time.time() < e: pass"])
        procs.append(burn)
        seen = {}
        t0 = time.monotonic()
        # Counted from 1 s into the burn: what was flagged before it does not count.
        rows_b, flagged_b = None, None
        while time.monotonic() - t0 < 25 and len(seen) < 3:
            if "feed" not in seen and burn_events():
                seen["feed"] = time.monotonic() - t0
            if rows_b is None and time.monotonic() - t0 >= 1:
                rows_b, flagged_b = scored()
            if "metrics" not in seen and rows_b is not None:
                rows, flagged = scored()
                # 4 rows (2 s of scrapes) or more since, 90% of them flagged, the host's gauge 1
                if rows - rows_b >= 4 and flagged - flagged_b >= 0.9 * (rows - rows_b) and \
                        gauge(http(metrics_url), "aeserve_ingest_anomalous", model="host",
                              entity=instance) == 1:
                    seen["metrics"] = time.monotonic() - t0
                    burn_rate = (flagged - flagged_b, rows - rows_b)
            alerts = http(f"http://127.0.0.1:{pport}/api/v1/alerts")
            if "alert" not in seen and alerts:
                for a in json.loads(alerts)["data"]["alerts"]:
                    if a["labels"].get("alertname") == "HostAnomalous" and \
                            a["labels"].get("entity") == instance and a["state"] == "firing":
                        seen["alert"] = time.monotonic() - t0
            time.sleep(0.2)
        burn.kill()
        watch.terminate()
        watch.wait(timeout=30)
        reader.join(timeout=30)
        events = burn_events()
        if "metrics" in seen:
            print(f"burn: {burn_rate[0]:.0f} of {burn_rate[1]:.0f} rows flagged from 1 s in")
        print(f"burn: anomaly on /metrics after {seen.get('metrics')} s, in the feed after "
              f"{seen.get('feed')} s, alert firing after {seen.get('alert')} s; first event: "
              f"{events[:1]}")
        assert "metrics" in seen, "the burn never showed on aeserve's /metrics"
        assert "alert" in seen, "Prometheus never fired HostAnomalous"
        assert events, "no anomaly event in the feed"
        print("ok")
    finally:
        stop(procs)
        if os.environ.get("KEEP_WORK"):
            print("work dir kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
