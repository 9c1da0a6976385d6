//! XSETBV (exit reason 55): the guest enables XSAVE state components in XCR0.
use super::{Action, ExitContext};
use hvf_sys::*;

/// x87 must stay enabled; AVX needs SSE (SDM vol. 1, 13.3).
const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;

/// XCR0 values hvrun lets a guest set: what the CPU supports, with the SDM's rules.
pub fn xcr0_valid(value: u64, supported: u64) -> bool {
    value & XCR0_X87 != 0 && value & !supported == 0 && (value & XCR0_AVX == 0 || value & XCR0_SSE != 0)
}

pub fn handle(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let ecx = ctx.vcpu.read_reg(HV_X86_RCX)? as u32;
    let value = ctx.read_edx_eax()?;
    if ecx != 0 || !xcr0_valid(value, ctx.machine.cpuid.xcr0_supported()) {
        ctx.inject_gp()?;
        return Ok(Action::Resume);
    }
    ctx.vcpu.write_reg(HV_X86_XCR0, value)?;
    // The framework may ignore a value it dislikes and still succeed: a guest believing
    // in state the CPU does not save would lose it on every switch. It gets #GP instead,
    // which it can see (and which means the CPUID policy offered too much).
    let now = ctx.vcpu.read_reg(HV_X86_XCR0)?;
    if now != value {
        log::error!("vCPU {}: the framework kept XCR0 {now:#x} instead of {value:#x}: #GP to the guest", ctx.state.index);
        ctx.inject_gp()?;
        return Ok(Action::Resume);
    }
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::RecordedExit;
    use hvf_sys::vmcs::*;
    use hvf_sys::vmx::*;

    #[test]
    fn xcr0_rules() {
        let supported = 0x7;
        assert!(xcr0_valid(0x1, supported));
        assert!(xcr0_valid(0x7, supported));
        assert!(!xcr0_valid(0x6, supported), "x87 cleared");
        assert!(!xcr0_valid(0x5, supported), "AVX without SSE");
        assert!(!xcr0_valid(0x1f, supported), "MPX not supported");
    }

    fn xsetbv(xcr0_before: u64, value: u64, framework_keeps: Option<u64>) -> (Action, RecordedExit) {
        let m = crate::exit::testing::machine();
        let mut v = crate::exit::testing::exit(VMX_REASON_XSETBV, 0, 3)
            .reg(HV_X86_RCX, 0)
            .reg(HV_X86_RAX, value & 0xffff_ffff)
            .reg(HV_X86_RDX, value >> 32)
            .reg(HV_X86_XCR0, xcr0_before)
            .field(VMCS_CTRL_VMENTRY_IRQ_INFO, 0);
        let mut state = crate::exit::VcpuState::default();
        let action = {
            let mut rec = Ignoring { inner: &mut v, keeps: framework_keeps };
            let mut ctx = ExitContext::new(&mut rec, &m, &mut state);
            handle(&mut ctx).unwrap()
        };
        (action, v)
    }

    /// A framework that answers success to an XCR0 write but keeps `keeps` (HVF with a
    /// value it dislikes).
    struct Ignoring<'a> {
        inner: &'a mut RecordedExit,
        keeps: Option<u64>,
    }

    impl crate::regs::VcpuRegs for Ignoring<'_> {
        fn read_reg(&self, reg: hv_x86_reg_t) -> Result<u64, HvError> {
            self.inner.read_reg(reg)
        }
        fn write_reg(&mut self, reg: hv_x86_reg_t, value: u64) -> Result<(), HvError> {
            match (reg, self.keeps) {
                (HV_X86_XCR0, Some(kept)) => self.inner.write_reg(reg, kept),
                _ => self.inner.write_reg(reg, value),
            }
        }
        fn read_vmcs(&self, field: u32) -> Result<u64, HvError> {
            self.inner.read_vmcs(field)
        }
        fn write_vmcs(&mut self, field: u32, value: u64) -> Result<(), HvError> {
            self.inner.write_vmcs(field, value)
        }
        fn vmcs_write_masks(&self, field: u32) -> Result<(u64, u64), HvError> {
            self.inner.vmcs_write_masks(field)
        }
        fn invalidate_tlb(&mut self) -> Result<(), HvError> {
            self.inner.invalidate_tlb()
        }
    }

    #[test]
    fn an_xcr0_the_framework_ignores_is_a_gp_not_a_silent_loss() {
        let (action, v) = xsetbv(1, 3, None);
        assert_eq!(action, Action::Resume);
        assert_eq!(v.regs[&HV_X86_XCR0], 3);
        assert_eq!(v.regs[&HV_X86_RIP], 0x1003, "accepted: skipped");
        let (_, v) = xsetbv(1, 3, Some(1));
        assert_eq!(v.regs[&HV_X86_RIP], 0x1000, "#GP: RIP stays");
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0b0d);
    }
}
