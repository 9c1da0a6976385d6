//! Kernel images: a bzImage (Documentation/x86/boot.rst) or an uncompressed ELF
//! `vmlinux`. The file is untrusted input, so [`probe`] checks everything it relies on
//! (signature, boot protocol, 64-bit capability, sizes against the file length) with
//! checked arithmetic before [`load`] lets linux-loader copy it into guest memory.
use crate::layout::{KERNEL_64BIT_ENTRY_OFFSET, KERNEL_START};
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr};
use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, ReadVolatile};

/// Boot protocol 2.12 (0x020c): the first with `XLF_KERNEL_64` in `xloadflags`, which
/// is how a bzImage says it has the 64-bit entry point we jump to.
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// The setup header lives at 0x1f1..0x26c of a bzImage ("HdrS" at 0x202).
const HDR_START: usize = 0x1f1;
const HDR_END: usize = HDR_START + std::mem::size_of::<setup_header>();
const HDR_MAGIC: u32 = 0x5372_6448;
/// Protocol 2.12 fields end with `init_size` at 0x260..0x264.
const HDR_END_2_12: usize = 0x264;
/// x86's COMMAND_LINE_SIZE is 2048 with the NUL; an ELF vmlinux has no header saying so.
const ELF_CMDLINE_MAX: u64 = 2047;
/// Where an ELF kernel may find its initrd (what current bzImages declare).
const ELF_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// A vmlinux has a handful of program headers; more is not a kernel.
const ELF_MAX_PHDRS: u16 = 64;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// What the image says about itself, checked.
#[derive(Clone, Copy, Debug)]
pub struct KernelInfo {
    pub format: KernelFormat,
    /// The bzImage setup header, cut to the length the image declares (boot.rst: copy
    /// 0x1f1 up to 0x202 + the byte at 0x201). None for ELF.
    pub header: Option<setup_header>,
    /// Boot protocol version (0 for ELF).
    pub protocol: u16,
    /// The 64-bit entry point (guest-physical).
    pub entry: u64,
    /// Guest-physical range the kernel occupies until it runs: the loaded image plus,
    /// for a bzImage, the `init_size` bytes its decompressor needs at the address it
    /// decompresses to (boot.rst `init_size`, `pref_address`).
    pub footprint: (u64, u64),
    /// Longest command line without the NUL (`cmdline_size`).
    pub cmdline_max: u64,
    /// Highest address the initrd may occupy (`initrd_addr_max`).
    pub initrd_addr_max: u64,
    /// `XLF_CAN_BE_LOADED_ABOVE_4G`.
    pub initrd_above_4g: bool,
    /// Size of the file.
    pub file_len: u64,
}

#[derive(Debug)]
pub enum KernelError {
    NotAKernel(&'static str),
    ProtocolTooOld(u16),
    Not64Bit,
    Truncated { expected: u64, actual: u64 },
    DoesNotFit { end: u64, limit: u64 },
    Io(io::Error),
    Load(linux_loader::loader::Error),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::NotAKernel(why) => write!(f, "not a Linux kernel image: {why}"),
            KernelError::ProtocolTooOld(v) => write!(
                f,
                "kernel boot protocol {}.{:02} is too old: the 64-bit entry needs 2.12 or later",
                v >> 8,
                v & 0xff
            ),
            KernelError::Not64Bit => write!(f, "kernel is not 64-bit capable (no XLF_KERNEL_64 / not ELF64)"),
            KernelError::Truncated { expected, actual } => {
                write!(f, "kernel file is truncated: {actual} bytes, its headers need {expected}")
            }
            KernelError::DoesNotFit { end, limit } => write!(
                f,
                "kernel does not fit in guest memory: it needs up to {end:#x}, RAM below the MMIO hole ends at {limit:#x}"
            ),
            KernelError::Io(e) => write!(f, "cannot read kernel: {e}"),
            KernelError::Load(e) => write!(f, "cannot load kernel: {e}"),
        }
    }
}

impl std::error::Error for KernelError {}

impl From<io::Error> for KernelError {
    fn from(e: io::Error) -> Self {
        KernelError::Io(e)
    }
}

/// Whether `head` (the file's first bytes) has a bzImage's "HdrS" at 0x202.
pub fn is_bzimage(head: &[u8]) -> bool {
    head.len() >= 0x206 && head[0x202..0x206] == HDR_MAGIC.to_le_bytes()
}

/// Whether `head` starts like an ELF64 file (what a vmlinux is).
pub fn is_elf64(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF") && head.get(4) == Some(&2)
}

/// Reads and checks the image's headers. Leaves the file position unspecified.
pub fn probe<F: Read + Seek>(file: &mut F) -> Result<KernelInfo, KernelError> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut head = vec![0u8; len.min(HDR_END as u64) as usize];
    file.read_exact(&mut head)?;
    if head.starts_with(b"\x7fELF") {
        return probe_elf(file, &head, len);
    }
    if is_bzimage(&head) {
        return probe_bzimage(&head, len);
    }
    Err(KernelError::NotAKernel("neither a bzImage (no \"HdrS\" at 0x202) nor an ELF file"))
}

fn probe_bzimage(head: &[u8], len: u64) -> Result<KernelInfo, KernelError> {
    if head.len() < HDR_END {
        return Err(KernelError::Truncated { expected: HDR_END as u64, actual: len });
    }
    // boot.rst: the header runs from 0x1f1 to 0x202 + the jump's displacement byte;
    // what follows is setup code, so it must not be taken for header fields.
    let declared_end = 0x202 + head[0x201] as usize;
    let mut bytes = head[HDR_START..HDR_END].to_vec();
    if declared_end < HDR_END {
        bytes[declared_end.saturating_sub(HDR_START)..].fill(0);
    }
    let mut hdr = setup_header::default();
    hdr.as_mut_slice().copy_from_slice(&bytes);

    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(KernelError::ProtocolTooOld(version));
    }
    if declared_end < HDR_END_2_12 {
        return Err(KernelError::NotAKernel("setup header shorter than its boot protocol version requires"));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(KernelError::NotAKernel("zImage (loaded low) images are not supported"));
    }
    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(KernelError::Not64Bit);
    }
    let setup_sects = if hdr.setup_sects == 0 { 4 } else { hdr.setup_sects as u64 };
    let setup_len = (setup_sects + 1) * 512;
    let syssize = hdr.syssize as u64;
    if syssize == 0 {
        return Err(KernelError::NotAKernel("empty protected-mode kernel (syssize 0)"));
    }
    let expected = setup_len + syssize * 16;
    if len < expected {
        return Err(KernelError::Truncated { expected, actual: len });
    }
    let loaded_end = KERNEL_START + (len - setup_len);

    // Where the decompressor will run (arch/x86/boot/compressed/head_64.S): a
    // relocatable kernel at the load address rounded up to kernel_alignment but not
    // below LOAD_PHYSICAL_ADDR (= pref_address), a fixed one at pref_address.
    let pref = hdr.pref_address;
    let run = if hdr.relocatable_kernel != 0 {
        let align = hdr.kernel_alignment as u64;
        if !align.is_power_of_two() {
            return Err(KernelError::NotAKernel("kernel_alignment is not a power of two"));
        }
        KERNEL_START.next_multiple_of(align).max(pref)
    } else {
        pref
    };
    if run < KERNEL_START {
        return Err(KernelError::NotAKernel("preferred load address below 1 MiB"));
    }
    let run_end =
        run.checked_add(hdr.init_size as u64).ok_or(KernelError::NotAKernel("preferred load address overflows"))?;

    Ok(KernelInfo {
        format: KernelFormat::BzImage,
        header: Some(hdr),
        protocol: version,
        entry: KERNEL_START + KERNEL_64BIT_ENTRY_OFFSET,
        footprint: (KERNEL_START, loaded_end.max(run_end)),
        cmdline_max: hdr.cmdline_size as u64,
        initrd_addr_max: hdr.initrd_addr_max as u64,
        initrd_above_4g: xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0,
        file_len: len,
    })
}

fn probe_elf<F: Read + Seek>(file: &mut F, head: &[u8], len: u64) -> Result<KernelInfo, KernelError> {
    let mut ehdr = Elf64_Ehdr::default();
    let ehdr_len = ehdr.as_slice().len();
    if head.len() < ehdr_len {
        return Err(KernelError::Truncated { expected: ehdr_len as u64, actual: len });
    }
    ehdr.as_mut_slice().copy_from_slice(&head[..ehdr_len]);
    if ehdr.e_ident[4] != 2 {
        return Err(KernelError::Not64Bit);
    }
    if ehdr.e_ident[5] != 1 {
        return Err(KernelError::NotAKernel("big-endian ELF"));
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(KernelError::NotAKernel("ELF file is not for x86-64"));
    }
    let phdr_len = std::mem::size_of::<Elf64_Phdr>();
    if ehdr.e_phentsize as usize != phdr_len {
        return Err(KernelError::NotAKernel("ELF program header size is wrong"));
    }
    if ehdr.e_phnum == 0 || ehdr.e_phnum > ELF_MAX_PHDRS {
        return Err(KernelError::NotAKernel("ELF file has no or too many program headers"));
    }
    let ph_end = ehdr
        .e_phoff
        .checked_add(ehdr.e_phnum as u64 * phdr_len as u64)
        .ok_or(KernelError::NotAKernel("ELF program header offset overflows"))?;
    if ehdr.e_phoff < ehdr_len as u64 {
        return Err(KernelError::NotAKernel("ELF program headers overlap the ELF header"));
    }
    if ph_end > len {
        return Err(KernelError::Truncated { expected: ph_end, actual: len });
    }
    file.seek(SeekFrom::Start(ehdr.e_phoff))?;
    let (mut lo, mut hi, mut file_end) = (u64::MAX, 0u64, 0u64);
    for _ in 0..ehdr.e_phnum {
        let mut ph = Elf64_Phdr::default();
        file.read_exact(ph.as_mut_slice())?;
        if ph.p_type != PT_LOAD || ph.p_filesz == 0 {
            continue;
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(KernelError::NotAKernel("ELF segment larger in the file than in memory"));
        }
        let end = ph.p_paddr.checked_add(ph.p_memsz).ok_or(KernelError::NotAKernel("ELF segment address overflows"))?;
        let fend =
            ph.p_offset.checked_add(ph.p_filesz).ok_or(KernelError::NotAKernel("ELF segment offset overflows"))?;
        if ph.p_paddr < KERNEL_START {
            return Err(KernelError::NotAKernel("ELF segment below 1 MiB would overwrite the boot structures"));
        }
        lo = lo.min(ph.p_paddr);
        hi = hi.max(end);
        file_end = file_end.max(fend);
    }
    if hi == 0 {
        return Err(KernelError::NotAKernel("ELF file has no loadable segment"));
    }
    if file_end > len {
        return Err(KernelError::Truncated { expected: file_end, actual: len });
    }
    if !(lo..hi).contains(&ehdr.e_entry) {
        return Err(KernelError::NotAKernel("ELF entry point outside its loaded segments"));
    }
    Ok(KernelInfo {
        format: KernelFormat::Elf,
        header: None,
        protocol: 0,
        entry: ehdr.e_entry,
        footprint: (lo, hi),
        cmdline_max: ELF_CMDLINE_MAX,
        initrd_addr_max: ELF_INITRD_ADDR_MAX,
        initrd_above_4g: false,
        file_len: len,
    })
}

/// Copies a probed kernel into guest memory: a bzImage's protected-mode part to
/// [`KERNEL_START`] (whatever its `code32_start` says), ELF segments to their physical
/// addresses. `low_ram_end` bounds the kernel's whole footprint.
pub fn load<F, M>(mem: &M, file: &mut F, info: &KernelInfo, low_ram_end: u64) -> Result<(), KernelError>
where
    F: Read + ReadVolatile + Seek,
    M: GuestMemoryBackend,
{
    if info.footprint.1 > low_ram_end {
        return Err(KernelError::DoesNotFit { end: info.footprint.1, limit: low_ram_end });
    }
    let res = match info.format {
        // No highmem check: it compares the file's code32_start, which we override.
        KernelFormat::BzImage => BzImage::load(mem, Some(GuestAddress(KERNEL_START)), file, None),
        KernelFormat::Elf => Elf::load(mem, None, file, Some(GuestAddress(KERNEL_START))),
    };
    let res = res.map_err(KernelError::Load)?;
    // The file may have changed since probe(); what was loaded must still be inside.
    if res.kernel_end > low_ram_end {
        return Err(KernelError::DoesNotFit { end: res.kernel_end, limit: low_ram_end });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    /// A minimal well-formed bzImage: 1 setup sector + `payload` bytes.
    pub(crate) fn fake_bzimage(version: u16, xlf: u16, payload: usize) -> Vec<u8> {
        let mut img = vec![0u8; 1024 + payload];
        img[0x1f1] = 1; // setup_sects
        img[0x1f4..0x1f8].copy_from_slice(&((payload as u32).div_ceil(16)).to_le_bytes());
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x200] = 0xeb;
        img[0x201] = 0x6a; // header ends at 0x26c
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = LOADED_HIGH;
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&xlf.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes());
        for (i, b) in img[1024..].iter_mut().enumerate() {
            *b = i as u8;
        }
        img
    }

    #[test]
    fn probes_a_well_formed_bzimage() {
        let img = fake_bzimage(0x020f, XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G, 0x1000);
        let info = probe(&mut Cursor::new(&img)).unwrap();
        assert_eq!(info.format, KernelFormat::BzImage);
        assert_eq!(info.protocol, 0x020f);
        assert_eq!(info.entry, 0x10_0200);
        assert_eq!(info.footprint, (0x10_0000, 0x110_0000));
        assert_eq!(info.cmdline_max, 2047);
        assert!(info.initrd_above_4g);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        load(&mem, &mut Cursor::new(&img), &info, 32 << 20).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(), 0x0302_0100);
        assert!(matches!(
            load(&mem, &mut Cursor::new(&img), &info, 16 << 20),
            Err(KernelError::DoesNotFit { end: 0x110_0000, limit: 0x100_0000 })
        ));
    }

    #[test]
    fn header_checks() {
        let p = |img: &[u8]| probe(&mut Cursor::new(img));
        assert!(matches!(p(&fake_bzimage(0x020b, 1, 16)), Err(KernelError::ProtocolTooOld(0x020b))));
        assert!(matches!(p(&fake_bzimage(0x020c, 0, 16)), Err(KernelError::Not64Bit)));
        let mut low = fake_bzimage(0x020c, 1, 16);
        low[0x211] = 0;
        assert!(matches!(p(&low), Err(KernelError::NotAKernel(_))));
        let mut short_hdr = fake_bzimage(0x020c, 1, 16);
        short_hdr[0x201] = 0x30;
        assert!(matches!(p(&short_hdr), Err(KernelError::NotAKernel(_))));
        let img = fake_bzimage(0x020c, 1, 0x100);
        assert!(matches!(p(&img[..img.len() - 1]), Err(KernelError::Truncated { expected: 0x500, actual: 0x4ff })));
        assert!(matches!(p(&img[..0x210]), Err(KernelError::Truncated { expected: 0x26c, actual: 0x210 })));
        assert!(matches!(p(b"MZ not a kernel"), Err(KernelError::NotAKernel(_))));
        assert!(matches!(p(b""), Err(KernelError::NotAKernel(_))));
        let mut huge_pref = fake_bzimage(0x020c, 1, 16);
        huge_pref[0x258..0x260].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(p(&huge_pref), Err(KernelError::NotAKernel(_))));
    }

    #[test]
    fn header_bytes_past_the_declared_end_are_dropped() {
        let mut img = fake_bzimage(0x020c, 1, 16);
        img[0x201] = 0x62; // header ends at 0x264 (protocol 2.12 layout)
        img[0x264..0x26c].copy_from_slice(&[0xaa; 8]);
        let hdr = probe(&mut Cursor::new(&img)).unwrap().header.unwrap();
        let (handover, info) = (hdr.handover_offset, hdr.kernel_info_offset);
        assert_eq!((handover, info), (0, 0));
        assert_eq!({ hdr.init_size }, 0x10_0000);
    }

    /// An ELF64 x86-64 image with one PT_LOAD of `payload` bytes at `paddr`.
    pub(crate) fn fake_elf(paddr: u64, payload: usize) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000 + payload];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = 2;
        img[5] = 1;
        img[6] = 1;
        img[16..18].copy_from_slice(&2u16.to_le_bytes());
        img[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        img[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        img[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        img[52..54].copy_from_slice(&64u16.to_le_bytes());
        img[54..56].copy_from_slice(&56u16.to_le_bytes());
        img[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        img[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        img[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
        img[ph + 16..ph + 24].copy_from_slice(&(0xffff_ffff_8000_0000 + paddr).to_le_bytes());
        img[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        img[ph + 32..ph + 40].copy_from_slice(&(payload as u64).to_le_bytes());
        img[ph + 40..ph + 48].copy_from_slice(&(2 * payload as u64).to_le_bytes());
        img[0x1000..].fill(0x90);
        img
    }

    #[test]
    fn probes_and_loads_an_elf_vmlinux() {
        let img = fake_elf(0x100_0000, 0x2000);
        let info = probe(&mut Cursor::new(&img)).unwrap();
        assert_eq!(info.format, KernelFormat::Elf);
        assert_eq!(info.entry, 0x100_0000);
        assert_eq!(info.footprint, (0x100_0000, 0x100_4000));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        load(&mem, &mut Cursor::new(&img), &info, 32 << 20).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x100_1fff)).unwrap(), 0x90);

        let p = |img: &[u8]| probe(&mut Cursor::new(img));
        assert!(matches!(p(&img[..0x2fff]), Err(KernelError::Truncated { expected: 0x3000, actual: 0x2fff })));
        assert!(matches!(p(&img[..40]), Err(KernelError::Truncated { expected: 64, actual: 40 })));
        assert!(matches!(p(&fake_elf(0x8000, 16)), Err(KernelError::NotAKernel(_))));
        let mut elf32 = img.clone();
        elf32[4] = 1;
        assert!(matches!(p(&elf32), Err(KernelError::Not64Bit)));
        let mut many = img.clone();
        many[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(p(&many), Err(KernelError::NotAKernel(_))));
    }
}
