# converge: everyday commands. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Run the whole test suite (the README's test command).
test:
    cargo test --workspace

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Run the converge binary: `just run serve`, `just run demo`.
run *ARGS:
    cargo run --release -- {{ARGS}}

# Criterion benchmarks (figures go to docs/benchmarks.md).
bench *ARGS:
    cargo bench -p converge-benches {{ARGS}}

# End-to-end load against a server process (pinned to CPU 0; this runs on CPU 1):
# `just load fanout --readers 100`, `just load trace`, `just load all`.
load *ARGS:
    cargo build --release -p converge-cli
    taskset -c 1 target/release/converge bench {{ARGS}}

# Fuzz one target for a minute: `just fuzz entry_decode`.
fuzz TARGET SECONDS="60":
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {{TARGET}} -- -max_total_time={{SECONDS}}

# Build every fuzz target on the stable toolchain, without sanitizers (what CI does).
fuzz-build:
    cd fuzz && cargo fuzz build -s none

# Everything CI runs.
ci:
    bash .ci/run
