//! vCPUs: each owned by the thread that created it, as under HVF.
//!
//! A vCPU is a KVM vCPU fd with its mmapped `kvm_run` page, in which KVM_CAP_SYNC_REGS
//! shares the general registers, the system registers and the event state with KVM at
//! every exit (kvm_valid_regs) and takes changes back at the next entry (kvm_dirty_regs),
//! so reading or writing guest state costs no ioctl. Next to it: the VMCS fields KVM has
//! no place for (`vmcs_store.rs`).
//!
//! Thread ownership: every vCPU call except `hv_vcpu_interrupt` must come from the thread
//! that created the vCPU; others get HV_BAD_ARGUMENT (the vCPU id is not valid on that
//! thread, which is how HVF words it), with a debug log line.
use super::errors::*;
use super::vm::{lock, Vm};
use crate::error::*;
use crate::types::*;
use kvm_bindings::{kvm_run, KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
use kvm_ioctls::VcpuFd;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// The part of a vCPU other threads may touch (kicks), and its state behind a mutex that
/// only the owning thread ever takes.
pub struct Vcpu {
    pub id: hv_vcpuid_t,
    pub owner_tid: i32,
    /// A kick is pending (see `kick.rs`).
    pub kick: AtomicBool,
    /// The owner thread is inside, or about to enter, KVM_RUN.
    pub in_run: AtomicBool,
    /// The vCPU's kvm_run page (owned by `state.fd`, which lives as long as this).
    run_page: *mut kvm_run,
    pub state: Mutex<VcpuState>,
}

// SAFETY: `run_page` is only used for volatile single-byte writes of `immediate_exit`,
// which KVM defines as shared with other threads; everything else is behind the mutex.
unsafe impl Send for Vcpu {}
unsafe impl Sync for Vcpu {}

impl Vcpu {
    /// Writes kvm_run.immediate_exit (any thread).
    pub fn set_immediate_exit(&self, value: u8) {
        // SAFETY: the page stays mapped while `state.fd` exists, i.e. as long as `self`.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*self.run_page).immediate_exit), value) }
    }
}

/// Everything the owning thread works on.
pub struct VcpuState {
    pub fd: VcpuFd,
    /// VMCS fields stored by the layer (controls, read-only exit information, the guest
    /// fields KVM has no place for), by encoding.
    pub fields: HashMap<u32, u64>,
    /// CR4.VMXE as the VMCS holds it (KVM's CR4 never has it; see `vmcs_store.rs`).
    pub cr4_vmxe: bool,
    /// Fields written by the VMM since the last exit whose KVM-side value differs in
    /// presentation (WRITTEN_* bits), so that the entry checks see what the VMM wrote.
    pub written: u32,
    /// Nanoseconds spent inside KVM_RUN.
    pub exec_ns: u64,
    /// The TSC offset last given to KVM, to set it only when it changes.
    pub tsc_offset_applied: u64,
    /// TSC ticks per millisecond (KVM_GET_TSC_KHZ), for timing KVM_RUN with RDTSC.
    pub tsc_khz: Option<u32>,
    /// hv_vcpu_run_until's deadline timer, made at the first deadline.
    deadline_timer: Option<super::kick::DeadlineTimer>,
    /// Secondary controls the installed CPUID table needs (`cpuid::controls_needed`).
    pub cpuid_controls_needed: u32,
    /// RIP of the last entries made in a shadow while the interrupt window was wanted, and
    /// how many in a row (`run.rs`, request_interrupt_window).
    pub window_held_at: Option<(u64, u32)>,
}

/// KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xe1, struct kvm_device_attr) (linux/kvm.h); on a
/// vCPU fd kvm-ioctls wraps it only for arm64.
const KVM_SET_DEVICE_ATTR: libc::c_ulong = 0x4018_aee1;

impl VcpuState {
    /// Arms the signal that ends a run at `deadline` (CLOCK_MONOTONIC ns).
    pub fn arm_deadline(&mut self, owner_tid: i32, deadline: u64) -> Result<(), hv_return_t> {
        if self.deadline_timer.is_none() {
            match super::kick::DeadlineTimer::new(owner_tid) {
                Ok(timer) => self.deadline_timer = Some(timer),
                Err(e) => {
                    log::error!("hvf-sys/linux: cannot create the run deadline timer: {e}");
                    return Err(HV_NO_RESOURCES);
                }
            }
        }
        if let Some(timer) = &self.deadline_timer {
            // 0 would disarm: a deadline of 0 is long past, make it 1 ns.
            timer.arm(deadline.max(1));
        }
        Ok(())
    }

    pub fn disarm_deadline(&mut self) {
        if let Some(timer) = &self.deadline_timer {
            timer.arm(0);
        }
    }

    /// Sets KVM's TSC offset of this vCPU (guest TSC = host TSC + offset): the
    /// KVM_VCPU_TSC_OFFSET attribute of group KVM_VCPU_TSC_CTRL.
    pub fn set_tsc_offset(&mut self, offset: u64) -> Result<(), hv_return_t> {
        if offset == self.tsc_offset_applied {
            return Ok(());
        }
        let attr = kvm_bindings::kvm_device_attr {
            flags: 0,
            group: kvm_bindings::KVM_VCPU_TSC_CTRL,
            attr: kvm_bindings::KVM_VCPU_TSC_OFFSET as u64,
            addr: &offset as *const u64 as u64,
        };
        // SAFETY: the ioctl reads one kvm_device_attr, whose addr points at a live u64.
        let ret = unsafe {
            libc::ioctl(std::os::unix::io::AsRawFd::as_raw_fd(&self.fd), KVM_SET_DEVICE_ATTR as _,
                &attr as *const kvm_bindings::kvm_device_attr)
        };
        if ret < 0 {
            return Err(raw_ioctl_failed("KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)", last_errno()));
        }
        self.tsc_offset_applied = offset;
        Ok(())
    }
}

thread_local! {
    /// The thread id, asked of the kernel once per thread: every vCPU call checks it,
    /// and a system call per check is measurable (several per exit).
    static TID: i32 = {
        // SAFETY: gettid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as i32 }
    };
}

/// The current thread's kernel thread id.
pub fn gettid() -> i32 {
    TID.with(|tid| *tid)
}

/// hv_vcpu_create.
pub fn create(vm: &Arc<Vm>, out: *mut hv_vcpuid_t, flags: hv_vcpu_options_t) -> hv_return_t {
    if out.is_null() {
        return HV_BAD_ARGUMENT;
    }
    if flags != HV_VCPU_DEFAULT {
        log::debug!("hvf-sys/linux: hv_vcpu_create: unknown options {flags:#x}");
        return HV_BAD_ARGUMENT;
    }
    super::kick::install_handler();
    let mut vcpus = lock(&vm.vcpus);
    let id = vcpus.iter().position(Option::is_none).unwrap_or(vcpus.len());
    let mut fd = match vm.fd.create_vcpu(id as u64) {
        Ok(fd) => fd,
        Err(e) => return ioctl_failed(&format!("KVM_CREATE_VCPU({id})"), &e),
    };
    // Seed the shared sync-regs area with KVM's reset state: from now on it is the one
    // copy of the guest registers the layer reads and writes.
    let regs = match fd.get_regs() { Ok(r) => r, Err(e) => return ioctl_failed("KVM_GET_REGS", &e) };
    let sregs = match fd.get_sregs() { Ok(r) => r, Err(e) => return ioctl_failed("KVM_GET_SREGS", &e) };
    let events = match fd.get_vcpu_events() { Ok(r) => r, Err(e) => return ioctl_failed("KVM_GET_VCPU_EVENTS", &e) };
    fd.get_kvm_run().kvm_valid_regs = (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS) as u64;
    fd.get_kvm_run().kvm_dirty_regs = 0;
    {
        let sync = fd.sync_regs_mut();
        sync.regs = regs;
        sync.sregs = sregs;
        sync.events = events;
    }
    // A usable CPUID table until the VMM installs its own (hv_linux_vcpu_set_cpuid).
    if let Err(code) = super::cpuid::set_supported(vm, &fd) {
        return code;
    }
    let run_page = fd.get_kvm_run() as *mut kvm_run;
    super::kick::set_thread_run_page(run_page);
    let tsc_khz = fd.get_tsc_khz().ok().filter(|&khz| khz > 0);
    let state = VcpuState {
        fd,
        fields: super::vmcs_store::initial_fields(),
        cr4_vmxe: false,
        written: 0,
        exec_ns: 0,
        tsc_offset_applied: 0,
        tsc_khz,
        deadline_timer: None,
        cpuid_controls_needed: 0,
        window_held_at: None,
    };
    let vcpu = Arc::new(Vcpu {
        id: id as hv_vcpuid_t,
        owner_tid: gettid(),
        kick: AtomicBool::new(false),
        in_run: AtomicBool::new(false),
        run_page,
        state: Mutex::new(state),
    });
    if id == vcpus.len() {
        vcpus.push(Some(vcpu));
    } else {
        vcpus[id] = Some(vcpu);
    }
    // SAFETY: `out` was checked non-null; the caller passes a valid hv_vcpuid_t pointer.
    unsafe { *out = id as hv_vcpuid_t };
    HV_SUCCESS
}

/// Finds a vCPU for a call from its owning thread; HV_BAD_ARGUMENT for an unknown id, no
/// VM, or another thread.
pub fn owned(id: hv_vcpuid_t) -> Result<(Arc<Vm>, Arc<Vcpu>), hv_return_t> {
    let Some(vm) = super::vm::current() else {
        log::debug!("hvf-sys/linux: vCPU {id}: no VM");
        return Err(HV_BAD_ARGUMENT);
    };
    let Some(vcpu) = vm.vcpu(id) else {
        log::debug!("hvf-sys/linux: vCPU {id} does not exist");
        return Err(HV_BAD_ARGUMENT);
    };
    let tid = gettid();
    if vcpu.owner_tid != tid {
        log::debug!("hvf-sys/linux: vCPU {id} belongs to thread {}, called from thread {tid}", vcpu.owner_tid);
        return Err(HV_BAD_ARGUMENT);
    }
    Ok((vm, vcpu))
}

/// Runs `f` on a vCPU owned by the calling thread.
pub fn with_vcpu(id: hv_vcpuid_t, f: impl FnOnce(&Arc<Vm>, &Vcpu, &mut VcpuState) -> hv_return_t) -> hv_return_t {
    match owned(id) {
        Ok((vm, vcpu)) => {
            let mut state = lock(&vcpu.state);
            f(&vm, &vcpu, &mut state)
        }
        Err(code) => code,
    }
}

/// hv_vcpu_destroy (owning thread).
pub fn destroy(id: hv_vcpuid_t) -> hv_return_t {
    let (vm, _vcpu) = match owned(id) {
        Ok(found) => found,
        Err(code) => return code,
    };
    super::kick::set_thread_run_page(std::ptr::null_mut());
    if let Some(slot) = lock(&vm.vcpus).get_mut(id as usize) {
        *slot = None;
    }
    let mut filter = lock(&vm.msr_filter);
    filter.forget_vcpu(id);
    let _ = super::msr::install(&vm, &filter);
    HV_SUCCESS
}
