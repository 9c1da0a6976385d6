//! Identity page tables for the 64-bit entry. The 64-bit boot protocol requires paging
//! on with the kernel, zero page and command line identity-mapped (boot.rst, "64-bit
//! BOOT PROTOCOL"); mapping the whole low 4 GiB covers those and the initrd wherever
//! they are. 2 MiB pages (PDE.PS) need only PAE, while 1 GiB pages depend on CPUID
//! 0x80000001.EDX[26], which not every guest CPUID model offers (SDM vol. 3 4.5).
use crate::layout::{PAGE_SIZE, PDPT_START, PD_COUNT, PD_START, PML4_START};
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Present + writable (SDM vol. 3 table 4-15..4-18).
pub const PTE_PRESENT_RW: u64 = 0x3;
/// Page size: this PDE maps a 2 MiB page.
pub const PDE_PS: u64 = 0x80;
const ENTRIES: u64 = 512;
const PAGE_2M: u64 = 2 << 20;

#[derive(Debug)]
pub enum PagingError {
    Write(u64),
}

impl fmt::Display for PagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagingError::Write(a) => write!(f, "cannot write the boot page tables at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for PagingError {}

/// How many bytes the identity map covers.
pub const IDENTITY_MAPPED: u64 = PD_COUNT * ENTRIES * PAGE_2M;

/// Writes PML4[0] -> PDPT, PDPT[0..4] -> PDs, PD entries mapping 0..4 GiB; returns CR3.
/// Every other entry is written zero so stale guest memory cannot add mappings.
pub fn write_identity_map<M: GuestMemoryBackend>(mem: &M) -> Result<u64, PagingError> {
    let put = |addr: u64, val: u64| mem.write_obj(val, GuestAddress(addr)).map_err(|_| PagingError::Write(addr));
    let zero = |table: u64| {
        mem.write_slice(&[0u8; PAGE_SIZE as usize], GuestAddress(table)).map_err(|_| PagingError::Write(table))
    };
    zero(PML4_START)?;
    zero(PDPT_START)?;
    put(PML4_START, PDPT_START | PTE_PRESENT_RW)?;
    for pd in 0..PD_COUNT {
        let table = PD_START + pd * PAGE_SIZE;
        put(PDPT_START + pd * 8, table | PTE_PRESENT_RW)?;
        for i in 0..ENTRIES {
            let phys = (pd * ENTRIES + i) * PAGE_2M;
            put(table + i * 8, phys | PDE_PS | PTE_PRESENT_RW)?;
        }
    }
    Ok(PML4_START)
}

/// Walks the tables as the MMU would (4-level, 2 MiB leaves only): the physical address
/// `va` maps to, or None. For tests and diagnostics.
pub fn translate<M: GuestMemoryBackend>(mem: &M, cr3: u64, va: u64) -> Option<u64> {
    let read = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).ok();
    let addr_mask = 0x000f_ffff_ffff_f000;
    let pml4e = read((cr3 & addr_mask) + ((va >> 39) & 0x1ff) * 8)?;
    if pml4e & 1 == 0 {
        return None;
    }
    let pdpte = read((pml4e & addr_mask) + ((va >> 30) & 0x1ff) * 8)?;
    if pdpte & 1 == 0 || pdpte & PDE_PS != 0 {
        return None;
    }
    let pde = read((pdpte & addr_mask) + ((va >> 21) & 0x1ff) * 8)?;
    if pde & 1 == 0 || pde & PDE_PS == 0 {
        return None;
    }
    Some((pde & 0x000f_ffff_ffe0_0000) | (va & (PAGE_2M - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn writes_exact_entries() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        mem.write_obj(0xdead_beef_u64, GuestAddress(PML4_START + 8)).unwrap();
        assert_eq!(write_identity_map(&mem).unwrap(), 0x9000);
        let r = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(r(0x9000), 0xa003);
        assert_eq!(r(0x9008), 0, "stale entries are cleared");
        assert_eq!(r(0xa000), 0xb003);
        assert_eq!(r(0xa018), 0xe003);
        assert_eq!(r(0xa020), 0);
        assert_eq!(r(0xb000), 0x83);
        assert_eq!(r(0xb008), 0x20_0083);
        assert_eq!(r(0xeff8), 0xffe0_0083);
        assert_eq!(IDENTITY_MAPPED, 4 << 30);
    }

    #[test]
    fn the_low_4_gib_are_identity_mapped() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        for va in [0, 0x7000, 0x2_0000, 0x100_0200, 0xbfff_f123, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, va), Some(va));
        }
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }

    #[test]
    fn too_little_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xc000)]).unwrap();
        assert!(matches!(write_identity_map(&mem), Err(PagingError::Write(0xc000))));
    }
}
