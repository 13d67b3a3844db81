# aeserve container image: built with the project's install script, served as a non-root user.
#   make image                     (podman, on a machine without a registry: deploy/image/build.sh)
#   docker build -t aeserve .
#   docker run -p 50051:50051 -p 9464:9464 -v aeserve-models:/models aeserve
# Arguments after the image name go to aeserve (e.g. --demo_csv=/usr/share/aeserve/demo/...);
# AESERVE_PORT and AESERVE_METRICS_PORT move the ports, e.g. under host networking.
FROM debian:bookworm-slim AS build
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN ./deploy/install-deps.sh build
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
 && cmake --build build --target aeserve aectl python_client

FROM debian:bookworm-slim
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh runtime && rm /tmp/install-deps.sh \
 && useradd --system --uid 10001 --home-dir /models aeserve \
 && mkdir -p /models && chown aeserve /models
COPY --from=build /src/build/server/aeserve /src/build/clients/cpp/aectl /usr/local/bin/
# civetweb's HTTPS (the TLS ingest port) needs this next to aeserve: server/metrics/civetweb_tls_shim.cc
COPY --from=build /src/build/server/metrics/libaeserve_civetweb_tls.so \
  /src/build/server/metrics/libaeserve_civetweb_crypto.so /usr/local/lib/aeserve/
COPY --from=build /src/build/clients/python/aeserve /usr/local/lib/aeserve-python/aeserve
COPY deploy/demo /usr/share/aeserve/demo
ENV AESERVE_PORT=50051 AESERVE_METRICS_PORT=9464
USER aeserve
VOLUME ["/models"]
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD /usr/local/bin/aectl --server "127.0.0.1:$AESERVE_PORT" --timeout 3 health
ENTRYPOINT ["/bin/sh", "-c", "exec /usr/local/bin/aeserve --model_dir=/models --port=\"$AESERVE_PORT\" --metrics_port=\"$AESERVE_METRICS_PORT\" \"$@\"", "aeserve"]
