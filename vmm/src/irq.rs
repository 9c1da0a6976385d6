//! How interrupts reach a vCPU: the interrupt controller says which vector is pending,
//! and the vCPU's [`Waker`] gets it out of HLT or out of the guest to deliver it.
use hvf_sys::*;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

pub use devices::irq::{Kick, LocalInterrupts};

/// Wakes one vCPU: out of its HLT sleep, or out of the guest (`hv_vcpu_interrupt`) so
/// that it looks at its pending interrupts and stop requests before the next entry.
pub struct Waker {
    id: AtomicU32,
    in_guest: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

const NO_VCPU: u32 = u32::MAX;

impl Default for Waker {
    fn default() -> Self {
        Waker { id: AtomicU32::new(NO_VCPU), in_guest: AtomicBool::new(false), lock: Mutex::new(()), cv: Condvar::new() }
    }
}

impl Waker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Called by the vCPU thread once its vCPU exists.
    pub fn set_vcpu(&self, id: hv_vcpuid_t) {
        self.id.store(id, Ordering::SeqCst);
    }

    /// Brackets `hv_vcpu_run`. The flag is raised before the loop's last look at pending
    /// work, and a kicker sets its work before reading the flag: whichever runs second
    /// sees the other (both SeqCst), so a kick is never missed by both.
    /// On macOS a kick that lands between that look and the actual entry is lost by
    /// `hv_vcpu_interrupt` itself; the Linux layer keeps it (immediate_exit).
    pub fn entering_guest(&self) {
        self.in_guest.store(true, Ordering::SeqCst);
    }

    pub fn left_guest(&self) {
        self.in_guest.store(false, Ordering::SeqCst);
    }

    /// New work for the vCPU has been published: wake it wherever it is.
    pub fn wake(&self) {
        {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
        let mut id = self.id.load(Ordering::SeqCst);
        if id != NO_VCPU && self.in_guest.load(Ordering::SeqCst) {
            // SAFETY: one valid id; callable from any thread.
            let ret = unsafe { hv_vcpu_interrupt(&mut id, 1) };
            if let Err(e) = HvError::check(ret) {
                log::warn!("hv_vcpu_interrupt(vcpu {id}): {e}");
            }
        }
    }

    /// Sleeps until `ready()` holds or `deadline` passes. `ready` is evaluated under the
    /// waker's lock, which `kick` also takes, so a kick between the check and the sleep
    /// cannot be lost.
    pub fn sleep_until(&self, deadline: Option<Instant>, ready: impl Fn() -> bool) {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while !ready() {
            match deadline {
                None => guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return;
                    }
                    guard = self.cv.wait_timeout(guard, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
    }
}

impl Kick for Waker {
    fn kick(&self) {
        self.wake();
    }
}

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
    use std::time::Duration;

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
