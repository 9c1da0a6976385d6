//! RDMSR and WRMSR (exit reasons 31 and 32): ECX names the MSR, EDX:EAX holds the value
//! (SDM vol. 2, RDMSR/WRMSR). An MSR hvrun does not have raises #GP(0) in the guest.
use super::{Action, ExitContext};
use crate::msr::MsrAnswer;
use hvf_sys::*;

pub fn handle_rdmsr(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let msr = ctx.vcpu.read_reg(HV_X86_RCX)? as u32;
    let value = match ctx.state.msrs.read(msr, ctx.state.index == 0) {
        MsrAnswer::Value(v) => v,
        MsrAnswer::Vmcs(field) => ctx.vcpu.read_vmcs(field)?,
        MsrAnswer::Fault => return fault(ctx, msr, "rdmsr"),
    };
    if crate::trace::tracing() {
        ctx.note = Some(format!("rdmsr {msr:#x} -> {value:#x}"));
    }
    ctx.write_edx_eax(value)?;
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}

pub fn handle_wrmsr(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let msr = ctx.vcpu.read_reg(HV_X86_RCX)? as u32;
    let value = ctx.read_edx_eax()?;
    if crate::trace::tracing() {
        ctx.note = Some(format!("wrmsr {msr:#x} <- {value:#x}"));
    }
    match ctx.state.msrs.write(msr, value) {
        MsrAnswer::Value(_) => {}
        MsrAnswer::Vmcs(field) if msr == crate::msr::IA32_EFER => {
            // EFER.LMA is the CPU's: keep the current one (SDM 2.2.1, "read only").
            let lma = ctx.vcpu.read_vmcs(field)? & crate::msr::EFER_LMA;
            ctx.vcpu.write_vmcs(field, (value & !crate::msr::EFER_LMA) | lma)?;
        }
        MsrAnswer::Vmcs(field) => ctx.vcpu.write_vmcs(field, value)?,
        MsrAnswer::Fault => return fault(ctx, msr, "wrmsr"),
    }
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}

fn fault(ctx: &mut ExitContext, msr: u32, what: &str) -> Result<Action, HvError> {
    if crate::trace::tracing() {
        ctx.note = Some(format!("{what} {msr:#x} -> #GP"));
    }
    ctx.inject_gp()?;
    Ok(Action::Resume)
}
