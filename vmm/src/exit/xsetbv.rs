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
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xcr0_rules() {
        let supported = 0x7;
        assert!(xcr0_valid(0x1, supported));
        assert!(xcr0_valid(0x7, supported));
        assert!(!xcr0_valid(0x6, supported), "x87 cleared");
        assert!(!xcr0_valid(0x5, supported), "AVX without SSE");
        assert!(!xcr0_valid(0x1f, supported), "MPX not supported");
    }
}
