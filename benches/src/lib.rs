//! Benchmark harnesses shared helpers (TSC timing). Binaries live in `src/bin/`.
#![forbid(unsafe_code)]
