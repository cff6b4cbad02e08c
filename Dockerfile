# prescale in a container: built in one stage, shipped alone in the next.
#
#   docker build -t prescale .
#   docker run --rm -p 8080:8080 -v "$PWD/config:/etc/prescale:ro" -v prescale-state:/var/lib/prescale \
#     prescale serve --config /etc/prescale/prescale.toml
#
# The configuration must listen on 0.0.0.0 (not 127.0.0.1) to be reached from outside the
# container, and keep its state and models under /var/lib/prescale (the one writable volume),
# e.g. `[state] dir = "/var/lib/prescale/state"` and `[forecast] models_dir = "/var/lib/prescale/models"`.

# --- build -----------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin prescale \
 && install -D -m 0755 target/release/prescale /out/prescale

# --- run: the binary and nothing else (glibc, CA certificates and time zones come with the base) ---
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/prescale /usr/local/bin/prescale
# distroless's `nonroot` user (65532); no shell, no package manager.
USER 65532:65532
VOLUME ["/var/lib/prescale"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/prescale"]
CMD ["serve", "--config", "/etc/prescale/prescale.toml"]
