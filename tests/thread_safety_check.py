#!/usr/bin/python3
"""clang's -Wthread-safety over the server sources (Abseil's ABSL_GUARDED_BY / ABSL_*_LOCKS_REQUIRED
annotations): any finding fails. Uses the include paths of the gcc build's compile_commands.json."""
import json
import shlex
import subprocess
import sys

build = sys.argv[1]
checked, findings = 0, 0
for c in json.load(open(f"{build}/compile_commands.json")):
    f = c["file"]
    if "/server/" not in f or f.endswith("_test.cc"):
        continue
    args, flags = shlex.split(c["command"])[1:], []
    it = iter(args)
    for a in it:
        if a == "-isystem":
            flags += [a, next(it)]
        elif a.startswith(("-I", "-D", "-std")):
            flags.append(a)
    r = subprocess.run(["clang++-14", "-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety"] + flags + [f],
                       capture_output=True, text=True, cwd=c["directory"])
    checked += 1
    if r.returncode != 0:
        findings += 1
        print(f"{f}:\n{r.stderr}")
print(f"thread-safety analysis: {checked} files, {findings} with findings")
sys.exit(1 if findings or checked == 0 else 0)
