# aeserve container image: built with the same install script CI runs, served as a non-root user.
#   docker build -t aeserve .
#   docker run -p 50051:50051 -p 9464:9464 -v aeserve-models:/models aeserve
FROM debian:bookworm-slim AS build
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN ./deploy/install-deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
 && cmake --build build --target aeserve aectl python_client

FROM debian:bookworm-slim
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh runtime && rm /tmp/install-deps.sh \
 && useradd --system --uid 10001 --home-dir /models aeserve \
 && mkdir -p /models && chown aeserve /models
COPY --from=build /src/build/server/aeserve /src/build/clients/cpp/aectl /usr/local/bin/
COPY --from=build /src/build/clients/python/aeserve /usr/local/lib/aeserve-python/aeserve
COPY deploy/demo /usr/share/aeserve/demo
USER aeserve
VOLUME ["/models"]
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/aectl", "--server", "127.0.0.1:50051", "--timeout", "3", "health"]
ENTRYPOINT ["/usr/local/bin/aeserve", "--model_dir=/models", "--port=50051", "--metrics_port=9464"]
