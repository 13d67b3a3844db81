#!/bin/sh
# Makes the base image the Dockerfile's FROM names (debian:bookworm-slim) on a machine that reaches
# Debian's archive but no container registry: `debootstrap --variant=minbase bookworm` from the apt
# mirror this machine is configured with, carrying its sources and its Acquire settings so that apt
# works inside the build, then `podman import`. Does nothing when the image is already present.
# Run as root, with CONTAINERS_CONF pointing at deploy/image/containers.conf (build.sh does both).
set -eu
IMAGE=docker.io/library/debian:bookworm-slim
if podman image exists "$IMAGE"; then
  echo "base image: $IMAGE present"
  exit 0
fi
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /var/tmp/aeserve-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "base image: debootstrap --variant=minbase bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
  tail -n 20 "$ROOT.log" >&2
  exit 1
}
rm -f "$ROOT.log"
# This machine's apt sources (a mirror or snapshot) and the Acquire settings they need.
rm -f "$ROOT/etc/apt/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  if [ -f "$f" ]; then cp "$f" "$ROOT$f"; fi
done
apt-config dump | grep -E '^Acquire::(Check-Valid-Until|http::Proxy|https::Proxy) ' \
  >"$ROOT/etc/apt/apt.conf.d/90host" || true
# Slim as Debian's -slim images are: no package caches, lists, documentation or locales.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* \
  "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/*
tar -C "$ROOT" --numeric-owner -cf - . | podman import -q --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "base image: $IMAGE imported ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"
