//! The APIC bus: how interrupt messages travel between the IOAPIC and the local APICs,
//! and between local APICs (IPIs).
//!
//! One [`ApicBus`] serves the whole machine. It implements [`InterruptSink`] (IOAPIC to
//! LAPICs) and [`ApicRouter`] (IPIs, EOI broadcast to the IOAPIC). It holds weak
//! references so that nothing forms a reference cycle: the machine owns the IOAPIC, each
//! vCPU owns its LAPIC.
//!
//! Wiring:
//! ```
//! use devices::{apic_bus::ApicBus, ioapic::Ioapic, lapic::Lapic, tsc::GuestTscClock};
//! use devices::irq::Kick;
//! use std::sync::Arc;
//! # struct NoKick; impl Kick for NoKick { fn kick(&self) {} }
//! let bus = Arc::new(ApicBus::new());
//! let ioapic = Arc::new(Ioapic::new(bus.clone()));
//! bus.set_ioapic(&ioapic);
//! let tsc = GuestTscClock::new(2_000_000_000, 0, std::time::Instant::now());
//! let lapic0 = Arc::new(Lapic::new(0, true, Arc::new(NoKick), bus.clone(), tsc));
//! bus.add_lapic(&lapic0);
//! ```
use crate::ioapic::{InterruptSink, Ioapic, IoapicInterrupt};
use crate::lapic::{ApicRouter, DeliveryMode, Ipi, Lapic, Shorthand};
use std::sync::{Arc, OnceLock, RwLock, Weak};

#[derive(Default)]
pub struct ApicBus {
    lapics: RwLock<Vec<Weak<Lapic>>>,
    ioapic: OnceLock<Weak<Ioapic>>,
}

impl ApicBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects a vCPU's local APIC to the bus.
    pub fn add_lapic(&self, lapic: &Arc<Lapic>) {
        self.lapics.write().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(lapic));
    }

    /// Connects the IOAPIC, which receives EOI broadcasts (once; later calls are ignored).
    pub fn set_ioapic(&self, ioapic: &Arc<Ioapic>) {
        if self.ioapic.set(Arc::downgrade(ioapic)).is_err() {
            log::warn!("apic bus: an IOAPIC is already connected");
        }
    }

    fn lapics(&self) -> Vec<Arc<Lapic>> {
        self.lapics.read().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect()
    }

    /// Delivers to `targets`: all of them, or for lowest priority the first (no priority
    /// arbitration: any one target is allowed to take it). Returns whether one accepted.
    fn deliver_to(targets: impl Iterator<Item = Arc<Lapic>>, mode: DeliveryMode, vector: u8, level: bool) -> bool {
        let mut accepted = false;
        for lapic in targets {
            accepted |= lapic.deliver(mode, vector, level);
            if mode == DeliveryMode::LowestPriority && accepted {
                break;
            }
        }
        accepted
    }
}

impl InterruptSink for ApicBus {
    fn deliver(&self, irq: IoapicInterrupt) -> bool {
        let dest = u32::from(irq.dest);
        let targets = self.lapics().into_iter().filter(|l| l.matches_destination(dest, irq.logical, false));
        let accepted = Self::deliver_to(targets, irq.mode, irq.vector, irq.level);
        if !accepted {
            log::debug!("apic bus: nobody took {irq:?}");
        }
        accepted
    }
}

impl ApicRouter for ApicBus {
    fn send_ipi(&self, ipi: Ipi) {
        if ipi.mode == DeliveryMode::InitDeassert {
            return; // No effect on integrated APICs.
        }
        let lapics = self.lapics().into_iter();
        let targets: Vec<_> = match ipi.shorthand {
            Shorthand::None => lapics.filter(|l| l.matches_destination(ipi.dest, ipi.logical, ipi.x2apic)).collect(),
            Shorthand::SelfOnly => lapics.filter(|l| l.apic_id() == ipi.source).collect(),
            Shorthand::AllIncludingSelf => lapics.collect(),
            Shorthand::AllExcludingSelf => lapics.filter(|l| l.apic_id() != ipi.source).collect(),
        };
        // IPIs are edge-triggered as far as the receiver's TMR goes.
        Self::deliver_to(targets.into_iter(), ipi.mode, ipi.vector, false);
    }

    fn broadcast_eoi(&self, vector: u8) {
        if let Some(ioapic) = self.ioapic.get().and_then(Weak::upgrade) {
            ioapic.end_of_interrupt(vector);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::irq::LocalInterrupts;
    use crate::tsc::GuestTscClock;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use crate::irq::testing::CountKicks;

    struct Machine {
        bus: Arc<ApicBus>,
        ioapic: Arc<Ioapic>,
        lapics: Vec<Arc<Lapic>>,
        kicks: Vec<Arc<CountKicks>>,
    }

    fn machine(n: u32) -> Machine {
        let bus = Arc::new(ApicBus::new());
        let ioapic = Arc::new(Ioapic::new(bus.clone()));
        bus.set_ioapic(&ioapic);
        let tsc = GuestTscClock::new(1_000_000_000, 0, Instant::now());
        let mut lapics = Vec::new();
        let mut kicks = Vec::new();
        for id in 0..n {
            let kick = Arc::new(CountKicks::default());
            let lapic = Arc::new(Lapic::new(id, id == 0, kick.clone(), bus.clone(), tsc));
            bus.add_lapic(&lapic);
            // Software-enable it, as the guest would.
            lapic.write(0xf0, &0x1ffu32.to_le_bytes());
            lapics.push(lapic);
            kicks.push(kick);
        }
        Machine { bus, ioapic, lapics, kicks }
    }

    fn program(io: &Ioapic, pin: u32, low: u32, dest: u8) {
        io.write(0, &(0x11 + 2 * pin).to_le_bytes());
        io.write(0x10, &(u32::from(dest) << 24).to_le_bytes());
        io.write(0, &(0x10 + 2 * pin).to_le_bytes());
        io.write(0x10, &low.to_le_bytes());
    }

    fn remote_irr(io: &Ioapic, pin: usize) -> bool {
        io.redirection_entry(pin).unwrap() & (1 << 14) != 0
    }

    #[test]
    fn level_interrupt_round_trip() {
        let m = machine(2);
        let (io, cpu1) = (&m.ioapic, &m.lapics[1]);
        program(io, 9, 0x8041, 1); // Level, physical, vector 0x41, to APIC 1.
        io.set_irq(9, true);
        assert!(remote_irr(io, 9));
        assert_eq!(m.lapics[0].pending(), None);
        assert_eq!(m.kicks[1].0.load(Ordering::SeqCst), 1, "the target vCPU was kicked");
        assert_eq!(cpu1.pending(), Some(0x41));
        cpu1.acknowledge(0x41);
        // The device is still asserting when the handler EOIs: it comes again.
        cpu1.write(0xb0, &0u32.to_le_bytes());
        assert!(remote_irr(io, 9));
        assert_eq!(cpu1.pending(), Some(0x41));
        cpu1.acknowledge(0x41);
        // The handler quiets the device, then EOIs: remote IRR clears, nothing pending.
        io.set_irq(9, false);
        cpu1.write(0xb0, &0u32.to_le_bytes());
        assert!(!remote_irr(io, 9));
        assert_eq!(cpu1.pending(), None);
    }

    #[test]
    fn x2apic_eoi_msr_also_broadcasts() {
        let m = machine(1);
        let cpu = &m.lapics[0];
        cpu.write_msr(0x1b, 0xfee0_0d00).unwrap();
        program(&m.ioapic, 3, 0x8062, 0);
        m.ioapic.set_irq(3, true);
        m.ioapic.set_irq(3, false);
        assert_eq!(cpu.pending(), Some(0x62));
        cpu.acknowledge(0x62);
        assert!(remote_irr(&m.ioapic, 3));
        cpu.write_msr(0x80b, 0).unwrap();
        assert!(!remote_irr(&m.ioapic, 3));
    }

    #[test]
    fn logical_flat_and_broadcast_delivery() {
        let m = machine(3);
        for (i, lapic) in m.lapics.iter().enumerate() {
            lapic.write(0xd0, &((1u32 << i) << 24).to_le_bytes()); // LDR: one bit each.
        }
        program(&m.ioapic, 4, 0x0830, 0b110); // Edge, logical, to CPUs 1 and 2.
        m.ioapic.pulse_irq(4);
        let pending: Vec<_> = m.lapics.iter().map(|l| l.pending()).collect();
        assert_eq!(pending, [None, Some(0x30), Some(0x30)]);
        program(&m.ioapic, 5, 0x0931, 0b111); // Lowest priority: one of them.
        m.ioapic.pulse_irq(5);
        let takers = m.lapics.iter().filter(|l| l.pending() == Some(0x31)).count();
        assert_eq!(takers, 1);
        program(&m.ioapic, 6, 0x0040, 0xff); // Physical broadcast.
        m.ioapic.pulse_irq(6);
        assert!(m.lapics.iter().all(|l| l.pending() == Some(0x40)));
    }

    #[test]
    fn ipis_between_vcpus() {
        let m = machine(3);
        let icr = |from: usize, high: u32, low: u32| {
            m.lapics[from].write(0x310, &high.to_le_bytes());
            m.lapics[from].write(0x300, &low.to_le_bytes());
        };
        icr(0, 2 << 24, 0x00fd); // Fixed 0xfd to APIC 2.
        assert_eq!(m.lapics[2].pending(), Some(0xfd));
        assert_eq!(m.lapics[1].pending(), None);
        icr(1, 0, 0xc_00fc); // All but self.
        assert_eq!(m.lapics[1].pending(), None);
        assert_eq!(m.lapics[0].pending(), Some(0xfc));
        icr(0, 0, 0x8_00fb); // All including self.
        for lapic in &m.lapics {
            let mut irr7 = [0u8; 4];
            lapic.read(0x270, &mut irr7);
            assert_ne!(u32::from_le_bytes(irr7) & (1 << (0xfb - 0xe0)), 0, "0xfb in every IRR");
        }
        // INIT, INIT de-assert, SIPI, SIPI: the AP takes the first SIPI only.
        icr(0, 1 << 24, 0x4500);
        icr(0, 1 << 24, 0x8500);
        icr(0, 1 << 24, 0x4608);
        icr(0, 1 << 24, 0x4609);
        assert!(m.lapics[1].init_pending());
        assert!(m.lapics[1].take_init());
        assert_eq!(m.lapics[1].take_sipi(), Some(0x08));
        assert_eq!(m.lapics[1].take_sipi(), None, "the second SIPI is ignored");
        assert!(!m.lapics[2].take_init());
        // An AP that never got INIT waits for a SIPI from power-up: it takes one.
        icr(0, 2 << 24, 0x4610);
        assert_eq!(m.lapics[2].take_sipi(), Some(0x10));
        // Once running, a SIPI without an INIT before it does nothing.
        icr(0, 2 << 24, 0x4611);
        assert_eq!(m.lapics[2].take_sipi(), None);
        // INIT to the BSP is dropped: there is no BIOS to restart it in.
        icr(1, 0, 0x4500);
        assert!(!m.lapics[0].init_pending());
        // INIT resets the APIC's registers (its ID stays) when the vCPU takes it.
        m.lapics[1].write(0x80, &0x20u32.to_le_bytes()); // TPR
        icr(0, 1 << 24, 0x4500);
        assert!(m.lapics[1].take_init());
        let mut reg = [0u8; 4];
        m.lapics[1].read(0x80, &mut reg);
        assert_eq!(u32::from_le_bytes(reg), 0, "TPR back to its power-up value");
        m.lapics[1].read(0xf0, &mut reg);
        assert_eq!(u32::from_le_bytes(reg), 0xff, "software-disabled again");
        assert_eq!(m.lapics[1].apic_id(), 1);
        // NMI.
        icr(2, 0, 0x4_0400); // Self shorthand with NMI: not allowed, dropped.
        assert!(!m.lapics[2].take_nmi());
        icr(2, 0, 0x0400);
        assert!(m.lapics[0].take_nmi());
        drop(m.bus);
    }
}
