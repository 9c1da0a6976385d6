//! The VM-execution, VM-entry and VM-exit controls hvrun runs its guests with, computed
//! from the capabilities the framework reports (SDM vol. 3, 25.6-25.8 and appendix A.3).
use crate::regs::VcpuRegs;
use hvf_sys::vmcs::*;
use hvf_sys::vmx::*;
use hvf_sys::*;

/// The capability words the controls are computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub pin: u64,
    pub proc: u64,
    pub proc2: u64,
    pub entry: u64,
    pub exit: u64,
}

impl Capabilities {
    /// Reads the capabilities from the framework.
    pub fn read() -> Result<Self, HvError> {
        let read = |cap| {
            let mut value = 0;
            // SAFETY: `value` outlives the call.
            HvError::check(unsafe { hv_vmx_read_capability(cap, &mut value) }).map(|_| value)
        };
        Ok(Capabilities {
            pin: read(HV_VMX_CAP_PINBASED)?,
            proc: read(HV_VMX_CAP_PROCBASED)?,
            proc2: read(HV_VMX_CAP_PROCBASED2)?,
            entry: read(HV_VMX_CAP_ENTRY)?,
            exit: read(HV_VMX_CAP_EXIT)?,
        })
    }
}

/// Control values for one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub entry: u32,
    pub exit: u32,
}

/// Why the controls hvrun needs cannot be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingControl(pub &'static str);

impl std::fmt::Display for MissingControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the CPU cannot provide the VT-x control {} that hvrun needs", self.0)
    }
}

impl std::error::Error for MissingControl {}

/// CR0 bits hvrun owns: reads of them return the shadow, writes exit (SDM 25.6.6).
/// NE, NW and CD are forced (NE=1 is a VMX fixed bit; NW/CD would make the guest's
/// memory uncached behind the host's back); PE and PG change the paging mode, and with
/// EFER.LME a PG write must switch the IA-32e entry control.
pub const CR0_GUEST_HOST_MASK: u64 = CR0_PE | CR0_NE | CR0_NW | CR0_CD | CR0_PG;
/// CR4 bits hvrun owns: VMXE must stay set under VMX and is hidden from the guest.
pub const CR4_GUEST_HOST_MASK: u64 = CR4_VMXE;

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_VMXE: u64 = 1 << 13;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

/// The control bits hvrun decides, set or clear; every other bit keeps the value the
/// framework gave the fresh VMCS ("don't care" to hvrun: HVF may rely on them, and they
/// change between macOS releases: xhyve PR #211, written with an Apple engineer).
/// Primary and pin-based: every named control, since each one changes which exits
/// hvrun gets. Secondary: all but VPID (the framework's TLB tagging). Entry: IA-32e
/// mode, EFER and PAT loading (the guest's PAT lives in hvrun, not the VMCS), SMM and
/// the perf-global load. Exit: the 64-bit host and EFER loading hvrun needs; the rest of
/// the host side (PAT, acknowledge interrupt) is the framework's.
pub const OWNED_PIN: u32 = PinBased::all().bits();
pub const OWNED_PROC: u32 = ProcBased::all().bits();
pub const OWNED_PROC2: u32 = ProcBased2::all().bits() & !ProcBased2::VPID.bits();
pub const OWNED_ENTRY: u32 = EntryControls::GUEST_IA32E.bits()
    | EntryControls::SMM.bits()
    | EntryControls::DEACTIVATE_DUAL.bits()
    | EntryControls::LOAD_PERF_GLOBAL.bits()
    | EntryControls::LOAD_PAT.bits()
    | EntryControls::LOAD_EFER.bits();
pub const OWNED_EXIT: u32 = ExitControls::HOST_IA32E.bits() | ExitControls::LOAD_EFER.bits() | ExitControls::SAVE_PREEMPTION_TIMER.bits();

impl Controls {
    /// Exits on HLT, every port access and every MSR not made native; TSC offsetting;
    /// EPT with an unrestricted guest (real mode runs natively); EFER loaded on entry.
    /// RDTSCP and INVPCID run in the guest where the CPU can enable them (they raise #UD
    /// otherwise, SDM 25.6.2; the CPUID policy hides them then). XSAVES/XRSTORS stay off,
    /// as xhyve and hyperkit have them: the CPUID policy hides XSAVES, so the guest's
    /// supervisor state (IA32_XSS) never needs emulating.
    pub fn from_capabilities(caps: &Capabilities) -> Result<Self, MissingControl> {
        let want = |cap: u64, bits: u32, name: &'static str| {
            let value = cap2ctrl(cap, bits);
            if value & bits == bits {
                Ok(value)
            } else {
                Err(MissingControl(name))
            }
        };
        let proc2 = want(caps.proc2, (ProcBased2::EPT | ProcBased2::UNRESTRICTED).bits(), "EPT + unrestricted guest")?;
        let proc2 = cap2ctrl(caps.proc2, proc2 | (ProcBased2::RDTSCP | ProcBased2::INVPCID).bits());
        Ok(Controls {
            pin: want(caps.pin, (PinBased::EXTINT | PinBased::NMI).bits(), "external-interrupt/NMI exiting")?,
            proc: want(
                caps.proc,
                (ProcBased::HLT | ProcBased::UNCOND_IO | ProcBased::MSR_BITMAPS | ProcBased::TSC_OFFSET | ProcBased::SECONDARY)
                    .bits(),
                "HLT/I/O exiting, MSR bitmaps, TSC offsetting",
            )?,
            proc2,
            entry: want(caps.entry, EntryControls::LOAD_EFER.bits(), "load EFER on entry")?,
            exit: want(caps.exit, (ExitControls::HOST_IA32E | ExitControls::LOAD_EFER).bits(), "64-bit host, load EFER")?,
        })
    }

    /// Whether the guest may use RDTSCP/RDPID and INVPCID (what CPUID may show).
    pub fn rdtscp(&self) -> bool {
        self.proc2 & ProcBased2::RDTSCP.bits() != 0
    }

    pub fn invpcid(&self) -> bool {
        self.proc2 & ProcBased2::INVPCID.bits() != 0
    }

    /// Writes the controls and the fixed parts of the VMCS of one vCPU, keeping the fresh
    /// VMCS's bits outside the OWNED_* masks, within the masks the framework allows for
    /// each field (`hv_vmx_vcpu_get_cap_write_vmcs`). Returns what was written.
    pub fn write(&self, vcpu: &mut dyn VcpuRegs) -> Result<Controls, HvError> {
        let mut field = |field: u32, name: &str, owned: u32, wanted: u32| -> Result<u32, HvError> {
            let fresh = vcpu.read_vmcs(field)? as u32;
            let (must, may) = vcpu.vmcs_write_masks(field)?;
            let value = (((fresh & !owned) | wanted) as u64 | must) & may;
            if value as u32 & wanted != wanted {
                log::error!("the framework does not let hvrun set {name} bits {:#x} (allowed-1 {may:#x})", wanted & !(value as u32));
                return Err(HvError(HV_UNSUPPORTED));
            }
            vcpu.write_vmcs(field, value)?;
            Ok(value as u32)
        };
        let written = Controls {
            pin: field(VMCS_CTRL_PIN_BASED, "pin-based control", OWNED_PIN, self.pin)?,
            proc: field(VMCS_CTRL_CPU_BASED, "primary processor-based control", OWNED_PROC, self.proc)?,
            proc2: field(VMCS_CTRL_CPU_BASED2, "secondary processor-based control", OWNED_PROC2, self.proc2)?,
            entry: field(VMCS_CTRL_VMENTRY_CONTROLS, "VM-entry control", OWNED_ENTRY, self.entry)?,
            exit: field(VMCS_CTRL_VMEXIT_CONTROLS, "VM-exit control", OWNED_EXIT, self.exit)?,
        };
        // No exception exits: the guest handles its own faults.
        vcpu.write_vmcs(VMCS_CTRL_EXC_BITMAP, 0)?;
        vcpu.write_vmcs(VMCS_CTRL_CR0_MASK, CR0_GUEST_HOST_MASK)?;
        vcpu.write_vmcs(VMCS_CTRL_CR4_MASK, CR4_GUEST_HOST_MASK)?;
        vcpu.write_vmcs(VMCS_CTRL_TPR_THRESHOLD, 0)?;
        vcpu.write_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, 0)?;
        Ok(written)
    }
}

/// The CR0 value the CPU runs with for a CR0 the guest asked for: NE forced on, NW/CD off
/// (SDM 25.8 fixed bits; A.7). PE and PG are the guest's: an unrestricted guest may clear them.
pub fn effective_cr0(guest: u64) -> u64 {
    (guest | CR0_NE) & !(CR0_NW | CR0_CD)
}

/// The CR4 value the CPU runs with: VMXE must be one under VMX (A.8).
pub fn effective_cr4(guest: u64) -> u64 {
    guest | CR4_VMXE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::RecordedExit;

    /// The capabilities of a real Intel CPU (see hvf-intel-api.md).
    const CAPS: Capabilities = Capabilities {
        pin: 0x0000_003f_0000_0016,
        proc: 0xfff9_fffe_0401_e172,
        proc2: 0x0055_3cfe_0000_0000,
        entry: 0x0003_ffff_0000_11ff,
        exit: 0x01ff_ffff_0003_6dff,
    };

    #[test]
    fn controls_from_a_real_cpu() {
        let c = Controls::from_capabilities(&CAPS).unwrap();
        assert_eq!(c.pin, 0x1f);
        // Must-be-one bits of the capability plus HLT, UNCOND_IO, TSC_OFFSET, MSR_BITMAPS, SECONDARY.
        assert_eq!(c.proc, 0x0401_e172 | 0x8 | 0x80 | 0x0100_0000 | 0x1000_0000 | 0x8000_0000);
        assert_eq!(c.proc2, 0x2 | 0x80 | 0x8 | 0x1000, "EPT, unrestricted, RDTSCP, INVPCID");
        assert!(c.rdtscp() && c.invpcid());
        assert_eq!(c.entry, 0x11ff | 0x8000);
        assert_eq!(c.exit, 0x36dff | 0x200 | 0x20_0000);
        for (cap, ctrl) in [(CAPS.pin, c.pin), (CAPS.proc, c.proc), (CAPS.proc2, c.proc2), (CAPS.entry, c.entry), (CAPS.exit, c.exit)] {
            assert!(ctrl_allowed(cap, ctrl));
        }
    }

    #[test]
    fn a_cpu_without_unrestricted_guest_is_refused() {
        let caps = Capabilities { proc2: 0x0000_0002_0000_0000, ..CAPS };
        assert_eq!(Controls::from_capabilities(&caps), Err(MissingControl("EPT + unrestricted guest")));
    }

    /// A fresh VMCS as a framework might hand it out: must-be-one bits, plus VPID (a
    /// don't-care bit to hvrun) and XSAVES (owned by hvrun: switched off).
    fn fresh() -> RecordedExit {
        let mut v = RecordedExit::new()
            .field(VMCS_CTRL_PIN_BASED, CAPS.pin & 0xffff_ffff)
            .field(VMCS_CTRL_CPU_BASED, CAPS.proc & 0xffff_ffff)
            .field(VMCS_CTRL_CPU_BASED2, (ProcBased2::VPID | ProcBased2::XSAVES).bits() as u64)
            .field(VMCS_CTRL_VMENTRY_CONTROLS, CAPS.entry & 0xffff_ffff)
            .field(VMCS_CTRL_VMEXIT_CONTROLS, (CAPS.exit & 0xffff_ffff) | ExitControls::ACK_INTERRUPT.bits() as u64);
        for (field, cap) in [(VMCS_CTRL_PIN_BASED, CAPS.pin), (VMCS_CTRL_CPU_BASED, CAPS.proc), (VMCS_CTRL_CPU_BASED2, CAPS.proc2),
            (VMCS_CTRL_VMENTRY_CONTROLS, CAPS.entry), (VMCS_CTRL_VMEXIT_CONTROLS, CAPS.exit)] {
            v.masks.insert(field, (cap & 0xffff_ffff, cap >> 32));
        }
        v
    }

    #[test]
    fn writes_controls_and_masks() {
        let c = Controls::from_capabilities(&CAPS).unwrap();
        let mut v = fresh();
        let written = c.write(&mut v).unwrap();
        assert_eq!(v.vmcs[&VMCS_CTRL_CPU_BASED], c.proc as u64);
        assert_eq!(written.proc, c.proc);
        assert_eq!(v.vmcs[&VMCS_CTRL_CR4_MASK], CR4_VMXE);
        assert_eq!(v.vmcs[&VMCS_CTRL_CR0_MASK], 0xe000_0021);
    }

    #[test]
    fn the_fresh_vmcss_dont_care_bits_are_kept_and_owned_ones_decided() {
        let c = Controls::from_capabilities(&CAPS).unwrap();
        let mut v = fresh();
        let written = c.write(&mut v).unwrap();
        let proc2 = ProcBased2::from_bits_retain(v.vmcs[&VMCS_CTRL_CPU_BASED2] as u32);
        assert!(proc2.contains(ProcBased2::VPID), "VPID is the framework's: kept");
        assert!(!proc2.contains(ProcBased2::XSAVES), "XSAVES is hvrun's: off");
        assert!(proc2.contains(ProcBased2::EPT | ProcBased2::UNRESTRICTED | ProcBased2::RDTSCP | ProcBased2::INVPCID));
        assert_eq!(written.proc2, proc2.bits());
        assert_ne!(v.vmcs[&VMCS_CTRL_VMEXIT_CONTROLS] & ExitControls::ACK_INTERRUPT.bits() as u64, 0, "host side kept");
    }

    #[test]
    fn a_control_the_framework_will_not_take_is_an_error() {
        let c = Controls::from_capabilities(&CAPS).unwrap();
        let mut v = fresh();
        // The framework's write masks forbid RDTSCP although the capability offered it.
        v.masks.insert(VMCS_CTRL_CPU_BASED2, (0, (CAPS.proc2 >> 32) & !(ProcBased2::RDTSCP.bits() as u64)));
        assert_eq!(c.write(&mut v), Err(HvError(HV_UNSUPPORTED)));
    }

    #[test]
    fn effective_control_registers() {
        assert_eq!(effective_cr0(CR0_PE | CR0_CD | CR0_NW), CR0_PE | CR0_NE);
        assert_eq!(effective_cr4(CR4_PAE), CR4_PAE | CR4_VMXE);
    }
}
