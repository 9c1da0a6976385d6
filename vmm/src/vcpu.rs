//! A vCPU thread: create the vCPU on this thread (the framework ties a vCPU to the
//! thread that created it), write its VMCS, then run the loop:
//!
//! ```text
//! loop {
//!     inject pending interrupt (or open the interrupt window)
//!     hv_vcpu_run_until(FOREVER)          -- the guest runs until a VM exit
//!     reason = VMCS_RO_EXIT_REASON
//!     match reason { IO => exit::io, EPT_VIOLATION => exit::mmio, ... }
//!     Halt => sleep until an interrupt; Stop => leave
//! }
//! ```
use crate::controls::Controls;
use crate::entry::EntryState;
use crate::exit::{self, Action, ExitContext, VcpuState};
use crate::inject::{self, WindowControl};
use crate::irq::{LocalInterrupts, Waker};
use crate::machine::{Machine, StopReason};
use crate::regs::{HvVcpu, VcpuRegs};
use crate::trace::{self, ExitStats};
use devices::lapic::Lapic;
use hvf_sys::vmcs::*;
use hvf_sys::*;
use std::sync::Arc;
use std::time::Instant;

/// What a vCPU thread starts with.
pub struct VcpuConfig {
    pub index: u32,
    pub entry: EntryState,
    pub irq: Arc<dyn LocalInterrupts>,
    pub waker: Arc<Waker>,
    /// The vCPU's local APIC, when the machine has one: its page at 0xfee00000 and its
    /// MSRs belong to this vCPU alone. (`irq` is then the same APIC.)
    pub lapic: Option<Arc<Lapic>>,
}

/// The body of a vCPU thread. Whatever ends it is reported to the machine's stopper.
pub fn run(machine: &Machine, controls: &Controls, config: VcpuConfig) {
    let mut id = 0;
    // SAFETY: `id` outlives the call.
    if let Err(e) = HvError::check(unsafe { hv_vcpu_create(&mut id, HV_VCPU_DEFAULT) }) {
        machine.stopper.stop(fatal(format!("hv_vcpu_create: {e}"), String::new()));
        return;
    }
    let mut vcpu = HvVcpu { id };
    config.waker.set_vcpu(id);
    let outcome = setup(&mut vcpu, machine, controls, &config).and_then(|()| run_loop(&mut vcpu, machine, controls, &config));
    if let Err(e) = outcome {
        machine.stopper.stop(fatal(format!("vCPU {}: {e}", config.index), exit::fault::dump(&vcpu)));
    }
    // SAFETY: this thread created the vCPU.
    let _ = unsafe { hv_vcpu_destroy(id) };
}

fn fatal(message: String, dump: String) -> StopReason {
    StopReason::Fatal { message, dump }
}

/// Controls, the entry state, native MSRs and (on Linux) the CPUID table.
fn setup(vcpu: &mut HvVcpu, machine: &Machine, controls: &Controls, config: &VcpuConfig) -> Result<(), HvError> {
    controls.write(vcpu)?;
    vcpu.write_vmcs(VMCS_CTRL_TSC_OFFSET, machine.clock.tsc_offset)?;
    config.entry.write(vcpu, controls)?;
    for &msr in crate::msr::NATIVE_MSRS {
        // SAFETY: plain values, on the owning thread.
        HvError::check(unsafe { hv_vcpu_enable_native_msr(vcpu.id, msr, true) })?;
    }
    // KVM never exits on CPUID: the Linux layer fills its table from the same policy
    // that answers CPUID exits on a Mac.
    #[cfg(target_os = "linux")]
    HvError::check(hvf_sys::linux::hv_linux_vcpu_set_cpuid(vcpu.id, &|leaf, subleaf| {
        machine.cpuid.leaf(config.index, leaf, subleaf)
    }))?;
    let _ = machine;
    Ok(())
}

fn run_loop(vcpu: &mut HvVcpu, machine: &Machine, controls: &Controls, config: &VcpuConfig) -> Result<(), HvError> {
    let mut state = VcpuState { index: config.index, lapic: config.lapic.clone(), ..Default::default() };
    let mut window = WindowControl::new(controls.proc);
    let mut stats = ExitStats::default();
    while !machine.stopper.stopping() {
        inject::before_entry(vcpu, config.irq.as_ref(), &mut window)?;
        config.waker.entering_guest();
        // A kick that raced with the injection step makes this return at once.
        // SAFETY: this thread owns the vCPU.
        let ret = unsafe { hv_vcpu_run_until(vcpu.id, HV_DEADLINE_FOREVER) };
        config.waker.left_guest();
        let exited = Instant::now();
        HvError::check(ret)?;

        let reason = vcpu.read_vmcs(VMCS_RO_EXIT_REASON)? as u32;
        inject::reinject_interrupted_event(vcpu)?;
        let rip = if trace::tracing() { vcpu.read_reg(HV_X86_RIP)? } else { 0 };
        let mut ctx = ExitContext::new(vcpu, machine, &mut state);
        let action = exit::handle_exit(&mut ctx, reason)?;
        if trace::tracing() {
            let qualification = ctx.vcpu.read_vmcs(VMCS_RO_EXIT_QUALIFIC).unwrap_or(0);
            trace::print_exit(config.index, reason, rip, qualification, ctx.note.as_deref());
        }
        match action {
            Action::Resume => {}
            Action::Halt => halt(vcpu, machine, config)?,
            Action::Stop(reason) => machine.stopper.stop(reason),
        }
        if trace::stats_enabled() {
            stats.record(reason, exited.elapsed());
        }
    }
    machine.stats.lock().unwrap_or_else(|e| e.into_inner()).merge(&stats);
    Ok(())
}

/// Sleeps after HLT until an interrupt can be delivered (RFLAGS.IF=1 and one pending),
/// the next timer is due, or the machine stops.
fn halt(vcpu: &HvVcpu, machine: &Machine, config: &VcpuConfig) -> Result<(), HvError> {
    let interruptible = vcpu.read_reg(HV_X86_RFLAGS)? & (1 << 9) != 0;
    if !interruptible {
        // Nothing can wake this vCPU: hvrun's machines have one vCPU and no NMI source.
        // It is how a kernel without ACPI powers off (Linux's machine_halt with acpi=off).
        log::info!("vCPU {} halted with interrupts disabled: the machine is off", config.index);
        machine.stopper.stop(StopReason::Power(devices::power::PowerEvent::PowerOff));
        return Ok(());
    }
    let irq = config.irq.as_ref();
    loop {
        let ready = || machine.stopper.stopping() || irq.pending().is_some();
        config.waker.sleep_until(irq.next_deadline(), ready);
        irq.poll_timers(Instant::now());
        if ready() {
            return Ok(());
        }
    }
}
