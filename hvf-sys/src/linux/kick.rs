//! `hv_vcpu_interrupt`: forcing a vCPU out of the guest from any thread, never losing a
//! kick.
//!
//! Per vCPU: an atomic kick flag and an "in run" flag. The kicker sets the kick flag,
//! sets `kvm_run.immediate_exit` (shared memory, written volatile), and, if the vCPU
//! thread is inside KVM_RUN, sends it a dedicated real-time signal whose handler does
//! nothing: the signal only makes a KVM_RUN in progress return EINTR (the handler is
//! installed without SA_RESTART). The vCPU thread sets "in run" before it looks at the
//! kick flag, and the kicker sets the kick flag before it looks at "in run" (both
//! sequentially consistent), so either the vCPU sees the kick before entering, or the
//! kicker sees the vCPU inside and signals it; `immediate_exit` covers the window
//! between the check and the ioctl.
//!
//! A kick that arrives while the vCPU is outside `hv_vcpu_run` makes the next run return
//! VMX_REASON_IRQ at once. Real HVF can lose such a kick (fact sheet: "a kick is lost if
//! the target is not inside run"); hvrun pairs kicks with its own pending flag and copes
//! with both behaviours.
use super::vcpu::Vcpu;
use std::sync::atomic::{fence, Ordering};
use std::sync::Once;

/// The kick signal is SIGRTMIN + this (glibc's SIGRTMIN already skips its own).
const KICK_SIGNAL_OFFSET: i32 = 4;

pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick(_signal: libc::c_int) {
    // Nothing: the signal's only purpose is to interrupt KVM_RUN (EINTR).
}

static INSTALL: Once = Once::new();

/// Installs the (empty) kick handler once per process.
pub fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
        // async-signal-safe empty function; sa_flags = 0 leaves SA_RESTART off.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) != 0 {
                log::error!("hvf-sys/linux: installing the vCPU kick signal handler failed: {}",
                    std::io::Error::last_os_error());
            }
        }
    });
}

/// Kicks one vCPU (any thread).
pub fn kick(vcpu: &Vcpu) {
    vcpu.kick.store(true, Ordering::SeqCst);
    vcpu.set_immediate_exit(1);
    fence(Ordering::SeqCst);
    if vcpu.in_run.load(Ordering::SeqCst) {
        // SAFETY: plain syscall; a thread that has exited makes it fail with ESRCH, which
        // is harmless (the vCPU is then not running).
        unsafe {
            libc::syscall(libc::SYS_tgkill, libc::getpid(), vcpu.owner_tid, kick_signal());
        }
    }
}

/// On the vCPU thread: consumes a pending kick, if any.
pub fn take(vcpu: &Vcpu) -> bool {
    if vcpu.kick.swap(false, Ordering::SeqCst) {
        vcpu.set_immediate_exit(0);
        true
    } else {
        false
    }
}
