//! dpgw's engine: configuration, I/O backends, burst stages, workers and the
//! `dpgw` binary's commands. It composes the pure protocol and algorithm crates
//! (`vxlan`, `acl`, `lb`) into a poll-mode pipeline.
//!
//! ```
//! let cfg = dataplane::config::Config::parse("[pcap]\ninput = [\"x.pcap\"]\n").unwrap();
//! assert_eq!(cfg.dataplane.burst, 32);
//! ```

#![deny(unsafe_code)]

pub mod announce;
pub mod burst;
pub mod config;
pub mod conntrack;
pub mod control;
// SAFETY-bearing module: CPU intrinsics (rdtsc, prefetch).
#[allow(unsafe_code)]
pub mod cpu;
pub mod engine;
pub mod exception;
pub mod filter;
pub mod fleet;
pub mod frag;
pub mod gen;
pub mod health;
// SAFETY-bearing module: the binary's global allocator (mmap, madvise).
#[allow(unsafe_code)]
pub mod hugealloc;
pub mod icmp;
pub mod io;
pub mod log;
// SAFETY-bearing module: the TUN device and rtnetlink calls of `announce`.
#[allow(unsafe_code)]
pub mod netlink;
pub mod observe;
pub mod overlay;
pub mod pcapfile;
pub mod pipeline;
pub mod punt;
pub mod runner;
pub mod sdnotify;
pub mod slowpath;
pub mod stages;
pub mod stats;
pub mod tables;
