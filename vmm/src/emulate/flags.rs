//! Operand sizes and the arithmetic status flags (OF SF ZF AF PF CF) of the two-operand
//! integer instructions, as the SDM defines them per instruction (vol. 1, 3.4.3.1 and
//! appendix A; vol. 2, each instruction's "Flags Affected").

use super::cpu::Rflags;

/// An integer operand size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpSize {
    B1,
    B2,
    B4,
    B8,
}

impl OpSize {
    /// The size of an operand of `bytes` bytes, if it is one of the integer sizes.
    pub fn from_bytes(bytes: usize) -> Option<OpSize> {
        match bytes {
            1 => Some(OpSize::B1),
            2 => Some(OpSize::B2),
            4 => Some(OpSize::B4),
            8 => Some(OpSize::B8),
            _ => None,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            OpSize::B1 => 1,
            OpSize::B2 => 2,
            OpSize::B4 => 4,
            OpSize::B8 => 8,
        }
    }

    pub fn bits(self) -> u32 {
        self.bytes() as u32 * 8
    }

    /// All bits of an operand of this size.
    pub fn mask(self) -> u64 {
        match self {
            OpSize::B8 => u64::MAX,
            _ => (1u64 << self.bits()) - 1,
        }
    }

    /// The sign bit of an operand of this size.
    pub fn sign_bit(self) -> u64 {
        1u64 << (self.bits() - 1)
    }

    /// Sign-extends a value of this size to 64 bits.
    pub fn sign_extend(self, value: u64) -> u64 {
        let unused = 64 - self.bits();
        (((value << unused) as i64) >> unused) as u64
    }
}

/// The two-operand arithmetic and logic operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AluOp {
    Add,
    /// Add with carry-in from CF.
    Adc,
    Sub,
    /// Subtract with borrow-in from CF.
    Sbb,
    And,
    Or,
    Xor,
}

/// The auxiliary-carry flag looks at the carry out of bit 3 (into bit 4).
const AF_BIT: u64 = 1 << 4;
/// PF reflects only the least-significant byte of the result.
const PF_BYTE_MASK: u64 = 0xff;

/// Computes `a op b` at `size` and the resulting RFLAGS. Returns the (size-masked)
/// result and `rflags` with the six status flags replaced; other bits are kept.
///
/// - ADD/ADC/SUB/SBB: all six flags as the SDM defines them.
/// - AND/OR/XOR (and TEST, which is AND without the write): OF and CF cleared, SF ZF PF
///   from the result. AF is architecturally undefined; it is cleared here, which is
///   what current Intel CPUs do and keeps the result deterministic.
pub(crate) fn alu(op: AluOp, size: OpSize, a: u64, b: u64, rflags: u64) -> (u64, u64) {
    let mask = size.mask();
    let (a, b) = (a & mask, b & mask);
    let carry_in = u64::from(rflags & Rflags::CF.bits() != 0);
    let sign = size.sign_bit();

    let mut flags = Rflags::empty();
    let result = match op {
        AluOp::Add | AluOp::Adc => {
            let c = if op == AluOp::Adc { carry_in } else { 0 };
            // Widen to 128 bits so the carry out of the top bit is visible at every size.
            let wide = u128::from(a) + u128::from(b) + u128::from(c);
            let r = (wide as u64) & mask;
            flags.set(Rflags::CF, wide > u128::from(mask));
            // Signed overflow: both inputs have the same sign and the result differs.
            flags.set(Rflags::OF, (a ^ r) & (b ^ r) & sign != 0);
            flags.set(Rflags::AF, (a ^ b ^ r) & AF_BIT != 0);
            r
        }
        AluOp::Sub | AluOp::Sbb => {
            let c = if op == AluOp::Sbb { carry_in } else { 0 };
            let r = a.wrapping_sub(b).wrapping_sub(c) & mask;
            // Borrow: the subtrahend (with borrow-in) exceeds the minuend, unsigned.
            flags.set(Rflags::CF, u128::from(b) + u128::from(c) > u128::from(a));
            // Signed overflow: inputs of different sign, and the result's sign differs
            // from the minuend's.
            flags.set(Rflags::OF, (a ^ b) & (a ^ r) & sign != 0);
            flags.set(Rflags::AF, (a ^ b ^ r) & AF_BIT != 0);
            r
        }
        AluOp::And => a & b,
        AluOp::Or => a | b,
        AluOp::Xor => a ^ b,
    };
    flags.set(Rflags::SF, result & sign != 0);
    flags.set(Rflags::ZF, result == 0);
    // PF is set when the low byte has an even number of 1 bits.
    flags.set(Rflags::PF, (result & PF_BYTE_MASK).count_ones() & 1 == 0);

    let rflags = (rflags & !Rflags::STATUS.bits()) | flags.bits();
    (result, rflags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CF: u64 = Rflags::CF.bits();
    const PF: u64 = Rflags::PF.bits();
    const AF: u64 = Rflags::AF.bits();
    const ZF: u64 = Rflags::ZF.bits();
    const SF: u64 = Rflags::SF.bits();
    const OF: u64 = Rflags::OF.bits();
    const FIXED: u64 = Rflags::FIXED.bits();

    fn status(op: AluOp, size: OpSize, a: u64, b: u64, rflags: u64) -> (u64, u64) {
        let (r, f) = alu(op, size, a, b, rflags);
        (r, f & Rflags::STATUS.bits())
    }

    #[test]
    fn add_flags_at_each_size() {
        // 0x7f + 1: signed overflow, AF (0xf + 1), result 0x80 has odd parity.
        assert_eq!(
            status(AluOp::Add, OpSize::B1, 0x7f, 1, 0),
            (0x80, OF | SF | AF)
        );
        // 0xff + 1: carry out, zero, even parity, AF.
        assert_eq!(
            status(AluOp::Add, OpSize::B1, 0xff, 1, 0),
            (0, CF | ZF | PF | AF)
        );
        assert_eq!(
            status(AluOp::Add, OpSize::B2, 0xffff, 0x0002, 0),
            (1, CF | AF)
        );
        assert_eq!(
            status(AluOp::Add, OpSize::B4, 0x8000_0000, 0x8000_0000, 0),
            (0, CF | OF | ZF | PF)
        );
        assert_eq!(
            status(AluOp::Add, OpSize::B8, u64::MAX, 1, 0),
            (0, CF | ZF | PF | AF)
        );
        assert_eq!(
            status(AluOp::Add, OpSize::B8, 0x7fff_ffff_ffff_ffff, 1, 0).1,
            OF | SF | AF | PF
        );
        // Inputs above the size are ignored.
        assert_eq!(status(AluOp::Add, OpSize::B1, 0x1_01, 0x2_02, 0), (3, PF));
    }

    #[test]
    fn adc_and_sbb_use_carry_in() {
        assert_eq!(
            status(AluOp::Adc, OpSize::B1, 0xfe, 1, CF),
            (0, CF | ZF | PF | AF)
        );
        assert_eq!(
            status(AluOp::Adc, OpSize::B8, u64::MAX, u64::MAX, CF),
            (u64::MAX, CF | SF | PF | AF)
        );
        assert_eq!(
            status(AluOp::Sbb, OpSize::B1, 0, 0, CF),
            (0xff, CF | SF | PF | AF)
        );
        assert_eq!(status(AluOp::Sbb, OpSize::B2, 5, 4, CF), (0, ZF | PF));
    }

    #[test]
    fn sub_flags() {
        // 0 - 1: borrow, all ones, AF borrow from bit 4.
        assert_eq!(
            status(AluOp::Sub, OpSize::B4, 0, 1, 0),
            (0xffff_ffff, CF | SF | PF | AF)
        );
        // 0x80 - 1: signed overflow (-128 - 1), AF.
        assert_eq!(status(AluOp::Sub, OpSize::B1, 0x80, 1, 0), (0x7f, OF | AF));
        // Equal: ZF, PF.
        assert_eq!(status(AluOp::Sub, OpSize::B8, 42, 42, 0), (0, ZF | PF));
        // 0x10 - 1: AF set (borrow out of bit 4), no CF.
        assert_eq!(status(AluOp::Sub, OpSize::B2, 0x10, 1, 0), (0xf, AF | PF));
        // 1 - 0x8000: 1 - (-32768) overflows 16 bits.
        assert_eq!(
            status(AluOp::Sub, OpSize::B2, 1, 0x8000, 0),
            (0x8001, CF | OF | SF)
        );
    }

    #[test]
    fn logic_clears_of_cf_af_and_keeps_other_bits() {
        let all = CF | OF | AF | FIXED | Rflags::DF.bits();
        let (r, f) = alu(AluOp::And, OpSize::B4, 0xf0f0, 0x0ff0, all);
        assert_eq!(r, 0x00f0);
        assert_eq!(f, FIXED | Rflags::DF.bits() | PF);
        assert_eq!(
            status(AluOp::Or, OpSize::B1, 0x80, 0x01, 0),
            (0x81, SF | PF)
        );
        assert_eq!(status(AluOp::Xor, OpSize::B8, 7, 7, all), (0, ZF | PF));
    }

    #[test]
    fn sizes() {
        assert_eq!(OpSize::B2.sign_extend(0x8000), 0xffff_ffff_ffff_8000);
        assert_eq!(OpSize::B8.mask(), u64::MAX);
        assert_eq!(OpSize::from_bytes(3), None);
    }
}
