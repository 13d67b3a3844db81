#!/bin/sh
# `make run`: starts aeserve on the model store, training the demo model first when it is empty.
# Extra arguments are passed to the server (make run ARGS="--port=N --model_dir=DIR").
set -eu
cd "$(dirname "$0")/.."
BIN=${BUILD:-build}/server/aeserve
AECTL=${BUILD:-build}/clients/cpp/aectl
PORT=50051
for a in "$@"; do
  case "$a" in --port=*) PORT=${a#--port=} ;; esac
done
cat <<MSG
aeserve: gRPC on localhost:$PORT (aeserve.v1.Scoring, grpc.health.v1, reflection)
  score a file:   $AECTL --server localhost:$PORT score --model demo deploy/demo/smd-machine-3-4-test.csv
  stream a file:  $AECTL --server localhost:$PORT stream --model demo --rate 1000 deploy/demo/smd-machine-3-4-test.csv
  models:         $AECTL --server localhost:$PORT models
Stop with Ctrl-C (SIGINT) or SIGTERM.
MSG
exec "$BIN" --demo_csv=deploy/demo/smd-machine-3-4-train.csv "$@"
