#!/usr/bin/python3
"""Every command a newcomer is shown works as written (#16): the commands `make run` prints
(deploy/run-server.sh, run here as `make run` runs it, on a free port) and every ```sh and
```python block of README.md, in order, against that server.

Not run here, because they are their own steps: blocks whose every command is `make ...` (make run,
make test, the CI targets) and the benchmark block (every command `make ...` or a `bench/` program;
`make bench-smoke` runs each harness). Unlabelled fences are output or listings, not commands: one
that starts with a command of this repository (build/, deploy/, clients/, bench/) fails the test,
as does a fence in any other language, so a new block cannot escape it.

The server address: aectl takes it from $AESERVE_SERVER, the Python block's "localhost:50051" is
replaced. Paths: README commands use build/; when the tests' build directory is elsewhere, that
prefix is replaced too.

Environment: AESERVE_SOURCE_DIR, AESERVE_BUILD_DIR, AECTL_DEMO_STORE (the pre-trained demo store),
PYTHONPATH (the Python client)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from local_services import free_port, stop

SRC = os.environ["AESERVE_SOURCE_DIR"]
BUILD = os.environ["AESERVE_BUILD_DIR"]
STORE = os.environ["AECTL_DEMO_STORE"]
AECTL = os.path.join(BUILD, "clients", "cpp", "aectl")
TIMEOUT = 300  # seconds for any one block


def blocks(readme):
    """(line, language, text) of each fenced block."""
    out, lang, start, lines = [], None, 0, []
    for n, line in enumerate(readme.splitlines(), 1):
        m = re.match(r"^```(\w*)\s*$", line)
        if m and lang is None:
            lang, start, lines = m.group(1) or "text", n, []
        elif line.startswith("```") and lang is not None:
            out.append((start, lang, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


def commands(text):
    return [l for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]


def skipped(text):
    """Why a shell block is not run here, or None."""
    cmds = commands(text)
    if cmds and all(c.split()[0] == "make" for c in cmds):
        return "make targets"
    if cmds and all(c.split()[0] == "make" or "bench/" in c for c in cmds):
        return "benchmarks"
    return None


def localize(text):
    if os.path.realpath(BUILD) != os.path.realpath(os.path.join(SRC, "build")):
        text = re.sub(r"(?<![\w/])build/", BUILD.rstrip("/") + "/", text)
    return text


def quoted_figures(readme):
    """The example's figures as the README quotes them: (roc_auc, precision, recall)."""
    m = re.search(r"ROC-AUC ([0-9.]+), precision ([0-9.]+), recall ([0-9.]+) at the", readme)
    assert m, "README.md no longer quotes the example's figures"
    return tuple(float(v) for v in m.groups())


def printed_figures(output):
    m = re.search(r"precision ([0-9.]+) recall ([0-9.]+) ROC-AUC ([0-9.]+)", output)
    return None if m is None else (float(m.group(3)), float(m.group(1)), float(m.group(2)))


def run(what, cmd, env, cwd, stdin=None, output=None):
    started = time.time()
    # Its own process group: a block that runs out of time is killed with everything it started.
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE if stdin else None,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(input=stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return f"{what}: did not finish in {TIMEOUT} s"
    p = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    took = time.time() - started
    if output is not None:
        output.append(p.stdout)
    if p.returncode != 0:
        return (f"{what}: exit {p.returncode} after {took:.1f} s\n--- stdout (end)\n{p.stdout[-2000:]}"
                f"\n--- stderr (end)\n{p.stderr[-3000:]}")
    print(f"ok   {what} ({took:.1f} s)", flush=True)
    return None


def main():
    work = tempfile.mkdtemp(prefix="aeserve_readme_")
    store = os.path.join(work, "models")
    shutil.copytree(STORE, store)
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, BUILD=BUILD, AESERVE_SERVER=address, MPLBACKEND="Agg")
    # Exactly what `make run` runs (with a free port and this test's store).
    server = subprocess.Popen(
        [os.path.join(SRC, "deploy", "run-server.sh"), f"--port={port}", f"--model_dir={store}",
         "--host=127.0.0.1", "--metrics_port=0"],
        cwd=SRC, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failures, log = [], []
    try:
        printed = []
        for line in server.stdout:
            if line.startswith("Stop with"):
                break
            m = re.match(r"^\s+[\w ]+:\s+(\S*aectl .*)$", line)
            if m:
                printed.append(m.group(1))
        assert len(printed) >= 3, f"make run printed no commands: {printed}"
        # The server keeps logging: drain its pipe so that it never blocks on a full one.
        drain = threading.Thread(target=lambda: log.extend(server.stdout), daemon=True)
        drain.start()
        deadline = time.time() + 60
        while subprocess.run([AECTL, "health"], env=env, capture_output=True).returncode != 0:
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not become SERVING within 60 s")
            time.sleep(0.2)
        for cmd in printed:
            err = run(f"make run printed: {cmd}", ["sh", "-ec", cmd + " > /dev/null"], env, SRC)
            if err:
                failures.append(err)
        with open(os.path.join(SRC, "README.md")) as f:
            readme = f.read()
        ran, figures_checked = 0, False
        for line, lang, text in blocks(readme):
            if lang in ("sh", "bash"):
                why = skipped(text)
                if why:
                    print(f"skip README.md:{line} ({why})")
                    continue
                # The block's own working directory is the repository; files it writes go to `work`.
                # bash with pipefail: a failing command in a pipeline fails the block too.
                script = f"set -eo pipefail\ncd {SRC}\n" + localize(text)
                script = script.replace("> scores.csv", f"> {work}/scores.csv")
                script = script.replace("> staged.csv", f"> {work}/staged.csv")
                script = script.replace("--out docs", f"--out {work}")  # never rewrite docs/ here
                out = []
                err = run(f"README.md:{line} (sh)", ["bash", "-c", script], env, SRC, output=out)
                got = printed_figures(out[0]) if out else None
                if got is not None:
                    want = quoted_figures(readme)
                    if any(abs(g - w) > 0.02 for g, w in zip(got, want)):
                        err = (f"README.md:{line}: the example printed ROC-AUC/precision/recall {got}, "
                               f"the README quotes {want} (regenerate the figures with that command)")
                    figures_checked = True
            elif lang == "python":
                code = localize(text).replace('"localhost:50051"', f'"{address}"')
                code = code.replace('"errors.png"', f'"{work}/errors.png"')
                err = run(f"README.md:{line} (python)", [sys.executable, "-"], env, SRC, stdin=code)
            elif lang == "text":  # an unlabelled fence: output or a listing, never a command
                first = (commands(text) or [""])[0]
                if re.match(r"^(\./)?(build|deploy|clients|bench)/\S", first):
                    failures.append(f"README.md:{line}: an unlabelled block starts with a command "
                                    f"({first!r}): label it ```sh so that it is run")
                continue
            else:
                failures.append(f"README.md:{line}: a ```{lang} block: this test runs sh, bash and "
                                f"python blocks only")
                continue
            ran += 1
            if err:
                failures.append(err)
        assert ran >= 4, f"only {ran} README blocks ran"
        assert figures_checked, "no README block printed the example's figures"
    finally:
        stop([server], timeout=30)
        shutil.rmtree(work, ignore_errors=True)
        if failures:
            print("--- server log (end)\n" + "".join(log)[-3000:])
    for f in failures:
        print("FAIL " + f)
    print(f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
