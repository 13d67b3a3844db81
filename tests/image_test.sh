#!/bin/sh
# The container image for real (ctest label `image`, `make image-test`): starts the image built by
# `make image` with podman (host network, a fresh named volume as the model store), waits for the
# image's own HEALTHCHECK and for the demo model it trains on first start, scores the demo test
# file from outside with aectl, reads /metrics, checks the server runs as the non-root user and
# owns its store, then stops it with SIGTERM and expects a clean exit (aeserve is PID 1).
#   image_test.sh <aectl> [image]
set -eu
AECTL=$1
IMAGE=${2:-localhost/aeserve:latest}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CONTAINERS_CONF="$ROOT/deploy/image/containers.conf"
NAME=aeserve-image-test-$$
VOLUME=$NAME-models
DEMO=/usr/share/aeserve/demo

fail() {
  echo "image test: FAILED: $*" >&2
  podman logs --tail 40 "$NAME" >&2 2>&1 || true
  exit 1
}
cleanup() {
  podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  rm -rf "${TLS_DIR:-}"
}
trap cleanup EXIT

podman image exists "$IMAGE" || fail "no image $IMAGE: run 'make image' first"
# Two free ports on 127.0.0.1 (the container shares the host's network).
set -- $(/usr/bin/python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
PORT=$1
METRICS_PORT=$2

podman volume create "$VOLUME" >/dev/null
podman run -d --name "$NAME" --network=host -v "$VOLUME:/models" \
  -e AESERVE_PORT="$PORT" -e AESERVE_METRICS_PORT="$METRICS_PORT" \
  "$IMAGE" --demo_csv="$DEMO/smd-machine-3-4-train.csv" >/dev/null

# Healthy: the image's HEALTHCHECK passes and the demo model serves (trained on first start).
deadline=$(($(date +%s) + 180))
until podman healthcheck run "$NAME" >/dev/null 2>&1 &&
  "$AECTL" --server "127.0.0.1:$PORT" --timeout 3 models 2>/dev/null |
    awk '$1 == "demo" && $3 > 0 { ok = 1 } END { exit !ok }'; do
  [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] || fail "the container exited"
  [ "$(date +%s)" -lt "$deadline" ] || fail "not healthy with the demo model within 180 s"
  sleep 1
done
echo "image test: healthy, demo model active"

# Score the demo test file from the host: one result line per row.
rows=$(($(wc -l <"$ROOT/deploy/demo/smd-machine-3-4-test.csv") - 1))
"$AECTL" --server "127.0.0.1:$PORT" --timeout 30 score --model demo \
  "$ROOT/deploy/demo/smd-machine-3-4-test.csv" >"/tmp/$NAME.scores" || fail "aectl score failed"
scored=$(($(wc -l <"/tmp/$NAME.scores") - 1))
rm -f "/tmp/$NAME.scores"
[ "$scored" -eq "$rows" ] || fail "scored $scored rows of $rows"
metric=$(curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
  awk '$1 ~ /^aeserve_samples_scored_total/ { n += $2 } END { print n + 0 }')
[ "$metric" -ge "$rows" ] || fail "aeserve_samples_scored_total is $metric, expected >= $rows"
echo "image test: scored $scored rows; aeserve_samples_scored_total $metric"

# Non-root, and the store on the volume belongs to that user.
[ "$(podman exec "$NAME" id -u)" = 10001 ] || fail "the server does not run as uid 10001"
[ "$(podman exec "$NAME" stat -c %u /models/demo)" = 10001 ] || fail "/models/demo is not the server's"

# SIGTERM reaches aeserve as PID 1: a graceful stop, exit status 0.
podman stop -t 30 "$NAME" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "exit status $code after SIGTERM"
echo "image test: stopped cleanly"

# HTTPS remote write from the image (its civetweb TLS shim in /usr/local/lib/aeserve): a second
# container on the same store with a throwaway certificate, one POST from the host with curl.
TLS_DIR=$(mktemp -d)
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" \
  -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 ||
  fail "openssl could not make a certificate"
chmod 755 "$TLS_DIR" && chmod 644 "$TLS_DIR"/*.pem
set -- $(/usr/bin/python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
podman rm -f -t 0 "$NAME" >/dev/null
podman run -d --name "$NAME" --network=host -v "$VOLUME:/models" -v "$TLS_DIR:/tls:ro" \
  -e AESERVE_PORT="$1" -e AESERVE_METRICS_PORT="$2" "$IMAGE" \
  --tls_cert=/tls/cert.pem --tls_key=/tls/key.pem --ingest_port="$3" >/dev/null
printf 'x' >"$TLS_DIR/body"
deadline=$(($(date +%s) + 60))
until code=$(curl -s -o "$TLS_DIR/reply" -w '%{http_code}' --cacert "$TLS_DIR/cert.pem" \
  -H 'Content-Encoding: snappy' -H 'Content-Type: application/x-protobuf' \
  --data-binary @"$TLS_DIR/body" "https://127.0.0.1:$3/api/v1/write") && [ "$code" != 000 ]; do
  [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] || fail "the TLS container exited"
  [ "$(date +%s)" -lt "$deadline" ] || fail "no HTTPS answer on the ingest port within 60 s"
  sleep 1
done
rm -rf "$TLS_DIR"
[ "$code" = 400 ] || fail "HTTPS remote write of a body that is not snappy: $code, expected 400"
echo "image test: HTTPS remote write answered 400 for a bad body, as over HTTP; OK"
