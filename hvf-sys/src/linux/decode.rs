//! Finding the exiting instruction in guest code, with iced-x86.
//!
//! KVM reports an IO or MMIO exit without the instruction's length, and on some hosts
//! after the instruction has already retired (RIP past it). VT-x reports the length and
//! leaves RIP at the instruction. This module identifies the instruction: forwards from
//! RIP (string/REP bits, immediate port) or, when KVM already retired it, backwards: the
//! candidates of length 1..15 ending at RIP that decode to exactly that length and are an
//! instruction of the reported kind.
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, InstructionInfoFactory, MemorySize, Mnemonic, OpAccess,
    OpKind, Register};

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

/// RFLAGS.DF (SDM vol. 1, 3.4.3.2): string instructions step downwards when set.
pub const RFLAGS_DF: u64 = 1 << 10;

/// Register and segment-base values for computing a memory operand's address.
pub trait RegisterFile {
    /// The full 64-bit value of a general-purpose register (iced's full register).
    fn gpr(&self, reg: Register) -> Option<u64>;
    /// The base of a segment register (ES, CS, SS, DS, FS, GS).
    fn segment_base(&self, reg: Register) -> Option<u64>;
    /// RFLAGS (for DF, the direction of string instructions).
    fn rflags(&self) -> u64;
}

/// The registers a string instruction advances: RSI/RDI by the element size per element
/// (downwards with DF), RCX by one per element under REP; each only in its low 16 or 32
/// bits when the address size is 16 or 32 (SDM vol. 2, "REP", "MOVS", "STOS", "OUTS").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRegs {
    pub rsi: u64,
    pub rdi: u64,
    pub rcx: u64,
}

impl IndexRegs {
    pub fn of(regs: &dyn RegisterFile) -> Self {
        IndexRegs {
            rsi: regs.gpr(Register::RSI).unwrap_or(0),
            rdi: regs.gpr(Register::RDI).unwrap_or(0),
            rcx: regs.gpr(Register::RCX).unwrap_or(0),
        }
    }
}

/// What a string instruction (MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS) does to
/// [`IndexRegs`] per element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringInsn {
    pub len: usize,
    /// Bytes per element.
    pub element: u64,
    pub uses_rsi: bool,
    pub uses_rdi: bool,
    pub rep: bool,
    /// 16, 32 or 64: which part of RSI/RDI/RCX it uses.
    pub address_size: u32,
}

/// Classifies a decoded instruction as a string instruction, from its implicit
/// [R|E]SI / [R|E]DI memory operands.
pub fn string_insn(instr: &Instruction) -> Option<StringInsn> {
    let (mut uses_rsi, mut uses_rdi, mut address_size) = (false, false, 0);
    for i in 0..instr.op_count() {
        match instr.op_kind(i) {
            OpKind::MemorySegSI => (uses_rsi, address_size) = (true, 16),
            OpKind::MemorySegESI => (uses_rsi, address_size) = (true, 32),
            OpKind::MemorySegRSI => (uses_rsi, address_size) = (true, 64),
            OpKind::MemoryESDI => (uses_rdi, address_size) = (true, 16),
            OpKind::MemoryESEDI => (uses_rdi, address_size) = (true, 32),
            OpKind::MemoryESRDI => (uses_rdi, address_size) = (true, 64),
            _ => {}
        }
    }
    if !uses_rsi && !uses_rdi {
        return None;
    }
    Some(StringInsn {
        len: instr.len(),
        element: instr.memory_size().size() as u64,
        uses_rsi,
        uses_rdi,
        // F2 repeats MOVS/STOS/LODS/INS/OUTS as F3 does; for CMPS/SCAS it is REPNE.
        rep: instr.has_rep_prefix() || instr.has_repne_prefix(),
        address_size,
    })
}

/// The string instruction at the start of `bytes`.
pub fn string_at(bitness: u32, bytes: &[u8], ip: u64) -> Option<StringInsn> {
    string_insn(&decode_one(bitness, bytes, ip)?)
}

impl StringInsn {
    fn mask(&self) -> u64 {
        match self.address_size {
            16 => 0xffff,
            32 => 0xffff_ffff,
            _ => u64::MAX,
        }
    }

    /// The registers from before `count` elements, given those after them: RSI/RDI
    /// moved back by `count` elements against the direction DF gives, RCX (REP only)
    /// given its `count` back; only within the address size.
    pub fn rewind(&self, after: IndexRegs, df: bool, count: u64) -> IndexRegs {
        let mask = self.mask();
        let within = |old: u64, new: u64| (old & !mask) | (new & mask);
        let delta = self.element.wrapping_mul(count);
        let back = |reg: u64| within(reg, if df { reg.wrapping_add(delta) } else { reg.wrapping_sub(delta) });
        IndexRegs {
            rsi: if self.uses_rsi { back(after.rsi) } else { after.rsi },
            rdi: if self.uses_rdi { back(after.rdi) } else { after.rdi },
            rcx: if self.rep { within(after.rcx, after.rcx.wrapping_add(count)) } else { after.rcx },
        }
    }
}

/// A register file with RSI, RDI and RCX replaced.
struct WithIndex<'a> {
    inner: &'a dyn RegisterFile,
    index: IndexRegs,
}

impl RegisterFile for WithIndex<'_> {
    fn gpr(&self, reg: Register) -> Option<u64> {
        match reg {
            Register::RSI => Some(self.index.rsi),
            Register::RDI => Some(self.index.rdi),
            Register::RCX => Some(self.index.rcx),
            _ => self.inner.gpr(reg),
        }
    }
    fn segment_base(&self, reg: Register) -> Option<u64> {
        self.inner.segment_base(reg)
    }
    fn rflags(&self) -> u64 {
        self.inner.rflags()
    }
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
        // iced gives REP string operands no size (the count is unknown): one element.
        let mem_size = match mem.memory_size() {
            MemorySize::Unknown => instr.memory_size().size(),
            known => known.size(),
        };
        writes
            && mem_size == size
            && mem
                .virtual_address(0, |reg, _, _| register_value(regs, reg, next_ip))
                .is_some_and(|linear| address_matches(linear, gpa, how))
    })
}

/// A store found for an MMIO write exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Store {
    pub len: usize,
    /// A string store (STOS, MOVS) whose registers KVM had already advanced past the
    /// element of the exit: the [`IndexRegs`] from before that element.
    pub rewound: Option<IndexRegs>,
}

/// Whether `instr` stores `size` bytes at `gpa`. A string instruction is matched first
/// as KVM leaves it at a write exit, its registers already past the one element written
/// (address from the registers one element back), then as not yet advanced.
fn store_match(instr: &Instruction, regs: &dyn RegisterFile, size: usize, gpa: u64, how: AddressMatch) -> Option<Store> {
    if let Some(string) = string_insn(instr) {
        let back = string.rewind(IndexRegs::of(regs), regs.rflags() & RFLAGS_DF != 0, 1);
        if writes_to(instr, &WithIndex { inner: regs, index: back }, size, gpa, how) {
            return Some(Store { len: instr.len(), rewound: Some(back) });
        }
    }
    writes_to(instr, regs, size, gpa, how).then_some(Store { len: instr.len(), rewound: None })
}

/// Whether `instr` stores `data` (the bytes KVM reports written), where the value can be
/// known from registers: MOV and STOS from a register or an immediate. Unknown values
/// (and an empty `data`) agree. This tells apart candidates that differ only in a REX
/// prefix: `44 89 60 30` (mov [rax+0x30], r12d) ends with `89 60 30` (mov [rax+0x30],
/// esp), the same store to the same address from another register.
fn stores_value(instr: &Instruction, regs: &dyn RegisterFile, data: &[u8]) -> bool {
    let value_op = matches!(
        instr.mnemonic(),
        Mnemonic::Mov | Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq
    ) && instr.op_count() == 2;
    if data.is_empty() || data.len() > 8 || !value_op {
        return true;
    }
    let value = match instr.op1_kind() {
        OpKind::Register => register_value(regs, instr.op1_register(), instr.next_ip()),
        OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32 | OpKind::Immediate8to32
        | OpKind::Immediate8to64 | OpKind::Immediate32to64 | OpKind::Immediate64 => Some(instr.immediate(1)),
        _ => None,
    };
    value.is_none_or(|v| v.to_le_bytes()[..data.len()] == *data)
}

/// Backwards search for a store of `size` bytes to `gpa` that ends at `end_ip`, of the
/// value `data` when that can be checked ([`stores_value`]). Shortest candidate first,
/// as in [`io_before`].
#[allow(clippy::too_many_arguments)]
pub fn store_before(bitness: u32, before: &[u8], end_ip: u64, regs: &dyn RegisterFile, size: usize, gpa: u64,
    how: AddressMatch, data: &[u8]) -> Option<Store> {
    for len in 1..=before.len().min(MAX_INSN_LEN) {
        let start = before.len() - len;
        let ip = end_ip.wrapping_sub(len as u64);
        if let Some(instr) = decode_one(bitness, &before[start..], ip) {
            if instr.len() == len && stores_value(&instr, regs, data) {
                if let Some(store) = store_match(&instr, regs, size, gpa, how) {
                    return Some(store);
                }
            }
        }
    }
    None
}

/// The instruction at the start of `bytes`, if it stores `size` bytes at `gpa` (string
/// stores that KVM leaves unfinished, RIP still at them).
pub fn store_at(bitness: u32, bytes: &[u8], ip: u64, regs: &dyn RegisterFile, size: usize, gpa: u64,
    how: AddressMatch) -> Option<Store> {
    store_match(&decode_one(bitness, bytes, ip)?, regs, size, gpa, how)
}

/// [`store_at`] for a REP string store only: the instruction KVM leaves RIP at while
/// iterations are left (a non-REP one it always retires). Looked for before decoding
/// backwards, where the bytes before it could pass for a string store too (the A5 ending
/// a `mov eax, 0xa5a5a5a5` is MOVSD).
pub fn rep_store_at(bitness: u32, bytes: &[u8], ip: u64, regs: &dyn RegisterFile, size: usize, gpa: u64,
    how: AddressMatch) -> Option<Store> {
    let instr = decode_one(bitness, bytes, ip)?;
    string_insn(&instr)?.rep.then(|| store_match(&instr, regs, size, gpa, how)).flatten()
}

/// Length of the instruction at the start of `bytes`.
pub fn length_at(bitness: u32, bytes: &[u8], ip: u64) -> Option<usize> {
    decode_one(bitness, bytes, ip).map(|i| i.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Regs {
        rax: u64,
        rbx: u64,
        rcx: u64,
        rsi: u64,
        rdi: u64,
        ds_base: u64,
        es_base: u64,
        rflags: u64,
        rsp: u64,
        r12: u64,
    }

    impl RegisterFile for Regs {
        fn gpr(&self, reg: Register) -> Option<u64> {
            match reg {
                Register::RAX => Some(self.rax),
                Register::RBX => Some(self.rbx),
                Register::RCX => Some(self.rcx),
                Register::RSI => Some(self.rsi),
                Register::RDI => Some(self.rdi),
                Register::RSP => Some(self.rsp),
                Register::R12 => Some(self.r12),
                _ => Some(0),
            }
        }
        fn segment_base(&self, reg: Register) -> Option<u64> {
            Some(match reg {
                Register::DS => self.ds_base,
                Register::ES => self.es_base,
                _ => 0,
            })
        }
        fn rflags(&self) -> u64 {
            self.rflags | 2
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
        let regs = Regs { rax: 0x1234, rbx: 0xfee0_0000, ds_base: 0, ..Default::default() };
        let end = 0x2000 + code.len() as u64;
        assert_eq!(store_before(64, &code, end, &regs, 4, 0xfee0_0008, AddressMatch::Exact, &[]).map(|s| s.len), Some(3));
        // Wrong size or address: no candidate.
        assert_eq!(store_before(64, &code, end, &regs, 8, 0xfee0_0008, AddressMatch::Exact, &[]).map(|s| s.len), None);
        assert_eq!(store_before(64, &code, end, &regs, 4, 0xfee0_0010, AddressMatch::Exact, &[]).map(|s| s.len), None);
        // With paging only the page offset is compared.
        assert_eq!(store_before(64, &code, end, &regs, 4, 0x1_2345_6008, AddressMatch::PageOffset, &[]).map(|s| s.len), Some(3));
        // mov [rbx+8], rax (48 89 43 08): the REX.W byte belongs to it.
        let code = [0x90, 0x48, 0x89, 0x43, 0x08];
        assert_eq!(store_before(64, &code, 0x3005, &regs, 8, 0xfee0_0008, AddressMatch::Exact, &[]).map(|s| s.len), Some(4));
    }

    #[test]
    fn the_stored_value_picks_the_rex_prefixed_store() {
        // mov [rax+0x30], r12d (44 89 60 30) ends with mov [rax+0x30], esp (89 60 30): the
        // same size and address. Only the value written tells them apart.
        let code = [0x90, 0x44, 0x89, 0x60, 0x30];
        let regs = Regs { rax: 0xd000_0000, rsp: 0xffff_c900_0001_3e80, r12: 0, ..Default::default() };
        let find = |data: &[u8]| store_before(64, &code, 0x1005, &regs, 4, 0xd000_0030, AddressMatch::PageOffset, data);
        assert_eq!(find(&[0, 0, 0, 0]).map(|s| s.len), Some(4));
        assert_eq!(find(&0x0001_3e80u32.to_le_bytes()).map(|s| s.len), Some(3));
        // An immediate store: mov dword [rax+0x30], 2 (C7 40 30 02 00 00 00).
        let code = [0xc7, 0x40, 0x30, 0x02, 0x00, 0x00, 0x00];
        let find = |data: &[u8]| store_before(64, &code, 0x1007, &regs, 4, 0xd000_0030, AddressMatch::PageOffset, data);
        assert_eq!(find(&[2, 0, 0, 0]).map(|s| s.len), Some(7));
        assert_eq!(find(&[3, 0, 0, 0]).map(|s| s.len), None);
    }

    #[test]
    fn real_mode_store_uses_the_segment_base() {
        // 16-bit: mov [bx], al (88 07) with DS base 0x10000 and BX 0x20.
        let regs = Regs { rax: 0x41, rbx: 0x20, ds_base: 0x10000, ..Default::default() };
        assert_eq!(store_before(16, &[0x88, 0x07], 0x102, &regs, 1, 0x10020, AddressMatch::Exact, &[]).map(|s| s.len), Some(2));
        // A load (mov al, [bx]: 8A 07) is no store.
        assert_eq!(store_before(16, &[0x8a, 0x07], 0x102, &regs, 1, 0x10020, AddressMatch::Exact, &[]).map(|s| s.len), None);
    }

    const DF: u64 = RFLAGS_DF;

    fn regs(rsi: u64, rdi: u64, rcx: u64) -> IndexRegs {
        IndexRegs { rsi, rdi, rcx }
    }

    /// Rewinds `count` elements of the string instruction `bytes` (decoded as `bitness`).
    fn rewind(bitness: u32, bytes: &[u8], after: IndexRegs, df: bool, count: u64) -> IndexRegs {
        let string = string_at(bitness, bytes, 0x1000).expect("a string instruction");
        assert_eq!(string.len, bytes.len());
        string.rewind(after, df, count)
    }

    #[test]
    fn classifies_string_instructions() {
        // 16-bit rep outsb (F3 6E): RSI only, bytes, CX.
        let s = string_at(16, &[0xf3, 0x6e], 0).unwrap();
        assert_eq!((s.element, s.uses_rsi, s.uses_rdi, s.rep, s.address_size), (1, true, false, true, 16));
        // 32-bit stosd (AB): RDI only, no REP.
        let s = string_at(32, &[0xab], 0).unwrap();
        assert_eq!((s.element, s.uses_rsi, s.uses_rdi, s.rep, s.address_size), (4, false, true, false, 32));
        // 64-bit rep movsb (F3 A4): both; 67 gives it a 32-bit address size.
        let s = string_at(64, &[0xf3, 0xa4], 0).unwrap();
        assert_eq!((s.element, s.uses_rsi, s.uses_rdi, s.rep, s.address_size), (1, true, true, true, 64));
        assert_eq!(string_at(64, &[0x67, 0xf3, 0xa4], 0).unwrap().address_size, 32);
        // 64-bit rep stosq (F3 48 AB): 8-byte elements.
        assert_eq!(string_at(64, &[0xf3, 0x48, 0xab], 0).unwrap().element, 8);
        // Not string instructions: out dx, al; mov [rbx+8], eax.
        assert_eq!(string_at(16, &[0xee], 0), None);
        assert_eq!(string_at(64, &[0x89, 0x43, 0x08], 0), None);
    }

    #[test]
    fn rewind_rep_outsb_16_bit() {
        // Real mode rep outsb after 1 element: SI back 1, CX given 1 back; the high bits
        // of ESI/ECX (as in the port_io test, count_high) stay.
        let after = regs(0xdead_0101, 0x7777, 0xbeef_0004);
        assert_eq!(rewind(16, &[0xf3, 0x6e], after, false, 1), regs(0xdead_0100, 0x7777, 0xbeef_0005));
        // 3 elements at once; DF=1 moves SI up instead.
        assert_eq!(rewind(16, &[0xf3, 0x6e], after, false, 3), regs(0xdead_00fe, 0x7777, 0xbeef_0007));
        assert_eq!(rewind(16, &[0xf3, 0x6e], after, true, 3), regs(0xdead_0104, 0x7777, 0xbeef_0007));
        // Wrapping stays within the low 16 bits: SI 0x0000 -> 0xffff, CX 0xffff -> 0x0000.
        let after = regs(0x1_0000, 0, 0x2_ffff);
        assert_eq!(rewind(16, &[0xf3, 0x6e], after, false, 1), regs(0x1_ffff, 0, 0x2_0000));
        // outsw without REP (6F in 16-bit code): RCX untouched.
        assert_eq!(rewind(16, &[0x6f], regs(0x102, 0, 9), false, 1), regs(0x100, 0, 9));
        // 32-bit address size in 16-bit code (67 F3 6E).
        let after = regs(0x1_0000, 0, 0x1_0000);
        assert_eq!(rewind(16, &[0x67, 0xf3, 0x6e], after, false, 1), regs(0xffff, 0, 0x1_0001));
    }

    #[test]
    fn rewind_stosd_32_bit() {
        // rep stosd (F3 AB) after one dword: EDI back 4 (DF=0) or up 4 (DF=1), ECX + 1.
        let after = regs(0x55, 0xd000_0084, 3);
        assert_eq!(rewind(32, &[0xf3, 0xab], after, false, 1), regs(0x55, 0xd000_0080, 4));
        assert_eq!(rewind(32, &[0xf3, 0xab], after, true, 1), regs(0x55, 0xd000_0088, 4));
        // Plain stosd (AB): ECX untouched.
        assert_eq!(rewind(32, &[0xab], after, false, 1), regs(0x55, 0xd000_0080, 3));
        // 16-bit address size (67 F3 AB): DI and CX only.
        let after = regs(0, 0x1234_0002, 0x5678_ffff);
        assert_eq!(rewind(32, &[0x67, 0xf3, 0xab], after, false, 1), regs(0, 0x1234_fffe, 0x5678_0000));
        // 32-bit outsw (66 6F), 2 bytes back.
        assert_eq!(rewind(32, &[0x66, 0x6f], regs(0x2002, 0, 1), false, 1), regs(0x2000, 0, 1));
    }

    #[test]
    fn rewind_movs_64_bit() {
        // rep movsb (F3 A4): RSI and RDI back 1, RCX + 1, all 64 bits.
        let after = regs(0x1_0000_0000, 0xd000_00a1, 2);
        assert_eq!(rewind(64, &[0xf3, 0xa4], after, false, 1), regs(0xffff_ffff, 0xd000_00a0, 3));
        assert_eq!(rewind(64, &[0xf3, 0xa4], after, true, 1), regs(0x1_0000_0001, 0xd000_00a2, 3));
        // 32-bit address size (67 F3 A4): only the low 32 bits change.
        assert_eq!(rewind(64, &[0x67, 0xf3, 0xa4], after, false, 1), regs(0x1_ffff_ffff, 0xd000_00a0, 3));
        // rep stosq (F3 48 AB): 8 bytes per element; RCX 0 after the last one.
        let after = regs(7, 0xfee0_0010, 0);
        assert_eq!(rewind(64, &[0xf3, 0x48, 0xab], after, false, 1), regs(7, 0xfee0_0008, 1));
        // movsq without REP (48 A5): RCX untouched.
        assert_eq!(rewind(64, &[0x48, 0xa5], after, false, 1), regs(0xffff_ffff_ffff_ffff, 0xfee0_0008, 0));
    }

    #[test]
    fn string_store_matched_before_the_element_kvm_wrote() {
        // 16-bit: mov ecx, 4 (66 B9 04 00 00 00); rep stosd (F3 66 AB) at 0x106, ES base
        // 0xd0000. KVM wrote the dword at DI 0x80 and left DI 0x84, CX 3, RIP at it.
        let code = [0x66, 0xb9, 0x04, 0x00, 0x00, 0x00];
        let stos = [0xf3, 0x66, 0xab];
        let regs = Regs { rdi: 0x84, rcx: 3, es_base: 0xd0000, ..Default::default() };
        assert_eq!(store_before(16, &code, 0x106, &regs, 4, 0xd0080, AddressMatch::Exact, &[]), None);
        let store = store_at(16, &stos, 0x106, &regs, 4, 0xd0080, AddressMatch::Exact).expect("found");
        assert_eq!(store, Store { len: 3, rewound: Some(IndexRegs { rsi: 0, rdi: 0x80, rcx: 4 }) });
        // Registers not yet advanced (DI still at the element): matched as they are.
        let regs = Regs { rdi: 0x80, rcx: 4, es_base: 0xd0000, ..Default::default() };
        assert_eq!(store_at(16, &stos, 0x106, &regs, 4, 0xd0080, AddressMatch::Exact),
            Some(Store { len: 3, rewound: None }));
        // Neither: another address.
        assert_eq!(store_at(16, &stos, 0x106, &regs, 4, 0xd0090, AddressMatch::Exact), None);
    }

    #[test]
    fn rep_stosd_at_rip_is_not_mistaken_for_the_movsd_before_it() {
        // 32-bit: mov eax, 0xa5a5a5a5 (B8 A5 A5 A5 A5); rep stosd (F3 AB) at 0x8010 with
        // EDI 0xd0084 after its first dword. The A5 before RIP decodes as MOVSD to ES:EDI,
        // which the backwards search alone would take.
        let code = [0xb8, 0xa5, 0xa5, 0xa5, 0xa5];
        let regs = Regs { rax: 0xa5a5_a5a5, rdi: 0xd0084, rcx: 3, ..Default::default() };
        assert_eq!(store_before(32, &code, 0x8010, &regs, 4, 0xd0080, AddressMatch::PageOffset, &[]).map(|s| s.len), Some(1));
        let store = rep_store_at(32, &[0xf3, 0xab], 0x8010, &regs, 4, 0xd0080, AddressMatch::PageOffset);
        assert_eq!(store, Some(Store { len: 2, rewound: Some(IndexRegs { rsi: 0, rdi: 0xd0080, rcx: 4 }) }));
        // Without REP it is not taken at RIP.
        assert_eq!(rep_store_at(32, &[0xab], 0x8010, &regs, 4, 0xd0080, AddressMatch::PageOffset), None);
    }

    #[test]
    fn retired_movsb_found_backwards_and_rewound() {
        // 64-bit, paging: nop; movsb (A4) already retired, RIP past it, RSI/RDI one
        // further (DF=1: one lower). The destination was 0xffff_8000_0000_00a0.
        let regs = Regs { rsi: 0x2010 - 1, rdi: 0xffff_8000_0000_009f, rcx: 5, rflags: DF, ..Default::default() };
        let store = store_before(64, &[0x90, 0xa4], 0x4002, &regs, 1, 0xd00a0, AddressMatch::PageOffset, &[]).expect("found");
        assert_eq!(store, Store { len: 1, rewound: Some(IndexRegs { rsi: 0x2010, rdi: 0xffff_8000_0000_00a0, rcx: 5 }) });
        // A load from there (lodsb, AC) is no store.
        assert_eq!(store_before(64, &[0x90, 0xac], 0x4002, &regs, 1, 0xd00a0, AddressMatch::PageOffset, &[]), None);
    }
}
