//! The framework's C functions (declared in `crate::functions`), implemented over KVM.
//! Each is a thin shell: argument checks, then the module that owns the concept.
//!
//! Functions without a meaning on KVM return HV_UNSUPPORTED, documented at each: extra
//! address spaces, port-I/O notifiers, shadow VMCS, managed MSRs, run deadlines.
#![allow(clippy::missing_safety_doc)]

use super::vcpu::with_vcpu;
use super::vm::{lock, with_vm};
use super::{caps, kick, msr, registers, run, vcpu, vm};
use crate::error::*;
use crate::types::*;
use crate::vmcs::*;
use std::ffi::c_void;

/// Writes an out-parameter, refusing null pointers.
unsafe fn put<T>(out: *mut T, value: T) -> hv_return_t {
    if out.is_null() {
        return HV_BAD_ARGUMENT;
    }
    // SAFETY: non-null; the caller passes a pointer valid for writes, as the C API says.
    unsafe { out.write(value) };
    HV_SUCCESS
}

fn code(result: Result<(), hv_return_t>) -> hv_return_t {
    result.err().unwrap_or(HV_SUCCESS)
}

// --- the VM -------------------------------------------------------------------------

/// VCPUMAX from KVM_CAP_MAX_VCPUS; ADDRSPACEMAX is 1 (only the default space).
pub unsafe extern "C" fn hv_capability(capability: hv_capability_t, value: *mut u64) -> hv_return_t {
    match capability {
        HV_CAP_VCPUMAX => {
            let max = match vm::current() {
                Some(vm) => vm.kvm.get_max_vcpus(),
                None => match kvm_ioctls::Kvm::new() {
                    Ok(kvm) => kvm.get_max_vcpus(),
                    Err(e) => return super::errors::ioctl_failed("opening /dev/kvm", &e),
                },
            };
            unsafe { put(value, max as u64) }
        }
        HV_CAP_ADDRSPACEMAX => unsafe { put(value, 1) },
        _ => HV_BAD_ARGUMENT,
    }
}

pub unsafe extern "C" fn hv_vm_create(flags: hv_vm_options_t) -> hv_return_t {
    if flags != HV_VM_DEFAULT {
        log::debug!("hvf-sys/linux: hv_vm_create: unsupported options {flags:#x}");
        return HV_UNSUPPORTED;
    }
    vm::create()
}

pub unsafe extern "C" fn hv_vm_destroy() -> hv_return_t {
    vm::destroy()
}

/// Only the default address space exists on KVM.
pub unsafe extern "C" fn hv_vm_space_create(_asid: *mut hv_vm_space_t) -> hv_return_t {
    HV_UNSUPPORTED
}

pub unsafe extern "C" fn hv_vm_space_destroy(_asid: hv_vm_space_t) -> hv_return_t {
    HV_UNSUPPORTED
}

pub unsafe extern "C" fn hv_vm_map(uva: hv_uvaddr_t, gpa: hv_gpaddr_t, size: usize, flags: hv_memory_flags_t) -> hv_return_t {
    with_vm("hv_vm_map", |vm| code(lock(&vm.memory).map(&vm.fd, uva as u64, gpa, size as u64, flags)))
}

pub unsafe extern "C" fn hv_vm_unmap(gpa: hv_gpaddr_t, size: usize) -> hv_return_t {
    with_vm("hv_vm_unmap", |vm| code(lock(&vm.memory).unmap(&vm.fd, gpa, size as u64)))
}

pub unsafe extern "C" fn hv_vm_protect(gpa: hv_gpaddr_t, size: usize, flags: hv_memory_flags_t) -> hv_return_t {
    with_vm("hv_vm_protect", |vm| code(lock(&vm.memory).protect(&vm.fd, gpa, size as u64, flags)))
}

pub unsafe extern "C" fn hv_vm_map_space(asid: hv_vm_space_t, uva: hv_uvaddr_t, gpa: hv_gpaddr_t, size: usize,
    flags: hv_memory_flags_t) -> hv_return_t {
    if asid != HV_VM_SPACE_DEFAULT {
        return HV_UNSUPPORTED;
    }
    unsafe { hv_vm_map(uva, gpa, size, flags) }
}

pub unsafe extern "C" fn hv_vm_unmap_space(asid: hv_vm_space_t, gpa: hv_gpaddr_t, size: usize) -> hv_return_t {
    if asid != HV_VM_SPACE_DEFAULT {
        return HV_UNSUPPORTED;
    }
    unsafe { hv_vm_unmap(gpa, size) }
}

pub unsafe extern "C" fn hv_vm_protect_space(asid: hv_vm_space_t, gpa: hv_gpaddr_t, size: usize,
    flags: hv_memory_flags_t) -> hv_return_t {
    if asid != HV_VM_SPACE_DEFAULT {
        return HV_UNSUPPORTED;
    }
    unsafe { hv_vm_protect(gpa, size, flags) }
}

/// Setting every vCPU's TSC from one thread would need the other threads' vCPUs;
/// unreliable on HVF too (QEMU dropped it). Use the TSC offset VMCS field instead.
pub unsafe extern "C" fn hv_vm_sync_tsc(_tsc: u64) -> hv_return_t {
    HV_UNSUPPORTED
}

/// No Mach ports on Linux.
pub unsafe extern "C" fn hv_vm_add_pio_notifier(_addr: u16, _size: usize, _value: u32, _port: mach_port_t,
    _flags: hv_ion_flags_t) -> hv_return_t {
    HV_UNSUPPORTED
}

pub unsafe extern "C" fn hv_vm_remove_pio_notifier(_addr: u16, _size: usize, _value: u32, _port: mach_port_t,
    _flags: hv_ion_flags_t) -> hv_return_t {
    HV_UNSUPPORTED
}

// --- vCPUs --------------------------------------------------------------------------

pub unsafe extern "C" fn hv_vcpu_create(out: *mut hv_vcpuid_t, flags: hv_vcpu_options_t) -> hv_return_t {
    with_vm("hv_vcpu_create", |vm| vcpu::create(vm, out, flags))
}

pub unsafe extern "C" fn hv_vcpu_destroy(id: hv_vcpuid_t) -> hv_return_t {
    vcpu::destroy(id)
}

pub unsafe extern "C" fn hv_vcpu_set_space(id: hv_vcpuid_t, asid: hv_vm_space_t) -> hv_return_t {
    with_vcpu(id, |_, _, _| if asid == HV_VM_SPACE_DEFAULT { HV_SUCCESS } else { HV_UNSUPPORTED })
}

pub unsafe extern "C" fn hv_vcpu_read_register(id: hv_vcpuid_t, reg: hv_x86_reg_t, value: *mut u64) -> hv_return_t {
    if value.is_null() {
        return HV_BAD_ARGUMENT;
    }
    with_vcpu(id, |_, _, st| match registers::read(st, reg) {
        Ok(v) => unsafe { put(value, v) },
        Err(code) => code,
    })
}

pub unsafe extern "C" fn hv_vcpu_write_register(id: hv_vcpuid_t, reg: hv_x86_reg_t, value: u64) -> hv_return_t {
    with_vcpu(id, |_, _, st| code(registers::write(st, reg, value)))
}

/// The XSAVE area KVM_GET/SET_XSAVE exchanges (struct kvm_xsave: 4096 bytes).
const XSAVE_SIZE: usize = std::mem::size_of::<kvm_bindings::kvm_xsave>();

pub unsafe extern "C" fn hv_vcpu_read_fpstate(id: hv_vcpuid_t, buffer: *mut c_void, size: usize) -> hv_return_t {
    if buffer.is_null() || size < XSAVE_SIZE {
        return HV_BAD_ARGUMENT;
    }
    with_vcpu(id, |_, _, st| match st.fd.get_xsave() {
        Ok(xsave) => {
            // SAFETY: buffer holds at least XSAVE_SIZE bytes (checked above).
            unsafe { std::ptr::copy_nonoverlapping(xsave.region.as_ptr() as *const u8, buffer as *mut u8, XSAVE_SIZE) };
            HV_SUCCESS
        }
        Err(e) => super::errors::ioctl_failed("KVM_GET_XSAVE", &e),
    })
}

pub unsafe extern "C" fn hv_vcpu_write_fpstate(id: hv_vcpuid_t, buffer: *mut c_void, size: usize) -> hv_return_t {
    if buffer.is_null() || size < XSAVE_SIZE {
        return HV_BAD_ARGUMENT;
    }
    with_vcpu(id, |_, _, st| {
        let mut xsave = kvm_bindings::kvm_xsave::default();
        // SAFETY: buffer holds at least XSAVE_SIZE bytes (checked above).
        unsafe { std::ptr::copy_nonoverlapping(buffer as *const u8, xsave.region.as_mut_ptr() as *mut u8, XSAVE_SIZE) };
        // SAFETY: kvm_xsave is exactly the 4096-byte legacy area KVM_SET_XSAVE reads.
        match unsafe { st.fd.set_xsave(&xsave) } {
            Ok(()) => HV_SUCCESS,
            Err(e) => super::errors::ioctl_failed("KVM_SET_XSAVE", &e),
        }
    })
}

/// The allowed set is VM-wide on KVM (union over vCPUs), see `msr.rs`.
pub unsafe extern "C" fn hv_vcpu_enable_native_msr(id: hv_vcpuid_t, msr_index: u32, enable: bool) -> hv_return_t {
    with_vcpu(id, |vm, vcpu, _| msr::enable_native(vm, vcpu.id, msr_index, enable))
}

/// Managed MSRs (11.0+) have no KVM counterpart.
pub unsafe extern "C" fn hv_vcpu_enable_managed_msr(_id: hv_vcpuid_t, _msr: u32, _enable: bool) -> hv_return_t {
    HV_UNSUPPORTED
}

pub unsafe extern "C" fn hv_vcpu_set_msr_access(_id: hv_vcpuid_t, _msr: u32, _flags: hv_msr_flags_t) -> hv_return_t {
    HV_UNSUPPORTED
}

/// IA32_EFER (0xC0000080) is the VMCS field, as on VT-x; others via KVM_GET_MSRS.
const MSR_IA32_EFER: u32 = 0xc000_0080;

pub unsafe extern "C" fn hv_vcpu_read_msr(id: hv_vcpuid_t, msr_index: u32, value: *mut u64) -> hv_return_t {
    if value.is_null() {
        return HV_BAD_ARGUMENT;
    }
    with_vcpu(id, |_, _, st| {
        let result = if msr_index == MSR_IA32_EFER { st.read_field(VMCS_GUEST_IA32_EFER) } else { msr::read(&st.fd, msr_index) };
        match result {
            Ok(v) => unsafe { put(value, v) },
            Err(code) => code,
        }
    })
}

pub unsafe extern "C" fn hv_vcpu_write_msr(id: hv_vcpuid_t, msr_index: u32, value: u64) -> hv_return_t {
    with_vcpu(id, |_, _, st| {
        code(if msr_index == MSR_IA32_EFER { st.write_field(VMCS_GUEST_IA32_EFER, value) } else { msr::write(&st.fd, msr_index, value) })
    })
}

/// Nothing is cached outside KVM's shared sync-regs page: nothing to flush.
pub unsafe extern "C" fn hv_vcpu_flush(id: hv_vcpuid_t) -> hv_return_t {
    with_vcpu(id, |_, _, _| HV_SUCCESS)
}

/// A no-op: its callers are MOV-to-CR/INVLPG exit handlers, which never run on KVM
/// (KVM handles those instructions and their TLB maintenance itself).
pub unsafe extern "C" fn hv_vcpu_invalidate_tlb(id: hv_vcpuid_t) -> hv_return_t {
    with_vcpu(id, |_, _, _| HV_SUCCESS)
}

pub unsafe extern "C" fn hv_vcpu_run(id: hv_vcpuid_t) -> hv_return_t {
    with_vcpu(id, |vm, vcpu, st| run::run(vm, vcpu, st, None))
}

/// Returns on every exit, like hv_vcpu_run (HVF returns only on exits it did not handle
/// itself; the layer handles none, so the sets agree). A deadline (absolute time, see
/// `crate::absolute_time`) ends the run with a VMX-preemption-timer exit, as HVF's
/// does; the VMM need not set the preemption-timer control for it.
pub unsafe extern "C" fn hv_vcpu_run_until(id: hv_vcpuid_t, deadline: u64) -> hv_return_t {
    let deadline = (deadline != HV_DEADLINE_FOREVER).then_some(deadline);
    with_vcpu(id, |vm, vcpu, st| run::run(vm, vcpu, st, deadline))
}

/// Any thread. Unknown ids are refused before any vCPU is kicked.
pub unsafe extern "C" fn hv_vcpu_interrupt(vcpus: *mut hv_vcpuid_t, vcpu_count: u32) -> hv_return_t {
    if vcpus.is_null() && vcpu_count > 0 {
        return HV_BAD_ARGUMENT;
    }
    let Some(vm) = vm::current() else { return HV_BAD_ARGUMENT };
    // SAFETY: the caller passes an array of vcpu_count ids.
    let ids = if vcpu_count == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(vcpus, vcpu_count as usize) } };
    let mut targets = Vec::with_capacity(ids.len());
    for &id in ids {
        match vm.vcpu(id) {
            Some(v) => targets.push(v),
            None => return HV_BAD_ARGUMENT,
        }
    }
    for v in &targets {
        kick::kick(v);
    }
    HV_SUCCESS
}

/// Time spent inside KVM_RUN, in nanoseconds.
pub unsafe extern "C" fn hv_vcpu_get_exec_time(id: hv_vcpuid_t, time: *mut u64) -> hv_return_t {
    if time.is_null() {
        return HV_BAD_ARGUMENT;
    }
    with_vcpu(id, |_, _, st| unsafe { put(time, st.exec_ns) })
}

/// The host TSC.
pub unsafe extern "C" fn hv_tsc_clock() -> u64 {
    // SAFETY: RDTSC is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Guest TSC = hv_tsc_clock() + offset: KVM's per-vCPU TSC offset attribute.
pub unsafe extern "C" fn hv_vcpu_set_tsc_relative(id: hv_vcpuid_t, offset: i64) -> hv_return_t {
    with_vcpu(id, |_, _, st| code(st.set_tsc_offset(offset as u64)))
}

// --- the VMCS -----------------------------------------------------------------------

pub unsafe extern "C" fn hv_vmx_vcpu_read_vmcs(id: hv_vcpuid_t, field: u32, value: *mut u64) -> hv_return_t {
    if value.is_null() {
        return HV_BAD_ARGUMENT;
    }
    with_vcpu(id, |_, _, st| match st.read_field(field) {
        Ok(v) => unsafe { put(value, v) },
        Err(code) => code,
    })
}

pub unsafe extern "C" fn hv_vmx_vcpu_write_vmcs(id: hv_vcpuid_t, field: u32, value: u64) -> hv_return_t {
    with_vcpu(id, |_, _, st| code(st.write_field(field, value)))
}

pub unsafe extern "C" fn hv_vmx_read_capability(field: hv_vmx_capability_t, value: *mut u64) -> hv_return_t {
    match caps::capability(field) {
        Some(v) => unsafe { put(value, v) },
        None => HV_UNSUPPORTED,
    }
}

/// Stored only: without the virtual-APIC controls (not offered) the address has no
/// effect on VT-x either.
pub unsafe extern "C" fn hv_vmx_vcpu_set_apic_address(id: hv_vcpuid_t, gpa: hv_gpaddr_t) -> hv_return_t {
    with_vcpu(id, |_, _, st| {
        st.set_field(VMCS_CTRL_APIC_ACCESS, gpa);
        HV_SUCCESS
    })
}

/// VMCS shadowing is not offered (PROCBASED2 bit 14 is 0).
pub unsafe extern "C" fn hv_vmx_vcpu_read_shadow_vmcs(_id: hv_vcpuid_t, _field: u32, _value: *mut u64) -> hv_return_t {
    HV_UNSUPPORTED
}

pub unsafe extern "C" fn hv_vmx_vcpu_write_shadow_vmcs(_id: hv_vcpuid_t, _field: u32, _value: u64) -> hv_return_t {
    HV_UNSUPPORTED
}

pub unsafe extern "C" fn hv_vmx_vcpu_set_shadow_access(_id: hv_vcpuid_t, _field: u32, _flags: hv_shadow_flags_t) -> hv_return_t {
    HV_UNSUPPORTED
}

/// Allowed-0/allowed-1 bits of the control fields and CR0/CR4 from the capability table;
/// other fields may be written freely. A control write outside its masks is refused
/// (`vmcs_store.rs`).
pub unsafe extern "C" fn hv_vmx_vcpu_get_cap_write_vmcs(id: hv_vcpuid_t, field: u32, allowed_0: *mut u64,
    allowed_1: *mut u64) -> hv_return_t {
    if allowed_0.is_null() || allowed_1.is_null() {
        return HV_BAD_ARGUMENT;
    }
    with_vcpu(id, |_, _, _| {
        let (zero, one) = match field {
            VMCS_GUEST_CR0 => (caps::CR0_FIXED0, caps::CR0_FIXED1),
            VMCS_GUEST_CR4 => (caps::CR4_FIXED0, caps::CR4_FIXED1),
            _ => match caps::control_write_masks(field) {
                Some(masks) => masks,
                None if vmcs_field_name(field).is_some() => (0, u64::MAX),
                None => return HV_BAD_ARGUMENT,
            },
        };
        unsafe {
            put(allowed_0, zero);
            put(allowed_1, one)
        }
    })
}

