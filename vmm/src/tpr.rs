//! CR8 and the local APIC's task-priority register are one register seen two ways:
//! CR8[3:0] is TPR[7:4]; a MOV to CR8 writes TPR[7:4] and clears TPR[3:0] (SDM vol. 3,
//! 11.8.6.1 "Interaction of Task Priorities between CR8 and APIC"). hvrun runs guests
//! without a TPR shadow, so the CPU keeps CR8 (HV_X86_TPR) and hvrun's LAPIC model keeps
//! the TPR: this copies whichever side changed to the other at every exit and entry, so a
//! CR8 write holds back interrupts and a TPR write through the APIC shows in CR8.
use crate::regs::VcpuRegs;
use devices::lapic::Lapic;
use hvf_sys::*;

/// CR8 holds the TPR's priority class, its top four bits.
const CLASS_SHIFT: u32 = 4;
const CR8_MASK: u64 = 0xf;

/// What each side last said: the CR8 last read at an exit, and the one last given to
/// the vCPU. Kept apart so that hvrun's own write, read back at the next exit, is not
/// taken for a guest write (and so that a write the framework did not keep cannot undo
/// a TPR the guest set through the APIC).
#[derive(Debug, Default)]
pub struct TprSync {
    read: u64,
    written: u64,
}

impl TprSync {
    /// After an exit: a CR8 the guest changed becomes the LAPIC's TPR, before any exit
    /// handler reads the TPR or the PPR decides what is pending.
    pub fn after_exit(&mut self, vcpu: &mut dyn VcpuRegs, lapic: &Lapic) -> Result<(), HvError> {
        let cr8 = vcpu.read_reg(HV_X86_TPR)? & CR8_MASK;
        if cr8 != self.read {
            self.read = cr8;
            if cr8 != self.written {
                self.written = cr8;
                lapic.set_tpr((cr8 << CLASS_SHIFT) as u32);
            }
        }
        Ok(())
    }

    /// Before an entry: a TPR written through the APIC (MMIO, x2APIC MSR) shows in CR8.
    pub fn before_entry(&mut self, vcpu: &mut dyn VcpuRegs, lapic: &Lapic) -> Result<(), HvError> {
        let cr8 = u64::from(lapic.tpr() >> CLASS_SHIFT) & CR8_MASK;
        if cr8 != self.written {
            vcpu.write_reg(HV_X86_TPR, cr8)?;
            self.written = cr8;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kick::Waker;
    use crate::regs::RecordedExit;
    use devices::apic_bus::ApicBus;
    use devices::tsc::GuestTscClock;
    use std::sync::Arc;

    fn lapic() -> Lapic {
        let tsc = GuestTscClock::new(1_000_000_000, 0, std::time::Instant::now());
        Lapic::new(0, true, Arc::new(Waker::new()), Arc::new(ApicBus::new()), tsc)
    }

    #[test]
    fn cr8_and_the_tpr_follow_each_other() {
        let lapic = lapic();
        let mut sync = TprSync::default();
        // The guest wrote CR8 = 0xa: the TPR is 0xa0, its low bits clear.
        let mut v = RecordedExit::new().reg(HV_X86_TPR, 0xa);
        lapic.set_tpr(0x35);
        sync.after_exit(&mut v, &lapic).unwrap();
        assert_eq!(lapic.tpr(), 0xa0);
        // Nothing changed: CR8 is not written again.
        sync.before_entry(&mut v, &lapic).unwrap();
        assert_eq!(v.regs[&HV_X86_TPR], 0xa);
        // The guest wrote the TPR through the APIC: CR8 shows its class.
        lapic.set_tpr(0x5f);
        sync.before_entry(&mut v, &lapic).unwrap();
        assert_eq!(v.regs[&HV_X86_TPR], 0x5);
        // ... and the next exit, reading that CR8 back, leaves the TPR's low bits alone.
        sync.after_exit(&mut v, &lapic).unwrap();
        assert_eq!(lapic.tpr(), 0x5f);
        // A CR8 write that did not stick (the vCPU still says 5 after hvrun wrote 1) does
        // not undo the TPR the guest set through the APIC.
        lapic.set_tpr(0x10);
        sync.before_entry(&mut v, &lapic).unwrap();
        v.regs.insert(HV_X86_TPR, 0x5);
        sync.after_exit(&mut v, &lapic).unwrap();
        assert_eq!(lapic.tpr(), 0x10);
        // A real guest write still gets through.
        v.regs.insert(HV_X86_TPR, 0x7);
        sync.after_exit(&mut v, &lapic).unwrap();
        assert_eq!(lapic.tpr(), 0x70);
    }
}
