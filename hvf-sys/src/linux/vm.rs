//! The process-global VM: one per process, as with Hypervisor.framework.
//!
//! `hv_vm_create` opens /dev/kvm, creates the KVM VM, and makes every MSR access exit to
//! the layer (see `msr.rs`). The VM is shared by reference counting: a vCPU call holds
//! it for the call's duration, so `hv_vm_destroy` on one thread cannot pull memory away
//! from a vCPU call on another.
use super::errors::*;
use super::memory::MemoryMap;
use super::msr::MsrFilter;
use super::vcpu::Vcpu;
use crate::error::*;
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub memory: Mutex<MemoryMap>,
    /// vCPUs by id; ids are small integers handed out lowest-free-first from 0.
    pub vcpus: Mutex<Vec<Option<Arc<Vcpu>>>>,
    pub msr_filter: Mutex<MsrFilter>,
}

static VM: Mutex<Option<Arc<Vm>>> = Mutex::new(None);

/// Locks a mutex even if a thread panicked while holding it: the data are plain tables
/// that stay consistent, and the layer must not panic on a caller's behalf.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The VM of the process, if one exists.
pub fn current() -> Option<Arc<Vm>> {
    lock(&VM).clone()
}

/// hv_vm_create.
pub fn create() -> hv_return_t {
    let mut slot = lock(&VM);
    if slot.is_some() {
        log::debug!("hvf-sys/linux: hv_vm_create: this process already has a VM");
        return HV_BUSY;
    }
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            let code = match e.errno() {
                libc::ENOENT | libc::ENODEV | libc::ENXIO => HV_NO_DEVICE,
                libc::EACCES | libc::EPERM => HV_DENIED,
                _ => errno_to_hv(e.errno()),
            };
            log::error!("hvf-sys/linux: opening /dev/kvm failed: {e}");
            return code;
        }
    };
    for (cap, name) in [(Cap::SyncRegs, "KVM_CAP_SYNC_REGS"), (Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR"),
        (Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER")] {
        if !kvm.check_extension(cap) {
            log::error!("hvf-sys/linux: this KVM lacks {name}, which the layer needs");
            return HV_UNSUPPORTED;
        }
    }
    let fd = match kvm.create_vm() {
        Ok(fd) => fd,
        Err(e) => return ioctl_failed("KVM_CREATE_VM", &e),
    };
    let vm = Vm {
        kvm,
        fd,
        memory: Mutex::new(MemoryMap::default()),
        vcpus: Mutex::new(Vec::new()),
        msr_filter: Mutex::new(MsrFilter::default()),
    };
    if let Err(code) = super::msr::enable_msr_exits(&vm) {
        return code;
    }
    *slot = Some(Arc::new(vm));
    HV_SUCCESS
}

/// hv_vm_destroy: refused with HV_BUSY while vCPUs exist (each must be destroyed by its
/// own thread first).
pub fn destroy() -> hv_return_t {
    let mut slot = lock(&VM);
    let Some(vm) = slot.as_ref() else {
        log::debug!("hvf-sys/linux: hv_vm_destroy without a VM");
        return HV_ERROR;
    };
    if lock(&vm.vcpus).iter().any(Option::is_some) {
        log::error!("hvf-sys/linux: hv_vm_destroy while vCPUs exist");
        return HV_BUSY;
    }
    lock(&vm.memory).clear(&vm.fd);
    *slot = None;
    HV_SUCCESS
}

/// Runs `f` on the VM, or returns HV_ERROR when there is none (VM-level calls).
pub fn with_vm(what: &str, f: impl FnOnce(&Arc<Vm>) -> hv_return_t) -> hv_return_t {
    match current() {
        Some(vm) => f(&vm),
        None => {
            log::debug!("hvf-sys/linux: {what} without a VM");
            HV_ERROR
        }
    }
}

impl Vm {
    pub fn vcpu(&self, id: u32) -> Option<Arc<Vcpu>> {
        lock(&self.vcpus).get(id as usize).and_then(Clone::clone)
    }
}
