//! A blocking client: one connection, requests answered in order.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::{Command, Data, Request, Response, MAX_LINE, PROTOCOL_VERSION};

/// Why a request did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection before answering.
    #[error("the daemon closed the connection without answering")]
    Closed,
    /// The answer is not a response of our protocol.
    #[error("bad response from the daemon: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Server(String),
}

/// A connection to the control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`. Answers are awaited for at most
    /// `timeout` (mutations wait for the workers, about a second at most).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let writer = s.try_clone()?;
        Ok(Client {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// Sends one request and returns the daemon's response, whether it is a
    /// success or an error response.
    pub fn call(&mut self, cmd: Command) -> Result<Response, ClientError> {
        let line = Request::new(cmd).to_line();
        if line.len() > MAX_LINE + 1 {
            return Err(ClientError::Protocol(format!(
                "request of {} bytes exceeds the protocol limit of {MAX_LINE} bytes",
                line.len()
            )));
        }
        self.writer.write_all(line.as_bytes())?;
        self.writer.flush()?;
        let mut buf = String::new();
        let n = self.reader.read_line(&mut buf)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        let r: Response = serde_json::from_str(buf.trim_end())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if r.v != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "daemon speaks protocol version {}, this client {PROTOCOL_VERSION}",
                r.v
            )));
        }
        Ok(r)
    }

    /// Like [`Client::call`], but an error response becomes [`ClientError::Server`].
    pub fn request(&mut self, cmd: Command) -> Result<Response, ClientError> {
        let r = self.call(cmd)?;
        if !r.ok {
            return Err(ClientError::Server(
                r.error
                    .unwrap_or_else(|| "request failed (no reason given)".into()),
            ));
        }
        Ok(r)
    }

    /// Like [`Client::request`], returning only the payload.
    pub fn data(&mut self, cmd: Command) -> Result<Option<Data>, ClientError> {
        Ok(self.request(cmd)?.data)
    }
}
