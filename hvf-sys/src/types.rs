//! Scalar types and enumerations of `hv_types.h`, `hv_arch_x86.h` and `hv_arch_vmx.h`.
use std::ffi::c_void;

pub type hv_vcpuid_t = u32;
pub type hv_gpaddr_t = u64;
pub type hv_uvaddr_t = *const c_void;
pub type hv_vm_options_t = u64;
pub type hv_vcpu_options_t = u64;
pub type hv_memory_flags_t = u64;
pub type hv_vm_space_t = u32;
/// A C enum in the SDK: 32 bits.
pub type hv_x86_reg_t = u32;
pub type hv_vmx_capability_t = u32;
pub type hv_capability_t = u64;

pub const HV_VM_DEFAULT: hv_vm_options_t = 0;
pub const HV_VCPU_DEFAULT: hv_vcpu_options_t = 0;
/// The address space every VM has (10.15+).
pub const HV_VM_SPACE_DEFAULT: hv_vm_space_t = 0;
/// `hv_vcpu_run_until` deadline meaning "no deadline" (11.0+).
pub const HV_DEADLINE_FOREVER: u64 = u64::MAX;

pub const HV_MEMORY_READ: hv_memory_flags_t = 1 << 0;
pub const HV_MEMORY_WRITE: hv_memory_flags_t = 1 << 1;
pub const HV_MEMORY_EXEC: hv_memory_flags_t = 1 << 2;

/// `hv_capability` queries (10.15+).
pub const HV_CAP_VCPUMAX: hv_capability_t = 0;
pub const HV_CAP_ADDRSPACEMAX: hv_capability_t = 1;

macro_rules! numbered {
    ($ty:ty; $($name:ident = $value:expr),* $(,)?) => {
        $(pub const $name: $ty = $value;)*
    };
}

// hv_x86_reg_t. Note the RAX, RCX, RDX, RBX order.
numbered! { hv_x86_reg_t;
    HV_X86_RIP = 0, HV_X86_RFLAGS = 1, HV_X86_RAX = 2, HV_X86_RCX = 3, HV_X86_RDX = 4,
    HV_X86_RBX = 5, HV_X86_RSI = 6, HV_X86_RDI = 7, HV_X86_RSP = 8, HV_X86_RBP = 9,
    HV_X86_R8 = 10, HV_X86_R9 = 11, HV_X86_R10 = 12, HV_X86_R11 = 13, HV_X86_R12 = 14,
    HV_X86_R13 = 15, HV_X86_R14 = 16, HV_X86_R15 = 17,
    HV_X86_CS = 18, HV_X86_SS = 19, HV_X86_DS = 20, HV_X86_ES = 21, HV_X86_FS = 22,
    HV_X86_GS = 23, HV_X86_IDT_BASE = 24, HV_X86_IDT_LIMIT = 25, HV_X86_GDT_BASE = 26,
    HV_X86_GDT_LIMIT = 27, HV_X86_LDTR = 28, HV_X86_LDT_BASE = 29, HV_X86_LDT_LIMIT = 30,
    HV_X86_LDT_AR = 31, HV_X86_TR = 32, HV_X86_TSS_BASE = 33, HV_X86_TSS_LIMIT = 34,
    HV_X86_TSS_AR = 35, HV_X86_CR0 = 36, HV_X86_CR1 = 37, HV_X86_CR2 = 38, HV_X86_CR3 = 39,
    HV_X86_CR4 = 40, HV_X86_DR0 = 41, HV_X86_DR1 = 42, HV_X86_DR2 = 43, HV_X86_DR3 = 44,
    HV_X86_DR4 = 45, HV_X86_DR5 = 46, HV_X86_DR6 = 47, HV_X86_DR7 = 48, HV_X86_TPR = 49,
    HV_X86_XCR0 = 50, HV_X86_REGISTERS_MAX = 51,
}

// hv_vmx_capability_t: VMX capability MSRs as HVF reports them (masked by HVF).
numbered! { hv_vmx_capability_t;
    HV_VMX_CAP_PINBASED = 0, HV_VMX_CAP_PROCBASED = 1, HV_VMX_CAP_PROCBASED2 = 2,
    HV_VMX_CAP_ENTRY = 3, HV_VMX_CAP_EXIT = 4,
    // 11.0+
    HV_VMX_CAP_BASIC = 5, HV_VMX_CAP_TRUE_PINBASED = 6, HV_VMX_CAP_TRUE_PROCBASED = 7,
    HV_VMX_CAP_TRUE_ENTRY = 8, HV_VMX_CAP_TRUE_EXIT = 9, HV_VMX_CAP_MISC = 10,
    HV_VMX_CAP_CR0_FIXED0 = 11, HV_VMX_CAP_CR0_FIXED1 = 12, HV_VMX_CAP_CR4_FIXED0 = 13,
    HV_VMX_CAP_CR4_FIXED1 = 14, HV_VMX_CAP_VMCS_ENUM = 15, HV_VMX_CAP_EPT_VPID_CAP = 16,
    HV_VMX_CAP_PREEMPTION_TIMER = 32,
}

/// A register's name, for traces and dumps.
pub fn hv_x86_reg_name(reg: hv_x86_reg_t) -> &'static str {
    const NAMES: [&str; HV_X86_REGISTERS_MAX as usize] = [
        "RIP", "RFLAGS", "RAX", "RCX", "RDX", "RBX", "RSI", "RDI", "RSP", "RBP", "R8", "R9",
        "R10", "R11", "R12", "R13", "R14", "R15", "CS", "SS", "DS", "ES", "FS", "GS",
        "IDT_BASE", "IDT_LIMIT", "GDT_BASE", "GDT_LIMIT", "LDTR", "LDT_BASE", "LDT_LIMIT",
        "LDT_AR", "TR", "TSS_BASE", "TSS_LIMIT", "TSS_AR", "CR0", "CR1", "CR2", "CR3", "CR4",
        "DR0", "DR1", "DR2", "DR3", "DR4", "DR5", "DR6", "DR7", "TPR", "XCR0",
    ];
    NAMES.get(reg as usize).copied().unwrap_or("?")
}

/// A Mach port name (`mach_port_t`), for the 11.0 port-I/O notifiers.
pub type mach_port_t = u32;
/// Options of a port-I/O notifier (11.0+).
pub type hv_ion_flags_t = u32;
/// Guest access to a managed MSR (11.0+).
pub type hv_msr_flags_t = u32;
pub const HV_MSR_NONE: hv_msr_flags_t = 0;
pub const HV_MSR_READ: hv_msr_flags_t = 1 << 0;
pub const HV_MSR_WRITE: hv_msr_flags_t = 1 << 1;
/// Access to a shadow-VMCS field (10.15+).
pub type hv_shadow_flags_t = u64;
pub const HV_SHADOW_VMCS_NONE: hv_shadow_flags_t = 0;
pub const HV_SHADOW_VMCS_READ: hv_shadow_flags_t = 1 << 0;
pub const HV_SHADOW_VMCS_WRITE: hv_shadow_flags_t = 1 << 1;
