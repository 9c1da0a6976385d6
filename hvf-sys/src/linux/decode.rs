//! Finding the exiting instruction in guest code, with iced-x86.
//!
//! KVM reports an IO or MMIO exit without the instruction's length, and on some hosts
//! after the instruction has already retired (RIP past it). VT-x reports the length and
//! leaves RIP at the instruction. This module identifies the instruction: forwards from
//! RIP (string/REP bits, immediate port) or, when KVM already retired it, backwards: the
//! candidates of length 1..15 ending at RIP that decode to exactly that length and are an
//! instruction of the reported kind.
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, InstructionInfoFactory, OpAccess, Register};

/// Longest x86 instruction (SDM vol. 2, 2.3.11).
pub const MAX_INSN_LEN: usize = 15;

/// What the decoder says about a port-I/O instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoInsn {
    pub len: usize,
    pub is_in: bool,
    pub size: u8,
    pub string: bool,
    pub rep: bool,
    /// Port given as an 8-bit immediate (`out 0x80, al`), not in DX.
    pub immediate: bool,
    pub port_imm: Option<u16>,
}

/// Classifies a decoded instruction as port I/O.
pub fn io_insn(instr: &Instruction) -> Option<IoInsn> {
    // (is_in, size, string, immediate)
    let (is_in, size, string, immediate) = match instr.code() {
        Code::In_AL_imm8 => (true, 1, false, true),
        Code::In_AX_imm8 => (true, 2, false, true),
        Code::In_EAX_imm8 => (true, 4, false, true),
        Code::In_AL_DX => (true, 1, false, false),
        Code::In_AX_DX => (true, 2, false, false),
        Code::In_EAX_DX => (true, 4, false, false),
        Code::Out_imm8_AL => (false, 1, false, true),
        Code::Out_imm8_AX => (false, 2, false, true),
        Code::Out_imm8_EAX => (false, 4, false, true),
        Code::Out_DX_AL => (false, 1, false, false),
        Code::Out_DX_AX => (false, 2, false, false),
        Code::Out_DX_EAX => (false, 4, false, false),
        Code::Insb_m8_DX => (true, 1, true, false),
        Code::Insw_m16_DX => (true, 2, true, false),
        Code::Insd_m32_DX => (true, 4, true, false),
        Code::Outsb_DX_m8 => (false, 1, true, false),
        Code::Outsw_DX_m16 => (false, 2, true, false),
        Code::Outsd_DX_m32 => (false, 4, true, false),
        _ => return None,
    };
    Some(IoInsn {
        len: instr.len(),
        is_in,
        size,
        string,
        rep: string && instr.has_rep_prefix(),
        immediate,
        port_imm: if immediate { Some(instr.immediate8() as u16) } else { None },
    })
}

/// Legacy prefixes (SDM vol. 2, 2.1.1): operand/address size, REP/REPNE, LOCK, segments.
fn is_legacy_prefix(byte: u8) -> bool {
    matches!(byte, 0x66 | 0x67 | 0xf2 | 0xf3 | 0xf0 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65)
}

/// The port-I/O instruction at the start of `bytes`, recognised from its opcode alone
/// (E4-E7 IN/OUT imm8, EC-EF IN/OUT DX, 6C-6F INS/OUTS; SDM vol. 2, "IN", "OUT", "INS",
/// "OUTS"), without the full decoder: this runs at every IO exit. Length: prefixes +
/// opcode (+ imm8). `None` for anything else (then the full decoder decides).
pub fn io_opcode_at(bitness: u32, bytes: &[u8]) -> Option<IoInsn> {
    let mut i = 0;
    let mut operand16 = bitness == 16;
    let mut rep = false;
    while i < bytes.len() && i < MAX_INSN_LEN && is_legacy_prefix(bytes[i]) {
        match bytes[i] {
            0x66 => operand16 = bitness != 16,
            0xf3 | 0xf2 => rep = true,
            _ => {}
        }
        i += 1;
    }
    if bitness == 64 && bytes.get(i).is_some_and(|b| b & 0xf0 == 0x40) {
        i += 1; // REX: no effect on port I/O operand sizes
    }
    let opcode = *bytes.get(i)?;
    let wide = if operand16 { 2 } else { 4 };
    let (is_in, size, string, immediate) = match opcode {
        0xe4 => (true, 1, false, true),
        0xe5 => (true, wide, false, true),
        0xe6 => (false, 1, false, true),
        0xe7 => (false, wide, false, true),
        0xec => (true, 1, false, false),
        0xed => (true, wide, false, false),
        0xee => (false, 1, false, false),
        0xef => (false, wide, false, false),
        0x6c => (true, 1, true, false),
        0x6d => (true, wide, true, false),
        0x6e => (false, 1, true, false),
        0x6f => (false, wide, true, false),
        _ => return None,
    };
    let port_imm = if immediate { Some(*bytes.get(i + 1)? as u16) } else { None };
    Some(IoInsn {
        len: i + 1 + immediate as usize,
        is_in,
        size,
        string,
        rep: string && rep,
        immediate,
        port_imm,
    })
}

/// [`io_at`] through the opcode table first, the full decoder only if that fails.
pub fn io_at_fast(bitness: u32, bytes: &[u8], ip: u64, port: u16, size: u8, is_in: bool, dx: u16) -> Option<IoInsn> {
    match io_opcode_at(bitness, bytes) {
        Some(io) => {
            let insn_port = io.port_imm.unwrap_or(dx);
            (io.is_in == is_in && io.size == size && insn_port == port).then_some(io)
        }
        None => io_at(bitness, bytes, ip, port, size, is_in, dx),
    }
}

fn decode_one(bitness: u32, bytes: &[u8], ip: u64) -> Option<Instruction> {
    let mut decoder = Decoder::try_with_ip(bitness, bytes, ip, DecoderOptions::NONE).ok()?;
    if !decoder.can_decode() {
        return None;
    }
    let instr = decoder.decode();
    if instr.is_invalid() { None } else { Some(instr) }
}

/// The I/O instruction at the start of `bytes` if it matches the exit (`port`, `size`,
/// direction). `dx` is the guest's DX, for DX-port forms.
pub fn io_at(bitness: u32, bytes: &[u8], ip: u64, port: u16, size: u8, is_in: bool, dx: u16) -> Option<IoInsn> {
    let instr = decode_one(bitness, bytes, ip)?;
    let io = io_insn(&instr)?;
    let insn_port = io.port_imm.unwrap_or(dx);
    (io.is_in == is_in && io.size == size && insn_port == port).then_some(io)
}

/// Backwards search for a port-I/O instruction that ends at `end_ip`: `before` holds the
/// (up to 15) bytes preceding it. The shortest candidate wins (a longer one would have to
/// swallow bytes of the previous instruction as prefixes).
pub fn io_before(bitness: u32, before: &[u8], end_ip: u64, port: u16, size: u8, is_in: bool, dx: u16) -> Option<IoInsn> {
    for len in 1..=before.len().min(MAX_INSN_LEN) {
        let start = before.len() - len;
        let ip = end_ip.wrapping_sub(len as u64);
        if let Some(io) = io_at(bitness, &before[start..], ip, port, size, is_in, dx) {
            if io.len == len {
                return Some(io);
            }
        }
    }
    None
}

/// Register and segment-base values for computing a memory operand's address.
pub trait RegisterFile {
    /// The full 64-bit value of a general-purpose register (iced's full register).
    fn gpr(&self, reg: Register) -> Option<u64>;
    /// The base of a segment register (ES, CS, SS, DS, FS, GS).
    fn segment_base(&self, reg: Register) -> Option<u64>;
}

fn register_value(regs: &dyn RegisterFile, reg: Register, next_ip: u64) -> Option<u64> {
    if reg.is_segment_register() {
        return regs.segment_base(reg);
    }
    if matches!(reg, Register::RIP | Register::EIP) {
        return Some(next_ip);
    }
    let full = regs.gpr(reg.full_register())?;
    Some(match reg.size() {
        1 if matches!(reg, Register::AH | Register::CH | Register::DH | Register::BH) => (full >> 8) & 0xff,
        1 => full & 0xff,
        2 => full & 0xffff,
        4 => full & 0xffff_ffff,
        _ => full,
    })
}

/// How to compare a computed linear address with the exit's guest-physical address:
/// equal when paging is off, equal within the page when it is on (the translation is not
/// walked: page offset, access size and kind together make a false match unlikely).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressMatch {
    Exact,
    PageOffset,
}

fn address_matches(linear: u64, gpa: u64, how: AddressMatch) -> bool {
    match how {
        AddressMatch::Exact => linear == gpa,
        AddressMatch::PageOffset => linear & 0xfff == gpa & 0xfff,
    }
}

/// Whether `instr` writes `size` bytes to memory at `gpa` (as seen through `how`).
pub fn writes_to(instr: &Instruction, regs: &dyn RegisterFile, size: usize, gpa: u64, how: AddressMatch) -> bool {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(instr);
    let next_ip = instr.next_ip();
    info.used_memory().iter().any(|mem| {
        let writes = matches!(mem.access(), OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite
            | OpAccess::ReadCondWrite);
        writes
            && mem.memory_size().size() == size
            && mem
                .virtual_address(0, |reg, _, _| register_value(regs, reg, next_ip))
                .is_some_and(|linear| address_matches(linear, gpa, how))
    })
}

/// Backwards search for a store of `size` bytes to `gpa` that ends at `end_ip`; returns
/// its length. Shortest candidate first, as in [`io_before`].
pub fn store_before(bitness: u32, before: &[u8], end_ip: u64, regs: &dyn RegisterFile, size: usize, gpa: u64,
    how: AddressMatch) -> Option<usize> {
    for len in 1..=before.len().min(MAX_INSN_LEN) {
        let start = before.len() - len;
        let ip = end_ip.wrapping_sub(len as u64);
        if let Some(instr) = decode_one(bitness, &before[start..], ip) {
            if instr.len() == len && writes_to(&instr, regs, size, gpa, how) {
                return Some(len);
            }
        }
    }
    None
}

/// The instruction at the start of `bytes`, if it stores `size` bytes at `gpa` (used
/// for string stores that KVM leaves unfinished, RIP still at them); its length.
pub fn store_at(bitness: u32, bytes: &[u8], ip: u64, regs: &dyn RegisterFile, size: usize, gpa: u64,
    how: AddressMatch) -> Option<usize> {
    let instr = decode_one(bitness, bytes, ip)?;
    writes_to(&instr, regs, size, gpa, how).then_some(instr.len())
}

/// Length of the instruction at the start of `bytes`.
pub fn length_at(bitness: u32, bytes: &[u8], ip: u64) -> Option<usize> {
    decode_one(bitness, bytes, ip).map(|i| i.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Regs {
        rax: u64,
        rbx: u64,
        ds_base: u64,
    }

    impl RegisterFile for Regs {
        fn gpr(&self, reg: Register) -> Option<u64> {
            match reg {
                Register::RAX => Some(self.rax),
                Register::RBX => Some(self.rbx),
                _ => Some(0),
            }
        }
        fn segment_base(&self, reg: Register) -> Option<u64> {
            Some(if reg == Register::DS { self.ds_base } else { 0 })
        }
    }

    #[test]
    fn out_dx_al_found_backwards() {
        // mov dx, 0x3f8 (BA F8 03); mov al, 0x41 (B0 41); out dx, al (EE) -- RIP after it.
        let code = [0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee];
        let end = 0x1000 + code.len() as u64;
        let io = io_before(16, &code, end, 0x3f8, 1, false, 0x3f8).expect("found");
        assert_eq!((io.len, io.immediate, io.string), (1, false, false));
        // The wrong port or size finds nothing.
        assert_eq!(io_before(16, &code, end, 0x3f9, 1, false, 0x3f8), None);
        assert_eq!(io_before(16, &code, end, 0x3f8, 2, false, 0x3f8), None);
    }

    #[test]
    fn out_imm8_found_backwards() {
        // nop (90); out 0x80, al (E6 80). The 1-byte candidate (80) is no OUT.
        let code = [0x90, 0xe6, 0x80];
        let io = io_before(16, &code, 0x103, 0x80, 1, false, 0).expect("found");
        assert_eq!((io.len, io.immediate, io.port_imm), (2, true, Some(0x80)));
        // 66 E7 80 in 16-bit code is `out 0x80, eax`.
        let code = [0x90, 0x66, 0xe7, 0x80];
        assert_eq!(io_before(16, &code, 0x104, 0x80, 4, false, 0).map(|i| i.len), Some(3));
    }

    #[test]
    fn string_io_forwards() {
        // rep outsb (F3 6E); rep insw (F3 6D) in 16-bit code.
        let io = io_at(16, &[0xf3, 0x6e], 0, 0x3f8, 1, false, 0x3f8).expect("outsb");
        assert_eq!((io.len, io.string, io.rep), (2, true, true));
        let io = io_at(16, &[0xf3, 0x6d], 0, 0x60, 2, true, 0x60).expect("insw");
        assert_eq!((io.len, io.string, io.rep, io.is_in), (2, true, true, true));
        // in al, dx (EC)
        let io = io_at(16, &[0xec], 0, 0x3f8, 1, true, 0x3f8).expect("in");
        assert_eq!((io.len, io.string, io.immediate), (1, false, false));
    }

    #[test]
    fn opcode_table_agrees_with_the_decoder() {
        let cases: &[(u32, &[u8])] = &[
            (16, &[0xee]), (16, &[0xec]), (16, &[0xe6, 0x80]), (16, &[0x66, 0xe7, 0x80]), (32, &[0xe7, 0x80]),
            (32, &[0x66, 0xed]), (16, &[0xf3, 0x6e]), (32, &[0xf3, 0x6d]), (64, &[0xf3, 0x48, 0x6f]),
            (64, &[0x66, 0xef]), (16, &[0x2e, 0xf3, 0x6f]), (64, &[0xe5, 0x71]),
        ];
        for &(bitness, bytes) in cases {
            let decoder = decode_one(bitness, bytes, 0).and_then(|i| io_insn(&i));
            assert_eq!(io_opcode_at(bitness, bytes), decoder, "{bytes:x?} in {bitness}-bit code");
        }
        assert_eq!(io_opcode_at(16, &[0x90]), None);
        assert_eq!(io_opcode_at(16, &[0xe6]), None); // imm8 missing
    }

    #[test]
    fn store_found_backwards_among_other_bytes() {
        // 64-bit: mov ecx, 5 (B9 05 00 00 00); mov [rbx+8], eax (89 43 08).
        let code = [0xb9, 0x05, 0x00, 0x00, 0x00, 0x89, 0x43, 0x08];
        let regs = Regs { rax: 0x1234, rbx: 0xfee0_0000, ds_base: 0 };
        let end = 0x2000 + code.len() as u64;
        assert_eq!(store_before(64, &code, end, &regs, 4, 0xfee0_0008, AddressMatch::Exact), Some(3));
        // Wrong size or address: no candidate.
        assert_eq!(store_before(64, &code, end, &regs, 8, 0xfee0_0008, AddressMatch::Exact), None);
        assert_eq!(store_before(64, &code, end, &regs, 4, 0xfee0_0010, AddressMatch::Exact), None);
        // With paging only the page offset is compared.
        assert_eq!(store_before(64, &code, end, &regs, 4, 0x1_2345_6008, AddressMatch::PageOffset), Some(3));
        // mov [rbx+8], rax (48 89 43 08): the REX.W byte belongs to it.
        let code = [0x90, 0x48, 0x89, 0x43, 0x08];
        assert_eq!(store_before(64, &code, 0x3005, &regs, 8, 0xfee0_0008, AddressMatch::Exact), Some(4));
    }

    #[test]
    fn real_mode_store_uses_the_segment_base() {
        // 16-bit: mov [bx], al (88 07) with DS base 0x10000 and BX 0x20.
        let regs = Regs { rax: 0x41, rbx: 0x20, ds_base: 0x10000 };
        assert_eq!(store_before(16, &[0x88, 0x07], 0x102, &regs, 1, 0x10020, AddressMatch::Exact), Some(2));
        // A load (mov al, [bx]: 8A 07) is no store.
        assert_eq!(store_before(16, &[0x8a, 0x07], 0x102, &regs, 1, 0x10020, AddressMatch::Exact), None);
    }
}
