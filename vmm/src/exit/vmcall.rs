//! VMCALL (exit reason 18): a hypercall. VT-x always exits on it (SDM 26.1.2). hvrun
//! implements no hypercall, but with kvmclock it shows KVM's signature, and Linux then
//! tries KVM hypercalls (ptp_kvm's KVM_HC_CLOCK_PAIRING, among others); KVM answers one
//! it does not know with RAX = -KVM_ENOSYS and the guest goes on (Linux's
//! Documentation/virt/kvm/x86/hypercalls.rst), as does hvrun. From user mode the answer
//! is -KVM_EPERM, as KVM's.
use super::{Action, ExitContext};
use hvf_sys::vmcs::*;
use hvf_sys::*;

/// KVM's hypercall error numbers (include/uapi/linux/kvm_para.h).
pub const KVM_ENOSYS: i64 = 1000;
pub const KVM_EPERM: i64 = 1;

/// The DPL field of a segment's access rights (SDM 25.4.1): SS.DPL is the CPL.
const AR_DPL_SHIFT: u64 = 5;
const AR_DPL_MASK: u64 = 3;

pub fn handle(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let cpl = (ctx.vcpu.read_vmcs(VMCS_GUEST_SS_AR)? >> AR_DPL_SHIFT) & AR_DPL_MASK;
    let error = if cpl == 0 { KVM_ENOSYS } else { KVM_EPERM };
    if crate::trace::tracing() {
        let nr = ctx.vcpu.read_reg(HV_X86_RAX)?;
        ctx.note = Some(format!("hypercall {nr} from CPL {cpl}: -{error}"));
    }
    ctx.vcpu.write_reg(HV_X86_RAX, (-error) as u64)?;
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}
