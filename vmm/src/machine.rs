//! The machine the vCPUs share: RAM, the port and MMIO buses, the CPUID policy, and how
//! it stops.
use crate::clock::GuestClock;
use crate::cpuid::CpuidPolicy;
use crate::kick::Waker;
use crate::memory::GuestRam;
use crate::trace::ExitStats;
use devices::bus::Bus;
use devices::power::{PowerControl, PowerEvent};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Why the machine stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A device reported a power event (poweroff, reset, a test's exit port).
    Power(PowerEvent),
    /// The host asked (a signal, the user's quit key).
    Host,
    /// The guest triple-faulted (shutdown): the dump shows its state.
    TripleFault { dump: String },
    /// The CPU refused the guest state or controls at VM entry (SDM 27.8).
    EntryFailed { reason: u32, qualification: u64, dump: String },
    /// Something hvrun cannot continue from: an exit it has no handler for, an
    /// instruction it cannot emulate, a hypervisor error.
    Fatal { message: String, dump: String },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Power(e) => write!(f, "{e}"),
            StopReason::Host => write!(f, "stopped by the host"),
            StopReason::TripleFault { dump } => write!(f, "guest triple fault\n{dump}"),
            StopReason::EntryFailed { reason, qualification, dump } => write!(
                f,
                "VM entry failed: reason {reason} ({}), qualification {qualification:#x}\n{dump}",
                hvf_sys::vmx::exit_reason_name(*reason)
            ),
            StopReason::Fatal { message, dump } => write!(f, "{message}\n{dump}"),
        }
    }
}

/// Collects the first stop request and wakes every vCPU to see it.
#[derive(Default)]
pub struct Stopper {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl Stopper {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add_waker(&self, waker: Arc<Waker>) {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner()).push(waker);
    }

    /// Stops the machine; the first reason given is the one reported.
    pub fn stop(&self, reason: StopReason) {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
        self.stopping.store(true, Ordering::SeqCst);
        for waker in self.wakers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            waker.wake();
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl PowerControl for Stopper {
    fn power_event(&self, event: PowerEvent) {
        self.stop(StopReason::Power(event));
    }
}

/// Counts the vCPUs that cannot run until something outside them acts: halted with
/// interrupts disabled (only an NMI or INIT wakes them, SDM vol. 3, 9.1 / 6.7) or an AP
/// waiting for its start-up IPI. When every vCPU is parked nothing can ever run again:
/// that is how a kernel without ACPI powers off (Linux's `machine_halt` with
/// `acpi=off`: the other CPUs stop with interrupts off, then the last one halts).
pub struct Parking {
    vcpus: u32,
    parked: AtomicU32,
}

impl Parking {
    pub fn new(vcpus: u32) -> Self {
        Parking { vcpus: vcpus.max(1), parked: AtomicU32::new(0) }
    }

    /// A vCPU parks. Returns true if it was the last one that could run.
    pub fn park(&self) -> bool {
        self.parked.fetch_add(1, Ordering::SeqCst) + 1 >= self.vcpus
    }

    /// A parked vCPU was woken (an NMI, INIT or SIPI) and runs again.
    pub fn unpark(&self) {
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything the vCPU threads share.
pub struct Machine {
    pub ram: GuestRam,
    pub pio: Bus,
    pub mmio: Bus,
    pub cpuid: CpuidPolicy,
    pub clock: GuestClock,
    pub stopper: Arc<Stopper>,
    pub parking: Parking,
    /// Exit counts and times of the vCPUs that have finished.
    pub stats: Mutex<ExitStats>,
}
