//! The `benches` package: benchmark harnesses, binaries in `src/bin/`
//! (`suite`, `dpdk-bench`, `acl-bench`, `lb-bench`). The library holds what
//! more than one of them needs: [`sanity`], the checks that decide whether a
//! peer's run (`dpdk-testpmd`, `dpdk-test-acl`) is a measurement or a failure.
//! The CPU helpers the harnesses share (the time-stamp counter, prefetch, a
//! thread's on-CPU time) have one copy, in [`dataplane::cpu`].
#![forbid(unsafe_code)]

pub mod daemon;
pub mod sanity;
