//! MSRs: every guest RDMSR/WRMSR exits, except the "native" ones.
//!
//! Under HVF the VMM's MSR bitmap makes every MSR access exit except those it enabled
//! with `hv_vcpu_enable_native_msr`. On KVM: KVM_CAP_X86_USER_SPACE_MSR (reasons FILTER,
//! UNKNOWN, INVAL) sends accesses to userspace, and KVM_X86_SET_MSR_FILTER with default
//! deny does so for every MSR except the allowed ranges, which KVM then handles itself.
//! The filter is VM-wide on KVM, so the allowed set is the union over all vCPUs
//! (documented difference; hvrun enables the same MSRs on every vCPU). The x2APIC MSRs
//! (0x800-0x8ff) cannot be filtered; without an in-kernel LAPIC they arrive with reason
//! INVAL, which exits as well.
use super::errors::*;
use super::vm::{lock, Vm};
use crate::error::*;
use kvm_bindings::{kvm_enable_cap, kvm_msr_entry, Msrs, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_INVAL, KVM_MSR_EXIT_REASON_UNKNOWN,
    KVM_MSR_FILTER_MAX_RANGES};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd};
use std::collections::{BTreeMap, BTreeSet};

/// MSRs per filter range: a 1024-bit bitmap (KVM allows up to 1536 bytes).
const RANGE_SPAN: u32 = 1024;

/// The native MSRs of every vCPU, and the union installed in KVM.
#[derive(Default)]
pub struct MsrFilter {
    per_vcpu: BTreeMap<u32, BTreeSet<u32>>,
}

/// A filter range: first MSR and a bitmap of allowed MSRs from there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub base: u32,
    pub bitmap: Vec<u8>,
}

/// Groups sorted MSR numbers into ranges of at most RANGE_SPAN MSRs.
pub fn ranges_for(msrs: &BTreeSet<u32>) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    for &msr in msrs {
        let fits = out.last().is_some_and(|r| msr - r.base < RANGE_SPAN);
        if !fits {
            out.push(Range { base: msr, bitmap: vec![0; (RANGE_SPAN / 8) as usize] });
        }
        if let Some(r) = out.last_mut() {
            let bit = (msr - r.base) as usize;
            r.bitmap[bit / 8] |= 1 << (bit % 8);
        }
    }
    out
}

impl MsrFilter {
    fn union(&self) -> BTreeSet<u32> {
        self.per_vcpu.values().flatten().copied().collect()
    }

    pub fn set(&mut self, vcpu: u32, msr: u32, enable: bool) {
        let set = self.per_vcpu.entry(vcpu).or_default();
        if enable { set.insert(msr); } else { set.remove(&msr); }
    }

    pub fn forget_vcpu(&mut self, vcpu: u32) {
        self.per_vcpu.remove(&vcpu);
    }
}

/// Installs the filter: default deny, allow the native MSRs.
pub fn install(vm: &Vm, filter: &MsrFilter) -> Result<(), hv_return_t> {
    let mut ranges = ranges_for(&filter.union());
    if ranges.len() > KVM_MSR_FILTER_MAX_RANGES as usize {
        log::error!("hvf-sys/linux: native MSRs need {} filter ranges, KVM allows {}", ranges.len(),
            KVM_MSR_FILTER_MAX_RANGES);
        return Err(HV_NO_RESOURCES);
    }
    if ranges.is_empty() {
        // KVM refuses a deny-everything filter without ranges; one range that allows
        // nothing has the same effect.
        ranges.push(Range { base: 0, bitmap: vec![0; 1] });
    }
    let kvm_ranges: Vec<MsrFilterRange<'_>> = ranges
        .iter()
        .map(|r| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: r.base,
            msr_count: r.bitmap.len() as u32 * 8,
            bitmap: &r.bitmap,
        })
        .collect();
    vm.fd
        .set_msr_filter(MsrFilterDefaultAction::DENY, &kvm_ranges)
        .map_err(|e| ioctl_failed("KVM_X86_SET_MSR_FILTER", &e))
}

/// At VM creation: MSR accesses go to userspace, and nothing is native yet.
pub fn enable_msr_exits(vm: &Vm) -> Result<(), hv_return_t> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [(KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL) as u64, 0, 0, 0],
        ..Default::default()
    };
    vm.fd.enable_cap(&cap).map_err(|e| ioctl_failed("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)", &e))?;
    install(vm, &MsrFilter::default())
}

/// hv_vcpu_enable_native_msr.
pub fn enable_native(vm: &Vm, vcpu: u32, msr: u32, enable: bool) -> hv_return_t {
    let mut filter = lock(&vm.msr_filter);
    filter.set(vcpu, msr, enable);
    match install(vm, &filter) {
        Ok(()) => HV_SUCCESS,
        Err(code) => {
            filter.set(vcpu, msr, !enable);
            code
        }
    }
}

/// Reads one MSR of a vCPU with KVM_GET_MSRS.
pub fn read(fd: &VcpuFd, msr: u32) -> Result<u64, hv_return_t> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index: msr, ..Default::default() }])
        .map_err(|_| HV_ERROR)?;
    match fd.get_msrs(&mut msrs) {
        Ok(1) => Ok(msrs.as_slice().first().map(|e| e.data).unwrap_or(0)),
        Ok(_) => {
            log::debug!("hvf-sys/linux: KVM_GET_MSRS: MSR {msr:#x} not supported");
            Err(HV_BAD_ARGUMENT)
        }
        Err(e) => Err(ioctl_failed(&format!("KVM_GET_MSRS({msr:#x})"), &e)),
    }
}

/// Writes one MSR of a vCPU with KVM_SET_MSRS.
pub fn write(fd: &VcpuFd, msr: u32, value: u64) -> Result<(), hv_return_t> {
    let msrs = Msrs::from_entries(&[kvm_msr_entry { index: msr, data: value, ..Default::default() }])
        .map_err(|_| HV_ERROR)?;
    match fd.set_msrs(&msrs) {
        Ok(1) => Ok(()),
        Ok(_) => {
            log::debug!("hvf-sys/linux: KVM_SET_MSRS: MSR {msr:#x} = {value:#x} refused");
            Err(HV_BAD_ARGUMENT)
        }
        Err(e) => Err(ioctl_failed(&format!("KVM_SET_MSRS({msr:#x})"), &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_msrs_group_into_ranges() {
        // hvrun's natives: SYSENTER_CS/ESP/EIP, TSC, STAR..SFMASK, FS/GS/KERNEL_GS, TSC_AUX.
        let msrs: BTreeSet<u32> = [0x174, 0x175, 0x176, 0x10, 0xc000_0081, 0xc000_0082, 0xc000_0083,
            0xc000_0084, 0xc000_0100, 0xc000_0101, 0xc000_0102, 0xc000_0103].into_iter().collect();
        let ranges = ranges_for(&msrs);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].base, 0x10);
        // 0x174 - 0x10 = 0x164: bit 356 -> byte 44, bit 4.
        assert_eq!(ranges[0].bitmap[0], 1);
        assert_eq!(ranges[0].bitmap[44] & (1 << 4), 1 << 4);
        assert_eq!(ranges[1].base, 0xc000_0081);
        assert!(ranges_for(&BTreeSet::new()).is_empty());
    }
}
