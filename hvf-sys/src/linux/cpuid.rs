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

/// Leaf 1 bits the VMM emulates itself, so KVM's support does not matter: x2APIC (ECX 21),
/// TSC-deadline (ECX 24), hypervisor present (ECX 31) and the APIC (EDX 9) live in hvrun.
const LEAF1_ECX_EMULATED: u32 = (1 << 21) | (1 << 24) | (1 << 31);
const LEAF1_EDX_EMULATED: u32 = 1 << 9;

/// Feature bits are limited to what KVM can run: the VMM's policy starts from the host's
/// CPUID, and on a Mac HVF runs every host feature, but KVM (here possibly nested, on an
/// emulated CPU) may not, and a feature shown but not virtualized faults in the guest.
fn limit_to_kvm(kvm: &kvm_cpuid_entry2, [eax, ebx, ecx, edx]: [u32; 4]) -> [u32; 4] {
    match (kvm.function, kvm.index) {
        (1, _) => [eax, ebx, ecx & (kvm.ecx | LEAF1_ECX_EMULATED), edx & (kvm.edx | LEAF1_EDX_EMULATED)],
        (7, 0) => [eax, ebx & kvm.ebx, ecx & kvm.ecx, edx & kvm.edx],
        (0x8000_0001, _) => [eax, ebx, ecx & kvm.ecx, edx & kvm.edx],
        _ => [eax, ebx, ecx, edx],
    }
}

/// The table `policy` describes, for the leaves KVM reports plus the hypervisor leaves
/// (0x40000000 and up to the maximum its EAX names).
pub fn build(kvm_entries: &[kvm_cpuid_entry2], policy: &dyn Fn(u32, u32) -> [u32; 4]) -> Vec<kvm_cpuid_entry2> {
    let mut out: Vec<kvm_cpuid_entry2> = kvm_entries
        .iter()
        .filter(|e| e.function & 0xffff_ff00 != HYPERVISOR_BASE)
        .map(|e| {
            let [eax, ebx, ecx, edx] = limit_to_kvm(e, policy(e.function, e.index));
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
            kvm_cpuid_entry2 { function: 7, index: 0, flags: 1, ecx: 0xff, ..Default::default() },
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

    #[test]
    fn features_kvm_cannot_run_are_hidden_but_emulated_ones_stay() {
        let kvm = [
            kvm_cpuid_entry2 { function: 1, ecx: 0x1, edx: 0x1, ..Default::default() },
            kvm_cpuid_entry2 { function: 7, index: 0, ebx: 0x8, ..Default::default() },
        ];
        let policy = |leaf: u32, _| match leaf {
            1 => [0, 0, 0x8120_0003, 0x203],
            _ => [0, 0xff, 0xff, 0xff],
        };
        let table = build(&kvm, &policy);
        assert_eq!((table[0].ecx, table[0].edx), (0x8120_0001, 0x201));
        assert_eq!((table[1].ebx, table[1].ecx, table[1].edx), (0x8, 0, 0));
    }
}
