//! `hv_vcpu_interrupt` and `hv_vcpu_run_until`'s deadline: forcing a vCPU out of
//! KVM_RUN from another thread, or when its time is up.
//!
//! Per vCPU: an atomic kick flag (the work), `kvm_run.immediate_exit` (the hint: the
//! next or current KVM_RUN returns EINTR without entering the guest), an "in run" flag
//! (the owner thread is inside `hv_vcpu_run`), and a real-time signal whose handler only
//! sets the hint, so that a KVM_RUN in progress returns EINTR (installed without
//! SA_RESTART) and one about to start returns at once.
//!
//! The kicker publishes the kick flag, then sets the hint, then signals the thread if it
//! is in run; the vCPU thread consumes the flag first and clears the hint after, so a
//! kick racing with `take` leaves the flag set whenever the hint is (Firecracker's
//! order). Either the vCPU sees the flag before entering, or the hint stops the entry,
//! or the signal ends KVM_RUN.
//!
//! What a kick does while the vCPU is outside `hv_vcpu_run` is the one thing Apple does
//! not document ([`KickMode`]). The layer offers both answers and defaults to the
//! stricter one, so that hvrun's loop is tested against a framework that drops them.
use super::vcpu::Vcpu;
use kvm_bindings::kvm_run;
use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU8, Ordering};
use std::sync::Once;

/// What happens to a kick sent while the target vCPU is outside `hv_vcpu_run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickMode {
    /// It is lost, as older notes on HVF say; the next run enters the guest. Default.
    LostOutsideRun = 0,
    /// It is kept: the next run exits at once (what QEMU's hvf maintainers observe).
    KeptUntilRun = 1,
}

/// Not chosen yet: the first use reads HVRUN_KICK_MODE.
const MODE_UNSET: u8 = u8::MAX;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);

/// The environment variable that picks the mode of a whole process (a hvrun, a test
/// binary) unless it calls `set_mode`: `kept` or `lost` (the default).
pub const MODE_VARIABLE: &str = "HVRUN_KICK_MODE";

/// Chooses the kick mode for the whole process (tests run the same guests in both).
pub fn set_mode(mode: KickMode) {
    MODE.store(mode as u8, Ordering::SeqCst);
}

pub fn mode() -> KickMode {
    let mut m = MODE.load(Ordering::SeqCst);
    if m == MODE_UNSET {
        let kept = std::env::var(MODE_VARIABLE).is_ok_and(|v| v == "kept");
        let chosen = if kept { KickMode::KeptUntilRun } else { KickMode::LostOutsideRun } as u8;
        m = match MODE.compare_exchange(MODE_UNSET, chosen, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => chosen,
            Err(current) => current,
        };
    }
    if m == KickMode::KeptUntilRun as u8 { KickMode::KeptUntilRun } else { KickMode::LostOutsideRun }
}

/// The kick signal is SIGRTMIN + this (glibc's SIGRTMIN already skips its own).
const KICK_SIGNAL_OFFSET: i32 = 4;

pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

thread_local! {
    /// The kvm_run page of the vCPU this thread owns (null: none): the signal handler
    /// sets its hint. A const-initialised Cell of a pointer: no lazy initialisation, so
    /// it is safe to touch from a signal handler.
    static RUN_PAGE: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Called on the owner thread when its vCPU is created (null when destroyed).
pub fn set_thread_run_page(page: *mut kvm_run) {
    RUN_PAGE.with(|p| p.set(page));
}

extern "C" fn on_kick(_signal: libc::c_int) {
    // Sets the hint: a KVM_RUN that has not yet checked it returns EINTR at once, one in
    // progress is interrupted by the signal itself.
    let page = RUN_PAGE.with(|p| p.get());
    if !page.is_null() {
        // SAFETY: the page of this thread's vCPU, mapped until it is destroyed, which
        // clears the pointer first; a volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*page).immediate_exit), 1) }
    }
}

static INSTALL: Once = Once::new();

/// Installs the kick handler once per process.
pub fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler is
        // async-signal-safe; sa_flags = 0 leaves SA_RESTART off.
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

/// Kicks one vCPU (any thread): publish, hint, signal.
pub fn kick(vcpu: &Vcpu) {
    if mode() == KickMode::LostOutsideRun && !vcpu.in_run.load(Ordering::SeqCst) {
        log::trace!("hvf-sys/linux: vCPU {} is outside run: kick dropped", vcpu.id);
        return;
    }
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

/// On the vCPU thread: consumes a pending kick, if any. The hint is cleared before the
/// flag is looked at: a kick whose flag this misses sets its hint after the clear, so the
/// next KVM_RUN returns at once and the next `take` finds the flag. (The other order can
/// leave the hint set with no flag, and every KVM_RUN returning EINTR with no kick.)
pub fn take(vcpu: &Vcpu) -> bool {
    vcpu.set_immediate_exit(0);
    fence(Ordering::SeqCst);
    vcpu.kick.swap(false, Ordering::SeqCst)
}

/// At the start of `hv_vcpu_run`: the vCPU is inside run from here on. In
/// [`KickMode::LostOutsideRun`], a kick left over from outside run is forgotten.
pub fn entering_run(vcpu: &Vcpu) {
    if mode() == KickMode::LostOutsideRun {
        take(vcpu);
    }
    vcpu.in_run.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
}

/// At every return from `hv_vcpu_run`.
pub fn leaving_run(vcpu: &Vcpu) {
    vcpu.in_run.store(false, Ordering::SeqCst);
}

/// A one-shot timer that sends the kick signal to the owner thread: the deadline of
/// `hv_vcpu_run_until` (what HVF does with the VMX preemption timer).
pub struct DeadlineTimer {
    id: libc::timer_t,
}

// SAFETY: a timer id is a plain handle usable from any thread.
unsafe impl Send for DeadlineTimer {}

impl DeadlineTimer {
    /// A timer aimed at thread `tid`.
    pub fn new(tid: i32) -> std::io::Result<Self> {
        // SAFETY: a zeroed sigevent filled in as SIGEV_THREAD_ID wants; timer_create
        // writes the id.
        unsafe {
            let mut ev: libc::sigevent = std::mem::zeroed();
            ev.sigev_notify = libc::SIGEV_THREAD_ID;
            ev.sigev_signo = kick_signal();
            ev.sigev_notify_thread_id = tid;
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut id) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(DeadlineTimer { id })
        }
    }

    /// Fires at CLOCK_MONOTONIC time `deadline_ns`; 0 disarms.
    pub fn arm(&self, deadline_ns: u64) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: (deadline_ns / 1_000_000_000) as _, tv_nsec: (deadline_ns % 1_000_000_000) as _ },
        };
        // SAFETY: a valid timer id and itimerspec.
        unsafe { libc::timer_settime(self.id, libc::TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        // SAFETY: the id timer_create returned, deleted once.
        unsafe { libc::timer_delete(self.id) };
    }
}
