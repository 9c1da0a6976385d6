//! Console output that never blocks the vCPU.
//!
//! Choice: a bounded buffer drained by a writer thread, rather than O_NONBLOCK on stdout.
//! Setting O_NONBLOCK changes the terminal's shared file description (the shell behind
//! hvrun sees it too, and it outlives a crash), while a thread doing plain blocking writes
//! touches nothing. The vCPU appends to the buffer under a short lock and returns; when
//! the reader of stdout stalls (a paused pipe, a slow terminal) the buffer fills up to its
//! capacity and further bytes are dropped and counted (the newest are dropped, so what is
//! shown is an exact prefix). Nothing is buffered beyond the capacity.
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Default buffer size: enough for a kernel's boot log while the terminal catches up.
pub const DEFAULT_OUTPUT_CAPACITY: usize = 1 << 20;

struct State {
    buf: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
    /// The writer thread holds a chunk it has not finished writing.
    writing: bool,
    /// Every handle is gone: write what is left and stop.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes arrive, when the writer finishes a chunk and on close.
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.cv.notify_all();
    }
}

/// A cloneable, never-blocking [`Write`] that hands bytes to a writer thread.
#[derive(Clone)]
pub struct ConsoleOutput {
    handle: Arc<Handle>,
}

impl ConsoleOutput {
    /// Starts the writer thread on `sink` (e.g. `std::io::stdout()`, left blocking).
    /// At most `capacity` bytes wait for it.
    pub fn spawn<W: Write + Send + 'static>(mut sink: W, capacity: usize) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { buf: VecDeque::new(), capacity, dropped: 0, writing: false, closed: false }),
            cv: Condvar::new(),
        });
        let writer = shared.clone();
        thread::Builder::new().name("console-out".into()).spawn(move || {
            let mut failed = false;
            loop {
                let chunk: Vec<u8> = {
                    let mut s = writer.lock();
                    while s.buf.is_empty() && !s.closed {
                        s = writer.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                    }
                    if s.buf.is_empty() {
                        return; // Closed and drained.
                    }
                    s.writing = true;
                    s.buf.drain(..).collect()
                };
                if !failed {
                    if let Err(e) = sink.write_all(&chunk).and_then(|_| sink.flush()) {
                        // Console output is gone (closed pipe): keep draining, quietly.
                        log::warn!("console output failed, discarding from now on: {e}");
                        failed = true;
                    }
                }
                writer.lock().writing = false;
                writer.cv.notify_all();
            }
        })?;
        Ok(ConsoleOutput { handle: Arc::new(Handle(shared)) })
    }

    fn shared(&self) -> &Shared {
        &self.handle.0
    }

    /// Bytes dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared().lock().dropped
    }

    /// Waits (e.g. at exit) until everything buffered has been written, or `timeout`.
    /// Returns whether it all was.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let shared = self.shared();
        let mut s = shared.lock();
        while !s.buf.is_empty() || s.writing {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = shared.cv.wait_timeout(s, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl Write for ConsoleOutput {
    /// Takes what fits, drops the rest, and reports everything written: the UART must
    /// not stall or see errors because the terminal is slow.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let shared = self.shared();
        let mut s = shared.lock();
        let room = s.capacity.saturating_sub(s.buf.len());
        let n = room.min(data.len());
        s.buf.extend(&data[..n]);
        if n < data.len() {
            if s.dropped == 0 {
                log::warn!("console output is not being read: dropping bytes");
            }
            s.dropped += (data.len() - n) as u64;
        }
        drop(s);
        if n > 0 {
            shared.cv.notify_all();
        }
        Ok(data.len())
    }

    /// Does not wait for the terminal (see [`ConsoleOutput::drain`]).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A terminal that blocks every write until the test lets it go.
    struct GatedSink {
        gate: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }
    impl Write for GatedSink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.gate.recv().map_err(|_| io::Error::other("gate closed"))?;
            self.got.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_terminal_never_blocks_the_writer_and_bounds_the_buffer() {
        let (open, gate) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut out = ConsoleOutput::spawn(GatedSink { gate, got: got.clone() }, 16).unwrap();
        // The writer thread may grab a first chunk and block on the gate: at most 16
        // bytes sit in the buffer besides it. All of these writes return at once.
        let data: Vec<u8> = (0..200u8).collect();
        for chunk in data.chunks(10) {
            out.write_all(chunk).unwrap();
            out.flush().unwrap();
        }
        assert!(out.dropped() >= 200 - 2 * 16, "dropped {}", out.dropped());
        // Let the terminal go: what was kept arrives in order, a prefix of each chunk run.
        for _ in 0..64 {
            open.send(()).unwrap();
        }
        assert!(out.drain(Duration::from_secs(30)));
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len() as u64 + out.dropped(), 200);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept: {got:?}");
    }

    #[test]
    fn everything_arrives_when_the_terminal_keeps_up() {
        let got = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = ConsoleOutput::spawn(Shared(got.clone()), DEFAULT_OUTPUT_CAPACITY).unwrap();
        let mut clone = out.clone();
        out.write_all(b"hello, ").unwrap();
        clone.write_all(b"world\n").unwrap();
        assert!(out.drain(Duration::from_secs(30)));
        assert_eq!(&*got.lock().unwrap(), b"hello, world\n");
        assert_eq!(out.dropped(), 0);
    }
}
