//! The guest page-table walker: linear address -> guest-physical address, with the
//! checks and the page-fault error codes of the SDM (vol. 3, chapter 4).
//!
//! The guest owns its page tables, so every entry is untrusted: entries are read with
//! [`GuestBus::read_ram`], every index is masked to the table size, and an entry that
//! points outside RAM yields a page fault for the guest, never a panic here.

use bitflags::bitflags;

use super::cpu::{CpuState, Cr0, Cr4, Efer, Rflags};
use super::{Fault, GuestBus};

/// The smallest page size; accesses are split at multiples of it (any larger page is a
/// multiple, so splitting at 4 KiB is always correct).
pub const PAGE_SIZE: u64 = 4096;
/// The offset-within-page bits of an address.
pub(crate) const PAGE_OFFSET_MASK: u64 = PAGE_SIZE - 1;

/// Why a linear address is being translated: decides the W/R and I/D error-code bits and
/// which permission bits apply (SDM vol. 3, 4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Fetch,
}

bitflags! {
    /// The page-fault error code (SDM vol. 3, 4.7, figure 4-12).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PfErrorCode: u32 {
        /// 0: the page was not present; 1: a protection (or reserved-bit) violation.
        const PRESENT = 1 << 0;
        /// The access was a write.
        const WRITE = 1 << 1;
        /// The access was a user-mode access (CPL 3).
        const USER = 1 << 2;
        /// A reserved bit was set in some paging-structure entry.
        const RSVD = 1 << 3;
        /// The access was an instruction fetch (reported only when SMEP or PAE+NXE is
        /// on, see [`fetch_reports_id`]).
        const FETCH = 1 << 4;
    }
}

bitflags! {
    /// The flag bits of a paging-structure entry that the walker interprets (SDM vol. 3,
    /// tables 4-4 to 4-20). The same positions serve all paging modes; bit 63 exists only
    /// in 64-bit entries.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Entry: u64 {
        /// Present.
        const P = 1 << 0;
        /// Read/write: 0 makes the region read-only.
        const RW = 1 << 1;
        /// User/supervisor: 0 denies CPL-3 accesses.
        const US = 1 << 2;
        /// Accessed: set by the CPU when it uses the entry.
        const A = 1 << 5;
        /// Dirty: set by the CPU in the entry that maps a page when it writes the page.
        const D = 1 << 6;
        /// Page size: this directory entry maps a large page.
        const PS = 1 << 7;
        /// Execute-disable (when EFER.NXE = 1).
        const XD = 1 << 63;
    }
}

/// The paging mode (SDM vol. 3, 4.1.1, table 4-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear = physical.
    Off,
    /// 32-bit paging: CR4.PAE = 0, two levels of 4-byte entries.
    Bits32,
    /// PAE paging: CR4.PAE = 1 outside IA-32e mode, four PDPTEs then two levels.
    Pae,
    /// 4-level paging: IA-32e mode with 48-bit linear addresses.
    Level4,
    /// 5-level paging: IA-32e mode with CR4.LA57 = 1, 57-bit linear addresses.
    Level5,
}

impl PagingMode {
    pub fn of(cpu: &CpuState) -> PagingMode {
        if !cpu.cr0().contains(Cr0::PG) {
            PagingMode::Off
        } else if !cpu.cr4().contains(Cr4::PAE) {
            PagingMode::Bits32
        } else if !cpu.efer().contains(Efer::LMA) {
            PagingMode::Pae
        } else if cpu.cr4().contains(Cr4::LA57) {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    }
}

/// What an entry at a given level may be (SDM vol. 3, 4.3-4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LevelKind {
    /// A PAE page-directory-pointer-table entry: present bit and table address only; it
    /// has no R/W, U/S, XD or accessed bit (SDM 4.4.1, table 4-8).
    PaePdpte,
    /// References the next table. In 4/5-level paging PS is reserved here (PML5E,
    /// PML4E); in 32-bit paging this is the PDE when CR4.PSE = 0, where PS is ignored.
    Table,
    /// Maps a large page if PS = 1, else references the next table (PDE, and the
    /// 4-level PDPTE).
    TableOrPage,
    /// Maps a 4 KiB page (PTE).
    Page,
}

/// One level of a walk: the linear-address bits `shift..shift + index_bits` index the
/// table; a page mapped at this level is `1 << shift` bytes.
#[derive(Debug, Clone, Copy)]
struct Level {
    shift: u32,
    index_bits: u32,
    kind: LevelKind,
}

const fn level(shift: u32, index_bits: u32, kind: LevelKind) -> Level {
    Level {
        shift,
        index_bits,
        kind,
    }
}

/// 32-bit paging (SDM 4.3): 10-bit indexes; the PDE maps a 4 MiB page only with CR4.PSE.
const LEVELS_32_PSE: [Level; 2] = [
    level(22, 10, LevelKind::TableOrPage),
    level(12, 10, LevelKind::Page),
];
const LEVELS_32: [Level; 2] = [
    level(22, 10, LevelKind::Table),
    level(12, 10, LevelKind::Page),
];
/// PAE paging (SDM 4.4): 4 PDPTEs (2 index bits), then 9-bit indexes.
const LEVELS_PAE: [Level; 3] = [
    level(30, 2, LevelKind::PaePdpte),
    level(21, 9, LevelKind::TableOrPage),
    level(12, 9, LevelKind::Page),
];
/// 4-level paging (SDM 4.5): PML4, PDPT (1 GiB pages), PD (2 MiB pages), PT.
const LEVELS_4: [Level; 4] = [
    level(39, 9, LevelKind::Table),
    level(30, 9, LevelKind::TableOrPage),
    level(21, 9, LevelKind::TableOrPage),
    level(12, 9, LevelKind::Page),
];
/// 5-level paging (SDM 4.5): a PML5 above 4-level paging.
const LEVELS_5: [Level; 5] = [
    level(48, 9, LevelKind::Table),
    level(39, 9, LevelKind::Table),
    level(30, 9, LevelKind::TableOrPage),
    level(21, 9, LevelKind::TableOrPage),
    level(12, 9, LevelKind::Page),
];

/// Entry sizes: 32-bit paging uses 4-byte entries, every other mode 8-byte entries.
const ENTRY_BYTES_32: usize = 4;
const ENTRY_BYTES_64: usize = 8;

/// Width of linear addresses that 32-bit and PAE paging translate.
const LINEAR_BITS_32: u32 = 32;
/// Linear-address width of 4-level and 5-level paging (canonical checks, SDM 4.5).
const LINEAR_BITS_4: u32 = 48;
const LINEAR_BITS_5: u32 = 57;

/// 32-bit paging 4 MiB pages (PSE-36, SDM 4.3, table 4-4): PDE bits 20:13 hold physical
/// bits 39:32, and bit 21 is reserved.
const PSE36_LOW_BIT: u32 = 13;
const PSE36_FIELD_BITS: u32 = 8;
const PSE36_PHYS_SHIFT: u32 = 32;
const PSE36_RESERVED_BIT: u32 = 21;
/// Lowest bit of the address field of a large-page entry: bits 12 is PAT, so reserved
/// bits of a large page start at 13 (SDM tables 4-9, 4-17, 4-18).
const LARGE_PAGE_RESERVED_LOW: u32 = 13;
/// Highest bit that can hold a physical address in a 64-bit entry (MAXPHYADDR <= 52).
const ENTRY_ADDR_TOP_BIT: u32 = 51;
/// Bit 63 (XD) and bits 62:52 of 64-bit entries.
const ENTRY_XD_BIT: u32 = 63;
const ENTRY_TOP_IGNORED_BIT: u32 = 62;
/// PAE PDPTE reserved low bits: 2:1 and 8:5 (SDM 4.4.1, table 4-8).
const PAE_PDPTE_RESERVED_LOW: u64 = 0b1_1110_0110;
/// CR3 in PAE paging: bits 31:5 locate the 32-byte-aligned PDPT (SDM 4.4.1).
const CR3_PAE_PDPT_MASK: u64 = 0xffff_ffe0;
/// CR3 in 32-bit paging: bits 31:12 locate the page directory (SDM 4.3).
const CR3_32_PD_MASK: u64 = 0xffff_f000;
/// A table address in a 32-bit paging entry: bits 31:12.
const ENTRY_32_ADDR_MASK: u64 = 0xffff_f000;

/// How often the walk is redone when an entry changes between reading it and setting
/// its accessed/dirty bits (a racing vCPU or guest write), before giving up on the bits.
const MAX_WALK_ATTEMPTS: usize = 4;

/// The most levels any walk has (5-level paging).
const MAX_LEVELS: usize = 5;

/// Bits `lo..=hi` set; empty if `hi < lo`.
const fn bit_range(hi: u32, lo: u32) -> u64 {
    if hi < lo || lo >= 64 {
        return 0;
    }
    let top = if hi >= 63 {
        u64::MAX
    } else {
        (1u64 << (hi + 1)) - 1
    };
    top & !((1u64 << lo) - 1)
}

/// Sign-extends `value` from `bits` wide to 64 bits.
fn sign_extend(value: u64, bits: u32) -> u64 {
    if bits == 0 || bits >= 64 {
        return value;
    }
    let unused = 64 - bits;
    (((value << unused) as i64) >> unused) as u64
}

/// Whether a fetch fault reports I/D = 1 (SDM 4.7): only with SMEP, or with PAE/4-level
/// paging and EFER.NXE.
fn fetch_reports_id(cpu: &CpuState) -> bool {
    cpu.cr4().contains(Cr4::SMEP)
        || (cpu.cr4().contains(Cr4::PAE) && cpu.efer().contains(Efer::NXE))
}

/// An entry a walk used, remembered so its accessed/dirty bits can be set afterwards.
#[derive(Debug, Clone, Copy, Default)]
struct UsedEntry {
    gpa: u64,
    value: u64,
    bytes: usize,
    /// False for PAE PDPTEs, which have no accessed bit.
    has_accessed: bool,
}

/// A successful walk.
#[derive(Debug, Clone, Copy, Default)]
struct Walk {
    gpa: u64,
    used: [UsedEntry; MAX_LEVELS],
    count: usize,
}

/// Translates a linear address to a guest-physical address (SDM vol. 3, 4.1-4.6), for an
/// access of kind `access` made at the CPU's current privilege level.
///
/// - Paging off: identity, truncated to 32 bits (no A20 masking).
/// - 32-bit, PAE, 4-level and 5-level paging, with 4 KiB, 2 MiB, 4 MiB (PSE/PSE-36) and
///   1 GiB pages. PAE PDPTEs are read from memory at CR3, not from the PDPTE registers
///   the CPU loaded at the last MOV to CR3: only differs if the guest changed them since.
/// - Checks: P; R/W (with CR0.WP for supervisor writes); U/S for CPL 3; XD with
///   EFER.NXE; SMEP and SMAP (with RFLAGS.AC); reserved bits (MAXPHYADDR, XD without
///   NXE, PS in PML4E/PML5E, large-page alignment). Protection keys are not checked.
/// - Non-canonical addresses in 4/5-level paging give #GP(0).
/// - A fault gives #PF with the SDM error code and CR2 = `linear`. A paging-structure
///   entry outside RAM is reported as a reserved-bit fault: no translation exists.
///
/// On success, sets the accessed bit of every entry used and, for a write, the dirty bit
/// of the entry that maps the page, as the CPU would have (SDM 4.8); a guest relies on
/// them (e.g. to find dirty pages to write back). Bits are set with
/// [`GuestBus::cmpxchg_ram`] and only after the whole walk succeeded, so a faulting
/// access leaves the tables untouched (which the SDM permits).
pub fn translate(
    cpu: &CpuState,
    bus: &mut dyn GuestBus,
    linear: u64,
    access: Access,
) -> Result<u64, Fault> {
    let mut last = None;
    for _ in 0..MAX_WALK_ATTEMPTS {
        let walk = walk(cpu, &*bus, linear, access)?;
        if set_accessed_dirty(bus, &walk, access) {
            return Ok(walk.gpa);
        }
        last = Some(walk.gpa);
    }
    // The entries kept changing under us; the translation we found was valid when read,
    // which is all a racing guest can expect. Proceed without the accessed/dirty bits.
    last.ok_or_else(Fault::general_protection)
}

/// Walks the tables once, without side effects.
fn walk(cpu: &CpuState, bus: &dyn GuestBus, linear: u64, access: Access) -> Result<Walk, Fault> {
    let mode = PagingMode::of(cpu);
    let (levels, entry_bytes, root, linear): (&[Level], usize, u64, u64) = match mode {
        PagingMode::Off => {
            return Ok(Walk {
                gpa: linear & bit_range(LINEAR_BITS_32 - 1, 0),
                ..Walk::default()
            });
        }
        PagingMode::Bits32 => {
            let levels: &[Level] = if cpu.cr4().contains(Cr4::PSE) {
                &LEVELS_32_PSE
            } else {
                &LEVELS_32
            };
            (
                levels,
                ENTRY_BYTES_32,
                cpu.cr3 & CR3_32_PD_MASK,
                linear & bit_range(LINEAR_BITS_32 - 1, 0),
            )
        }
        PagingMode::Pae => (
            &LEVELS_PAE,
            ENTRY_BYTES_64,
            cpu.cr3 & CR3_PAE_PDPT_MASK,
            linear & bit_range(LINEAR_BITS_32 - 1, 0),
        ),
        PagingMode::Level4 | PagingMode::Level5 => {
            let (levels, bits): (&[Level], u32) = if mode == PagingMode::Level5 {
                (&LEVELS_5, LINEAR_BITS_5)
            } else {
                (&LEVELS_4, LINEAR_BITS_4)
            };
            // SDM 3.3.7.1: a non-canonical address faults before any translation.
            if sign_extend(linear, bits) != linear {
                return Err(Fault::general_protection());
            }
            (
                levels,
                ENTRY_BYTES_64,
                cpu.cr3 & bit_range(cpu.phys_bits() - 1, 12),
                linear,
            )
        }
    };

    let user = cpu.effective_cpl() == 3;
    let mut code = PfErrorCode::empty();
    match access {
        Access::Write => code |= PfErrorCode::WRITE,
        Access::Fetch if fetch_reports_id(cpu) => code |= PfErrorCode::FETCH,
        _ => {}
    }
    if user {
        code |= PfErrorCode::USER;
    }
    let not_present = Fault::page_fault(linear, code);
    let reserved = Fault::page_fault(linear, code | PfErrorCode::PRESENT | PfErrorCode::RSVD);
    let protection = Fault::page_fault(linear, code | PfErrorCode::PRESENT);

    let nxe = cpu.efer().contains(Efer::NXE);
    let phys_bits = cpu.phys_bits();
    // The effective rights are the most restrictive over all levels (SDM 4.6.1):
    // writable and user only if every entry says so, no-execute if any entry says so.
    let mut writable = true;
    let mut user_page = true;
    let mut no_execute = false;
    let mut out = Walk::default();
    let mut table = root;

    for (depth, lvl) in levels.iter().enumerate() {
        let index = (linear >> lvl.shift) & bit_range(lvl.index_bits - 1, 0);
        let entry_gpa = table.wrapping_add(index.wrapping_mul(entry_bytes as u64));
        let mut raw = [0u8; ENTRY_BYTES_64];
        let Some(raw_entry) = raw.get_mut(..entry_bytes) else {
            return Err(reserved);
        };
        if bus.read_ram(entry_gpa, raw_entry).is_err() {
            return Err(reserved);
        }
        let value = u64::from_le_bytes(raw);
        let entry = Entry::from_bits_retain(value);
        if !entry.contains(Entry::P) {
            return Err(not_present);
        }

        let maps_page = match lvl.kind {
            LevelKind::Page => true,
            LevelKind::TableOrPage => entry.contains(Entry::PS),
            LevelKind::Table | LevelKind::PaePdpte => false,
        };
        if value & reserved_bits(mode, lvl, maps_page, phys_bits, nxe) != 0 {
            return Err(reserved);
        }

        if lvl.kind != LevelKind::PaePdpte {
            writable &= entry.contains(Entry::RW);
            user_page &= entry.contains(Entry::US);
            no_execute |= nxe && entry.contains(Entry::XD);
        }
        if let Some(slot) = out.used.get_mut(depth) {
            *slot = UsedEntry {
                gpa: entry_gpa,
                value,
                bytes: entry_bytes,
                has_accessed: lvl.kind != LevelKind::PaePdpte,
            };
            out.count = depth + 1;
        }

        if maps_page {
            let offset = linear & bit_range(lvl.shift - 1, 0);
            let frame = if entry_bytes == ENTRY_BYTES_32 {
                frame_32(value, lvl.shift)
            } else {
                value & bit_range(phys_bits - 1, lvl.shift)
            };
            check_rights(cpu, access, user, writable, user_page, no_execute)
                .map_err(|()| protection)?;
            out.gpa = frame | offset;
            return Ok(out);
        }
        table = if entry_bytes == ENTRY_BYTES_32 {
            value & ENTRY_32_ADDR_MASK
        } else {
            value & bit_range(phys_bits - 1, 12)
        };
    }
    // Every level list ends in a `Page` level, so the loop always returns; treat the
    // impossible fall-through as "no translation" rather than panicking.
    Err(reserved)
}

/// The page frame of a 32-bit paging entry that maps a page of `1 << shift` bytes.
fn frame_32(value: u64, shift: u32) -> u64 {
    let low = value & bit_range(LINEAR_BITS_32 - 1, shift);
    if shift == 12 {
        return low;
    }
    // 4 MiB page: PSE-36 puts physical bits 39:32 in PDE bits 20:13 (SDM table 4-4).
    let high = (value >> PSE36_LOW_BIT) & bit_range(PSE36_FIELD_BITS - 1, 0);
    low | (high << PSE36_PHYS_SHIFT)
}

/// The bits of an entry that must be 0 (SDM 4.3 tables 4-4..4-6, 4.4 tables 4-8..4-11,
/// 4.5 tables 4-15..4-20).
fn reserved_bits(mode: PagingMode, lvl: &Level, maps_page: bool, phys_bits: u32, nxe: bool) -> u64 {
    match mode {
        PagingMode::Off => 0,
        PagingMode::Bits32 => {
            if maps_page && lvl.shift > 12 {
                // Bit 21, and the PSE-36 high-address bits beyond MAXPHYADDR.
                let usable = phys_bits
                    .saturating_sub(PSE36_PHYS_SHIFT)
                    .min(PSE36_FIELD_BITS);
                (1u64 << PSE36_RESERVED_BIT)
                    | bit_range(PSE36_LOW_BIT + PSE36_FIELD_BITS - 1, PSE36_LOW_BIT + usable)
            } else {
                0
            }
        }
        PagingMode::Pae => {
            if lvl.kind == LevelKind::PaePdpte {
                return PAE_PDPTE_RESERVED_LOW | bit_range(ENTRY_XD_BIT, phys_bits);
            }
            let mut bits = bit_range(ENTRY_TOP_IGNORED_BIT, phys_bits);
            if !nxe {
                bits |= 1 << ENTRY_XD_BIT;
            }
            if maps_page && lvl.shift > 12 {
                bits |= bit_range(lvl.shift - 1, LARGE_PAGE_RESERVED_LOW);
            }
            bits
        }
        PagingMode::Level4 | PagingMode::Level5 => {
            let mut bits = bit_range(ENTRY_ADDR_TOP_BIT, phys_bits);
            if !nxe {
                bits |= 1 << ENTRY_XD_BIT;
            }
            if lvl.kind == LevelKind::Table {
                bits |= Entry::PS.bits();
            }
            if maps_page && lvl.shift > 12 {
                bits |= bit_range(lvl.shift - 1, LARGE_PAGE_RESERVED_LOW);
            }
            bits
        }
    }
}

/// The access-rights rules of SDM 4.6.1, given the combined rights of the walk.
fn check_rights(
    cpu: &CpuState,
    access: Access,
    user_access: bool,
    writable: bool,
    user_page: bool,
    no_execute: bool,
) -> Result<(), ()> {
    let cr4 = cpu.cr4();
    // SMAP blocks supervisor data accesses to user pages unless RFLAGS.AC is set.
    let smap_blocks =
        !user_access && user_page && cr4.contains(Cr4::SMAP) && !cpu.rflags().contains(Rflags::AC);
    let allowed = match access {
        Access::Fetch => {
            !no_execute
                && if user_access {
                    user_page
                } else {
                    !(user_page && cr4.contains(Cr4::SMEP))
                }
        }
        Access::Read => {
            if user_access {
                user_page
            } else {
                !smap_blocks
            }
        }
        Access::Write => {
            if user_access {
                user_page && writable
            } else {
                // Supervisor writes ignore R/W unless CR0.WP is set.
                !smap_blocks && (writable || !cpu.cr0().contains(Cr0::WP))
            }
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(())
    }
}

/// Sets the accessed bits (and the dirty bit of the page's entry, for a write) of a
/// successful walk. Returns false if some entry changed since the walk read it.
fn set_accessed_dirty(bus: &mut dyn GuestBus, walk: &Walk, access: Access) -> bool {
    let used = walk.used.get(..walk.count).unwrap_or(&[]);
    for (i, entry) in used.iter().enumerate() {
        if !entry.has_accessed {
            continue;
        }
        let is_last = i + 1 == used.len();
        let mut new = entry.value | Entry::A.bits();
        if is_last && access == Access::Write {
            new |= Entry::D.bits();
        }
        if new == entry.value {
            continue;
        }
        let old_bytes = entry.value.to_le_bytes();
        let new_bytes = new.to_le_bytes();
        let (Some(old), Some(new)) = (old_bytes.get(..entry.bytes), new_bytes.get(..entry.bytes))
        else {
            continue;
        };
        match bus.cmpxchg_ram(entry.gpa, old, new) {
            Ok(true) => {}
            Ok(false) => return false,
            // The walk read this entry from RAM a moment ago; if it is gone now there is
            // nothing to update.
            Err(_) => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::cpu::CsAccessRights;
    use crate::emulate::testbus::TestBus;

    const P: u64 = Entry::P.bits();
    const RW: u64 = Entry::RW.bits();
    const US: u64 = Entry::US.bits();
    const PS: u64 = Entry::PS.bits();
    const A: u64 = Entry::A.bits();
    const D: u64 = Entry::D.bits();
    const XD: u64 = Entry::XD.bits();

    fn pf(linear: u64, code: PfErrorCode) -> Result<u64, Fault> {
        Err(Fault::page_fault(linear, code))
    }

    fn long_mode_cpu(cr3: u64) -> CpuState {
        CpuState {
            cr0: (Cr0::PE | Cr0::PG | Cr0::WP).bits(),
            cr3,
            cr4: Cr4::PAE.bits(),
            efer: (Efer::LME | Efer::LMA | Efer::NXE).bits(),
            cs_ar: CsAccessRights::L.bits(),
            ..CpuState::default()
        }
    }

    /// 4-level tables: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
    fn four_level(bus: &mut TestBus, pte: u64, pde_flags: u64) {
        bus.put_u64(0x1000, 0x2000 | P | RW | US);
        bus.put_u64(0x2000, 0x3000 | P | RW | US);
        bus.put_u64(0x3000, 0x4000 | pde_flags);
        bus.put_u64(0x4000 + 8 * 5, pte);
    }

    #[test]
    fn paging_off_is_identity_truncated_to_32_bits() {
        let mut bus = TestBus::new();
        let cpu = CpuState::default();
        assert_eq!(
            translate(&cpu, &mut bus, 0x1_0001_2345, Access::Write),
            Ok(0x1_2345)
        );
    }

    #[test]
    fn four_level_4k_sets_accessed_and_dirty() {
        let mut bus = TestBus::new();
        four_level(&mut bus, 0x7000 | P | RW, P | RW | US);
        let cpu = long_mode_cpu(0x1000);
        assert_eq!(translate(&cpu, &mut bus, 0x5123, Access::Read), Ok(0x7123));
        assert_eq!(bus.get_u64(0x1000) & A, A);
        assert_eq!(bus.get_u64(0x4028) & (A | D), A);
        assert_eq!(translate(&cpu, &mut bus, 0x5123, Access::Write), Ok(0x7123));
        assert_eq!(bus.get_u64(0x4028) & (A | D), A | D);
        // Non-leaf entries never get a dirty bit.
        assert_eq!(bus.get_u64(0x3000) & D, 0);
    }

    #[test]
    fn four_level_large_pages() {
        let mut bus = TestBus::new();
        bus.put_u64(0x1000, 0x2000 | P | RW);
        // PDPTE 0: 1 GiB page at 0x4000_0000; PDPTE 1: PD at 0x3000 whose entry 0 is a 2 MiB page at 0x60_0000.
        bus.put_u64(0x2000, 0x4000_0000 | P | RW | PS);
        bus.put_u64(0x2008, 0x3000 | P | RW);
        bus.put_u64(0x3000, 0x60_0000 | P | RW | PS);
        let cpu = long_mode_cpu(0x1000);
        assert_eq!(
            translate(&cpu, &mut bus, 0x1234_5678, Access::Read),
            Ok(0x5234_5678)
        );
        assert_eq!(
            translate(&cpu, &mut bus, 0x4012_3456, Access::Read),
            Ok(0x72_3456)
        );
        // A 2 MiB page with a bit in 20:13 set is a reserved-bit fault.
        bus.put_u64(0x3000, 0x60_0000 | 1 << 13 | P | RW | PS);
        assert_eq!(
            translate(&cpu, &mut bus, 0x4012_3456, Access::Read),
            pf(0x4012_3456, PfErrorCode::PRESENT | PfErrorCode::RSVD)
        );
    }

    #[test]
    fn five_level() {
        let mut bus = TestBus::new();
        bus.put_u64(0x1000 + 8, 0x2000 | P | RW); // PML5 index 1 (bit 48 set)
        bus.put_u64(0x2000, 0x3000 | P | RW);
        bus.put_u64(0x3000, 0x4000_0000 | P | RW | PS);
        let mut cpu = long_mode_cpu(0x1000);
        cpu.cr4 |= Cr4::LA57.bits();
        assert_eq!(
            translate(&cpu, &mut bus, 0x1_0000_0000_0042, Access::Read),
            Ok(0x4000_0042)
        );
        // Canonical in 5-level, non-canonical in 4-level.
        cpu.cr4 &= !Cr4::LA57.bits();
        assert_eq!(
            translate(&cpu, &mut bus, 0x1_0000_0000_0042, Access::Read),
            Err(Fault::general_protection())
        );
    }

    #[test]
    fn not_present_error_codes_and_cr2() {
        let mut bus = TestBus::new();
        four_level(&mut bus, 0, P | RW | US);
        let mut cpu = long_mode_cpu(0x1000);
        assert_eq!(
            translate(&cpu, &mut bus, 0x5008, Access::Read),
            pf(0x5008, PfErrorCode::empty())
        );
        assert_eq!(
            translate(&cpu, &mut bus, 0x5008, Access::Write),
            pf(0x5008, PfErrorCode::WRITE)
        );
        assert_eq!(
            translate(&cpu, &mut bus, 0x5008, Access::Fetch),
            pf(0x5008, PfErrorCode::FETCH)
        );
        cpu.cpl = 3;
        assert_eq!(
            translate(&cpu, &mut bus, 0x5008, Access::Write),
            pf(0x5008, PfErrorCode::WRITE | PfErrorCode::USER)
        );
        // Without NXE (and SMEP) a fetch fault does not report I/D.
        cpu.efer &= !Efer::NXE.bits();
        assert_eq!(
            translate(&cpu, &mut bus, 0x5008, Access::Fetch),
            pf(0x5008, PfErrorCode::USER)
        );
        // A failing walk sets no accessed bits.
        assert_eq!(bus.get_u64(0x1000) & A, 0);
    }

    #[test]
    fn protection_checks() {
        let mut bus = TestBus::new();
        // Read-only supervisor page, no-execute.
        four_level(&mut bus, 0x7000 | P | XD, P | RW | US);
        let mut cpu = long_mode_cpu(0x1000);
        assert_eq!(translate(&cpu, &mut bus, 0x5000, Access::Read), Ok(0x7000));
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Write),
            pf(0x5000, PfErrorCode::PRESENT | PfErrorCode::WRITE)
        );
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Fetch),
            pf(0x5000, PfErrorCode::PRESENT | PfErrorCode::FETCH)
        );
        // CR0.WP = 0 lets supervisor writes through.
        cpu.cr0 &= !Cr0::WP.bits();
        assert_eq!(translate(&cpu, &mut bus, 0x5000, Access::Write), Ok(0x7000));
        // CPL 3 cannot touch a supervisor page.
        cpu.cpl = 3;
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Read),
            pf(0x5000, PfErrorCode::PRESENT | PfErrorCode::USER)
        );
        // Without NXE, bit 63 is reserved.
        cpu.cpl = 0;
        cpu.efer &= !Efer::NXE.bits();
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Read),
            pf(0x5000, PfErrorCode::PRESENT | PfErrorCode::RSVD)
        );
    }

    #[test]
    fn user_pages_and_upper_level_restrictions() {
        let mut bus = TestBus::new();
        // The PTE allows user writes but the PDE is read-only: the combination is read-only.
        four_level(&mut bus, 0x7000 | P | RW | US, P | US);
        let mut cpu = long_mode_cpu(0x1000);
        cpu.cpl = 3;
        assert_eq!(translate(&cpu, &mut bus, 0x5000, Access::Read), Ok(0x7000));
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Write),
            pf(
                0x5000,
                PfErrorCode::PRESENT | PfErrorCode::WRITE | PfErrorCode::USER
            )
        );
        // SMAP: supervisor reads of user pages fault unless RFLAGS.AC.
        cpu.cpl = 0;
        cpu.cr4 |= Cr4::SMAP.bits();
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Read),
            pf(0x5000, PfErrorCode::PRESENT)
        );
        cpu.rflags |= Rflags::AC.bits();
        assert_eq!(translate(&cpu, &mut bus, 0x5000, Access::Read), Ok(0x7000));
        // SMEP: supervisor fetches from user pages fault.
        cpu.cr4 |= Cr4::SMEP.bits();
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Fetch),
            pf(0x5000, PfErrorCode::PRESENT | PfErrorCode::FETCH)
        );
    }

    #[test]
    fn reserved_physical_address_bits() {
        let mut bus = TestBus::new();
        four_level(&mut bus, 0x7000 | 1 << 45 | P, P | RW | US);
        let mut cpu = long_mode_cpu(0x1000);
        cpu.phys_addr_bits = 40;
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Write),
            pf(
                0x5000,
                PfErrorCode::PRESENT | PfErrorCode::RSVD | PfErrorCode::WRITE
            )
        );
        cpu.phys_addr_bits = 46;
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Read),
            Ok(0x2000_0000_7000)
        );
        // PS in a PML4E is reserved.
        bus.put_u64(0x1000, 0x2000 | P | RW | US | PS);
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Read),
            pf(0x5000, PfErrorCode::PRESENT | PfErrorCode::RSVD)
        );
        // A table outside RAM: no translation, reported as a reserved-bit fault.
        bus.put_u64(0x1000, 0x7_0000_0000 | P | RW | US);
        assert_eq!(
            translate(&cpu, &mut bus, 0x5000, Access::Read),
            pf(0x5000, PfErrorCode::PRESENT | PfErrorCode::RSVD)
        );
    }

    fn bits32_cpu() -> CpuState {
        CpuState {
            cr0: (Cr0::PE | Cr0::PG | Cr0::WP).bits(),
            cr3: 0x1000,
            cs_ar: CsAccessRights::DB.bits(),
            ..CpuState::default()
        }
    }

    #[test]
    fn bits32_4k_and_4m_pages() {
        let mut bus = TestBus::new();
        // PDE 1 -> PT at 0x2000; PTE 3 -> 0x9000. PDE 2: 4 MiB page with PSE-36 bits.
        bus.put_u32(0x1000 + 4, 0x2000 | (P | RW | US) as u32);
        bus.put_u32(0x2000 + 4 * 3, 0x9000 | (P | RW) as u32);
        bus.put_u32(0x1000 + 8, 0x0040_0000 | 0x3 << 13 | (P | RW | PS) as u32);
        let mut cpu = bits32_cpu();
        assert_eq!(
            translate(&cpu, &mut bus, 0x0040_3abc, Access::Write),
            Ok(0x9abc)
        );
        assert_eq!(bus.get_u32(0x2000 + 12) & (A | D) as u32, (A | D) as u32);
        // Without CR4.PSE the PS bit is ignored: PDE 2 points at a page table at
        // 0x40_6000 (bits 31:12 of the entry, PSE-36 bits included).
        bus.put_u32(0x40_6000 + 4 * 0x12, 0x5000 | P as u32);
        assert_eq!(
            translate(&cpu, &mut bus, 0x0081_2345, Access::Read),
            Ok(0x5345)
        );
        cpu.cr4 = Cr4::PSE.bits();
        assert_eq!(
            translate(&cpu, &mut bus, 0x0081_2345, Access::Read),
            Ok(0x3_0041_2345)
        );
        // Bit 21 of a 4 MiB PDE is reserved.
        bus.put_u32(0x1000 + 8, 0x0040_0000 | 1 << 21 | (P | RW | PS) as u32);
        assert_eq!(
            translate(&cpu, &mut bus, 0x0081_2345, Access::Read),
            pf(0x0081_2345, PfErrorCode::PRESENT | PfErrorCode::RSVD)
        );
        // Not present, user mode; 32-bit paging never reports I/D without SMEP.
        cpu.cpl = 3;
        assert_eq!(
            translate(&cpu, &mut bus, 0x00c0_0000, Access::Fetch),
            pf(0x00c0_0000, PfErrorCode::USER)
        );
        // User write to a supervisor read-write page.
        assert_eq!(
            translate(&cpu, &mut bus, 0x0040_3000, Access::Write),
            pf(
                0x0040_3000,
                PfErrorCode::PRESENT | PfErrorCode::WRITE | PfErrorCode::USER
            )
        );
    }

    #[test]
    fn pae_4k_and_2m_pages() {
        let mut bus = TestBus::new();
        // CR3 = 0x1020 (32-byte aligned PDPT); PDPTE 1 -> PD at 0x2000.
        bus.put_u64(0x1020 + 8, 0x2000 | P);
        bus.put_u64(0x2000, 0x3000 | P | RW | US);
        bus.put_u64(0x3000 + 8 * 2, 0x1_2345_6000 | P | RW | XD);
        bus.put_u64(0x2008, 0x0060_0000 | P | RW | PS);
        let mut cpu = CpuState {
            cr3: 0x1020,
            cr4: Cr4::PAE.bits(),
            efer: Efer::NXE.bits(),
            ..bits32_cpu()
        };
        assert_eq!(
            translate(&cpu, &mut bus, 0x4000_2010, Access::Read),
            Ok(0x1_2345_6010)
        );
        assert_eq!(
            translate(&cpu, &mut bus, 0x4000_2010, Access::Fetch),
            pf(0x4000_2010, PfErrorCode::PRESENT | PfErrorCode::FETCH)
        );
        assert_eq!(
            translate(&cpu, &mut bus, 0x4021_0000, Access::Write),
            Ok(0x61_0000)
        );
        // The PDPTE has no accessed bit; the PDE got one.
        assert_eq!(bus.get_u64(0x1028), 0x2000 | P);
        assert_eq!(bus.get_u64(0x2008) & (A | D), A | D);
        // PDPTE 0 not present; PDPTE with a reserved bit (bit 1).
        assert_eq!(
            translate(&cpu, &mut bus, 0x1000, Access::Read),
            pf(0x1000, PfErrorCode::empty())
        );
        bus.put_u64(0x1020 + 16, 0x2000 | P | RW);
        assert_eq!(
            translate(&cpu, &mut bus, 0x8000_0000, Access::Read),
            pf(0x8000_0000, PfErrorCode::PRESENT | PfErrorCode::RSVD)
        );
        // Without NXE the XD bit is reserved in PAE too.
        cpu.efer = 0;
        assert_eq!(
            translate(&cpu, &mut bus, 0x4000_2010, Access::Read),
            pf(0x4000_2010, PfErrorCode::PRESENT | PfErrorCode::RSVD)
        );
    }

    #[test]
    fn racing_entry_change_is_not_overwritten() {
        let mut bus = TestBus::new();
        four_level(&mut bus, 0x7000 | P | RW, P | RW | US);
        bus.fail_cmpxchg = 100;
        let cpu = long_mode_cpu(0x1000);
        // Translation still succeeds; the entries are left as the "other vCPU" had them.
        assert_eq!(translate(&cpu, &mut bus, 0x5000, Access::Read), Ok(0x7000));
        assert_eq!(bus.get_u64(0x1000) & A, 0);
    }

    #[test]
    fn bit_range_edges() {
        assert_eq!(bit_range(63, 0), u64::MAX);
        assert_eq!(bit_range(63, 63), 1 << 63);
        assert_eq!(bit_range(11, 12), 0);
        assert_eq!(bit_range(20, 13), 0x1f_e000);
    }
}
