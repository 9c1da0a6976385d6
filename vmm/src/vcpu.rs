//! A vCPU thread: create the vCPU on this thread (the framework ties a vCPU to the
//! thread that created it), write its VMCS, then run the loop (an AP first waits for its
//! start-up IPI, crate::startup, and again after every INIT):
//!
//! ```text
//! loop {
//!     raise "in the guest" (the kick protocol, crate::kick)
//!     look for work: a stop, a state dump, the pending interrupt (inject it, or open
//!     the interrupt window)
//!     hv_vcpu_run_until(now + KICK_BACKSTOP)  -- the guest runs until a VM exit
//!     reason = VMCS_RO_EXIT_REASON
//!     match reason { IO => exit::io, EPT_VIOLATION => exit::mmio, ... }
//!     Halt => sleep until an interrupt; Stop => leave
//! }
//! ```
use crate::controls::Controls;
use crate::entry::EntryState;
use crate::exit::{self, Action, ExitContext, VcpuState};
use crate::inject::{self, WindowControl};
use crate::dump::{RecentExit, VcpuSnapshot};
use crate::irqchip::VcpuInterrupts;
use crate::kick::{self, Waker};
use crate::startup::{self, Woken};
use crate::machine::{Machine, StopReason};
use crate::regs::{HvVcpu, VcpuRegs};
use crate::tpr::TprSync;
use crate::trace::{self, ExitStats};
use hvf_sys::vmcs::*;
use hvf_sys::*;
use std::sync::Arc;
use std::time::Instant;

/// How a vCPU begins.
#[derive(Clone, Debug)]
pub enum Start {
    /// The boot processor: in the state the boot protocol hands over.
    At(Box<EntryState>),
    /// An application processor: in wait-for-SIPI (it needs a local APIC).
    WaitForSipi,
}

/// What a vCPU thread starts with.
pub struct VcpuConfig {
    pub index: u32,
    pub start: Start,
    pub interrupts: VcpuInterrupts,
    /// Gets this vCPU to look at its interrupts (out of the guest, out of HLT).
    pub waker: Arc<Waker>,
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
    let outcome = setup(&mut vcpu, machine, controls, &config).and_then(|written| run_loop(&mut vcpu, machine, &written, &config));
    if let Err(e) = outcome {
        machine.stopper.stop(fatal(format!("vCPU {}: {e}", config.index), exit::fault::dump(&vcpu)));
    }
    // SAFETY: this thread created the vCPU.
    let _ = unsafe { hv_vcpu_destroy(id) };
}

fn fatal(message: String, dump: String) -> StopReason {
    StopReason::Fatal { message, dump }
}

/// Controls, the entry state, native MSRs and (on Linux) the CPUID table. Returns the
/// controls as written (with the fresh VMCS's don't-care bits).
fn setup(vcpu: &mut HvVcpu, machine: &Machine, controls: &Controls, config: &VcpuConfig) -> Result<Controls, HvError> {
    let written = controls.write(vcpu)?;
    vcpu.write_vmcs(VMCS_CTRL_TSC_OFFSET, machine.clock.tsc_offset)?;
    if let Start::At(entry) = &config.start {
        entry.write(vcpu, &written)?;
    }
    for &msr in crate::msr::NATIVE_MSRS {
        // SAFETY: plain values, on the owning thread.
        HvError::check(unsafe { hv_vcpu_enable_native_msr(vcpu.id, msr, true) })?;
    }
    // KVM never exits on CPUID: the Linux layer fills its table from the same policy
    // that answers CPUID exits on a Mac.
    #[cfg(target_os = "linux")]
    HvError::check(hvf_sys::linux::hv_linux_vcpu_set_cpuid(vcpu.id, &|leaf, subleaf| {
        // KVM itself keeps OSXSAVE and leaf 0xD's sizes in step with the guest's CR4
        // and XCR0 afterwards, as hvrun's CPUID exit handler does on a Mac.
        machine.cpuid.leaf(config.index, leaf, subleaf, &crate::cpuid::GuestView::RESET)
    }))?;
    let _ = machine;
    Ok(written)
}

fn run_loop(vcpu: &mut HvVcpu, machine: &Machine, controls: &Controls, config: &VcpuConfig) -> Result<(), HvError> {
    let lapic = config.interrupts.lapic();
    let irq = config.interrupts.local();
    let mut state = VcpuState { index: config.index, lapic: lapic.cloned(), ..Default::default() };
    let mut window = WindowControl::new(controls.proc);
    let mut stats = ExitStats::default();
    let mut backstop = true;
    let mut exits = ExitCount::default();
    let mut tpr = TprSync::default();
    let mut started = matches!(config.start, Start::At(_));
    loop {
        if let Some(lapic) = lapic {
            // INIT (only an AP's APIC accepts one) sends the vCPU back to wait-for-SIPI.
            started &= !lapic.take_init();
            if !started {
                match startup::wait_for_sipi(machine, lapic, &config.waker, || answer_dump_request(vcpu, config, &exits))? {
                    Woken::Sipi(vector) => startup::start_at_sipi(vcpu, controls, vector)?,
                    Woken::Stopping => break,
                }
                tpr = TprSync::default();
                started = true;
            }
        }
        // From here on a kick interrupts this vCPU, so work published after the look
        // below is not missed (crate::kick).
        config.waker.entering_guest();
        if machine.stopper.stopping() {
            config.waker.left_guest();
            break;
        }
        answer_dump_request(vcpu, config, &exits)?;
        if let Some(lapic) = lapic {
            tpr.before_entry(vcpu, lapic)?;
        }
        let injected = inject::before_entry(vcpu, irq, &mut window)?;
        let ret = run_guest(vcpu, &mut backstop);
        config.waker.left_guest();
        let exited = Instant::now();
        HvError::check(ret)?;

        let reason = vcpu.read_vmcs(VMCS_RO_EXIT_REASON)? as u32;
        if let Some(lapic) = lapic {
            tpr.after_exit(vcpu, lapic)?;
        }
        let idt_vectoring = inject::reinject_interrupted_event(vcpu)?;
        let rip = vcpu.read_reg(HV_X86_RIP)?;
        exits.count(RecentExit { reason, rip, injected, idt_vectoring });
        let mut ctx = ExitContext::new(vcpu, machine, &mut state);
        let action = exit::handle_exit(&mut ctx, reason)?;
        if trace::tracing() {
            let qualification = ctx.vcpu.read_vmcs(VMCS_RO_EXIT_QUALIFIC).unwrap_or(0);
            trace::print_exit(config.index, reason, rip, qualification, ctx.note.as_deref());
        }
        match action {
            Action::Resume => {}
            Action::Halt => halt(vcpu, machine, config, &exits)?,
            Action::Stop(reason) => machine.stopper.stop(reason),
        }
        if trace::stats_enabled() {
            stats.record(reason, exited.elapsed());
        }
    }
    machine.stats.lock().unwrap_or_else(|e| e.into_inner()).merge(&stats);
    Ok(())
}

/// One run of the guest, bounded by the kick backstop (a VMX-preemption-timer exit at
/// the deadline) where the framework offers deadlines; without one it runs until an exit.
fn run_guest(vcpu: &HvVcpu, backstop: &mut bool) -> hv_return_t {
    if *backstop {
        // SAFETY: this thread owns the vCPU.
        let ret = unsafe { hv_vcpu_run_until(vcpu.id, kick::run_deadline()) };
        if ret != HV_UNSUPPORTED {
            return ret;
        }
        log::warn!("hv_vcpu_run_until with a deadline: {}; a kick the framework drops will wait for the next exit",
            HvError(ret));
        *backstop = false;
    }
    // SAFETY: this thread owns the vCPU.
    unsafe { hv_vcpu_run_until(vcpu.id, HV_DEADLINE_FOREVER) }
}

/// How many exits this vCPU took, and the last few (for the state dump).
#[derive(Default)]
struct ExitCount {
    exits: u64,
    recent: [RecentExit; RECENT_EXITS],
}

const RECENT_EXITS: usize = 16;

impl ExitCount {
    fn count(&mut self, exit: RecentExit) {
        self.recent[self.exits as usize % RECENT_EXITS] = exit;
        self.exits += 1;
    }

    /// The last exits, oldest first.
    fn recent(&self) -> Vec<RecentExit> {
        let n = (self.exits as usize).min(RECENT_EXITS);
        (0..n).map(|i| self.recent[(self.exits as usize - n + i) % RECENT_EXITS]).collect()
    }
}

/// Gives the state dump this vCPU's part, if it asked (crate::dump).
fn answer_dump_request(vcpu: &HvVcpu, config: &VcpuConfig, exits: &ExitCount) -> Result<(), HvError> {
    if config.waker.take_dump_request() {
        let mut snapshot = VcpuSnapshot::read(config.index, vcpu)?;
        (snapshot.exits, snapshot.recent_exits) = (exits.exits, exits.recent());
        #[cfg(target_os = "linux")]
        {
            snapshot.kick_pending = Some(hvf_sys::linux::hv_linux_vcpu_kick_pending(vcpu.id));
        }
        config.waker.answer_dump(snapshot.to_string());
    }
    Ok(())
}

/// Sleeps after HLT until an interrupt can be delivered (RFLAGS.IF=1 and one pending), an
/// NMI or INIT is pending, or the machine stops. The APIC timer thread latches timer
/// interrupts and kicks, so the sleep needs no deadline of its own. An event already
/// queued for the next entry (one whose delivery an exit cut short, re-injected from the
/// IDT-vectoring information) is delivered first: sleeping on it would lose it.
///
/// With RFLAGS.IF=0 only an NMI or INIT can wake the vCPU: it parks, and when every
/// vCPU is parked the machine is off (crate::machine::Parking).
fn halt(vcpu: &HvVcpu, machine: &Machine, config: &VcpuConfig, exits: &ExitCount) -> Result<(), HvError> {
    if vcpu.read_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO)? as u32 & hvf_sys::vmx::IRQ_INFO_VALID != 0 {
        return Ok(());
    }
    let irq = config.interrupts.local();
    let lapic = config.interrupts.lapic();
    let init = || lapic.is_some_and(|l| l.init_pending());
    // An NMI wakes HLT whatever RFLAGS.IF says; so does INIT.
    if irq.nmi_pending() || init() {
        return Ok(());
    }
    let interruptible = vcpu.read_reg(HV_X86_RFLAGS)? & (1 << 9) != 0;
    let ready = || {
        machine.stopper.stopping() || irq.nmi_pending() || init() || (interruptible && irq.pending().is_some())
    };
    let parked = !interruptible;
    if parked && machine.parking.park() {
        log::info!("vCPU {} halted with interrupts disabled, the last one running: the machine is off", config.index);
        machine.stopper.stop(StopReason::Power(devices::power::PowerEvent::PowerOff));
    }
    while !ready() {
        config.waker.sleep_until(None, ready);
        answer_dump_request(vcpu, config, exits)?;
    }
    if parked {
        machine.parking.unpark();
    }
    Ok(())
}
