#!/bin/sh
# Installs the Debian bookworm packages aeserve needs: the one place packages are named.
#   install-deps.sh           build, tests, sanitizers, fuzzing and benchmarks (what CI needs)
#   install-deps.sh build     only what compiling aeserve, aectl and the Python stubs needs
#                             (the image's build stage: no torch, sklearn, matplotlib or clang)
#   install-deps.sh runtime   only what the aeserve and aectl binaries load (the image)
#   install-deps.sh image     the container tools `make image` and the image test use
# Idempotent: only packages that are missing are installed. Run as root.
set -eu

RUNTIME_PACKAGES="
libdnnl2
libgrpc++1.51
libprotobuf32
libabsl20220623
libspdlog1.10
libcivetweb1
libsnappy1v5
libre2-9
libxxhash0
libssl3
libgomp1
zlib1g
ca-certificates
"

BUILD_PACKAGES="
build-essential
cmake
pkg-config
ninja-build
libdnnl-dev
libgrpc++-dev
libprotobuf-dev
protobuf-compiler
protobuf-compiler-grpc
libabsl-dev
libgtest-dev
libgmock-dev
libbenchmark-dev
libspdlog-dev
libfmt-dev
libcivetweb-dev
libsnappy-dev
libre2-dev
zlib1g-dev
libxxhash-dev
libssl-dev
libfast-float-dev
libcli11-dev
"

# Tests, peers, evaluation harnesses, sanitizers and fuzzing, on top of the build packages.
TEST_PACKAGES="
openssl
prometheus
prometheus-node-exporter
python3-grpcio
python3-protobuf
python3-numpy
python3-matplotlib
python3-sklearn
python3-torch
libopenblas0-pthread
python3-yaml
python3-pandas
python3-pip
python3-setuptools
python3-wheel
clang-14
libclang-rt-14-dev
libomp-14-dev
clang-format-14
"

IMAGE_PACKAGES="
podman
buildah
runc
debootstrap
"

case "${1:-}" in
  "") PACKAGES="$BUILD_PACKAGES $TEST_PACKAGES" ;;
  build) PACKAGES=$BUILD_PACKAGES ;;
  runtime) PACKAGES=$RUNTIME_PACKAGES ;;
  image) PACKAGES=$IMAGE_PACKAGES ;;
  *) echo "install-deps: unknown profile '$1' (none, build, runtime or image)" >&2; exit 2 ;;
esac

missing=""
for p in $PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done

if [ -n "$missing" ]; then
  echo "install-deps: installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing
  case "${1:-}" in build|runtime) rm -rf /var/lib/apt/lists/* ;; esac
else
  echo "install-deps: all packages present"
fi
