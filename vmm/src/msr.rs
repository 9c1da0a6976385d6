//! Model-specific registers: which ones the guest uses natively, and a deliberate answer
//! for every other one Linux touches (Intel SDM vol. 4; AMD APM vol. 2 and the family
//! 17h PPR for AMD's). Which MSRs exist follows the vendor and features the guest's CPUID
//! shows ([`CpuModel`]): hvrun passes the host's vendor through, so an AMD host gets AMD's
//! MSRs and an Intel Mac Intel's. The exits are in `exit::msr`.
//!
//! An MSR hvrun knows but deliberately does not have raises #GP silently, as on a CPU
//! without it; one it does not know raises #GP and is logged once.
use crate::cpuid::{CpuidPolicy, GuestView};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

// Architectural MSRs (SDM vol. 4, table 2-2).
pub const IA32_PLATFORM_ID: u32 = 0x17;
pub const IA32_TSC: u32 = 0x10;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_TEST_CTRL: u32 = 0x33;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_TSC_ADJUST: u32 = 0x3b;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
pub const MSR_PLATFORM_INFO: u32 = 0xce;
pub const IA32_MTRRCAP: u32 = 0xfe;
pub const IA32_ARCH_CAPABILITIES: u32 = 0x10a;
pub const MSR_MISC_FEATURES_ENABLES: u32 = 0x140;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MCG_CAP: u32 = 0x179;
pub const IA32_MCG_STATUS: u32 = 0x17a;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_MTRR_PHYSBASE0: u32 = 0x200;
pub const IA32_MTRR_PHYSMASK7: u32 = 0x20f;
pub const IA32_MTRR_FIX64K_00000: u32 = 0x250;
pub const IA32_MTRR_FIX16K_80000: u32 = 0x258;
pub const IA32_MTRR_FIX16K_A0000: u32 = 0x259;
pub const IA32_MTRR_FIX4K_C0000: u32 = 0x268;
pub const IA32_MTRR_FIX4K_F8000: u32 = 0x26f;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_STAR: u32 = 0xc000_0081;
pub const IA32_LSTAR: u32 = 0xc000_0082;
pub const IA32_CSTAR: u32 = 0xc000_0083;
pub const IA32_FMASK: u32 = 0xc000_0084;
pub const IA32_FS_BASE: u32 = 0xc000_0100;
pub const IA32_GS_BASE: u32 = 0xc000_0101;
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const IA32_TSC_AUX: u32 = 0xc000_0103;

// AMD's MSRs (APM vol. 2, appendix A; family 17h PPR).
/// The legacy performance counters PerfEvtSel0-3 and PerfCtr0-3.
pub const AMD_PERF_LEGACY_FIRST: u32 = 0xc001_0000;
pub const AMD_PERF_LEGACY_LAST: u32 = 0xc001_0007;
pub const AMD_SYSCFG: u32 = 0xc001_0010;
pub const AMD_HWCR: u32 = 0xc001_0015;
pub const AMD_NB_CFG: u32 = 0xc001_001f;
pub const AMD_OSVW_ID_LENGTH: u32 = 0xc001_0140;
pub const AMD_OSVW_STATUS: u32 = 0xc001_0141;
/// The core performance counters PerfEvtSel0-5/PerfCtr0-5 (CPUID PerfCtrExtCore).
pub const AMD_PERF_CORE_FIRST: u32 = 0xc001_0200;
pub const AMD_PERF_CORE_LAST: u32 = 0xc001_020b;
pub const AMD_LS_CFG: u32 = 0xc001_1020;
pub const AMD_FP_CFG: u32 = 0xc001_1028;
pub const AMD_DE_CFG: u32 = 0xc001_1029;

/// MSRs the guest reads and writes without exits: the CPU switches them on entry and
/// exit, and none of them changes how hvrun must emulate anything. Not IA32_TSC: a write
/// to it moves IA32_TSC_ADJUST too and must go through this vCPU's TSC offset.
pub const NATIVE_MSRS: &[u32] = &[
    IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP, IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK,
    IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_TSC_AUX,
];

/// EFER bits a guest may set (SDM vol. 3, 2.2.1): SCE, LME, NXE. LMA is the CPU's.
pub const EFER_WRITABLE: u64 = (1 << 0) | (1 << 8) | (1 << 11);
pub const EFER_LMA: u64 = 1 << 10;

/// The power-on PAT: WB WT UC- UC, twice (SDM vol. 3, 13.12.4, table 13-12).
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// MTRRs: 8 variable ranges, fixed ranges, write-combining (SDM vol. 3, 12.11.2.1).
const MTRRCAP_VARIABLE: u64 = 8;
const MTRRCAP_FIXED: u64 = 1 << 8;
const MTRRCAP_WC: u64 = 1 << 10;
const MTRRCAP_VALUE: u64 = MTRRCAP_VARIABLE | MTRRCAP_FIXED | MTRRCAP_WC;
/// IA32_MTRR_DEF_TYPE: type 7:0, fixed-range enable 10, enable 11 (SDM 12.11.2.1).
const MTRR_DEF_TYPE_WRITABLE: u64 = 0xff | (1 << 10) | (1 << 11);
/// IA32_MTRR_PHYSBASEn: type 7:0; IA32_MTRR_PHYSMASKn: valid 11 (SDM 12.11.2.3). Bits
/// 12 to MAXPHYADDR-1 hold the address in both.
const MTRR_PHYSBASE_TYPE: u64 = 0xff;
const MTRR_PHYSMASK_VALID: u64 = 1 << 11;

/// IA32_MISC_ENABLE: fast strings on (0), branch trace (11) and PEBS (12) unavailable;
/// performance monitoring (7) unavailable and MONITOR/MWAIT (18) off, as CPUID says
/// (SDM vol. 4, table 2-2).
const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
const MISC_ENABLE_BTS_UNAVAILABLE: u64 = 1 << 11;
const MISC_ENABLE_PEBS_UNAVAILABLE: u64 = 1 << 12;
const MISC_ENABLE_VALUE: u64 = MISC_ENABLE_FAST_STRING | MISC_ENABLE_BTS_UNAVAILABLE | MISC_ENABLE_PEBS_UNAVAILABLE;
/// Locked with VMX and SGX off: the guest cannot enable VMX (hidden in CPUID too), and
/// Linux's init_ia32_feat_ctl() leaves a locked MSR alone.
const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
/// MSR_PLATFORM_INFO bits 15:8: the maximum non-turbo ratio, in units of 100 MHz, the
/// rate the invariant TSC counts at (SDM vol. 4, MSR_PLATFORM_INFO). Bit 31 (CPUID
/// faulting) stays clear: Linux's init_cpuid_fault() then leaves CPUID alone.
const PLATFORM_INFO_RATIO_SHIFT: u32 = 8;
const PLATFORM_INFO_BUS_HZ: u64 = 100_000_000;

/// HWCR bit 24, TscFreqSel: the TSC counts at the P0 rate, i.e. at a constant one. Linux's
/// bsp_init_amd() reads HWCR unchecked when CPUID shows an invariant TSC and warns
/// without this bit.
const HWCR_TSC_FREQ_SEL: u64 = 1 << 24;
/// NB_CFG bit 46, EnableCf8ExtCfg: extended PCI configuration space through ports
/// CF8/CFC. Linux's amd_bus_cpu_online() reads NB_CFG unchecked on every AMD CPU from
/// family 10h and sets this bit. hvrun has no PCI, so the bit is only remembered.
const NB_CFG_ENABLE_CF8_EXT_CFG: u64 = 1 << 46;
/// DE_CFG bit 1: LFENCE is dispatch serializing (AMD, "Software techniques for managing
/// speculation"). Linux's init_amd() sets it with msr_set_bit() and relies on it; the host
/// kernel has set it on the real CPU.
const DE_CFG_LFENCE_SERIALIZE: u64 = 1 << 1;

/// The guest's CPU vendor, as its CPUID leaf 0 names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    /// AMD, and Hygon (a Zen 1 with AMD's MSRs).
    Amd,
    Other,
}

/// What of the guest's processor decides which MSRs it has and what they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuModel {
    pub vendor: Vendor,
    /// CPUID.(EAX=7,ECX=0):EBX[1]: IA32_TSC_ADJUST exists (SDM vol. 3, 17.17.3).
    pub tsc_adjust: bool,
    /// CPUID 0x8000_0001 ECX[9]: the OS-visible workaround MSRs exist (APM vol. 2).
    pub osvw: bool,
    /// MAXPHYADDR: MTRR address bits from here up are reserved.
    pub phys_addr_bits: u8,
    /// The TSC rate, for MSR_PLATFORM_INFO.
    pub tsc_hz: u64,
    /// The microcode revision the guest reads: the host CPU's, as KVM gives QEMU.
    pub microcode: u32,
}

const CPUID_TSC_ADJUST: u32 = 1 << 1;
const CPUID_OSVW: u32 = 1 << 9;
/// Leaf 0 EBX, EDX, ECX of each vendor.
const GENUINE_INTEL: [u32; 3] = vendor_id(b"GenuineIntel");
const AUTHENTIC_AMD: [u32; 3] = vendor_id(b"AuthenticAMD");
const HYGON_GENUINE: [u32; 3] = vendor_id(b"HygonGenuine");

const fn vendor_id(name: &[u8; 12]) -> [u32; 3] {
    const fn word(n: &[u8; 12], i: usize) -> u32 {
        u32::from_le_bytes([n[i], n[i + 1], n[i + 2], n[i + 3]])
    }
    [word(name, 0), word(name, 4), word(name, 8)]
}

impl CpuModel {
    /// The model vCPU `index` sees through `cpuid`.
    pub fn of(cpuid: &CpuidPolicy, index: u32, tsc_hz: u64) -> Self {
        let [max, b, c, d] = cpuid.leaf(index, 0, 0, &GuestView::RESET);
        let vendor = match [b, d, c] {
            GENUINE_INTEL => Vendor::Intel,
            AUTHENTIC_AMD | HYGON_GENUINE => Vendor::Amd,
            _ => Vendor::Other,
        };
        let tsc_adjust = max >= 7 && cpuid.leaf(index, 7, 0, &GuestView::RESET)[1] & CPUID_TSC_ADJUST != 0;
        let max_ext = cpuid.leaf(index, 0x8000_0000, 0, &GuestView::RESET)[0];
        let osvw = max_ext >= 0x8000_0001 && cpuid.leaf(index, 0x8000_0001, 0, &GuestView::RESET)[2] & CPUID_OSVW != 0;
        CpuModel { vendor, tsc_adjust, osvw, phys_addr_bits: cpuid.phys_addr_bits, tsc_hz, microcode: host_microcode() }
    }
}

/// Per-vCPU values of the MSRs hvrun keeps itself.
#[derive(Debug)]
pub struct MsrState {
    model: Option<CpuModel>,
    /// IA32_PAT. Hypervisor.framework refuses writes of VMCS_GUEST_IA32_PAT, so the
    /// guest's PAT lives here; the real one stays at the framework's.
    pat: u64,
    misc_enable: u64,
    nb_cfg: u64,
    /// IA32_TSC_ADJUST: this vCPU's TSC runs this far (wrapping) ahead of the machine's
    /// clock; its VMCS TSC offset is the clock's plus this.
    tsc_adjust: u64,
    mtrrs: BTreeMap<u32, u64>,
    kvmclock: BTreeMap<u32, u64>,
}

impl Default for MsrState {
    fn default() -> Self {
        MsrState {
            model: None,
            pat: PAT_RESET,
            misc_enable: MISC_ENABLE_VALUE,
            nb_cfg: 0,
            tsc_adjust: 0,
            mtrrs: BTreeMap::new(),
            kvmclock: BTreeMap::new(),
        }
    }
}

/// What an MSR access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrAnswer {
    Value(u64),
    /// The MSR lives in the VMCS (EFER): the handler reads or writes it there.
    Vmcs(u32),
    /// RDMSR IA32_TSC: the guest TSC now, the host's plus this vCPU's VMCS TSC offset.
    GuestTsc,
    /// WRMSR IA32_TSC: the handler computes the adjust that makes the TSC read the value
    /// ([`tsc_adjust_for`]) and calls [`MsrState::set_tsc_adjust`].
    SetTsc,
    /// The TSC moved (IA32_TSC_ADJUST written): the handler sets this vCPU's TSC offset.
    TscMoved,
    /// #GP: no such MSR, or a value it cannot hold.
    Fault,
}

/// Memory types an MTRR may hold: UC 0, WC 1, WT 4, WP 5, WB 6 (SDM 12.11.1, table 12-8).
fn mtrr_type_valid(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

fn is_fixed_mtrr(msr: u32) -> bool {
    matches!(msr,
        IA32_MTRR_FIX64K_00000 | IA32_MTRR_FIX16K_80000 | IA32_MTRR_FIX16K_A0000
        | IA32_MTRR_FIX4K_C0000..=IA32_MTRR_FIX4K_F8000)
}

fn is_mtrr(msr: u32) -> bool {
    is_fixed_mtrr(msr) || matches!(msr, IA32_MTRR_PHYSBASE0..=IA32_MTRR_PHYSMASK7 | IA32_MTRR_DEF_TYPE)
}

/// Whether `value` fits MTRR `msr`: a reserved bit set or a reserved type is #GP
/// (SDM 12.11.2). On AMD the fixed ranges' RdMem/WrMem bits are reserved too while
/// SYSCFG.MtrrFixDramModEn is clear, which it stays here.
fn mtrr_valid(msr: u32, value: u64, phys_addr_bits: u8) -> bool {
    let addr = (1u64 << phys_addr_bits.clamp(12, 52)) - (1 << 12);
    match msr {
        IA32_MTRR_DEF_TYPE => value & !MTRR_DEF_TYPE_WRITABLE == 0 && mtrr_type_valid(value & 0xff),
        m if is_fixed_mtrr(m) => value.to_le_bytes().iter().all(|&t| mtrr_type_valid(t.into())),
        m if (m - IA32_MTRR_PHYSBASE0).is_multiple_of(2) => {
            value & !(addr | MTRR_PHYSBASE_TYPE) == 0 && mtrr_type_valid(value & MTRR_PHYSBASE_TYPE)
        }
        _ => value & !(addr | MTRR_PHYSMASK_VALID) == 0,
    }
}

/// A PAT entry holds a memory type: UC 0, WC 1, WT 4, WP 5, WB 6, UC- 7; 2, 3 and bits
/// 7:3 are reserved, and a WRMSR setting them is #GP (SDM 13.12.2).
pub fn pat_valid(value: u64) -> bool {
    value.to_le_bytes().iter().all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

/// The IA32_TSC_ADJUST that makes the TSC read `value` now, when the host TSC reads
/// `host_tsc` and the machine's TSC offset is `base_offset`: a WRMSR to IA32_TSC moves
/// TSC_ADJUST by as much as it moves the TSC (SDM vol. 3, 17.17.3).
pub fn tsc_adjust_for(value: u64, host_tsc: u64, base_offset: u64) -> u64 {
    value.wrapping_sub(host_tsc).wrapping_sub(base_offset)
}

/// A TSC deadline the guest wrote in its own TSC (the machine's plus `adjust`), as the
/// machine's TSC the local APIC counts in. 0 stays 0 (disarmed); a deadline before the
/// machine's TSC 0 is long past and becomes 1; one beyond its range never fires.
pub fn deadline_to_machine(deadline: u64, adjust: u64) -> u64 {
    if deadline == 0 {
        return 0;
    }
    let t = i128::from(deadline) - i128::from(adjust as i64);
    t.clamp(1, i128::from(u64::MAX)) as u64
}

/// The other way: a deadline the local APIC holds (machine's TSC) in the guest's TSC.
pub fn deadline_from_machine(deadline: u64, adjust: u64) -> u64 {
    if deadline == 0 {
        return 0;
    }
    let t = i128::from(deadline) + i128::from(adjust as i64);
    t.clamp(1, i128::from(u64::MAX)) as u64
}

impl MsrState {
    /// A vCPU whose processor is `model` (tests; the exit handler learns it from the
    /// machine's CPUID at the first MSR exit).
    pub fn with_model(model: CpuModel) -> Self {
        MsrState { model: Some(model), ..Default::default() }
    }

    /// This vCPU's model, computed by `of` the first time.
    pub fn model(&mut self, of: impl FnOnce() -> CpuModel) -> CpuModel {
        *self.model.get_or_insert_with(of)
    }

    /// The last value the guest wrote to a kvmclock MSR.
    pub fn kvmclock(&self, msr: u32) -> u64 {
        self.kvmclock.get(&msr).copied().unwrap_or(0)
    }

    pub fn set_kvmclock(&mut self, msr: u32, value: u64) {
        self.kvmclock.insert(msr, value);
    }

    /// IA32_TSC_ADJUST (0 unless the guest moved its TSC).
    pub fn tsc_adjust(&self) -> u64 {
        self.tsc_adjust
    }

    pub fn set_tsc_adjust(&mut self, adjust: u64) {
        self.tsc_adjust = adjust;
    }

    /// RDMSR `msr` on a vCPU whose processor is `model`.
    pub fn read(&self, model: &CpuModel, msr: u32) -> MsrAnswer {
        self.lookup(model, msr).unwrap_or_else(|| {
            log_unknown("rdmsr", msr);
            MsrAnswer::Fault
        })
    }

    /// What RDMSR `msr` gives; `None` for an MSR hvrun does not know.
    fn lookup(&self, model: &CpuModel, msr: u32) -> Option<MsrAnswer> {
        use MsrAnswer::*;
        let (intel, amd) = (model.vendor == Vendor::Intel, model.vendor == Vendor::Amd);
        let answer = match msr {
            IA32_EFER => Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_EFER),
            IA32_PAT => Value(self.pat),
            IA32_TSC => GuestTsc,
            IA32_TSC_ADJUST if model.tsc_adjust => Value(self.tsc_adjust),
            // Intel: bits 63:32 hold the revision (SDM vol. 3, "Microcode Update
            // Facilities"); AMD's PATCH_LEVEL holds it in 31:0 (Linux early_init_amd()).
            IA32_BIOS_SIGN_ID if intel => Value(u64::from(model.microcode) << 32),
            IA32_BIOS_SIGN_ID if amd => Value(model.microcode.into()),
            IA32_MTRRCAP => Value(MTRRCAP_VALUE),
            m if is_mtrr(m) => Value(self.mtrrs.get(&m).copied().unwrap_or(0)),
            // No machine-check banks (the count in MCG_CAP 7:0 is 0) and no MCG_CTL.
            IA32_MCG_CAP | IA32_MCG_STATUS => Value(0),

            // Platform ID 0 (bits 52:50); read by Linux's Intel microcode loader.
            IA32_PLATFORM_ID if intel => Value(0),
            IA32_FEATURE_CONTROL if intel => Value(FEATURE_CONTROL_LOCKED),
            MSR_PLATFORM_INFO if intel => Value(platform_info(model.tsc_hz)),
            IA32_MISC_ENABLE if intel => Value(self.misc_enable),

            // No memory-type extensions in the MTRRs, no TOP_MEM2, no memory encryption:
            // Linux's k8_check_syscfg_dram_mod_en() and early_detect_mem_encrypt() read it.
            // AMD's legacy counters exist on every AMD64 CPU whatever CPUID says (APM vol.
            // 2, 13.2.1), and guests program them without asking (kvm-unit-tests'
            // pmu_init()); with no PMU they read 0 and never count, as under KVM without
            // one. Linux's check_hw_exists() sees a write not stick and says "PMU not
            // available due to virtualization".
            AMD_PERF_LEGACY_FIRST..=AMD_PERF_LEGACY_LAST if amd => Value(0),
            AMD_SYSCFG if amd => Value(0),
            AMD_HWCR if amd => Value(HWCR_TSC_FREQ_SEL),
            AMD_NB_CFG if amd => Value(self.nb_cfg),
            AMD_DE_CFG if amd => Value(DE_CFG_LFENCE_SERIALIZE),
            // No OSVW status bits are valid: Linux's cpu_has_amd_erratum() then goes by
            // family and model, which is all hvrun could tell it.
            AMD_OSVW_ID_LENGTH | AMD_OSVW_STATUS if amd && model.osvw => Value(0),

            m if deliberately_absent(model, m) => Fault,
            _ => return None,
        };
        Some(answer)
    }

    /// WRMSR `value` to `msr` on a vCPU whose processor is `model`.
    pub fn write(&mut self, model: &CpuModel, msr: u32, value: u64) -> MsrAnswer {
        use MsrAnswer::*;
        let (intel, amd) = (model.vendor == Vendor::Intel, model.vendor == Vendor::Amd);
        match msr {
            IA32_EFER if value & !(EFER_WRITABLE | EFER_LMA) == 0 => Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_EFER),
            IA32_EFER => Fault,
            IA32_PAT if pat_valid(value) => {
                self.pat = value;
                Value(0)
            }
            IA32_PAT => Fault,
            IA32_TSC => SetTsc,
            IA32_TSC_ADJUST if model.tsc_adjust => {
                self.tsc_adjust = value;
                TscMoved
            }
            // Linux writes 0 before CPUID(1) to latch the revision; the revision stays
            // the CPU's whatever is written (SDM vol. 3, "Microcode Update Facilities").
            IA32_BIOS_SIGN_ID if intel => Value(0),
            m if is_mtrr(m) && mtrr_valid(m, value, model.phys_addr_bits) => {
                self.mtrrs.insert(m, value);
                Value(0)
            }
            // Software may only clear MCG_STATUS (SDM vol. 3, 16.3.1.2).
            IA32_MCG_STATUS if value == 0 => Value(0),
            IA32_MISC_ENABLE if intel && (value ^ self.misc_enable) & !MISC_ENABLE_FAST_STRING == 0 => {
                // Fast strings is the one bit hvrun lets software change (it changes
                // nothing the guest can see); the others are read-only here or off in
                // CPUID, and changing them is #GP.
                self.misc_enable = value;
                Value(0)
            }
            AMD_NB_CFG if amd && value & !NB_CFG_ENABLE_CF8_EXT_CFG == 0 => {
                self.nb_cfg = value;
                Value(0)
            }
            // Rewriting the value read is accepted (Linux's msr_set_bit() writes only on
            // a change); changing a bit would ask for hardware behaviour hvrun cannot give.
            AMD_PERF_LEGACY_FIRST..=AMD_PERF_LEGACY_LAST if amd => Value(0),
            AMD_SYSCFG if amd && value == 0 => Value(0),
            AMD_HWCR if amd && value == HWCR_TSC_FREQ_SEL => Value(0),
            AMD_DE_CFG if amd && value == DE_CFG_LFENCE_SERIALIZE => Value(0),
            // Any other write to an MSR hvrun knows is #GP: a value refused above, an MSR
            // it deliberately lacks, or a read-only one (FEATURE_CONTROL is locked;
            // PLATFORM_ID, PLATFORM_INFO, MTRRCAP, MCG_CAP, PATCH_LEVEL and OSVW are the
            // CPU's description of itself).
            m if self.lookup(model, m).is_some() => Fault,
            _ => {
                log_unknown("wrmsr", msr);
                Fault
            }
        }
    }
}

/// MSRs of the vendor that hvrun deliberately lacks: #GP without a log line. Linux
/// reaches each through a safe accessor and copes.
fn deliberately_absent(model: &CpuModel, msr: u32) -> bool {
    let absent_everywhere = matches!(msr,
        // Hidden in CPUID (leaf 7 EDX[29], cpuid.rs): Linux reads it only when shown.
        IA32_ARCH_CAPABILITIES
        // A CPU model without TSC_ADJUST in CPUID (hvrun's own always shows it).
        | IA32_TSC_ADJUST);
    let absent_on_vendor = match model.vendor {
        Vendor::Intel => matches!(msr,
            // Split-lock detection: Linux's split_lock_verify_msr() probes it safely.
            IA32_TEST_CTRL
            // CPUID faulting and ring-3 MWAIT: init_intel_misc_features() probes it.
            | MSR_MISC_FEATURES_ENABLES),
        Vendor::Amd => matches!(msr,
            // No PMU: the core counters exist only with PerfCtrExtCore in CPUID; Linux's
            // check_hw_exists() probes them safely.
            AMD_PERF_CORE_FIRST..=AMD_PERF_CORE_LAST
            // Its SSBD bit would have to reach the host's LS_CFG: without it Linux's
            // bsp_init_amd() does not claim SSBD.
            | AMD_LS_CFG
            // Zen 1's FP-DSS fix bit, likewise the host's to set: init_amd_zen1() uses
            // msr_set_bit(), which tolerates the #GP.
            | AMD_FP_CFG
            // Without OSVW in CPUID the OSVW MSRs do not exist.
            | AMD_OSVW_ID_LENGTH | AMD_OSVW_STATUS),
        Vendor::Other => false,
    };
    absent_everywhere || absent_on_vendor
}

/// MSR_PLATFORM_INFO for a TSC running at `tsc_hz`.
fn platform_info(tsc_hz: u64) -> u64 {
    let ratio = ((tsc_hz + PLATFORM_INFO_BUS_HZ / 2) / PLATFORM_INFO_BUS_HZ).clamp(1, 0xff);
    ratio << PLATFORM_INFO_RATIO_SHIFT
}

/// The host CPU's microcode revision, 0 where the host does not say.
pub fn host_microcode() -> u32 {
    static REVISION: OnceLock<u32> = OnceLock::new();
    *REVISION.get_or_init(|| read_host_microcode().unwrap_or(0))
}

/// Linux: the "microcode" line of /proc/cpuinfo (arch/x86/kernel/cpu/proc.c).
#[cfg(target_os = "linux")]
fn read_host_microcode() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("microcode"))?;
    let value = line.split(':').nth(1)?.trim();
    u32::from_str_radix(value.trim_start_matches("0x"), 16).ok()
}

/// macOS: the machdep.cpu.microcode_version sysctl.
#[cfg(target_os = "macos")]
fn read_host_microcode() -> Option<u32> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>();
    // SAFETY: a NUL-terminated name; `value` and `len` outlive the call, which writes at
    // most `len` bytes.
    let ret = unsafe {
        libc::sysctlbyname(c"machdep.cpu.microcode_version".as_ptr(), &mut value as *mut u64 as *mut libc::c_void,
            &mut len, std::ptr::null_mut(), 0)
    };
    // The value is an int or a quad: little endian, so the low bytes are right either way.
    (ret == 0).then_some(value as u32)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn read_host_microcode() -> Option<u32> {
    None
}

/// Logs an access to an MSR hvrun does not know, once per MSR and direction.
fn log_unknown(what: &str, msr: u32) {
    static SEEN: Mutex<BTreeSet<(bool, u32)>> = Mutex::new(BTreeSet::new());
    let first = SEEN.lock().unwrap_or_else(|e| e.into_inner()).insert((what == "wrmsr", msr));
    if first {
        log::warn!("guest {what} of unknown MSR {msr:#x}: #GP (logged once)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MsrAnswer::{Fault, Value};

    fn model(vendor: Vendor) -> CpuModel {
        CpuModel { vendor, tsc_adjust: true, osvw: true, phys_addr_bits: 39, tsc_hz: 2_593_906_000, microcode: 0xf4 }
    }

    #[test]
    fn shared_answers() {
        for vendor in [Vendor::Intel, Vendor::Amd] {
            let (m, mut s) = (model(vendor), MsrState::default());
            assert_eq!(s.read(&m, IA32_MTRRCAP), Value(0x508));
            assert_eq!(s.write(&m, IA32_MTRR_DEF_TYPE, 0xc06), Value(0));
            assert_eq!(s.read(&m, IA32_MTRR_DEF_TYPE), Value(0xc06));
            assert_eq!(s.write(&m, IA32_EFER, 0xd01), MsrAnswer::Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_EFER));
            assert_eq!(s.write(&m, IA32_EFER, 1 << 12), Fault, "reserved EFER bit");
            assert_eq!(s.read(&m, IA32_MCG_CAP), Value(0));
            assert_eq!(s.write(&m, IA32_MCG_CAP, 0), Fault, "read-only");
            assert_eq!(s.write(&m, IA32_MCG_STATUS, 1), Fault);
            assert_eq!(s.write(&m, 0x1234, 5), Fault);
            assert_eq!(s.read(&m, IA32_ARCH_CAPABILITIES), Fault, "hidden in CPUID");
            assert_eq!(s.read(&m, IA32_TSC), MsrAnswer::GuestTsc);
            assert_eq!(s.write(&m, IA32_TSC, 5), MsrAnswer::SetTsc);
        }
    }

    #[test]
    fn pat_lives_here_and_refuses_reserved_types() {
        let (m, mut s) = (model(Vendor::Intel), MsrState::default());
        assert_eq!(s.read(&m, IA32_PAT), Value(PAT_RESET));
        // Linux's PAT: WB WC UC- UC WB WP UC- UC.
        assert_eq!(s.write(&m, IA32_PAT, 0x0007_0506_0007_0106), Value(0));
        assert_eq!(s.read(&m, IA32_PAT), Value(0x0007_0506_0007_0106));
        assert_eq!(s.write(&m, IA32_PAT, 0x0007_0406_0007_0402), Fault, "type 2 is reserved");
        assert_eq!(s.write(&m, IA32_PAT, 0x0007_0406_0307_0406), Fault, "type 3 is reserved");
        assert_eq!(s.write(&m, IA32_PAT, 0x0007_0406_0007_0446), Fault, "bits 7:3 are reserved");
        assert_eq!(s.read(&m, IA32_PAT), Value(0x0007_0506_0007_0106), "a refused write changes nothing");
        assert_eq!(MsrState::default().read(&m, IA32_PAT), Value(PAT_RESET), "per vCPU");
    }

    #[test]
    fn mtrr_writes_are_checked_like_the_sdm() {
        let (m, mut s) = (model(Vendor::Amd), MsrState::default());
        assert_eq!(s.write(&m, IA32_MTRR_DEF_TYPE, 0xc07), Fault, "UC- is no MTRR type");
        assert_eq!(s.write(&m, IA32_MTRR_DEF_TYPE, 0x1c06), Fault, "bit 12 reserved");
        assert_eq!(s.write(&m, IA32_MTRR_FIX64K_00000, 0x0606_0606_0606_0606), Value(0));
        assert_eq!(s.write(&m, IA32_MTRR_FIX4K_F8000, 0x0606_0606_0602_0606), Fault, "type 2");
        assert_eq!(s.write(&m, IA32_MTRR_FIX4K_F8000, 0x0606_0606_0616_0606), Fault, "RdMem/WrMem bits");
        // Base at 2 GiB, UC; mask for 2 GiB, valid (MAXPHYADDR 39).
        assert_eq!(s.write(&m, IA32_MTRR_PHYSBASE0, 0x8000_0000), Value(0));
        assert_eq!(s.write(&m, IA32_MTRR_PHYSBASE0 + 1, 0x7f_8000_0800), Value(0));
        assert_eq!(s.read(&m, IA32_MTRR_PHYSBASE0 + 1), Value(0x7f_8000_0800));
        assert_eq!(s.write(&m, IA32_MTRR_PHYSBASE0 + 1, 0xff_8000_0800), Fault, "above MAXPHYADDR");
        assert_eq!(s.write(&m, IA32_MTRR_PHYSBASE0 + 1, 0x7f_8000_0801), Fault, "bits 10:0 reserved");
        assert_eq!(s.write(&m, IA32_MTRR_PHYSBASE0 + 2, 0x8000_0102), Fault, "bits 11:8 reserved and type 2");
        assert_eq!(s.write(&m, IA32_MTRRCAP, 0), Fault, "read-only");
    }

    #[test]
    fn intel_answers() {
        let (m, mut s) = (model(Vendor::Intel), MsrState::default());
        assert_eq!(s.read(&m, IA32_FEATURE_CONTROL), Value(1));
        assert_eq!(s.write(&m, IA32_FEATURE_CONTROL, 5), Fault, "locked");
        // 2.594 GHz: ratio 26.
        assert_eq!(s.read(&m, MSR_PLATFORM_INFO), Value(26 << 8));
        assert_eq!(s.write(&m, MSR_PLATFORM_INFO, 0), Fault);
        assert_eq!(s.read(&m, IA32_PLATFORM_ID), Value(0));
        assert_eq!(s.write(&m, IA32_BIOS_SIGN_ID, 0), Value(0));
        assert_eq!(s.read(&m, IA32_BIOS_SIGN_ID), Value(0xf4 << 32), "revision in 63:32");
        assert_eq!(s.read(&m, IA32_MISC_ENABLE), Value(MISC_ENABLE_VALUE));
        assert_eq!(s.write(&m, IA32_MISC_ENABLE, MISC_ENABLE_VALUE & !1), Value(0));
        assert_eq!(s.read(&m, IA32_MISC_ENABLE), Value(MISC_ENABLE_VALUE & !1));
        assert_eq!(s.write(&m, IA32_MISC_ENABLE, MISC_ENABLE_VALUE | 1 << 22), Fault, "limit CPUID maxval");
        assert_eq!(s.write(&m, IA32_MISC_ENABLE, MISC_ENABLE_VALUE | 1 << 34), Fault, "XD disable");
        for absent in [IA32_TEST_CTRL, MSR_MISC_FEATURES_ENABLES, AMD_SYSCFG, AMD_NB_CFG, AMD_HWCR] {
            assert_eq!(s.read(&m, absent), Fault, "{absent:#x}");
        }
    }

    #[test]
    fn amd_answers() {
        let (m, mut s) = (model(Vendor::Amd), MsrState::default());
        assert_eq!(s.read(&m, IA32_BIOS_SIGN_ID), Value(0xf4), "PATCH_LEVEL in 31:0");
        assert_eq!(s.write(&m, IA32_BIOS_SIGN_ID, 0), Fault);
        assert_eq!(s.read(&m, AMD_SYSCFG), Value(0));
        assert_eq!(s.write(&m, AMD_SYSCFG, 0), Value(0));
        assert_eq!(s.write(&m, AMD_SYSCFG, 1 << 19), Fault, "MtrrFixDramModEn");
        assert_eq!(s.read(&m, AMD_HWCR), Value(1 << 24));
        assert_eq!(s.write(&m, AMD_HWCR, (1 << 24) | (1 << 30)), Fault, "IRPERF: no such counter");
        // amd_bus_cpu_online(): read, set EnableCf8ExtCfg, write; it reads back.
        assert_eq!(s.read(&m, AMD_NB_CFG), Value(0));
        assert_eq!(s.write(&m, AMD_NB_CFG, 0x4000_0000_0000), Value(0));
        assert_eq!(s.read(&m, AMD_NB_CFG), Value(0x4000_0000_0000));
        assert_eq!(s.write(&m, AMD_NB_CFG, 1 << 54), Fault);
        // msr_set_bit(DE_CFG, LFENCE_SERIALIZE) finds it set and writes nothing.
        assert_eq!(s.read(&m, AMD_DE_CFG), Value(2));
        assert_eq!(s.write(&m, AMD_DE_CFG, 2 | 1 << 9), Fault, "Zenbleed chicken bit");
        assert_eq!(s.read(&m, AMD_OSVW_ID_LENGTH), Value(0));
        let no_osvw = CpuModel { osvw: false, ..m };
        assert_eq!(s.read(&no_osvw, AMD_OSVW_ID_LENGTH), Fault, "not in CPUID");
        assert_eq!(s.write(&m, AMD_PERF_LEGACY_FIRST, 0x43_0076), Value(0));
        assert_eq!(s.read(&m, AMD_PERF_LEGACY_FIRST), Value(0), "no PMU: nothing kept");
        assert_eq!(s.read(&m, AMD_PERF_LEGACY_LAST), Value(0));
        for absent in [AMD_LS_CFG, AMD_FP_CFG, AMD_PERF_CORE_LAST,
            IA32_FEATURE_CONTROL, MSR_PLATFORM_INFO, IA32_MISC_ENABLE, IA32_PLATFORM_ID]
        {
            assert_eq!(s.read(&m, absent), Fault, "{absent:#x}");
            assert_eq!(s.write(&m, absent, 0), Fault, "{absent:#x}");
        }
    }

    #[test]
    fn tsc_adjust_exists_only_where_cpuid_shows_it() {
        let mut s = MsrState::default();
        let m = model(Vendor::Intel);
        assert_eq!(s.read(&m, IA32_TSC_ADJUST), Value(0));
        assert_eq!(s.write(&m, IA32_TSC_ADJUST, 1000u64.wrapping_neg()), MsrAnswer::TscMoved);
        assert_eq!(s.read(&m, IA32_TSC_ADJUST), Value(1000u64.wrapping_neg()));
        let without = CpuModel { tsc_adjust: false, ..m };
        assert_eq!(s.read(&without, IA32_TSC_ADJUST), Fault);
        assert_eq!(s.write(&without, IA32_TSC_ADJUST, 0), Fault);
    }

    #[test]
    fn tsc_write_and_deadline_arithmetic() {
        // Host TSC 5000, machine offset -1000 (guest TSC 4000): writing 10_000 means an
        // adjust of 6000; writing 3000 one of -1000.
        let base = 1000u64.wrapping_neg();
        assert_eq!(tsc_adjust_for(10_000, 5000, base), 6000);
        assert_eq!(tsc_adjust_for(3000, 5000, base), 1000u64.wrapping_neg());
        assert_eq!(deadline_to_machine(0, 6000), 0, "disarmed stays disarmed");
        assert_eq!(deadline_to_machine(10_000, 6000), 4000);
        assert_eq!(deadline_to_machine(5000, 6000), 1, "before the machine's TSC 0: long past");
        assert_eq!(deadline_to_machine(u64::MAX, 1000u64.wrapping_neg()), u64::MAX, "never");
        assert_eq!(deadline_from_machine(4000, 6000), 10_000);
        assert_eq!(deadline_from_machine(0, 6000), 0);
    }

    #[test]
    fn platform_info_ratio_is_the_tsc_rate_in_100_mhz() {
        assert_eq!(platform_info(2_300_000_000), 23 << 8);
        assert_eq!(platform_info(24_000_000), 1 << 8, "at least 1");
    }

    /// The CPUID policy and this file must agree: every MSR a CPUID bit announces has an
    /// answer here (the model comes from the same policy as the guest's CPUID).
    #[test]
    fn what_cpuid_announces_exists() {
        let cpuid = CpuidPolicy::new(1, true);
        let m = CpuModel::of(&cpuid, 0, 2_000_000_000);
        let s = MsrState::default();
        let leaf7 = cpuid.leaf(0, 7, 0, &GuestView::RESET);
        const ARCH_CAPABILITIES: u32 = 1 << 29;
        if leaf7[3] & ARCH_CAPABILITIES != 0 {
            assert_ne!(s.read(&m, IA32_ARCH_CAPABILITIES), Fault, "CPUID shows ARCH_CAPABILITIES");
        }
        assert_eq!(s.read(&m, IA32_TSC_ADJUST) != Fault, leaf7[1] & CPUID_TSC_ADJUST != 0);
        assert_ne!(m.vendor, Vendor::Other, "hvrun runs on Intel or AMD hosts");
    }
}
