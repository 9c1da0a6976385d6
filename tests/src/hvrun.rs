//! Running the `hvrun` command itself, as a user would: its console on a pipe or on a
//! real pseudo-terminal, with every output line time-stamped when its first byte arrives.
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The hvrun binary built next to the running test (target/<profile>/hvrun).
pub fn hvrun_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target directory");
    let bin = dir.join("hvrun");
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p hvrun` (scripts/test.sh does)", bin.display());
    bin
}

/// A guest file named by an environment variable that scripts/test.sh sets.
pub fn guest_file(var: &str) -> PathBuf {
    let path = std::env::var_os(var).unwrap_or_else(|| panic!("{var} is not set: scripts/test.sh builds the guests and sets it"));
    let path = PathBuf::from(path);
    assert!(path.exists(), "{var}={} does not exist", path.display());
    path
}

/// Output lines with the time the first byte of each arrived (a guest's line takes as
/// long to print as its characters take to go through the emulated UART; the start of
/// the line is the closest the host sees to when the guest wrote it).
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<(Instant, String)>>>);

impl Lines {
    fn push(&self, started: Instant, line: &[u8]) {
        let text = String::from_utf8_lossy(line).trim_end_matches('\r').to_string();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((started, text));
    }

    pub fn all(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn text(&self) -> String {
        self.all().into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n")
    }

    /// The first line containing `needle`, with its arrival time.
    pub fn find(&self, needle: &str) -> Option<(Instant, String)> {
        self.all().into_iter().find(|(_, l)| l.contains(needle))
    }

    /// Waits up to `timeout` for a line containing `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(found) = self.find(needle) {
                return Some(found);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn collect(mut reader: impl Read + Send + 'static, lines: Lines) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut started = Instant::now();
        let mut buf = [0u8; 64 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => break, // EOF, or EIO from a terminal whose other side closed
                Ok(n) => n,
            };
            let now = Instant::now();
            for &byte in &buf[..n] {
                if line.is_empty() {
                    started = now;
                }
                if byte == b'\n' {
                    lines.push(started, &line);
                    line.clear();
                } else {
                    line.push(byte);
                }
            }
        }
        if !line.is_empty() {
            lines.push(started, &line);
        }
    })
}

/// A running hvrun.
pub struct Hvrun {
    pub child: Child,
    pub console: Lines,
    pub stderr: Lines,
    /// The pseudo-terminal's master side, when the console is a terminal.
    pub terminal: Option<std::fs::File>,
    /// The terminal's settings before hvrun started.
    pub terminal_before: Option<libc::termios>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// What a finished hvrun left.
pub struct Finished {
    pub status: ExitStatus,
    pub console: Lines,
    pub stderr: Lines,
    /// The terminal's settings before hvrun started and after it exited.
    pub terminal_settings: Option<(libc::termios, libc::termios)>,
}

/// What a guest kernel prints when the machine is not what it expects: an MSR access
/// that faulted where it assumed the MSR exists, a WARN() ("WARNING: CPU: n PID: n at
/// ...") and any call trace, an XSAVE layout CPUID got wrong. A clean boot prints none.
/// Not matched: a CPU-vulnerability notice that merely contains the word, such as
/// "Speculative Return Stack Overflow: WARNING: See ...srso.html": it reports on the
/// CPU (the sandbox's emulated EPYC has no IBPB microcode; QEMU's guest prints it too),
/// not on the machine hvrun builds.
/// With several vCPUs also: TSCs the guest finds out of step or a clocksource its
/// watchdog rejects (one TSC offset for all vCPUs must prevent both), an AP that did
/// not come up (CPUID and APIC IDs disagreeing), and the lockup and RCU-stall reports
/// of IPIs that were not serviced.
pub const KERNEL_NOISE: &[&str] = &[
    "unchecked MSR",
    "WARNING: CPU:",
    "Call Trace",
    "XSAVE consistency",
    "Marking TSC unstable",
    "Marking clocksource",
    "failed to report alive",
    "soft lockup",
    "self-detected stall",
    "rcu: INFO:",
];

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The console lines holding [`KERNEL_NOISE`], with their line numbers.
    pub fn kernel_noise(&self) -> Vec<(usize, String)> {
        let lines = self.console.all();
        lines
            .into_iter()
            .enumerate()
            .filter(|(_, (_, l))| KERNEL_NOISE.iter().any(|n| l.contains(n)))
            .map(|(i, (_, l))| (i + 1, l))
            .collect()
    }

    /// Everything, for assertion messages.
    pub fn report(&self) -> String {
        format!("status: {}\n--- console ---\n{}\n--- stderr ---\n{}", self.status, self.console.text(), self.stderr.text())
    }
}

/// Fails unless the guest's console is free of [`KERNEL_NOISE`]; the message starts with
/// the offending lines (and a few after each, where a call trace names the culprit).
pub fn assert_no_kernel_noise(run: &Finished) {
    let noise = run.kernel_noise();
    if noise.is_empty() {
        return;
    }
    const CONTEXT: usize = 4;
    let lines: Vec<String> = run.console.all().into_iter().map(|(_, l)| l).collect();
    let mut shown = String::new();
    for (n, line) in &noise {
        shown.push_str(&format!("  console line {n}: {line}\n"));
        for (k, after) in lines.iter().enumerate().skip(*n).take(CONTEXT) {
            shown.push_str(&format!("      {}: {after}\n", k + 1));
        }
    }
    panic!("the guest kernel printed {} line(s) of noise ({KERNEL_NOISE:?}):\n{shown}--- the whole run ---\n{}",
        noise.len(), run.report());
}

impl Hvrun {
    /// Starts hvrun with its console on pipes (stdin empty).
    pub fn spawn(args: &[&str]) -> Hvrun {
        let mut child = Command::new(hvrun_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hvrun");
        let (console, stderr) = (Lines::default(), Lines::default());
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), console.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Hvrun { child, console, stderr, terminal: None, terminal_before: None, readers }
    }

    /// Starts hvrun with its console (stdin and stdout) on a new pseudo-terminal, as a user
    /// at a terminal runs it.
    pub fn spawn_on_terminal(args: &[&str]) -> Hvrun {
        let (master, slave) = open_pty();
        let slave_in = slave.try_clone().expect("dup pty");
        let mut child = Command::new(hvrun_binary())
            .args(args)
            .stdin(Stdio::from(slave_in))
            .stdout(Stdio::from(slave))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hvrun");
        let (console, stderr) = (Lines::default(), Lines::default());
        let master = std::fs::File::from(master);
        let terminal_before = Some(termios_of(&master));
        let readers = vec![
            collect(master.try_clone().expect("dup master"), console.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Hvrun { child, console, stderr, terminal: Some(master), terminal_before, readers }
    }

    /// Asks the running hvrun for its state dump (SIGUSR1) and returns it: what each
    /// vCPU and interrupt controller was doing (empty if hvrun did not answer in 5 s).
    pub fn state_dump(&self) -> String {
        let before = self.stderr.all().len();
        // SAFETY: a signal to the child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            let lines = self.stderr.all();
            if lines[before.min(lines.len())..].iter().any(|(_, l)| l.contains(vmm::dump::END_LINE)) {
                return lines[before.min(lines.len())..].iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        String::new()
    }

    /// Waits up to `timeout` for a console line containing `needle`; on a timeout it
    /// prints the state dump (the hang handler's first look), and returns false.
    pub fn wait_for_console(&self, needle: &str, timeout: Duration) -> bool {
        if self.console.wait_for(needle, timeout).is_some() {
            return true;
        }
        eprintln!("no {needle:?} on the console within {timeout:?}; hvrun's state dump:\n{}", self.state_dump());
        false
    }

    /// Types `bytes` on the terminal.
    pub fn type_keys(&mut self, bytes: &[u8]) {
        let t = self.terminal.as_mut().expect("hvrun runs on a terminal");
        t.write_all(bytes).expect("write to the terminal");
    }

    /// Waits for hvrun to exit; kills it and fails the test after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= end {
                // The hang handler: the state dump first, then the kill.
                let dump = self.state_dump();
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "hvrun did not exit within {timeout:?}\n--- console ---\n{}\n--- stderr (state dump at the end) ---\n{}\n{dump}",
                    self.console.text(),
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let after = self.terminal.as_ref().map(termios_of);
        let terminal_settings = self.terminal_before.zip(after);
        // The pty reader ends with EIO once the child's side is closed; pipe readers at EOF.
        drop(self.terminal.take());
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Finished { status, console: self.console, stderr: self.stderr, terminal_settings }
    }
}

/// A pseudo-terminal pair (master, slave), the slave in the terminal's default cooked mode.
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors; the null pointers ask for defaults.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned here.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// The terminal settings of `fd` (to check hvrun restored them).
pub fn termios_of(fd: &impl AsRawFd) -> libc::termios {
    // SAFETY: tcgetattr fills the zeroed struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn finished(console: &[&str]) -> Finished {
        let lines = Lines::default();
        for l in console {
            lines.push(Instant::now(), l.as_bytes());
        }
        Finished { status: ExitStatus::from_raw(0), console: lines, stderr: Lines::default(), terminal_settings: None }
    }

    #[test]
    fn kernel_noise_is_found_and_reported_with_what_follows() {
        let clean = finished(&["[    0.1] Linux version 6.1", "HVRUN-INIT-OK"]);
        assert!(clean.kernel_noise().is_empty());
        assert_no_kernel_noise(&clean);

        let noisy = finished(&[
            "[    0.0] Linux version 6.1",
            "[    2.0] unchecked MSR access error: RDMSR from 0xc001001f at rIP: 0xffffffff8125032b",
            "[    2.0] Call Trace:",
            "[    2.0]  amd_bus_cpu_online+0x37/0x40",
            "[    2.8] XSAVE consistency problem: size 832 != kernel_size 576",
            "[    2.8] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:606",
        ]);
        assert_eq!(noisy.kernel_noise().iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 3, 5, 6]);
        let message = std::panic::catch_unwind(|| assert_no_kernel_noise(&noisy)).unwrap_err();
        let message = message.downcast_ref::<String>().expect("a formatted panic");
        assert!(message.contains("4 line(s)"), "{message}");
        assert!(message.contains("4: [    2.0]  amd_bus_cpu_online"), "the trace follows: {message}");
    }
}
