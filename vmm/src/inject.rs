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
    /// An NMI was injected and no interrupt window has been seen since: NMIs count as
    /// blocked (see [`before_entry`]).
    nmi_soft_blocked: bool,
}

impl WindowControl {
    pub fn new(proc: u32) -> Self {
        WindowControl { proc, nmi_soft_blocked: false }
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

/// Whether an NMI can be injected now: no blocking by NMI (the CPU sets it while an NMI
/// handler runs, until IRET, SDM vol. 3, 6.7.1), and neither MOV SS nor STI blocking
/// (26.3.1.5 forbids an NMI under MOV SS blocking; some processors under STI blocking).
pub fn nmi_open(blocking: u64) -> bool {
    let blocked = (Interruptibility::NMI | Interruptibility::MOV_SS | Interruptibility::STI).bits() as u64;
    blocking & blocked == 0
}

/// The NMI vector and the entry field's NMI type (SDM vol. 3, 24.8.3).
const NMI_VECTOR: u32 = 2;

/// Injects a pending NMI if the guest can take one; returns whether it did.
fn inject_nmi(vcpu: &mut dyn VcpuRegs, irq: &dyn LocalInterrupts, window: &mut WindowControl) -> Result<bool, HvError> {
    let blocking = vcpu.read_vmcs(VMCS_GUEST_IGNORE_IRQ)?;
    if window.nmi_soft_blocked && interrupts_open(vcpu.read_reg(HV_X86_RFLAGS)?, blocking) {
        window.nmi_soft_blocked = false;
    }
    let queued = vcpu.read_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO)? as u32 & IRQ_INFO_VALID != 0;
    if queued || window.nmi_soft_blocked || !nmi_open(blocking) {
        return Ok(false);
    }
    vcpu.write_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, (IRQ_INFO_VALID | IRQ_INFO_NMI | NMI_VECTOR) as u64)?;
    irq.acknowledge_nmi();
    window.nmi_soft_blocked = true;
    Ok(true)
}

/// Injects a pending NMI, else the highest pending interrupt, if the guest can take it;
/// otherwise opens the interrupt window. Returns the vector injected.
///
/// hvrun uses neither virtual NMIs nor NMI-window exiting, so it cannot see the IRET
/// that ends an NMI handler. It does what KVM did on VMX without virtual NMIs ("soft"
/// NMI blocking): after injecting an NMI it treats NMIs as blocked until the guest opens
/// an interrupt window (RFLAGS.IF=1, no shadow), which the handler's IRET back to
/// interruptible code, or the guest's next `sti`, gives. An NMI injected at just any
/// later exit could land inside code the handler interrupted, holding a lock the next
/// handler takes. Meanwhile the interrupt window is requested for it, and the run
/// deadline bounds the wait otherwise.
pub fn before_entry(vcpu: &mut dyn VcpuRegs, irq: &dyn LocalInterrupts, window: &mut WindowControl) -> Result<Option<u8>, HvError> {
    let nmi_waiting = irq.nmi_pending();
    if nmi_waiting && inject_nmi(vcpu, irq, window)? {
        // An interrupt also pending waits for the window after the NMI's delivery.
        window.set(vcpu, irq.pending().is_some())?;
        return Ok(Some(NMI_VECTOR as u8));
    }
    let Some(vector) = irq.pending() else {
        window.set(vcpu, nmi_waiting)?;
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
    window.set(vcpu, nmi_waiting)?;
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

    /// A LAPIC stand-in with an NMI pending.
    struct Nmi(std::sync::atomic::AtomicBool, Option<u8>);
    impl LocalInterrupts for Nmi {
        fn pending(&self) -> Option<u8> {
            self.1
        }
        fn acknowledge(&self, _vector: u8) {}
        fn nmi_pending(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn acknowledge_nmi(&self) {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn nmis_go_first_and_ignore_if_but_not_nmi_blocking() {
        // IF clear: an NMI still goes in; an interrupt also pending waits for the window.
        let nmi = Nmi(true.into(), Some(0x30));
        let mut v = exit(0x2, 0);
        let mut w = WindowControl::new(0x80);
        assert_eq!(before_entry(&mut v, &nmi, &mut w).unwrap(), Some(2));
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0202);
        assert!(!nmi.nmi_pending());
        assert_eq!(v.vmcs[&VMCS_CTRL_CPU_BASED], 0x84);
        // In an NMI handler (blocking by NMI), under MOV SS or STI, or behind a queued
        // event: it waits, with the interrupt window as its way out.
        for (blocking, queued) in [(8, 0), (2, 0), (1, 0), (0, 0x8000_0b0e)] {
            let nmi = Nmi(true.into(), None);
            let mut v = exit(0x202, blocking).field(VMCS_CTRL_VMENTRY_IRQ_INFO, queued);
            let mut w = WindowControl::new(0x80);
            assert_eq!(before_entry(&mut v, &nmi, &mut w).unwrap(), None);
            assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], queued);
            assert!(nmi.nmi_pending(), "still pending");
            assert_eq!(v.vmcs[&VMCS_CTRL_CPU_BASED], 0x84);
        }
        // After an NMI, a second one waits for an interrupt window, even where the CPU
        // no longer blocks NMIs (the handler's IRET is invisible to hvrun) ...
        let nmi = Nmi(true.into(), None);
        let mut w = WindowControl::new(0x80);
        assert_eq!(before_entry(&mut exit(0x2, 0), &nmi, &mut w).unwrap(), Some(2));
        nmi.0.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut v = exit(0x2, 0);
        assert_eq!(before_entry(&mut v, &nmi, &mut w).unwrap(), None, "IF clear: no window yet");
        assert_eq!(v.vmcs[&VMCS_CTRL_CPU_BASED], 0x84);
        // ... and goes in once the guest can take interrupts.
        let mut v = exit(0x202, 0);
        assert_eq!(before_entry(&mut v, &nmi, &mut w).unwrap(), Some(2));
        assert!(!nmi.nmi_pending());
        // In an NMI handler with IF set, an interrupt still goes in; the NMI waits.
        let nmi = Nmi(true.into(), Some(0x30));
        let mut v = exit(0x202, 8);
        let mut w = WindowControl::new(0x80);
        assert_eq!(before_entry(&mut v, &nmi, &mut w).unwrap(), Some(0x30));
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0030);
        assert!(nmi.nmi_pending());
        assert_eq!(v.vmcs[&VMCS_CTRL_CPU_BASED], 0x84, "the window stays open for the NMI");
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
