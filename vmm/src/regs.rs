//! How exit handlers see a vCPU: its registers and its VMCS.
//!
//! The run loop hands handlers the real vCPU ([`HvVcpu`], every access an `hv_*` call);
//! unit tests hand them a [`RecordedExit`]: the registers and VMCS fields captured at one
//! exit, so that each handler can be checked against exits that Linux's KVM never
//! produces (CPUID, MOV CR, XSETBV).
use hvf_sys::*;
use std::collections::BTreeMap;

pub trait VcpuRegs {
    fn read_reg(&self, reg: hv_x86_reg_t) -> Result<u64, HvError>;
    fn write_reg(&mut self, reg: hv_x86_reg_t, value: u64) -> Result<(), HvError>;
    fn read_vmcs(&self, field: u32) -> Result<u64, HvError>;
    fn write_vmcs(&mut self, field: u32, value: u64) -> Result<(), HvError>;
    /// The bits of `field` a write must set and may set (allowed-0, allowed-1).
    fn vmcs_write_masks(&self, field: u32) -> Result<(u64, u64), HvError>;
    /// Drops the guest's cached translations (after an emulated CR0/CR4 write: the
    /// hardware would have flushed them, the framework does not know it happened).
    fn invalidate_tlb(&mut self) -> Result<(), HvError>;
}

/// A vCPU of the framework, used from the thread that created it.
pub struct HvVcpu {
    pub id: hv_vcpuid_t,
}

impl VcpuRegs for HvVcpu {
    fn read_reg(&self, reg: hv_x86_reg_t) -> Result<u64, HvError> {
        let mut value = 0;
        // SAFETY: `value` outlives the call; the framework writes one u64.
        HvError::check(unsafe { hv_vcpu_read_register(self.id, reg, &mut value) })?;
        Ok(value)
    }

    fn write_reg(&mut self, reg: hv_x86_reg_t, value: u64) -> Result<(), HvError> {
        // SAFETY: plain values.
        HvError::check(unsafe { hv_vcpu_write_register(self.id, reg, value) })
    }

    fn read_vmcs(&self, field: u32) -> Result<u64, HvError> {
        let mut value = 0;
        // SAFETY: as above.
        HvError::check(unsafe { hv_vmx_vcpu_read_vmcs(self.id, field, &mut value) })?;
        Ok(value)
    }

    fn write_vmcs(&mut self, field: u32, value: u64) -> Result<(), HvError> {
        // SAFETY: plain values.
        HvError::check(unsafe { hv_vmx_vcpu_write_vmcs(self.id, field, value) })
    }

    fn vmcs_write_masks(&self, field: u32) -> Result<(u64, u64), HvError> {
        let (mut must, mut may) = (0, 0);
        // SAFETY: both outlive the call; the framework writes one u64 to each.
        HvError::check(unsafe { hv_vmx_vcpu_get_cap_write_vmcs(self.id, field, &mut must, &mut may) })?;
        Ok((must, may))
    }

    fn invalidate_tlb(&mut self) -> Result<(), HvError> {
        // SAFETY: plain value, on the owning thread.
        HvError::check(unsafe { hv_vcpu_invalidate_tlb(self.id) })
    }
}

/// Registers and VMCS fields as they were at one exit. Reading anything that was not
/// recorded fails with `HV_BAD_ARGUMENT`, so a test notices a handler that looks at more
/// than the exit provides; writes are kept for the test to check.
#[derive(Clone, Debug, Default)]
pub struct RecordedExit {
    pub regs: BTreeMap<hv_x86_reg_t, u64>,
    pub vmcs: BTreeMap<u32, u64>,
    /// Write masks per field; a field without one may be written freely.
    pub masks: BTreeMap<u32, (u64, u64)>,
    /// How many times the handler asked for a TLB invalidation.
    pub tlb_invalidations: u32,
}

impl RecordedExit {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn reg(mut self, reg: hv_x86_reg_t, value: u64) -> Self {
        self.regs.insert(reg, value);
        self
    }

    pub fn field(mut self, field: u32, value: u64) -> Self {
        self.vmcs.insert(field, value);
        self
    }
}

impl VcpuRegs for RecordedExit {
    fn read_reg(&self, reg: hv_x86_reg_t) -> Result<u64, HvError> {
        self.regs.get(&reg).copied().ok_or(HvError(HV_BAD_ARGUMENT))
    }

    fn write_reg(&mut self, reg: hv_x86_reg_t, value: u64) -> Result<(), HvError> {
        self.regs.insert(reg, value);
        Ok(())
    }

    fn read_vmcs(&self, field: u32) -> Result<u64, HvError> {
        self.vmcs.get(&field).copied().ok_or(HvError(HV_BAD_ARGUMENT))
    }

    fn write_vmcs(&mut self, field: u32, value: u64) -> Result<(), HvError> {
        self.vmcs.insert(field, value);
        Ok(())
    }

    fn vmcs_write_masks(&self, field: u32) -> Result<(u64, u64), HvError> {
        Ok(self.masks.get(&field).copied().unwrap_or((0, u64::MAX)))
    }

    fn invalidate_tlb(&mut self) -> Result<(), HvError> {
        self.tlb_invalidations += 1;
        Ok(())
    }
}
