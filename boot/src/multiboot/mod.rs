//! Multiboot (v1) boot (Multiboot specification 0.6.96): what kvm-unit-tests' `x86/*.flat`
//! test guests are. The image's header ([`header`]) says it wants to be booted this way;
//! its ELF32 segments are loaded where they say ([`crate::elf32`]), an optional module
//! (hvrun's INITRD argument) goes page-aligned at the top of low RAM, the information
//! structure ([`info`]) describes memory, the command line and the module, and the
//! image is entered in 32-bit protected mode ([`crate::entry::multiboot_32bit`]).
//!
//! The machine is the one Linux gets: the same memory map, ACPI and MP tables, devices.
pub mod header;
pub mod info;

pub use header::{Header, HeaderError};
pub use info::{InfoError, Module};

use crate::e820::{build_e820, E820Entry, E820_RAM};
use crate::elf32::{self, Elf32Error, Image};
use crate::gdt::{self, FLAT32_GDT};
use crate::layout::*;
use crate::{acpi, entry, initrd, irq, mptable, BootError, VirtioMmioDevice};
use std::fmt;
use std::io::{Read, Seek};
use vm_memory::{GuestMemoryBackend, ReadVolatile};
use vmm::entry::EntryState;

/// `boot_loader_name` (3.3): who started the image.
pub const LOADER_NAME: &str = "hvrun";
/// Modules must end below 4 GiB: the structure holds 32-bit addresses.
const MODULE_ADDR_MAX: u64 = u32::MAX as u64;
/// `mem_lower` counts at most the 640 KiB of conventional memory (3.3).
const MEM_LOWER_MAX_KIB: u64 = 640;
const KIB: u64 = 1024;

/// Where everything went, and how the boot vCPU starts.
#[derive(Clone, Debug)]
pub struct MultibootBoot {
    pub entry: EntryState,
    pub image: Image,
    /// The information structure's address (EBX).
    pub info: u64,
    /// The module, (address, size).
    pub module: Option<(u64, u64)>,
    pub rsdp: u64,
    pub mptable: u64,
    pub e820: Vec<E820Entry>,
}

#[derive(Debug)]
pub enum MultibootError {
    Elf(Elf32Error),
    /// A segment lies partly outside RAM (in the BIOS area that holds the MP and ACPI
    /// tables, for one).
    NotRam { segment: (u64, u64) },
    /// A segment lies over a structure hvrun writes for the boot.
    Overlap { segment: (u64, u64), what: &'static str, range: (u64, u64) },
    Info(InfoError),
}

impl fmt::Display for MultibootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultibootError::Elf(e) => write!(f, "multiboot image: {e}"),
            MultibootError::NotRam { segment } => write!(
                f,
                "multiboot image segment {:#x}..{:#x} is not in guest RAM (0..{EBDA_START:#x}, and from {KERNEL_START:#x} to the end of low memory)",
                segment.0, segment.1
            ),
            MultibootError::Overlap { segment, what, range } => write!(
                f,
                "multiboot image segment {:#x}..{:#x} overlaps {what} at {:#x}..{:#x}",
                segment.0, segment.1, range.0, range.1
            ),
            MultibootError::Info(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for MultibootError {}

impl From<MultibootError> for BootError {
    fn from(e: MultibootError) -> Self {
        BootError::Multiboot(e)
    }
}

/// The structures hvrun writes below the image, which its segments must leave alone.
pub const RESERVED: [(&str, (u64, u64)); 2] = [
    ("the boot GDT", (GDT_START, GDT_START + 8 * FLAT32_GDT.len() as u64)),
    ("the multiboot information area", (MULTIBOOT_INFO_START, MULTIBOOT_INFO_END)),
];

/// Every segment inside one RAM range of `e820` and clear of [`RESERVED`].
pub fn check_placement(image: &Image, e820: &[E820Entry]) -> Result<(), MultibootError> {
    for seg in &image.segments {
        let segment = (seg.paddr, seg.end());
        if !e820.iter().any(|e| e.kind == E820_RAM && e.addr <= segment.0 && segment.1 <= e.end()) {
            return Err(MultibootError::NotRam { segment });
        }
        for (what, range) in RESERVED {
            if segment.0 < range.1 && range.0 < segment.1 {
                return Err(MultibootError::Overlap { segment, what, range });
            }
        }
    }
    Ok(())
}

/// `mem_lower` and `mem_upper` (3.3) from the memory map: KiB of RAM from 0, and from
/// 1 MiB up to the first hole.
pub fn mem_lower_upper(e820: &[E820Entry]) -> (u32, u32) {
    let ram_at = |addr| e820.iter().find(|e| e.kind == E820_RAM && e.addr == addr).map_or(0, |e| e.size);
    let lower = (ram_at(0) / KIB).min(MEM_LOWER_MAX_KIB);
    let upper = (ram_at(KERNEL_START) / KIB).min(u64::from(u32::MAX));
    (lower as u32, upper as u32)
}

/// Boots the multiboot image `kernel` (whose `header` [`header::find`] accepted) in
/// `mem` (`mem_size` bytes laid out as [`vmm::memory::ram_ranges`]) for `vcpus` vCPUs and
/// the given virtio-mmio devices: `module` is a file and its string, `cmdline` the
/// whole command line (by convention the image's name first, as GRUB and QEMU pass it).
/// Everything is checked before guest memory is written.
#[allow(clippy::too_many_arguments)]
pub fn load_multiboot<M, F>(
    mem: &M,
    mem_size: u64,
    kernel: &mut F,
    header: Header,
    module: Option<(&mut F, &str)>,
    cmdline: &str,
    vcpus: u32,
    virtio_mmio: &[VirtioMmioDevice],
) -> Result<MultibootBoot, BootError>
where
    M: GuestMemoryBackend,
    F: Read + Seek + ReadVolatile,
{
    crate::check_memory(mem, mem_size)?;
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(BootError::Vcpus(vcpus));
    }
    crate::check_devices(virtio_mmio)?;
    let low_end = low_ram_end(mem_size);

    let image = elf32::probe(kernel, low_end).map_err(MultibootError::Elf)?;
    let e820 = build_e820(mem_size)?;
    check_placement(&image, &e820)?;
    let module = match module {
        Some((file, string)) => {
            let size = initrd::file_size(file)?;
            let addr = initrd::placement(size, low_end, MODULE_ADDR_MAX, false, image.footprint().1)?;
            Some((file, Module { start: addr, end: addr + size, string: string.to_owned() }))
        }
        None => None,
    };
    let modules: Vec<Module> = module.iter().map(|(_, m)| m.clone()).collect();
    let (mem_lower_kib, mem_upper_kib) = mem_lower_upper(&e820);
    let input = info::InfoInput { mem_lower_kib, mem_upper_kib, cmdline, modules: &modules, memory_map: &e820, loader_name: LOADER_NAME };
    let info_bytes =
        info::build(MULTIBOOT_INFO_START, MULTIBOOT_INFO_END - MULTIBOOT_INFO_START, &input).map_err(MultibootError::Info)?;

    elf32::load(mem, kernel, &image).map_err(MultibootError::Elf)?;
    let module = match module {
        Some((file, m)) => {
            initrd::load(mem, file, m.start, m.end - m.start)?;
            Some((m.start, m.end - m.start))
        }
        None => None,
    };
    let info = info::write(mem, MULTIBOOT_INFO_START, &info_bytes).map_err(MultibootError::Info)?;
    let overrides = irq::ISA_OVERRIDES;
    let rsdp = acpi::write(mem, vcpus, virtio_mmio, overrides)?;
    let gsis: Vec<u32> = virtio_mmio.iter().map(|d| d.gsi).collect();
    let mptable = mptable::write(mem, vcpus, &gsis, overrides)?;
    let gdt = gdt::write_table(mem, &FLAT32_GDT)?;
    let entry = entry::multiboot_32bit(gdt, image.entry, info);
    log::debug!(
        "boot: multiboot image, header at {:#x} flags {:#x}, entry {:#x}, footprint {:#x?}, module {module:x?}, info {info:#x}",
        header.offset,
        header.flags,
        image.entry,
        image.footprint()
    );
    Ok(MultibootBoot { entry, image, info, module, rsdp, mptable, e820 })
}

#[cfg(test)]
mod tests;
