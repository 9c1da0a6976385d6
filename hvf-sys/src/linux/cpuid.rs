//! CPUID: KVM never exits on CPUID (its table is set with KVM_SET_CPUID2), so the VMM's
//! CPUID exit handler cannot run on Linux. Instead the VMM hands the same function it
//! calls from that handler to `hv_linux_vcpu_set_cpuid`, which asks it for every leaf
//! and subleaf KVM knows about and installs the answers: the guest sees the VMM's CPUID
//! on both hosts.
use super::errors::*;
use super::vcpu::VcpuState;
use super::vm::Vm;
use crate::error::*;
use crate::vmx::ProcBased2;
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

/// An instruction VT-x runs only with a secondary control on (SDM 25.6.2, table 25-7;
/// #UD otherwise), and the CPUID bit that tells a guest it may use it.
struct Gated {
    instruction: &'static str,
    leaf: u32,
    subleaf: u32,
    /// 0 EAX, 1 EBX, 2 ECX, 3 EDX.
    register: usize,
    bit: u32,
    control: ProcBased2,
    control_name: &'static str,
}

const GATED: [Gated; 5] = [
    Gated { instruction: "XSAVES/XRSTORS (CPUID.(EAX=0DH,ECX=1):EAX[3])", leaf: 0xd, subleaf: 1, register: 0, bit: 3,
        control: ProcBased2::XSAVES, control_name: "enable XSAVES/XRSTORS" },
    Gated { instruction: "INVPCID (CPUID.(EAX=07H,ECX=0):EBX[10])", leaf: 7, subleaf: 0, register: 1, bit: 10,
        control: ProcBased2::INVPCID, control_name: "enable INVPCID" },
    Gated { instruction: "RDTSCP (CPUID.80000001H:EDX[27])", leaf: 0x8000_0001, subleaf: 0, register: 3, bit: 27,
        control: ProcBased2::RDTSCP, control_name: "enable RDTSCP" },
    Gated { instruction: "RDPID (CPUID.(EAX=07H,ECX=0):ECX[22])", leaf: 7, subleaf: 0, register: 2, bit: 22,
        control: ProcBased2::RDTSCP, control_name: "enable RDTSCP" },
    Gated { instruction: "TPAUSE/UMONITOR/UMWAIT (CPUID.(EAX=07H,ECX=0):ECX[5])", leaf: 7, subleaf: 0, register: 2, bit: 5,
        control: ProcBased2::USER_WAIT_PAUSE, control_name: "enable user wait and pause" },
];

fn registers(e: &kvm_cpuid_entry2) -> [u32; 4] {
    [e.eax, e.ebx, e.ecx, e.edx]
}

fn shows(entries: &[kvm_cpuid_entry2], g: &Gated) -> bool {
    entries.iter().any(|e| e.function == g.leaf && e.index == g.subleaf && registers(e)[g.register] & (1 << g.bit) != 0)
}

/// The secondary controls the instructions a table shows need (KVM, unlike VT-x, turns
/// them on by itself from the guest's CPUID: the layer checks instead).
pub fn controls_needed(entries: &[kvm_cpuid_entry2]) -> u32 {
    GATED.iter().filter(|g| shows(entries, g)).fold(0, |acc, g| acc | g.control.bits())
}

/// Refuses what a Mac would run with #UD: an instruction shown whose control is off.
pub fn check_gated(needed: u32, proc2: u32) -> Result<(), String> {
    match GATED.iter().find(|g| needed & g.control.bits() != 0 && proc2 & g.control.bits() == 0) {
        Some(g) => Err(format!("CPUID shows {} but the secondary control '{}' is off: on VT-x the guest gets #UD",
            g.instruction, g.control_name)),
        None => Ok(()),
    }
}

/// The default table of a new vCPU: what KVM supports, without the instructions whose
/// VT-x controls a fresh VMCS does not have.
pub fn set_supported(vm: &Vm, fd: &VcpuFd) -> Result<(), hv_return_t> {
    let mut entries = supported(vm)?.as_slice().to_vec();
    for e in entries.iter_mut() {
        for g in GATED.iter().filter(|g| g.leaf == e.function && g.subleaf == e.index) {
            let reg = match g.register {
                0 => &mut e.eax,
                1 => &mut e.ebx,
                2 => &mut e.ecx,
                _ => &mut e.edx,
            };
            *reg &= !(1 << g.bit);
        }
    }
    let cpuid = CpuId::from_entries(&entries).map_err(|_| HV_NO_RESOURCES)?;
    fd.set_cpuid2(&cpuid).map_err(|e| ioctl_failed("KVM_SET_CPUID2", &e))
}

/// Leaf 1 bits the VMM emulates itself, so KVM's support does not matter: x2APIC (ECX 21),
/// TSC-deadline (ECX 24), hypervisor present (ECX 31) and the APIC (EDX 9) live in hvrun.
const LEAF1_ECX_EMULATED: u32 = (1 << 21) | (1 << 24) | (1 << 31);
const LEAF1_EDX_EMULATED: u32 = 1 << 9;

/// Where KVM does not see the guest's XSETBV (`xsetbv_probe`) it reloads its own idea of
/// the guest's XCR0 (x87 only) at every entry, so an XSAVE-based context switch in the
/// guest would drop SSE and AVX registers. XSAVE is then not offered at all (the guest
/// falls back to FXSAVE, which always saves them), nor anything that needs XSAVE state:
/// Leaf 1 ECX: XSAVE, OSXSAVE, and FMA, AVX, F16C (VEX, SDM vol. 1, 14.3). Leaf 7 EBX:
/// AVX2 and the AVX-512 family; ECX: AVX512_VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ, VAES,
/// VPCLMULQDQ; EDX: AVX512_4VNNIW/4FMAPS/VP2INTERSECT/FP16 and AMX. Leaf 7.1 EAX:
/// AVX_VNNI, AVX512_BF16. Leaf 0x8000_0001 ECX: XOP, FMA4. Leaf 0xD: none.
const LEAF1_ECX_XSAVE: u32 = (1 << 26) | (1 << 27) | (1 << 12) | (1 << 28) | (1 << 29);
const LEAF7_EBX_AVX: u32 = (1 << 5) | (1 << 16) | (1 << 17) | (1 << 21) | (0x7 << 26) | (0x3 << 30);
const LEAF7_ECX_AVX: u32 = (1 << 1) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14);
const LEAF7_EDX_AVX: u32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 22) | (1 << 23) | (1 << 24) | (1 << 25);
const LEAF7_1_EAX_AVX: u32 = (1 << 4) | (1 << 5);
const LEAF81_ECX_AVX: u32 = (1 << 11) | (1 << 16);
const XSAVE_LEAF: u32 = 0xd;

/// Feature bits are limited to what KVM can run: the VMM's policy starts from the host's
/// CPUID, and on a Mac HVF runs every host feature, but KVM (here possibly nested, on an
/// emulated CPU) may not, and a feature shown but not virtualized faults in the guest.
/// Where KVM does not see the guest's XSETBV (`xsetbv_probe`), no XSAVE is offered.
fn limit_to_kvm(kvm: &kvm_cpuid_entry2, [eax, ebx, ecx, edx]: [u32; 4], xcr0_tracked: bool) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = match (kvm.function, kvm.index) {
        (1, _) => [eax, ebx, ecx & (kvm.ecx | LEAF1_ECX_EMULATED), edx & (kvm.edx | LEAF1_EDX_EMULATED)],
        (7, 0) => [eax, ebx & kvm.ebx, ecx & kvm.ecx, edx & kvm.edx],
        (0x8000_0001, _) => [eax, ebx, ecx & kvm.ecx, edx & kvm.edx],
        _ => [eax, ebx, ecx, edx],
    };
    if xcr0_tracked {
        return [eax, ebx, ecx, edx];
    }
    match (kvm.function, kvm.index) {
        (1, _) => [eax, ebx, ecx & !LEAF1_ECX_XSAVE, edx],
        (7, 0) => [eax, ebx & !LEAF7_EBX_AVX, ecx & !LEAF7_ECX_AVX, edx & !LEAF7_EDX_AVX],
        (7, 1) => [eax & !LEAF7_1_EAX_AVX, ebx, ecx, edx],
        (0x8000_0001, _) => [eax, ebx, ecx & !LEAF81_ECX_AVX, edx],
        _ => [eax, ebx, ecx, edx],
    }
}

/// The table `policy` describes, for the leaves KVM reports plus the hypervisor leaves
/// (0x40000000 and up to the maximum its EAX names).
pub fn build(kvm_entries: &[kvm_cpuid_entry2], policy: &dyn Fn(u32, u32) -> [u32; 4], xcr0_tracked: bool) -> Vec<kvm_cpuid_entry2> {
    let mut out: Vec<kvm_cpuid_entry2> = kvm_entries
        .iter()
        .filter(|e| e.function & 0xffff_ff00 != HYPERVISOR_BASE)
        // Without XSAVE the leaf goes: KVM would write its own size into a 0xD entry.
        .filter(|e| xcr0_tracked || e.function != XSAVE_LEAF)
        .map(|e| {
            let [eax, ebx, ecx, edx] = limit_to_kvm(e, policy(e.function, e.index), xcr0_tracked);
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
/// (or an identical one afterwards): call it right after hv_vcpu_create, once the
/// controls are written. A table that shows an instruction whose control is off is
/// refused (HV_BAD_ARGUMENT); the controls are checked again at every entry.
pub fn set(vm: &Vm, st: &mut VcpuState, policy: &dyn Fn(u32, u32) -> [u32; 4]) -> hv_return_t {
    let kvm = match supported(vm) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let entries = build(kvm.as_slice(), policy, super::xsetbv_probe::kvm_tracks_guest_xcr0());
    let needed = controls_needed(&entries);
    if let Err(message) = check_gated(needed, st.controls().effective_proc2()) {
        log::error!("hvf-sys/linux: CPUID table refused: {message}");
        return HV_BAD_ARGUMENT;
    }
    st.cpuid_controls_needed = needed;
    let fd = &st.fd;
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
        let table = build(&kvm, &policy, true);
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
        let table = build(&kvm, &policy, true);
        assert_eq!((table[0].ecx, table[0].edx), (0x8120_0001, 0x201));
        assert_eq!((table[1].ebx, table[1].ecx, table[1].edx), (0x8, 0, 0));
    }

    #[test]
    fn an_instruction_shown_without_its_control_is_refused() {
        let table = [
            kvm_cpuid_entry2 { function: 7, index: 0, ebx: 1 << 10, ecx: 1 << 22, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xd, index: 1, eax: 0b1111, ..Default::default() },
        ];
        let needed = controls_needed(&table);
        assert_eq!(needed, (ProcBased2::INVPCID | ProcBased2::RDTSCP | ProcBased2::XSAVES).bits());
        let err = check_gated(needed, (ProcBased2::INVPCID | ProcBased2::RDTSCP).bits()).unwrap_err();
        assert!(err.contains("XSAVES/XRSTORS") && err.contains("enable XSAVES/XRSTORS"), "{err}");
        assert!(check_gated(needed, needed).is_ok());
        assert!(check_gated(0, 0).is_ok(), "nothing shown, nothing needed");
    }

    #[test]
    fn without_xcr0_tracking_no_xsave_is_offered() {
        let kvm = [
            kvm_cpuid_entry2 { function: 1, ecx: u32::MAX, edx: u32::MAX, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xd, index: 0, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xd, index: 2, ..Default::default() },
        ];
        let policy = |leaf: u32, sub: u32| match (leaf, sub) {
            (1, _) => [0, 0, (1 << 28) | (1 << 26) | 1, 0],
            (0xd, 0) => [0x7, 832, 832, 0],
            (0xd, 2) => [256, 576, 0, 0],
            _ => [0; 4],
        };
        let table = build(&kvm, &policy, false);
        assert_eq!(table.len(), 1, "leaf 0xD gone");
        assert_eq!(table[0].ecx, 1, "SSE3 stays, XSAVE and AVX go");
        let tracked = build(&kvm, &policy, true);
        assert_eq!((tracked[0].ecx, tracked[1].eax, tracked[2].eax), ((1 << 28) | (1 << 26) | 1, 0x7, 256));
    }
}
