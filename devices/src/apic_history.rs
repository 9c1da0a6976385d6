//! The last few things that happened to a local APIC's interrupts, for the state dump:
//! when a guest hangs with every vCPU halted and nothing pending, the question is which
//! interrupt went where, and this answers it. Events carry one machine-wide sequence
//! number, so the histories of all the APICs interleave into one order.
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many events each APIC keeps.
pub const HISTORY_LEN: usize = 24;

/// Orders events across every APIC (a counter, not a clock: reading the clock on every
/// interrupt would cost a system call on hosts whose clocksource is not the TSC).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// One event in an APIC's interrupt life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicEvent {
    /// A fixed interrupt latched in the IRR; `coalesced`: its IRR bit was already set.
    Accepted { vector: u8, coalesced: bool },
    /// The vCPU took it for injection (IRR to ISR).
    Injected(u8),
    /// The guest's EOI cleared this in-service vector.
    Eoi(u8),
    /// The guest wrote the ICR: an IPI out of this APIC (destination as written).
    Sent { icr_low: u32, dest: u32 },
}

impl fmt::Display for ApicEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ApicEvent::Accepted { vector, coalesced: false } => write!(f, "accepted {vector:#04x}"),
            ApicEvent::Accepted { vector, coalesced: true } => write!(f, "accepted {vector:#04x} (already in IRR)"),
            ApicEvent::Injected(vector) => write!(f, "injected {vector:#04x}"),
            ApicEvent::Eoi(vector) => write!(f, "EOI {vector:#04x}"),
            ApicEvent::Sent { icr_low, dest } => write!(f, "sent ICR {icr_low:#x} to {dest:#x}"),
        }
    }
}

/// A ring of the last [`HISTORY_LEN`] events.
#[derive(Clone, Debug, Default)]
pub struct ApicHistory {
    events: Vec<(u64, ApicEvent)>,
    next: usize,
}

impl ApicHistory {
    pub fn record(&mut self, event: ApicEvent) {
        let entry = (SEQUENCE.fetch_add(1, Ordering::Relaxed), event);
        if self.events.len() < HISTORY_LEN {
            self.events.push(entry);
        } else {
            self.events[self.next] = entry;
        }
        self.next = (self.next + 1) % HISTORY_LEN;
    }

    /// The events kept, oldest first, with their machine-wide sequence numbers.
    pub fn events(&self) -> Vec<(u64, ApicEvent)> {
        let mut events = self.events.clone();
        events.sort_by_key(|&(seq, _)| seq);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_events_in_order() {
        let mut h = ApicHistory::default();
        for v in 0..(HISTORY_LEN as u8 + 5) {
            h.record(ApicEvent::Injected(v));
        }
        let kept: Vec<_> = h.events().into_iter().map(|(_, e)| e).collect();
        let want: Vec<_> = (5..HISTORY_LEN as u8 + 5).map(ApicEvent::Injected).collect();
        assert_eq!(kept, want);
        assert_eq!(ApicEvent::Sent { icr_low: 0xfb, dest: 2 }.to_string(), "sent ICR 0xfb to 0x2");
    }
}
