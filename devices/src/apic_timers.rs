//! One thread for the timers of every local APIC in the machine.
//!
//! A vCPU only looks at its APIC while it is out of the guest, so something else must
//! notice a timer falling due while guest code runs: this thread sleeps until the
//! earliest armed deadline of all the APICs, latches the interrupts that are due (each
//! APIC kicks its own vCPU) and sleeps again. It sleeps without a timeout while no timer
//! is armed, so an idle guest costs no CPU here. An APIC whose next deadline changes
//! calls [`TimerSignal::notify`], which makes the thread look again.
use crate::irq::LocalInterrupts;
use crate::lapic::Lapic;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// How an APIC tells the timer thread that its deadline moved.
#[derive(Default)]
pub struct TimerSignal {
    state: Mutex<SignalState>,
    changed: Condvar,
}

#[derive(Default)]
struct SignalState {
    /// Bumped by every notify: a change made while the thread was computing its next
    /// deadline is seen before it sleeps (it compares generations under the lock).
    generation: u64,
    stop: bool,
}

impl TimerSignal {
    fn lock(&self) -> MutexGuard<'_, SignalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An APIC's next deadline changed.
    pub fn notify(&self) {
        self.lock().generation += 1;
        self.changed.notify_all();
    }
}

/// The machine's APIC timer thread.
#[derive(Default)]
pub struct ApicTimers {
    signal: Arc<TimerSignal>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ApicTimers {
    pub fn new() -> Self {
        Self::default()
    }

    /// The signal every APIC served by this thread must be built with
    /// ([`Lapic::with_timer_signal`]).
    pub fn signal(&self) -> Arc<TimerSignal> {
        self.signal.clone()
    }

    /// Starts the thread for `lapics`.
    pub fn start(&self, lapics: Vec<Arc<Lapic>>) -> std::io::Result<()> {
        let signal = self.signal.clone();
        let handle = thread::Builder::new().name("apic-timers".into()).spawn(move || run(&lapics, &signal))?;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Stops the thread and waits for it.
    pub fn stop(&self) {
        self.signal.lock().stop = true;
        self.signal.changed.notify_all();
        if let Some(handle) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

impl Drop for ApicTimers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(lapics: &[Arc<Lapic>], signal: &TimerSignal) {
    loop {
        let generation = {
            let s = signal.lock();
            if s.stop {
                return;
            }
            s.generation
        };
        let now = Instant::now();
        for lapic in lapics {
            lapic.poll_timers(now);
        }
        let next = lapics.iter().filter_map(|lapic| lapic.next_deadline()).min();
        let s = signal.lock();
        if s.stop {
            return;
        }
        if s.generation != generation {
            continue;
        }
        let now = Instant::now();
        match next {
            None => drop(signal.changed.wait(s)),
            Some(deadline) if deadline > now => drop(signal.changed.wait_timeout(s, deadline - now)),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apic_bus::ApicBus;
    use crate::bus::BusDevice;
    use crate::irq::testing::CountKicks;
    use crate::tsc::GuestTscClock;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn one_thread_fires_every_apics_timer_and_stops() {
        let timers = ApicTimers::new();
        let bus = Arc::new(ApicBus::new());
        let tsc = GuestTscClock::new(1_000_000_000, 0, Instant::now());
        let kicks: Vec<_> = (0..3).map(|_| Arc::new(CountKicks::default())).collect();
        let lapics: Vec<_> = (0..3u32)
            .map(|id| {
                let lapic = Lapic::new(id, id == 0, kicks[id as usize].clone(), bus.clone(), tsc)
                    .with_timer_signal(timers.signal());
                Arc::new(lapic)
            })
            .collect();
        timers.start(lapics.clone()).unwrap();
        // Arm one-shot timers after the thread sleeps with nothing armed: the notify
        // must wake it. Different lengths: it must fire each at its own deadline.
        std::thread::sleep(Duration::from_millis(20));
        for (i, lapic) in lapics.iter().enumerate() {
            lapic.write(0xf0, &0x1ffu32.to_le_bytes()); // Software-enable.
            lapic.write(0x3e0, &0xbu32.to_le_bytes()); // Divide by 1.
            lapic.write(0x320, &(0x40 + i as u32).to_le_bytes()); // One-shot, vector 0x40+i.
            lapic.write(0x380, &((i as u32 + 1) * 1_000_000).to_le_bytes()); // 1, 2, 3 ms (APIC_BUS_HZ counts).
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while kicks.iter().any(|k| k.0.load(Ordering::SeqCst) == 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        for (i, lapic) in lapics.iter().enumerate() {
            assert_eq!(lapic.pending(), Some(0x40 + i as u8), "APIC {i}'s timer fired");
        }
        timers.stop();
        assert!(timers.thread.lock().unwrap().is_none(), "the thread was joined");
    }
}
