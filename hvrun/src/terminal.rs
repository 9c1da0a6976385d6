//! The user's terminal in raw mode while the guest owns it, restored however hvrun ends:
//! on drop, and from the exit path (`restore_now`) before the process exits.
use std::sync::Mutex;

/// The settings to put back, if hvrun changed them.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin in raw mode (no echo, no line editing, no signals from keys: Ctrl-C goes to
/// the guest) if it is a terminal. Returns whether it did.
pub fn enter_raw_mode() -> bool {
    // SAFETY: termios calls on fd 0 with a zeroed struct they fill in.
    unsafe {
        if libc::isatty(0) != 1 {
            return false;
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return false;
        }
        let saved = t;
        libc::cfmakeraw(&mut t);
        // Keep output post-processing so the guest's "\n" still returns the carriage.
        t.c_oflag |= libc::OPOST;
        if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
            return false;
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
    }
    true
}

/// Whether the terminal is in raw mode now (our own lines then need "\r\n").
pub fn is_raw() -> bool {
    SAVED.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// Restores the terminal if raw mode was entered; safe to call more than once.
pub fn restore_now() {
    if let Some(saved) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: the settings tcgetattr returned.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &saved);
        }
    }
}

/// Restores the terminal when dropped.
pub struct RawModeGuard;

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore_now();
    }
}
