#!/bin/sh
# The assembled package installs offline with Debian's pip and imports from where it was installed,
# stubs included: install_test.sh <assembled package dir>.
set -eu
pkg=$1
target=$(mktemp -d)
trap 'rm -rf "$target"' EXIT
/usr/bin/python3 -m pip install --quiet --no-deps --no-build-isolation --no-index --target "$target" "$pkg"
cd "$target"
PYTHONPATH="$target" /usr/bin/python3 - "$target" <<'PY'
import os, sys
import aeserve
from aeserve.v1 import scoring_pb2, admin_pb2_grpc
from aeserve import Client
target = sys.argv[1]
assert aeserve.__file__.startswith(target), aeserve.__file__
assert scoring_pb2.__file__.startswith(target), scoring_pb2.__file__
print("installed:", os.path.dirname(aeserve.__file__))
PY
