//! CPUID (exit reason 10): VT-x always exits on CPUID (SDM 26.1.2), so the guest sees
//! exactly the processor [`crate::cpuid::CpuidPolicy`] describes.
use super::{Action, ExitContext};
use crate::cpuid::GuestView;
use hvf_sys::*;

pub fn handle(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let leaf = ctx.vcpu.read_reg(HV_X86_RAX)? as u32;
    let subleaf = ctx.vcpu.read_reg(HV_X86_RCX)? as u32;
    // The answers that follow the guest's state: OSXSAVE (CR4) and leaf 0xD (XCR0).
    let guest = GuestView { cr4: ctx.vcpu.read_reg(HV_X86_CR4)?, xcr0: ctx.vcpu.read_reg(HV_X86_XCR0)? };
    let [eax, ebx, ecx, edx] = ctx.machine.cpuid.leaf(ctx.state.index, leaf, subleaf, &guest);
    if crate::trace::tracing() {
        ctx.note = Some(format!("leaf={leaf:#x}.{subleaf} -> {eax:#x} {ebx:#x} {ecx:#x} {edx:#x}"));
    }
    // 32-bit results: the upper halves are cleared (SDM vol. 2, CPUID).
    ctx.vcpu.write_reg(HV_X86_RAX, eax as u64)?;
    ctx.vcpu.write_reg(HV_X86_RBX, ebx as u64)?;
    ctx.vcpu.write_reg(HV_X86_RCX, ecx as u64)?;
    ctx.vcpu.write_reg(HV_X86_RDX, edx as u64)?;
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}
