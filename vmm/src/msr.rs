//! Model-specific registers: which ones the guest uses natively, and a deliberate answer
//! for every other one it may touch (SDM vol. 4 lists them; the exits are in
//! `exit::msr`). Unknown MSRs raise #GP, as on a CPU that lacks them, and are logged once.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

pub const IA32_TSC: u32 = 0x10;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
pub const IA32_MTRRCAP: u32 = 0xfe;
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

/// MSRs the guest reads and writes without exits: the CPU switches them on entry and
/// exit, and none of them changes how hvrun must emulate anything.
pub const NATIVE_MSRS: &[u32] = &[
    IA32_TSC, IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP, IA32_STAR, IA32_LSTAR, IA32_CSTAR,
    IA32_FMASK, IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_TSC_AUX,
];

/// EFER bits a guest may set (SDM vol. 3, 2.2.1): SCE, LME, NXE. LMA is the CPU's.
pub const EFER_WRITABLE: u64 = (1 << 0) | (1 << 8) | (1 << 11);
pub const EFER_LMA: u64 = 1 << 10;

/// MTRRs: 8 variable ranges, fixed ranges, write-combining (SDM vol. 3, 12.11.2.1).
const MTRRCAP_VALUE: u64 = 8 | (1 << 8) | (1 << 10);
/// Fast strings on; branch trace and PEBS unavailable (SDM vol. 4, table 2-2).
const MISC_ENABLE_VALUE: u64 = 1 | (1 << 11) | (1 << 12);
/// Locked with VMX off: the guest cannot enable VMX (hidden in CPUID too).
const FEATURE_CONTROL_VALUE: u64 = 1;

/// Per-vCPU values of the MSRs hvrun keeps itself.
#[derive(Debug, Default)]
pub struct MsrState {
    stored: BTreeMap<u32, u64>,
}

/// What an MSR access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrAnswer {
    Value(u64),
    /// The MSR lives in the VMCS (EFER, PAT): the handler reads or writes it there.
    Vmcs(u32),
    /// #GP: no such MSR, or a value it cannot hold.
    Fault,
}

fn is_mtrr(msr: u32) -> bool {
    matches!(msr,
        IA32_MTRR_PHYSBASE0..=IA32_MTRR_PHYSMASK7
        | IA32_MTRR_FIX64K_00000 | IA32_MTRR_FIX16K_80000 | IA32_MTRR_FIX16K_A0000
        | IA32_MTRR_FIX4K_C0000..=IA32_MTRR_FIX4K_F8000 | IA32_MTRR_DEF_TYPE)
}

/// A PAT entry holds a memory type: UC 0, WC 1, WT 4, WP 5, WB 6, UC- 7 (SDM 13.12.2).
pub fn pat_valid(value: u64) -> bool {
    value.to_le_bytes().iter().all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

impl MsrState {
    /// The last value the guest wrote to a kvmclock MSR.
    pub fn kvmclock(&self, msr: u32) -> u64 {
        self.stored.get(&msr).copied().unwrap_or(0)
    }

    pub fn set_kvmclock(&mut self, msr: u32, value: u64) {
        self.stored.insert(msr, value);
    }

    /// RDMSR `msr` on a vCPU that `is_bsp` or not.
    pub fn read(&self, msr: u32, is_bsp: bool) -> MsrAnswer {
        use MsrAnswer::*;
        match msr {
            IA32_EFER => Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_EFER),
            IA32_PAT => Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_PAT),
            IA32_FEATURE_CONTROL => Value(FEATURE_CONTROL_VALUE),
            IA32_BIOS_SIGN_ID => Value(self.stored.get(&msr).copied().unwrap_or(0)),
            IA32_MTRRCAP => Value(MTRRCAP_VALUE),
            IA32_MCG_CAP | IA32_MCG_STATUS => Value(0),
            IA32_MISC_ENABLE => Value(self.stored.get(&msr).copied().unwrap_or(MISC_ENABLE_VALUE)),
            m if is_mtrr(m) => Value(self.stored.get(&m).copied().unwrap_or(0)),
            m if NATIVE_MSRS.contains(&m) => Value(self.stored.get(&m).copied().unwrap_or(0)),
            _ => {
                let _ = is_bsp;
                log_unknown("rdmsr", msr);
                Fault
            }
        }
    }

    /// WRMSR `value` to `msr`.
    pub fn write(&mut self, msr: u32, value: u64) -> MsrAnswer {
        use MsrAnswer::*;
        match msr {
            IA32_EFER if value & !(EFER_WRITABLE | EFER_LMA) == 0 => Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_EFER),
            IA32_PAT if pat_valid(value) => Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_PAT),
            // Linux writes 0 here before CPUID to learn the microcode revision.
            IA32_BIOS_SIGN_ID => {
                self.stored.insert(msr, 0);
                Value(0)
            }
            IA32_MCG_STATUS if value == 0 => Value(0),
            IA32_MISC_ENABLE => {
                // Only the bits the CPU lets software change; the rest keep their value.
                let kept = MISC_ENABLE_VALUE & !1;
                self.stored.insert(msr, (value & 1) | kept);
                Value(0)
            }
            m if is_mtrr(m) => {
                self.stored.insert(m, value);
                Value(0)
            }
            m if NATIVE_MSRS.contains(&m) => {
                self.stored.insert(m, value);
                Value(0)
            }
            _ => {
                log_unknown("wrmsr", msr);
                Fault
            }
        }
    }
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

    #[test]
    fn deliberate_answers() {
        let mut s = MsrState::default();
        assert_eq!(s.read(IA32_FEATURE_CONTROL, true), MsrAnswer::Value(1));
        assert_eq!(s.read(IA32_MTRRCAP, true), MsrAnswer::Value(0x508));
        assert_eq!(s.read(0xce, true), MsrAnswer::Fault, "PLATFORM_INFO is not there");
        assert_eq!(s.write(IA32_MTRR_DEF_TYPE, 0xc06), MsrAnswer::Value(0));
        assert_eq!(s.read(IA32_MTRR_DEF_TYPE, true), MsrAnswer::Value(0xc06));
        assert_eq!(s.write(IA32_EFER, 0xd01), MsrAnswer::Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_EFER));
        assert_eq!(s.write(IA32_EFER, 1 << 12), MsrAnswer::Fault, "reserved EFER bit");
        assert_eq!(s.write(IA32_PAT, 0x0007_0406_0007_0406), MsrAnswer::Vmcs(hvf_sys::vmcs::VMCS_GUEST_IA32_PAT));
        assert_eq!(s.write(IA32_PAT, 0x0007_0406_0007_0402), MsrAnswer::Fault, "type 2 is reserved");
        assert_eq!(s.write(0x1234, 5), MsrAnswer::Fault);
        assert_eq!(s.write(IA32_MISC_ENABLE, 0), MsrAnswer::Value(0));
        assert_eq!(s.read(IA32_MISC_ENABLE, true), MsrAnswer::Value(MISC_ENABLE_VALUE & !1));
    }
}
