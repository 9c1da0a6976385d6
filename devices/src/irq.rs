//! The interface between interrupt controllers and the vCPUs that take their interrupts.
use std::time::Instant;

/// One vCPU's view of its interrupt controller (its local APIC, or a test's vector latch).
pub trait LocalInterrupts: Send + Sync {
    /// The highest-priority vector waiting for delivery.
    fn pending(&self) -> Option<u8>;
    /// The vCPU has injected `vector`.
    fn acknowledge(&self, vector: u8);
    /// When this controller's next timer fires (the APIC timer thread,
    /// crate::apic_timers, sleeps until the earliest of them).
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// Raises the interrupts of timers that are due at `now`, kicking the vCPU.
    fn poll_timers(&self, _now: Instant) {}
    /// Whether an NMI waits for delivery (RFLAGS.IF does not hold it back; blocking by
    /// NMI and the MOV SS shadow do, SDM vol. 3, 6.7.1 and 25.4.2).
    fn nmi_pending(&self) -> bool {
        false
    }
    /// The vCPU has injected the pending NMI.
    fn acknowledge_nmi(&self) {}
}

/// Gets a vCPU to look at its pending interrupts: out of HLT, or out of the guest.
pub trait Kick: Send + Sync {
    fn kick(&self);
}

/// A `Kick` that counts, for the interrupt controllers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::Kick;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct CountKicks(pub AtomicUsize);

    impl Kick for CountKicks {
        fn kick(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
