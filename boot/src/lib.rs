//! hvrun's x86-64 Linux direct boot: loads a bzImage (or ELF vmlinux), an optional
//! initrd and the command line into guest memory, writes the zero page with its e820
//! map, ACPI tables and an MP table, a GDT and identity page tables, and returns the
//! 64-bit entry state for the boot vCPU (Documentation/x86/boot.rst, "64-bit BOOT
//! PROTOCOL").
//!
//! It also boots multiboot (v1) images, the kvm-unit-tests guests ([`multiboot`]):
//! [`detect`] tells the two kinds apart by their headers.
//!
//! One module per boot structure, each a small function writing into guest memory with
//! its own error type; [`load_linux`] and [`multiboot::load_multiboot`] string them
//! together. Kernel and initrd files are untrusted: every bad input is a [`BootError`],
//! never a panic.
pub mod acpi;
pub mod cmdline;
pub mod e820;
pub mod elf32;
pub mod entry;
pub mod gdt;
pub mod initrd;
pub mod irq;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod multiboot;
pub mod paging;
pub mod zero_page;

use layout::*;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};
use vmm::entry::EntryState;

pub use acpi::AcpiError;
pub use cmdline::CmdlineError;
pub use e820::{E820Entry, E820Error};
pub use gdt::GdtError;
pub use initrd::InitrdError;
pub use loader::{KernelError, KernelFormat, KernelInfo};
pub use mptable::MptableError;
pub use multiboot::{load_multiboot, MultibootBoot, MultibootError};
pub use paging::PagingError;
pub use zero_page::ZeroPageError;

/// A virtio-mmio device as the guest learns of it (DSDT, MP table, or the
/// `virtio_mmio.device=` parameter from [`virtio_mmio_cmdline`]): a
/// [`VIRTIO_MMIO_SIZE`] register window at `base` raising edge-triggered `gsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    pub base: u64,
    pub gsi: u32,
}

/// ISA IRQs with a fixed PC device (timer, keyboard, cascade, COM1, RTC, PS/2 mouse):
/// a virtio device may not take them.
pub const LEGACY_IRQS: [u32; 6] = [0, 1, 2, COM1_IRQ as u32, 8, 12];

/// Where everything went, and how the boot vCPU starts.
#[derive(Clone, Debug)]
pub struct BootInfo {
    /// The BSP's entry state (APs wait for INIT/SIPI).
    pub entry: EntryState,
    pub kernel: KernelInfo,
    pub zero_page: u64,
    pub cmdline: u64,
    /// (address, size)
    pub initrd: Option<(u64, u64)>,
    pub rsdp: u64,
    pub mptable: u64,
    pub e820: Vec<E820Entry>,
}

#[derive(Debug)]
pub enum BootError {
    /// Not a multiple of 4 KiB within [`MIN_MEM_SIZE`]..=[`MAX_MEM_SIZE`].
    MemorySize(u64),
    /// The guest memory does not hold the RAM ranges `mem_size` implies.
    MemoryMismatch(u64),
    Vcpus(u32),
    Device {
        base: u64,
        gsi: u32,
        reason: &'static str,
    },
    Open {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    Kernel(KernelError),
    Cmdline(CmdlineError),
    Initrd(InitrdError),
    E820(E820Error),
    ZeroPage(ZeroPageError),
    Acpi(AcpiError),
    Mptable(MptableError),
    Gdt(GdtError),
    Paging(PagingError),
    MultibootHeader(multiboot::HeaderError),
    Multiboot(MultibootError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::MemorySize(s) => write!(
                f,
                "guest memory size {s:#x} out of range: it must be a multiple of 4 KiB from {} MiB to {} GiB",
                MIN_MEM_SIZE >> 20,
                MAX_MEM_SIZE >> 30
            ),
            BootError::MemoryMismatch(s) => {
                write!(f, "guest memory does not hold the RAM ranges of a {s:#x}-byte guest")
            }
            BootError::Vcpus(n) => write!(f, "{n} vCPUs out of range: 1 to {MAX_VCPUS}"),
            BootError::Device { base, gsi, reason } => {
                write!(f, "virtio-mmio device at {base:#x} (GSI {gsi}): {reason}")
            }
            BootError::Open { what, path, err } => write!(f, "cannot open {what} {}: {err}", path.display()),
            BootError::Kernel(e) => e.fmt(f),
            BootError::Cmdline(e) => e.fmt(f),
            BootError::Initrd(e) => e.fmt(f),
            BootError::E820(e) => e.fmt(f),
            BootError::ZeroPage(e) => e.fmt(f),
            BootError::Acpi(e) => e.fmt(f),
            BootError::Mptable(e) => e.fmt(f),
            BootError::Gdt(e) => e.fmt(f),
            BootError::Paging(e) => e.fmt(f),
            BootError::MultibootHeader(e) => e.fmt(f),
            BootError::Multiboot(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BootError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BootError::Open { err, .. } => Some(err),
            BootError::Kernel(e) => Some(e),
            BootError::Cmdline(e) => Some(e),
            BootError::Initrd(e) => Some(e),
            BootError::E820(e) => Some(e),
            BootError::ZeroPage(e) => Some(e),
            BootError::Acpi(e) => Some(e),
            BootError::Mptable(e) => Some(e),
            BootError::Gdt(e) => Some(e),
            BootError::Paging(e) => Some(e),
            BootError::MultibootHeader(e) => Some(e),
            BootError::Multiboot(e) => Some(e),
            _ => None,
        }
    }
}

macro_rules! from_error {
    ($($variant:ident($ty:ty)),*) => {
        $(impl From<$ty> for BootError {
            fn from(e: $ty) -> Self {
                BootError::$variant(e)
            }
        })*
    };
}
from_error!(
    Kernel(KernelError),
    Cmdline(CmdlineError),
    Initrd(InitrdError),
    E820(E820Error),
    ZeroPage(ZeroPageError),
    Acpi(AcpiError),
    Mptable(MptableError),
    Gdt(GdtError),
    Paging(PagingError)
);

/// What kind of image a kernel file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A bzImage, an ELF64 vmlinux, or something [`load_linux`] will reject with a reason.
    Linux,
    /// A multiboot (v1) image with this valid header.
    Multiboot(multiboot::Header),
}

/// Tells a Linux kernel from a multiboot image by its headers, in the order QEMU's
/// `-kernel` does: a bzImage's "HdrS" first, then a multiboot header in the first 8 KiB.
/// A broken multiboot header (bad checksum, truncated, requirements hvrun cannot meet) is
/// an error unless the file is a bzImage or an ELF64 file, which may contain the magic by
/// chance. Leaves the file position unspecified.
pub fn detect<F: Read + Seek>(file: &mut F) -> Result<ImageKind, BootError> {
    let len = file.seek(std::io::SeekFrom::End(0)).map_err(KernelError::Io)?;
    file.seek(std::io::SeekFrom::Start(0)).map_err(KernelError::Io)?;
    let mut head = vec![0u8; len.min(multiboot::header::SEARCH_LIMIT as u64) as usize];
    file.read_exact(&mut head).map_err(KernelError::Io)?;
    if loader::is_bzimage(&head) {
        return Ok(ImageKind::Linux);
    }
    match multiboot::header::find(&head) {
        Ok(Some(header)) => Ok(ImageKind::Multiboot(header)),
        Ok(None) => Ok(ImageKind::Linux),
        Err(_) if loader::is_elf64(&head) => Ok(ImageKind::Linux),
        Err(e) => Err(BootError::MultibootHeader(e)),
    }
}

/// Opens a kernel or initrd (`what`) for [`load_linux`], naming the file on failure.
pub fn open_image(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|err| BootError::Open { what, path: path.to_owned(), err })
}

/// The IOAPIC pins virtio devices get, in order: every pin a legacy PC device does not
/// use (the PIT, keyboard, cascade, COM1, RTC and PS/2 mouse keep theirs).
pub const VIRTIO_GSIS: [u32; 17] = [5, 6, 7, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];

/// Where the `index`-th virtio-mmio device goes (its window and its GSI), or `None` past
/// the last free pin.
pub fn virtio_mmio_slot(index: usize) -> Option<VirtioMmioDevice> {
    let gsi = *VIRTIO_GSIS.get(index)?;
    Some(VirtioMmioDevice { base: layout::VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE, gsi })
}

/// `virtio_mmio.device=4K@0xBASE:GSI` for each device: how kernels without ACPI (MP
/// table only, CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) find them. A kernel with ACPI finds
/// them in the DSDT as well and then logs a duplicate-resource warning, harmlessly.
pub fn virtio_mmio_cmdline(devices: &[VirtioMmioDevice]) -> String {
    devices.iter().map(|d| format!("virtio_mmio.device=4K@{:#x}:{}", d.base, d.gsi)).collect::<Vec<_>>().join(" ")
}

fn check_devices(devices: &[VirtioMmioDevice]) -> Result<(), BootError> {
    for (i, d) in devices.iter().enumerate() {
        let bad = |reason| Err(BootError::Device { base: d.base, gsi: d.gsi, reason });
        if d.base % VIRTIO_MMIO_SIZE != 0 {
            return bad("base is not 4 KiB aligned");
        }
        if d.base < MMIO_HOLE_START || d.base.checked_add(VIRTIO_MMIO_SIZE).is_none_or(|end| end > IOAPIC_ADDR) {
            return bad("window is not in the MMIO hole below the IOAPIC");
        }
        if d.gsi >= IOAPIC_PINS {
            return bad("GSI beyond the IOAPIC's 24 pins");
        }
        if LEGACY_IRQS.contains(&d.gsi) {
            return bad("GSI belongs to a legacy PC device");
        }
        for other in &devices[..i] {
            if other.base == d.base {
                return bad("two devices share the window");
            }
            if other.gsi == d.gsi {
                return bad("two devices share the GSI");
            }
        }
    }
    Ok(())
}

/// Whether hvrun boots Linux with `mem_size` bytes of RAM: a multiple of 4 KiB in
/// [`MIN_MEM_SIZE`]..=[`MAX_MEM_SIZE`]. Checked before any memory is allocated.
pub fn check_mem_size(mem_size: u64) -> Result<(), BootError> {
    if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&mem_size) || mem_size & (PAGE_SIZE - 1) != 0 {
        return Err(BootError::MemorySize(mem_size));
    }
    Ok(())
}

fn check_memory<M: GuestMemoryBackend>(mem: &M, mem_size: u64) -> Result<(), BootError> {
    check_mem_size(mem_size)?;
    for (start, len) in vmm::memory::ram_ranges(mem_size) {
        let covered = usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(start), len));
        if !covered {
            return Err(BootError::MemoryMismatch(mem_size));
        }
    }
    Ok(())
}

/// Loads Linux into `mem` (`mem_size` bytes laid out as [`vmm::memory::ram_ranges`])
/// for `vcpus` vCPUs and the given virtio-mmio devices, and returns the boot vCPU's
/// 64-bit entry state with where everything went.
///
/// Everything is checked before guest memory is written: the kernel's headers, the
/// command line against the kernel's `cmdline_size`, the initrd's placement below the
/// MMIO hole and the kernel's `initrd_addr_max` and above the kernel's footprint.
pub fn load_linux<M, F>(
    mem: &M,
    mem_size: u64,
    kernel: &mut F,
    initrd: Option<&mut F>,
    cmdline: &str,
    vcpus: u32,
    virtio_mmio: &[VirtioMmioDevice],
) -> Result<BootInfo, BootError>
where
    M: GuestMemoryBackend,
    F: Read + Seek + ReadVolatile,
{
    check_memory(mem, mem_size)?;
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(BootError::Vcpus(vcpus));
    }
    check_devices(virtio_mmio)?;
    let low_end = low_ram_end(mem_size);

    let info = loader::probe(kernel)?;
    cmdline::check(cmdline, info.cmdline_max)?;
    if info.footprint.1 > low_end {
        return Err(KernelError::DoesNotFit { end: info.footprint.1, limit: low_end }.into());
    }
    let initrd = match initrd {
        Some(file) => {
            let size = initrd::file_size(file)?;
            let addr = initrd::placement(size, low_end, info.initrd_addr_max, info.initrd_above_4g, info.footprint.1)?;
            Some((file, addr, size))
        }
        None => None,
    };

    loader::load(mem, kernel, &info, low_end)?;
    let cmdline_addr = cmdline::write(mem, cmdline, info.cmdline_max)?;
    let initrd = match initrd {
        Some((file, addr, size)) => {
            initrd::load(mem, file, addr, size)?;
            Some((addr, size))
        }
        None => None,
    };
    let e820 = e820::build_e820(mem_size)?;
    let overrides = irq::ISA_OVERRIDES;
    let rsdp = acpi::write(mem, vcpus, virtio_mmio, overrides)?;
    let gsis: Vec<u32> = virtio_mmio.iter().map(|d| d.gsi).collect();
    let mptable = mptable::write(mem, vcpus, &gsis, overrides)?;
    let zero_page = zero_page::write(
        mem,
        &zero_page::ZeroPageConfig { header: info.header, cmdline_addr, initrd, rsdp_addr: rsdp, e820: &e820 },
    )?;
    let gdt = gdt::write_gdt(mem)?;
    let cr3 = paging::write_identity_map(mem)?;
    let entry = entry::linux_64bit(gdt, cr3, info.entry, zero_page);
    log::debug!(
        "boot: {:?} kernel protocol {:#x} entry {:#x} footprint {:#x?}, initrd {:x?}, rsdp {rsdp:#x}",
        info.format,
        info.protocol,
        info.entry,
        info.footprint,
        initrd
    );
    Ok(BootInfo { entry, kernel: info, zero_page, cmdline: cmdline_addr, initrd, rsdp, mptable, e820 })
}

#[cfg(test)]
mod linux_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_virtio_slot_passes_the_device_checks() {
        let slots: Vec<_> = (0..).map_while(virtio_mmio_slot).collect();
        assert_eq!(slots.len(), VIRTIO_GSIS.len());
        assert_eq!(slots[0], VirtioMmioDevice { base: 0xd000_0000, gsi: 5 });
        assert_eq!(slots[3], VirtioMmioDevice { base: 0xd000_3000, gsi: 9 });
        assert!(check_devices(&slots).is_ok());
        assert_eq!(virtio_mmio_cmdline(&slots[..2]), "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6");
    }

    #[test]
    fn device_checks() {
        let d = |base, gsi| VirtioMmioDevice { base, gsi };
        assert!(check_devices(&[d(0xd000_0000, 5), d(0xd000_1000, 23)]).is_ok());
        for bad in [
            vec![d(0xd000_0800, 5)],
            vec![d(0x1000_0000, 5)],
            vec![d(0xfec0_0000, 5)],
            vec![d(!0xfff, 5)],
            vec![d(0xd000_0000, 24)],
            vec![d(0xd000_0000, 4)],
            vec![d(0xd000_0000, 5), d(0xd000_0000, 6)],
            vec![d(0xd000_0000, 5), d(0xd000_1000, 5)],
        ] {
            assert!(matches!(check_devices(&bad), Err(BootError::Device { .. })), "{bad:x?}");
        }
    }

    #[test]
    fn detect_tells_linux_from_multiboot() {
        use multiboot::header::tests::header_bytes;
        use std::io::Cursor;
        let d = |img: &[u8]| detect(&mut Cursor::new(img));
        let mut mb = crate::elf32::tests::fake_elf32(0x40_0000, &[(0x40_0000, 0x200, 0x200)]);
        mb[0x10b0..0x10bc].copy_from_slice(&header_bytes(0));
        assert_eq!(d(&mb).unwrap(), ImageKind::Multiboot(multiboot::Header { offset: 0x10b0, flags: 0 }));
        assert_eq!(d(&loader::tests::fake_bzimage(0x020c, 1, 16)).unwrap(), ImageKind::Linux);
        assert_eq!(d(&loader::tests::fake_elf(0x100_0000, 16)).unwrap(), ImageKind::Linux);
        assert_eq!(d(b"").unwrap(), ImageKind::Linux, "load_linux says what is wrong with it");
        // A broken header is the multiboot loader's error, unless the file is Linux's.
        mb[0x10b8] ^= 1;
        assert_eq!(
            d(&mb).unwrap_err().to_string(),
            "bad multiboot header at offset 0x10b0: magic + flags + checksum is not 0"
        );
        let mut vmlinux = loader::tests::fake_elf(0x100_0000, 0x200);
        vmlinux[0x1000..0x1004].copy_from_slice(&multiboot::header::HEADER_MAGIC.to_le_bytes());
        assert_eq!(d(&vmlinux).unwrap(), ImageKind::Linux);
        let mut video = mb.clone();
        video[0x10b0..0x10bc].copy_from_slice(&header_bytes(multiboot::header::FLAG_VIDEO_MODE));
        assert!(matches!(d(&video), Err(BootError::MultibootHeader(multiboot::HeaderError::VideoMode))));
    }

    #[test]
    fn cmdline_for_legacy_discovery() {
        let devs = [VirtioMmioDevice { base: 0xd000_0000, gsi: 5 }, VirtioMmioDevice { base: 0xd000_1000, gsi: 6 }];
        assert_eq!(virtio_mmio_cmdline(&devs), "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6");
    }
}
