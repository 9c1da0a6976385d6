//! RDMSR and WRMSR (exit reasons 31 and 32): ECX names the MSR, EDX:EAX holds the value
//! (SDM vol. 2, RDMSR/WRMSR). An MSR hvrun does not have raises #GP(0) in the guest.
use super::{Action, ExitContext};
use crate::kvmclock::{self, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW};
use crate::msr::MsrAnswer;
use devices::lapic::Lapic;
use std::sync::Arc;
use hvf_sys::*;

/// The local APIC's MSRs (APIC base, TSC deadline, x2APIC registers), when this vCPU
/// has an APIC.
fn apic_msr(ctx: &ExitContext, msr: u32) -> Option<Arc<Lapic>> {
    ctx.state.lapic.clone().filter(|_| Lapic::handles_msr(msr))
}

fn is_kvmclock(ctx: &ExitContext, msr: u32) -> bool {
    ctx.machine.cpuid.kvmclock && matches!(msr, MSR_KVM_SYSTEM_TIME_NEW | MSR_KVM_WALL_CLOCK_NEW)
}

pub fn handle_rdmsr(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let msr = ctx.vcpu.read_reg(HV_X86_RCX)? as u32;
    let answer = if let Some(lapic) = apic_msr(ctx, msr) {
        lapic.read_msr(msr).map_or(MsrAnswer::Fault, MsrAnswer::Value)
    } else if is_kvmclock(ctx, msr) {
        MsrAnswer::Value(ctx.state.msrs.kvmclock(msr))
    } else {
        ctx.state.msrs.read(msr, ctx.state.index == 0)
    };
    let value = match answer {
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
    let answer = if let Some(lapic) = apic_msr(ctx, msr) {
        lapic.write_msr(msr, value).map_or(MsrAnswer::Fault, |()| MsrAnswer::Value(0))
    } else if is_kvmclock(ctx, msr) {
        ctx.state.msrs.set_kvmclock(msr, value);
        let (mem, clock) = (ctx.machine.ram.memory(), &ctx.machine.clock);
        match msr {
            MSR_KVM_SYSTEM_TIME_NEW => kvmclock::write_system_time(mem, clock, value),
            _ => kvmclock::write_wall_clock(mem, clock, value),
        }
        MsrAnswer::Value(0)
    } else {
        ctx.state.msrs.write(msr, value)
    };
    match answer {
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
