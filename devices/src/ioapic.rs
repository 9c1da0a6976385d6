//! The I/O APIC (Intel 82093AA): 24 interrupt pins, each routed by a redirection-table
//! entry to a local APIC.
//!
//! Register access is indirect: the guest writes a register index to IOREGSEL (offset
//! 0x00) and reads or writes the register through IOWIN (offset 0x10). Index 0x00 is the
//! ID, 0x01 the version (0x170011: 24 entries, version 0x11), 0x02 the arbitration ID,
//! 0x10 + 2n / 0x11 + 2n the low / high half of pin n's redirection entry.
//!
//! Devices drive pins with [`Ioapic::set_irq`] with the *logical* state of their line
//! (asserted or not); the polarity bit is stored for the guest but not applied, since our
//! devices have no electrical level.
//!
//! Locking: delivery to the LAPICs happens under the IOAPIC lock, so that a level pin's
//! remote IRR is set atomically with the delivery. The LAPICs never call back into the
//! IOAPIC while holding their own locks (EOI broadcast happens after they release them),
//! so the lock order is always IOAPIC, then LAPIC.
use crate::bus::BusDevice;
use crate::lapic::DeliveryMode;
use std::sync::{Arc, Mutex, MutexGuard};

/// Guest-physical base of the IOAPIC's MMIO window (MADT: IOAPIC id 0, GSI base 0).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the MMIO window to map.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of pins (GSIs 0..24).
pub const IOAPIC_PINS: usize = 24;
/// The version register: max redirection entry 23 in bits 23:16, version 0x11.
pub const IOAPIC_VERSION: u32 = ((IOAPIC_PINS as u32 - 1) << 16) | 0x11;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARB: u32 = 0x02;
const REG_REDIR_FIRST: u32 = 0x10;
const REG_REDIR_LAST: u32 = REG_REDIR_FIRST + 2 * IOAPIC_PINS as u32 - 1;

/// Redirection-entry bits. Delivery status (bit 12) always reads 0: delivery is immediate.
const RTE_LOGICAL: u64 = 1 << 11;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
/// Guest-writable bits: vector, delivery mode, destination mode, polarity, trigger mode,
/// mask, destination (63:56). Delivery status and remote IRR are read-only.
const RTE_WRITABLE: u64 = 0xff00_0000_0001_afff;

/// An interrupt message from the IOAPIC to the local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoapicInterrupt {
    /// Destination field (bits 63:56): an APIC ID, or a logical destination.
    pub dest: u8,
    pub logical: bool,
    pub mode: DeliveryMode,
    pub vector: u8,
    /// Level-triggered: the receiving LAPIC sets its TMR bit and broadcasts the EOI.
    pub level: bool,
}

/// Where the IOAPIC sends its interrupt messages (the local APICs, through
/// [`crate::apic_bus::ApicBus`]).
pub trait InterruptSink: Send + Sync {
    /// Returns whether at least one local APIC accepted the interrupt.
    fn deliver(&self, irq: IoapicInterrupt) -> bool;
}

#[derive(Clone, Copy)]
struct Pin {
    entry: u64,
    asserted: bool,
}

struct State {
    id: u32,
    ioregsel: u32,
    pins: [Pin; IOAPIC_PINS],
}

/// The IOAPIC's pins at one moment, for the state dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoapicSnapshot {
    pub entries: [u64; IOAPIC_PINS],
    pub asserted: [bool; IOAPIC_PINS],
}

impl std::fmt::Display for IoapicSnapshot {
    /// One line per pin that is unmasked or asserted (the others are masked and idle).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "  ioapic:")?;
        let mut any = false;
        for (pin, (&entry, &asserted)) in self.entries.iter().zip(&self.asserted).enumerate() {
            if entry & RTE_MASKED != 0 && !asserted {
                continue;
            }
            any = true;
            let m = message(entry);
            write!(f, "\n    pin {pin:2}: vector {:#04x} {:?} {} {} dest {:#x}{}{}, line {}",
                m.vector, m.mode, if m.level { "level" } else { "edge" },
                if m.logical { "logical" } else { "physical" }, m.dest,
                if entry & RTE_MASKED != 0 { ", masked" } else { "" },
                if entry & RTE_REMOTE_IRR != 0 { ", remote IRR" } else { "" },
                if asserted { "high" } else { "low" })?;
        }
        if !any {
            write!(f, " every pin masked and low")?;
        }
        Ok(())
    }
}

/// The IOAPIC. Map it at [`IOAPIC_BASE`] on the MMIO bus.
pub struct Ioapic {
    state: Mutex<State>,
    sink: Arc<dyn InterruptSink>,
}

fn message(entry: u64) -> IoapicInterrupt {
    IoapicInterrupt {
        dest: (entry >> 56) as u8,
        logical: entry & RTE_LOGICAL != 0,
        mode: DeliveryMode::from_bits((entry >> 8) as u32),
        vector: entry as u8,
        level: entry & RTE_LEVEL != 0,
    }
}

impl State {
    /// Sends pin `pin`'s interrupt if its state calls for it: level-triggered, asserted,
    /// unmasked and not already in service (remote IRR clear).
    fn service_level(&mut self, pin: usize, sink: &dyn InterruptSink) {
        let Pin { entry, asserted } = self.pins[pin];
        if entry & RTE_LEVEL == 0 || !asserted || entry & (RTE_MASKED | RTE_REMOTE_IRR) != 0 {
            return;
        }
        if sink.deliver(message(entry)) {
            self.pins[pin].entry |= RTE_REMOTE_IRR;
        }
    }

    fn read_register(&self, index: u32) -> u32 {
        match index {
            REG_ID | REG_ARB => self.id << 24,
            REG_VERSION => IOAPIC_VERSION,
            REG_REDIR_FIRST..=REG_REDIR_LAST => {
                let n = index - REG_REDIR_FIRST;
                let entry = self.pins[(n / 2) as usize].entry;
                if n & 1 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, index: u32, value: u32, sink: &dyn InterruptSink) {
        match index {
            REG_ID => self.id = (value >> 24) & 0xf,
            REG_REDIR_FIRST..=REG_REDIR_LAST => {
                let n = index - REG_REDIR_FIRST;
                let pin = (n / 2) as usize;
                let old = self.pins[pin].entry;
                let written = if n & 1 == 0 {
                    (old & 0xffff_ffff_0000_0000) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let mut entry = (written & RTE_WRITABLE) | (old & RTE_REMOTE_IRR);
                if entry & RTE_LEVEL == 0 {
                    entry &= !RTE_REMOTE_IRR; // Remote IRR means nothing for edge pins.
                }
                self.pins[pin].entry = entry;
                // Unmasking (or reprogramming) an asserted level pin delivers it now.
                self.service_level(pin, sink);
            }
            _ => log::debug!("ioapic: ignoring write of {value:#x} to register {index:#x}"),
        }
    }
}

impl Ioapic {
    /// An IOAPIC with ID 0 and every pin masked (the 82093AA's reset state).
    pub fn new(sink: Arc<dyn InterruptSink>) -> Self {
        let pin = Pin { entry: RTE_MASKED, asserted: false };
        Ioapic { state: Mutex::new(State { id: 0, ioregsel: 0, pins: [pin; IOAPIC_PINS] }), sink }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drives pin `pin` (a GSI): `level` true asserts the line. Edge-triggered pins fire
    /// on the rising edge (a raise while masked is lost, as on the 82093AA); level pins
    /// fire while asserted, once per EOI. Pins past 23 are ignored with a warning.
    pub fn set_irq(&self, pin: usize, level: bool) {
        let mut s = self.lock();
        let Some(p) = s.pins.get_mut(pin) else {
            log::warn!("ioapic: no pin {pin}");
            return;
        };
        let rising = level && !p.asserted;
        p.asserted = level;
        let entry = p.entry;
        if entry & RTE_LEVEL != 0 {
            s.service_level(pin, self.sink.as_ref());
        } else if rising && entry & RTE_MASKED == 0 {
            self.sink.deliver(message(entry));
        }
    }

    /// Raises and lowers an edge-triggered pin: one interrupt.
    pub fn pulse_irq(&self, pin: usize) {
        self.set_irq(pin, true);
        self.set_irq(pin, false);
    }

    /// A local APIC broadcast the EOI of level-triggered `vector`: clear the remote IRR of
    /// the pins using it, and deliver again those still asserted.
    pub fn end_of_interrupt(&self, vector: u8) {
        let mut s = self.lock();
        for pin in 0..IOAPIC_PINS {
            let entry = s.pins[pin].entry;
            if entry & RTE_REMOTE_IRR != 0 && entry as u8 == vector {
                s.pins[pin].entry &= !RTE_REMOTE_IRR;
                s.service_level(pin, self.sink.as_ref());
            }
        }
    }

    /// Every pin's redirection entry and line level, for the state dump.
    pub fn snapshot(&self) -> IoapicSnapshot {
        let s = self.lock();
        IoapicSnapshot { entries: s.pins.map(|p| p.entry), asserted: s.pins.map(|p| p.asserted) }
    }

    /// The redirection entry of `pin` (tests and debugging); `None` past pin 23.
    pub fn redirection_entry(&self, pin: usize) -> Option<u64> {
        self.lock().pins.get(pin).map(|p| p.entry)
    }
}

impl BusDevice for Ioapic {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let s = self.lock();
        let within = (offset & 0xf) as usize;
        let value = match offset & !0xf {
            IOREGSEL => s.ioregsel,
            IOWIN => s.read_register(s.ioregsel),
            _ => return,
        };
        if within < 4 {
            let n = data.len().min(4 - within);
            data[..n].copy_from_slice(&value.to_le_bytes()[within..within + n]);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut s = self.lock();
        let within = (offset & 0xf) as usize;
        if within >= 4 || data.is_empty() {
            return;
        }
        // Sub-dword writes change only the bytes written.
        let merge = |old: u32| {
            let mut bytes = old.to_le_bytes();
            let n = data.len().min(4 - within);
            bytes[within..within + n].copy_from_slice(&data[..n]);
            u32::from_le_bytes(bytes)
        };
        match offset & !0xf {
            IOREGSEL => s.ioregsel = merge(s.ioregsel) & 0xff,
            IOWIN => {
                let index = s.ioregsel;
                let value = merge(s.read_register(index));
                s.write_register(index, value, self.sink.as_ref());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sink {
        got: Mutex<Vec<IoapicInterrupt>>,
        refuse: std::sync::atomic::AtomicBool,
    }
    impl InterruptSink for Sink {
        fn deliver(&self, irq: IoapicInterrupt) -> bool {
            self.got.lock().unwrap().push(irq);
            !self.refuse.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn ioapic() -> (Ioapic, Arc<Sink>) {
        let sink = Arc::new(Sink::default());
        (Ioapic::new(sink.clone()), sink)
    }

    fn write_reg(io: &Ioapic, index: u32, value: u32) {
        io.write(IOREGSEL, &index.to_le_bytes());
        io.write(IOWIN, &value.to_le_bytes());
    }

    fn read_reg(io: &Ioapic, index: u32) -> u32 {
        io.write(IOREGSEL, &index.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    fn program(io: &Ioapic, pin: u32, low: u32, dest: u8) {
        write_reg(io, 0x11 + 2 * pin, u32::from(dest) << 24);
        write_reg(io, 0x10 + 2 * pin, low);
    }

    #[test]
    fn identification_registers() {
        let (io, _) = ioapic();
        assert_eq!(read_reg(&io, 1), 0x170011);
        assert_eq!(IOAPIC_VERSION, 0x170011);
        assert_eq!(read_reg(&io, 0), 0);
        write_reg(&io, 0, 0xffff_ffff);
        assert_eq!(read_reg(&io, 0), 0x0f00_0000, "4-bit ID");
        assert_eq!(read_reg(&io, 2), 0x0f00_0000, "arbitration ID follows");
        write_reg(&io, 1, 0);
        assert_eq!(read_reg(&io, 1), 0x170011, "version is read-only");
        let mut b = [0u8; 4];
        io.read(IOREGSEL, &mut b);
        assert_eq!(b, [1, 0, 0, 0], "IOREGSEL reads back");
    }

    #[test]
    fn redirection_entries_and_guest_garbage() {
        let (io, sink) = ioapic();
        for pin in 0..24 {
            assert_eq!(read_reg(&io, 0x10 + 2 * pin), RTE_MASKED as u32, "masked at reset");
        }
        write_reg(&io, 0x10, 0xffff_ffff);
        assert_eq!(read_reg(&io, 0x10), 0x1_afff, "delivery status and remote IRR are read-only");
        write_reg(&io, 0x11, 0xffff_ffff);
        assert_eq!(read_reg(&io, 0x11), 0xff00_0000);
        // Out-of-range indexes, pins and offsets: no panic, reads 0.
        for index in [0x03, 0x0f, 0x40, 0x41, 0xff, 0x1234_5678] {
            write_reg(&io, index, 0xdead_beef);
            assert_eq!(read_reg(&io, index), 0);
        }
        io.set_irq(24, true);
        io.set_irq(usize::MAX, true);
        assert_eq!(io.redirection_entry(24), None);
        let mut b = [0u8; 8];
        io.read(0x20, &mut b);
        io.read(0xfff, &mut b);
        io.write(0x13, &[1, 2, 3, 4]);
        io.write(u64::MAX, &[1]);
        io.write(IOWIN, &[]);
        assert!(sink.got.lock().unwrap().is_empty());
        // A byte write to IOWIN changes one byte of the register.
        program(&io, 3, 0x1_0030, 0);
        io.write(IOREGSEL, &[0x16]);
        io.write(IOWIN, &[0x41]);
        assert_eq!(read_reg(&io, 0x16), 0x1_0041);
    }

    #[test]
    fn edge_pins_fire_on_rising_edges_when_unmasked() {
        let (io, sink) = ioapic();
        io.set_irq(4, true);
        io.set_irq(4, false);
        assert!(sink.got.lock().unwrap().is_empty(), "masked: lost");
        program(&io, 4, 0x0834, 0x01); // Logical, fixed, vector 0x34.
        io.set_irq(4, true);
        io.set_irq(4, true); // Still high: no new edge.
        io.set_irq(4, false);
        io.pulse_irq(4);
        let got = sink.got.lock().unwrap().clone();
        let expect = IoapicInterrupt { dest: 1, logical: true, mode: DeliveryMode::Fixed, vector: 0x34, level: false };
        assert_eq!(got, [expect, expect]);
        assert_eq!(io.redirection_entry(4).unwrap() & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn level_pins_use_remote_irr() {
        let (io, sink) = ioapic();
        let count = || sink.got.lock().unwrap().len();
        // Asserted while masked: delivered when unmasked.
        io.set_irq(10, true);
        program(&io, 10, 0x8050, 2); // Level, physical, vector 0x50, to APIC 2.
        assert_eq!(count(), 1);
        assert_eq!(sink.got.lock().unwrap()[0].dest, 2);
        assert!(sink.got.lock().unwrap()[0].level);
        assert_eq!(read_reg(&io, 0x10 + 20) & 0x4000, 0x4000, "remote IRR");
        // In service: re-asserting does nothing.
        io.set_irq(10, true);
        assert_eq!(count(), 1);
        // EOI of another vector: nothing.
        io.end_of_interrupt(0x51);
        assert_eq!(count(), 1);
        // EOI while still asserted: delivered again.
        io.end_of_interrupt(0x50);
        assert_eq!(count(), 2);
        // Lowered, then EOI: remote IRR clears, nothing more.
        io.set_irq(10, false);
        io.end_of_interrupt(0x50);
        assert_eq!(count(), 2);
        assert_eq!(read_reg(&io, 0x10 + 20) & 0x4000, 0);
        // Nobody accepts: remote IRR stays clear.
        sink.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        io.set_irq(10, true);
        assert_eq!(count(), 3);
        assert_eq!(read_reg(&io, 0x10 + 20) & 0x4000, 0);
        // Switching to edge clears a remote IRR.
        sink.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        write_reg(&io, 0x10 + 20, 0x8050); // Reprogram: delivered, remote IRR set.
        assert_eq!(count(), 4);
        write_reg(&io, 0x10 + 20, 0x0050);
        assert_eq!(read_reg(&io, 0x10 + 20) & 0x4000, 0);
    }
}
