//! Instruction semantics: carries out a decoded instruction whose data access hit MMIO.
//!
//! Supported (all operand sizes, all addressing forms iced decodes for them):
//! - MOV (r/m <-> r, r/m <- imm, AL/AX/EAX/RAX <-> moffs), MOVZX, MOVSX, MOVSXD;
//! - ADD ADC SUB SBB AND OR XOR CMP TEST with a memory operand on either side;
//! - BT BTS BTR BTC, immediate and register bit offsets;
//! - XCHG with memory;
//! - STOS, LODS and MOVS, with REP and the direction flag.
//!
//! Everything else is refused with [`EmulateError::Unsupported`] before any access is
//! made, so a refused instruction has no side effect on the device or the guest.
//!
//! Order of effects: every handler translates (and so checks) its memory operand(s)
//! before it performs any access, and writes registers/flags only after the memory
//! accesses succeeded. A fault therefore leaves the instruction without effect, like
//! the CPU's faults (except completed REP iterations, which retire as on the CPU).
//!
//! LOCK and XCHG's implicit lock are not emulated atomically: the read and the write
//! of a read-modify-write reach the device as two separate accesses. Devices have no
//! notion of a locked cycle; guest RAM is never the target here (MMIO exits only).

use iced_x86::{CodeSize, Instruction, Mnemonic, OpKind, Register};

use super::cpu::{CpuState, Rflags, Segment};
use super::fetch::fetch_and_decode;
use super::flags::{alu, AluOp, OpSize};
use super::linear::{read_pieces, translate_range, write_pieces, Piece};
use super::walk::Access;
use super::{EmulateError, GuestBus};

/// The most iterations of a REP string instruction done in one exit. The rest run when
/// the guest re-executes the instruction (RIP is left on it, RCX/RSI/RDI reflect the
/// progress). The CPU itself may stop a REP instruction between any two iterations
/// this way (SDM vol. 2, "REP/REPE/REPZ/REPNE/REPNZ"), so the guest cannot tell; the
/// bound keeps a guest-chosen RCX of 2^64 from stalling the VMM thread.
pub const MAX_REP_ITERATIONS: u64 = 1024;

/// Page number of a guest-physical address (4 KiB pages).
const PAGE_SHIFT: u32 = 12;

/// Emulates the instruction at CS:RIP, whose data access hit MMIO at `gpa`: performs
/// the access(es) through `bus`, updates registers, flags, and RIP (advanced past the
/// instruction; left on it for an unfinished REP). Returns the decoded instruction (for
/// tracing).
///
/// The memory operand is translated from the linear address the instruction computes,
/// not taken from `gpa`. If no access lands on `gpa`'s page (the guest changed its page
/// tables since the exit, or another vCPU rewrote the code), the instruction is still
/// emulated as the guest's current state says, which is what re-executing it on the CPU
/// would do; a debug message notes the mismatch.
///
/// On `Err(Fault)`, `cpu` holds the state the exception is delivered with (see
/// [`EmulateError::Fault`]); on `Err(Unsupported)`, nothing was changed or accessed.
pub fn emulate_mmio(
    cpu: &mut CpuState,
    bus: &mut dyn GuestBus,
    gpa: u64,
) -> Result<Instruction, EmulateError> {
    let fetched = fetch_and_decode(cpu, bus)?;
    let instr = fetched.instruction;
    let mut exec = Exec {
        cpu,
        bus,
        instr,
        bytes: fetched.bytes(),
        fault_page: gpa >> PAGE_SHIFT,
        touched_fault_page: false,
    };
    exec.run()?;
    if !exec.touched_fault_page {
        log::debug!(
            "emulated {instr} at rip {:#x}: its accesses missed the MMIO page of the exit ({gpa:#x})",
            instr.ip()
        );
    }
    Ok(instr)
}

/// An instruction operand, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operand {
    /// A general-purpose register (any size; other register classes are refused).
    Reg(Register),
    /// A memory operand at this linear address.
    Mem(u64),
    /// An immediate, already sign-extended by the decoder where the encoding says so.
    Imm(u64),
}

/// The bit-test-and-modify instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BitOp {
    Test,
    Set,
    Reset,
    Complement,
}

/// The string instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StringOp {
    /// Store the accumulator at ES:rDI.
    Stos,
    /// Load the accumulator from seg:rSI.
    Lods,
    /// Copy seg:rSI to ES:rDI.
    Movs,
    /// Compare seg:rSI with ES:rDI (flags of seg:rSI - ES:rDI).
    Cmps,
    /// Compare the accumulator with ES:rDI (flags of accumulator - ES:rDI).
    Scas,
}

/// One instruction being carried out.
struct Exec<'a> {
    cpu: &'a mut CpuState,
    bus: &'a mut dyn GuestBus,
    instr: Instruction,
    bytes: &'a [u8],
    /// Page number of the exit's guest-physical address.
    fault_page: u64,
    /// Whether some access landed on that page.
    touched_fault_page: bool,
}

impl Exec<'_> {
    fn run(&mut self) -> Result<(), EmulateError> {
        match self.instr.mnemonic() {
            Mnemonic::Mov => self.mov(),
            Mnemonic::Movzx => self.extend(false),
            Mnemonic::Movsx | Mnemonic::Movsxd => self.extend(true),
            Mnemonic::Add => self.arith(AluOp::Add, true),
            Mnemonic::Adc => self.arith(AluOp::Adc, true),
            Mnemonic::Sub => self.arith(AluOp::Sub, true),
            Mnemonic::Sbb => self.arith(AluOp::Sbb, true),
            Mnemonic::And => self.arith(AluOp::And, true),
            Mnemonic::Or => self.arith(AluOp::Or, true),
            Mnemonic::Xor => self.arith(AluOp::Xor, true),
            Mnemonic::Cmp => self.arith(AluOp::Sub, false),
            Mnemonic::Test => self.arith(AluOp::And, false),
            Mnemonic::Bt => self.bit_test(BitOp::Test),
            Mnemonic::Bts => self.bit_test(BitOp::Set),
            Mnemonic::Btr => self.bit_test(BitOp::Reset),
            Mnemonic::Btc => self.bit_test(BitOp::Complement),
            Mnemonic::Xchg => self.xchg(),
            Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => {
                self.string(StringOp::Stos)
            }
            Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => {
                self.string(StringOp::Lods)
            }
            // MOVSD is also the SSE2 scalar move; `string` refuses that form by its
            // operand kinds.
            Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => {
                self.string(StringOp::Movs)
            }
            // CMPSD is also the SSE2 compare; `string` refuses that form too.
            Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq => {
                self.string(StringOp::Cmps)
            }
            Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => {
                self.string(StringOp::Scas)
            }
            _ => Err(self.unsupported("instruction not emulated")),
        }
    }

    fn unsupported(&self, why: &str) -> EmulateError {
        EmulateError::Unsupported {
            bytes: self.bytes.to_vec(),
            what: format!("{} ({:?}): {why}", self.instr, self.instr.mnemonic()),
        }
    }

    /// Retires the instruction: RIP moves past it.
    fn finish(&mut self) -> Result<(), EmulateError> {
        self.cpu.advance_rip(self.instr.len());
        Ok(())
    }

    // ---- operands -------------------------------------------------------------------

    /// Checks the operand count and that exactly one of the operands is in memory.
    fn expect_two_operands_one_memory(&self) -> Result<(), EmulateError> {
        if self.instr.op_count() != 2 {
            return Err(self.unsupported("unexpected operand count"));
        }
        let memory = (0..2)
            .filter(|&op| self.instr.op_kind(op) == OpKind::Memory)
            .count();
        if memory != 1 {
            return Err(self.unsupported("no memory operand"));
        }
        Ok(())
    }

    /// Resolves operand `op` (< op_count): registers must be general-purpose.
    fn operand(&self, op: u32) -> Result<Operand, EmulateError> {
        match self.instr.op_kind(op) {
            OpKind::Register => {
                let reg = self.instr.op_register(op);
                if self.cpu.read_reg(reg).is_none() {
                    return Err(self.unsupported("operand is not a general-purpose register"));
                }
                Ok(Operand::Reg(reg))
            }
            OpKind::Memory => Ok(Operand::Mem(self.memory_linear(0)?)),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => {
                let imm = self
                    .instr
                    .try_immediate(op)
                    .map_err(|_| self.unsupported("bad immediate"))?;
                Ok(Operand::Imm(imm))
            }
            _ => Err(self.unsupported("operand kind not emulated")),
        }
    }

    /// The size of operand `op` (< op_count).
    fn operand_size(&self, op: u32) -> Result<OpSize, EmulateError> {
        let bytes = match self.instr.op_kind(op) {
            OpKind::Register => self.instr.op_register(op).size(),
            _ => self.instr.memory_size().size(),
        };
        OpSize::from_bytes(bytes).ok_or_else(|| self.unsupported("operand size not emulated"))
    }

    /// The address size of the `OpKind::Memory` operand: from its base or index
    /// register, else from the displacement size (moffs and disp-only forms), else the
    /// code size (SDM vol. 1, 3.6, and vol. 2, 2.1.5).
    fn address_size(&self) -> OpSize {
        fn of_register(reg: Register) -> Option<OpSize> {
            if reg.is_gpr16() {
                Some(OpSize::B2)
            } else if reg.is_gpr32() || reg == Register::EIP {
                Some(OpSize::B4)
            } else if reg.is_gpr64() || reg == Register::RIP {
                Some(OpSize::B8)
            } else {
                None
            }
        }
        let instr = &self.instr;
        of_register(instr.memory_base())
            .or_else(|| of_register(instr.memory_index()))
            .or(match instr.memory_displ_size() {
                2 => Some(OpSize::B2),
                4 => Some(OpSize::B4),
                8 => Some(OpSize::B8),
                _ => None,
            })
            .unwrap_or(match instr.code_size() {
                CodeSize::Code16 => OpSize::B2,
                CodeSize::Code32 => OpSize::B4,
                _ => OpSize::B8,
            })
    }

    /// The segment and effective address (offset) of the `OpKind::Memory` operand:
    /// base + index * scale + displacement, wrapped to the address size (SDM vol. 1,
    /// 3.7.5). RIP-relative operands: the decoder already folded RIP into the
    /// displacement (it decoded at the guest's RIP).
    fn memory_offset(&self) -> Result<(Segment, u64, OpSize), EmulateError> {
        let instr = &self.instr;
        let addr_size = self.address_size();
        let mut ea = instr.memory_displacement64();
        let base = instr.memory_base();
        if !matches!(base, Register::None | Register::RIP | Register::EIP) {
            let value = self
                .cpu
                .read_reg(base)
                .ok_or_else(|| self.unsupported("base is not a GPR"))?;
            ea = ea.wrapping_add(value);
        }
        let index = instr.memory_index();
        if index != Register::None {
            let value = self
                .cpu
                .read_reg(index)
                .ok_or_else(|| self.unsupported("index is not a GPR"))?;
            ea = ea.wrapping_add(value.wrapping_mul(u64::from(instr.memory_index_scale())));
        }
        let seg = Segment::from_register(instr.memory_segment())
            .ok_or_else(|| self.unsupported("no segment for memory operand"))?;
        Ok((seg, ea & addr_size.mask(), addr_size))
    }

    /// The linear address of the `OpKind::Memory` operand, `byte_offset` bytes further
    /// (wrapping within the address size, as an effective address does).
    fn memory_linear(&self, byte_offset: u64) -> Result<u64, EmulateError> {
        let (seg, ea, addr_size) = self.memory_offset()?;
        Ok(self
            .cpu
            .linear(seg, ea.wrapping_add(byte_offset) & addr_size.mask()))
    }

    // ---- memory ---------------------------------------------------------------------

    /// Translates `size` bytes at `linear` for `access`; notes whether the exit's page
    /// is among them.
    fn translate(
        &mut self,
        linear: u64,
        size: OpSize,
        access: Access,
    ) -> Result<Vec<Piece>, EmulateError> {
        let pieces = translate_range(self.cpu, self.bus, linear, size.bytes(), access)?;
        if pieces
            .iter()
            .any(|piece| piece.gpa >> PAGE_SHIFT == self.fault_page)
        {
            self.touched_fault_page = true;
        }
        Ok(pieces)
    }

    fn load(&mut self, pieces: &[Piece], size: OpSize) -> u64 {
        let mut buf = [0u8; 8];
        read_pieces(
            self.bus,
            pieces,
            buf.get_mut(..size.bytes()).unwrap_or(&mut []),
        );
        u64::from_le_bytes(buf)
    }

    fn store(&mut self, pieces: &[Piece], size: OpSize, value: u64) {
        let bytes = value.to_le_bytes();
        write_pieces(self.bus, pieces, bytes.get(..size.bytes()).unwrap_or(&[]));
    }

    /// Reads an operand. A memory operand is translated for `access` (Write for the
    /// read half of a read-modify-write: the CPU checks write permission before
    /// reading such an operand).
    fn read(
        &mut self,
        operand: Operand,
        size: OpSize,
        access: Access,
    ) -> Result<u64, EmulateError> {
        match operand {
            Operand::Reg(reg) => Ok(self
                .cpu
                .read_reg(reg)
                .ok_or_else(|| self.unsupported("not a GPR"))?
                & size.mask()),
            Operand::Mem(linear) => {
                let pieces = self.translate(linear, size, access)?;
                Ok(self.load(&pieces, size))
            }
            Operand::Imm(value) => Ok(value & size.mask()),
        }
    }

    fn write(&mut self, operand: Operand, size: OpSize, value: u64) -> Result<(), EmulateError> {
        match operand {
            Operand::Reg(reg) => self
                .cpu
                .write_reg(reg, value & size.mask())
                .ok_or_else(|| self.unsupported("not a GPR")),
            Operand::Mem(linear) => {
                let pieces = self.translate(linear, size, Access::Write)?;
                self.store(&pieces, size, value);
                Ok(())
            }
            Operand::Imm(_) => Err(self.unsupported("write to an immediate")),
        }
    }

    // ---- instructions ---------------------------------------------------------------

    /// MOV: every form with a memory operand (SDM vol. 2, MOV). Segment-register forms
    /// are refused by `operand`.
    fn mov(&mut self) -> Result<(), EmulateError> {
        self.expect_two_operands_one_memory()?;
        let (dst, src) = (self.operand(0)?, self.operand(1)?);
        if matches!(dst, Operand::Imm(_)) {
            return Err(self.unsupported("immediate destination"));
        }
        let size = self.operand_size(0)?;
        let value = self.read(src, size, Access::Read)?;
        self.write(dst, size, value)?;
        self.finish()
    }

    /// MOVZX, MOVSX, MOVSXD: register <- extended memory operand.
    fn extend(&mut self, signed: bool) -> Result<(), EmulateError> {
        self.expect_two_operands_one_memory()?;
        let (dst, src) = (self.operand(0)?, self.operand(1)?);
        if !matches!(dst, Operand::Reg(_)) {
            return Err(self.unsupported("destination is not a register"));
        }
        let (dst_size, src_size) = (self.operand_size(0)?, self.operand_size(1)?);
        let value = self.read(src, src_size, Access::Read)?;
        let value = if signed {
            src_size.sign_extend(value)
        } else {
            value
        };
        self.write(dst, dst_size, value)?;
        self.finish()
    }

    /// ADD ADC SUB SBB AND OR XOR (`writes`), CMP and TEST (flags only).
    fn arith(&mut self, op: AluOp, writes: bool) -> Result<(), EmulateError> {
        self.expect_two_operands_one_memory()?;
        let (dst, src) = (self.operand(0)?, self.operand(1)?);
        if matches!(dst, Operand::Imm(_)) {
            return Err(self.unsupported("immediate destination"));
        }
        let size = self.operand_size(0)?;
        let dst_access = if writes { Access::Write } else { Access::Read };
        let a = self.read(dst, size, dst_access)?;
        let b = self.read(src, size, Access::Read)?;
        let (result, rflags) = alu(op, size, a, b, self.cpu.rflags);
        if writes {
            self.write(dst, size, result)?;
        }
        self.cpu.rflags = rflags;
        self.finish()
    }

    /// BT BTS BTR BTC with a memory bit base (SDM vol. 2, BT: "bit base" and "bit
    /// offset"). With an immediate offset, the offset is taken modulo the operand size.
    /// With a register offset it is a signed number of bits that may reach far outside
    /// the operand: the operand actually accessed is the one at
    /// `ea + (offset >> log2(size in bits)) * size in bytes` (arithmetic shift), bit
    /// `offset mod size in bits`. CF receives the bit; OF SF AF PF are undefined and ZF
    /// is unaffected, so all of them are left as they were.
    fn bit_test(&mut self, op: BitOp) -> Result<(), EmulateError> {
        if self.instr.op_count() != 2 || self.instr.op_kind(0) != OpKind::Memory {
            return Err(self.unsupported("no memory bit base"));
        }
        let size = self.operand_size(0)?;
        let bits = u64::from(size.bits());
        let (linear, bit) = match self.operand(1)? {
            Operand::Imm(imm) => (self.memory_linear(0)?, imm % bits),
            Operand::Reg(reg) => {
                let raw = self.read(Operand::Reg(reg), size, Access::Read)?;
                let offset = size.sign_extend(raw) as i64;
                // log2 of the operand size in bits: 4, 5 or 6.
                let elements = offset >> bits.trailing_zeros();
                let byte_offset = elements.wrapping_mul(size.bytes() as i64) as u64;
                (
                    self.memory_linear(byte_offset)?,
                    (offset as u64) & (bits - 1),
                )
            }
            Operand::Mem(_) => return Err(self.unsupported("memory bit offset")),
        };
        let access = if op == BitOp::Test {
            Access::Read
        } else {
            Access::Write
        };
        let value = self.read(Operand::Mem(linear), size, access)?;
        let mask = 1u64 << bit;
        let new = match op {
            BitOp::Test => value,
            BitOp::Set => value | mask,
            BitOp::Reset => value & !mask,
            BitOp::Complement => value ^ mask,
        };
        if op != BitOp::Test {
            self.write(Operand::Mem(linear), size, new)?;
        }
        let mut rflags = self.cpu.rflags();
        rflags.set(Rflags::CF, value & mask != 0);
        self.cpu.rflags = rflags.bits();
        self.finish()
    }

    /// XCHG between memory and a register (either operand order).
    fn xchg(&mut self) -> Result<(), EmulateError> {
        self.expect_two_operands_one_memory()?;
        let (a, b) = (self.operand(0)?, self.operand(1)?);
        let (mem, reg) = match (a, b) {
            (Operand::Mem(linear), Operand::Reg(reg))
            | (Operand::Reg(reg), Operand::Mem(linear)) => (linear, reg),
            _ => return Err(self.unsupported("expected memory and register")),
        };
        let size = self.instr.memory_size().size();
        let size = OpSize::from_bytes(size)
            .ok_or_else(|| self.unsupported("operand size not emulated"))?;
        let pieces = self.translate(mem, size, Access::Write)?;
        let old = self.load(&pieces, size);
        let value = self.read(Operand::Reg(reg), size, Access::Read)?;
        self.store(&pieces, size, value);
        self.write(Operand::Reg(reg), size, old)?;
        self.finish()
    }

    /// STOS, LODS, MOVS, CMPS, SCAS, optionally with REP (SDM vol. 2, each instruction
    /// and REP/REPE/REPNE).
    ///
    /// The address size (from the operand kinds iced reports) picks SI/ESI/RSI,
    /// DI/EDI/RDI and CX/ECX/RCX; writing them through the 16- or 32-bit register gives
    /// the architectural wrap (16-bit) or zero-extension (32-bit in 64-bit mode). The
    /// destination is always ES:rDI; the source segment honours overrides. F2 (REPNE)
    /// on STOS/LODS/MOVS repeats like F3, as the CPU does; CMPS and SCAS set the flags
    /// of a subtraction (as CMP) and, repeated, also stop when ZF is 0 (REPE, F3) or 1
    /// (REPNE, F2) after an iteration.
    fn string(&mut self, op: StringOp) -> Result<(), EmulateError> {
        let instr = self.instr;
        let kinds: Vec<OpKind> = (0..instr.op_count()).map(|i| instr.op_kind(i)).collect();
        // Address size from the rDI / rSI operand kind.
        let regs_for = |kind: OpKind| match kind {
            OpKind::MemoryESDI | OpKind::MemorySegSI => {
                Some((Register::SI, Register::DI, Register::CX))
            }
            OpKind::MemoryESEDI | OpKind::MemorySegESI => {
                Some((Register::ESI, Register::EDI, Register::ECX))
            }
            OpKind::MemoryESRDI | OpKind::MemorySegRSI => {
                Some((Register::RSI, Register::RDI, Register::RCX))
            }
            _ => None,
        };
        let address_kind = match (op, kinds.as_slice()) {
            (StringOp::Stos, [dst, OpKind::Register]) => *dst,
            (StringOp::Lods, [OpKind::Register, src]) => *src,
            (StringOp::Movs, [dst, _src]) => *dst,
            (StringOp::Cmps, [src, _dst]) => *src,
            (StringOp::Scas, [OpKind::Register, dst]) => *dst,
            _ => return Err(self.unsupported("not a string form")),
        };
        let Some((si, di, cx)) = regs_for(address_kind) else {
            return Err(self.unsupported("not a string form"));
        };
        if matches!(op, StringOp::Movs | StringOp::Cmps) && kinds.get(1).copied().and_then(regs_for).is_none() {
            return Err(self.unsupported("not a string form"));
        }
        let size = OpSize::from_bytes(instr.memory_size().size())
            .ok_or_else(|| self.unsupported("operand size not emulated"))?;
        let accumulator = match size {
            OpSize::B1 => Register::AL,
            OpSize::B2 => Register::AX,
            OpSize::B4 => Register::EAX,
            OpSize::B8 => Register::RAX,
        };
        let source_segment = Segment::from_register(instr.memory_segment())
            .ok_or_else(|| self.unsupported("no source segment"))?;
        let step = if self.cpu.rflags().contains(Rflags::DF) {
            (size.bytes() as u64).wrapping_neg()
        } else {
            size.bytes() as u64
        };
        let repeat = instr.has_rep_prefix() || instr.has_repne_prefix();

        let read = |cpu: &CpuState, reg: Register| cpu.read_reg(reg).unwrap_or(0);
        let mut count = if repeat { read(self.cpu, cx) } else { 1 };
        let mut done = 0u64;
        while count > 0 {
            if done == MAX_REP_ITERATIONS {
                // Leave RIP on the instruction: the guest re-executes it to go on.
                return Ok(());
            }
            let src = self.cpu.linear(source_segment, read(self.cpu, si));
            let dst = self.cpu.linear(Segment::Es, read(self.cpu, di));
            // Translate everything this iteration touches before touching anything.
            match op {
                StringOp::Stos => {
                    let to = self.translate(dst, size, Access::Write)?;
                    let value = read(self.cpu, accumulator);
                    self.store(&to, size, value);
                }
                StringOp::Lods => {
                    let from = self.translate(src, size, Access::Read)?;
                    let value = self.load(&from, size);
                    self.cpu.write_reg(accumulator, value);
                }
                StringOp::Movs => {
                    let to = self.translate(dst, size, Access::Write)?;
                    let from = self.translate(src, size, Access::Read)?;
                    let value = self.load(&from, size);
                    self.store(&to, size, value);
                }
                StringOp::Cmps => {
                    let from = self.translate(src, size, Access::Read)?;
                    let to = self.translate(dst, size, Access::Read)?;
                    let (a, b) = (self.load(&from, size), self.load(&to, size));
                    self.cpu.rflags = alu(AluOp::Sub, size, a, b, self.cpu.rflags).1;
                }
                StringOp::Scas => {
                    let to = self.translate(dst, size, Access::Read)?;
                    let b = self.load(&to, size);
                    let a = read(self.cpu, accumulator);
                    self.cpu.rflags = alu(AluOp::Sub, size, a, b, self.cpu.rflags).1;
                }
            }
            if !matches!(op, StringOp::Stos | StringOp::Scas) {
                let next = read(self.cpu, si).wrapping_add(step);
                self.cpu.write_reg(si, next);
            }
            if op != StringOp::Lods {
                let next = read(self.cpu, di).wrapping_add(step);
                self.cpu.write_reg(di, next);
            }
            count -= 1;
            if repeat {
                self.cpu.write_reg(cx, count);
            }
            done += 1;
            if repeat && matches!(op, StringOp::Cmps | StringOp::Scas) {
                let zf = self.cpu.rflags().contains(Rflags::ZF);
                if zf == instr.has_repne_prefix() {
                    break;
                }
            }
        }
        self.finish()
    }
}
