//! The zero page (`struct boot_params`, arch/x86/include/uapi/asm/bootparam.h): what a
//! 64-bit entry hands the kernel in RSI. boot.rst "64-bit BOOT PROTOCOL": start from a
//! zeroed boot_params, copy the image's setup header into it, then fill in the fields a
//! boot loader owns ("Details of header fields", "zero page" table in zero-page.rst).
use crate::e820::E820Entry;
use crate::layout::ZERO_PAGE_START;
use linux_loader::loader::bootparam::{boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE};
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// `type_of_loader` 0xff: "undefined" boot loader ID (boot.rst, type_of_loader).
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448;
/// For an ELF vmlinux, which carries no setup header: the x86_64 default alignment.
const ELF_KERNEL_ALIGNMENT: u32 = 0x20_0000;

#[derive(Debug, PartialEq, Eq)]
pub enum ZeroPageError {
    TooManyE820Entries(usize),
    Write(u64),
}

impl fmt::Display for ZeroPageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZeroPageError::TooManyE820Entries(n) => {
                write!(f, "{n} e820 entries do not fit the zero page (max {E820_MAX_ENTRIES_ZEROPAGE})")
            }
            ZeroPageError::Write(a) => write!(f, "cannot write the zero page at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for ZeroPageError {}

/// What the loader tells the kernel.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPageConfig<'a> {
    /// The image's setup header (bzImage), or None for an ELF kernel.
    pub header: Option<setup_header>,
    pub cmdline_addr: u64,
    /// (address, size) of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// The ACPI RSDP (boot_params.acpi_rsdp_addr at 0x070, protocol 2.14+ semantics;
    /// older kernels find it by scanning 0xe0000..0xfffff).
    pub rsdp_addr: u64,
    pub e820: &'a [E820Entry],
}

/// Builds the zero page.
pub fn build(cfg: &ZeroPageConfig) -> Result<boot_params, ZeroPageError> {
    if cfg.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(ZeroPageError::TooManyE820Entries(cfg.e820.len()));
    }
    let mut bp = boot_params::default();
    let mut hdr = cfg.header.unwrap_or(setup_header {
        boot_flag: BOOT_FLAG,
        header: HDR_MAGIC,
        kernel_alignment: ELF_KERNEL_ALIGNMENT,
        ..Default::default()
    });
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.cmd_line_ptr = cfg.cmdline_addr as u32;
    let (image, size) = cfg.initrd.unwrap_or((0, 0));
    hdr.ramdisk_image = image as u32;
    hdr.ramdisk_size = size as u32;
    // Pointers and platform selectors from the (untrusted) image are not followed: no
    // setup_data list, the plain PC subarchitecture.
    hdr.setup_data = 0;
    hdr.hardware_subarch = 0;
    hdr.hardware_subarch_data = 0;
    bp.hdr = hdr;
    bp.ext_cmd_line_ptr = (cfg.cmdline_addr >> 32) as u32;
    bp.ext_ramdisk_image = (image >> 32) as u32;
    bp.ext_ramdisk_size = (size >> 32) as u32;
    bp.acpi_rsdp_addr = cfg.rsdp_addr;
    for (slot, e) in bp.e820_table.iter_mut().zip(cfg.e820) {
        *slot = (*e).into();
    }
    bp.e820_entries = cfg.e820.len() as u8;
    Ok(bp)
}

/// Builds the zero page and writes it at [`ZERO_PAGE_START`]; returns that address.
pub fn write<M: GuestMemoryBackend>(mem: &M, cfg: &ZeroPageConfig) -> Result<u64, ZeroPageError> {
    let bp = build(cfg)?;
    mem.write_obj(bp, GuestAddress(ZERO_PAGE_START)).map_err(|_| ZeroPageError::Write(ZERO_PAGE_START))?;
    Ok(ZERO_PAGE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::build_e820;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn fields_land_at_their_zero_page_offsets() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let e820 = build_e820(256 << 20).unwrap();
        let hdr = setup_header { version: 0x20f, setup_data: 0xdead, header: HDR_MAGIC, ..Default::default() };
        let cfg = ZeroPageConfig {
            header: Some(hdr),
            cmdline_addr: 0x20000,
            initrd: Some((0xff0_0000, 0x1234)),
            rsdp_addr: 0xe0000,
            e820: &e820,
        };
        assert_eq!(write(&mem, &cfg).unwrap(), 0x7000);
        let mut zp = [0u8; 4096];
        mem.read_slice(&mut zp, GuestAddress(0x7000)).unwrap();
        let u32at = |o: usize| u32::from_le_bytes(zp[o..o + 4].try_into().unwrap());
        let u64at = |o: usize| u64::from_le_bytes(zp[o..o + 8].try_into().unwrap());
        assert_eq!(u64at(0x070), 0xe0000, "acpi_rsdp_addr");
        assert_eq!(zp[0x1e8], 5, "e820_entries");
        assert_eq!(u32at(0x202), HDR_MAGIC);
        assert_eq!(zp[0x206..0x208], [0x0f, 0x02], "version");
        assert_eq!(zp[0x210], 0xff, "type_of_loader");
        assert_eq!(u32at(0x218), 0xff0_0000, "ramdisk_image");
        assert_eq!(u32at(0x21c), 0x1234, "ramdisk_size");
        assert_eq!(u32at(0x228), 0x20000, "cmd_line_ptr");
        assert_eq!(u64at(0x250), 0, "setup_data from the image is dropped");
        // e820_table at 0x2d0, 20 bytes per entry.
        assert_eq!(&zp[0x2d0..0x2e4], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfc, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&zp[0x2f8..0x30c], &[0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0xf, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(u64at(0x2d0 + 4 * 20), 0xfee0_0000);
        assert_eq!(zp[0x2d0 + 5 * 20..0xcd0].iter().filter(|b| **b != 0).count(), 0);
    }

    #[test]
    fn elf_kernels_get_a_synthesized_header() {
        let bp = build(&ZeroPageConfig { header: None, cmdline_addr: 0x20000, initrd: None, rsdp_addr: 0, e820: &[] })
            .unwrap();
        let (flag, magic, loader, align) =
            (bp.hdr.boot_flag, bp.hdr.header, bp.hdr.type_of_loader, bp.hdr.kernel_alignment);
        assert_eq!((flag, magic, loader, align), (0xaa55, HDR_MAGIC, 0xff, 0x20_0000));
        let too_many = vec![E820Entry { addr: 0, size: 1, kind: 1 }; 129];
        let cfg = ZeroPageConfig { header: None, cmdline_addr: 0, initrd: None, rsdp_addr: 0, e820: &too_many };
        assert_eq!(build(&cfg).unwrap_err(), ZeroPageError::TooManyE820Entries(129));
    }
}
