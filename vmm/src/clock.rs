//! Guest time. The guest's TSC is the host's plus an offset (VMCS TSC offsetting, SDM
//! 25.6.5) that makes it start near zero; it ticks at the host TSC rate, which hvrun asks
//! the host kernel for (macOS: the `machdep.tsc.frequency` sysctl; Linux: KVM's
//! KVM_GET_TSC_KHZ), measuring it only where neither answers. kvmclock and the LAPIC's
//! TSC-deadline timer are both expressed in that TSC, so every conversion inherits its
//! error: a rate timed over a short sleep on a loaded host is off by the sleep's jitter.
use std::time::{Duration, Instant, SystemTime};

/// The host TSC.
pub fn host_tsc() -> u64 {
    // SAFETY: RDTSC exists on every x86_64 CPU and has no side effects.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// How long the TSC is timed against the monotonic clock when the host does not say.
const CALIBRATION: Duration = Duration::from_millis(100);

/// The host TSC frequency: the host kernel's figure, else measured.
pub fn host_tsc_hz() -> u64 {
    match host_kernel_tsc_hz() {
        Some(hz) => hz,
        None => {
            log::warn!("the host does not report its TSC rate: measuring it over {CALIBRATION:?}");
            measure_tsc_hz()
        }
    }
}

#[cfg(target_os = "linux")]
fn host_kernel_tsc_hz() -> Option<u64> {
    hvf_sys::linux::hv_linux_host_tsc_khz().map(|khz| u64::from(khz) * 1000)
}

#[cfg(target_os = "macos")]
fn host_kernel_tsc_hz() -> Option<u64> {
    let mut hz: u64 = 0;
    let mut len = std::mem::size_of::<u64>();
    // SAFETY: a NUL-terminated name; `hz` and `len` outlive the call, which writes at
    // most `len` bytes.
    let ret = unsafe {
        libc::sysctlbyname(c"machdep.tsc.frequency".as_ptr(), &mut hz as *mut u64 as *mut libc::c_void, &mut len,
            std::ptr::null_mut(), 0)
    };
    (ret == 0 && hz > 0).then_some(hz)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_tsc_rate_agrees_with_a_measurement() {
        let (reported, measured) = (host_tsc_hz() as f64, measure_tsc_hz() as f64);
        assert!(reported > 1e8, "{reported}");
        // Loose: the measurement is what is noisy.
        assert!((reported / measured - 1.0).abs() < 0.05, "reported {reported}, measured {measured}");
    }
}
