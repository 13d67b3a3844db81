"""Starting an aeserve binary on 127.0.0.1, for scripts, benchmarks and tests."""
import re
import subprocess
import threading
import time
from typing import Sequence, Tuple


def start_server(binary: str, model_dir: str, args: Sequence[str] = (),
                 timeout: float = 30.0) -> Tuple[subprocess.Popen, str]:
    """Starts `binary` on free ports of 127.0.0.1 (gRPC and metrics) with its model store in
    `model_dir` and any extra flags in `args`; returns (process, "127.0.0.1:PORT") once it listens.
    The server's log is drained in the background so it never blocks on a full pipe. Raises
    RuntimeError if the server exits or does not listen within `timeout` seconds."""
    proc = subprocess.Popen([binary, "--host=127.0.0.1", "--port=0", "--metrics_port=0",
                             "--model_dir=" + model_dir, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:  # the server exited
            break
        m = re.search(r"listening on [^:]+:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"127.0.0.1:{m.group(1)}"
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{binary} did not start listening within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stops a server from start_server with SIGTERM (it finishes in-flight work); kills it if it
    has not exited within `timeout` seconds. Returns its exit code."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
