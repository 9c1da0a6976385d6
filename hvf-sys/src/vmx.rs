//! VT-x constants: control bits, exit reasons, and the layouts of exit qualifications and
//! interruption information (Intel SDM vol. 3, chapters 25-28), with Apple's names.
use bitflags::bitflags;

bitflags! {
    /// Pin-based VM-execution controls (SDM 25.6.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PinBased: u32 {
        const EXTINT = 1 << 0;
        const NMI = 1 << 3;
        const VIRTUAL_NMI = 1 << 5;
        const PREEMPTION_TIMER = 1 << 6;
        const POSTED_INTERRUPTS = 1 << 7;
    }

    /// Primary processor-based VM-execution controls (SDM 25.6.2, table 25-6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ProcBased: u32 {
        const IRQ_WND = 1 << 2;
        const TSC_OFFSET = 1 << 3;
        const HLT = 1 << 7;
        const INVLPG = 1 << 9;
        const MWAIT = 1 << 10;
        const RDPMC = 1 << 11;
        const RDTSC = 1 << 12;
        const CR3_LOAD = 1 << 15;
        const CR3_STORE = 1 << 16;
        const CR8_LOAD = 1 << 19;
        const CR8_STORE = 1 << 20;
        const TPR_SHADOW = 1 << 21;
        const NMI_WND = 1 << 22;
        const MOV_DR = 1 << 23;
        const UNCOND_IO = 1 << 24;
        const IO_BITMAPS = 1 << 25;
        const MTF = 1 << 27;
        const MSR_BITMAPS = 1 << 28;
        const MONITOR = 1 << 29;
        const PAUSE = 1 << 30;
        const SECONDARY = 1 << 31;
    }

    /// Secondary processor-based VM-execution controls (SDM 25.6.2, table 25-7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ProcBased2: u32 {
        const VIRTUAL_APIC = 1 << 0;
        const EPT = 1 << 1;
        const DESC_TABLE = 1 << 2;
        const RDTSCP = 1 << 3;
        const X2APIC = 1 << 4;
        const VPID = 1 << 5;
        const WBINVD = 1 << 6;
        const UNRESTRICTED = 1 << 7;
        const APIC_REG_VIRT = 1 << 8;
        const VIRT_INTR_DELIVERY = 1 << 9;
        const PAUSE_LOOP = 1 << 10;
        const RDRAND = 1 << 11;
        const INVPCID = 1 << 12;
        const VMFUNC = 1 << 13;
        const VMCS_SHADOW = 1 << 14;
        const RDSEED = 1 << 16;
        const EPT_VE = 1 << 18;
        const XSAVES = 1 << 20;
        /// TPAUSE, UMONITOR, UMWAIT (WAITPKG): #UD when 0.
        const USER_WAIT_PAUSE = 1 << 26;
    }

    /// VM-entry controls (SDM 25.8.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EntryControls: u32 {
        const LOAD_DEBUG = 1 << 2;
        const GUEST_IA32E = 1 << 9;
        const SMM = 1 << 10;
        const DEACTIVATE_DUAL = 1 << 11;
        const LOAD_PERF_GLOBAL = 1 << 13;
        const LOAD_PAT = 1 << 14;
        const LOAD_EFER = 1 << 15;
    }

    /// VM-exit controls (SDM 25.7.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ExitControls: u32 {
        const SAVE_DEBUG = 1 << 2;
        const HOST_IA32E = 1 << 9;
        const LOAD_PERF_GLOBAL = 1 << 12;
        const ACK_INTERRUPT = 1 << 15;
        const SAVE_PAT = 1 << 18;
        const LOAD_PAT = 1 << 19;
        const SAVE_EFER = 1 << 20;
        const LOAD_EFER = 1 << 21;
        const SAVE_PREEMPTION_TIMER = 1 << 22;
    }

    /// Guest interruptibility state, VMCS_GUEST_IGNORE_IRQ (SDM 25.4.2, table 25-3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Interruptibility: u32 {
        const STI = 1 << 0;
        const MOV_SS = 1 << 1;
        const SMI = 1 << 2;
        const NMI = 1 << 3;
    }

    /// EPT-violation exit qualification (SDM 28.2.1, table 28-7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EptQualification: u64 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const FETCH = 1 << 2;
        const READABLE = 1 << 3;
        const WRITABLE = 1 << 4;
        const EXECUTABLE = 1 << 5;
        const LINEAR_VALID = 1 << 7;
        const TRANSLATED = 1 << 8;
        const NMI_UNBLOCKING = 1 << 12;
    }
}

/// A control capability holds its must-be-one bits in the low 32 bits and its may-be-one
/// bits in the high 32 (SDM A.3): the value of a control with `wanted` bits.
pub fn cap2ctrl(cap: u64, wanted: u32) -> u32 {
    (wanted | cap as u32) & (cap >> 32) as u32
}

/// Whether `ctrl` is allowed by capability `cap` (every must-be-one bit set, nothing set
/// that may not be).
pub fn ctrl_allowed(cap: u64, ctrl: u32) -> bool {
    let must = cap as u32;
    let may = (cap >> 32) as u32;
    ctrl & must == must && ctrl & !may == 0
}

macro_rules! exit_reasons {
    ($($name:ident = $value:expr),* $(,)?) => {
        $(pub const $name: u32 = $value;)*

        /// The short name of a basic exit reason (`IO`, `EPT_VIOLATION`), for traces.
        pub fn exit_reason_name(reason: u32) -> &'static str {
            match reason & 0xffff {
                $($value => &stringify!($name)["VMX_REASON_".len()..],)*
                _ => "UNKNOWN",
            }
        }
    };
}

// Basic exit reasons (SDM appendix C).
exit_reasons! {
    VMX_REASON_EXC_NMI = 0, VMX_REASON_IRQ = 1, VMX_REASON_TRIPLE_FAULT = 2,
    VMX_REASON_INIT = 3, VMX_REASON_SIPI = 4, VMX_REASON_IO_SMI = 5, VMX_REASON_OTHER_SMI = 6,
    VMX_REASON_IRQ_WND = 7, VMX_REASON_VIRTUAL_NMI_WND = 8, VMX_REASON_TASK = 9,
    VMX_REASON_CPUID = 10, VMX_REASON_GETSEC = 11, VMX_REASON_HLT = 12, VMX_REASON_INVD = 13,
    VMX_REASON_INVLPG = 14, VMX_REASON_RDPMC = 15, VMX_REASON_RDTSC = 16, VMX_REASON_RSM = 17,
    VMX_REASON_VMCALL = 18, VMX_REASON_VMCLEAR = 19, VMX_REASON_VMLAUNCH = 20,
    VMX_REASON_VMPTRLD = 21, VMX_REASON_VMPTRST = 22, VMX_REASON_VMREAD = 23,
    VMX_REASON_VMRESUME = 24, VMX_REASON_VMWRITE = 25, VMX_REASON_VMOFF = 26,
    VMX_REASON_VMON = 27, VMX_REASON_MOV_CR = 28, VMX_REASON_MOV_DR = 29, VMX_REASON_IO = 30,
    VMX_REASON_RDMSR = 31, VMX_REASON_WRMSR = 32, VMX_REASON_VMENTRY_GUEST = 33,
    VMX_REASON_VMENTRY_MSR = 34, VMX_REASON_MWAIT = 36, VMX_REASON_MTF = 37,
    VMX_REASON_MONITOR = 39, VMX_REASON_PAUSE = 40, VMX_REASON_VMENTRY_MC = 41,
    VMX_REASON_TPR_THRESHOLD = 43, VMX_REASON_APIC_ACCESS = 44, VMX_REASON_VIRTUALIZED_EOI = 45,
    VMX_REASON_GDTR_IDTR = 46, VMX_REASON_LDTR_TR = 47, VMX_REASON_EPT_VIOLATION = 48,
    VMX_REASON_EPT_MISCONFIG = 49, VMX_REASON_EPT_INVEPT = 50, VMX_REASON_RDTSCP = 51,
    VMX_REASON_VMX_TIMER_EXPIRED = 52, VMX_REASON_INVVPID = 53, VMX_REASON_WBINVD = 54,
    VMX_REASON_XSETBV = 55, VMX_REASON_APIC_WRITE = 56, VMX_REASON_RDRAND = 57,
    VMX_REASON_INVPCID = 58, VMX_REASON_VMFUNC = 59, VMX_REASON_RDSEED = 61,
    VMX_REASON_XSAVES = 63, VMX_REASON_XRSTORS = 64,
}

/// Bit 31 of the exit reason: the VM entry failed (SDM 25.9.1).
pub const VMX_REASON_ENTRY_FAILED: u32 = 1 << 31;

/// VM-instruction error 7: VM entry with invalid control field(s) (SDM 31.4).
pub const VMX_INSTR_ERROR_INVALID_CONTROLS: u32 = 7;

// Interruption-information fields: VM-entry (SDM 25.8.3), VM-exit and IDT-vectoring
// (SDM 25.9.2/25.9.3) share one layout.
pub const IRQ_INFO_VECTOR_MASK: u32 = 0xff;
pub const IRQ_INFO_EXT_IRQ: u32 = 0 << 8;
pub const IRQ_INFO_NMI: u32 = 2 << 8;
pub const IRQ_INFO_HARD_EXC: u32 = 3 << 8;
pub const IRQ_INFO_SOFT_IRQ: u32 = 4 << 8;
pub const IRQ_INFO_PRIV_SOFT_EXC: u32 = 5 << 8;
pub const IRQ_INFO_SOFT_EXC: u32 = 6 << 8;
pub const IRQ_INFO_TYPE_MASK: u32 = 7 << 8;
pub const IRQ_INFO_ERROR_VALID: u32 = 1 << 11;
pub const IRQ_INFO_VALID: u32 = 1 << 31;

/// Guest activity states, VMCS_GUEST_ACTIVITY_STATE (SDM 25.4.2).
pub const ACTIVITY_ACTIVE: u32 = 0;
pub const ACTIVITY_HLT: u32 = 1;
pub const ACTIVITY_SHUTDOWN: u32 = 2;
pub const ACTIVITY_WAIT_SIPI: u32 = 3;

/// I/O-instruction exit qualification (SDM 28.2.1, table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification {
    /// Access size in bytes: 1, 2 or 4.
    pub size: u8,
    pub is_in: bool,
    pub string: bool,
    pub rep: bool,
    /// Operand encoding: true for an immediate port (`out 0x80, al`), false for DX.
    pub immediate: bool,
    pub port: u16,
}

impl IoQualification {
    pub fn decode(q: u64) -> Self {
        IoQualification {
            size: (q & 7) as u8 + 1,
            is_in: q & (1 << 3) != 0,
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate: q & (1 << 6) != 0,
            port: (q >> 16) as u16,
        }
    }

    pub fn encode(&self) -> u64 {
        (self.size as u64 - 1)
            | (self.is_in as u64) << 3
            | (self.string as u64) << 4
            | (self.rep as u64) << 5
            | (self.immediate as u64) << 6
            | (self.port as u64) << 16
    }
}

/// Control-register-access exit qualification (SDM 28.2.1, table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrQualification {
    pub cr: u8,
    /// 0 MOV to CR, 1 MOV from CR, 2 CLTS, 3 LMSW.
    pub access_type: u8,
    /// General-purpose register number in SDM order (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP ...).
    pub gpr: u8,
    pub lmsw_source: u16,
}

pub const CR_ACCESS_MOV_TO: u8 = 0;
pub const CR_ACCESS_MOV_FROM: u8 = 1;
pub const CR_ACCESS_CLTS: u8 = 2;
pub const CR_ACCESS_LMSW: u8 = 3;

impl CrQualification {
    pub fn decode(q: u64) -> Self {
        CrQualification {
            cr: (q & 0xf) as u8,
            access_type: ((q >> 4) & 3) as u8,
            gpr: ((q >> 8) & 0xf) as u8,
            lmsw_source: (q >> 16) as u16,
        }
    }
}

// Segment access rights as the VMCS holds them (SDM 25.4.1, table 25-2).
pub const AR_TYPE_MASK: u32 = 0xf;
pub const AR_S: u32 = 1 << 4;
pub const AR_DPL_SHIFT: u32 = 5;
pub const AR_P: u32 = 1 << 7;
pub const AR_AVL: u32 = 1 << 12;
pub const AR_L: u32 = 1 << 13;
pub const AR_DB: u32 = 1 << 14;
pub const AR_G: u32 = 1 << 15;
pub const AR_UNUSABLE: u32 = 1 << 16;
/// System-segment types (SDM vol. 3, table 3-2).
pub const AR_TYPE_LDT: u32 = 2;
pub const AR_TYPE_TSS16_BUSY: u32 = 3;
pub const AR_TYPE_TSS32_BUSY: u32 = 11;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_values_follow_the_capability() {
        // A PROCBASED capability of a real Intel CPU.
        let cap = 0xfff9_fffe_0401_e172u64;
        let ctrl = cap2ctrl(cap, (ProcBased::HLT | ProcBased::SECONDARY).bits());
        assert_eq!(ctrl & 0x0401_e172, 0x0401_e172);
        assert!(ctrl & ProcBased::HLT.bits() != 0);
        assert!(ctrl_allowed(cap, ctrl));
        // Bit 0 may never be one on that CPU; leaving a must-be-one bit out is refused.
        assert!(!ctrl_allowed(cap, ctrl | 1));
        assert!(!ctrl_allowed(cap, ctrl & !0x2));
    }

    #[test]
    fn io_qualification_round_trips() {
        let q = IoQualification { size: 2, is_in: true, string: true, rep: true, immediate: false, port: 0x3f8 };
        assert_eq!(q.encode(), 0x03f8_0039);
        assert_eq!(IoQualification::decode(q.encode()), q);
    }

    #[test]
    fn exit_reasons_have_names() {
        assert_eq!(exit_reason_name(VMX_REASON_EPT_VIOLATION), "EPT_VIOLATION");
        assert_eq!(exit_reason_name(VMX_REASON_VMENTRY_GUEST | VMX_REASON_ENTRY_FAILED), "VMENTRY_GUEST");
        assert_eq!(exit_reason_name(200), "UNKNOWN");
    }

    #[test]
    fn cr_qualification_decodes() {
        // mov cr0, rbx: CR 0, type 0, register 3.
        let q = CrQualification::decode(0x300);
        assert_eq!((q.cr, q.access_type, q.gpr), (0, CR_ACCESS_MOV_TO, 3));
    }
}
