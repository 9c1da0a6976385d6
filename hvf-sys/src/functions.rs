//! Every function of the framework's Intel API, declared once.
//!
//! On macOS the list becomes an `extern "C"` block linking `Hypervisor.framework`. On
//! Linux each entry becomes a compile-time assertion that [`crate::linux`] defines a
//! function of exactly that signature, re-exported under the same name: a change to one
//! side that the other does not follow fails to compile.
#![allow(clippy::missing_safety_doc)]

use crate::types::*;
use crate::error::hv_return_t;
use std::ffi::c_void;

macro_rules! hv_functions {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;)*) => {
        #[cfg(target_os = "macos")]
        #[link(name = "Hypervisor", kind = "framework")]
        extern "C" {
            $($(#[$doc])* pub fn $name($($arg: $ty),*) -> $ret;)*
        }

        #[cfg(target_os = "linux")]
        pub use crate::linux::api::{$($name),*};

        #[cfg(target_os = "linux")]
        const _: () = {
            $(let _: unsafe extern "C" fn($($ty),*) -> $ret = crate::linux::api::$name;)*
        };
    };
}

hv_functions! {
    // hv.h: the VM (one per process).
    /// Which capability values the framework supports (10.15+).
    fn hv_capability(capability: hv_capability_t, value: *mut u64) -> hv_return_t;
    /// Creates the VM of the current process.
    fn hv_vm_create(flags: hv_vm_options_t) -> hv_return_t;
    /// Destroys the VM of the current process.
    fn hv_vm_destroy() -> hv_return_t;
    /// Creates an extra guest address space (10.15+).
    fn hv_vm_space_create(asid: *mut hv_vm_space_t) -> hv_return_t;
    /// Destroys an extra guest address space (10.15+).
    fn hv_vm_space_destroy(asid: hv_vm_space_t) -> hv_return_t;
    /// Maps page-aligned host memory at a guest-physical address.
    fn hv_vm_map(uva: hv_uvaddr_t, gpa: hv_gpaddr_t, size: usize, flags: hv_memory_flags_t) -> hv_return_t;
    /// Unmaps a guest-physical range.
    fn hv_vm_unmap(gpa: hv_gpaddr_t, size: usize) -> hv_return_t;
    /// Changes the permissions of a guest-physical range.
    fn hv_vm_protect(gpa: hv_gpaddr_t, size: usize, flags: hv_memory_flags_t) -> hv_return_t;
    /// `hv_vm_map` in a given address space (10.15+).
    fn hv_vm_map_space(asid: hv_vm_space_t, uva: hv_uvaddr_t, gpa: hv_gpaddr_t, size: usize, flags: hv_memory_flags_t) -> hv_return_t;
    /// `hv_vm_unmap` in a given address space (10.15+).
    fn hv_vm_unmap_space(asid: hv_vm_space_t, gpa: hv_gpaddr_t, size: usize) -> hv_return_t;
    /// `hv_vm_protect` in a given address space (10.15+).
    fn hv_vm_protect_space(asid: hv_vm_space_t, gpa: hv_gpaddr_t, size: usize, flags: hv_memory_flags_t) -> hv_return_t;
    /// Sets the TSC of every vCPU (unreliable with several vCPUs).
    fn hv_vm_sync_tsc(tsc: u64) -> hv_return_t;
    /// Sends matching port writes to a Mach port instead of exiting (11.0+).
    fn hv_vm_add_pio_notifier(addr: u16, size: usize, value: u32, mach_port: mach_port_t, flags: hv_ion_flags_t) -> hv_return_t;
    /// Removes a port-I/O notifier (11.0+).
    fn hv_vm_remove_pio_notifier(addr: u16, size: usize, value: u32, mach_port: mach_port_t, flags: hv_ion_flags_t) -> hv_return_t;

    // hv.h: vCPUs, each owned by the thread that created it.
    /// Creates a vCPU owned by the calling thread.
    fn hv_vcpu_create(vcpu: *mut hv_vcpuid_t, flags: hv_vcpu_options_t) -> hv_return_t;
    /// Destroys a vCPU (owning thread only).
    fn hv_vcpu_destroy(vcpu: hv_vcpuid_t) -> hv_return_t;
    /// Puts a vCPU in an address space (10.15+).
    fn hv_vcpu_set_space(vcpu: hv_vcpuid_t, asid: hv_vm_space_t) -> hv_return_t;
    /// Reads an architectural register.
    fn hv_vcpu_read_register(vcpu: hv_vcpuid_t, reg: hv_x86_reg_t, value: *mut u64) -> hv_return_t;
    /// Writes an architectural register.
    fn hv_vcpu_write_register(vcpu: hv_vcpuid_t, reg: hv_x86_reg_t, value: u64) -> hv_return_t;
    /// Reads the FPU/SIMD state in the host's XSAVE layout.
    fn hv_vcpu_read_fpstate(vcpu: hv_vcpuid_t, buffer: *mut c_void, size: usize) -> hv_return_t;
    /// Writes the FPU/SIMD state in the host's XSAVE layout.
    fn hv_vcpu_write_fpstate(vcpu: hv_vcpuid_t, buffer: *mut c_void, size: usize) -> hv_return_t;
    /// Lets the guest access an MSR without exiting.
    fn hv_vcpu_enable_native_msr(vcpu: hv_vcpuid_t, msr: u32, enable: bool) -> hv_return_t;
    /// Lets the framework manage an MSR (11.0+).
    fn hv_vcpu_enable_managed_msr(vcpu: hv_vcpuid_t, msr: u32, enable: bool) -> hv_return_t;
    /// Sets the guest's access to a managed MSR (11.0+).
    fn hv_vcpu_set_msr_access(vcpu: hv_vcpuid_t, msr: u32, flags: hv_msr_flags_t) -> hv_return_t;
    /// Reads an MSR of the vCPU.
    fn hv_vcpu_read_msr(vcpu: hv_vcpuid_t, msr: u32, value: *mut u64) -> hv_return_t;
    /// Writes an MSR of the vCPU.
    fn hv_vcpu_write_msr(vcpu: hv_vcpuid_t, msr: u32, value: u64) -> hv_return_t;
    /// Forces cached vCPU state out.
    fn hv_vcpu_flush(vcpu: hv_vcpuid_t) -> hv_return_t;
    /// Invalidates the vCPU's TLB.
    fn hv_vcpu_invalidate_tlb(vcpu: hv_vcpuid_t) -> hv_return_t;
    /// Runs the vCPU until the next VM exit (deprecated in 11.0).
    fn hv_vcpu_run(vcpu: hv_vcpuid_t) -> hv_return_t;
    /// Runs the vCPU until an exit the framework did not handle, or the deadline (10.15+).
    fn hv_vcpu_run_until(vcpu: hv_vcpuid_t, deadline: u64) -> hv_return_t;
    /// Forces an exit of running vCPUs; callable from any thread.
    fn hv_vcpu_interrupt(vcpus: *mut hv_vcpuid_t, vcpu_count: u32) -> hv_return_t;
    /// Cumulative guest execution time in nanoseconds.
    fn hv_vcpu_get_exec_time(vcpu: hv_vcpuid_t, time: *mut u64) -> hv_return_t;
    /// A clock ticking at the host TSC rate (11.0+).
    fn hv_tsc_clock() -> u64;
    /// Sets the guest TSC relative to `hv_tsc_clock` (11.0+).
    fn hv_vcpu_set_tsc_relative(vcpu: hv_vcpuid_t, offset: i64) -> hv_return_t;

    // hv_vmx.h: the VMCS.
    /// Reads a VMCS field.
    fn hv_vmx_vcpu_read_vmcs(vcpu: hv_vcpuid_t, field: u32, value: *mut u64) -> hv_return_t;
    /// Writes a VMCS field.
    fn hv_vmx_vcpu_write_vmcs(vcpu: hv_vcpuid_t, field: u32, value: u64) -> hv_return_t;
    /// Reads a VMX capability (allowed-0 bits low, allowed-1 bits high).
    fn hv_vmx_read_capability(field: hv_vmx_capability_t, value: *mut u64) -> hv_return_t;
    /// Sets the guest-physical address of the APIC-access page.
    fn hv_vmx_vcpu_set_apic_address(vcpu: hv_vcpuid_t, gpa: hv_gpaddr_t) -> hv_return_t;
    /// Reads a shadow-VMCS field (10.15+).
    fn hv_vmx_vcpu_read_shadow_vmcs(vcpu: hv_vcpuid_t, field: u32, value: *mut u64) -> hv_return_t;
    /// Writes a shadow-VMCS field (10.15+).
    fn hv_vmx_vcpu_write_shadow_vmcs(vcpu: hv_vcpuid_t, field: u32, value: u64) -> hv_return_t;
    /// Sets the guest's access to a shadow-VMCS field (10.15+).
    fn hv_vmx_vcpu_set_shadow_access(vcpu: hv_vcpuid_t, field: u32, flags: hv_shadow_flags_t) -> hv_return_t;
    /// Which bits of a VMCS field may be written 0 and 1 (11.0+).
    fn hv_vmx_vcpu_get_cap_write_vmcs(vcpu: hv_vcpuid_t, field: u32, allowed_0: *mut u64, allowed_1: *mut u64) -> hv_return_t;
}
