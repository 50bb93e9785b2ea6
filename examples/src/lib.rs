//! Runnable impush scenarios; see the `examples/` files.
