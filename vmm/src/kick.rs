//! The kick: how another thread (a device, a timer, the stopper, the state dump) gets a
//! vCPU to look at work it has published. This module is the protocol's one owner; the
//! vCPU loop and the kickers only call the functions below.
//!
//! A vCPU is in one of three places: outside the guest (running hvrun's own code),
//! in the guest (from just before its last look for work until `hv_vcpu_run` returns),
//! or halted (asleep on the waker's condition variable after HLT).
//!
//! ```text
//! kicker                                vCPU thread
//! 1. publish the work (IRR bit, ...)    1. place = IN_GUEST          (entering_guest)
//! 2. fence                              2. fence
//! 3. place == IN_GUEST?                 3. look for work: stop, dump, inject
//!      -> hv_vcpu_interrupt             4. hv_vcpu_run_until(now + KICK_BACKSTOP)
//!    notify the condition variable      5. place = OUTSIDE           (left_guest)
//! ```
//! Both sides write first and read second, with a sequentially consistent fence between
//! (the store-buffer pattern): if the kicker reads OUTSIDE, the vCPU's step 1 comes after
//! the kicker's step 1, so its look (step 3) finds the work. If the kicker reads
//! IN_GUEST, it interrupts the vCPU; if that kick lands between the look and the entry,
//! the framework either keeps it until the entry (the next run exits at once) or drops
//! it (Apple documents neither; see `hv_vcpu_interrupt` in hvf-sys). A dropped kick
//! costs at most [`KICK_BACKSTOP`]: every run ends by then and the loop looks again.
//! A halted vCPU checks for work under the waker's lock and the kicker notifies under
//! the same lock, so a kick between the check and the sleep is not lost either.
use hvf_sys::*;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub use devices::irq::Kick;

/// The longest a vCPU runs guest code without looking for work: the bound on what a
/// kick dropped by the framework can cost (a VMX-preemption-timer exit, SDM 26.5.1,
/// which hv_vcpu_run_until arms for its deadline). Long enough that the exits it adds
/// to a busy guest cost nothing measurable (100 a second), short enough for a timer tick.
pub const KICK_BACKSTOP: Duration = Duration::from_millis(10);

/// Where a vCPU is, as the kick protocol and the state dump see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Place {
    /// Running hvrun's code between two runs.
    Outside = 0,
    /// About to enter or inside `hv_vcpu_run`: a kick must interrupt it.
    InGuest = 1,
    /// Asleep after HLT until an interrupt, a timer or a stop.
    Halted = 2,
}

impl Place {
    fn from_u8(v: u8) -> Place {
        match v {
            1 => Place::InGuest,
            2 => Place::Halted,
            _ => Place::Outside,
        }
    }
}

const NO_VCPU: u32 = u32::MAX;

/// One vCPU's end of the kick protocol.
pub struct Waker {
    id: AtomicU32,
    place: AtomicU8,
    /// A state dump asked for this vCPU's part (see `crate::dump`).
    dump_requested: AtomicBool,
    /// hv_vcpu_interrupt calls made, for the state dump.
    interrupts_sent: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
    /// The vCPU thread's answer to the dump request in progress.
    dump_answer: Mutex<Option<String>>,
    dump_answered: Condvar,
}

impl Default for Waker {
    fn default() -> Self {
        Waker {
            id: AtomicU32::new(NO_VCPU),
            place: AtomicU8::new(Place::Outside as u8),
            dump_requested: AtomicBool::new(false),
            interrupts_sent: AtomicU64::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            dump_answer: Mutex::new(None),
            dump_answered: Condvar::new(),
        }
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

    /// vCPU step 1-2: from here on a kick interrupts the vCPU. Call it before the loop's
    /// last look for work (the injection step), never after.
    pub fn entering_guest(&self) {
        self.place.store(Place::InGuest as u8, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// vCPU step 5: `hv_vcpu_run` returned.
    pub fn left_guest(&self) {
        self.place.store(Place::Outside as u8, Ordering::SeqCst);
    }

    pub fn place(&self) -> Place {
        Place::from_u8(self.place.load(Ordering::SeqCst))
    }

    pub fn interrupts_sent(&self) -> u64 {
        self.interrupts_sent.load(Ordering::SeqCst)
    }

    /// Kicker steps 2-3: new work for the vCPU has been published; wake it wherever it is.
    pub fn wake(&self) {
        {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
        fence(Ordering::SeqCst);
        let mut id = self.id.load(Ordering::SeqCst);
        if id != NO_VCPU && self.place() == Place::InGuest {
            self.interrupts_sent.fetch_add(1, Ordering::SeqCst);
            // SAFETY: one valid id; callable from any thread.
            let ret = unsafe { hv_vcpu_interrupt(&mut id, 1) };
            if let Err(e) = HvError::check(ret) {
                log::warn!("hv_vcpu_interrupt(vcpu {id}): {e}");
            }
        }
    }

    /// Asks the vCPU thread for its part of a state dump, and wakes it.
    pub fn request_dump(&self) {
        *self.dump_answer.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.dump_requested.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// On the vCPU thread: whether a dump asked for this vCPU's part (once per request).
    pub fn take_dump_request(&self) -> bool {
        self.dump_requested.swap(false, Ordering::SeqCst)
    }

    /// On the vCPU thread: its part of the dump.
    pub fn answer_dump(&self, part: String) {
        *self.dump_answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(part);
        self.dump_answered.notify_all();
    }

    /// The vCPU's answer to `request_dump`, if it comes within `timeout`.
    pub fn wait_dump_answer(&self, timeout: Duration) -> Option<String> {
        let guard = self.dump_answer.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = self
            .dump_answered
            .wait_timeout_while(guard, timeout, |answer| answer.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.take()
    }

    /// Sleeps (place: halted) until `ready()` holds or `deadline` passes. `ready` is
    /// evaluated under the waker's lock, which `wake` also takes, so a kick between the
    /// check and the sleep cannot be lost. A dump request also ends the sleep.
    pub fn sleep_until(&self, deadline: Option<Instant>, ready: impl Fn() -> bool) {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.place.store(Place::Halted as u8, Ordering::SeqCst);
        while !ready() && !self.dump_requested.load(Ordering::SeqCst) {
            match deadline {
                None => guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    guard = self.cv.wait_timeout(guard, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        self.place.store(Place::Outside as u8, Ordering::SeqCst);
    }
}

impl Kick for Waker {
    fn kick(&self) {
        self.wake();
    }
}

/// The deadline for one `hv_vcpu_run_until`: now plus [`KICK_BACKSTOP`], in the
/// framework's absolute time units.
pub fn run_deadline() -> u64 {
    hvf_sys::absolute_time::now().saturating_add(hvf_sys::absolute_time::from_duration(KICK_BACKSTOP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn places_follow_the_vcpu() {
        let w = Waker::new();
        assert_eq!(w.place(), Place::Outside);
        w.entering_guest();
        assert_eq!(w.place(), Place::InGuest);
        w.left_guest();
        assert_eq!(w.place(), Place::Outside);
        // No vCPU yet: a wake in the guest sends nothing.
        w.entering_guest();
        w.wake();
        assert_eq!(w.interrupts_sent(), 0);
    }

    #[test]
    fn a_wake_ends_a_halt_and_a_deadline_ends_it_too() {
        let w = Arc::new(Waker::new());
        let flag = Arc::new(AtomicBool::new(false));
        let t = {
            let (w, flag) = (w.clone(), flag.clone());
            std::thread::spawn(move || {
                while w.place() != Place::Halted {
                    std::thread::yield_now();
                }
                flag.store(true, Ordering::SeqCst);
                w.wake();
            })
        };
        w.sleep_until(None, || flag.load(Ordering::SeqCst));
        assert_eq!(w.place(), Place::Outside);
        t.join().unwrap();
        let start = Instant::now();
        w.sleep_until(Some(start + Duration::from_millis(5)), || false);
        assert!(start.elapsed() >= Duration::from_millis(5));
    }

    #[test]
    fn a_dump_request_ends_a_halt_once_and_its_answer_comes_back() {
        let w = Arc::new(Waker::new());
        w.request_dump();
        w.sleep_until(None, || false);
        assert!(w.take_dump_request());
        assert!(!w.take_dump_request());
        assert_eq!(w.wait_dump_answer(Duration::from_millis(1)), None, "nobody answered");
        let answerer = {
            let w = w.clone();
            std::thread::spawn(move || w.answer_dump("vcpu part".into()))
        };
        assert_eq!(w.wait_dump_answer(Duration::from_secs(10)).as_deref(), Some("vcpu part"));
        answerer.join().unwrap();
    }
}
