# The two commands of README.md: `make run` and `make test`. Both install what is missing first.
BUILD ?= build
JOBS ?= $(shell nproc)
ARGS ?=
CTEST_ARGS ?= -LE '^(soak|fuzz|sanitizer)$$'

.PHONY: deps configure build test run bench clean

deps:
	./deploy/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600 -j $(JOBS) $(CTEST_ARGS)

run: build
	./deploy/run-server.sh $(ARGS)

bench: build
	$(BUILD)/bench/engine_bench

clean:
	rm -rf $(BUILD)
