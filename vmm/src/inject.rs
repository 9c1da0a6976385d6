//! Event injection before each VM entry (SDM vol. 3, 26.6): the interrupt controller's
//! highest pending vector goes in only when the guest can take it; otherwise hvrun asks
//! for an exit the moment it can (interrupt-window exiting, 25.6.2).
use crate::irq::LocalInterrupts;
use crate::regs::VcpuRegs;
use hvf_sys::vmcs::*;
use hvf_sys::vmx::*;
use hvf_sys::*;

const RFLAGS_IF: u64 = 1 << 9;

/// The primary processor-based controls of one vCPU, cached so that switching the
/// interrupt window costs a VMCS write only when it changes.
#[derive(Debug, Clone, Copy)]
pub struct WindowControl {
    proc: u32,
}

impl WindowControl {
    pub fn new(proc: u32) -> Self {
        WindowControl { proc }
    }

    fn set(&mut self, vcpu: &mut dyn VcpuRegs, open_wanted: bool) -> Result<(), HvError> {
        let proc = if open_wanted { self.proc | ProcBased::IRQ_WND.bits() } else { self.proc & !ProcBased::IRQ_WND.bits() };
        if proc != self.proc {
            vcpu.write_vmcs(VMCS_CTRL_CPU_BASED, proc as u64)?;
            self.proc = proc;
        }
        Ok(())
    }
}

/// An event whose delivery an exit interrupted (IDT-vectoring information, SDM 28.2.4) is
/// injected again, or the guest would lose it. Returns the IDT-vectoring information.
pub fn reinject_interrupted_event(vcpu: &mut dyn VcpuRegs) -> Result<u32, HvError> {
    let info = vcpu.read_vmcs(VMCS_RO_IDT_VECTOR_INFO)? as u32;
    if info & IRQ_INFO_VALID == 0 {
        return Ok(info);
    }
    if info & IRQ_INFO_ERROR_VALID != 0 {
        let code = vcpu.read_vmcs(VMCS_RO_IDT_VECTOR_ERROR)?;
        vcpu.write_vmcs(VMCS_CTRL_VMENTRY_EXC_ERROR, code)?;
    }
    // Software interrupts and exceptions need the instruction length to re-execute.
    if matches!(info & IRQ_INFO_TYPE_MASK, IRQ_INFO_SOFT_IRQ | IRQ_INFO_PRIV_SOFT_EXC | IRQ_INFO_SOFT_EXC) {
        let len = vcpu.read_vmcs(VMCS_RO_VMEXIT_INSTR_LEN)?;
        vcpu.write_vmcs(VMCS_CTRL_VMENTRY_INSTR_LEN, len)?;
    }
    // Bit 12 of the IDT-vectoring field is undefined; the entry field's bit 12 is reserved.
    vcpu.write_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, (info & !(1 << 12)) as u64)?;
    Ok(info)
}

/// Whether an external interrupt can be injected now (SDM 26.3.1.5): RFLAGS.IF set and
/// no STI or MOV SS blocking.
pub fn interrupts_open(rflags: u64, blocking: u64) -> bool {
    let shadow = (Interruptibility::STI | Interruptibility::MOV_SS).bits() as u64;
    rflags & RFLAGS_IF != 0 && blocking & shadow == 0
}

/// Injects the highest pending interrupt if the guest can take it, else opens the window.
/// Returns the vector injected.
pub fn before_entry(vcpu: &mut dyn VcpuRegs, irq: &dyn LocalInterrupts, window: &mut WindowControl) -> Result<Option<u8>, HvError> {
    let Some(vector) = irq.pending() else {
        window.set(vcpu, false)?;
        return Ok(None);
    };
    // The entry field holds one event; one queued already (an exception from a handler,
    // a re-injected event) goes first, and the interrupt waits for the window.
    let queued = vcpu.read_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO)? as u32 & IRQ_INFO_VALID != 0;
    let open = !queued && interrupts_open(vcpu.read_reg(HV_X86_RFLAGS)?, vcpu.read_vmcs(VMCS_GUEST_IGNORE_IRQ)?);
    if !open {
        window.set(vcpu, true)?;
        return Ok(None);
    }
    vcpu.write_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, (IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | vector as u32) as u64)?;
    irq.acknowledge(vector);
    window.set(vcpu, false)?;
    Ok(Some(vector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::{VectorLatch, Waker};
    use crate::regs::RecordedExit;
    use std::sync::Arc;

    fn exit(rflags: u64, blocking: u64) -> RecordedExit {
        RecordedExit::new()
            .reg(HV_X86_RFLAGS, rflags)
            .field(VMCS_GUEST_IGNORE_IRQ, blocking)
            .field(VMCS_CTRL_VMENTRY_IRQ_INFO, 0)
            .field(VMCS_CTRL_CPU_BASED, 0x80)
    }

    #[test]
    fn injects_when_open() {
        let latch = VectorLatch::new(Arc::new(Waker::new()));
        latch.raise(0x30);
        let mut v = exit(0x202, 0);
        let mut w = WindowControl::new(0x80);
        assert_eq!(before_entry(&mut v, &latch, &mut w).unwrap(), Some(0x30));
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0030);
        assert_eq!(latch.pending(), None);
        assert_eq!(v.vmcs[&VMCS_CTRL_CPU_BASED], 0x80, "window stays closed");
    }

    #[test]
    fn if_clear_or_sti_shadow_opens_the_window_instead() {
        for (rflags, blocking) in [(0x2, 0), (0x202, 1), (0x202, 2)] {
            let latch = VectorLatch::new(Arc::new(Waker::new()));
            latch.raise(0x40);
            let mut v = exit(rflags, blocking);
            let mut w = WindowControl::new(0x80);
            assert_eq!(before_entry(&mut v, &latch, &mut w).unwrap(), None);
            assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0);
            assert_eq!(v.vmcs[&VMCS_CTRL_CPU_BASED], 0x84, "interrupt-window exiting on");
            assert_eq!(latch.pending(), Some(0x40), "still pending");
            // Once delivered, the window closes again.
            let mut open = exit(0x202, 0);
            open.vmcs.insert(VMCS_CTRL_CPU_BASED, 0x84);
            assert_eq!(before_entry(&mut open, &latch, &mut w).unwrap(), Some(0x40));
            assert_eq!(open.vmcs[&VMCS_CTRL_CPU_BASED], 0x80);
        }
    }

    #[test]
    fn a_queued_exception_goes_first() {
        let latch = VectorLatch::new(Arc::new(Waker::new()));
        latch.raise(0x30);
        let mut v = exit(0x202, 0).field(VMCS_CTRL_VMENTRY_IRQ_INFO, 0x8000_0b0d);
        let mut w = WindowControl::new(0x80);
        assert_eq!(before_entry(&mut v, &latch, &mut w).unwrap(), None);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0b0d);
        assert_eq!(v.vmcs[&VMCS_CTRL_CPU_BASED], 0x84);
    }

    #[test]
    fn interrupted_delivery_is_reinjected() {
        // A #PF (vector 14, hardware exception, error code 2) cut short by an EPT violation.
        let mut v = RecordedExit::new()
            .field(VMCS_RO_IDT_VECTOR_INFO, 0x8000_0b0e)
            .field(VMCS_RO_IDT_VECTOR_ERROR, 2);
        assert_eq!(reinject_interrupted_event(&mut v).unwrap(), 0x8000_0b0e);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0b0e);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_EXC_ERROR], 2);
        let mut none = RecordedExit::new().field(VMCS_RO_IDT_VECTOR_INFO, 0);
        reinject_interrupted_event(&mut none).unwrap();
        assert!(!none.vmcs.contains_key(&VMCS_CTRL_VMENTRY_IRQ_INFO));
    }
}
