//! The VM-entry checks on the guest-state area (Intel SDM vol. 3, 27.3.1 in the 2016+
//! editions, 26.3.1 in newer ones: "Checks on the Guest State Area"), as far as a VMM
//! driving HVF can get them wrong. A real VT-x CPU refuses such an entry with exit reason
//! 33 | bit 31; KVM would run the guest anyway, so the layer checks first and fails the
//! same way. Each check is a small pure function of a [`GuestView`].
use super::caps;
use super::segments::*;
use crate::vmx::*;

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_VMXE: u64 = 1 << 13;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// EFER bits a guest may have set: SCE 0, LME 8, LMA 10, NXE 11, SVME 12, LMSLE 13,
/// FFXSR 14, TCE 15 (the AMD ones are reserved on Intel but harmless to accept).
pub const EFER_DEFINED: u64 = (1 << 0) | (0xff << 8);
pub const RFLAGS_FIXED: u64 = 1 << 1;
pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS bits that must be zero at entry: 63:22, 15, 5, 3 (SDM 26.3.1.4).
pub const RFLAGS_RESERVED: u64 = !((1u64 << 22) - 1) | (1 << 15) | (1 << 5) | (1 << 3);

/// The guest-state fields the checks look at, as the VMCS presents them.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestView {
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub rflags: u64,
    /// SEG_* order.
    pub segs: [VmxSegment; SEGMENT_COUNT],
    pub interruptibility: u32,
    pub activity: u32,
    pub entry_controls: u32,
    /// Secondary controls in effect (0 when the primary SECONDARY control is clear).
    pub proc2: u32,
    pub entry_irq_info: u32,
}

impl GuestView {
    fn unrestricted(&self) -> bool {
        self.proc2 & ProcBased2::UNRESTRICTED.bits() != 0
    }
    fn ia32e(&self) -> bool {
        self.entry_controls & EntryControls::GUEST_IA32E.bits() != 0
    }
    fn protected(&self) -> bool {
        self.cr0 & CR0_PE != 0
    }
}

pub type CheckResult = Result<(), &'static str>;

/// CR0 fixed bits (A.7); with unrestricted guest PE and PG may be 0; PG needs PE.
pub fn check_cr0(v: &GuestView) -> CheckResult {
    let mut fixed0 = caps::CR0_FIXED0;
    if v.unrestricted() {
        fixed0 &= !(CR0_PE | CR0_PG);
    }
    if v.cr0 & fixed0 != fixed0 || v.cr0 & !caps::CR0_FIXED1 != 0 {
        return Err("CR0 violates IA32_VMX_CR0_FIXED0/1");
    }
    if v.cr0 & CR0_PG != 0 && v.cr0 & CR0_PE == 0 {
        return Err("CR0.PG=1 requires CR0.PE=1");
    }
    Ok(())
}

/// CR4 fixed bits (A.8): VMXE must be set in the VMCS's CR4; PCIDE needs IA-32e mode.
pub fn check_cr4(v: &GuestView) -> CheckResult {
    if v.cr4 & caps::CR4_FIXED0 != caps::CR4_FIXED0 || v.cr4 & !caps::CR4_FIXED1 != 0 {
        return Err("CR4 violates IA32_VMX_CR4_FIXED0/1 (VMXE must be set)");
    }
    if !v.ia32e() && v.cr4 & CR4_PCIDE != 0 {
        return Err("CR4.PCIDE=1 outside IA-32e mode");
    }
    Ok(())
}

/// IA32_EFER when "load IA32_EFER" is set: reserved bits 0, LMA = "IA-32e mode guest",
/// and LMA = LME when CR0.PG=1.
pub fn check_efer(v: &GuestView) -> CheckResult {
    if v.entry_controls & EntryControls::LOAD_EFER.bits() == 0 {
        return Ok(());
    }
    if v.efer & !EFER_DEFINED != 0 {
        return Err("IA32_EFER has reserved bits set");
    }
    let lma = v.efer & EFER_LMA != 0;
    if lma != v.ia32e() {
        return Err("IA32_EFER.LMA differs from the IA-32e mode guest entry control");
    }
    if v.cr0 & CR0_PG != 0 && lma != (v.efer & EFER_LME != 0) {
        return Err("IA32_EFER.LMA differs from LME while CR0.PG=1");
    }
    Ok(())
}

/// An IA-32e mode guest needs paging with PAE.
pub fn check_ia32e(v: &GuestView) -> CheckResult {
    if v.ia32e() && (v.cr0 & CR0_PG == 0 || v.cr4 & CR4_PAE == 0) {
        return Err("IA-32e mode guest requires CR0.PG=1 and CR4.PAE=1");
    }
    Ok(())
}

/// RFLAGS: bit 1 set, reserved bits clear, VM clear in IA-32e mode or real mode.
pub fn check_rflags(v: &GuestView) -> CheckResult {
    if v.rflags & RFLAGS_FIXED == 0 {
        return Err("RFLAGS bit 1 must be 1");
    }
    if v.rflags & RFLAGS_RESERVED != 0 {
        return Err("RFLAGS reserved bits (63:22, 15, 5, 3) must be 0");
    }
    if v.rflags & RFLAGS_VM != 0 && (v.ia32e() || !v.protected()) {
        return Err("RFLAGS.VM must be 0 in IA-32e mode or with CR0.PE=0");
    }
    Ok(())
}

/// Limit/granularity consistency of a usable segment (SDM 26.3.1.2).
fn limit_matches_granularity(seg: &VmxSegment) -> bool {
    let g = seg.ar & AR_G != 0;
    (seg.limit & 0xfff == 0xfff || !g) && (seg.limit & 0xfff0_0000 == 0 || g)
}

/// CS: usable, accessed code (or type 3 read/write data with unrestricted guest),
/// S=1, P=1; a 64-bit CS (IA-32e and L=1) needs D=0.
pub fn check_cs(v: &GuestView) -> CheckResult {
    let cs = &v.segs[SEG_CS];
    let ty = cs.seg_type();
    let type_ok = matches!(ty, 9 | 11 | 13 | 15) || (ty == 3 && v.unrestricted());
    if !cs.usable() || !type_ok || cs.ar & AR_S == 0 || cs.ar & AR_P == 0 {
        return Err("CS access rights invalid (usable accessed code segment, S=1, P=1)");
    }
    if v.ia32e() && cs.ar & AR_L != 0 && cs.ar & AR_DB != 0 {
        return Err("64-bit CS (L=1) must have D=0");
    }
    if !limit_matches_granularity(cs) {
        return Err("CS limit inconsistent with G");
    }
    Ok(())
}

/// SS, DS, ES, FS, GS: outside real mode a null selector must carry the unusable bit
/// (that is how a CPU holds a null data segment); a usable one is an accessed, present
/// S=1 segment whose limit fits its granularity.
pub fn check_data_segments(v: &GuestView) -> CheckResult {
    for (index, name) in [(SEG_SS, "SS"), (SEG_DS, "DS"), (SEG_ES, "ES"), (SEG_FS, "FS"), (SEG_GS, "GS")] {
        let seg = &v.segs[index];
        if !seg.usable() {
            continue;
        }
        if v.protected() && seg.selector & !3 == 0 {
            log::debug!("entry check: {name} null selector without the unusable bit");
            return Err("null selector in ES/DS/FS/GS/SS outside real mode without the unusable bit");
        }
        if seg.ar & AR_S == 0 || seg.ar & AR_P == 0 || seg.seg_type() & 1 == 0 {
            log::debug!("entry check: {name} AR {:#x}", seg.ar);
            return Err("usable data segment must be accessed, S=1, P=1");
        }
        if !limit_matches_granularity(seg) {
            return Err("data segment limit inconsistent with G");
        }
    }
    Ok(())
}

/// TR: usable busy TSS (type 11 in IA-32e mode, 3 or 11 otherwise), S=0, P=1, TI=0.
pub fn check_tr(v: &GuestView) -> CheckResult {
    let tr = &v.segs[SEG_TR];
    let ty = tr.seg_type();
    let type_ok = if v.ia32e() { ty == AR_TYPE_TSS32_BUSY } else { ty == AR_TYPE_TSS16_BUSY || ty == AR_TYPE_TSS32_BUSY };
    if !tr.usable() || !type_ok || tr.ar & AR_S != 0 || tr.ar & AR_P == 0 {
        return Err("TR must be a usable busy TSS (type 11; 3 or 11 outside IA-32e), S=0, P=1");
    }
    if tr.selector & 4 != 0 {
        return Err("TR selector TI flag must be 0");
    }
    Ok(())
}

/// LDTR: unusable, or an LDT (type 2, S=0, P=1, TI=0).
pub fn check_ldtr(v: &GuestView) -> CheckResult {
    let ldtr = &v.segs[SEG_LDTR];
    if !ldtr.usable() {
        return Ok(());
    }
    if ldtr.seg_type() != AR_TYPE_LDT || ldtr.ar & AR_S != 0 || ldtr.ar & AR_P == 0 || ldtr.selector & 4 != 0 {
        return Err("usable LDTR must be an LDT (type 2, S=0, P=1, TI=0)");
    }
    Ok(())
}

/// Interruptibility and activity state (SDM 26.3.1.5).
pub fn check_interruptibility(v: &GuestView) -> CheckResult {
    let irq = Interruptibility::from_bits_retain(v.interruptibility);
    if v.interruptibility & !0x1f != 0 {
        return Err("interruptibility state reserved bits set");
    }
    if irq.contains(Interruptibility::STI | Interruptibility::MOV_SS) {
        return Err("blocking by STI and by MOV SS both set");
    }
    if irq.contains(Interruptibility::STI) && v.rflags & RFLAGS_IF == 0 {
        return Err("blocking by STI requires RFLAGS.IF=1");
    }
    if v.activity > ACTIVITY_WAIT_SIPI {
        return Err("activity state out of range");
    }
    if v.activity == ACTIVITY_HLT && (v.segs[SEG_SS].ar >> AR_DPL_SHIFT) & 3 != 0 {
        return Err("HLT activity state requires SS.DPL=0");
    }
    let info = v.entry_irq_info;
    if info & IRQ_INFO_VALID != 0 {
        let ty = info & IRQ_INFO_TYPE_MASK;
        if ty == IRQ_INFO_EXT_IRQ {
            if v.rflags & RFLAGS_IF == 0 {
                return Err("injecting an external interrupt requires RFLAGS.IF=1");
            }
            if irq.intersects(Interruptibility::STI | Interruptibility::MOV_SS) {
                return Err("injecting an external interrupt with STI/MOV SS blocking");
            }
        }
        if ty == IRQ_INFO_NMI && irq.contains(Interruptibility::MOV_SS) {
            return Err("injecting an NMI with MOV SS blocking");
        }
        if v.activity == ACTIVITY_HLT && !matches!(ty, IRQ_INFO_EXT_IRQ | IRQ_INFO_NMI | IRQ_INFO_HARD_EXC) {
            return Err("HLT activity state with an injected software event");
        }
    }
    Ok(())
}

/// Every guest-state check, in the SDM's order; the first failure is returned.
pub fn check_guest_state(v: &GuestView) -> CheckResult {
    check_cr0(v)?;
    check_cr4(v)?;
    check_efer(v)?;
    check_ia32e(v)?;
    check_cs(v)?;
    check_data_segments(v)?;
    check_tr(v)?;
    check_ldtr(v)?;
    check_rflags(v)?;
    check_interruptibility(v)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The real-mode state the KVM tests use: CS AR 0x9b, data 0x93, TR 0x8b, LDTR
    /// unusable, CR0 = ET|NE, CR4 = VMXE, RFLAGS = 2, unrestricted guest.
    pub fn real_mode() -> GuestView {
        let data = VmxSegment { selector: 0, base: 0, limit: 0xffff, ar: 0x93 };
        let mut segs = [data; SEGMENT_COUNT];
        segs[SEG_CS].ar = 0x9b;
        segs[SEG_TR].ar = 0x8b;
        segs[SEG_LDTR].ar = AR_UNUSABLE;
        GuestView {
            cr0: 0x30,
            cr4: CR4_VMXE,
            efer: 0,
            rflags: 2,
            segs,
            interruptibility: 0,
            activity: ACTIVITY_ACTIVE,
            entry_controls: EntryControls::LOAD_EFER.bits(),
            proc2: (ProcBased2::EPT | ProcBased2::UNRESTRICTED).bits(),
            entry_irq_info: 0,
        }
    }

    /// A 64-bit kernel's state: flat 64-bit CS, null data selectors marked unusable.
    fn long_mode() -> GuestView {
        let mut v = real_mode();
        v.cr0 = 0x8000_0031;
        v.cr4 = CR4_VMXE | CR4_PAE;
        v.efer = EFER_LME | EFER_LMA;
        v.entry_controls |= EntryControls::GUEST_IA32E.bits();
        v.segs[SEG_CS] = VmxSegment { selector: 0x10, base: 0, limit: 0xffff_ffff, ar: 0xa09b };
        for i in [SEG_SS, SEG_DS, SEG_ES, SEG_FS, SEG_GS] {
            v.segs[i] = VmxSegment { selector: 0, base: 0, limit: 0, ar: AR_UNUSABLE };
        }
        v.segs[SEG_TR] = VmxSegment { selector: 0x40, base: 0x1000, limit: 0x67, ar: 0x8b };
        v
    }

    #[test]
    fn valid_states_pass() {
        assert_eq!(check_guest_state(&real_mode()), Ok(()));
        assert_eq!(check_guest_state(&long_mode()), Ok(()));
    }

    #[test]
    fn cr0_fixed_bits() {
        let mut v = real_mode();
        v.cr0 = 0x10; // NE clear
        assert!(check_cr0(&v).is_err());
        v.cr0 = 0x8000_0030; // PG without PE
        assert!(check_cr0(&v).is_err());
        v = real_mode();
        v.proc2 = ProcBased2::EPT.bits(); // without unrestricted guest PE/PG are fixed 1
        assert!(check_cr0(&v).is_err());
    }

    #[test]
    fn cr4_needs_vmxe() {
        let mut v = real_mode();
        v.cr4 = 0;
        assert!(check_cr4(&v).is_err());
        v.cr4 = CR4_VMXE | CR4_PCIDE;
        assert!(check_cr4(&v).is_err());
    }

    #[test]
    fn efer_lma_follows_the_entry_control() {
        let mut v = long_mode();
        v.entry_controls &= !EntryControls::GUEST_IA32E.bits();
        assert!(check_efer(&v).is_err());
        let mut v = long_mode();
        v.efer = EFER_LMA; // LMA without LME while paging
        assert!(check_efer(&v).is_err());
        let mut v = long_mode();
        v.efer |= 1 << 20;
        assert!(check_efer(&v).is_err());
        // Without LOAD_EFER the field is not loaded, so not checked.
        v.entry_controls &= !EntryControls::LOAD_EFER.bits();
        assert_eq!(check_efer(&v), Ok(()));
    }

    #[test]
    fn ia32e_needs_paging_and_pae() {
        let mut v = long_mode();
        v.cr4 &= !CR4_PAE;
        assert!(check_ia32e(&v).is_err());
    }

    #[test]
    fn cs_checks() {
        let mut v = long_mode();
        v.segs[SEG_CS].ar |= AR_DB;
        assert!(check_cs(&v).is_err());
        let mut v = real_mode();
        v.segs[SEG_CS].ar = 0x93; // data type 3: only with unrestricted guest
        assert_eq!(check_cs(&v), Ok(()));
        v.proc2 = ProcBased2::EPT.bits();
        assert!(check_cs(&v).is_err());
        let mut v = real_mode();
        v.segs[SEG_CS].limit = 0x10_ffff; // G=0 but limit above 1 MB
        assert!(check_cs(&v).is_err());
    }

    #[test]
    fn null_selectors_need_the_unusable_bit() {
        let mut v = long_mode();
        v.segs[SEG_DS].ar = 0x93;
        assert!(check_data_segments(&v).is_err());
        // In real mode a zero selector is an ordinary segment.
        assert_eq!(check_data_segments(&real_mode()), Ok(()));
        let mut v = real_mode();
        v.segs[SEG_SS].ar = 0x13; // not present
        assert!(check_data_segments(&v).is_err());
    }

    #[test]
    fn tr_must_be_a_busy_tss() {
        let mut v = long_mode();
        v.segs[SEG_TR].ar = 0x83; // 16-bit busy TSS: not in IA-32e mode
        assert!(check_tr(&v).is_err());
        let mut v = real_mode();
        v.segs[SEG_TR].ar = 0x89; // available, not busy
        assert!(check_tr(&v).is_err());
        v.segs[SEG_TR].ar = AR_UNUSABLE;
        assert!(check_tr(&v).is_err());
        v.segs[SEG_TR].ar = 0x8b;
        assert_eq!(check_tr(&v), Ok(()));
    }

    #[test]
    fn ldtr_unusable_or_ldt() {
        let mut v = real_mode();
        v.segs[SEG_LDTR].ar = 0x82;
        assert_eq!(check_ldtr(&v), Ok(()));
        v.segs[SEG_LDTR].ar = 0x8b;
        assert!(check_ldtr(&v).is_err());
    }

    #[test]
    fn rflags_reserved_bits() {
        let mut v = real_mode();
        v.rflags = 0;
        assert!(check_rflags(&v).is_err());
        for bit in [3, 5, 15, 22, 63] {
            v.rflags = 2 | 1 << bit;
            assert!(check_rflags(&v).is_err(), "bit {bit}");
        }
        v.rflags = 2 | RFLAGS_VM;
        assert!(check_rflags(&v).is_err());
        v.rflags = 0x202;
        assert_eq!(check_rflags(&v), Ok(()));
    }

    #[test]
    fn external_interrupt_injection_needs_if_and_no_blocking() {
        let mut v = real_mode();
        v.entry_irq_info = IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x20;
        assert!(check_interruptibility(&v).is_err());
        v.rflags = 0x202;
        assert_eq!(check_interruptibility(&v), Ok(()));
        v.interruptibility = Interruptibility::STI.bits();
        assert!(check_interruptibility(&v).is_err());
        v.interruptibility = Interruptibility::MOV_SS.bits();
        assert!(check_interruptibility(&v).is_err());
        // A hardware exception does not care about IF.
        v.interruptibility = 0;
        v.rflags = 2;
        v.entry_irq_info = IRQ_INFO_VALID | IRQ_INFO_HARD_EXC | 13;
        assert_eq!(check_interruptibility(&v), Ok(()));
    }

    #[test]
    fn sti_blocking_needs_if() {
        let mut v = real_mode();
        v.interruptibility = Interruptibility::STI.bits();
        assert!(check_interruptibility(&v).is_err());
        v.rflags = 0x202;
        assert_eq!(check_interruptibility(&v), Ok(()));
        v.interruptibility |= Interruptibility::MOV_SS.bits();
        assert!(check_interruptibility(&v).is_err());
    }
}
