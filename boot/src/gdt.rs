//! The boot GDT. Linux's 64-bit boot protocol (Documentation/x86/boot.rst, "64-bit BOOT
//! PROTOCOL") wants flat 4 GiB descriptors for `__BOOT_CS` (0x10, execute/read) and
//! `__BOOT_DS` (0x18, read/write) with CS = `__BOOT_CS` and DS/ES/SS = `__BOOT_DS`; the
//! kernel loads its own GDT right after entry, so nothing else is needed here.
//!
//! A multiboot image starts in 32-bit protected mode with flat 4 GiB code and data
//! segments (Multiboot specification 0.6.96, 3.2 "Machine state"); the specification
//! lets GDTR be invalid, but hvrun points it at [`FLAT32_GDT`], the descriptors those
//! segment registers were loaded from, so a reload of a selector before the image sets
//! up its own GDT gets the same segment.
use crate::layout::GDT_START;
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm::entry::Segment;

pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;

/// Descriptor `flags`: bits 0-7 are the access byte (P, DPL, S, type), bits 12-15 the
/// G, D/B, L, AVL nibble, i.e. the VMX access-rights layout (SDM vol. 3 table 25-2).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// 64-bit code: present, DPL 0, code execute/read accessed (0x9b), G=1, L=1.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Data: present, DPL 0, data read/write accessed (0x93), G=1, D/B=1.
pub const DATA_FLAGS: u16 = 0xc093;

/// 32-bit code: present, DPL 0, code execute/read accessed (0x9b), G=1, D/B=1.
pub const CODE32_FLAGS: u16 = 0xc09b;

/// The multiboot entry's selectors in [`FLAT32_GDT`].
pub const FLAT32_CS: u16 = 0x08;
pub const FLAT32_DS: u16 = 0x10;

/// Null, flat 32-bit code ([`FLAT32_CS`]), flat data ([`FLAT32_DS`]).
pub const FLAT32_GDT: [u64; 3] = [0, gdt_entry(CODE32_FLAGS, 0, 0xfffff), gdt_entry(DATA_FLAGS, 0, 0xfffff)];

/// The table: null, unused, `__BOOT_CS`, `__BOOT_DS`. Accessed bits are preset so the
/// CPU never writes the table, and VM entry requires them in the segment registers.
pub const BOOT_GDT: [u64; 4] = [0, 0, gdt_entry(CODE64_FLAGS, 0, 0xfffff), gdt_entry(DATA_FLAGS, 0, 0xfffff)];

/// GDTR limit: size in bytes minus one.
pub const BOOT_GDT_LIMIT: u32 = (BOOT_GDT.len() * 8 - 1) as u32;

#[derive(Debug)]
pub enum GdtError {
    Write(u64),
}

impl fmt::Display for GdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GdtError::Write(a) => write!(f, "cannot write the boot GDT at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for GdtError {}

/// Writes [`BOOT_GDT`] at [`GDT_START`]; returns the GDTR (base, limit).
pub fn write_gdt<M: GuestMemoryBackend>(mem: &M) -> Result<(u64, u32), GdtError> {
    write_table(mem, &BOOT_GDT)
}

/// Writes `table` at [`GDT_START`]; returns the GDTR (base, limit).
pub fn write_table<M: GuestMemoryBackend>(mem: &M, table: &[u64]) -> Result<(u64, u32), GdtError> {
    for (i, entry) in table.iter().enumerate() {
        let addr = GDT_START + 8 * i as u64;
        mem.write_obj(*entry, GuestAddress(addr)).map_err(|_| GdtError::Write(addr))?;
    }
    Ok((GDT_START, (table.len() * 8 - 1) as u32))
}

/// The segment register contents a `mov`/far jump would load from GDT entry `index`
/// (SDM vol. 3 3.4.5): base, limit scaled by G, access rights in VMX format.
pub fn segment_from_gdt(index: u16) -> Segment {
    segment_from_table(&BOOT_GDT, index)
}

/// [`segment_from_gdt`] for entry `index` of `table`.
pub fn segment_from_table(table: &[u64], index: u16) -> Segment {
    let e = table.get(index as usize).copied().unwrap_or(0);
    let base = ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000);
    let mut limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    let ar = ((e >> 40) & 0xf0ff) as u32;
    if ar & 0x8000 != 0 {
        limit = (limit << 12) | 0xfff;
    }
    Segment { selector: index * 8, base, limit, ar }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn entries_have_the_canonical_encodings() {
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0x1234_5678, 0x67), 0x1280_8b34_5678_0067);
        assert_eq!(BOOT_GDT_LIMIT, 0x1f);
    }

    #[test]
    fn segments_match_what_vmm_builds_for_flat_long_mode() {
        assert_eq!(segment_from_gdt(BOOT_CS / 8), Segment::flat(BOOT_CS, true, true));
        assert_eq!(segment_from_gdt(BOOT_DS / 8), Segment::flat(BOOT_DS, false, false));
    }

    #[test]
    fn flat32_segments_match_what_vmm_builds_for_protected_mode() {
        assert_eq!(FLAT32_GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(FLAT32_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(segment_from_table(&FLAT32_GDT, FLAT32_CS / 8), Segment::flat(FLAT32_CS, true, false));
        assert_eq!(segment_from_table(&FLAT32_GDT, FLAT32_DS / 8), Segment::flat(FLAT32_DS, false, false));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert_eq!(write_table(&mem, &FLAT32_GDT).unwrap(), (0x500, 0x17));
        let mut bytes = [0u8; 24];
        mem.read_slice(&mut bytes, GuestAddress(0x500)).unwrap();
        assert_eq!(&bytes[8..16], &[0xff, 0xff, 0, 0, 0, 0x9b, 0xcf, 0]);
        assert_eq!(&bytes[16..24], &[0xff, 0xff, 0, 0, 0, 0x93, 0xcf, 0]);
    }

    #[test]
    fn writes_exact_bytes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert_eq!(write_gdt(&mem).unwrap(), (0x500, 0x1f));
        let mut bytes = [0u8; 32];
        mem.read_slice(&mut bytes, GuestAddress(0x500)).unwrap();
        assert_eq!(&bytes[16..24], &[0xff, 0xff, 0, 0, 0, 0x9b, 0xaf, 0]);
        assert_eq!(&bytes[24..32], &[0xff, 0xff, 0, 0, 0, 0x93, 0xcf, 0]);
        assert_eq!(&bytes[..16], &[0; 16]);
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x400)]).unwrap();
        assert!(matches!(write_gdt(&small), Err(GdtError::Write(0x500))));
    }
}
