//! The VM-entry checks on the control fields (SDM vol. 3, 26.2.1: "Checks on VMX
//! Controls"). A CPU refuses such an entry with VMfail and VM-instruction error 7
//! ("VM entry with invalid control field(s)"), which HVF returns as HV_ERROR without
//! running the guest; the layer does the same.
//!
//! On top of the capability masks the layer requires the controls it can honour on KVM:
//! KVM exits on every HLT and port access, and (through the MSR filter) on every MSR
//! that is not native, and runs the guest on nested paging with real mode allowed; that
//! is "HLT exiting", "unconditional I/O exiting", "use MSR bitmaps", EPT and unrestricted
//! guest. A VMM asking for less would get exits it did not ask for: refused, with a log
//! line naming the control.
use super::caps;
use crate::vmx::*;

/// The control fields of a VMCS, as written by the VMM.
#[derive(Clone, Copy, Debug, Default)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub entry: u32,
    pub exit: u32,
    pub entry_irq_info: u32,
    pub entry_exc_error: u32,
    pub entry_instr_len: u32,
    /// Guest CR0.PE: an error code may not be delivered in real mode (26.2.1.3).
    pub guest_pe: bool,
}

impl Controls {
    /// Secondary controls in effect: none unless the primary SECONDARY control is set
    /// (SDM 25.6.2).
    pub fn effective_proc2(&self) -> u32 {
        if self.proc & ProcBased::SECONDARY.bits() != 0 { self.proc2 } else { 0 }
    }
}

pub type ControlResult = Result<(), String>;

/// Every control value against its capability (allowed-0 / allowed-1 settings, A.3-A.5).
pub fn check_capabilities(c: &Controls) -> ControlResult {
    let table = [
        ("pin-based controls", caps::PINBASED, c.pin),
        ("primary processor-based controls", caps::PROCBASED, c.proc),
        ("secondary processor-based controls", caps::PROCBASED2, c.effective_proc2()),
        ("VM-entry controls", caps::ENTRY, c.entry),
        ("VM-exit controls", caps::EXIT, c.exit),
    ];
    for (name, cap, value) in table {
        if !ctrl_allowed(cap, value) {
            return Err(format!("{name} {value:#010x} not allowed by capability {cap:#018x} \
                (must-be-one {:#010x}, may-be-one {:#010x})", cap as u32, (cap >> 32) as u32));
        }
    }
    Ok(())
}

/// The controls without which this layer cannot present VT-x's exits faithfully.
pub fn check_required(c: &Controls) -> ControlResult {
    let proc = ProcBased::from_bits_retain(c.proc);
    for (flag, name) in [
        (ProcBased::HLT, "HLT exiting"),
        (ProcBased::UNCOND_IO, "unconditional I/O exiting"),
        (ProcBased::MSR_BITMAPS, "use MSR bitmaps"),
        (ProcBased::SECONDARY, "activate secondary controls"),
    ] {
        if !proc.contains(flag) {
            return Err(format!("the Linux layer needs the primary control '{name}'"));
        }
    }
    let proc2 = ProcBased2::from_bits_retain(c.effective_proc2());
    for (flag, name) in [(ProcBased2::EPT, "enable EPT"), (ProcBased2::UNRESTRICTED, "unrestricted guest")] {
        if !proc2.contains(flag) {
            return Err(format!("the Linux layer needs the secondary control '{name}'"));
        }
    }
    Ok(())
}

/// Other control consistency rules of 26.2.1.1 that a VMM can break.
pub fn check_consistency(c: &Controls) -> ControlResult {
    let proc2 = ProcBased2::from_bits_retain(c.effective_proc2());
    if proc2.contains(ProcBased2::UNRESTRICTED) && !proc2.contains(ProcBased2::EPT) {
        return Err("unrestricted guest requires EPT".into());
    }
    let pin = PinBased::from_bits_retain(c.pin);
    if pin.contains(PinBased::VIRTUAL_NMI) && !pin.contains(PinBased::NMI) {
        return Err("virtual NMIs require NMI exiting".into());
    }
    if c.proc & ProcBased::NMI_WND.bits() != 0 && !pin.contains(PinBased::VIRTUAL_NMI) {
        return Err("NMI-window exiting requires virtual NMIs".into());
    }
    Ok(())
}

/// The VM-entry interruption-information field (26.2.1.3): a sane type and vector,
/// error code only where the exception has one, instruction length for software events.
pub fn check_entry_event(c: &Controls) -> ControlResult {
    let info = c.entry_irq_info;
    if info & IRQ_INFO_VALID == 0 {
        return Ok(());
    }
    let vector = info & IRQ_INFO_VECTOR_MASK;
    let ty = info & IRQ_INFO_TYPE_MASK;
    if info & 0x7fff_f000 != 0 {
        return Err(format!("entry interruption info {info:#x}: reserved bits 30:12 set"));
    }
    match ty {
        IRQ_INFO_EXT_IRQ | IRQ_INFO_SOFT_IRQ => {}
        IRQ_INFO_NMI if vector == 2 => {}
        IRQ_INFO_HARD_EXC | IRQ_INFO_SOFT_EXC | IRQ_INFO_PRIV_SOFT_EXC if vector <= 31 => {}
        _ => return Err(format!("entry interruption info {info:#x}: bad type/vector")),
    }
    let has_error_code = ty == IRQ_INFO_HARD_EXC && matches!(vector, 8 | 10..=14 | 17 | 21);
    if info & IRQ_INFO_ERROR_VALID != 0 {
        if !has_error_code || !c.guest_pe {
            return Err(format!("entry interruption info {info:#x}: deliver-error-code set \
                for an event without one (or with CR0.PE=0)"));
        }
        if c.entry_exc_error & 0xffff_8000 != 0 {
            return Err("entry exception error code: bits 31:15 must be 0".into());
        }
    }
    if matches!(ty, IRQ_INFO_SOFT_IRQ | IRQ_INFO_SOFT_EXC | IRQ_INFO_PRIV_SOFT_EXC)
        && !(1..=15).contains(&c.entry_instr_len)
    {
        return Err(format!("software event needs an instruction length of 1..15, not {}", c.entry_instr_len));
    }
    Ok(())
}

/// All control checks.
pub fn check_controls(c: &Controls) -> ControlResult {
    check_capabilities(c)?;
    check_required(c)?;
    check_consistency(c)?;
    check_entry_event(c)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Controls as hvrun computes them from the capabilities.
    pub fn hvrun_controls() -> Controls {
        Controls {
            pin: cap2ctrl(caps::PINBASED, (PinBased::EXTINT | PinBased::NMI).bits()),
            proc: cap2ctrl(caps::PROCBASED, (ProcBased::HLT | ProcBased::UNCOND_IO | ProcBased::MSR_BITMAPS
                | ProcBased::TSC_OFFSET | ProcBased::SECONDARY).bits()),
            proc2: cap2ctrl(caps::PROCBASED2, (ProcBased2::EPT | ProcBased2::UNRESTRICTED).bits()),
            entry: cap2ctrl(caps::ENTRY, EntryControls::LOAD_EFER.bits()),
            exit: cap2ctrl(caps::EXIT, (ExitControls::HOST_IA32E | ExitControls::LOAD_EFER).bits()),
            guest_pe: true,
            ..Default::default()
        }
    }

    #[test]
    fn hvrun_controls_pass() {
        assert_eq!(check_controls(&hvrun_controls()), Ok(()));
    }

    #[test]
    fn capability_violations_fail() {
        let mut c = hvrun_controls();
        c.pin &= !0x16; // must-be-one bits cleared
        assert!(check_capabilities(&c).is_err());
        let mut c = hvrun_controls();
        c.proc2 |= ProcBased2::VMCS_SHADOW.bits();
        assert!(check_capabilities(&c).is_err());
        let mut c = hvrun_controls();
        c.pin |= PinBased::PREEMPTION_TIMER.bits();
        assert!(check_capabilities(&c).is_err());
        // Secondary controls do not count while SECONDARY is clear.
        let mut c = hvrun_controls();
        c.proc &= !ProcBased::SECONDARY.bits();
        c.proc2 = u32::MAX;
        assert_eq!(check_capabilities(&c), Ok(()));
    }

    #[test]
    fn controls_the_layer_needs() {
        for missing in [ProcBased::HLT, ProcBased::UNCOND_IO, ProcBased::MSR_BITMAPS, ProcBased::SECONDARY] {
            let mut c = hvrun_controls();
            c.proc &= !missing.bits();
            assert!(check_required(&c).is_err(), "{missing:?}");
        }
        let mut c = hvrun_controls();
        c.proc2 &= !ProcBased2::UNRESTRICTED.bits();
        assert!(check_required(&c).is_err());
        let mut c = hvrun_controls();
        c.proc2 = ProcBased2::UNRESTRICTED.bits();
        assert!(check_consistency(&c).is_err());
    }

    #[test]
    fn entry_event_sanity() {
        let mut c = hvrun_controls();
        c.entry_irq_info = IRQ_INFO_VALID | IRQ_INFO_HARD_EXC | 14 | IRQ_INFO_ERROR_VALID;
        assert_eq!(check_entry_event(&c), Ok(()));
        c.guest_pe = false; // no error codes in real mode
        assert!(check_entry_event(&c).is_err());
        c.entry_irq_info = IRQ_INFO_VALID | IRQ_INFO_HARD_EXC | 32;
        assert!(check_entry_event(&c).is_err());
        c.entry_irq_info = IRQ_INFO_VALID | IRQ_INFO_NMI | 3;
        assert!(check_entry_event(&c).is_err());
        c.entry_irq_info = IRQ_INFO_VALID | (1 << 8) | 3; // type 1 is reserved
        assert!(check_entry_event(&c).is_err());
        c.entry_irq_info = IRQ_INFO_VALID | IRQ_INFO_SOFT_IRQ | 0x80;
        assert!(check_entry_event(&c).is_err());
        c.entry_instr_len = 2;
        assert_eq!(check_entry_event(&c), Ok(()));
        c.entry_irq_info = IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x20 | IRQ_INFO_ERROR_VALID;
        assert!(check_entry_event(&c).is_err());
    }
}
