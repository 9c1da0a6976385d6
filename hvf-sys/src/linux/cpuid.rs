//! CPUID: KVM never exits on CPUID (its table is set with KVM_SET_CPUID2), so the VMM's
//! CPUID exit handler cannot run on Linux. Instead the VMM hands the same function it
//! calls from that handler to `hv_linux_vcpu_set_cpuid`, which asks it for every leaf
//! and subleaf KVM knows about and installs the answers: the guest sees the VMM's CPUID
//! on both hosts.
use super::errors::*;
use super::vm::Vm;
use crate::error::*;
use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::VcpuFd;

/// The hypervisor leaves (SDM does not define them; the 0x40000000 convention).
const HYPERVISOR_BASE: u32 = 0x4000_0000;
/// At most this many hypervisor leaves are asked for.
const HYPERVISOR_MAX_LEAVES: u32 = 0x100;

fn supported(vm: &Vm) -> Result<CpuId, hv_return_t> {
    vm.kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| ioctl_failed("KVM_GET_SUPPORTED_CPUID", &e))
}

/// The default table of a new vCPU: what KVM supports.
pub fn set_supported(vm: &Vm, fd: &VcpuFd) -> Result<(), hv_return_t> {
    let cpuid = supported(vm)?;
    fd.set_cpuid2(&cpuid).map_err(|e| ioctl_failed("KVM_SET_CPUID2", &e))
}

/// The table `policy` describes, for the leaves KVM reports plus the hypervisor leaves
/// (0x40000000 and up to the maximum its EAX names).
pub fn build(kvm_entries: &[kvm_cpuid_entry2], policy: &dyn Fn(u32, u32) -> [u32; 4]) -> Vec<kvm_cpuid_entry2> {
    let mut out: Vec<kvm_cpuid_entry2> = kvm_entries
        .iter()
        .filter(|e| e.function & 0xffff_ff00 != HYPERVISOR_BASE)
        .map(|e| {
            let [eax, ebx, ecx, edx] = policy(e.function, e.index);
            kvm_cpuid_entry2 { eax, ebx, ecx, edx, ..*e }
        })
        .collect();
    let [max, ..] = policy(HYPERVISOR_BASE, 0);
    if max >= HYPERVISOR_BASE {
        let last = max.min(HYPERVISOR_BASE + HYPERVISOR_MAX_LEAVES - 1);
        for leaf in HYPERVISOR_BASE..=last {
            let [eax, ebx, ecx, edx] = policy(leaf, 0);
            out.push(kvm_cpuid_entry2 { function: leaf, index: 0, flags: 0, eax, ebx, ecx, edx, ..Default::default() });
        }
    }
    out
}

/// hv_linux_vcpu_set_cpuid. KVM accepts a new table only before the vCPU first runs
/// (or an identical one afterwards): call it right after hv_vcpu_create.
pub fn set(vm: &Vm, fd: &VcpuFd, policy: &dyn Fn(u32, u32) -> [u32; 4]) -> hv_return_t {
    let kvm = match supported(vm) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let entries = build(kvm.as_slice(), policy);
    let cpuid = match CpuId::from_entries(&entries) {
        Ok(c) => c,
        Err(_) => {
            log::error!("hvf-sys/linux: {} CPUID entries are too many for KVM", entries.len());
            return HV_NO_RESOURCES;
        }
    };
    match fd.set_cpuid2(&cpuid) {
        Ok(()) => HV_SUCCESS,
        Err(e) => ioctl_failed("KVM_SET_CPUID2", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_answers_every_leaf_and_the_hypervisor_range() {
        let kvm = [
            kvm_cpuid_entry2 { function: 0, eax: 0xd, ..Default::default() },
            kvm_cpuid_entry2 { function: 7, index: 0, flags: 1, ..Default::default() },
            kvm_cpuid_entry2 { function: HYPERVISOR_BASE, eax: 0x4000_0001, ..Default::default() },
        ];
        let policy = |leaf: u32, sub: u32| match leaf {
            HYPERVISOR_BASE => [0x4000_0002, 1, 2, 3],
            _ => [leaf, sub, 0xaa, 0xbb],
        };
        let table = build(&kvm, &policy);
        assert_eq!(table.len(), 5);
        assert_eq!((table[1].function, table[1].eax, table[1].ecx, table[1].flags), (7, 7, 0xaa, 1));
        assert_eq!(table[2].function, HYPERVISOR_BASE);
        assert_eq!(table[2].eax, 0x4000_0002);
        assert_eq!(table[4].function, 0x4000_0002);
    }
}
