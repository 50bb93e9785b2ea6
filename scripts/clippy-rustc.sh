#!/usr/bin/env bash
# The compiler scripts/test.sh builds the workspace with (RUSTC_WORKSPACE_WRAPPER): clippy's
# driver compiles a crate as rustc does and runs clippy's lints on it, every warning an error.
# One build both lints and produces the test binaries, where `cargo clippy` followed by a build
# compiled every crate twice (README "Tests"). Cargo calls it as `clippy-rustc.sh <rustc> <args>`
# for the workspace's own crates only; dependencies compile with plain rustc.
exec "${CLIPPY_DRIVER:-clippy-driver}" "$@" -D warnings
