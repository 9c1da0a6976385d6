//! The processor the guest is shown (CPUID). Starts from the host's CPUID and hides what
//! hvrun does not emulate or a guest must not use under it.
use std::arch::x86_64::__cpuid_count;

/// Feature bits (SDM vol. 2, CPUID, tables 3-10 and 3-11).
mod bits {
    pub const ECX1_MONITOR: u32 = 1 << 3;
    pub const ECX1_VMX: u32 = 1 << 5;
    pub const ECX1_SMX: u32 = 1 << 6;
    pub const ECX1_EST: u32 = 1 << 7;
    pub const ECX1_TM2: u32 = 1 << 8;
    pub const ECX1_PDCM: u32 = 1 << 15;
    pub const ECX1_DCA: u32 = 1 << 18;
    pub const ECX1_X2APIC: u32 = 1 << 21;
    pub const ECX1_TSC_DEADLINE: u32 = 1 << 24;
    pub const ECX1_XSAVE: u32 = 1 << 26;
    pub const ECX1_OSXSAVE: u32 = 1 << 27;
    pub const ECX1_HYPERVISOR: u32 = 1 << 31;
    pub const EDX1_APIC: u32 = 1 << 9;
    pub const EDX1_ACPI: u32 = 1 << 22;
    pub const EDX1_HTT: u32 = 1 << 28;
    pub const EDX1_TM: u32 = 1 << 29;
    pub const EDX1_PBE: u32 = 1 << 31;
    /// Leaf 7.0 EBX: SGX 2, HLE 4, RTM 11, PQM 12, MPX 14, PQE 15, PT 25.
    pub const EBX7_HIDDEN: u32 = (1 << 2) | (1 << 4) | (1 << 11) | (1 << 12) | (1 << 14) | (1 << 15) | (1 << 25);
    /// Leaf 7.0 ECX: WAITPKG 5, PKU 3, OSPKE 4, SGX_LC 30.
    pub const ECX7_HIDDEN: u32 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 30);
    /// Leaf 7.0 EDX: hybrid 15, PCONFIG 18, arch LBR 19, the speculation-control MSRs
    /// (IBRS/STIBP 26-27, L1D_FLUSH 28, ARCH_CAPABILITIES 29, CORE_CAPABILITIES 30,
    /// SSBD 31) whose MSRs hvrun does not emulate.
    /// Also SRBDS_CTRL 9, RTM_ALWAYS_ABORT 11 and TSX_FORCE_ABORT 13, whose MSRs
    /// (MCU_OPT_CTRL, TSX_FORCE_ABORT) Linux would read without a fault handler.
    pub const EDX7_HIDDEN: u32 = (1 << 9) | (1 << 11) | (1 << 13) | (1 << 15) | (1 << 18) | (1 << 19) | (0x3f << 26);
    /// Leaf 0x8000_0008 EBX (AMD): IRPERF 1 and the speculation controls whose MSRs
    /// (SPEC_CTRL, PRED_CMD, VIRT_SPEC_CTRL) hvrun does not emulate: IBPB 12, IBRS 14,
    /// STIBP 15, their always-on/preferred/same-mode hints 16-19, SSBD 24, VIRT_SSBD 25,
    /// PSFD 28 (AMD APM vol. 3, E.4.7).
    pub const EBX88_HIDDEN: u32 = (1 << 1) | (1 << 12) | (0x3f << 14) | (1 << 24) | (1 << 25) | (1 << 28);
    /// Leaf 7.0 EBX: INVPCID, which raises #UD unless "enable INVPCID" is on (SDM 25.6.2).
    pub const EBX7_INVPCID: u32 = 1 << 10;
    /// IA32_TSC_ADJUST: emulated by hvrun (crate::msr, through the vCPU's TSC offset),
    /// so shown whatever the host has.
    pub const EBX7_TSC_ADJUST: u32 = 1 << 1;
    /// Leaf 7.0 ECX: RDPID, gated like RDTSCP by "enable RDTSCP".
    pub const ECX7_RDPID: u32 = 1 << 22;
    /// Leaf 0x8000_0001 ECX: SVM 2.
    pub const ECX81_SVM: u32 = 1 << 2;
    /// Invariant TSC (0x8000_0007 EDX): Linux then counts the TSC constant and, with
    /// several CPUs, synchronised, instead of "Marking TSC unstable due to TSCs
    /// unsynchronized" (arch/x86/kernel/tsc.c, `unsynchronized_tsc`).
    pub const EDX87_INVARIANT_TSC: u32 = 1 << 8;
    /// AMD: CmpLegacy (cores are reported in 0x8000_0008 ECX) and TopologyExtensions
    /// (leaf 0x8000_001E, whose host values would describe the host's packages).
    pub const ECX81_CMP_LEGACY: u32 = 1 << 1;
    pub const ECX81_TOPOEXT: u32 = 1 << 22;
    /// Leaf 0x8000_0001 EDX: RDTSCP 27.
    pub const EDX81_RDTSCP: u32 = 1 << 27;
    /// Leaf 0xD.1 EAX: XSAVEOPT 0, XSAVEC 1, XGETBV with ECX=1 2 are shown as the host
    /// has them; XSAVES 3 (gated by "enable XSAVES/XRSTORS", which hvrun leaves off) and
    /// XFD 4 (its MSRs are not emulated) are not.
    pub const EAXD1_SHOWN: u32 = 0b111;
    pub const EAXD1_XSAVEC: u32 = 1 << 1;
}

/// CR4.OSXSAVE (SDM vol. 3, 2.5): CPUID.1:ECX.OSXSAVE mirrors it.
const CR4_OSXSAVE: u64 = 1 << 18;

/// The legacy region (512 bytes) and the XSAVE header (64) that every XSAVE area starts
/// with (SDM vol. 1, 13.4).
const XSAVE_LEGACY_AND_HEADER: u32 = 576;

/// The XSAVE components (bits of XCR0) a guest may enable, when the host has them: x87,
/// SSE, AVX, and AVX-512's three. Not MPX (3-4: deprecated, xhyve hides it too), nor
/// PKRU (9: PKU is hidden), nor AMX (its permission system is not emulated).
const XCR0_OFFERED: u64 = 0xe7;

/// The guest state CPUID answers depend on (SDM vol. 2, CPUID): CR4.OSXSAVE shows in
/// leaf 1, and leaf 0xD's sizes follow the guest's XCR0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestView {
    pub cr4: u64,
    pub xcr0: u64,
}

impl GuestView {
    /// At reset: CR4 clear, XCR0 = x87 only.
    pub const RESET: GuestView = GuestView { cr4: 0, xcr0: 1 };
}

/// The leaves and values a guest sees.
#[derive(Clone, Debug)]
pub struct CpuidPolicy {
    /// vCPUs in the machine (topology leaves).
    pub vcpus: u32,
    /// Whether the machine has a local APIC (APIC, x2APIC and TSC-deadline bits).
    pub lapic: bool,
    /// Whether the guest is offered kvmclock (KVM's hypervisor leaves).
    pub kvmclock: bool,
    /// The guest TSC rate, for the timing leaf 0x4000_0010.
    pub tsc_hz: u64,
    /// MAXPHYADDR (leaf 0x8000_0008 EAX[7:0]), read once: the emulator needs it at every
    /// MMIO exit, and CPUID is not cheap on every host.
    pub phys_addr_bits: u8,
    /// Whether the VT-x controls let the guest run RDTSCP/RDPID and INVPCID: without them
    /// those instructions raise #UD, so CPUID must not show them (`with_controls`).
    pub rdtscp: bool,
    pub invpcid: bool,
}

/// The hypervisor leaves' vendor signature (0x4000_0000): "hvrunhvrunhv".
const HYPERVISOR_SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"hvru"),
    u32::from_le_bytes(*b"nhvr"),
    u32::from_le_bytes(*b"unhv"),
];

/// "KVMKVMKVM\0\0\0": what Linux looks for before using kvmclock.
const KVM_SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"KVMK"),
    u32::from_le_bytes(*b"VMKV"),
    u32::from_le_bytes(*b"M\0\0\0"),
];

impl CpuidPolicy {
    pub fn new(vcpus: u32, lapic: bool) -> Self {
        let phys_addr_bits = host_cpuid(0x8000_0008, 0)[0] as u8;
        CpuidPolicy { vcpus, lapic, kvmclock: false, tsc_hz: 0, phys_addr_bits, rdtscp: false, invpcid: false }
    }

    /// Bits of the APIC ID that number the cores (leaf 0xB's shift): enough for
    /// `vcpus` IDs.
    fn apic_id_bits(&self) -> u32 {
        self.vcpus.max(1).next_power_of_two().trailing_zeros()
    }

    /// How many vCPUs the guest is told it has.
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    /// Shows RDTSCP/RDPID and INVPCID only if the controls enable them.
    pub fn with_controls(self, controls: &crate::controls::Controls) -> Self {
        CpuidPolicy { rdtscp: controls.rdtscp(), invpcid: controls.invpcid(), ..self }
    }

    /// Offers kvmclock: the hypervisor leaves say "KVMKVMKVM" with only the clock
    /// features, and leaf 0x4000_0010 gives the TSC and APIC-timer rates in kHz.
    pub fn with_kvmclock(self, tsc_hz: u64) -> Self {
        CpuidPolicy { kvmclock: true, tsc_hz, ..self }
    }

    /// EAX, EBX, ECX, EDX of `leaf`.`subleaf` on vCPU `index`, whose state is `guest`.
    pub fn leaf(&self, index: u32, leaf: u32, subleaf: u32, guest: &GuestView) -> [u32; 4] {
        use bits::*;
        if (0x4000_0000..0x4000_0100).contains(&leaf) {
            return self.hypervisor_leaf(leaf);
        }
        if leaf == 0xd {
            return self.xsave_leaf(subleaf, guest.xcr0);
        }
        let [mut a, mut b, mut c, mut d] = host_cpuid(leaf, subleaf);
        match leaf {
            1 => {
                c &= !(ECX1_MONITOR | ECX1_VMX | ECX1_SMX | ECX1_EST | ECX1_TM2 | ECX1_PDCM | ECX1_DCA | ECX1_OSXSAVE);
                if self.lapic {
                    // hvrun's LAPIC provides both, whatever the host has.
                    c |= ECX1_X2APIC | ECX1_TSC_DEADLINE;
                    d |= EDX1_APIC;
                } else {
                    c &= !(ECX1_X2APIC | ECX1_TSC_DEADLINE);
                    d &= !EDX1_APIC;
                }
                c |= ECX1_HYPERVISOR;
                if c & ECX1_XSAVE != 0 && guest.cr4 & CR4_OSXSAVE != 0 {
                    c |= ECX1_OSXSAVE;
                }
                d &= !(EDX1_ACPI | EDX1_TM | EDX1_PBE);
                d |= EDX1_HTT;
                // EBX: initial APIC ID 31:24, logical processors 23:16, CLFLUSH size kept.
                b = (b & 0xffff) | (self.vcpus.min(255) << 16) | (index.min(255) << 24);
            }
            // Deterministic cache parameters: every cache private to its core (EAX 25:14 =
            // 0), `vcpus` cores per package (EAX 31:26, the APIC-ID space rounded up to a
            // power of two, as leaf 0xB's shift says), so both leaves agree.
            4 if a & 0x1f != 0 => a = (a & 0x3ff) | ((self.vcpus.max(1).next_power_of_two() - 1) << 26),
            4 => {}
            // Thermal/power management and the PMU are not emulated.
            5 | 6 | 0xa => [a, b, c, d] = [0; 4],
            7 if subleaf == 0 => {
                b &= !EBX7_HIDDEN;
                b |= EBX7_TSC_ADJUST;
                c &= !ECX7_HIDDEN;
                d &= !EDX7_HIDDEN;
                if !self.invpcid {
                    b &= !EBX7_INVPCID;
                }
                if !self.rdtscp {
                    c &= !ECX7_RDPID;
                }
            }
            // x2APIC topology: one thread per core, `vcpus` cores.
            0xb => {
                [a, b, c, d] = match subleaf {
                    0 => [0, 1, 0x100, index],
                    1 => [self.apic_id_bits(), self.vcpus, 0x201, index],
                    _ => [0, 0, subleaf, index],
                };
            }
            // AMD's core count: ECX 7:0 = cores - 1, 15:12 = APIC-ID bits for the core.
            0x8000_0008 => {
                b &= !EBX88_HIDDEN;
                c = (c & !0xf0ff) | (self.vcpus.max(1) - 1) | (self.apic_id_bits() << 12);
            }
            0x8000_001e => [a, b, c, d] = [0; 4],
            // Power management: nothing but the invariant TSC. The guest's TSC is the
            // host's plus one offset shared by every vCPU (crate::clock), ticking at the
            // constant rate leaf 0x4000_0010 gives, whatever the host's power states do.
            0x8000_0007 => [a, b, c, d] = [0, 0, 0, EDX87_INVARIANT_TSC],
            // SVM's own features: no SVM is shown.
            0x8000_000a => [a, b, c, d] = [0; 4],
            0x8000_0001 => {
                c &= !(ECX81_SVM | ECX81_TOPOEXT | ECX81_CMP_LEGACY);
                if self.vcpus > 1 {
                    c |= ECX81_CMP_LEGACY;
                }
                if !self.rdtscp {
                    d &= !EDX81_RDTSCP;
                }
            }
            _ => {}
        }
        [a, b, c, d]
    }

    /// The hypervisor leaves. With kvmclock they follow KVM's ABI (Linux's
    /// Documentation/virt/kvm/x86/cpuid.rst) and advertise nothing hvrun does not implement.
    fn hypervisor_leaf(&self, leaf: u32) -> [u32; 4] {
        use crate::kvmclock::{FEATURE_CLOCKSOURCE2, FEATURE_CLOCKSOURCE_STABLE};
        if !self.kvmclock {
            return match leaf {
                0x4000_0000 => [0x4000_0000, HYPERVISOR_SIGNATURE[0], HYPERVISOR_SIGNATURE[1], HYPERVISOR_SIGNATURE[2]],
                _ => [0; 4],
            };
        }
        match leaf {
            0x4000_0000 => [0x4000_0010, KVM_SIGNATURE[0], KVM_SIGNATURE[1], KVM_SIGNATURE[2]],
            0x4000_0001 => [FEATURE_CLOCKSOURCE2 | FEATURE_CLOCKSOURCE_STABLE, 0, 0, 0],
            // TSC and APIC-bus frequencies in kHz (the VMware-style timing leaf).
            0x4000_0010 => [(self.tsc_hz / 1000) as u32, (devices::lapic::APIC_BUS_HZ / 1000) as u32, 0, 0],
            _ => [0; 4],
        }
    }

    /// XCR0 bits a guest may enable: those offered that the host reports in leaf 0xD.
    pub fn xcr0_supported(&self) -> u64 {
        let [a, _, _, d] = host_cpuid(0xd, 0);
        (u64::from(d) << 32 | u64::from(a)) & XCR0_OFFERED
    }

    /// Leaf 0xD, computed for the components hvrun offers rather than passed through:
    /// the host's sizes follow hvrun's own XCR0, and its component list may hold ones the
    /// guest cannot enable (SDM vol. 1, 13.2). Sub-leaf 0: the components and the sizes
    /// of a standard-format area for the guest's XCR0 and for all of them; sub-leaf 1:
    /// the XSAVE variants and the compacted size; sub-leaf i: component i's size, offset
    /// and alignment, as the host has them, for offered components only.
    fn xsave_leaf(&self, subleaf: u32, xcr0: u64) -> [u32; 4] {
        let supported = self.xcr0_supported();
        match subleaf {
            0 => [supported as u32, xsave_size(xcr0 & supported, false), xsave_size(supported, false), (supported >> 32) as u32],
            1 => {
                let eax = host_cpuid(0xd, 1)[0] & bits::EAXD1_SHOWN;
                // No supervisor components (ECX/EDX: none, XSAVES is hidden).
                let compacted = if eax & bits::EAXD1_XSAVEC != 0 { xsave_size(xcr0 & supported, true) } else { 0 };
                [eax, compacted, 0, 0]
            }
            2..=63 if supported & (1 << subleaf) != 0 => host_cpuid(0xd, subleaf),
            _ => [0; 4],
        }
    }
}

/// The size of an XSAVE area holding the components in `mask` (SDM vol. 1, 13.4.3): the
/// standard format places each at its fixed offset; the compacted one packs them in
/// order, 64-byte aligned where the component asks (sub-leaf ECX bit 1).
fn xsave_size(mask: u64, compacted: bool) -> u32 {
    let mut size = XSAVE_LEGACY_AND_HEADER;
    for i in 2..64u32 {
        if mask & (1 << i) == 0 {
            continue;
        }
        let [len, offset, flags, _] = host_cpuid(0xd, i);
        size = if compacted {
            let start = if flags & 2 != 0 { size.next_multiple_of(64) } else { size };
            start + len
        } else {
            size.max(offset + len)
        };
    }
    size
}

fn host_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = __cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_leaves_agree_per_vcpu() {
        let policy = CpuidPolicy::new(3, true);
        let view = &GuestView::RESET;
        for index in 0..3 {
            assert_eq!(policy.leaf(index, 1, 0, view)[1] >> 24, index, "leaf 1 EBX[31:24]");
            assert_eq!(policy.leaf(index, 0xb, 0, view)[3], index, "leaf 0xB EDX, SMT level");
            assert_eq!(policy.leaf(index, 0xb, 1, view)[3], index, "leaf 0xB EDX, core level");
        }
        let [shift, count, level, _] = policy.leaf(0, 0xb, 1, view);
        assert_eq!((shift, count, level), (2, 3, 0x201), "3 cores need 2 bits of APIC ID");
        let [shift, count, ..] = policy.leaf(0, 0xb, 0, view);
        assert_eq!((shift, count), (0, 1), "one thread per core");
        let l1 = policy.leaf(0, 4, 0, view)[0];
        if l1 & 0x1f != 0 {
            assert_eq!(l1 >> 26, 3, "cores per package, rounded to the APIC-ID space");
            assert_eq!((l1 >> 14) & 0xfff, 0, "no cache shared between cores");
        }
        let ecx = policy.leaf(0, 0x8000_0008, 0, view)[2];
        assert_eq!((ecx & 0xff, (ecx >> 12) & 0xf), (2, 2), "AMD: 3 cores, 2 APIC-ID bits");
        assert_eq!(policy.leaf(0, 0x8000_0001, 0, view)[2] & (1 << 22), 0, "no TOPOEXT");
        assert_eq!(policy.leaf(0, 0x8000_001e, 0, view), [0; 4]);
        assert_eq!(policy.leaf(0, 0x8000_0007, 0, view), [0, 0, 0, 1 << 8], "invariant TSC, nothing else");
        assert_ne!(policy.leaf(0, 7, 0, view)[1] & bits::EBX7_TSC_ADJUST, 0, "TSC_ADJUST, emulated");
        let one = CpuidPolicy::new(1, true);
        assert_eq!(one.leaf(0, 0x8000_0001, 0, view)[2] & 2, 0, "no CmpLegacy with one core");
    }

    #[test]
    fn hides_vmx_and_shows_a_hypervisor() {
        let p = CpuidPolicy::new(2, false);
        let [_, b, c, d] = p.leaf(1, 1, 0, &GuestView::RESET);
        assert_eq!(c & bits::ECX1_VMX, 0);
        assert_eq!(c & bits::ECX1_MONITOR, 0);
        assert_ne!(c & bits::ECX1_HYPERVISOR, 0);
        assert_eq!(d & bits::EDX1_APIC, 0, "no LAPIC in this machine");
        assert_eq!(b >> 24, 1, "APIC ID is the vCPU index");
        assert_eq!((b >> 16) & 0xff, 2);
        assert_eq!(p.leaf(0, 0x4000_0000, 0, &GuestView::RESET), [0x4000_0000, 0x7572_7668, 0x7276_686e, 0x7668_6e75]);
        assert_eq!(p.leaf(0, 0xa, 0, &GuestView::RESET), [0; 4], "no PMU");
        assert_eq!(p.leaf(0, 0x8000_0001, 0, &GuestView::RESET)[2] & bits::ECX81_SVM, 0);
        assert_eq!(p.leaf(0, 0x8000_000a, 0, &GuestView::RESET), [0; 4], "no SVM features");
        assert_eq!(p.leaf(0, 0x8000_0008, 0, &GuestView::RESET)[1] & bits::EBX88_HIDDEN, 0, "no AMD speculation MSRs");
        assert_eq!(p.leaf(0, 7, 0, &GuestView::RESET)[3] & bits::EDX7_HIDDEN, 0);
    }

    #[test]
    fn a_machine_with_a_lapic_shows_it_with_x2apic_and_tsc_deadline() {
        let [_, _, c, d] = CpuidPolicy::new(1, true).leaf(0, 1, 0, &GuestView::RESET);
        assert_ne!(d & bits::EDX1_APIC, 0);
        assert_eq!(c & (bits::ECX1_X2APIC | bits::ECX1_TSC_DEADLINE), bits::ECX1_X2APIC | bits::ECX1_TSC_DEADLINE);
    }

    #[test]
    fn kvmclock_leaves() {
        let p = CpuidPolicy::new(1, true).with_kvmclock(2_500_000_000);
        let [max, b, c, d] = p.leaf(0, 0x4000_0000, 0, &GuestView::RESET);
        assert_eq!(max, 0x4000_0010);
        let sig: Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        assert_eq!(p.leaf(0, 0x4000_0001, 0, &GuestView::RESET), [(1 << 3) | (1 << 24), 0, 0, 0]);
        assert_eq!(p.leaf(0, 0x4000_0010, 0, &GuestView::RESET)[..2], [2_500_000, 1_000_000]);
    }

    #[test]
    fn osxsave_follows_the_guests_cr4() {
        let p = CpuidPolicy::new(1, true);
        let host_xsave = host_cpuid(1, 0)[2] & bits::ECX1_XSAVE != 0;
        assert_eq!(p.leaf(0, 1, 0, &GuestView::RESET)[2] & bits::ECX1_OSXSAVE, 0);
        let on = GuestView { cr4: CR4_OSXSAVE, xcr0: 1 };
        assert_eq!(p.leaf(0, 1, 0, &on)[2] & bits::ECX1_OSXSAVE != 0, host_xsave);
    }

    #[test]
    fn instructions_without_their_control_are_hidden() {
        let p = CpuidPolicy::new(1, true);
        assert_eq!(p.leaf(0, 7, 0, &GuestView::RESET)[1] & bits::EBX7_INVPCID, 0);
        assert_eq!(p.leaf(0, 7, 0, &GuestView::RESET)[2] & bits::ECX7_RDPID, 0);
        assert_eq!(p.leaf(0, 0x8000_0001, 0, &GuestView::RESET)[3] & bits::EDX81_RDTSCP, 0);
        assert_eq!(p.leaf(0, 0xd, 1, &GuestView::RESET)[0] & !bits::EAXD1_SHOWN, 0, "no XSAVES, no XFD");
        let shown = CpuidPolicy { rdtscp: true, invpcid: true, ..p };
        let host7 = host_cpuid(7, 0);
        assert_eq!(shown.leaf(0, 7, 0, &GuestView::RESET)[1] & bits::EBX7_INVPCID, host7[1] & bits::EBX7_INVPCID);
        assert_eq!(shown.leaf(0, 0x8000_0001, 0, &GuestView::RESET)[3] & bits::EDX81_RDTSCP,
            host_cpuid(0x8000_0001, 0)[3] & bits::EDX81_RDTSCP);
    }

    #[test]
    fn xsave_leaf_sizes_follow_the_guests_xcr0() {
        let p = CpuidPolicy::new(1, true);
        let supported = p.xcr0_supported();
        let [a, b, c, d] = p.leaf(0, 0xd, 0, &GuestView::RESET);
        assert_eq!(u64::from(d) << 32 | u64::from(a), supported);
        assert_eq!(b, XSAVE_LEGACY_AND_HEADER, "x87 only: legacy region and header");
        assert!(c >= b);
        let all = p.leaf(0, 0xd, 0, &GuestView { cr4: CR4_OSXSAVE, xcr0: supported });
        assert_eq!(all[1], all[2], "every offered component enabled: the maximum size");
        // Components not offered have empty sub-leaves: MPX (3, 4) and PKRU (9) among them.
        for i in [3, 4, 9, 17, 18] {
            assert_eq!(p.leaf(0, 0xd, i, &GuestView::RESET), [0; 4], "sub-leaf {i}");
        }
        assert_eq!(p.leaf(0, 0xd, 1, &GuestView::RESET)[2..], [0, 0], "no supervisor components");
    }

    #[test]
    fn xsave_sizes_of_standard_and_compacted_areas() {
        // Whatever the host has: the standard size covers each offered component's end,
        // the compacted one is never larger.
        let supported = CpuidPolicy::new(1, true).xcr0_supported();
        let standard = xsave_size(supported, false);
        for i in 2..64 {
            if supported & (1 << i) != 0 {
                let [len, offset, ..] = host_cpuid(0xd, i);
                assert!(standard >= offset + len);
            }
        }
        assert!(xsave_size(supported, true) <= standard);
        assert_eq!(xsave_size(1, false), 576);
        assert_eq!(xsave_size(3, true), 576);
    }
}
