# shardgate in a container: a multi-stage build, a slim Debian runtime, a
# non-root user.
#   docker build --build-arg SHARDGATE_COMMIT=$(git rev-parse --short=12 HEAD) -t shardgate .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9901:9901 shardgate
#   docker run --rm -p 8080:8080 -v $PWD/my.yaml:/etc/shardgate/shardgate.yaml:ro shardgate
# Docker's default seccomp profile refuses io_uring: the workers use epoll there
# (runtime: auto); `--security-opt seccomp=unconfined` lets them use io_uring.
FROM rust:1-bookworm AS build
WORKDIR /src
ARG SHARDGATE_COMMIT=unknown
ENV SHARDGATE_COMMIT=${SHARDGATE_COMMIT}
COPY . .
RUN cargo build --release --locked --bin shardgate \
 && strip --strip-debug target/release/shardgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system shardgate \
 && useradd --system --gid shardgate --home-dir /var/lib/shardgate --shell /usr/sbin/nologin shardgate \
 && install -d -o shardgate -g shardgate -m 0750 /var/lib/shardgate
COPY --from=build /src/target/release/shardgate /usr/bin/shardgate
COPY packaging/docker/shardgate.yaml /etc/shardgate/shardgate.yaml
USER shardgate
WORKDIR /var/lib/shardgate
ENV SHARDGATE_CONFIG=/etc/shardgate/shardgate.yaml SHARDGATE_LOG=info
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/shardgate"]
CMD ["run"]
