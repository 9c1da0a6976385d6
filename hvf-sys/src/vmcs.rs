//! VMCS field encodings (Intel SDM vol. 3, appendix B), with Apple's names from
//! `hv_arch_vmcs.h`. Widths follow from bits 14:13 of the encoding (SDM 25.11.2).

macro_rules! fields {
    ($($name:ident = $value:expr),* $(,)?) => {
        $(pub const $name: u32 = $value;)*

        /// Apple's name of a VMCS field, for dumps and traces.
        pub fn vmcs_field_name(field: u32) -> Option<&'static str> {
            match field { $($value => Some(stringify!($name)),)* _ => None }
        }

        /// Every field this module names, in encoding order of the table.
        pub const ALL_FIELDS: &[u32] = &[$($value),*];
    };
}

fields! {
    // 16-bit control and guest-state fields.
    VMCS_VPID = 0x0000, VMCS_CTRL_POSTED_INT_N_VECTOR = 0x0002, VMCS_CTRL_EPTP_INDEX = 0x0004,
    VMCS_GUEST_ES = 0x0800, VMCS_GUEST_CS = 0x0802, VMCS_GUEST_SS = 0x0804,
    VMCS_GUEST_DS = 0x0806, VMCS_GUEST_FS = 0x0808, VMCS_GUEST_GS = 0x080a,
    VMCS_GUEST_LDTR = 0x080c, VMCS_GUEST_TR = 0x080e, VMCS_GUEST_INT_STATUS = 0x0810,
    // 16-bit host state.
    VMCS_HOST_ES = 0x0c00, VMCS_HOST_CS = 0x0c02, VMCS_HOST_SS = 0x0c04, VMCS_HOST_DS = 0x0c06,
    VMCS_HOST_FS = 0x0c08, VMCS_HOST_GS = 0x0c0a, VMCS_HOST_TR = 0x0c0c,
    // 64-bit controls.
    VMCS_CTRL_IO_BITMAP_A = 0x2000, VMCS_CTRL_IO_BITMAP_B = 0x2002,
    VMCS_CTRL_MSR_BITMAPS = 0x2004, VMCS_CTRL_VMEXIT_MSR_STORE_ADDR = 0x2006,
    VMCS_CTRL_VMEXIT_MSR_LOAD_ADDR = 0x2008, VMCS_CTRL_VMENTRY_MSR_LOAD_ADDR = 0x200a,
    VMCS_CTRL_EXECUTIVE_VMCS_PTR = 0x200c, VMCS_CTRL_TSC_OFFSET = 0x2010,
    VMCS_CTRL_VIRTUAL_APIC = 0x2012, VMCS_CTRL_APIC_ACCESS = 0x2014,
    VMCS_CTRL_POSTED_INT_DESC_ADDR = 0x2016, VMCS_CTRL_VMFUNC_CTRL = 0x2018,
    VMCS_CTRL_EPTP = 0x201a, VMCS_CTRL_EOI_EXIT_BITMAP_0 = 0x201c,
    VMCS_CTRL_EOI_EXIT_BITMAP_1 = 0x201e, VMCS_CTRL_EOI_EXIT_BITMAP_2 = 0x2020,
    VMCS_CTRL_EOI_EXIT_BITMAP_3 = 0x2022, VMCS_CTRL_EPTP_LIST_ADDR = 0x2024,
    VMCS_CTRL_VMREAD_BITMAP_ADDR = 0x2026, VMCS_CTRL_VMWRITE_BITMAP_ADDR = 0x2028,
    VMCS_CTRL_VIRT_EXC_INFO_ADDR = 0x202a, VMCS_CTRL_XSS_EXITING_BITMAP = 0x202c,
    VMCS_CTRL_ENCLS_EXITING_BITMAP = 0x202e, VMCS_CTRL_TSC_MULTIPLIER = 0x2032,
    // 64-bit read-only data.
    VMCS_GUEST_PHYSICAL_ADDRESS = 0x2400,
    // 64-bit guest state.
    VMCS_GUEST_LINK_POINTER = 0x2800, VMCS_GUEST_IA32_DEBUGCTL = 0x2802,
    VMCS_GUEST_IA32_PAT = 0x2804, VMCS_GUEST_IA32_EFER = 0x2806,
    VMCS_GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808, VMCS_GUEST_PDPTE0 = 0x280a,
    VMCS_GUEST_PDPTE1 = 0x280c, VMCS_GUEST_PDPTE2 = 0x280e, VMCS_GUEST_PDPTE3 = 0x2810,
    VMCS_GUEST_IA32_BNDCFGS = 0x2812,
    // 64-bit host state.
    VMCS_HOST_IA32_PAT = 0x2c00, VMCS_HOST_IA32_EFER = 0x2c02,
    VMCS_HOST_IA32_PERF_GLOBAL_CTRL = 0x2c04,
    // 32-bit controls.
    VMCS_CTRL_PIN_BASED = 0x4000, VMCS_CTRL_CPU_BASED = 0x4002, VMCS_CTRL_EXC_BITMAP = 0x4004,
    VMCS_CTRL_PF_ERROR_MASK = 0x4006, VMCS_CTRL_PF_ERROR_MATCH = 0x4008,
    VMCS_CTRL_CR3_COUNT = 0x400a, VMCS_CTRL_VMEXIT_CONTROLS = 0x400c,
    VMCS_CTRL_VMEXIT_MSR_STORE_COUNT = 0x400e, VMCS_CTRL_VMEXIT_MSR_LOAD_COUNT = 0x4010,
    VMCS_CTRL_VMENTRY_CONTROLS = 0x4012, VMCS_CTRL_VMENTRY_MSR_LOAD_COUNT = 0x4014,
    VMCS_CTRL_VMENTRY_IRQ_INFO = 0x4016, VMCS_CTRL_VMENTRY_EXC_ERROR = 0x4018,
    VMCS_CTRL_VMENTRY_INSTR_LEN = 0x401a, VMCS_CTRL_TPR_THRESHOLD = 0x401c,
    VMCS_CTRL_CPU_BASED2 = 0x401e, VMCS_CTRL_PLE_GAP = 0x4020, VMCS_CTRL_PLE_WINDOW = 0x4022,
    // 32-bit read-only data.
    VMCS_RO_INSTR_ERROR = 0x4400, VMCS_RO_EXIT_REASON = 0x4402,
    VMCS_RO_VMEXIT_IRQ_INFO = 0x4404, VMCS_RO_VMEXIT_IRQ_ERROR = 0x4406,
    VMCS_RO_IDT_VECTOR_INFO = 0x4408, VMCS_RO_IDT_VECTOR_ERROR = 0x440a,
    VMCS_RO_VMEXIT_INSTR_LEN = 0x440c, VMCS_RO_VMX_INSTR_INFO = 0x440e,
    // 32-bit guest state.
    VMCS_GUEST_ES_LIMIT = 0x4800, VMCS_GUEST_CS_LIMIT = 0x4802, VMCS_GUEST_SS_LIMIT = 0x4804,
    VMCS_GUEST_DS_LIMIT = 0x4806, VMCS_GUEST_FS_LIMIT = 0x4808, VMCS_GUEST_GS_LIMIT = 0x480a,
    VMCS_GUEST_LDTR_LIMIT = 0x480c, VMCS_GUEST_TR_LIMIT = 0x480e,
    VMCS_GUEST_GDTR_LIMIT = 0x4810, VMCS_GUEST_IDTR_LIMIT = 0x4812,
    VMCS_GUEST_ES_AR = 0x4814, VMCS_GUEST_CS_AR = 0x4816, VMCS_GUEST_SS_AR = 0x4818,
    VMCS_GUEST_DS_AR = 0x481a, VMCS_GUEST_FS_AR = 0x481c, VMCS_GUEST_GS_AR = 0x481e,
    VMCS_GUEST_LDTR_AR = 0x4820, VMCS_GUEST_TR_AR = 0x4822,
    VMCS_GUEST_IGNORE_IRQ = 0x4824, VMCS_GUEST_ACTIVITY_STATE = 0x4826,
    VMCS_GUEST_SMBASE = 0x4828, VMCS_GUEST_IA32_SYSENTER_CS = 0x482a,
    VMCS_GUEST_VMX_TIMER_VALUE = 0x482e,
    // 32-bit host state.
    VMCS_HOST_IA32_SYSENTER_CS = 0x4c00,
    // Natural-width controls.
    VMCS_CTRL_CR0_MASK = 0x6000, VMCS_CTRL_CR4_MASK = 0x6002,
    VMCS_CTRL_CR0_SHADOW = 0x6004, VMCS_CTRL_CR4_SHADOW = 0x6006,
    VMCS_CTRL_CR3_VALUE0 = 0x6008, VMCS_CTRL_CR3_VALUE1 = 0x600a,
    VMCS_CTRL_CR3_VALUE2 = 0x600c, VMCS_CTRL_CR3_VALUE3 = 0x600e,
    // Natural-width read-only data.
    VMCS_RO_EXIT_QUALIFIC = 0x6400, VMCS_RO_IO_RCX = 0x6402, VMCS_RO_IO_RSI = 0x6404,
    VMCS_RO_IO_RDI = 0x6406, VMCS_RO_IO_RIP = 0x6408, VMCS_RO_GUEST_LIN_ADDR = 0x640a,
    // Natural-width guest state.
    VMCS_GUEST_CR0 = 0x6800, VMCS_GUEST_CR3 = 0x6802, VMCS_GUEST_CR4 = 0x6804,
    VMCS_GUEST_ES_BASE = 0x6806, VMCS_GUEST_CS_BASE = 0x6808, VMCS_GUEST_SS_BASE = 0x680a,
    VMCS_GUEST_DS_BASE = 0x680c, VMCS_GUEST_FS_BASE = 0x680e, VMCS_GUEST_GS_BASE = 0x6810,
    VMCS_GUEST_LDTR_BASE = 0x6812, VMCS_GUEST_TR_BASE = 0x6814,
    VMCS_GUEST_GDTR_BASE = 0x6816, VMCS_GUEST_IDTR_BASE = 0x6818,
    VMCS_GUEST_DR7 = 0x681a, VMCS_GUEST_RSP = 0x681c, VMCS_GUEST_RIP = 0x681e,
    VMCS_GUEST_RFLAGS = 0x6820, VMCS_GUEST_DEBUG_EXC = 0x6822,
    VMCS_GUEST_SYSENTER_ESP = 0x6824, VMCS_GUEST_SYSENTER_EIP = 0x6826,
    // Natural-width host state.
    VMCS_HOST_CR0 = 0x6c00, VMCS_HOST_CR3 = 0x6c02, VMCS_HOST_CR4 = 0x6c04,
    VMCS_HOST_FS_BASE = 0x6c06, VMCS_HOST_GS_BASE = 0x6c08, VMCS_HOST_TR_BASE = 0x6c0a,
    VMCS_HOST_GDTR_BASE = 0x6c0c, VMCS_HOST_IDTR_BASE = 0x6c0e,
    VMCS_HOST_IA32_SYSENTER_ESP = 0x6c10, VMCS_HOST_IA32_SYSENTER_EIP = 0x6c12,
    VMCS_HOST_RSP = 0x6c14, VMCS_HOST_RIP = 0x6c16,
}

/// The width class of a field, from encoding bits 14:13 (SDM 25.11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldWidth {
    Bits16,
    Bits64,
    Bits32,
    Natural,
}

/// Which width class a field encoding belongs to.
pub fn field_width(field: u32) -> FieldWidth {
    match (field >> 13) & 3 {
        0 => FieldWidth::Bits16,
        1 => FieldWidth::Bits64,
        2 => FieldWidth::Bits32,
        _ => FieldWidth::Natural,
    }
}

/// Read-only fields have type 1 in encoding bits 11:10 (SDM 25.11.2).
pub fn field_is_read_only(field: u32) -> bool {
    (field >> 10) & 3 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_carry_their_width_and_access_type() {
        assert_eq!(field_width(VMCS_GUEST_CS), FieldWidth::Bits16);
        assert_eq!(field_width(VMCS_GUEST_IA32_EFER), FieldWidth::Bits64);
        assert_eq!(field_width(VMCS_RO_EXIT_REASON), FieldWidth::Bits32);
        assert_eq!(field_width(VMCS_GUEST_RIP), FieldWidth::Natural);
        assert!(field_is_read_only(VMCS_RO_EXIT_QUALIFIC));
        assert!(field_is_read_only(VMCS_GUEST_PHYSICAL_ADDRESS));
        assert!(!field_is_read_only(VMCS_CTRL_CPU_BASED));
        assert_eq!(vmcs_field_name(0x4402), Some("VMCS_RO_EXIT_REASON"));
        // No two names share an encoding.
        let mut all = ALL_FIELDS.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), ALL_FIELDS.len());
    }
}
