//! How interrupts reach a vCPU: the interrupt controller says which vector is pending,
//! and the vCPU's [`Waker`] (the kick protocol, `crate::kick`) gets it out of HLT or out
//! of the guest to deliver it.
use std::sync::Mutex;

pub use crate::kick::Waker;
pub use devices::irq::{Kick, LocalInterrupts};

/// The simplest interrupt controller: a set of pending vectors, highest first, raised by
/// devices and delivered as soon as the guest accepts interrupts. Test machines use it
/// before a local APIC exists.
pub struct VectorLatch {
    pending: Mutex<[u64; 4]>,
    waker: std::sync::Arc<Waker>,
}

impl VectorLatch {
    pub fn new(waker: std::sync::Arc<Waker>) -> Self {
        VectorLatch { pending: Mutex::new([0; 4]), waker }
    }

    /// Marks `vector` pending and wakes the vCPU.
    pub fn raise(&self, vector: u8) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())[vector as usize / 64] |= 1 << (vector % 64);
        self.waker.wake();
    }
}

impl LocalInterrupts for VectorLatch {
    fn pending(&self) -> Option<u8> {
        let bits = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        (0..4).rev().find(|&i| bits[i] != 0).map(|i| (i * 64 + 63 - bits[i].leading_zeros() as usize) as u8)
    }

    fn acknowledge(&self, vector: u8) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())[vector as usize / 64] &= !(1 << (vector % 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn latch_delivers_highest_vector_first() {
        let latch = VectorLatch::new(Arc::new(Waker::new()));
        assert_eq!(latch.pending(), None);
        latch.raise(0x20);
        latch.raise(0xec);
        latch.raise(0x41);
        assert_eq!(latch.pending(), Some(0xec));
        latch.acknowledge(0xec);
        assert_eq!(latch.pending(), Some(0x41));
        latch.acknowledge(0x41);
        latch.acknowledge(0x20);
        assert_eq!(latch.pending(), None);
    }

    #[test]
    fn a_kick_wakes_a_sleeper_and_a_deadline_ends_the_sleep() {
        let waker = Arc::new(Waker::new());
        let latch = Arc::new(VectorLatch::new(waker.clone()));
        let raiser = {
            let latch = latch.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                latch.raise(0x30);
            })
        };
        waker.sleep_until(None, || latch.pending().is_some());
        assert_eq!(latch.pending(), Some(0x30));
        raiser.join().unwrap();
        // Nothing will come: the deadline ends the sleep.
        latch.acknowledge(0x30);
        waker.sleep_until(Some(Instant::now() + Duration::from_millis(5)), || latch.pending().is_some());
        assert_eq!(latch.pending(), None);
    }
}
