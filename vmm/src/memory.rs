//! Guest RAM: anonymous host memory (vm-memory's `GuestMemoryMmap`) mapped into the VM
//! with `hv_vm_map`. Below 4 GiB a hole is left for MMIO devices, the IOAPIC and LAPIC.
use hvf_sys::*;
use std::fmt;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Start of the MMIO hole: RAM above it continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

#[derive(Debug)]
pub enum MemoryError {
    /// Size not a non-zero multiple of 4 KiB.
    BadSize(u64),
    /// The host refused the memory.
    Allocate(String),
    Map(HvError),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::BadSize(s) => write!(f, "guest memory size {s:#x} is not a non-zero multiple of 4 KiB"),
            MemoryError::Allocate(e) => write!(f, "cannot allocate guest memory: {e}"),
            MemoryError::Map(e) => write!(f, "hv_vm_map failed: {e}"),
        }
    }
}

impl std::error::Error for MemoryError {}

/// The RAM ranges for `size` bytes of guest memory, split around the MMIO hole.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, size - MMIO_HOLE_START)]
    }
}

pub struct GuestRam {
    mem: GuestMemoryMmap,
}

impl GuestRam {
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size == 0 || !size.is_multiple_of(4096) {
            return Err(MemoryError::BadSize(size));
        }
        let ranges: Vec<(GuestAddress, usize)> =
            ram_ranges(size).into_iter().map(|(start, len)| (GuestAddress(start), len as usize)).collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Allocate(e.to_string()))?;
        Ok(GuestRam { mem })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Maps every region into the VM, readable, writable and executable.
    pub fn map_into_vm(&self) -> Result<(), MemoryError> {
        for region in self.mem.iter() {
            let host = self.mem.get_host_address(region.start_addr()).map_err(|e| MemoryError::Allocate(e.to_string()))?;
            // SAFETY: the region stays mapped in this process as long as `self` lives, and
            // the VM is destroyed before `GuestRam` is dropped (see `Vm`).
            let ret = unsafe {
                hv_vm_map(
                    host as hv_uvaddr_t,
                    region.start_addr().0,
                    region.len() as usize,
                    HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC,
                )
            };
            HvError::check(ret).map_err(MemoryError::Map)?;
        }
        Ok(())
    }

    /// Whether `gpa..gpa+len` lies entirely inside one RAM region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.mem.find_region(GuestAddress(gpa)).is_some_and(|r| {
            let end = r.start_addr().0 + r.len();
            gpa.checked_add(len).is_some_and(|e| e <= end)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_mmio_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 0xc000_0000), (0x1_0000_0000, 1 << 30)]);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(GuestRam::new(0), Err(MemoryError::BadSize(0))));
        assert!(matches!(GuestRam::new(4097), Err(MemoryError::BadSize(4097))));
        let ram = GuestRam::new(1 << 20).unwrap();
        assert!(ram.contains(0xff000, 0x1000));
        assert!(!ram.contains(0xff000, 0x1001));
        assert!(!ram.contains(u64::MAX, 2));
    }
}
