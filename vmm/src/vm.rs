//! The VM: `hv_vm_create`, guest RAM mapped in, the controls every vCPU gets, and one
//! thread per vCPU. Dropping it stops the vCPUs and destroys the VM.
use crate::clock::{host_tsc_hz, GuestClock};
use crate::controls::{Capabilities, Controls, MissingControl};
use crate::cpuid::CpuidPolicy;
use crate::host::VmCreateError;
use crate::machine::{Machine, StopReason, Stopper};
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::{self, VcpuConfig};
use devices::bus::Bus;
use hvf_sys::*;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Debug)]
pub enum VmError {
    /// `hv_vm_create` failed: on macOS, with what to do about it.
    Create(VmCreateError),
    Hv(&'static str, HvError),
    Memory(MemoryError),
    Controls(MissingControl),
    Thread(std::io::Error),
    /// Buses can only change before the first vCPU starts.
    AlreadyRunning,
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Create(e) => write!(f, "{e}"),
            VmError::Hv(what, e) => write!(f, "{what}: {e}"),
            VmError::Memory(e) => write!(f, "{e}"),
            VmError::Controls(e) => write!(f, "{e}"),
            VmError::Thread(e) => write!(f, "cannot start a vCPU thread: {e}"),
            VmError::AlreadyRunning => write!(f, "the machine is already running"),
        }
    }
}

impl std::error::Error for VmError {}

/// The most vCPUs the hypervisor gives one VM (`HV_CAP_VCPUMAX`; on Linux, KVM's
/// KVM_CAP_MAX_VCPUS).
pub fn max_vcpus() -> Result<u64, HvError> {
    let mut max = 0;
    // SAFETY: `max` outlives the call.
    HvError::check(unsafe { hv_capability(HV_CAP_VCPUMAX, &mut max) })?;
    Ok(max)
}

pub struct Vm {
    machine: Arc<Machine>,
    controls: Controls,
    threads: Vec<JoinHandle<()>>,
}

impl Vm {
    /// Creates the VM with `mem_size` bytes of RAM and empty buses. Its guest TSC starts at
    /// zero now and ticks at the host TSC rate, measured here.
    pub fn new(mem_size: u64, cpuid: CpuidPolicy, stopper: Arc<Stopper>) -> Result<Vm, VmError> {
        Self::with_clock(mem_size, cpuid, stopper, GuestClock::start(host_tsc_hz()))
    }

    /// `new` with a given clock (the CPUID policy must describe the same TSC rate).
    pub fn with_clock(mem_size: u64, cpuid: CpuidPolicy, stopper: Arc<Stopper>, clock: GuestClock) -> Result<Vm, VmError> {
        let ram = GuestRam::new(mem_size).map_err(VmError::Memory)?;
        // SAFETY: no arguments beyond the flags.
        HvError::check(unsafe { hv_vm_create(HV_VM_DEFAULT) }).map_err(|e| VmError::Create(VmCreateError::new(e)))?;
        let vm = |ram| -> Result<Vm, VmError> {
            let caps = Capabilities::read().map_err(|e| VmError::Hv("hv_vmx_read_capability", e))?;
            let controls = Controls::from_capabilities(&caps).map_err(VmError::Controls)?;
            let cpuid = cpuid.with_controls(&controls);
            let parking = crate::machine::Parking::new(cpuid.vcpus());
            let machine = Machine { ram, pio: Bus::new(), mmio: Bus::new(), cpuid, clock, stopper, parking, stats: Mutex::default() };
            machine.ram.map_into_vm().map_err(VmError::Memory)?;
            Ok(Vm { machine: Arc::new(machine), controls, threads: Vec::new() })
        };
        vm(ram).inspect_err(|_| {
            // SAFETY: the VM created above, with no vCPUs.
            let _ = unsafe { hv_vm_destroy() };
        })
    }

    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The machine, to add devices to its buses, until a vCPU runs.
    pub fn machine_mut(&mut self) -> Result<&mut Machine, VmError> {
        Arc::get_mut(&mut self.machine).ok_or(VmError::AlreadyRunning)
    }

    /// Starts a vCPU on a thread of its own.
    pub fn start_vcpu(&mut self, config: VcpuConfig) -> Result<(), VmError> {
        let machine = self.machine.clone();
        let controls = self.controls;
        machine.stopper.add_waker(config.waker.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", config.index))
            .spawn(move || vcpu::run(&machine, &controls, config))
            .map_err(VmError::Thread)?;
        self.threads.push(thread);
        Ok(())
    }

    /// Waits for every vCPU to finish and says why the machine stopped.
    pub fn wait(&mut self) -> StopReason {
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                self.machine.stopper.stop(StopReason::Fatal { message: "a vCPU thread panicked".into(), dump: String::new() });
            }
        }
        self.machine.stopper.reason().unwrap_or(StopReason::Host)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.machine.stopper.stop(StopReason::Host);
            self.wait();
        }
        // SAFETY: every vCPU was destroyed by its thread; RAM is unmapped with the VM and
        // freed only after this (the `Machine` drops after `drop` returns).
        let ret = unsafe { hv_vm_destroy() };
        if let Err(e) = HvError::check(ret) {
            log::warn!("hv_vm_destroy: {e}");
        }
    }
}
