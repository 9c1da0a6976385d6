//! A minimal firmware configuration device: the legacy I/O interface of QEMU's fw_cfg
//! (QEMU's docs/specs/fw_cfg.rst: a 16-bit selector register at 0x510, a byte-wide data
//! register at 0x511 that steps through the selected item), with the few items
//! kvm-unit-tests reads. Its SMP start-up asks for the CPU count (`FW_CFG_NB_CPUS`) and
//! waits until that many CPUs are online: without this device it would read 0xffff from
//! the floating bus and wait forever. Part of hvrun's `--testdev`.
//!
//! No DMA interface (the ID item says so), no file directory; writes to the data
//! register are ignored, as QEMU has done since 2.4.
use crate::bus::BusDevice;
use std::sync::Mutex;

/// The selector (16-bit writes) and data (byte reads) registers.
pub const FW_CFG_PORT: u64 = 0x510;
pub const FW_CFG_PORT_COUNT: u64 = 2;
const SELECTOR_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;

/// Item keys (fw_cfg.rst, "Selector Register"; lib/x86/fwcfg.h).
pub const FW_CFG_SIGNATURE: u16 = 0x00;
pub const FW_CFG_ID: u16 = 0x01;
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
pub const FW_CFG_NB_CPUS: u16 = 0x05;
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
/// "QEMU": what a guest checks to know a fw_cfg device is there.
const SIGNATURE: [u8; 4] = *b"QEMU";
/// ID bit 0: the traditional (I/O port) interface; bit 1 (DMA) clear.
const ID_TRADITIONAL: u32 = 1;

struct State {
    selected: u16,
    offset: usize,
}

/// The device, with the machine's RAM size and vCPU count.
pub struct FwCfg {
    ram_size: u64,
    cpus: u16,
    state: Mutex<State>,
}

impl FwCfg {
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        FwCfg { ram_size, cpus, state: Mutex::new(State { selected: FW_CFG_SIGNATURE, offset: 0 }) }
    }

    /// The bytes of item `key`; an unknown key is an empty item, which reads as zeros.
    fn item(&self, key: u16) -> Vec<u8> {
        match key {
            FW_CFG_SIGNATURE => SIGNATURE.to_vec(),
            FW_CFG_ID => ID_TRADITIONAL.to_le_bytes().to_vec(),
            FW_CFG_RAM_SIZE => self.ram_size.to_le_bytes().to_vec(),
            FW_CFG_NB_CPUS | FW_CFG_MAX_CPUS => self.cpus.to_le_bytes().to_vec(),
            _ => Vec::new(),
        }
    }
}

impl BusDevice for FwCfg {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset != DATA_OFFSET {
            data.fill(0);
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let item = self.item(s.selected);
        for byte in data.iter_mut() {
            // Past the end of the item: 0 (fw_cfg.rst, "Data Register").
            *byte = item.get(s.offset).copied().unwrap_or(0);
            s.offset = s.offset.saturating_add(1);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset != SELECTOR_OFFSET {
            return;
        }
        let key = match data {
            [lo] => u16::from(*lo),
            [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
            [] => return,
        };
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = State { selected: key, offset: 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(dev: &FwCfg, key: u16, len: usize) -> Vec<u8> {
        dev.write(SELECTOR_OFFSET, &key.to_le_bytes());
        (0..len)
            .map(|_| {
                let mut b = [0xaa];
                dev.read(DATA_OFFSET, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn items_kvm_unit_tests_read() {
        let dev = FwCfg::new(256 << 20, 1);
        assert_eq!(read_item(&dev, FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&dev, FW_CFG_ID, 4), [1, 0, 0, 0]);
        // fwcfg_get_nb_cpus(): outw(5, 0x510), two inb(0x511).
        assert_eq!(read_item(&dev, FW_CFG_NB_CPUS, 2), [1, 0]);
        assert_eq!(read_item(&dev, FW_CFG_MAX_CPUS, 2), [1, 0]);
        assert_eq!(read_item(&dev, FW_CFG_RAM_SIZE, 8), [0, 0, 0, 0x10, 0, 0, 0, 0]);
        // FW_CFG_MAX_RAM (0x11) and other keys are empty: the suite takes 0 as "no limit".
        assert_eq!(read_item(&dev, 0x11, 8), [0; 8]);
        assert_eq!(read_item(&dev, 0xffff, 2), [0; 2]);
    }

    #[test]
    fn reads_step_through_the_item_and_end_in_zeros() {
        let dev = FwCfg::new(0, 2);
        assert_eq!(read_item(&dev, FW_CFG_SIGNATURE, 6), [b'Q', b'E', b'M', b'U', 0, 0]);
        // A wider read steps once per byte; a new selection starts over.
        dev.write(SELECTOR_OFFSET, &[FW_CFG_SIGNATURE as u8]);
        let mut w = [0u8; 2];
        dev.read(DATA_OFFSET, &mut w);
        assert_eq!(&w, b"QE");
        dev.read(DATA_OFFSET, &mut w);
        assert_eq!(&w, b"MU");
        // The selector reads 0; writes to the data register and empty writes do nothing.
        dev.read(SELECTOR_OFFSET, &mut w);
        assert_eq!(w, [0, 0]);
        dev.write(DATA_OFFSET, &[1]);
        dev.write(SELECTOR_OFFSET, &[]);
        assert_eq!(read_item(&dev, FW_CFG_NB_CPUS, 2), [2, 0]);
    }
}
