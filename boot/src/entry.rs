//! The BSP's state at a kernel's entry:
//! - Linux's 64-bit entry (boot.rst, "64-bit BOOT PROTOCOL"): long mode with paging on,
//!   identity-mapped low memory, CS = `__BOOT_CS` (0x10), DS/ES/SS = `__BOOT_DS` (0x18),
//!   interrupts disabled, RSI = the zero page;
//! - a multiboot image's entry (Multiboot specification 0.6.96, 3.2 "Machine state"):
//!   32-bit protected mode with paging off, flat 4 GiB code and data segments, EFLAGS.IF
//!   and VM clear, EAX = [`MULTIBOOT_BOOTLOADER_MAGIC`], EBX = the information structure.
use crate::gdt::{segment_from_gdt, segment_from_table, BOOT_CS, BOOT_DS, FLAT32_CS, FLAT32_DS, FLAT32_GDT};
use crate::layout::BOOT_STACK_POINTER;
use vmm::entry::EntryState;

/// What EAX holds at a multiboot entry: tells the image a compliant loader started it.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;

/// `gdt` is the GDTR from [`crate::gdt::write_gdt`], `cr3` from
/// [`crate::paging::write_identity_map`].
pub fn linux_64bit(gdt: (u64, u32), cr3: u64, entry: u64, zero_page: u64) -> EntryState {
    let data = segment_from_gdt(BOOT_DS / 8);
    EntryState {
        rsi: zero_page,
        cs: segment_from_gdt(BOOT_CS / 8),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        // long_mode(): CR0 PE|ET|WP|PG, CR4 PAE, EFER LME|LMA, RFLAGS 2 (IF clear), a busy
        // 64-bit TSS in TR and an unusable LDTR, both passing the VM-entry checks.
        ..EntryState::long_mode(gdt, cr3, entry, BOOT_STACK_POINTER)
    }
}

/// The multiboot entry: `gdt` is the GDTR of [`FLAT32_GDT`] (from
/// [`crate::gdt::write_table`]), `entry` the image's physical entry point, `info` the
/// address of the multiboot information structure. ESP is undefined by the specification
/// (the image sets up its own stack): it is 0 here.
pub fn multiboot_32bit(gdt: (u64, u32), entry: u64, info: u64) -> EntryState {
    let data = segment_from_table(&FLAT32_GDT, FLAT32_DS / 8);
    EntryState {
        rax: MULTIBOOT_BOOTLOADER_MAGIC.into(),
        rbx: info,
        cs: segment_from_table(&FLAT32_GDT, FLAT32_CS / 8),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        // protected_flat(): CR0 PE|ET (PG clear), RFLAGS 2 (IF and VM clear), EFER 0, a
        // busy 32-bit TSS in TR and an unusable LDTR, both passing the VM-entry checks.
        ..EntryState::protected_flat(gdt, entry, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::entry::{Segment, RFLAGS_FIXED};

    #[test]
    fn boot_protocol_selectors_and_registers() {
        let s = linux_64bit((0x500, 0x1f), 0x9000, 0x10_0200, 0x7000);
        assert_eq!(s.rip, 0x10_0200);
        assert_eq!(s.rsi, 0x7000);
        assert_eq!(s.rsp, 0x8ff0);
        assert_eq!(s.rflags, RFLAGS_FIXED);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.gdt, (0x500, 0x1f));
        assert_eq!(s.cs, Segment { selector: 0x10, base: 0, limit: 0xffff_ffff, ar: 0xa09b });
        for seg in [s.ds, s.es, s.ss, s.fs, s.gs] {
            assert_eq!(seg, Segment { selector: 0x18, base: 0, limit: 0xffff_ffff, ar: 0xc093 });
        }
        assert_eq!(s.cr0 & 0x8000_0001, 0x8000_0001, "PG and PE");
        assert_eq!(s.cr4 & 0x20, 0x20, "PAE");
        assert_eq!(s.efer & 0x500, 0x500, "LME and LMA");
    }

    #[test]
    fn multiboot_machine_state() {
        let s = multiboot_32bit((0x500, 0x17), 0x40_00bc, 0x1000);
        assert_eq!((s.rip, s.rax, s.rbx, s.rsp), (0x40_00bc, 0x2bad_b002, 0x1000, 0));
        assert_eq!(s.rflags, RFLAGS_FIXED, "IF and VM clear");
        assert_eq!(s.cr0, 0x11, "PE and ET, paging off");
        assert_eq!((s.cr4, s.efer, s.gdt), (0, 0, (0x500, 0x17)));
        assert_eq!(s.cs, Segment { selector: 0x8, base: 0, limit: 0xffff_ffff, ar: 0xc09b });
        for seg in [s.ds, s.es, s.ss, s.fs, s.gs] {
            assert_eq!(seg, Segment { selector: 0x10, base: 0, limit: 0xffff_ffff, ar: 0xc093 });
        }
    }
}
