//! The multiboot information structure a loader hands the OS in EBX (Multiboot
//! specification 0.6.96, 3.3 "Boot information format"), with what it points to: the
//! memory map, the module list, the command lines and the boot loader's name.
//!
//! [`build`] lays it all out as bytes for a given guest address (a pure function, so a
//! boot can check it before it writes anything); [`write`] puts those bytes into guest
//! memory.
use crate::e820::{E820Entry, E820_RAM};
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// `flags` bits: which fields are valid (3.3).
pub const INFO_MEMORY: u32 = 1 << 0;
pub const INFO_CMDLINE: u32 = 1 << 2;
pub const INFO_MODS: u32 = 1 << 3;
pub const INFO_MMAP: u32 = 1 << 6;
pub const INFO_LOADER_NAME: u32 = 1 << 9;

/// Field offsets in the structure (3.3). The structure ends with the framebuffer
/// fields at 88..116; hvrun sets none of the fields past `boot_loader_name`, so they
/// stay zero.
const OFF_FLAGS: usize = 0;
const OFF_MEM_LOWER: usize = 4;
const OFF_MEM_UPPER: usize = 8;
const OFF_CMDLINE: usize = 16;
const OFF_MODS_COUNT: usize = 20;
const OFF_MODS_ADDR: usize = 24;
const OFF_MMAP_LENGTH: usize = 44;
const OFF_MMAP_ADDR: usize = 48;
const OFF_LOADER_NAME: usize = 64;
pub const INFO_SIZE: usize = 116;

/// A memory map entry: `size` (of the rest, 20), `base_addr`, `length`, `type` (3.3).
pub const MMAP_ENTRY_SIZE: usize = 24;
const MMAP_ENTRY_SIZE_FIELD: u32 = 20;
/// Memory map `type`: 1 is available RAM, anything else is reserved.
pub const MMAP_AVAILABLE: u32 = 1;
pub const MMAP_RESERVED: u32 = 2;
/// A module entry: `mod_start`, `mod_end`, `string`, `reserved` (3.3).
pub const MODULE_ENTRY_SIZE: usize = 16;

/// What the structures are 4-byte aligned to (the memory map and module list are
/// arrays of 32-bit fields); the structure itself starts on 8 bytes.
const ALIGN: usize = 4;

/// A loaded module: guest-physical `start..end` and its string (hvrun: the file name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub start: u64,
    pub end: u64,
    pub string: String,
}

/// Everything the structure says.
#[derive(Clone, Debug)]
pub struct InfoInput<'a> {
    /// KiB of memory from 0 (at most 640) and from 1 MiB to the first hole (3.3).
    pub mem_lower_kib: u32,
    pub mem_upper_kib: u32,
    pub cmdline: &'a str,
    pub modules: &'a [Module],
    pub memory_map: &'a [E820Entry],
    pub loader_name: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum InfoError {
    /// The structures need `needed` bytes, the area has `room`.
    TooBig { needed: usize, room: u64 },
    /// A string (`what`) holds a NUL byte: it would end early in the guest.
    Nul { what: &'static str },
    /// A module or the area lies beyond the 32-bit addresses the structure holds.
    Above4G(u64),
    Write(u64),
}

impl fmt::Display for InfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InfoError::TooBig { needed, room } => write!(
                f,
                "multiboot information too big: {needed} bytes with the command line, the area holds {room}"
            ),
            InfoError::Nul { what } => write!(f, "multiboot {what} contains a NUL byte"),
            InfoError::Above4G(a) => write!(f, "multiboot address {a:#x} does not fit in 32 bits"),
            InfoError::Write(a) => write!(f, "cannot write the multiboot information at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for InfoError {}

fn put32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn addr32(addr: u64) -> Result<u32, InfoError> {
    u32::try_from(addr).map_err(|_| InfoError::Above4G(addr))
}

/// Appends `bytes` at the next `ALIGN` boundary of `buf`; returns their offset.
fn append(buf: &mut Vec<u8>, bytes: &[u8]) -> usize {
    let at = buf.len().next_multiple_of(ALIGN);
    buf.resize(at, 0);
    buf.extend_from_slice(bytes);
    at
}

fn c_string(s: &str, what: &'static str) -> Result<Vec<u8>, InfoError> {
    if s.as_bytes().contains(&0) {
        return Err(InfoError::Nul { what });
    }
    Ok([s.as_bytes(), &[0]].concat())
}

/// The structure followed by its memory map, module list and strings, as bytes to be
/// placed at guest address `base` (at most `room` bytes of them).
pub fn build(base: u64, room: u64, input: &InfoInput) -> Result<Vec<u8>, InfoError> {
    let mut buf = vec![0u8; INFO_SIZE];
    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME;
    put32(&mut buf, OFF_MEM_LOWER, input.mem_lower_kib);
    put32(&mut buf, OFF_MEM_UPPER, input.mem_upper_kib);

    let mut mmap = Vec::with_capacity(input.memory_map.len() * MMAP_ENTRY_SIZE);
    for e in input.memory_map {
        let kind = if e.kind == E820_RAM { MMAP_AVAILABLE } else { MMAP_RESERVED };
        mmap.extend_from_slice(&MMAP_ENTRY_SIZE_FIELD.to_le_bytes());
        mmap.extend_from_slice(&e.addr.to_le_bytes());
        mmap.extend_from_slice(&e.size.to_le_bytes());
        mmap.extend_from_slice(&kind.to_le_bytes());
    }
    let mmap_at = append(&mut buf, &mmap);
    put32(&mut buf, OFF_MMAP_LENGTH, mmap.len() as u32);

    // The module list, then each module's string; the list's `string` fields are filled
    // in once the strings have their places.
    let mods_at = append(&mut buf, &vec![0u8; input.modules.len() * MODULE_ENTRY_SIZE]);
    for (i, m) in input.modules.iter().enumerate() {
        let string_at = append(&mut buf, &c_string(&m.string, "module string")?);
        let entry = mods_at + i * MODULE_ENTRY_SIZE;
        put32(&mut buf, entry, addr32(m.start)?);
        put32(&mut buf, entry + 4, addr32(m.end)?);
        put32(&mut buf, entry + 8, addr32(base + string_at as u64)?);
    }
    put32(&mut buf, OFF_MODS_COUNT, input.modules.len() as u32);
    if input.modules.is_empty() {
        // No list: mods_addr stays 0, as the count says there is nothing there.
        buf.truncate(mods_at);
    }

    let name_at = append(&mut buf, &c_string(input.loader_name, "boot loader name")?);
    let cmdline_at = append(&mut buf, &c_string(input.cmdline, "command line")?);

    put32(&mut buf, OFF_MMAP_ADDR, addr32(base + mmap_at as u64)?);
    if !input.modules.is_empty() {
        put32(&mut buf, OFF_MODS_ADDR, addr32(base + mods_at as u64)?);
    }
    put32(&mut buf, OFF_LOADER_NAME, addr32(base + name_at as u64)?);
    put32(&mut buf, OFF_CMDLINE, addr32(base + cmdline_at as u64)?);
    if input.memory_map.is_empty() {
        flags &= !INFO_MMAP;
    }
    put32(&mut buf, OFF_FLAGS, flags);
    if buf.len() as u64 > room {
        return Err(InfoError::TooBig { needed: buf.len(), room });
    }
    addr32(base + buf.len() as u64)?;
    Ok(buf)
}

/// Writes what [`build`] made for `base` there; returns the structure's address (what
/// EBX gets).
pub fn write<M: GuestMemoryBackend>(mem: &M, base: u64, bytes: &[u8]) -> Result<u64, InfoError> {
    mem.write_slice(bytes, GuestAddress(base)).map_err(|_| InfoError::Write(base))?;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::E820_RESERVED;
    use vm_memory::GuestMemoryMmap;

    const MAP: [E820Entry; 2] = [
        E820Entry { addr: 0, size: 0x9_fc00, kind: E820_RAM },
        E820Entry { addr: 0x9_fc00, size: 0x6_0400, kind: E820_RESERVED },
    ];

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn exact_bytes_with_a_module() {
        let modules = [Module { start: 0x7fff_f000, end: 0x7fff_f010, string: "env".into() }];
        let input = InfoInput {
            mem_lower_kib: 639,
            mem_upper_kib: 0x3_fc00,
            cmdline: "x86/vmexit.flat cpuid",
            modules: &modules,
            memory_map: &MAP,
            loader_name: "hvrun",
        };
        let b = build(0x1000, 0x7000, &input).unwrap();
        // flags: MEMORY | CMDLINE | MODS | MMAP | LOADER_NAME.
        assert_eq!(&b[0..12], &[0x4d, 0x02, 0, 0, 0x7f, 0x02, 0, 0, 0x00, 0xfc, 0x03, 0]);
        assert_eq!(le32(&b, 12), 0, "no boot device");
        // The memory map right after the 116-byte structure.
        assert_eq!((le32(&b, 44), le32(&b, 48)), (48, 0x1000 + 116));
        assert_eq!(
            &b[116..140],
            &[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xfc, 0x09, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(&b[140..164], &[20, 0, 0, 0, 0x00, 0xfc, 0x09, 0, 0, 0, 0, 0, 0x00, 0x04, 0x06, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        // One module: start, end, its string's address, reserved; then the string.
        assert_eq!((le32(&b, 20), le32(&b, 24)), (1, 0x1000 + 164));
        assert_eq!(&b[164..180], &[0x00, 0xf0, 0xff, 0x7f, 0x10, 0xf0, 0xff, 0x7f, 0xb4, 0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[180..184], b"env\0");
        assert_eq!(le32(&b, 64), 0x1000 + 184);
        assert_eq!(&b[184..190], b"hvrun\0");
        assert_eq!(le32(&b, 16), 0x1000 + 192);
        assert_eq!(&b[192..], b"x86/vmexit.flat cpuid\0");
        // Nothing else is set: syms, drives, config table, APM, VBE, framebuffer.
        assert!(b[28..44].iter().chain(&b[52..64]).chain(&b[68..116]).all(|&x| x == 0));
    }

    #[test]
    fn no_modules_no_list() {
        let input = InfoInput {
            mem_lower_kib: 639,
            mem_upper_kib: 1024,
            cmdline: "",
            modules: &[],
            memory_map: &MAP,
            loader_name: "hvrun",
        };
        let b = build(0x1000, 0x7000, &input).unwrap();
        assert_eq!((le32(&b, 20), le32(&b, 24)), (0, 0));
        assert_eq!(le32(&b, 64), 0x1000 + 164);
        assert_eq!(le32(&b, 16), 0x1000 + 172);
        assert_eq!(&b[172..], b"\0");
        assert_eq!(le32(&b, 0) & INFO_MODS, INFO_MODS, "mods_count 0 is valid information");
    }

    #[test]
    fn errors() {
        let input = |cmdline| InfoInput {
            mem_lower_kib: 0,
            mem_upper_kib: 0,
            cmdline,
            modules: &[],
            memory_map: &MAP,
            loader_name: "hvrun",
        };
        let long = "x".repeat(0x7000);
        assert_eq!(build(0x1000, 0x7000, &input(&long)), Err(InfoError::TooBig { needed: 172 + 0x7001, room: 0x7000 }));
        assert_eq!(build(0x1000, 0x7000, &input("a\0b")), Err(InfoError::Nul { what: "command line" }));
        assert_eq!(build(0xffff_fff0, 0x7000, &input("")), Err(InfoError::Above4G(0x1_0000_0064)));
        let high = [Module { start: 0x1_0000_0000, end: 0x1_0000_1000, string: String::new() }];
        let with_high = InfoInput { modules: &high, ..input("") };
        assert_eq!(build(0x1000, 0x7000, &with_high), Err(InfoError::Above4G(0x1_0000_0000)));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let bytes = build(0x1000, 0x7000, &input("")).unwrap();
        assert_eq!(write(&mem, 0x1000, &bytes), Err(InfoError::Write(0x1000)));
    }

    #[test]
    fn write_puts_the_bytes_at_the_area_start() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let input =
            InfoInput { mem_lower_kib: 1, mem_upper_kib: 2, cmdline: "a", modules: &[], memory_map: &MAP, loader_name: "hvrun" };
        let expected = build(0x1000, 0x7000, &input).unwrap();
        assert_eq!(write(&mem, 0x1000, &expected).unwrap(), 0x1000);
        let mut got = vec![0u8; expected.len()];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, expected);
    }
}
