//! How an application processor starts: INIT puts it in wait-for-SIPI, a start-up IPI
//! starts it in real mode at `vector << 12` (SDM vol. 3, 9.4.4 "MP Initialization
//! Example" and 11.6.1). The LAPIC model decides which INIT and SIPI count (the second
//! SIPI of INIT-SIPI-SIPI is ignored, an INIT to the BSP is dropped); this module is the
//! vCPU's side: park the thread until a SIPI, then write the real-mode state.
//!
//! With no in-kernel interrupt controller, KVM treats every vCPU as runnable, and
//! Hypervisor.framework has no notion of wait-for-SIPI at all: hvrun holds an AP
//! here itself, on its own thread, without entering the guest.
use crate::controls::Controls;
use crate::entry::EntryState;
use crate::machine::Machine;
use crate::regs::VcpuRegs;
use devices::lapic::Lapic;
use hvf_sys::vmcs::*;
use hvf_sys::*;

/// The state a SIPI with `vector` starts an AP in (SDM vol. 3, table 10-1 for the
/// power-up/INIT values): real mode, CS selector `vector << 8` (base `vector << 12`),
/// IP 0, every general register 0, no event pending.
pub fn sipi_state(vector: u8) -> EntryState {
    EntryState::real_mode(u16::from(vector) << 8, 0, 0)
}

/// General registers [`EntryState::write`] leaves alone; INIT clears them as well.
const OTHER_REGISTERS: [hv_x86_reg_t; 12] = [
    HV_X86_RCX, HV_X86_RDX, HV_X86_RDI, HV_X86_RBP, HV_X86_R8, HV_X86_R9, HV_X86_R10, HV_X86_R11, HV_X86_R12,
    HV_X86_R13, HV_X86_R14, HV_X86_R15,
];

/// Starts the vCPU at the SIPI's vector: the real-mode state, the other general
/// registers and CR8 cleared, and any event an earlier life queued dropped.
pub fn start_at_sipi(vcpu: &mut dyn VcpuRegs, controls: &Controls, vector: u8) -> Result<(), HvError> {
    sipi_state(vector).write(vcpu, controls)?;
    for reg in OTHER_REGISTERS {
        vcpu.write_reg(reg, 0)?;
    }
    vcpu.write_reg(HV_X86_TPR, 0)?;
    vcpu.write_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, 0)?;
    // The page tables of the AP's previous life (hotplug) must not be used again.
    vcpu.invalidate_tlb()
}

/// What ended a wait for SIPI.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    Sipi(u8),
    Stopping,
}

/// Parks the calling vCPU thread until its APIC takes a start-up IPI or the machine
/// stops. INITs that arrive meanwhile are consumed (the AP already waits).
/// `between_sleeps` runs after every wake-up (the vCPU answers state-dump requests).
pub fn wait_for_sipi(
    machine: &Machine,
    lapic: &Lapic,
    waker: &crate::kick::Waker,
    mut between_sleeps: impl FnMut() -> Result<(), HvError>,
) -> Result<Woken, HvError> {
    if machine.parking.park() {
        // Every other vCPU is parked too: nothing can send the SIPI.
        log::info!("every vCPU is halted or waiting for a SIPI: the machine is off");
        machine.stopper.stop(crate::machine::StopReason::Power(devices::power::PowerEvent::PowerOff));
    }
    let woken = loop {
        lapic.take_init();
        if let Some(vector) = lapic.take_sipi() {
            break Woken::Sipi(vector);
        }
        if machine.stopper.stopping() {
            break Woken::Stopping;
        }
        waker.sleep_until(None, || machine.stopper.stopping() || lapic.sipi_pending());
        between_sleeps()?;
    };
    machine.parking.unpark();
    Ok(woken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::RecordedExit;

    #[test]
    fn sipi_vector_0x9a_starts_at_0x9a000_in_real_mode() {
        let mut v = RecordedExit::new();
        let controls = Controls { pin: 0, proc: 0, proc2: 0, entry: 0x11ff, exit: 0 };
        v.regs.insert(HV_X86_RDX, 0x1234);
        v.vmcs.insert(VMCS_CTRL_VMENTRY_IRQ_INFO, 0x8000_0020);
        start_at_sipi(&mut v, &controls, 0x9a).unwrap();
        assert_eq!(v.vmcs[&VMCS_GUEST_CS], 0x9a00);
        assert_eq!(v.vmcs[&VMCS_GUEST_CS_BASE], 0x9a000);
        assert_eq!(v.vmcs[&VMCS_GUEST_CS_LIMIT], 0xffff);
        assert_eq!(v.regs[&HV_X86_RIP], 0);
        assert_eq!(v.regs[&HV_X86_RDX], 0, "INIT clears every general register");
        assert_eq!(v.regs[&HV_X86_TPR], 0);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0, "no event of the AP's last life");
        assert_eq!(v.vmcs[&VMCS_GUEST_IA32_EFER], 0);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_CONTROLS] & 0x200, 0, "not IA-32e");
        assert_eq!(v.tlb_invalidations, 1);
    }
}
