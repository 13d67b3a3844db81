#!/usr/bin/python3
"""Speed against the stacks users run today, in one run on one machine, same models, same data:
inference of aeserve's engine in-process and of aeserve over gRPC streaming, against PyTorch
in-process (inference_mode, torch.set_num_threads = aeserve's oneDNN threads per call, 1) and a
Python grpcio server scoring with that PyTorch model; and training samples/s against PyTorch with
the same epochs, batch size and Adam settings. PyTorch runs twice, with Debian's reference BLAS and
with Debian's OpenBLAS (loaded for that process only, OPENBLAS_NUM_THREADS=1); ratios are taken
against the faster of the two.

  PYTHONPATH=build/clients/python bench/peers/peers.py [--seconds 2] [--quick]
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("AESERVE_BUILD_DIR", os.path.join(ROOT, "build"))  # ctest passes its own
LOAD = os.path.join(BUILD, "bench", "peers_load")
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread"
MODELS = {"38-64-32-8 (reference)": [38, 64, 32, 8], "cardio default 21-32-16-4": [21, 32, 16, 4]}
BATCHES = [1, 256, 4096]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def torch_env(blas):
    env = dict(os.environ)
    if blas == "openblas":
        env["LD_LIBRARY_PATH"] = OPENBLAS + ":" + env.get("LD_LIBRARY_PATH", "")
        env["OPENBLAS_NUM_THREADS"] = "1"
        # Set on some processors for old OpenBLAS builds; they slow a current one (see env docs).
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


# ---- PyTorch side (runs in subprocesses so that each BLAS is loaded alone) --------------------

def build_torch(layers):
    import torch
    mods, sizes = [], layers + layers[-2::-1]
    for i in range(len(sizes) - 1):
        mods.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if 0 < i + 1 < len(sizes) - 1 and i + 1 != len(layers) - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


def torch_inference(layers, seconds):
    import torch
    torch.set_num_threads(1)
    model = build_torch(layers).eval()
    out = {}
    for b in BATCHES:
        x = torch.randn(b, layers[0])
        with torch.inference_mode():
            ((model(x) - x) ** 2).mean(1)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                ((model(x) - x) ** 2).mean(1)
                n += b
        out[b] = n / (time.perf_counter() - start)
    return out


def torch_training(layers, rows, epochs, batch):
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(1)
    model = build_torch(layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(rows, layers[0])
    rates = []
    for _ in range(epochs):
        perm = torch.randperm(rows)
        start = time.perf_counter()
        for i in range(0, rows, batch):
            xb = x[perm[i:i + batch]]
            loss = ((model(xb) - xb) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates.append(rows / (time.perf_counter() - start))
    return float(np.median(rates))


def serve_torch(layers, port):
    """The stack users build today: a Python grpcio server scoring with the PyTorch model."""
    from concurrent import futures
    import grpc
    import torch
    from aeserve.v1 import scoring_pb2, scoring_pb2_grpc
    torch.set_num_threads(1)
    model = build_torch(layers).eval()
    calibration = np.sort(np.random.default_rng(1).random(1000).astype(np.float32))

    class Servicer(scoring_pb2_grpc.ScoringServicer):
        def StreamScore(self, request_iterator, context):
            for req in request_iterator:
                x = np.array(req.samples.values, dtype=np.float32).reshape(-1, req.samples.num_features)
                with torch.inference_mode():
                    t = torch.from_numpy(x)
                    err = ((model(t) - t) ** 2).mean(1).numpy()
                resp = scoring_pb2.StreamScoreResponse(sequence=req.sequence)
                r = resp.result
                r.num_samples = len(err)
                r.errors.extend(err)
                r.anomalous.extend((err > 1.0).tolist())
                r.p_values.extend((len(calibration) - np.searchsorted(calibration, err) + 1) / (len(calibration) + 1))
                yield resp

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 256 << 20)])
    scoring_pb2_grpc.add_ScoringServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


# ---- Orchestration --------------------------------------------------------------------------

def run_worker(blas, args_list):
    out = subprocess.run([sys.executable, __file__] + args_list, env=torch_env(blas),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load(*args):
    out = subprocess.run([LOAD] + [str(a) for a in args], capture_output=True, text=True, check=True)
    return float(re.search(r"samples_per_second (\S+)", out.stdout).group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rows", type=int, default=100000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: short figures, one model")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--layers", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        layers = [int(v) for v in a.layers.split(",")]
        if a.worker == "inference":
            print(json.dumps(torch_inference(layers, a.seconds)))
        elif a.worker == "training":
            print(json.dumps(torch_training(layers, a.rows, a.epochs, 256)))
        elif a.worker == "serve":
            serve_torch(layers, a.port)
        return

    from aeserve import Client
    from aeserve.local import start_server, stop_server
    seconds = 0.3 if a.quick else a.seconds
    models = dict(list(MODELS.items())[:1]) if a.quick else MODELS
    rows = 5000 if a.quick else a.rows
    store = tempfile.mkdtemp(prefix="aeserve_peers_")
    server, address = start_server(os.path.join(BUILD, "server", "aeserve"), store, ["--threads=2"])
    py_server = None
    try:
        client = Client(address, timeout=600)
        print(f"peers: {os.cpu_count()} cores; aeserve 2 scoring workers x 1 oneDNN thread; PyTorch "
              f"threads 1; {seconds:.1f} s per figure; streaming with 4 streams over 4 connections")
        summary = {}
        for name, layers in models.items():
            d = layers[0]
            mname = "peer" + str(d)
            rng = np.random.default_rng(1)
            data = rng.standard_normal((rows, d)).astype(np.float32)
            job = client.train(mname, data, layers=layers[1:-1], code=layers[-1], epochs=a.epochs,
                               batch_size=256, dropout=0.0, validation_split=0.0)
            aeserve_train = float(np.median([e.samples_per_second for e in job.history]))
            torch_ref = run_worker("reference", ["--worker", "inference", "--layers", ",".join(map(str, layers)), "--seconds", str(seconds)])
            torch_ob = run_worker("openblas", ["--worker", "inference", "--layers", ",".join(map(str, layers)), "--seconds", str(seconds)])
            train_ref = run_worker("reference", ["--worker", "training", "--layers", ",".join(map(str, layers)), "--rows", str(rows), "--epochs", str(a.epochs)])
            train_ob = run_worker("openblas", ["--worker", "training", "--layers", ",".join(map(str, layers)), "--rows", str(rows), "--epochs", str(a.epochs)])
            best_blas = "openblas" if sum(torch_ob.values()) > sum(torch_ref.values()) else "reference"
            py_port = free_port()
            py_server = subprocess.Popen([sys.executable, __file__, "--worker", "serve", "--layers",
                                          ",".join(map(str, layers)), "--port", str(py_port)],
                                         env=torch_env(best_blas), stdout=subprocess.PIPE, text=True)
            py_server.stdout.readline()  # "serving"
            print(f"\n{name}: inference samples/s")
            print(f"{'batch':>6} {'aeserve engine':>15} {'aeserve gRPC':>13} {'torch ref':>10} {'torch OpenBLAS':>15} "
                  f"{'py grpc+torch':>14} {'engine/torch':>13} {'aeserve/py':>11}")
            for b in BATCHES:
                eng = load("--engine", "--layers", ",".join(map(str, layers)), "--batch", b, "--seconds", seconds)
                grpc_rate = load("--target", address, "--model", mname, "--features", d,
                                 "--batch", b, "--streams", 4, "--seconds", seconds)
                py_rate = load("--target", f"127.0.0.1:{py_port}", "--model", mname, "--features", d,
                               "--batch", b, "--streams", 4, "--seconds", seconds)
                best_torch = max(torch_ref[str(b)], torch_ob[str(b)])
                print(f"{b:>6} {eng:>15.0f} {grpc_rate:>13.0f} {torch_ref[str(b)]:>10.0f} {torch_ob[str(b)]:>15.0f} "
                      f"{py_rate:>14.0f} {eng / best_torch:>12.1f}x {grpc_rate / py_rate:>10.1f}x", flush=True)
                summary.setdefault(name, {})[b] = dict(engine=eng, grpc=grpc_rate, torch=best_torch, python_grpc=py_rate)
            py_server.terminate()
            py_server.wait()
            best_train = max(train_ref, train_ob)
            print(f"training (Adam, batch 256, {a.epochs} epochs of {rows} rows, median epoch): aeserve "
                  f"{aeserve_train:.0f}/s, torch ref {train_ref:.0f}/s, torch OpenBLAS {train_ob:.0f}/s -> "
                  f"{aeserve_train / best_train:.1f}x the faster PyTorch")
            summary[name]["training"] = dict(aeserve=aeserve_train, torch=best_train)
        r = summary[list(models)[0]]
        print(f"\ntargets: training >= 2x PyTorch: {r['training']['aeserve'] / r['training']['torch']:.1f}x; "
              f"streaming at batch 256 >= 10x the Python grpcio + PyTorch server: "
              f"{r[256]['grpc'] / r[256]['python_grpc']:.1f}x")
        client.close()
    finally:  # a failed step must not leave servers behind (ctest would wait for them)
        if py_server is not None and py_server.poll() is None:
            py_server.kill()
            py_server.wait()
        stop_server(server)


if __name__ == "__main__":
    main()
