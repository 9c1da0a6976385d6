//! Guest time. The guest's TSC is the host's plus an offset (VMCS TSC offsetting, SDM
//! 25.6.5) that makes it start near zero; it ticks at the host TSC rate, which hvrun
//! measures once against the host's monotonic clock. kvmclock and the LAPIC's
//! TSC-deadline timer are both expressed in that TSC.
use std::time::{Duration, Instant, SystemTime};

/// The host TSC.
pub fn host_tsc() -> u64 {
    // SAFETY: RDTSC exists on every x86_64 CPU and has no side effects.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// How long the TSC is timed against the monotonic clock.
const CALIBRATION: Duration = Duration::from_millis(20);

/// The host TSC frequency, measured: TSC ticks over a known monotonic interval.
pub fn measure_tsc_hz() -> u64 {
    let (t0, c0) = (Instant::now(), host_tsc());
    std::thread::sleep(CALIBRATION);
    let (t1, c1) = (Instant::now(), host_tsc());
    let ns = (t1 - t0).as_nanos().max(1);
    (u128::from(c1.wrapping_sub(c0)) * 1_000_000_000 / ns) as u64
}

/// One VM's clock: what its TSC reads when, and when it started.
#[derive(Clone, Copy, Debug)]
pub struct GuestClock {
    pub tsc_hz: u64,
    /// VMCS_CTRL_TSC_OFFSET of every vCPU: guest TSC = host TSC + offset (wrapping).
    pub tsc_offset: u64,
    /// Host TSC and instant at which the guest's TSC was zero.
    pub start: Instant,
    /// Wall-clock time at `start`.
    pub start_wall: SystemTime,
}

impl GuestClock {
    /// A clock whose guest TSC starts at zero now.
    pub fn start(tsc_hz: u64) -> Self {
        let (start, start_wall, tsc) = (Instant::now(), SystemTime::now(), host_tsc());
        GuestClock { tsc_hz, tsc_offset: tsc.wrapping_neg(), start, start_wall }
    }

    /// The guest's TSC now.
    pub fn guest_tsc(&self) -> u64 {
        host_tsc().wrapping_add(self.tsc_offset)
    }

    /// For the LAPIC's TSC-deadline timer: the guest TSC against host instants.
    pub fn tsc_clock(&self) -> devices::tsc::GuestTscClock {
        let (now, tsc) = (Instant::now(), self.guest_tsc());
        devices::tsc::GuestTscClock::new(self.tsc_hz, tsc, now)
    }
}
