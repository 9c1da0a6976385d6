//! The serial console's input side: a thread reads the user's keys, handles the Ctrl-A
//! escape (Ctrl-A x quits, Ctrl-A i prints the state dump, Ctrl-A Ctrl-A sends Ctrl-A)
//! and feeds the UART no faster than the guest drains it, so nothing is buffered without
//! bound (Firecracker #2177).
use devices::escape::{Escape, Input};
use devices::serial::Serial;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

/// Starts the stdin thread. `quit` runs when the user types Ctrl-A x, `dump` on Ctrl-A i.
pub fn spawn_input<W: Write + Send + 'static>(
    serial: Arc<Serial<W>>,
    quit: impl Fn() + Send + 'static,
    dump: impl Fn() + Send + 'static,
) {
    let spawned = std::thread::Builder::new().name("console-in".into()).spawn(move || {
        let mut escape = Escape::new();
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return, // stdin closed: the guest just gets no more input
                Ok(n) => n,
            };
            for input in escape.feed(&buf[..n]) {
                match input {
                    Input::Quit => return quit(),
                    Input::Dump => dump(),
                    Input::Bytes(bytes) => feed(&serial, &bytes),
                }
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("no console input: cannot start its thread: {e}");
    }
}

/// Hands `bytes` to the UART as its FIFO frees up; this thread waits, not the guest.
fn feed<W: Write + Send>(serial: &Serial<W>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let taken = serial.enqueue_input(bytes);
        bytes = &bytes[taken..];
        if !bytes.is_empty() {
            serial.wait_for_input_space(Duration::from_millis(100));
        }
    }
}
