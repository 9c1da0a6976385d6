//! RDMSR and WRMSR (exit reasons 31 and 32): ECX names the MSR, EDX:EAX holds the value
//! (SDM vol. 2, RDMSR/WRMSR). An MSR hvrun does not have raises #GP(0) in the guest.
//!
//! The guest TSC is the host's plus the VMCS TSC offset: the machine's offset (its clock,
//! shared by every vCPU) plus this vCPU's IA32_TSC_ADJUST. The local APIC and kvmclock
//! count in the machine's TSC, so values the guest gives in its own TSC (a TSC deadline)
//! are translated, and a move of the TSC republishes kvmclock's reference point.
use super::{Action, ExitContext};
use crate::clock::{host_tsc, GuestClock};
use crate::kvmclock::{self, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW};
use crate::msr::{self, CpuModel, MsrAnswer};
use devices::lapic::{Lapic, MSR_IA32_TSC_DEADLINE};
use hvf_sys::vmcs::VMCS_CTRL_TSC_OFFSET;
use hvf_sys::*;
use std::sync::Arc;

/// The local APIC's MSRs (APIC base, TSC deadline, x2APIC registers), when this vCPU
/// has an APIC.
fn apic_msr(ctx: &ExitContext, msr: u32) -> Option<Arc<Lapic>> {
    ctx.state.lapic.clone().filter(|_| Lapic::handles_msr(msr))
}

fn is_kvmclock(ctx: &ExitContext, msr: u32) -> bool {
    ctx.machine.cpuid.kvmclock && matches!(msr, MSR_KVM_SYSTEM_TIME_NEW | MSR_KVM_WALL_CLOCK_NEW)
}

/// This vCPU's processor, learnt from the machine's CPUID at its first MSR exit.
fn model(ctx: &mut ExitContext) -> CpuModel {
    let (cpuid, index, tsc_hz) = (&ctx.machine.cpuid, ctx.state.index, ctx.machine.clock.tsc_hz);
    ctx.state.msrs.model(|| CpuModel::of(cpuid, index, tsc_hz))
}

/// The machine's clock as this vCPU's TSC reads it.
fn vcpu_clock(ctx: &ExitContext) -> GuestClock {
    let clock = ctx.machine.clock;
    GuestClock { tsc_offset: clock.tsc_offset.wrapping_add(ctx.state.msrs.tsc_adjust()), ..clock }
}

pub fn handle_rdmsr(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let msr = ctx.vcpu.read_reg(HV_X86_RCX)? as u32;
    let answer = if let Some(lapic) = apic_msr(ctx, msr) {
        let adjust = ctx.state.msrs.tsc_adjust();
        match lapic.read_msr(msr) {
            Ok(d) if msr == MSR_IA32_TSC_DEADLINE => MsrAnswer::Value(msr::deadline_from_machine(d, adjust)),
            Ok(v) => MsrAnswer::Value(v),
            Err(_) => MsrAnswer::Fault,
        }
    } else if is_kvmclock(ctx, msr) {
        MsrAnswer::Value(ctx.state.msrs.kvmclock(msr))
    } else {
        let model = model(ctx);
        ctx.state.msrs.read(&model, msr)
    };
    let value = match answer {
        MsrAnswer::Value(v) => v,
        MsrAnswer::Vmcs(field) => ctx.vcpu.read_vmcs(field)?,
        // With TSC offsetting RDMSR IA32_TSC reads the TSC plus the offset (SDM vol. 3,
        // 26.3, "RDMSR"), as RDTSC does.
        MsrAnswer::GuestTsc => host_tsc().wrapping_add(ctx.vcpu.read_vmcs(VMCS_CTRL_TSC_OFFSET)?),
        MsrAnswer::Fault | MsrAnswer::SetTsc | MsrAnswer::TscMoved => return fault(ctx, msr, "rdmsr"),
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
    let adjust_before = ctx.state.msrs.tsc_adjust();
    let answer = if let Some(lapic) = apic_msr(ctx, msr) {
        let value = if msr == MSR_IA32_TSC_DEADLINE {
            msr::deadline_to_machine(value, ctx.state.msrs.tsc_adjust())
        } else {
            value
        };
        lapic.write_msr(msr, value).map_or(MsrAnswer::Fault, |()| MsrAnswer::Value(0))
    } else if is_kvmclock(ctx, msr) {
        ctx.state.msrs.set_kvmclock(msr, value);
        let (mem, clock) = (ctx.machine.ram.memory(), vcpu_clock(ctx));
        match msr {
            MSR_KVM_SYSTEM_TIME_NEW => kvmclock::write_system_time(mem, &clock, value),
            _ => kvmclock::write_wall_clock(mem, &clock, value),
        }
        MsrAnswer::Value(0)
    } else {
        let model = model(ctx);
        ctx.state.msrs.write(&model, msr, value)
    };
    match answer {
        MsrAnswer::Value(_) => {}
        MsrAnswer::Vmcs(field) if msr == msr::IA32_EFER => {
            // EFER.LMA is the CPU's: keep the current one (SDM 2.2.1, "read only").
            let lma = ctx.vcpu.read_vmcs(field)? & msr::EFER_LMA;
            ctx.vcpu.write_vmcs(field, (value & !msr::EFER_LMA) | lma)?;
        }
        MsrAnswer::Vmcs(field) => ctx.vcpu.write_vmcs(field, value)?,
        MsrAnswer::SetTsc => {
            ctx.state.msrs.set_tsc_adjust(msr::tsc_adjust_for(value, host_tsc(), ctx.machine.clock.tsc_offset));
            tsc_moved(ctx, adjust_before)?;
        }
        // MsrState has stored the new adjust.
        MsrAnswer::TscMoved => tsc_moved(ctx, adjust_before)?,
        MsrAnswer::Fault | MsrAnswer::GuestTsc => return fault(ctx, msr, "wrmsr"),
    }
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}

/// This vCPU's TSC_ADJUST changed from `old`: its TSC offset follows, an armed TSC
/// deadline keeps its value in the guest's TSC (so a TSC moved past it fires it, as
/// SDM 10.5.4.1 compares against the TSC), and kvmclock gets a reference point in the
/// new TSC.
fn tsc_moved(ctx: &mut ExitContext, old: u64) -> Result<(), HvError> {
    let new = ctx.state.msrs.tsc_adjust();
    ctx.vcpu.write_vmcs(VMCS_CTRL_TSC_OFFSET, ctx.machine.clock.tsc_offset.wrapping_add(new))?;
    if let Some(lapic) = &ctx.state.lapic {
        let armed = lapic.tsc_deadline();
        if armed != 0 {
            lapic.set_tsc_deadline(msr::deadline_to_machine(msr::deadline_from_machine(armed, old), new));
        }
    }
    let system_time = ctx.state.msrs.kvmclock(MSR_KVM_SYSTEM_TIME_NEW);
    if is_kvmclock(ctx, MSR_KVM_SYSTEM_TIME_NEW) && system_time != 0 {
        kvmclock::write_system_time(ctx.machine.ram.memory(), &vcpu_clock(ctx), system_time);
    }
    Ok(())
}

fn fault(ctx: &mut ExitContext, msr: u32, what: &str) -> Result<Action, HvError> {
    if crate::trace::tracing() {
        ctx.note = Some(format!("{what} {msr:#x} -> #GP"));
    }
    ctx.inject_gp()?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{handle_exit, VcpuState};
    use super::*;
    use crate::machine::Machine;
    use crate::msr::{MsrState, Vendor, IA32_PAT, IA32_TSC, IA32_TSC_ADJUST, PAT_RESET};
    use crate::regs::RecordedExit;
    use hvf_sys::vmcs::*;
    use hvf_sys::vmx::*;

    fn model(vendor: Vendor) -> CpuModel {
        CpuModel { vendor, tsc_adjust: true, osvw: false, phys_addr_bits: 39, tsc_hz: 1_000_000_000, microcode: 0x42 }
    }

    /// RDMSR `msr` (0F 32), or WRMSR `value` to it (0F 30), on a vCPU with `state`.
    fn access(m: &Machine, state: &mut VcpuState, msr: u32, write: Option<u64>, v: RecordedExit) -> RecordedExit {
        let reason = if write.is_some() { VMX_REASON_WRMSR } else { VMX_REASON_RDMSR };
        let value = write.unwrap_or(u64::MAX);
        let mut v = v
            .reg(HV_X86_RIP, 0x1000)
            .field(VMCS_RO_EXIT_REASON, reason as u64)
            .field(VMCS_RO_VMEXIT_INSTR_LEN, 2)
            .field(VMCS_GUEST_IGNORE_IRQ, 0)
            .reg(HV_X86_RCX, msr as u64)
            .reg(HV_X86_RAX, value & 0xffff_ffff)
            .reg(HV_X86_RDX, value >> 32);
        let mut ctx = ExitContext::new(&mut v, m, state);
        assert_eq!(handle_exit(&mut ctx, reason).unwrap(), Action::Resume);
        v
    }

    fn edx_eax(v: &RecordedExit) -> u64 {
        v.regs[&HV_X86_RDX] << 32 | v.regs[&HV_X86_RAX]
    }

    fn faulted(v: &RecordedExit) -> bool {
        v.vmcs.get(&VMCS_CTRL_VMENTRY_IRQ_INFO) == Some(&0x8000_0b0d) && v.regs[&HV_X86_RIP] == 0x1000
    }

    #[test]
    fn pat_is_kept_per_vcpu_and_never_reaches_the_vmcs() {
        let m = machine();
        let mut state = VcpuState { msrs: MsrState::with_model(model(Vendor::Intel)), ..Default::default() };
        let v = access(&m, &mut state, IA32_PAT, None, RecordedExit::new());
        assert_eq!((edx_eax(&v), v.regs[&HV_X86_RIP]), (PAT_RESET, 0x1002));
        let v = access(&m, &mut state, IA32_PAT, Some(0x0007_0506_0007_0106), RecordedExit::new());
        assert_eq!(v.regs[&HV_X86_RIP], 0x1002);
        assert!(!v.vmcs.contains_key(&VMCS_GUEST_IA32_PAT), "HVF refuses this field: {:?}", v.vmcs);
        let v = access(&m, &mut state, IA32_PAT, None, RecordedExit::new());
        assert_eq!(edx_eax(&v), 0x0007_0506_0007_0106);
        // A reserved type: #GP(0) at the instruction, the PAT unchanged.
        let v = access(&m, &mut state, IA32_PAT, Some(0x0202_0202_0202_0202), RecordedExit::new());
        assert!(faulted(&v), "{v:?}");
        assert!(!v.vmcs.contains_key(&VMCS_GUEST_IA32_PAT));
        let v = access(&m, &mut state, IA32_PAT, None, RecordedExit::new());
        assert_eq!(edx_eax(&v), 0x0007_0506_0007_0106);
        // Another vCPU still has the reset value.
        let mut other = VcpuState { index: 1, msrs: MsrState::with_model(model(Vendor::Intel)), ..Default::default() };
        assert_eq!(edx_eax(&access(&m, &mut other, IA32_PAT, None, RecordedExit::new())), PAT_RESET);
    }

    #[test]
    fn tsc_adjust_moves_this_vcpus_tsc_offset() {
        let m = machine();
        let base = m.clock.tsc_offset;
        let mut state = VcpuState { msrs: MsrState::with_model(model(Vendor::Intel)), ..Default::default() };
        let v = access(&m, &mut state, IA32_TSC_ADJUST, None, RecordedExit::new());
        assert_eq!(edx_eax(&v), 0);
        // +1000: the offset becomes the machine's plus 1000.
        let v = access(&m, &mut state, IA32_TSC_ADJUST, Some(1000), RecordedExit::new().field(VMCS_CTRL_TSC_OFFSET, base));
        assert_eq!(v.vmcs[&VMCS_CTRL_TSC_OFFSET], base.wrapping_add(1000));
        assert_eq!(v.regs[&HV_X86_RIP], 0x1002);
        // -5000 from there.
        let offset = base.wrapping_add(1000);
        let v = access(&m, &mut state, IA32_TSC_ADJUST, Some(5000u64.wrapping_neg()), RecordedExit::new().field(VMCS_CTRL_TSC_OFFSET, offset));
        assert_eq!(v.vmcs[&VMCS_CTRL_TSC_OFFSET], base.wrapping_sub(5000));
        assert_eq!(edx_eax(&access(&m, &mut state, IA32_TSC_ADJUST, None, RecordedExit::new())), 5000u64.wrapping_neg());

        // Without the CPUID bit the MSR is not there.
        let mut none = VcpuState { msrs: MsrState::with_model(CpuModel { tsc_adjust: false, ..model(Vendor::Intel) }), ..Default::default() };
        let v = access(&m, &mut none, IA32_TSC_ADJUST, Some(1), RecordedExit::new());
        assert!(faulted(&v) && !v.vmcs.contains_key(&VMCS_CTRL_TSC_OFFSET), "{v:?}");
    }

    #[test]
    fn writing_the_tsc_sets_it_and_moves_tsc_adjust_with_it() {
        let m = machine();
        let base = m.clock.tsc_offset;
        let mut state = VcpuState { msrs: MsrState::with_model(model(Vendor::Amd)), ..Default::default() };
        let target = 0x1234_0000_0000_0000u64;
        let before = host_tsc();
        let v = access(&m, &mut state, IA32_TSC, Some(target), RecordedExit::new());
        let after = host_tsc();
        let offset = v.vmcs[&VMCS_CTRL_TSC_OFFSET];
        // The guest TSC (host + offset) read `target` at some host TSC between the two reads.
        let guest_then = |host: u64| host.wrapping_add(offset);
        assert!(guest_then(before) <= target && target <= guest_then(after), "offset {offset:#x}");
        // TSC_ADJUST moved by as much.
        let adjust = edx_eax(&access(&m, &mut state, IA32_TSC_ADJUST, None, RecordedExit::new()));
        assert_eq!(adjust, offset.wrapping_sub(base));
        // RDMSR IA32_TSC reads host TSC plus the VMCS offset.
        let v = access(&m, &mut state, IA32_TSC, None, RecordedExit::new().field(VMCS_CTRL_TSC_OFFSET, offset));
        let read = edx_eax(&v);
        assert!(read >= target && read - target < host_tsc() - before + 1, "{read:#x}");
    }

    #[test]
    fn vendor_msrs_follow_the_model() {
        let m = machine();
        let mut amd = VcpuState { msrs: MsrState::with_model(model(Vendor::Amd)), ..Default::default() };
        let v = access(&m, &mut amd, msr::AMD_NB_CFG, None, RecordedExit::new());
        assert_eq!(edx_eax(&v), 0);
        access(&m, &mut amd, msr::AMD_NB_CFG, Some(1 << 46), RecordedExit::new());
        assert_eq!(edx_eax(&access(&m, &mut amd, msr::AMD_NB_CFG, None, RecordedExit::new())), 1 << 46);
        assert!(faulted(&access(&m, &mut amd, msr::IA32_MISC_ENABLE, None, RecordedExit::new().field(VMCS_CTRL_VMENTRY_IRQ_INFO, 0))));
        let mut intel = VcpuState { msrs: MsrState::with_model(model(Vendor::Intel)), ..Default::default() };
        assert_eq!(edx_eax(&access(&m, &mut intel, msr::MSR_PLATFORM_INFO, None, RecordedExit::new())), 10 << 8);
        assert!(faulted(&access(&m, &mut intel, msr::AMD_NB_CFG, None, RecordedExit::new().field(VMCS_CTRL_VMENTRY_IRQ_INFO, 0))));
    }

    #[test]
    fn the_model_comes_from_the_machines_cpuid() {
        let m = machine();
        let mut state = VcpuState::default();
        let v = access(&m, &mut state, msr::IA32_MTRRCAP, None, RecordedExit::new());
        assert_eq!(edx_eax(&v), 0x508);
        let learnt = state.msrs.model(|| unreachable!("the first exit learnt it"));
        assert_eq!(learnt, CpuModel::of(&m.cpuid, 0, m.clock.tsc_hz));
    }
}
