//! The guest's TSC as a function of host time, so that TSC-deadline timers can sleep on a
//! host [`Instant`].
//!
//! With TSC offsetting, guest TSC = host TSC + offset and ticks at the host TSC rate. The
//! VMM samples one reference point (a guest TSC value and the `Instant` it was read at)
//! and knows the TSC frequency; from those the two directions are linear maps.
use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Linear map between guest TSC values and host instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTscClock {
    hz: u64,
    ref_tsc: u64,
    ref_instant: Instant,
}

impl GuestTscClock {
    /// `hz`: the TSC frequency (0 is taken as 1 Hz rather than dividing by zero).
    /// `ref_tsc`: the guest TSC value at `ref_instant`, i.e. host TSC read at
    /// `ref_instant` plus the VMCS TSC offset.
    pub fn new(hz: u64, ref_tsc: u64, ref_instant: Instant) -> Self {
        GuestTscClock { hz: hz.max(1), ref_tsc, ref_instant }
    }

    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// The guest TSC at host instant `t` (saturating at both ends).
    pub fn tsc_at(&self, t: Instant) -> u64 {
        if t >= self.ref_instant {
            let ticks = (t - self.ref_instant).as_nanos() * self.hz as u128 / NANOS_PER_SEC;
            self.ref_tsc.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
        } else {
            // Rounded up so that tsc_at stays monotonic with instant_at's rounding.
            let ticks = ((self.ref_instant - t).as_nanos() * self.hz as u128).div_ceil(NANOS_PER_SEC);
            self.ref_tsc.saturating_sub(u64::try_from(ticks).unwrap_or(u64::MAX))
        }
    }

    /// The earliest host instant at which the guest TSC is `>= tsc` (rounded up, so a
    /// deadline never fires early). `None` if that instant is too far ahead for `Instant`
    /// (e.g. a deadline of `u64::MAX`): such a timer never fires. A TSC value in the past
    /// maps to an instant in the past (clamped to the reference point if need be).
    pub fn instant_at(&self, tsc: u64) -> Option<Instant> {
        if tsc >= self.ref_tsc {
            let nanos = ((tsc - self.ref_tsc) as u128 * NANOS_PER_SEC).div_ceil(self.hz as u128);
            self.ref_instant.checked_add(Duration::from_nanos(u64::try_from(nanos).ok()?))
        } else {
            let nanos = (self.ref_tsc - tsc) as u128 * NANOS_PER_SEC / self.hz as u128;
            let back = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            Some(self.ref_instant.checked_sub(back).unwrap_or(self.ref_instant))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways_and_never_early() {
        let t0 = Instant::now();
        // An awkward frequency so that rounding matters: 2.7 GHz.
        let clock = GuestTscClock::new(2_700_000_000, 1_000_000, t0);
        assert_eq!(clock.instant_at(1_000_000), Some(t0));
        assert_eq!(clock.tsc_at(t0), 1_000_000);
        // 2.7e9 ticks = 1 s.
        assert_eq!(clock.instant_at(1_000_000 + 2_700_000_000), Some(t0 + Duration::from_secs(1)));
        assert_eq!(clock.tsc_at(t0 + Duration::from_millis(1)), 1_000_000 + 2_700_000);
        for delta in [1u64, 2, 3, 7, 1000, 123_456_789] {
            let deadline = 1_000_000 + delta;
            let at = clock.instant_at(deadline).unwrap();
            assert!(clock.tsc_at(at) >= deadline, "fires at or after the deadline");
            assert!(clock.tsc_at(at - Duration::from_nanos(1)) < deadline, "not later than needed");
        }
    }

    #[test]
    fn past_and_unrepresentable_deadlines() {
        let t0 = Instant::now();
        let clock = GuestTscClock::new(1_000_000_000, 5_000, t0);
        // 1 GHz: one tick per ns.
        assert_eq!(clock.instant_at(4_000), Some(t0 - Duration::from_nanos(1_000)));
        assert!(clock.instant_at(0).unwrap() <= t0);
        let slow = GuestTscClock::new(1, 0, t0);
        assert_eq!(slow.instant_at(u64::MAX), None, "u64::MAX seconds is beyond Instant");
        assert_eq!(GuestTscClock::new(0, 0, t0).hz(), 1);
    }
}
