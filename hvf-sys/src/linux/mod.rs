//! Hypervisor.framework's Intel API implemented over Linux KVM, so that hvrun's one VT-x
//! exit handler runs unchanged on Linux (design: /work/shared/design/linux-host.md).
//!
//! The layer behaves like a VT-x CPU driven through HVF: after `hv_vcpu_run` returns,
//! the VMCS exit-information fields describe the exit as VT-x would, RIP is at the
//! exiting instruction, and the guest has not executed it.
//!
//! Modules, one concept each:
//! - `api`: the C functions (`crate::functions` checks their signatures);
//! - `vm`: the one VM of the process; `memory`: hv_vm_map/unmap/protect as KVM slots;
//! - `vcpu`: vCPUs owned by their creating thread; `kick`: hv_vcpu_interrupt;
//! - `vmcs_store`, `segments`, `registers`: the VMCS and registers over KVM state;
//! - `caps`: the VMX capabilities reported; `controls`, `entry_checks`: VM-entry checks;
//! - `run`: entry, injection, and exit presentation; `decode`: finding the instruction;
//! - `msr`: MSR exits and native MSRs; `cpuid`: the CPUID hook below; `errors`.
pub mod api;
mod caps;
mod controls;
mod cpuid;
mod decode;
mod entry_checks;
mod errors;
mod kick;
mod memory;
mod msr;
mod registers;
mod run;
mod segments;
mod vcpu;
mod vm;
mod vmcs_store;
mod xsetbv_probe;

pub use kick::KickMode;

use crate::error::hv_return_t;

/// Chooses what `hv_vcpu_interrupt` does to a vCPU outside `hv_vcpu_run` (Linux only):
/// Apple does not document it, so hvrun's tests run in both modes. Without a call, the
/// environment variable HVRUN_KICK_MODE (`kept` or `lost`) decides; the default,
/// [`KickMode::LostOutsideRun`], is the stricter.
pub fn hv_linux_set_kick_mode(mode: KickMode) {
    kick::set_mode(mode);
}

/// Whether a kick is held for the vCPU's next run (Linux only; the state dump shows it).
pub fn hv_linux_vcpu_kick_pending(vcpu: hv_vcpuid_t) -> bool {
    vcpu::owned(vcpu).is_ok_and(|(_, v)| v.kick.load(std::sync::atomic::Ordering::SeqCst))
}
use crate::types::hv_vcpuid_t;

/// Installs the guest's CPUID table (Linux only): KVM never exits on CPUID, so the VMM
/// passes the function its CPUID exit handler uses on macOS, and this asks it for every
/// leaf and subleaf KVM reports (plus the hypervisor leaves 0x40000000 up to the maximum
/// its EAX names) and installs the answers with KVM_SET_CPUID2. Call it from the vCPU's
/// thread after `hv_vcpu_create` and before the first run (KVM refuses a different
/// table afterwards).
pub fn hv_linux_vcpu_set_cpuid(vcpu: hv_vcpuid_t, policy: &dyn Fn(u32, u32) -> [u32; 4]) -> hv_return_t {
    vcpu::with_vcpu(vcpu, |vm, _, st| cpuid::set(vm, st, policy))
}

/// Whether KVM sees a guest's XSETBV here (not so nested under QEMU's TCG); where it does
/// not, the layer's CPUID offers no XSAVE (`xsetbv_probe.rs`).
pub fn hv_linux_kvm_tracks_guest_xcr0() -> bool {
    xsetbv_probe::kvm_tracks_guest_xcr0()
}

/// The host TSC rate in kHz as KVM knows it (KVM_GET_TSC_KHZ on a throwaway vCPU), Linux
/// only: the kernel's calibration, better than any the VMM could make in a few ms.
pub fn hv_linux_host_tsc_khz() -> Option<u32> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    vcpu.get_tsc_khz().ok().filter(|&khz| khz > 0)
}
