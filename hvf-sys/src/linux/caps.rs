//! The VMX capabilities this layer reports through `hv_vmx_read_capability`: those of a
//! real Intel Mac, so that a VMM computes the same control values on Linux as on macOS,
//! and the layer then enforces them at every entry (see `controls.rs`).
//!
//! Source: /work/shared/reference/hvf-intel-api.md ("Typical raw capability values on
//! real Intel CPUs"), i.e. IA32_VMX_* MSR values printed by VMX kernel modules on
//! Skylake-era CPUs. Format of the control capabilities (SDM vol. 3, appendix A.3-A.5):
//! must-be-one bits in the low 32 bits, may-be-one bits in the high 32 bits.
use crate::types::*;
use crate::vmcs::*;
use crate::vmx::ProcBased2;

/// IA32_VMX_PINBASED_CTLS (A.3.1): EXTINT, NMI, VIRTUAL_NMI allowed; the VMM may not set
/// the preemption timer itself (bit 6 is 0 in the allowed-1 half: the layer does not
/// count VMCS_GUEST_VMX_TIMER_VALUE down). `hv_vcpu_run_until`'s deadline, for which HVF
/// arms that timer on its own, is supported (`kick.rs`).
pub const PINBASED: u64 = 0x0000_003f_0000_0016;
/// IA32_VMX_PROCBASED_CTLS (A.3.2).
pub const PROCBASED: u64 = 0xfff9_fffe_0401_e172;
/// IA32_VMX_PROCBASED_CTLS2 (A.3.3): EPT, RDTSCP, VPID, unrestricted guest, ...; VMCS
/// shadowing (bit 14) and virtual-APIC accesses (bit 0) are not offered.
pub const PROCBASED2: u64 = 0x0055_3cfe_0000_0000;
/// IA32_VMX_ENTRY_CTLS (A.5).
pub const ENTRY: u64 = 0x0003_ffff_0000_11ff;
/// IA32_VMX_EXIT_CTLS (A.4).
pub const EXIT: u64 = 0x01ff_ffff_0003_6dff;
/// IA32_VMX_BASIC (A.1): revision 0x12, 1024-byte VMCS, write-back VMCS memory type
/// (bits 53:50 = 6), INS/OUTS exit information (bit 54), TRUE_* MSRs exist (bit 55).
pub const BASIC: u64 = 0x00da_0400_0000_0012;
/// IA32_VMX_MISC (A.6): timer rate 5 (unused here), EFER.LMA stored on exit (bit 5),
/// HLT/shutdown/wait-for-SIPI activity states (bits 8:6), 4 CR3 targets. Bit 30 (zero
/// instruction length for software-event injection) is 0: the length must be 1..15.
pub const MISC: u64 = 0x0000_0000_0004_01e5;
/// IA32_VMX_CR0_FIXED0/1 (A.7): PE, NE, PG must be one (PE and PG may be 0 with
/// unrestricted guest, SDM 26.3.1.1).
pub const CR0_FIXED0: u64 = 0x8000_0021;
pub const CR0_FIXED1: u64 = 0xffff_ffff;
/// IA32_VMX_CR4_FIXED0/1 (A.8): VMXE must be one.
pub const CR4_FIXED0: u64 = 0x2000;
pub const CR4_FIXED1: u64 = 0x0037_67ff;
/// IA32_VMX_VMCS_ENUM (A.9): highest field index 0x17.
pub const VMCS_ENUM: u64 = 0x2e;
/// IA32_VMX_EPT_VPID_CAP (A.10): execute-only, 4-level walk, UC/WB, 2M/1G pages,
/// INVEPT (single/all context), INVVPID (all types).
pub const EPT_VPID_CAP: u64 = 0x0000_0f01_0633_4141;

/// The control bits a fresh VMCS of this layer holds beyond the must-be-one ones, as a
/// framework's may: "enable VPID" (HVF tags its guests' TLB entries). They are "don't
/// care" bits to a VMM, which must keep them (xhyve PR #211) rather than rebuild the
/// field from zero; hvrun's tests check it does.
pub const FRESH_PROCBASED2_EXTRA: u32 = ProcBased2::VPID.bits();

/// What `hv_vmx_vcpu_get_cap_write_vmcs` reports for a control field: the bits a write
/// must set (allowed-0) and may set (allowed-1), from the capabilities. `None`: not a
/// control field (those have no mask).
pub fn control_write_masks(field: u32) -> Option<(u64, u64)> {
    let cap = match field {
        VMCS_CTRL_PIN_BASED => PINBASED,
        VMCS_CTRL_CPU_BASED => PROCBASED,
        VMCS_CTRL_CPU_BASED2 => PROCBASED2,
        VMCS_CTRL_VMENTRY_CONTROLS => ENTRY,
        VMCS_CTRL_VMEXIT_CONTROLS => EXIT,
        _ => return None,
    };
    Some((cap & 0xffff_ffff, cap >> 32))
}

/// The value `hv_vmx_read_capability` reports, or `None` where the layer has none.
/// The TRUE_* capabilities equal the plain ones (BASIC bit 55 says they exist; a Mac's
/// HVF reports them equal to the plain values for the bits it lets a VMM change).
/// PREEMPTION_TIMER: `None` (HV_UNSUPPORTED): there is no VMX preemption timer on KVM.
pub fn capability(cap: hv_vmx_capability_t) -> Option<u64> {
    Some(match cap {
        HV_VMX_CAP_PINBASED | HV_VMX_CAP_TRUE_PINBASED => PINBASED,
        HV_VMX_CAP_PROCBASED | HV_VMX_CAP_TRUE_PROCBASED => PROCBASED,
        HV_VMX_CAP_PROCBASED2 => PROCBASED2,
        HV_VMX_CAP_ENTRY | HV_VMX_CAP_TRUE_ENTRY => ENTRY,
        HV_VMX_CAP_EXIT | HV_VMX_CAP_TRUE_EXIT => EXIT,
        HV_VMX_CAP_BASIC => BASIC,
        HV_VMX_CAP_MISC => MISC,
        HV_VMX_CAP_CR0_FIXED0 => CR0_FIXED0,
        HV_VMX_CAP_CR0_FIXED1 => CR0_FIXED1,
        HV_VMX_CAP_CR4_FIXED0 => CR4_FIXED0,
        HV_VMX_CAP_CR4_FIXED1 => CR4_FIXED1,
        HV_VMX_CAP_VMCS_ENUM => VMCS_ENUM,
        HV_VMX_CAP_EPT_VPID_CAP => EPT_VPID_CAP,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::*;

    #[test]
    fn the_controls_hvrun_wants_are_allowed() {
        let proc = cap2ctrl(PROCBASED, (ProcBased::HLT | ProcBased::UNCOND_IO
            | ProcBased::MSR_BITMAPS | ProcBased::TSC_OFFSET | ProcBased::SECONDARY).bits());
        assert!(ctrl_allowed(PROCBASED, proc));
        let proc2 = cap2ctrl(PROCBASED2, (ProcBased2::EPT | ProcBased2::UNRESTRICTED).bits());
        assert_eq!(proc2, (ProcBased2::EPT | ProcBased2::UNRESTRICTED).bits());
        assert!(!ctrl_allowed(PROCBASED2, ProcBased2::VMCS_SHADOW.bits()));
        assert!(!ctrl_allowed(PINBASED, cap2ctrl(PINBASED, 0) | PinBased::PREEMPTION_TIMER.bits()));
        assert_eq!(capability(HV_VMX_CAP_TRUE_ENTRY), Some(ENTRY));
        assert_eq!(capability(HV_VMX_CAP_PREEMPTION_TIMER), None);
        // VMXE is the one fixed-1 bit of CR4.
        assert_eq!(capability(HV_VMX_CAP_CR4_FIXED0), Some(1 << 13));
    }
}
