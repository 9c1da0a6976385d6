//! The clock `hv_vcpu_run_until` deadlines are in: mach absolute time on macOS
//! (`mach_absolute_time`, scaled by `mach_timebase_info`: 1/1, nanoseconds, on Intel
//! Macs), CLOCK_MONOTONIC nanoseconds in the Linux layer.
use std::time::Duration;

#[cfg(target_os = "macos")]
mod clock {
    #[repr(C)]
    struct MachTimebaseInfo {
        numer: u32,
        denom: u32,
    }

    extern "C" {
        fn mach_absolute_time() -> u64;
        fn mach_timebase_info(info: *mut MachTimebaseInfo) -> i32;
    }

    pub fn now() -> u64 {
        // SAFETY: no arguments; always succeeds.
        unsafe { mach_absolute_time() }
    }

    /// (numer, denom): nanoseconds = ticks * numer / denom.
    pub fn timebase() -> (u64, u64) {
        let mut info = MachTimebaseInfo { numer: 1, denom: 1 };
        // SAFETY: `info` outlives the call, which fills it in.
        if unsafe { mach_timebase_info(&mut info) } != 0 || info.numer == 0 || info.denom == 0 {
            return (1, 1);
        }
        (info.numer as u64, info.denom as u64)
    }
}

#[cfg(target_os = "linux")]
mod clock {
    pub fn now() -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` outlives the call; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    pub fn timebase() -> (u64, u64) {
        (1, 1)
    }
}

/// The current absolute time.
pub fn now() -> u64 {
    clock::now()
}

/// A duration in absolute-time ticks.
pub fn from_duration(d: Duration) -> u64 {
    let (numer, denom) = clock::timebase();
    (d.as_nanos() * denom as u128 / numer as u128).min(u64::MAX as u128 - 1) as u64
}

/// Absolute-time ticks as a duration.
pub fn to_duration(ticks: u64) -> Duration {
    let (numer, denom) = clock::timebase();
    Duration::from_nanos((ticks as u128 * numer as u128 / denom as u128).min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_durations_round_trip_and_the_clock_moves() {
        let d = Duration::from_millis(10);
        assert_eq!(to_duration(from_duration(d)), d);
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(to_duration(now() - a) >= Duration::from_millis(2));
    }
}
