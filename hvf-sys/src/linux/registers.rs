//! `hv_vcpu_read_register` / `hv_vcpu_write_register`: the architectural registers of
//! `hv_x86_reg_t`, on the same state as the VMCS view (segment parts and control
//! registers go through the VMCS fields, so both APIs always agree).
use super::errors::*;
use super::vcpu::VcpuState;
use crate::error::*;
use crate::types::*;
use crate::vmcs::*;
use kvm_bindings::kvm_regs;
use kvm_ioctls::SyncReg;

/// The VMCS field holding a register, for those that have one.
fn vmcs_field_of(reg: hv_x86_reg_t) -> Option<u32> {
    Some(match reg {
        HV_X86_RIP => VMCS_GUEST_RIP,
        HV_X86_RFLAGS => VMCS_GUEST_RFLAGS,
        HV_X86_RSP => VMCS_GUEST_RSP,
        HV_X86_CS => VMCS_GUEST_CS,
        HV_X86_SS => VMCS_GUEST_SS,
        HV_X86_DS => VMCS_GUEST_DS,
        HV_X86_ES => VMCS_GUEST_ES,
        HV_X86_FS => VMCS_GUEST_FS,
        HV_X86_GS => VMCS_GUEST_GS,
        HV_X86_IDT_BASE => VMCS_GUEST_IDTR_BASE,
        HV_X86_IDT_LIMIT => VMCS_GUEST_IDTR_LIMIT,
        HV_X86_GDT_BASE => VMCS_GUEST_GDTR_BASE,
        HV_X86_GDT_LIMIT => VMCS_GUEST_GDTR_LIMIT,
        HV_X86_LDTR => VMCS_GUEST_LDTR,
        HV_X86_LDT_BASE => VMCS_GUEST_LDTR_BASE,
        HV_X86_LDT_LIMIT => VMCS_GUEST_LDTR_LIMIT,
        HV_X86_LDT_AR => VMCS_GUEST_LDTR_AR,
        HV_X86_TR => VMCS_GUEST_TR,
        HV_X86_TSS_BASE => VMCS_GUEST_TR_BASE,
        HV_X86_TSS_LIMIT => VMCS_GUEST_TR_LIMIT,
        HV_X86_TSS_AR => VMCS_GUEST_TR_AR,
        HV_X86_CR0 => VMCS_GUEST_CR0,
        HV_X86_CR3 => VMCS_GUEST_CR3,
        HV_X86_CR4 => VMCS_GUEST_CR4,
        HV_X86_DR7 => VMCS_GUEST_DR7,
        _ => return None,
    })
}

/// The general-purpose register of KVM's register file (RSP has a VMCS field).
fn gpr_mut(regs: &mut kvm_regs, reg: hv_x86_reg_t) -> Option<&mut u64> {
    Some(match reg {
        HV_X86_RAX => &mut regs.rax,
        HV_X86_RCX => &mut regs.rcx,
        HV_X86_RDX => &mut regs.rdx,
        HV_X86_RBX => &mut regs.rbx,
        HV_X86_RSI => &mut regs.rsi,
        HV_X86_RDI => &mut regs.rdi,
        HV_X86_RBP => &mut regs.rbp,
        HV_X86_R8 => &mut regs.r8,
        HV_X86_R9 => &mut regs.r9,
        HV_X86_R10 => &mut regs.r10,
        HV_X86_R11 => &mut regs.r11,
        HV_X86_R12 => &mut regs.r12,
        HV_X86_R13 => &mut regs.r13,
        HV_X86_R14 => &mut regs.r14,
        HV_X86_R15 => &mut regs.r15,
        _ => return None,
    })
}

/// DR0-3 and DR6 (DR4/DR5 alias DR6/DR7, SDM 18.2.2) in kvm_debugregs.
fn debug_index(reg: hv_x86_reg_t) -> Option<usize> {
    match reg {
        HV_X86_DR0..=HV_X86_DR3 => Some((reg - HV_X86_DR0) as usize),
        _ => None,
    }
}

pub fn read(st: &mut VcpuState, reg: hv_x86_reg_t) -> Result<u64, hv_return_t> {
    if let Some(field) = vmcs_field_of(reg) {
        return st.read_field(field);
    }
    let mut regs = st.fd.sync_regs().regs;
    if let Some(value) = gpr_mut(&mut regs, reg) {
        return Ok(*value);
    }
    let sregs = st.fd.sync_regs().sregs;
    match reg {
        HV_X86_CR1 => Ok(0),
        HV_X86_CR2 => Ok(sregs.cr2),
        HV_X86_TPR => Ok(sregs.cr8),
        HV_X86_DR4 | HV_X86_DR6 => st.fd.get_debug_regs().map(|d| d.dr6).map_err(|e| ioctl_failed("KVM_GET_DEBUGREGS", &e)),
        HV_X86_DR5 => st.read_field(VMCS_GUEST_DR7),
        HV_X86_XCR0 => {
            let xcrs = st.fd.get_xcrs().map_err(|e| ioctl_failed("KVM_GET_XCRS", &e))?;
            Ok(xcrs.xcrs.iter().take(xcrs.nr_xcrs as usize).find(|x| x.xcr == 0).map(|x| x.value).unwrap_or(1))
        }
        _ => match debug_index(reg) {
            Some(i) => st.fd.get_debug_regs().map(|d| d.db[i]).map_err(|e| ioctl_failed("KVM_GET_DEBUGREGS", &e)),
            None => {
                log::debug!("hvf-sys/linux: read of unknown register {reg}");
                Err(HV_BAD_ARGUMENT)
            }
        },
    }
}

pub fn write(st: &mut VcpuState, reg: hv_x86_reg_t, value: u64) -> Result<(), hv_return_t> {
    if let Some(field) = vmcs_field_of(reg) {
        return st.write_field(field, value);
    }
    {
        let regs = &mut st.fd.sync_regs_mut().regs;
        if let Some(slot) = gpr_mut(regs, reg) {
            *slot = value;
            st.fd.set_sync_dirty_reg(SyncReg::Register);
            return Ok(());
        }
    }
    match reg {
        HV_X86_CR2 | HV_X86_TPR => {
            let sregs = &mut st.fd.sync_regs_mut().sregs;
            if reg == HV_X86_CR2 { sregs.cr2 = value } else { sregs.cr8 = value }
            st.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            Ok(())
        }
        HV_X86_CR1 => Err(HV_BAD_ARGUMENT),
        HV_X86_DR5 => st.write_field(VMCS_GUEST_DR7, value),
        HV_X86_XCR0 => {
            let mut xcrs = st.fd.get_xcrs().map_err(|e| ioctl_failed("KVM_GET_XCRS", &e))?;
            xcrs.nr_xcrs = 1;
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = value;
            // HVF ignores an XCR0 it does not like and still returns success (orbstack's
            // HVF code, for MPX); so does the layer: the VMM must read it back.
            if let Err(e) = st.fd.set_xcrs(&xcrs) {
                log::debug!("hvf-sys/linux: XCR0 {value:#x} ignored ({e}), as HVF would");
            }
            Ok(())
        }
        HV_X86_DR0..=HV_X86_DR4 | HV_X86_DR6 => {
            let mut dr = st.fd.get_debug_regs().map_err(|e| ioctl_failed("KVM_GET_DEBUGREGS", &e))?;
            match debug_index(reg) {
                Some(i) => dr.db[i] = value,
                None => dr.dr6 = value,
            }
            st.fd.set_debug_regs(&dr).map_err(|e| ioctl_failed("KVM_SET_DEBUGREGS", &e))
        }
        _ => {
            log::debug!("hvf-sys/linux: write of unknown register {reg}");
            Err(HV_BAD_ARGUMENT)
        }
    }
}
