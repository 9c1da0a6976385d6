//! The fixed guest-physical layout hvrun boots Linux into. Low memory follows the usual
//! PC/Firecracker arrangement so that nothing the kernel scans (EBDA, BIOS area) or
//! reserves early collides with the boot structures:
//!
//! ```text
//! 0x0000_0500  GDT (boot selectors 0x10/0x18, Documentation/x86/boot.rst "64-bit BOOT PROTOCOL")
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  initial stack pointer (grows down, inside the RAM below the zero page's page)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories (4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP floating pointer + configuration table (last KiB of base memory, MP spec 4.1)
//! 0x000e_0000  RSDP (in the BIOS read-only area the kernel scans, ACPI 6.x 5.2.5.1),
//!              then XSDT, FADT, MADT, DSDT
//! 0x0010_0000  the kernel (bzImage protected-mode part, or ELF segments at their paddr)
//! top of low RAM: the initrd, page-aligned
//! 0xc000_0000..4 GiB: MMIO hole (virtio-mmio windows from 0xd000_0000, IOAPIC 0xfec0_0000,
//!              LAPIC 0xfee0_0000)
//! 4 GiB..: the rest of RAM
//! ```
//!
//! A multiboot image (Multiboot specification 0.6.96) gets the same GDT address, MP and
//! ACPI tables, and in place of the zero page, stack, page tables and command line:
//!
//! ```text
//! 0x0000_1000..0x0000_8000  the multiboot information structure, its memory map,
//!              module list, boot loader name and command lines (above the first page,
//!              which kvm-unit-tests overwrites with its AP trampoline; below 0x8000,
//!              where the suite's realmode.flat loads)
//! its ELF segments wherever they say (RAM only, clear of the above)
//! top of low RAM: the module (hvrun's INITRD argument), page-aligned
//! ```
pub use vmm::memory::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Guest pages are 4 KiB.
pub const PAGE_SIZE: u64 = 0x1000;

pub const GDT_START: u64 = 0x500;
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The kernel gets a stack at entry; 16-byte aligned, below the page tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
/// First of [`PD_COUNT`] consecutive page directories.
pub const PD_START: u64 = 0xb000;
/// Page directories: each maps 1 GiB with 2 MiB pages, so 4 map the low 4 GiB.
pub const PD_COUNT: u64 = 4;

/// The area for the multiboot information structure and everything it points to.
pub const MULTIBOOT_INFO_START: u64 = 0x1000;
pub const MULTIBOOT_INFO_END: u64 = 0x8000;

pub const CMDLINE_START: u64 = 0x2_0000;
/// Room reserved for the command line (terminating NUL included), whatever the kernel's
/// own `cmdline_size` says.
pub const CMDLINE_MAX_SIZE: u64 = 0x1_0000;

/// Start of the "EBDA": the last KiB of conventional memory, where MP spec 1.4 section
/// 4.1 lets the floating pointer live. Everything from here to 1 MiB is reserved in the
/// e820 map.
pub const EBDA_START: u64 = 0x9_fc00;
pub const MPTABLE_START: u64 = EBDA_START;

/// RSDP: Linux scans 0xe0000..0xfffff for "RSD PTR " (ACPI 6.x 5.2.5.1) besides reading
/// `boot_params.acpi_rsdp_addr`, so both ways find it.
pub const RSDP_START: u64 = 0xe_0000;
/// End of the area holding the ACPI tables (the BIOS area ends at 1 MiB).
pub const ACPI_TABLES_END: u64 = 0x10_0000;

/// The protected-mode kernel is loaded here (boot.rst: "the protected-mode kernel ... at
/// address 0x100000"); everything below is the boot structures above.
pub const KERNEL_START: u64 = 0x10_0000;
/// The 64-bit entry point is 0x200 bytes into the protected-mode kernel (boot.rst,
/// "64-bit BOOT PROTOCOL").
pub const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// The IOAPIC's MMIO page (the device model's) and its ID: 0, the model's reset value;
/// the MADT and MP table both say so.
pub const IOAPIC_ADDR: u64 = devices::ioapic::IOAPIC_BASE;
pub const IOAPIC_ID: u8 = 0;
/// Redirection entries of the IOAPIC: GSIs 0..24.
pub const IOAPIC_PINS: u32 = devices::ioapic::IOAPIC_PINS as u32;
/// The local APICs' MMIO page (architectural default, SDM vol. 3 11.4.1).
pub const LAPIC_ADDR: u64 = devices::lapic::LAPIC_BASE;

/// Size of one virtio-mmio device's register window (virtio 1.x, 4.2.2).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The virtio-mmio windows, one after the other from here (in the MMIO hole, far below
/// the IOAPIC).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;

/// COM1, as the DSDT and MP table describe it.
pub const COM1_PORT: u16 = devices::serial::COM1_PORT as u16;
pub const COM1_IRQ: u8 = devices::serial::COM1_IRQ as u8;

/// Guest memory sizes accepted: 128 MiB is enough for a kernel plus a small initrd; the
/// upper bound keeps the top of guest-physical memory (size + the 1 GiB hole) below 2^39,
/// the physical-address width of Intel Mac client CPUs that bounds EPT.
pub const MIN_MEM_SIZE: u64 = 128 << 20;
pub const MAX_MEM_SIZE: u64 = 256 << 30;

/// vCPUs: xAPIC IDs are 8 bits in the MADT and MP table and 0xff is the broadcast ID.
pub const MAX_VCPUS: u32 = 254;

/// End of RAM below the MMIO hole for `mem_size` bytes of guest memory.
pub const fn low_ram_end(mem_size: u64) -> u64 {
    if mem_size < MMIO_HOLE_START {
        mem_size
    } else {
        MMIO_HOLE_START
    }
}

/// Structures in low memory must not overlap each other.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_structures_do_not_overlap() {
        let regions = [
            (GDT_START, 0x20),
            (ZERO_PAGE_START, PAGE_SIZE),
            (PML4_START, PAGE_SIZE),
            (PDPT_START, PAGE_SIZE),
            (PD_START, PD_COUNT * PAGE_SIZE),
            (CMDLINE_START, CMDLINE_MAX_SIZE),
            (MPTABLE_START, RSDP_START - MPTABLE_START),
            (RSDP_START, ACPI_TABLES_END - RSDP_START),
            (KERNEL_START, 1),
        ];
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                assert!(a.0 + a.1 <= b.0, "{a:x?} overlaps {b:x?}");
            }
        }
        // The stack grows down from just below the page tables, above the zero page.
        const { assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + PAGE_SIZE && BOOT_STACK_POINTER <= PML4_START) };
        const { assert!(BOOT_STACK_POINTER & 15 == 0) };
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
        assert_eq!((IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR), (0xfec0_0000, 24, 0xfee0_0000));
        assert_eq!((COM1_PORT, COM1_IRQ), (0x3f8, 4));
        assert_eq!(low_ram_end(16 << 30), MMIO_HOLE_START);
        // The multiboot layout: the information area clear of the GDT and the tables.
        const { assert!(GDT_START + 0x20 <= MULTIBOOT_INFO_START && MULTIBOOT_INFO_END <= MPTABLE_START) };
    }
}
