//! The host side of the protocol: a blocking client for one agent.
//!
//! Owns the session logic a caller needs to run a container process in a
//! booted microVM and stream its stdio: wait for `Ready`, send `Start`,
//! pump stdin from a reader on a helper thread, write stdout and stderr to
//! the caller's writers, and end the session with `Shutdown` once the main
//! process has exited. It does not boot the VM (that is `vessel-vmm`'s
//! job); it only needs the host end of the channel as a stream.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crate::protocol::{self, ExitInfo, Message, ReadyInfo, StartRequest};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent channel")]
    Protocol(#[from] protocol::Error),
    #[error("agent channel")]
    Io(#[from] std::io::Error),
    #[error("the agent closed the channel before {0} (did the guest kernel panic?)")]
    Vanished(&'static str),
    #[error("agent: {0}")]
    Agent(String),
    #[error("agent speaks protocol version {0}, expected {expected}", expected = protocol::VERSION)]
    Version(u32),
    #[error("unexpected message from the agent while waiting for {0}: {1}")]
    Unexpected(&'static str, String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Process id of the container's main process in a session.
pub const MAIN_ID: u32 = 1;

/// A connection to an agent.
pub struct Client {
    reader: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    ready: Option<ReadyInfo>,
}

impl Client {
    /// Use `stream`, the host end of the VM's channel.
    pub fn new(stream: UnixStream) -> Result<Client> {
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: stream,
            writer: Arc::new(Mutex::new(writer)),
            ready: None,
        })
    }

    /// A client on a channel whose agent already said it is ready (the
    /// `Ready` message was read by whoever booted the VM).
    pub fn after_ready(stream: UnixStream, ready: ReadyInfo) -> Result<Client> {
        let mut c = Client::new(stream)?;
        c.ready = Some(ready);
        Ok(c)
    }

    /// Send one message.
    pub fn send(&self, m: &Message) -> Result<()> {
        let mut w = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.write_to(&mut *w)?;
        Ok(())
    }

    /// Receive one message; `None` when the agent closed the channel.
    pub fn recv(&mut self) -> Result<Option<Message>> {
        Ok(Message::read_from(&mut self.reader)?)
    }

    /// Wait for the agent's `Ready`.
    pub fn wait_ready(&mut self) -> Result<ReadyInfo> {
        if let Some(r) = &self.ready {
            return Ok(r.clone());
        }
        match self.recv()? {
            Some(Message::Ready(info)) => {
                if info.version != protocol::VERSION {
                    return Err(Error::Version(info.version));
                }
                self.ready = Some(info.clone());
                Ok(info)
            }
            Some(other) => Err(Error::Unexpected("ready", format!("{other:?}"))),
            None => Err(Error::Vanished("it was ready")),
        }
    }

    /// Forward `input` to process `id`'s stdin on a helper thread; closes
    /// its stdin at end of input. The thread ends with the input or the
    /// channel.
    pub fn pump_stdin(&self, id: u32, mut input: Box<dyn Read + Send>) {
        let writer = self.writer.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; protocol::MAX_DATA];
            loop {
                let m = match input.read(&mut buf) {
                    Ok(0) | Err(_) => Message::StdinClose { id },
                    Ok(n) => Message::Stdin {
                        id,
                        data: buf[..n].to_vec(),
                    },
                };
                let done = matches!(m, Message::StdinClose { .. });
                let mut w = writer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if m.write_to(&mut *w).is_err() || done {
                    return;
                }
            }
        });
    }

    /// Run the container: `Start` with `request`, stream its output into
    /// `stdout`/`stderr` (and `stdin` into it), then `Shutdown` the agent.
    /// Returns the main process's exit.
    pub fn run(
        &mut self,
        request: StartRequest,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitInfo> {
        self.wait_ready()?;
        self.send(&Message::Start {
            id: MAIN_ID,
            request,
        })?;
        let mut stdin = stdin;
        loop {
            let Some(m) = self.recv()? else {
                return Err(Error::Vanished("the container process exited"));
            };
            match m {
                Message::Started { id: MAIN_ID, .. } => match stdin.take() {
                    Some(input) => self.pump_stdin(MAIN_ID, input),
                    None => self.send(&Message::StdinClose { id: MAIN_ID })?,
                },
                Message::Stdout { id: MAIN_ID, data } => {
                    stdout.write_all(&data)?;
                }
                Message::Stderr { id: MAIN_ID, data } => {
                    stderr.write_all(&data)?;
                }
                Message::Exited { id: MAIN_ID, exit } => {
                    stdout.flush()?;
                    stderr.flush()?;
                    // The guest may already be resetting; a failed send
                    // only means it went first.
                    let _ = self.send(&Message::Shutdown);
                    return Ok(exit);
                }
                Message::Error { id, message } if id == MAIN_ID || id == 0 => {
                    let _ = self.send(&Message::Shutdown);
                    return Err(Error::Agent(message));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ProcessSpec, RootSpec};

    fn request() -> StartRequest {
        StartRequest {
            root: RootSpec::default(),
            hostname: String::new(),
            process: ProcessSpec {
                args: vec!["x".into()],
                ..Default::default()
            },
        }
    }

    /// A scripted agent on the other end of a socket pair.
    fn agent(script: impl FnOnce(&mut UnixStream) + Send + 'static) -> UnixStream {
        let (host, mut guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || script(&mut guest));
        host
    }

    #[test]
    fn run_collects_output_and_exit() {
        let host = agent(|g| {
            Message::Ready(ReadyInfo {
                version: protocol::VERSION,
                kernel: "k".into(),
            })
            .write_to(g)
            .unwrap();
            let m = Message::read_from(g).unwrap().unwrap();
            assert!(matches!(m, Message::Start { id: MAIN_ID, .. }));
            Message::Started {
                id: MAIN_ID,
                pid: 5,
            }
            .write_to(g)
            .unwrap();
            assert_eq!(
                Message::read_from(g).unwrap(),
                Some(Message::StdinClose { id: MAIN_ID })
            );
            Message::Stdout {
                id: MAIN_ID,
                data: b"out".to_vec(),
            }
            .write_to(g)
            .unwrap();
            Message::Stderr {
                id: MAIN_ID,
                data: b"err".to_vec(),
            }
            .write_to(g)
            .unwrap();
            Message::Exited {
                id: MAIN_ID,
                exit: ExitInfo {
                    code: 7,
                    signal: None,
                },
            }
            .write_to(g)
            .unwrap();
            assert_eq!(Message::read_from(g).unwrap(), Some(Message::Shutdown));
        });
        let mut c = Client::new(host).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = c.run(request(), None, &mut out, &mut err).unwrap();
        assert_eq!(exit.code, 7);
        assert_eq!((out.as_slice(), err.as_slice()), (&b"out"[..], &b"err"[..]));
    }

    #[test]
    fn vanishing_agent_is_an_error() {
        let host = agent(|g| {
            Message::Ready(ReadyInfo {
                version: protocol::VERSION,
                kernel: "k".into(),
            })
            .write_to(g)
            .unwrap();
            let _ = Message::read_from(g);
        });
        let mut c = Client::new(host).unwrap();
        let err = c
            .run(request(), None, &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, Error::Vanished(_)), "{err}");
    }

    #[test]
    fn agent_errors_and_versions_are_reported() {
        let host = agent(|g| {
            Message::Ready(ReadyInfo {
                version: protocol::VERSION,
                kernel: "k".into(),
            })
            .write_to(g)
            .unwrap();
            let _ = Message::read_from(g);
            Message::Error {
                id: MAIN_ID,
                message: "exec x: No such file or directory".into(),
            }
            .write_to(g)
            .unwrap();
            let _ = Message::read_from(g);
        });
        let mut c = Client::new(host).unwrap();
        let err = c
            .run(request(), None, &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("No such file"), "{err}");

        let host = agent(|g| {
            Message::Ready(ReadyInfo {
                version: 99,
                kernel: "k".into(),
            })
            .write_to(g)
            .unwrap();
        });
        let mut c = Client::new(host).unwrap();
        assert!(matches!(c.wait_ready(), Err(Error::Version(99))));
    }
}
