//! I/O instructions (exit reason 30): IN, OUT, and their string forms INS/OUTS with REP.
//! The exit qualification (SDM 28.2.1, table 28-5) names the port, size and direction.
use super::{Action, ExitContext};
use hvf_sys::vmcs::*;
use hvf_sys::vmx::IoQualification;
use hvf_sys::*;

pub fn handle(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let q = IoQualification::decode(ctx.vcpu.read_vmcs(VMCS_RO_EXIT_QUALIFIC)?);
    if crate::trace::tracing() {
        ctx.note = Some(describe(&q));
    }
    if q.string {
        return crate::exit::mmio::string_io(ctx, q);
    }
    let size = access_size(q.size);
    let rax = ctx.vcpu.read_reg(HV_X86_RAX)?;
    if q.is_in {
        let mut data = [0u8; 4];
        ctx.machine.pio.read(q.port as u64, &mut data[..size]);
        ctx.vcpu.write_reg(HV_X86_RAX, merge_in(rax, u32::from_le_bytes(data), size))?;
    } else {
        ctx.machine.pio.write(q.port as u64, &(rax as u32).to_le_bytes()[..size]);
    }
    ctx.skip_instruction()?;
    Ok(Action::Resume)
}

/// The qualification's size is 1, 2 or 4; anything else is treated as a byte access.
pub fn access_size(size: u8) -> usize {
    match size {
        2 => 2,
        4 => 4,
        _ => 1,
    }
}

/// RAX after `IN` of `size` bytes: AL and AX keep the rest of RAX; a 32-bit result clears
/// bits 63:32 as every 32-bit register write does (SDM vol. 1, 3.4.1.1).
pub fn merge_in(rax: u64, value: u32, size: usize) -> u64 {
    match size {
        1 => rax & !0xff | (value & 0xff) as u64,
        2 => rax & !0xffff | (value & 0xffff) as u64,
        _ => value as u64,
    }
}

fn describe(q: &IoQualification) -> String {
    format!(
        "{}{} port={:#x} size={}",
        if q.is_in { "in" } else { "out" },
        match (q.string, q.rep) {
            (true, true) => " rep string",
            (true, false) => " string",
            _ => "",
        },
        q.port,
        q.size
    )
}
