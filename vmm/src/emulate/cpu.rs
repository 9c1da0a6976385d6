//! The CPU state the emulator sees: a snapshot of the vCPU registers it reads and writes,
//! and how to interpret them (operating mode, segment bases, sub-registers).

use bitflags::bitflags;
use iced_x86::Register;

bitflags! {
    /// The CR0 bits the emulator looks at (SDM vol. 3, 2.5).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cr0: u64 {
        /// Protection enable: protected mode (else real mode).
        const PE = 1 << 0;
        /// Write protect: supervisor writes honour read-only pages (SDM 4.6).
        const WP = 1 << 16;
        /// Paging enabled.
        const PG = 1 << 31;
    }

    /// The CR4 bits the emulator looks at (SDM vol. 3, 2.5).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cr4: u64 {
        /// Page size extensions: 4 MiB pages with 32-bit paging.
        const PSE = 1 << 4;
        /// Physical address extension: PAE or 4/5-level paging.
        const PAE = 1 << 5;
        /// 57-bit linear addresses: 5-level paging in IA-32e mode.
        const LA57 = 1 << 12;
        /// Supervisor-mode execution prevention (SDM 4.6).
        const SMEP = 1 << 20;
        /// Supervisor-mode access prevention (SDM 4.6).
        const SMAP = 1 << 21;
    }

    /// The IA32_EFER bits the emulator looks at (SDM vol. 3, 2.2.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Efer: u64 {
        /// Long mode enable.
        const LME = 1 << 8;
        /// Long mode active (IA-32e mode): set by the CPU when LME and CR0.PG are both set.
        const LMA = 1 << 10;
        /// Execute-disable bit enable: bit 63 of paging entries means "no execute".
        const NXE = 1 << 11;
    }

    /// RFLAGS (SDM vol. 1, 3.4.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rflags: u64 {
        /// Carry.
        const CF = 1 << 0;
        /// Bit 1 is reserved and always reads as 1.
        const FIXED = 1 << 1;
        /// Parity (of the low byte of the result).
        const PF = 1 << 2;
        /// Auxiliary carry (out of bit 3).
        const AF = 1 << 4;
        /// Zero.
        const ZF = 1 << 6;
        /// Sign.
        const SF = 1 << 7;
        /// Trap.
        const TF = 1 << 8;
        /// Interrupt enable.
        const IF = 1 << 9;
        /// Direction: string instructions walk downwards when set.
        const DF = 1 << 10;
        /// Overflow.
        const OF = 1 << 11;
        /// Virtual-8086 mode.
        const VM = 1 << 17;
        /// Alignment check / access control: lets supervisor code touch user pages under
        /// SMAP (SDM vol. 3, 4.6).
        const AC = 1 << 18;

        /// The six arithmetic status flags.
        const STATUS = Self::CF.bits() | Self::PF.bits() | Self::AF.bits()
            | Self::ZF.bits() | Self::SF.bits() | Self::OF.bits();
    }

    /// The CS access-rights bits that decide the code size, in the VMX layout of the
    /// guest CS access-rights field (SDM vol. 3, 25.4.1, table 25-2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CsAccessRights: u32 {
        /// L: 64-bit code segment (meaningful in IA-32e mode only).
        const L = 1 << 13;
        /// D/B: default operation size 32 bits (else 16).
        const DB = 1 << 14;
    }
}

/// The guest MAXPHYADDR assumed by [`CpuState::default`]: what most Intel client CPUs
/// report in CPUID 80000008H:EAX[7:0].
pub const DEFAULT_PHYS_ADDR_BITS: u8 = 39;

/// The lowest and highest MAXPHYADDR the architecture allows (SDM vol. 3, 4.1.4).
const MIN_PHYS_ADDR_BITS: u8 = 32;
const MAX_PHYS_ADDR_BITS: u8 = 52;

/// The CPU state the emulator sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuState {
    /// General-purpose registers in SDM encoding order: RAX RCX RDX RBX RSP RBP RSI RDI
    /// R8..R15.
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// Segment bases, ES CS SS DS FS GS order (index with [`Segment`]). In real and
    /// virtual-8086 mode the base is selector * 16, which the VMCS holds already.
    pub seg_base: [u64; 6],
    /// CS access rights in VMX format (bit 13 L, bit 14 D/B): decides the code size.
    pub cs_ar: u32,
    /// Current privilege level (SS.DPL) for the U/S paging checks.
    pub cpl: u8,
    /// The guest's MAXPHYADDR (CPUID 80000008H:EAX[7:0] as the guest sees it): decides
    /// which physical-address bits of a paging entry are reserved (SDM vol. 3, 4.1.4).
    /// Clamped to 32..=52 when used.
    pub phys_addr_bits: u8,
}

impl Default for CpuState {
    /// The architectural reset state as far as the emulator cares: real mode, RFLAGS
    /// with only its fixed bit.
    fn default() -> Self {
        CpuState {
            gprs: [0; 16],
            rip: 0,
            rflags: Rflags::FIXED.bits(),
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            seg_base: [0; 6],
            cs_ar: 0,
            cpl: 0,
            phys_addr_bits: DEFAULT_PHYS_ADDR_BITS,
        }
    }
}

/// A segment register, in the order of [`CpuState::seg_base`] (which is also the
/// encoding order of the Sreg field, SDM vol. 2, 3.1.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

impl Segment {
    /// The segment named by an iced segment register, `None` for anything else.
    pub fn from_register(reg: Register) -> Option<Segment> {
        match reg {
            Register::ES => Some(Segment::Es),
            Register::CS => Some(Segment::Cs),
            Register::SS => Some(Segment::Ss),
            Register::DS => Some(Segment::Ds),
            Register::FS => Some(Segment::Fs),
            Register::GS => Some(Segment::Gs),
            _ => None,
        }
    }
}

/// The processor operating mode (SDM vol. 3, 2.2), which decides the code size, the
/// width of linear addresses and how segment bases apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// CR0.PE = 0: 16-bit code, segment base = selector * 16.
    Real,
    /// RFLAGS.VM = 1 in protected mode: 16-bit code at CPL 3.
    Virtual8086,
    /// Protected mode with a 16-bit code segment (CS.D = 0).
    Protected16,
    /// Protected mode with a 32-bit code segment (CS.D = 1).
    Protected32,
    /// IA-32e compatibility mode, 16-bit code segment (CS.L = 0, CS.D = 0).
    Compat16,
    /// IA-32e compatibility mode, 32-bit code segment (CS.L = 0, CS.D = 1).
    Compat32,
    /// IA-32e 64-bit mode (CS.L = 1).
    Long64,
}

impl CpuMode {
    /// The default operand/address size of code in this mode, in bits: what the decoder
    /// needs (16, 32 or 64).
    pub fn code_bits(self) -> u32 {
        match self {
            CpuMode::Real | CpuMode::Virtual8086 | CpuMode::Protected16 | CpuMode::Compat16 => 16,
            CpuMode::Protected32 | CpuMode::Compat32 => 32,
            CpuMode::Long64 => 64,
        }
    }
}

/// Which part of a 64-bit general-purpose register an iced register names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GprPart {
    /// Bits 7:0 (AL, CL, ..., SPL, ..., R15L).
    Low8,
    /// Bits 15:8 (AH, CH, DH, BH: only without a REX prefix, SDM vol. 1, 3.4.1.1).
    High8,
    /// Bits 15:0.
    Low16,
    /// Bits 31:0; writes zero bits 63:32 (SDM vol. 1, 3.4.1.1).
    Low32,
    /// All 64 bits.
    Full,
}

/// Bit positions and widths used to slice a register.
const BYTE_BITS: u32 = 8;
const BYTE_MASK: u64 = 0xff;
const WORD_MASK: u64 = 0xffff;
const DWORD_MASK: u64 = 0xffff_ffff;

/// Linear addresses are 32 bits wide outside IA-32e mode (SDM vol. 3, 3.4).
const LINEAR_MASK_32: u64 = 0xffff_ffff;

/// Locates a general-purpose register: index into `gprs` and the part named.
fn gpr_slot(reg: Register) -> Option<(usize, GprPart)> {
    let part = if reg.is_gpr8() {
        if matches!(
            reg,
            Register::AH | Register::CH | Register::DH | Register::BH
        ) {
            GprPart::High8
        } else {
            GprPart::Low8
        }
    } else if reg.is_gpr16() {
        GprPart::Low16
    } else if reg.is_gpr32() {
        GprPart::Low32
    } else if reg.is_gpr64() {
        GprPart::Full
    } else {
        return None;
    };
    // iced maps every sub-register (AH included) to its 64-bit register, and lists
    // RAX..R15 consecutively in encoding order.
    let full = reg.full_register();
    let index = (full as usize).checked_sub(Register::RAX as usize)?;
    (index < 16).then_some((index, part))
}

impl CpuState {
    /// The operating mode, from CR0.PE, RFLAGS.VM, EFER.LMA and CS.L/D (SDM vol. 3,
    /// 2.2 and 5.2.1).
    pub fn mode(&self) -> CpuMode {
        let cs = CsAccessRights::from_bits_truncate(self.cs_ar);
        let wide = cs.contains(CsAccessRights::DB);
        if !Cr0::from_bits_truncate(self.cr0).contains(Cr0::PE) {
            CpuMode::Real
        } else if Rflags::from_bits_truncate(self.rflags).contains(Rflags::VM) {
            CpuMode::Virtual8086
        } else if Efer::from_bits_truncate(self.efer).contains(Efer::LMA) {
            if cs.contains(CsAccessRights::L) {
                CpuMode::Long64
            } else if wide {
                CpuMode::Compat32
            } else {
                CpuMode::Compat16
            }
        } else if wide {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }

    /// The privilege level paging checks use: real mode runs at 0 and virtual-8086 mode
    /// at 3 whatever SS says (SDM vol. 3, 20.2).
    pub fn effective_cpl(&self) -> u8 {
        match self.mode() {
            CpuMode::Real => 0,
            CpuMode::Virtual8086 => 3,
            _ => self.cpl & 3,
        }
    }

    /// MAXPHYADDR, clamped to the architectural range.
    pub fn phys_bits(&self) -> u32 {
        u32::from(
            self.phys_addr_bits
                .clamp(MIN_PHYS_ADDR_BITS, MAX_PHYS_ADDR_BITS),
        )
    }

    pub fn rflags(&self) -> Rflags {
        Rflags::from_bits_retain(self.rflags)
    }

    pub fn cr0(&self) -> Cr0 {
        Cr0::from_bits_retain(self.cr0)
    }

    pub fn cr4(&self) -> Cr4 {
        Cr4::from_bits_retain(self.cr4)
    }

    pub fn efer(&self) -> Efer {
        Efer::from_bits_retain(self.efer)
    }

    /// The base a segment contributes to a linear address. In 64-bit mode only FS and
    /// GS have one; the others are treated as 0 (SDM vol. 3, 3.2.4).
    pub fn segment_base(&self, seg: Segment) -> u64 {
        let base = self.seg_base[seg as usize];
        match self.mode() {
            CpuMode::Long64 if !matches!(seg, Segment::Fs | Segment::Gs) => 0,
            CpuMode::Long64 => base,
            _ => base & LINEAR_MASK_32,
        }
    }

    /// Masks a linear address to the width the mode has: 64 bits in 64-bit mode, 32
    /// bits everywhere else (where segment base + offset wraps at 4 GiB).
    pub fn wrap_linear(&self, linear: u64) -> u64 {
        if self.mode() == CpuMode::Long64 {
            linear
        } else {
            linear & LINEAR_MASK_32
        }
    }

    /// The linear address of `seg:offset` (segmentation, SDM vol. 3, 3.4). Segment
    /// limits and access rights are not checked: the instruction already passed those
    /// checks on the CPU before it faulted on the EPT.
    pub fn linear(&self, seg: Segment, offset: u64) -> u64 {
        self.wrap_linear(self.segment_base(seg).wrapping_add(offset))
    }

    /// Reads a general-purpose register or sub-register (AL, AH, AX, EAX, RAX, ...).
    /// `None` for anything that is not a general-purpose register.
    pub fn read_reg(&self, reg: Register) -> Option<u64> {
        let (index, part) = gpr_slot(reg)?;
        let full = *self.gprs.get(index)?;
        Some(match part {
            GprPart::Low8 => full & BYTE_MASK,
            GprPart::High8 => (full >> BYTE_BITS) & BYTE_MASK,
            GprPart::Low16 => full & WORD_MASK,
            GprPart::Low32 => full & DWORD_MASK,
            GprPart::Full => full,
        })
    }

    /// Writes a general-purpose register or sub-register with the architectural merge
    /// rules: 8- and 16-bit writes keep the other bits, 32-bit writes zero-extend into
    /// bits 63:32 (SDM vol. 1, 3.4.1.1). Returns `None` (and writes nothing) for anything
    /// that is not a general-purpose register.
    pub fn write_reg(&mut self, reg: Register, value: u64) -> Option<()> {
        let (index, part) = gpr_slot(reg)?;
        let slot = self.gprs.get_mut(index)?;
        *slot = match part {
            GprPart::Low8 => (*slot & !BYTE_MASK) | (value & BYTE_MASK),
            GprPart::High8 => {
                (*slot & !(BYTE_MASK << BYTE_BITS)) | ((value & BYTE_MASK) << BYTE_BITS)
            }
            GprPart::Low16 => (*slot & !WORD_MASK) | (value & WORD_MASK),
            GprPart::Low32 => value & DWORD_MASK,
            GprPart::Full => value,
        };
        Some(())
    }

    /// Advances RIP by `len` bytes, wrapping the way the instruction pointer does in the
    /// current code size (IP wraps at 64 KiB in 16-bit code, EIP at 4 GiB).
    pub fn advance_rip(&mut self, len: usize) {
        let next = self.rip.wrapping_add(len as u64);
        self.rip = match self.mode().code_bits() {
            16 => next & WORD_MASK,
            32 => next & DWORD_MASK,
            _ => next,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_registers_merge_and_zero_extend() {
        let mut cpu = CpuState {
            gprs: [0x1122_3344_5566_7788; 16],
            ..CpuState::default()
        };
        cpu.write_reg(Register::AH, 0xab).unwrap();
        assert_eq!(cpu.gprs[0], 0x1122_3344_5566_ab88);
        assert_eq!(cpu.read_reg(Register::AH), Some(0xab));
        cpu.write_reg(Register::BL, 0x1ff).unwrap();
        assert_eq!(cpu.gprs[3], 0x1122_3344_5566_77ff);
        cpu.write_reg(Register::CX, 0xdead_beef).unwrap();
        assert_eq!(cpu.gprs[1], 0x1122_3344_5566_beef);
        cpu.write_reg(Register::EDX, 0xffff_ffff_8000_0001).unwrap();
        assert_eq!(cpu.gprs[2], 0x8000_0001);
        cpu.write_reg(Register::SIL, 0x42).unwrap();
        assert_eq!(cpu.gprs[6], 0x1122_3344_5566_7742);
        cpu.write_reg(Register::R15D, 7).unwrap();
        assert_eq!(cpu.gprs[15], 7);
        assert_eq!(cpu.read_reg(Register::R9W), Some(0x7788));
        assert_eq!(cpu.read_reg(Register::XMM0), None);
        assert_eq!(cpu.write_reg(Register::ES, 1), None);
    }

    #[test]
    fn modes() {
        let mut cpu = CpuState::default();
        assert_eq!(cpu.mode(), CpuMode::Real);
        cpu.cr0 = Cr0::PE.bits();
        assert_eq!(cpu.mode(), CpuMode::Protected16);
        cpu.cs_ar = CsAccessRights::DB.bits();
        assert_eq!(cpu.mode(), CpuMode::Protected32);
        cpu.rflags |= Rflags::VM.bits();
        assert_eq!(cpu.mode(), CpuMode::Virtual8086);
        assert_eq!(cpu.effective_cpl(), 3);
        cpu.rflags = Rflags::FIXED.bits();
        cpu.efer = (Efer::LME | Efer::LMA).bits();
        assert_eq!(cpu.mode(), CpuMode::Compat32);
        cpu.cs_ar = 0;
        assert_eq!(cpu.mode(), CpuMode::Compat16);
        cpu.cs_ar = CsAccessRights::L.bits();
        assert_eq!(cpu.mode(), CpuMode::Long64);
        assert_eq!(cpu.mode().code_bits(), 64);
    }

    #[test]
    fn segment_bases_by_mode() {
        let mut cpu = CpuState {
            seg_base: [0x10, 0x20, 0x30, 0x40, 0x50, 0x1_0000_0060],
            ..CpuState::default()
        };
        assert_eq!(cpu.linear(Segment::Ds, 0xffff_fff0), 0x30);
        cpu.cr0 = Cr0::PE.bits();
        cpu.efer = Efer::LMA.bits();
        cpu.cs_ar = CsAccessRights::L.bits();
        assert_eq!(cpu.linear(Segment::Ds, 0x1_0000_0000), 0x1_0000_0000);
        assert_eq!(cpu.linear(Segment::Gs, 1), 0x1_0000_0061);
    }

    #[test]
    fn rip_wraps_with_code_size() {
        let mut cpu = CpuState {
            rip: 0xfffe,
            ..CpuState::default()
        };
        cpu.advance_rip(3);
        assert_eq!(cpu.rip, 1);
    }
}
