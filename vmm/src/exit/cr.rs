//! Control-register accesses (exit reason 28, qualification in SDM 28.2.1 table 28-3).
//! Only the CR0/CR4 bits in hvrun's guest/host masks exit (see `controls`); the guest
//! sees its own values through the read shadows.
use super::{Action, ExitContext};
use crate::controls::*;
use hvf_sys::vmcs::*;
use hvf_sys::vmx::*;
use hvf_sys::*;

/// CR4.PCIDE (SDM vol. 3, 2.5) and the MOV-to-CR3 bit that then keeps the TLB.
const CR4_PCIDE: u64 = 1 << 17;
const CR3_NO_FLUSH: u64 = 1 << 63;

pub fn handle(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let q = CrQualification::decode(ctx.vcpu.read_vmcs(VMCS_RO_EXIT_QUALIFIC)?);
    if crate::trace::tracing() {
        ctx.note = Some(format!("cr{} type={} gpr={}", q.cr, q.access_type, q.gpr));
    }
    match (q.access_type, q.cr) {
        (CR_ACCESS_MOV_TO, 0) => {
            let value = ctx.read_gpr(q.gpr)?;
            if !write_cr0(ctx, value)? {
                return Ok(Action::Resume);
            }
        }
        (CR_ACCESS_MOV_TO, 4) => {
            let value = ctx.read_gpr(q.gpr)?;
            // VMXE is hidden (CPUID shows no VMX): setting it is #GP, as are the bits
            // this CPU lacks (SDM vol. 2, MOV CR; the fixed-1 capability, A.8).
            let allowed = ctx.vcpu.vmcs_write_masks(VMCS_GUEST_CR4)?.1 & !CR4_VMXE;
            if value & !allowed != 0 {
                ctx.inject_gp()?;
                return Ok(Action::Resume);
            }
            ctx.vcpu.write_vmcs(VMCS_CTRL_CR4_SHADOW, value)?;
            ctx.vcpu.write_vmcs(VMCS_GUEST_CR4, effective_cr4(value))?;
            // Paging-mode bits changed behind the framework's back: it must drop the
            // translations the CPU would have (SDM vol. 3, 4.10.4.1; QEMU's hvf does this).
            ctx.vcpu.invalidate_tlb()?;
        }
        // CR3 exits only where the framework forces CR3-load/store exiting on (the plain,
        // not TRUE, capability of older CPUs makes them must-be-one, SDM A.3.2): the
        // guest's CR3 is in the VMCS. With CR4.PCIDE, bit 63 asks not to flush and is
        // never stored (SDM vol. 3, 4.10.4.1); without it every load flushes.
        (CR_ACCESS_MOV_TO, 3) => {
            let value = ctx.read_gpr(q.gpr)?;
            let pcide = ctx.vcpu.read_vmcs(VMCS_CTRL_CR4_SHADOW)? & CR4_PCIDE != 0;
            ctx.vcpu.write_vmcs(VMCS_GUEST_CR3, if pcide { value & !CR3_NO_FLUSH } else { value })?;
            if !(pcide && value & CR3_NO_FLUSH != 0) {
                ctx.vcpu.invalidate_tlb()?;
            }
        }
        (CR_ACCESS_MOV_FROM, 3) => {
            let cr3 = ctx.vcpu.read_vmcs(VMCS_GUEST_CR3)?;
            ctx.write_gpr(q.gpr, cr3)?;
        }
        // CR8 is the task-priority register; hvrun's guests run without a TPR shadow, so
        // it lives in the vCPU's TPR.
        (CR_ACCESS_MOV_TO, 8) => {
            let value = ctx.read_gpr(q.gpr)?;
            ctx.vcpu.write_reg(HV_X86_TPR, value & 0xf)?;
        }
        (CR_ACCESS_MOV_FROM, 8) => {
            let tpr = ctx.vcpu.read_reg(HV_X86_TPR)?;
            ctx.write_gpr(q.gpr, tpr & 0xf)?;
        }
        (CR_ACCESS_CLTS, _) => {
            // CLTS clears CR0.TS (bit 3); TS is not in the mask, so this exit is unexpected
            // but harmless to honour.
            let cr0 = ctx.vcpu.read_vmcs(VMCS_GUEST_CR0)?;
            ctx.vcpu.write_vmcs(VMCS_GUEST_CR0, cr0 & !8)?;
            let shadow = ctx.vcpu.read_vmcs(VMCS_CTRL_CR0_SHADOW)?;
            ctx.vcpu.write_vmcs(VMCS_CTRL_CR0_SHADOW, shadow & !8)?;
        }
        (CR_ACCESS_LMSW, _) => {
            // LMSW loads CR0 bits 3:0 but can never clear PE (SDM vol. 2, LMSW).
            let shadow = ctx.vcpu.read_vmcs(VMCS_CTRL_CR0_SHADOW)?;
            let value = (shadow & !0xe) | (q.lmsw_source as u64 & 0xf) | (shadow & CR0_PE);
            if !write_cr0(ctx, value)? {
                return Ok(Action::Resume);
            }
        }
        _ => return super::fault::unhandled(ctx, VMX_REASON_MOV_CR),
    }
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}

/// MOV to CR0. When paging is switched on with EFER.LME set, the CPU enters IA-32e mode:
/// EFER.LMA and the "IA-32e mode guest" entry control must follow, or the next VM entry
/// fails (SDM 27.3.1.1; hyperkit#226). Switching paging off leaves it. Returns false when
/// the write faulted (#GP injected, RIP unchanged).
fn write_cr0(ctx: &mut ExitContext, value: u64) -> Result<bool, HvError> {
    let efer = ctx.vcpu.read_vmcs(VMCS_GUEST_IA32_EFER)?;
    let cr4 = ctx.vcpu.read_vmcs(VMCS_GUEST_CR4)?;
    // PG without PE, NW without CD, and long-mode paging without PAE are #GP (SDM vol. 2, MOV CR).
    let invalid = (value & CR0_PG != 0 && value & CR0_PE == 0)
        || (value & CR0_NW != 0 && value & CR0_CD == 0)
        || (value & CR0_PG != 0 && efer & EFER_LME != 0 && cr4 & CR4_PAE == 0)
        || value >> 32 != 0;
    if invalid {
        ctx.inject_gp()?;
        return Ok(false);
    }
    let entry = ctx.vcpu.read_vmcs(VMCS_CTRL_VMENTRY_CONTROLS)?;
    let ia32e = EntryControls::GUEST_IA32E.bits() as u64;
    let (efer, entry) = if value & CR0_PG != 0 && efer & EFER_LME != 0 {
        // In IA-32e mode VM entry accepts only a 64-bit busy TSS in TR (SDM 27.3.1.2),
        // but a CPU may enter long mode holding the 16-bit TSS of real mode, as an AP
        // leaving its start-up trampoline does: the guest loads its own TR before any
        // use of it, so the type is corrected here (KVM and QEMU's hvf do the same).
        let tr_ar = ctx.vcpu.read_vmcs(VMCS_GUEST_TR_AR)?;
        if tr_ar as u32 & 0xf == AR_TYPE_TSS16_BUSY {
            ctx.vcpu.write_vmcs(VMCS_GUEST_TR_AR, (tr_ar & !0xf) | u64::from(AR_TYPE_TSS32_BUSY))?;
        }
        (efer | EFER_LMA, entry | ia32e)
    } else {
        (efer & !EFER_LMA, entry & !ia32e)
    };
    ctx.vcpu.write_vmcs(VMCS_GUEST_IA32_EFER, efer)?;
    ctx.vcpu.write_vmcs(VMCS_CTRL_VMENTRY_CONTROLS, entry)?;
    ctx.vcpu.write_vmcs(VMCS_CTRL_CR0_SHADOW, value)?;
    ctx.vcpu.write_vmcs(VMCS_GUEST_CR0, effective_cr0(value))?;
    // A PG/PE/CD change ends the translations cached under the old mode (SDM 4.10.4.1).
    ctx.vcpu.invalidate_tlb()?;
    Ok(true)
}
