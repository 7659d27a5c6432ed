//! Processes the tests and benchmarks start: a free loopback port, waiting until something
//! listens on it, and a guard that stops (by its PID) the process it holds when dropped, so
//! nothing a test started outlives it. Shared by `tests/it` and `benches/` through `#[path]`.
#![allow(dead_code)]

use std::process::Child;
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `port`, failing after `within`.
pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port} after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, killed and reaped when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The child, to read its pipes or wait on it.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the process is still held")
    }

    /// Kills it now (`kill -9`) and waits for it to go.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still held (not stopped).
    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
