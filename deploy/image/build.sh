#!/bin/sh
# `make image`: builds the aeserve image with podman from the Dockerfile, on a machine that reaches
# Debian's archive but no registry (the base image is made by base.sh), and reports the sizes of
# the build stage and of the runtime image. Docker format, which keeps HEALTHCHECK (OCI drops it).
# Run as root. IMAGE overrides the name (the build stage is tagged $IMAGE-build).
set -eu
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-localhost/aeserve}
export CONTAINERS_CONF="$PWD/deploy/image/containers.conf"
./deploy/image/base.sh
podman build --format docker --network=host --pull=never --layers --target build -t "$IMAGE-build:latest" .
podman build --format docker --network=host --pull=never --layers -t "$IMAGE:latest" .
size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }
echo "image: $IMAGE:latest $(size "$IMAGE:latest"); build stage: $(size "$IMAGE-build:latest")"
