//! Exits that end the machine: triple fault (reason 2), a failed VM entry (reason 33 with
//! bit 31 set, SDM 27.8), and any reason hvrun has no handler for. Each stops with a
//! readable dump of the registers and the VMCS fields that explain it.
use super::{Action, ExitContext};
use crate::machine::StopReason;
use crate::regs::VcpuRegs;
use hvf_sys::vmcs::*;
use hvf_sys::vmx::*;
use hvf_sys::*;
use std::fmt::Write;

pub fn triple_fault(ctx: &mut ExitContext) -> Result<Action, HvError> {
    Ok(Action::Stop(StopReason::TripleFault { dump: dump(ctx.vcpu) }))
}

pub fn entry_failed(ctx: &mut ExitContext, reason: u32) -> Result<Action, HvError> {
    let qualification = ctx.vcpu.read_vmcs(VMCS_RO_EXIT_QUALIFIC).unwrap_or(0);
    Ok(Action::Stop(StopReason::EntryFailed {
        reason: reason & 0xffff,
        qualification,
        dump: dump(ctx.vcpu),
    }))
}

pub fn unhandled(ctx: &mut ExitContext, reason: u32) -> Result<Action, HvError> {
    Ok(Action::Stop(StopReason::Fatal {
        message: format!("unhandled VM exit {} ({reason})", exit_reason_name(reason)),
        dump: dump(ctx.vcpu),
    }))
}

/// Registers and the VMCS fields a reader needs to see why the guest stopped. Fields the
/// vCPU cannot read are shown as `?`.
pub fn dump(vcpu: &dyn VcpuRegs) -> String {
    let mut out = String::new();
    let reg = |r| vcpu.read_reg(r).map(|v| format!("{v:016x}")).unwrap_or_else(|_| "?".repeat(16));
    let rows: [&[hv_x86_reg_t]; 6] = [
        &[HV_X86_RAX, HV_X86_RBX, HV_X86_RCX, HV_X86_RDX],
        &[HV_X86_RSI, HV_X86_RDI, HV_X86_RBP, HV_X86_RSP],
        &[HV_X86_R8, HV_X86_R9, HV_X86_R10, HV_X86_R11],
        &[HV_X86_R12, HV_X86_R13, HV_X86_R14, HV_X86_R15],
        &[HV_X86_RIP, HV_X86_RFLAGS, HV_X86_CR2, HV_X86_CR3],
        &[HV_X86_CR0, HV_X86_CR4, HV_X86_XCR0, HV_X86_TPR],
    ];
    for row in rows {
        let line: Vec<String> = row.iter().map(|&r| format!("{:>6}={}", hv_x86_reg_name(r), reg(r))).collect();
        let _ = writeln!(out, "{}", line.join(" "));
    }
    let segments = [
        ("CS", VMCS_GUEST_CS, VMCS_GUEST_CS_BASE, VMCS_GUEST_CS_LIMIT, VMCS_GUEST_CS_AR),
        ("SS", VMCS_GUEST_SS, VMCS_GUEST_SS_BASE, VMCS_GUEST_SS_LIMIT, VMCS_GUEST_SS_AR),
        ("DS", VMCS_GUEST_DS, VMCS_GUEST_DS_BASE, VMCS_GUEST_DS_LIMIT, VMCS_GUEST_DS_AR),
        ("ES", VMCS_GUEST_ES, VMCS_GUEST_ES_BASE, VMCS_GUEST_ES_LIMIT, VMCS_GUEST_ES_AR),
        ("FS", VMCS_GUEST_FS, VMCS_GUEST_FS_BASE, VMCS_GUEST_FS_LIMIT, VMCS_GUEST_FS_AR),
        ("GS", VMCS_GUEST_GS, VMCS_GUEST_GS_BASE, VMCS_GUEST_GS_LIMIT, VMCS_GUEST_GS_AR),
        ("TR", VMCS_GUEST_TR, VMCS_GUEST_TR_BASE, VMCS_GUEST_TR_LIMIT, VMCS_GUEST_TR_AR),
        ("LDTR", VMCS_GUEST_LDTR, VMCS_GUEST_LDTR_BASE, VMCS_GUEST_LDTR_LIMIT, VMCS_GUEST_LDTR_AR),
    ];
    let field = |f| vcpu.read_vmcs(f).map(|v| format!("{v:#x}")).unwrap_or_else(|_| "?".into());
    for (name, sel, base, limit, ar) in segments {
        let _ = writeln!(out, "{name:>6} sel={} base={} limit={} ar={}", field(sel), field(base), field(limit), field(ar));
    }
    for f in [
        VMCS_GUEST_GDTR_BASE, VMCS_GUEST_GDTR_LIMIT, VMCS_GUEST_IDTR_BASE, VMCS_GUEST_IDTR_LIMIT,
        VMCS_GUEST_IA32_EFER, VMCS_GUEST_IGNORE_IRQ, VMCS_GUEST_ACTIVITY_STATE, VMCS_CTRL_CR0_SHADOW,
        VMCS_CTRL_CR4_SHADOW, VMCS_CTRL_PIN_BASED, VMCS_CTRL_CPU_BASED, VMCS_CTRL_CPU_BASED2,
        VMCS_CTRL_VMENTRY_CONTROLS, VMCS_CTRL_VMEXIT_CONTROLS, VMCS_CTRL_VMENTRY_IRQ_INFO,
        VMCS_RO_EXIT_REASON, VMCS_RO_EXIT_QUALIFIC, VMCS_RO_IDT_VECTOR_INFO, VMCS_RO_INSTR_ERROR,
    ] {
        let _ = writeln!(out, "{:>32} = {}", vmcs_field_name(f).unwrap_or("?"), field(f));
    }
    out
}
