# The two commands of README.md: `make run` and `make test`. Both install what is missing first.
BUILD ?= build
JOBS ?= $(shell nproc)
ARGS ?=
# Warnings are errors in the main (gcc) build; WERROR=OFF relaxes that.
WERROR ?= ON
CTEST_ARGS ?= -LE '^(soak|fuzz|bench_smoke|image|ingest)$$'

.PHONY: deps configure build test run bench bench-smoke clean sanitize tsan fuzz soak image image-test ingest-test

deps:
	./deploy/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DAESERVE_WERROR=$(WERROR)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600 -j $(JOBS) $(CTEST_ARGS)

run: build
	./deploy/run-server.sh $(ARGS)

bench: build
	$(BUILD)/bench/engine_bench

# The evaluation and peer harnesses on one small set each (about a minute), so they do not rot;
# a CI step of its own, outside `make test`.
bench-smoke: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600 -j $(JOBS) -L '^bench_smoke$$'

# AddressSanitizer + UndefinedBehaviorSanitizer over the engine, service, lifecycle, metrics and
# hardening tests (the last run the sanitized aeserve binary as a child process).
sanitize: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAESERVE_SANITIZE=address
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ctest --output-on-failure --timeout 900 -j $(JOBS) -L '^(engine|service|lifecycle|metrics|security|observability|hardening|autopilot)$$'

# ThreadSanitizer (clang) over the server's concurrency tests: service, lifecycle (swaps under
# running streams), observability (watchers), replicas and hardening (uploads, store faults).
# tests/tsan/ holds what makes Debian's uninstrumented absl and gRPC usable under TSan; any report
# fails the run (halt_on_error).
TSAN_OPTIONS_ALL = halt_on_error=1 ignore_noninstrumented_modules=1 second_deadlock_stack=1 \
  suppressions=$(CURDIR)/tests/tsan/suppressions.txt
tsan: deps
	CXX=clang++-14 CC=clang-14 cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAESERVE_SANITIZE=thread
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS="$(TSAN_OPTIONS_ALL)" \
	  ctest --output-on-failure --timeout 600 -j $(JOBS) -L '^(service|lifecycle|observability|replicas|hardening|autopilot)$$'

# libFuzzer targets (clang), 60 s each from the checked-in seed corpus; message_sequence runs an
# in-process server and sends it message sequences over a real channel.
fuzz: deps
	CXX=clang++-14 CC=clang-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DAESERVE_SANITIZE=fuzz -DAESERVE_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS) --target model_file_fuzzer score_request_fuzzer label_escape_fuzzer message_sequence_fuzzer \
	  write_request_fuzzer
	cd build-fuzz && ctest --output-on-failure -L '^fuzz$$'

# The container image, built with podman from the Dockerfile (base image made with debootstrap, as
# no registry is reachable), and the test that runs it: health, the demo scored, a clean stop.
image:
	./deploy/install-deps.sh image
	./deploy/image/build.sh

image-test: image build
	cd $(BUILD) && ctest --output-on-failure -L '^image$$'

# Prometheus (Debian's prometheus and node exporter) remote-writing into aeserve, with a CPU burn.
ingest-test: build
	cd $(BUILD) && ctest --output-on-failure -L '^ingest$$'

# Long runs: 50 SIGKILLs around model writes, 3 minutes of mixed load.
soak: build
	cd $(BUILD) && ctest --output-on-failure -L '^soak$$'

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
