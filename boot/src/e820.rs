//! The BIOS-style memory map handed to Linux in `boot_params.e820_table` (boot.rst
//! "zero page" 0x2d0; types from the ACPI 6.x 15.1 address range types).
use crate::layout::*;
use linux_loader::loader::bootparam::{boot_e820_entry, E820_MAX_ENTRIES_ZEROPAGE};
use std::fmt;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl E820Entry {
    pub const fn end(&self) -> u64 {
        self.addr + self.size
    }
}

impl From<E820Entry> for boot_e820_entry {
    fn from(e: E820Entry) -> Self {
        boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum E820Error {
    /// The memory is too small to hold the fixed low-memory layout and a kernel.
    TooSmall(u64),
    TooManyEntries(usize),
}

impl fmt::Display for E820Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E820Error::TooSmall(s) => write!(f, "guest memory of {s:#x} bytes cannot hold the boot layout"),
            E820Error::TooManyEntries(n) => write!(f, "e820 map of {n} entries does not fit the zero page"),
        }
    }
}

impl std::error::Error for E820Error {}

/// The map for `mem_size` bytes of RAM laid out as [`vmm::memory::ram_ranges`] does:
/// - RAM below the EBDA, reserved EBDA/VGA/BIOS area (MP table and ACPI tables live
///   there; Linux never allocates it), RAM from 1 MiB to the MMIO hole;
/// - in the hole, the IOAPIC and LAPIC pages reserved (so nothing is allocated over
///   them); the rest of the hole is left out of the map, which is how Linux learns it
///   is free for MMIO (`e820__setup_pci_gap`);
/// - the RAM above 4 GiB.
pub fn build_e820(mem_size: u64) -> Result<Vec<E820Entry>, E820Error> {
    if mem_size <= KERNEL_START {
        return Err(E820Error::TooSmall(mem_size));
    }
    let low_end = low_ram_end(mem_size);
    let mut map = vec![
        E820Entry { addr: 0, size: EBDA_START, kind: E820_RAM },
        E820Entry { addr: EBDA_START, size: KERNEL_START - EBDA_START, kind: E820_RESERVED },
        E820Entry { addr: KERNEL_START, size: low_end - KERNEL_START, kind: E820_RAM },
        E820Entry { addr: IOAPIC_ADDR, size: PAGE_SIZE, kind: E820_RESERVED },
        E820Entry { addr: LAPIC_ADDR, size: PAGE_SIZE, kind: E820_RESERVED },
    ];
    if mem_size > MMIO_HOLE_START {
        map.push(E820Entry { addr: MMIO_HOLE_END, size: mem_size - MMIO_HOLE_START, kind: E820_RAM });
    }
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(E820Error::TooManyEntries(map.len()));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory() {
        let map = build_e820(128 << 20).unwrap();
        assert_eq!(
            map,
            vec![
                E820Entry { addr: 0, size: 0x9fc00, kind: 1 },
                E820Entry { addr: 0x9fc00, size: 0x60400, kind: 2 },
                E820Entry { addr: 0x10_0000, size: 0x7f0_0000, kind: 1 },
                E820Entry { addr: 0xfec0_0000, size: 0x1000, kind: 2 },
                E820Entry { addr: 0xfee0_0000, size: 0x1000, kind: 2 },
            ]
        );
    }

    #[test]
    fn memory_above_the_hole_is_described_and_sorted() {
        let map = build_e820(16 << 30).unwrap();
        assert_eq!(map[2], E820Entry { addr: 0x10_0000, size: 0xc000_0000 - 0x10_0000, kind: 1 });
        assert_eq!(*map.last().unwrap(), E820Entry { addr: 0x1_0000_0000, size: (16 << 30) - 0xc000_0000, kind: 1 });
        let ram: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
        assert_eq!(ram, (16 << 30) - 0x60400);
        for w in map.windows(2) {
            assert!(w[0].end() <= w[1].addr);
        }
        // Exactly at the hole: no high RAM.
        assert_eq!(build_e820(0xc000_0000).unwrap().len(), 5);
        assert_eq!(build_e820(0x10_0000), Err(E820Error::TooSmall(0x10_0000)));
    }
}
