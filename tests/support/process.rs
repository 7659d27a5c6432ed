//! Processes the tests and benchmarks start: a free loopback port, waiting until something
//! listens on it, and a guard that stops (by its PID) the process it holds when dropped, so
//! nothing a test started outlives it. Shared by `tests/it` and `benches/` through `#[path]`.
#![allow(dead_code)]

use std::process::Child;
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 for a server that must bind it itself (an external program, or
/// one restarted at the same address). Picked below the kernel's ephemeral range, which is
/// where every `127.0.0.1:0` bind (each in-process Ferry) and every outgoing connection gets
/// its port: so between this check and the server's bind only another call of this function
/// could take it, and calls in one process take turns through a counter (processes start at
/// different offsets). Falls back to a kernel-chosen port when the range leaves no room.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let span = ephemeral_start.saturating_sub(LOW);
    if span >= 1_000 {
        let offset = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let port = LOW + (offset + n) % span;
            let Ok(port) = u16::try_from(port) else { continue };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
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
