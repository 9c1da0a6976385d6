//! The test devices kvm-unit-tests' x86 guests expect (hvrun's `--testdev`), with the
//! interfaces QEMU's `isa-debug-exit` and `pc-testdev` give them:
//!
//! | where | device | what it does |
//! |---|---|---|
//! | port 0xf4, 4 ports | [`DebugExit`] | a write of V stops the machine with exit status `(V << 1) \| 1` |
//! | port 0xe0, 4 ports | [`TestPort`] | a 32-bit scratch register, any access size and byte offset |
//! | port 0xe4, 4 ports | [`FlushPage`] | "flush page": accepted, no guest-visible effect |
//! | port 0xe8, 4 ports | [`TestPort`] | the same scratch register, at 0xe8 |
//! | ports 0x2000..0x2018 | [`IrqLines`] | a byte write to 0x2000 + n sets ISA IRQ line n (GSI n) to (value != 0) |
//! | MMIO 0xff00_0000, 64 KiB | [`IoMem`] | plain memory behind MMIO exits, for instruction-emulation tests |
//! | ports 0x510..0x512 | [`FwCfg`] | fw_cfg's legacy interface: signature, RAM size, CPU count |
//!
//! Every access a guest can make gets an answer: reads of write-only registers return 0,
//! accesses of sizes a register does not take are ignored (QEMU rejects them too).
use crate::bus::{Bus, BusDevice, BusError};
use crate::fw_cfg::{FwCfg, FW_CFG_PORT, FW_CFG_PORT_COUNT};
use crate::ioapic::{Ioapic, IOAPIC_PINS};
use crate::power::{PowerControl, PowerEvent};
use std::sync::{Arc, Mutex};

/// isa-debug-exit, as kvm-unit-tests' runner configures it (`iobase=0xf4,iosize=0x4`).
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
pub const DEBUG_EXIT_PORT_COUNT: u64 = 4;
/// pc-testdev's scratch register, its "flush page" port, its byte-wise view of the
/// scratch register, and its IRQ lines.
pub const TEST_PORT: u64 = 0xe0;
pub const FLUSH_PAGE_PORT: u64 = 0xe4;
pub const TEST_PORT_BYTE: u64 = 0xe8;
pub const TEST_PORT_COUNT: u64 = 4;
pub const IRQ_LINE_PORT: u64 = 0x2000;
/// One line per IOAPIC pin (QEMU's ISA bus has 24 IRQs, GSI n for line n).
pub const IRQ_LINE_COUNT: u64 = IOAPIC_PINS as u64;
/// pc-testdev's memory window.
pub const IOMEM_BASE: u64 = 0xff00_0000;
pub const IOMEM_SIZE: u64 = 0x1_0000;

/// The exit status a written `value` asks for: QEMU's `exit((val << 1) | 1)`, so every
/// status from this device is odd (1 = the suite's success) and tells itself apart from
/// hvrun's own even statuses. The process keeps its low 8 bits, as with QEMU.
pub const fn exit_status(value: u32) -> u32 {
    (value << 1) | 1
}

/// isa-debug-exit: a write of any size stops the machine with [`exit_status`] of the
/// value written (zero-extended, little-endian); reads return 0.
pub struct DebugExit {
    power: Arc<dyn PowerControl>,
}

impl DebugExit {
    pub fn new(power: Arc<dyn PowerControl>) -> Self {
        DebugExit { power }
    }
}

impl BusDevice for DebugExit {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, _offset: u64, data: &[u8]) {
        // The port is 32 bits wide: a wider write keeps its low half.
        self.power.power_event(PowerEvent::Exit(exit_status(crate::bus::le_value(data) as u32)));
    }
}

/// pc-testdev's 32-bit scratch register: an access of N bytes at byte offset K reads or
/// writes bytes K..K+N of it; bytes past the register read 0 and are not written.
/// Shared by the 0xe0 and 0xe8 views.
#[derive(Default)]
pub struct TestPort {
    value: Mutex<[u8; 4]>,
}

impl TestPort {
    pub fn new() -> Arc<Self> {
        Arc::new(TestPort::default())
    }
}

impl BusDevice for TestPort {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let value = *self.value.lock().unwrap_or_else(|e| e.into_inner());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).and_then(|at| value.get(at)).copied().unwrap_or(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &byte) in data.iter().enumerate() {
            if let Some(slot) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).and_then(|at| value.get_mut(at)) {
                *slot = byte;
            }
        }
    }
}

/// pc-testdev's "flush page" port. QEMU makes the host drop its mapping of the guest
/// page written here (an mprotect round trip), which exercises the host kernel's fault
/// path, not the VMM's; the guest sees nothing either way, so hvrun accepts the write
/// and does nothing. Reads return 0.
pub struct FlushPage;

impl BusDevice for FlushPage {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        log::trace!("testdev: flush page {data:x?} at +{offset} (nothing to do)");
    }
}

/// pc-testdev's IRQ lines: a byte written to line n drives IOAPIC pin n high (non-zero)
/// or low. The lines take one byte each, so a wider write is split into bytes for
/// consecutive lines, as QEMU's memory core splits it (realmode.flat's `outl` to line 11
/// also lowers lines 12-14); bytes past the last line go nowhere. Reads return 0.
pub struct IrqLines {
    ioapic: Arc<Ioapic>,
}

impl IrqLines {
    pub fn new(ioapic: Arc<Ioapic>) -> Self {
        IrqLines { ioapic }
    }
}

impl BusDevice for IrqLines {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        for (i, &level) in data.iter().enumerate() {
            match usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) {
                Some(line) if line < IOAPIC_PINS => self.ioapic.set_irq(line, level != 0),
                _ => log::debug!("testdev: no IRQ line {offset} + {i}"),
            }
        }
    }
}

/// pc-testdev's memory window: 64 KiB of bytes the guest reaches only through MMIO
/// exits, so every instruction touching it goes through hvrun's instruction emulator.
/// Bytes past the end of the window read 0 and are not written.
pub struct IoMem {
    bytes: Mutex<Vec<u8>>,
}

impl Default for IoMem {
    fn default() -> Self {
        IoMem { bytes: Mutex::new(vec![0; IOMEM_SIZE as usize]) }
    }
}

impl BusDevice for IoMem {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).and_then(|at| bytes.get(at)).copied().unwrap_or(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &byte) in data.iter().enumerate() {
            if let Some(slot) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).and_then(|at| bytes.get_mut(at)) {
                *slot = byte;
            }
        }
    }
}

/// Puts every device of the table above on the buses, fw_cfg telling of `ram_size`
/// bytes and `cpus` vCPUs.
pub fn install(
    pio: &mut Bus,
    mmio: &mut Bus,
    ioapic: Arc<Ioapic>,
    power: Arc<dyn PowerControl>,
    ram_size: u64,
    cpus: u16,
) -> Result<(), BusError> {
    pio.insert(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT, Arc::new(DebugExit::new(power)))?;
    let port = TestPort::new();
    pio.insert(TEST_PORT, TEST_PORT_COUNT, port.clone())?;
    pio.insert(FLUSH_PAGE_PORT, TEST_PORT_COUNT, Arc::new(FlushPage))?;
    pio.insert(TEST_PORT_BYTE, TEST_PORT_COUNT, port)?;
    pio.insert(IRQ_LINE_PORT, IRQ_LINE_COUNT, Arc::new(IrqLines::new(ioapic)))?;
    mmio.insert(IOMEM_BASE, IOMEM_SIZE, Arc::new(IoMem::default()))?;
    pio.insert(FW_CFG_PORT, FW_CFG_PORT_COUNT, Arc::new(FwCfg::new(ram_size, cpus)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioapic::{InterruptSink, IoapicInterrupt};

    #[derive(Default)]
    struct Events(Mutex<Vec<PowerEvent>>);
    impl PowerControl for Events {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    struct Nowhere;
    impl InterruptSink for Nowhere {
        fn deliver(&self, _irq: IoapicInterrupt) -> bool {
            true
        }
    }

    #[test]
    fn debug_exit_status_is_value_shifted_with_the_low_bit_set() {
        let events = Arc::new(Events::default());
        let dev = DebugExit::new(events.clone());
        // lib/x86/io.c exit(): outl(code, 0xf4); report_summary() returns 0 or 1.
        dev.write(0, &0u32.to_le_bytes());
        dev.write(0, &1u32.to_le_bytes());
        dev.write(0, &[0x7f]);
        dev.write(1, &[0xff, 0xff]);
        dev.write(0, &u32::MAX.to_le_bytes());
        dev.write(0, &[]);
        assert_eq!(
            *events.0.lock().unwrap(),
            [1, 3, 0xff, 0x1_ffff, u32::MAX, 1].map(PowerEvent::Exit),
            "the top bit of a 32-bit value is shifted out, as in QEMU's 32-bit arithmetic"
        );
        let mut b = [0xaa; 4];
        dev.read(0, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn test_port_keeps_bytes_at_any_offset_and_size() {
        let port = TestPort::new();
        port.write(0, &0x1234_5678u32.to_le_bytes());
        let mut b = [0u8; 4];
        port.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
        port.write(1, &[0xab]);
        let mut w = [0u8; 2];
        port.read(1, &mut w);
        assert_eq!(w, [0xab, 0x34]);
        // Past the register: reads 0, writes go nowhere.
        port.write(3, &[0xcd, 0xee, 0xee, 0xee]);
        port.read(2, &mut b);
        assert_eq!(b, [0x34, 0xcd, 0, 0]);
        port.read(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        port.write(u64::MAX, &[1]);
    }

    #[test]
    fn irq_lines_drive_ioapic_pins() {
        let ioapic = Arc::new(Ioapic::new(Arc::new(Nowhere)));
        let lines = IrqLines::new(ioapic.clone());
        lines.write(0x0e, &[1]);
        lines.write(0x0f, &[0x80]);
        assert!(ioapic.snapshot().asserted[0x0e] && ioapic.snapshot().asserted[0x0f]);
        lines.write(0x0e, &[0]);
        assert!(!ioapic.snapshot().asserted[0x0e]);
        // A wider write: one byte per line, from the line written on.
        lines.write(0x0b, &1u32.to_le_bytes());
        let asserted = ioapic.snapshot().asserted;
        assert_eq!(asserted[0x0b..0x10], [true, false, false, false, true]);
        // Lines past the last pin: nothing, and nothing panics.
        lines.write(23, &[0, 1]);
        lines.write(24, &[1]);
        lines.write(u64::MAX, &[1, 1]);
        assert!(!ioapic.snapshot().asserted[23]);
        let mut b = [0xff];
        lines.read(3, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn iomem_is_memory_and_ends_where_it_ends() {
        let mem = IoMem::default();
        mem.write(0x100, &0x1122_3344_5566_7788u64.to_le_bytes());
        let mut q = [0u8; 8];
        mem.read(0x100, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1122_3344_5566_7788);
        mem.write(IOMEM_SIZE - 2, &[1, 2, 3, 4]);
        let mut d = [0xffu8; 4];
        mem.read(IOMEM_SIZE - 2, &mut d);
        assert_eq!(d, [1, 2, 0, 0]);
        mem.read(u64::MAX, &mut d);
        mem.write(u64::MAX, &d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn install_puts_everything_on_the_buses() {
        let (mut pio, mut mmio) = (Bus::new(), Bus::new());
        let events = Arc::new(Events::default());
        install(&mut pio, &mut mmio, Arc::new(Ioapic::new(Arc::new(Nowhere))), events.clone(), 256 << 20, 1).unwrap();
        // The scratch register seen through both windows.
        assert!(pio.write(TEST_PORT, &[0x5a]));
        let mut b = [0u8];
        assert!(pio.read(TEST_PORT_BYTE, &mut b));
        assert_eq!(b, [0x5a]);
        assert!(pio.write(FLUSH_PAGE_PORT, &0x40_0000u32.to_le_bytes()));
        assert!(pio.write(IRQ_LINE_PORT + 23, &[1]));
        assert!(mmio.write(IOMEM_BASE + IOMEM_SIZE - 1, &[9]));
        assert!(!mmio.write(IOMEM_BASE + IOMEM_SIZE, &[9]));
        assert!(pio.write(FW_CFG_PORT, &crate::fw_cfg::FW_CFG_NB_CPUS.to_le_bytes()));
        assert!(pio.read(FW_CFG_PORT + 1, &mut b));
        assert_eq!(b, [1]);
        assert!(pio.write(DEBUG_EXIT_PORT, &1u32.to_le_bytes()));
        assert_eq!(*events.0.lock().unwrap(), [PowerEvent::Exit(3)]);
    }
}
