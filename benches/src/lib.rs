//! The `benches` package: benchmark harnesses, all of them binaries in
//! `src/bin/` (`suite`, `dpdk-bench`, `acl-bench`, `lb-bench`). This library
//! holds no code. The CPU helpers the harnesses share (the time-stamp counter,
//! prefetch, a thread's on-CPU time) have one copy, in [`dataplane::cpu`].
#![forbid(unsafe_code)]
