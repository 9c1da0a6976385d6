//! 32-bit x86 ELF executables (what a multiboot v1 image without the a.out kludge is,
//! Multiboot specification 0.6.96 section 3.1.3): the file header and the loadable
//! segments of its program header table (System V ABI, "ELF Header" and "Program
//! Header"; the i386 supplement fixes EM_386, little-endian, 32-bit classes).
//!
//! linux-loader reads ELF64 only, so this is a small hand-written reader. The file is
//! untrusted: [`probe`] checks every field it relies on against the file's length with
//! checked arithmetic, refuses segments that overlap each other or leave guest RAM,
//! and [`load`] copies exactly what [`probe`] checked.
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

/// `e_ident`: "\x7fELF", then class, data encoding and version.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const EI_VERSION: usize = 6;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
/// `e_type`: an executable (not relocatable, not shared).
const ET_EXEC: u16 = 2;
/// `e_machine`: Intel 80386.
const EM_386: u16 = 3;
/// `p_type` of a loadable segment.
const PT_LOAD: u32 = 1;

/// Size of the ELF32 file header and of one program header entry.
pub const EHDR_SIZE: usize = 52;
pub const PHDR_SIZE: usize = 32;
/// Field offsets in the file header.
const E_TYPE: usize = 16;
const E_MACHINE: usize = 18;
const E_ENTRY: usize = 24;
const E_PHOFF: usize = 28;
const E_PHENTSIZE: usize = 42;
const E_PHNUM: usize = 44;
/// Field offsets in a program header.
const P_TYPE: usize = 0;
const P_OFFSET: usize = 4;
const P_PADDR: usize = 12;
const P_VADDR: usize = 8;
const P_FILESZ: usize = 16;
const P_MEMSZ: usize = 20;

/// A test guest has two or three program headers; a table this long is not one.
pub const MAX_PHDRS: u16 = 64;
/// The bss is cleared in pieces of this size.
const ZERO_CHUNK: usize = 64 << 10;

/// A loadable segment, checked: `file_size <= mem_size`, the file bytes inside the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    /// Guest-physical load address (`p_paddr`): multiboot loads by physical address.
    pub paddr: u64,
    pub file_size: u64,
    pub mem_size: u64,
}

impl Segment {
    pub const fn end(&self) -> u64 {
        self.paddr + self.mem_size
    }
}

/// What [`probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The guest-physical entry point (`e_entry` translated through the segment that
    /// holds it, as a multiboot loader must when virtual and physical addresses differ).
    pub entry: u64,
    /// PT_LOAD segments with a non-zero memory size, by ascending `paddr`.
    pub segments: Vec<Segment>,
    pub file_len: u64,
}

impl Image {
    /// The lowest and highest guest-physical byte (exclusive) the image occupies.
    pub fn footprint(&self) -> (u64, u64) {
        let start = self.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
        let end = self.segments.iter().map(Segment::end).max().unwrap_or(0);
        (start, end)
    }
}

#[derive(Debug)]
pub enum Elf32Error {
    NotElf,
    /// An ELF file, but not a 32-bit little-endian i386 executable: what it is instead.
    Unsupported(&'static str),
    Truncated { expected: u64, actual: u64 },
    BadProgramHeaders(&'static str),
    /// Program header `index` is not loadable as it stands.
    BadSegment { index: usize, reason: &'static str },
    Overlap { a: (u64, u64), b: (u64, u64) },
    EntryOutside(u64),
    Io(io::Error),
    Write(u64),
}

impl fmt::Display for Elf32Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elf32Error::NotElf => write!(f, "not an ELF file (no \\x7fELF at offset 0)"),
            Elf32Error::Unsupported(what) => write!(f, "unsupported ELF file: {what}"),
            Elf32Error::Truncated { expected, actual } => {
                write!(f, "ELF file is truncated: {actual} bytes, its headers need {expected}")
            }
            Elf32Error::BadProgramHeaders(why) => write!(f, "bad ELF program header table: {why}"),
            Elf32Error::BadSegment { index, reason } => write!(f, "bad ELF program header {index}: {reason}"),
            Elf32Error::Overlap { a, b } => write!(
                f,
                "ELF segments overlap: {:#x}..{:#x} and {:#x}..{:#x}",
                a.0, a.1, b.0, b.1
            ),
            Elf32Error::EntryOutside(e) => write!(f, "ELF entry point {e:#x} is in no loadable segment"),
            Elf32Error::Io(e) => write!(f, "cannot read the ELF file: {e}"),
            Elf32Error::Write(a) => write!(f, "cannot write an ELF segment at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for Elf32Error {}

impl From<io::Error> for Elf32Error {
    fn from(e: io::Error) -> Self {
        Elf32Error::Io(e)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether the file starts like an ELF file of any class.
pub fn is_elf(head: &[u8]) -> bool {
    head.starts_with(&ELF_MAGIC)
}

/// Reads and checks the headers of a 32-bit i386 executable. Every loadable segment
/// must end at or below `limit` (the end of the RAM it may go to). Leaves the file
/// position unspecified.
pub fn probe<F: Read + Seek>(file: &mut F, limit: u64) -> Result<Image, Elf32Error> {
    let file_len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut ehdr = [0u8; EHDR_SIZE];
    let head_len = file_len.min(EHDR_SIZE as u64) as usize;
    file.read_exact(&mut ehdr[..head_len])?;
    if !is_elf(&ehdr[..head_len]) {
        return Err(Elf32Error::NotElf);
    }
    if head_len < EHDR_SIZE {
        return Err(Elf32Error::Truncated { expected: EHDR_SIZE as u64, actual: file_len });
    }
    match ehdr[EI_CLASS] {
        ELFCLASS32 => {}
        ELFCLASS64 => return Err(Elf32Error::Unsupported("64-bit (multiboot v1 loads 32-bit ELF images)")),
        _ => return Err(Elf32Error::Unsupported("unknown ELF class")),
    }
    if ehdr[EI_DATA] != ELFDATA2LSB {
        return Err(Elf32Error::Unsupported("not little-endian"));
    }
    if ehdr[EI_VERSION] != EV_CURRENT {
        return Err(Elf32Error::Unsupported("unknown ELF version"));
    }
    if u16_at(&ehdr, E_TYPE) != ET_EXEC {
        return Err(Elf32Error::Unsupported("not an executable (e_type is not ET_EXEC)"));
    }
    if u16_at(&ehdr, E_MACHINE) != EM_386 {
        return Err(Elf32Error::Unsupported("not an i386 image (e_machine is not EM_386)"));
    }
    let phnum = u16_at(&ehdr, E_PHNUM);
    if phnum == 0 {
        return Err(Elf32Error::BadProgramHeaders("no program headers"));
    }
    if phnum > MAX_PHDRS {
        return Err(Elf32Error::BadProgramHeaders("more than 64 program headers"));
    }
    if u16_at(&ehdr, E_PHENTSIZE) as usize != PHDR_SIZE {
        return Err(Elf32Error::BadProgramHeaders("e_phentsize is not 32"));
    }
    let phoff = u64::from(u32_at(&ehdr, E_PHOFF));
    let table_end = phoff + u64::from(phnum) * PHDR_SIZE as u64;
    if table_end > file_len {
        return Err(Elf32Error::Truncated { expected: table_end, actual: file_len });
    }
    let mut table = vec![0u8; usize::from(phnum) * PHDR_SIZE];
    file.seek(SeekFrom::Start(phoff))?;
    file.read_exact(&mut table)?;

    let mut segments = Vec::new();
    for (index, ph) in table.chunks_exact(PHDR_SIZE).enumerate() {
        if u32_at(ph, P_TYPE) != PT_LOAD {
            continue;
        }
        let bad = |reason| Err(Elf32Error::BadSegment { index, reason });
        // All fields are 32-bit, so sums in u64 cannot overflow.
        let seg = Segment {
            offset: u64::from(u32_at(ph, P_OFFSET)),
            vaddr: u64::from(u32_at(ph, P_VADDR)),
            paddr: u64::from(u32_at(ph, P_PADDR)),
            file_size: u64::from(u32_at(ph, P_FILESZ)),
            mem_size: u64::from(u32_at(ph, P_MEMSZ)),
        };
        if seg.file_size > seg.mem_size {
            return bad("file size larger than memory size");
        }
        if seg.offset + seg.file_size > file_len {
            return Err(Elf32Error::Truncated { expected: seg.offset + seg.file_size, actual: file_len });
        }
        if seg.mem_size == 0 {
            continue;
        }
        if seg.end() > limit {
            return bad("does not fit in guest RAM below the MMIO hole");
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(Elf32Error::BadProgramHeaders("no loadable segment"));
    }
    segments.sort_by_key(|s| s.paddr);
    for pair in segments.windows(2) {
        if pair[0].end() > pair[1].paddr {
            return Err(Elf32Error::Overlap {
                a: (pair[0].paddr, pair[0].end()),
                b: (pair[1].paddr, pair[1].end()),
            });
        }
    }
    let e_entry = u64::from(u32_at(&ehdr, E_ENTRY));
    let entry = segments
        .iter()
        .find(|s| (s.vaddr..s.vaddr + s.mem_size).contains(&e_entry))
        .map(|s| s.paddr + (e_entry - s.vaddr))
        .ok_or(Elf32Error::EntryOutside(e_entry))?;
    Ok(Image { entry, segments, file_len })
}

/// Copies the segments [`probe`] checked into guest memory and clears their bss.
pub fn load<F, M>(mem: &M, file: &mut F, image: &Image) -> Result<(), Elf32Error>
where
    F: Read + ReadVolatile + Seek,
    M: GuestMemoryBackend,
{
    // The file may have changed since probe(): what is read must still be there.
    let len = file.seek(SeekFrom::End(0))?;
    if len != image.file_len {
        return Err(Elf32Error::Truncated { expected: image.file_len, actual: len });
    }
    let zeros = vec![0u8; ZERO_CHUNK];
    for seg in &image.segments {
        file.seek(SeekFrom::Start(seg.offset))?;
        let at = GuestAddress(seg.paddr);
        // Segments are at most 4 GiB and were checked to fit, so usize holds the size.
        mem.read_exact_volatile_from(at, file, seg.file_size as usize).map_err(|_| Elf32Error::Write(seg.paddr))?;
        let mut addr = seg.paddr + seg.file_size;
        while addr < seg.end() {
            let n = (seg.end() - addr).min(ZERO_CHUNK as u64) as usize;
            mem.write_slice(&zeros[..n], GuestAddress(addr)).map_err(|_| Elf32Error::Write(addr))?;
            addr += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::GuestMemoryMmap;

    /// An i386 executable: the header, `segments` program headers at 52, their bytes
    /// (filled with the segment's index + 1) from offset 0x1000 on.
    pub(crate) fn fake_elf32(entry: u32, segments: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[..4].copy_from_slice(&ELF_MAGIC);
        img[EI_CLASS] = ELFCLASS32;
        img[EI_DATA] = ELFDATA2LSB;
        img[EI_VERSION] = EV_CURRENT;
        img[E_TYPE..E_TYPE + 2].copy_from_slice(&ET_EXEC.to_le_bytes());
        img[E_MACHINE..E_MACHINE + 2].copy_from_slice(&EM_386.to_le_bytes());
        img[E_ENTRY..E_ENTRY + 4].copy_from_slice(&entry.to_le_bytes());
        img[E_PHOFF..E_PHOFF + 4].copy_from_slice(&(EHDR_SIZE as u32).to_le_bytes());
        img[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        img[E_PHNUM..E_PHNUM + 2].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, &(paddr, file_size, mem_size)) in segments.iter().enumerate() {
            let offset = img.len() as u32;
            let ph = EHDR_SIZE + i * PHDR_SIZE;
            img[ph + P_TYPE..ph + P_TYPE + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            img[ph + P_OFFSET..ph + P_OFFSET + 4].copy_from_slice(&offset.to_le_bytes());
            img[ph + P_VADDR..ph + P_VADDR + 4].copy_from_slice(&paddr.to_le_bytes());
            img[ph + P_PADDR..ph + P_PADDR + 4].copy_from_slice(&paddr.to_le_bytes());
            img[ph + P_FILESZ..ph + P_FILESZ + 4].copy_from_slice(&file_size.to_le_bytes());
            img[ph + P_MEMSZ..ph + P_MEMSZ + 4].copy_from_slice(&mem_size.to_le_bytes());
            img.extend(std::iter::repeat_n(i as u8 + 1, file_size as usize));
        }
        img
    }

    const LIMIT: u64 = 64 << 20;

    fn probe_bytes(img: &[u8]) -> Result<Image, Elf32Error> {
        probe(&mut Cursor::new(img), LIMIT)
    }

    #[test]
    fn loads_segments_and_clears_bss() {
        let img = fake_elf32(0x40_0010, &[(0x40_0000, 0x100, 0x100), (0x40_1000, 0x10, 0x2_0000)]);
        let image = probe_bytes(&img).unwrap();
        assert_eq!(image.entry, 0x40_0010);
        assert_eq!(image.footprint(), (0x40_0000, 0x42_1000));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), LIMIT as usize)]).unwrap();
        // Stale bytes where the bss goes: load must clear them.
        mem.write_slice(&[0xaa; 0x100], GuestAddress(0x41_0000)).unwrap();
        load(&mem, &mut Cursor::new(&img), &image).unwrap();
        let mut bytes = [0u8; 0x20];
        mem.read_slice(&mut bytes, GuestAddress(0x40_00f0)).unwrap();
        assert_eq!(bytes, [[1u8; 0x10], [0u8; 0x10]].concat()[..]);
        mem.read_slice(&mut bytes, GuestAddress(0x40_1000)).unwrap();
        assert_eq!(bytes, [[2u8; 0x10], [0u8; 0x10]].concat()[..]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x41_0000)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x42_0fff)).unwrap(), 0);
    }

    #[test]
    fn entry_is_translated_to_its_physical_address() {
        let mut img = fake_elf32(0xc000_0020, &[(0x10_0000, 0x40, 0x40)]);
        let ph = EHDR_SIZE;
        img[ph + P_VADDR..ph + P_VADDR + 4].copy_from_slice(&0xc000_0000u32.to_le_bytes());
        assert_eq!(probe_bytes(&img).unwrap().entry, 0x10_0020);
        let outside = fake_elf32(0x50_0000, &[(0x10_0000, 0x40, 0x40)]);
        assert!(matches!(probe_bytes(&outside), Err(Elf32Error::EntryOutside(0x50_0000))));
    }

    #[test]
    fn hostile_headers_are_errors() {
        let good = fake_elf32(0x40_0000, &[(0x40_0000, 0x10, 0x10)]);
        assert!(probe_bytes(&good).is_ok());
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut img = good.clone();
            f(&mut img);
            probe_bytes(&img)
        };
        let ph = EHDR_SIZE;
        assert!(matches!(probe_bytes(b"MZ"), Err(Elf32Error::NotElf)));
        assert!(matches!(probe_bytes(b""), Err(Elf32Error::NotElf)));
        assert!(matches!(probe_bytes(&good[..40]), Err(Elf32Error::Truncated { expected: 52, actual: 40 })));
        assert!(matches!(with(&|i| i[EI_CLASS] = ELFCLASS64), Err(Elf32Error::Unsupported(_))));
        assert!(matches!(with(&|i| i[EI_CLASS] = 7), Err(Elf32Error::Unsupported(_))));
        assert!(matches!(with(&|i| i[EI_DATA] = 2), Err(Elf32Error::Unsupported(_))));
        assert!(matches!(with(&|i| i[EI_VERSION] = 0), Err(Elf32Error::Unsupported(_))));
        assert!(matches!(with(&|i| i[E_TYPE] = 3), Err(Elf32Error::Unsupported(_))));
        assert!(matches!(with(&|i| i[E_MACHINE] = 62), Err(Elf32Error::Unsupported(_))));
        assert!(matches!(with(&|i| i[E_PHNUM] = 0), Err(Elf32Error::BadProgramHeaders(_))));
        assert!(matches!(with(&|i| i[E_PHNUM] = 65), Err(Elf32Error::BadProgramHeaders(_))));
        assert!(matches!(with(&|i| i[E_PHENTSIZE] = 56), Err(Elf32Error::BadProgramHeaders(_))));
        // The table past the end of the file, or at an offset that would wrap in 32 bits.
        assert!(matches!(
            with(&|i| i[E_PHOFF..E_PHOFF + 4].copy_from_slice(&0x1000u32.to_le_bytes())),
            Err(Elf32Error::Truncated { expected: 0x1020, actual: 0x1010 })
        ));
        assert!(matches!(
            with(&|i| i[E_PHOFF..E_PHOFF + 4].copy_from_slice(&u32::MAX.to_le_bytes())),
            Err(Elf32Error::Truncated { .. })
        ));
        // Segment bytes beyond the file; a file size above the memory size.
        assert!(matches!(
            with(&|i| i[ph + P_FILESZ..ph + P_FILESZ + 4].copy_from_slice(&u32::MAX.to_le_bytes())),
            Err(Elf32Error::BadSegment { index: 0, .. })
        ));
        assert!(matches!(
            with(&|i| {
                i[ph + P_FILESZ..ph + P_FILESZ + 4].copy_from_slice(&0x1000u32.to_le_bytes());
                i[ph + P_MEMSZ..ph + P_MEMSZ + 4].copy_from_slice(&0x1000u32.to_le_bytes());
            }),
            Err(Elf32Error::Truncated { expected: 0x2000, actual: 0x1010 })
        ));
        // A segment reaching past the RAM limit, or the top of the 32-bit space.
        assert!(matches!(
            with(&|i| i[ph + P_MEMSZ..ph + P_MEMSZ + 4].copy_from_slice(&u32::MAX.to_le_bytes())),
            Err(Elf32Error::BadSegment { index: 0, .. })
        ));
        assert!(matches!(
            with(&|i| i[ph + P_PADDR..ph + P_PADDR + 4].copy_from_slice(&0xffff_fff8u32.to_le_bytes())),
            Err(Elf32Error::BadSegment { index: 0, .. })
        ));
        // Only non-loadable headers.
        assert!(matches!(with(&|i| i[ph + P_TYPE] = 4), Err(Elf32Error::BadProgramHeaders(_))));
    }

    #[test]
    fn overlapping_segments_are_refused() {
        let img = fake_elf32(0x40_0000, &[(0x40_0000, 0x10, 0x2000), (0x40_1000, 0x10, 0x10)]);
        assert!(matches!(
            probe_bytes(&img),
            Err(Elf32Error::Overlap { a: (0x40_0000, 0x40_2000), b: (0x40_1000, 0x40_1010) })
        ));
        // Adjacent is fine; so is an empty segment anywhere.
        let img = fake_elf32(0x40_0000, &[(0x40_1000, 0x10, 0x10), (0x40_0000, 0x10, 0x1000), (0x40_0800, 0, 0)]);
        assert_eq!(probe_bytes(&img).unwrap().segments.len(), 2);
    }

    #[test]
    fn a_file_that_changed_since_probe_is_not_loaded() {
        let img = fake_elf32(0x40_0000, &[(0x40_0000, 0x10, 0x10)]);
        let image = probe_bytes(&img).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), LIMIT as usize)]).unwrap();
        assert!(matches!(load(&mem, &mut Cursor::new(&img[..0x1008]), &image), Err(Elf32Error::Truncated { .. })));
    }
}
