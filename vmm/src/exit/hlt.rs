//! HLT (exit reason 12): the guest has nothing to do until an interrupt.
use super::{Action, ExitContext};
use hvf_sys::*;

/// Steps past the HLT and lets the run loop sleep: on the host thread, not in a loop that
/// polls, so an idle guest costs no CPU. The next interrupt injected resumes the guest
/// after the HLT, as the CPU would.
pub fn handle(ctx: &mut ExitContext) -> Result<Action, HvError> {
    ctx.skip_instruction()?;
    Ok(Action::Halt)
}
