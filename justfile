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

# Run the server (after the sync issue lands; today: the CLI's help).
run *ARGS:
    cargo run --release -- {{ARGS}}

# Criterion benchmarks (figures go to docs/benchmarks.md).
bench *ARGS:
    cargo bench -p converge-benches {{ARGS}}

# Fuzz one target for a minute: `just fuzz entry_decode`.
fuzz TARGET SECONDS="60":
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {{TARGET}} -- -max_total_time={{SECONDS}}

# Build every fuzz target on the stable toolchain, without sanitizers (what CI does).
fuzz-build:
    cd fuzz && cargo fuzz build -s none

# Everything CI runs.
ci:
    bash .ci/run
