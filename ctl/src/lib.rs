//! The control protocol of `dpgw run` and its client, shared by the daemon's
//! control server and the `dpgwctl` binary.
//!
//! The protocol is newline-delimited JSON over a Unix stream socket: one
//! [`Request`] per line, answered by exactly one [`Response`] per line, in order.
//! Every request carries the protocol version `v` ([`PROTOCOL_VERSION`]); a
//! server answers a version it does not speak with an error instead of guessing.
//! A line longer than [`MAX_LINE`] bytes is answered with an error and the rest
//! of it is discarded; the connection stays usable.
//!
//! Mutations (`service_add`, `backend_weight`, `rule_add`, ...) are validated
//! against the whole desired state, applied as one new snapshot, and answered
//! only once every running worker uses that snapshot (or after a bounded wait;
//! then `live` is `false`). Their response carries the snapshot's `generation`.
//!
//! ```
//! use ctl::{Command, Request, PROTOCOL_VERSION};
//!
//! let line = Request::new(Command::ServiceDel { name: "web".into() }).to_line();
//! assert_eq!(line, "{\"v\":1,\"cmd\":\"service_del\",\"name\":\"web\"}\n");
//! let back: Request = serde_json::from_str(&line).unwrap();
//! assert_eq!(back.v, PROTOCOL_VERSION);
//! assert_eq!(back.cmd, Command::ServiceDel { name: "web".into() });
//! ```
#![forbid(unsafe_code)]

mod client;
pub mod man;
pub mod pcapng;
mod proto;

pub use client::{Client, ClientError};
pub use proto::*;
