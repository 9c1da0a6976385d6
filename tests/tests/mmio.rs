//! MMIO through hvrun's EPT-violation handler (reason 48) and instruction emulator:
//! reads, writes and read-modify-writes of 8/16/32/64 bits in the addressing modes of
//! each CPU mode, sign/zero extension, the flags of `add`/`or`/`test`/`cmp` on MMIO
//! operands (checked by conditional jumps and by the flags read back), and (separate
//! tests) string instructions between MMIO and RAM.
//!
//! The device is a register file (see `registers`); every access is recorded and the
//! whole sequence is compared, so a wrong size, address or value, a missing or doubled
//! access, and a wrong result in a register all fail the test.
use hvrun_tests::*;
use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction, MemoryOperand, Register};

/// The register file both MMIO devices start with: (offset, bytes).
fn registers() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0x00, 0x1122_3344u32.to_le_bytes().to_vec()),
        (0x04, 0x99aa_bbccu32.to_le_bytes().to_vec()),
        (0x08, 0x8877_6655_4433_2211u64.to_le_bytes().to_vec()),
        (0x10, vec![0x85]),
        (0x12, 0x8001u16.to_le_bytes().to_vec()),
        (0x40, 0xffff_fff0u32.to_le_bytes().to_vec()),
        (0x44, vec![0x01]),
        (0x48, 0x00ff_0000u32.to_le_bytes().to_vec()),
        (0x4c, 0x1234_5678u32.to_le_bytes().to_vec()),
    ]
}

/// RAM bytes the string instructions copy into MMIO.
const RAM_SOURCE: [u8; 3] = [0x77, 0x78, 0x79];

const B: u64 = MMIO_LOW;
const H: u64 = MMIO_HIGH;

/// The flags of the RMW/compare steps, the same in every mode.
/// `add dword [0x40] (0xfffffff0), 0x10` = 0 with carry: CF ZF PF.
const ADD_FLAGS: u32 = 0x45;
/// `or byte [0x44] (0x01), 0x80` = 0x81: SF PF (AF is undefined after OR: masked out).
const OR_MASK: u32 = ARITH_FLAGS & !0x10;
const OR_FLAGS: u32 = 0x84;
/// `cmp dword [0x4c] (0x12345678), 0x12345679`: borrow, result 0xffffffff: CF PF AF SF.
const CMP_FLAGS: u32 = 0x95;

/// The steps shared by the 32- and 64-bit guests, with EBX = B, ESI = 2.
fn flags_and_compares(g: &mut Guest, b: AsmRegister32or64) -> AsmResult {
    // test: ZF clear -> jnz taken.
    g.a.test(dword_ptr(b.mem() + 0x48), 0x00ff_0000)?;
    g.expect(Access::mr(B + 0x48, 4, 0x00ff_0000));
    g.report_if(|a, l| a.jnz(l), 0x7e57_0001)?;
    // cmp memory, imm: below -> jb taken; flags read back.
    g.a.cmp(dword_ptr(b.mem() + 0x4c), 0x1234_5679)?;
    g.expect(Access::mr(B + 0x4c, 4, 0x1234_5678));
    g.report_if(|a, l| a.jb(l), 0x7e57_0002)?;
    g.a.cmp(dword_ptr(b.mem() + 0x4c), 0x1234_5679)?;
    g.expect(Access::mr(B + 0x4c, 4, 0x1234_5678));
    g.report_flags(ARITH_FLAGS, CMP_FLAGS)?;
    // cmp register, memory (the memory operand second): 1 -> ja taken, flags all clear.
    g.a.mov(ecx, 0x1234_5679u32)?;
    g.a.cmp(ecx, dword_ptr(b.mem() + 0x4c))?;
    g.expect(Access::mr(B + 0x4c, 4, 0x1234_5678));
    g.report_if(|a, l| a.ja(l), 0x7e57_0003)?;
    g.a.cmp(ecx, dword_ptr(b.mem() + 0x4c))?;
    g.expect(Access::mr(B + 0x4c, 4, 0x1234_5678));
    g.report_flags(ARITH_FLAGS, 0)?;
    Ok(())
}

/// Lets the shared steps take EBX (32-bit) or RBX (64-bit) as the base register.
#[derive(Clone, Copy)]
enum AsmRegister32or64 {
    E(AsmRegister32),
    R(AsmRegister64),
}

impl AsmRegister32or64 {
    fn mem(self) -> AsmMemoryOperand {
        match self {
            Self::E(r) => r + 0,
            Self::R(r) => r + 0,
        }
    }
}

/// 64-bit guest, RBX = B, RSI = 2. Reads: `mov eax,[rbx]`, `mov rax,[rbx+8]` (64-bit),
/// `movzx`/`movsx` of a byte, `movsx rax, word [rbx+rsi*8+2]` (SIB), `mov eax,[moffs64]`
/// in the PCI hole, `mov ecx,[disp32]` (absolute, SIB without base), `mov edx,[rip+x]`.
/// Writes: dword immediate, word, byte register, qword `[rbx+rsi*4+0x28]`, byte
/// immediate, absolute disp32, moffs64. RMW: `or byte [rbx+0x44],0x80`, `add [rip+x],ecx`
/// with the flags read back and a `jc`. Then test/cmp + conditional jumps; each result
/// reported.
fn long_mode_guest() -> AsmResult<Guest> {
    let mut g = Guest::new(Mode::Long);
    g.a.mov(ebx, B as u32)?;
    g.a.mov(esi, 2u32)?;

    // --- reads
    g.a.mov(eax, dword_ptr(rbx))?;
    g.expect(Access::mr(B, 4, 0x1122_3344));
    g.report_eax(0x1122_3344)?;
    g.a.mov(rax, qword_ptr(rbx + 8))?;
    g.expect(Access::mr(B + 8, 8, 0x8877_6655_4433_2211));
    g.report_eax(0x4433_2211)?;
    g.a.shr(rax, 32)?;
    g.report_eax(0x8877_6655)?;
    g.a.mov(eax, u32::MAX)?;
    g.a.movzx(eax, byte_ptr(rbx + 0x10))?;
    g.expect(Access::mr(B + 0x10, 1, 0x85));
    g.report_eax(0x85)?;
    g.a.movsx(eax, byte_ptr(rbx + 0x10))?;
    g.expect(Access::mr(B + 0x10, 1, 0x85));
    g.report_eax(0xffff_ff85)?;
    g.a.movsx(rax, word_ptr(rbx + rsi * 8 + 2))?;
    g.expect(Access::mr(B + 0x12, 2, 0x8001));
    g.report_eax(0xffff_8001)?;
    g.a.shr(rax, 32)?;
    g.report_eax(0xffff_ffff)?;
    // moffs64 (A1 with an 8-byte address).
    g.a.mov(eax, dword_ptr(H))?;
    g.expect(Access::mr(H, 4, 0x1122_3344));
    g.report_eax(0x1122_3344)?;
    // Absolute disp32 (ModRM + SIB, no base, no index).
    g.a.mov(ecx, dword_ptr(B + 4))?;
    g.expect(Access::mr(B + 4, 4, 0x99aa_bbcc));
    g.report(ecx, 0x99aa_bbcc)?;
    // RIP-relative (iced's Instruction takes the absolute target of a RIP operand).
    g.a.add_instruction(Instruction::with2(Code::Mov_r32_rm32, Register::EDX, MemoryOperand::with_base_displ(Register::RIP, (B + 0x48) as i64))?)?;
    g.expect(Access::mr(B + 0x48, 4, 0x00ff_0000));
    g.report(edx, 0x00ff_0000)?;

    // --- writes
    g.a.mov(dword_ptr(rbx + 0x20), 0xcafe_f00du32)?;
    g.expect(Access::mw(B + 0x20, 4, 0xcafe_f00d));
    g.a.mov(eax, 0x5678u32)?;
    g.a.mov(word_ptr(rbx + 0x24), ax)?;
    g.expect(Access::mw(B + 0x24, 2, 0x5678));
    g.a.mov(ecx, 0x9au32)?;
    g.a.mov(byte_ptr(rbx + 0x26), cl)?;
    g.expect(Access::mw(B + 0x26, 1, 0x9a));
    g.a.mov(byte_ptr(rbx + 0x27), 0x42)?;
    g.expect(Access::mw(B + 0x27, 1, 0x42));
    g.a.mov(rdx, 0x0123_4567_89ab_cdefu64)?;
    g.a.mov(qword_ptr(rbx + rsi * 4 + 0x28), rdx)?;
    g.expect(Access::mw(B + 0x30, 8, 0x0123_4567_89ab_cdef));
    g.a.mov(dword_ptr(B + 0x38), ecx)?;
    g.expect(Access::mw(B + 0x38, 4, 0x9a));
    g.a.mov(dword_ptr(H + 8), eax)?;
    g.expect(Access::mw(H + 8, 4, 0x5678));

    // --- read-modify-write
    g.a.or(byte_ptr(rbx + 0x44), 0x80)?;
    g.expect(Access::mr(B + 0x44, 1, 0x01));
    g.expect(Access::mw(B + 0x44, 1, 0x81));
    g.report_flags(OR_MASK, OR_FLAGS)?;
    g.a.mov(ecx, 0x10u32)?;
    g.a.add_instruction(Instruction::with2(Code::Add_rm32_r32, MemoryOperand::with_base_displ(Register::RIP, (B + 0x40) as i64), Register::ECX)?)?;
    g.expect(Access::mr(B + 0x40, 4, 0xffff_fff0));
    g.expect(Access::mw(B + 0x40, 4, 0));
    g.report_flags(ARITH_FLAGS, ADD_FLAGS)?;
    g.a.add_instruction(Instruction::with2(Code::Add_rm32_r32, MemoryOperand::with_base_displ(Register::RIP, (B + 0x40) as i64), Register::ECX)?)?;
    g.expect(Access::mr(B + 0x40, 4, 0));
    g.expect(Access::mw(B + 0x40, 4, 0x10));
    g.report_if(|a, l| a.jnc(l), 0x7e57_0000)?;

    flags_and_compares(&mut g, AsmRegister32or64::R(rbx))?;

    g.exit(GOOD)?;
    Ok(g)
}

/// 32-bit guest, EBX = B, ESI = 2: the 64-bit guest's steps with 32-bit forms: a word
/// read into AX (upper EAX kept), `movsx eax, word [ebx+esi*8+2]`, `mov eax,[moffs32]`
/// above 3 GiB, absolute disp32 loads/stores and `add [disp32], ecx` instead of
/// RIP-relative ones, a dword `[ebx+esi*4+0x28]` store.
fn protected_mode_guest() -> AsmResult<Guest> {
    let mut g = Guest::new(Mode::Protected);
    g.a.mov(ebx, B as u32)?;
    g.a.mov(esi, 2u32)?;

    // --- reads
    g.a.mov(eax, dword_ptr(ebx))?;
    g.expect(Access::mr(B, 4, 0x1122_3344));
    g.report_eax(0x1122_3344)?;
    g.a.mov(eax, u32::MAX)?;
    g.a.mov(ax, word_ptr(ebx + 8))?;
    g.expect(Access::mr(B + 8, 2, 0x2211));
    g.report_eax(0xffff_2211)?;
    g.a.movzx(eax, byte_ptr(ebx + 0x10))?;
    g.expect(Access::mr(B + 0x10, 1, 0x85));
    g.report_eax(0x85)?;
    g.a.movsx(eax, byte_ptr(ebx + 0x10))?;
    g.expect(Access::mr(B + 0x10, 1, 0x85));
    g.report_eax(0xffff_ff85)?;
    g.a.movsx(eax, word_ptr(ebx + esi * 8 + 2))?;
    g.expect(Access::mr(B + 0x12, 2, 0x8001));
    g.report_eax(0xffff_8001)?;
    g.a.mov(eax, dword_ptr(H))?;
    g.expect(Access::mr(H, 4, 0x1122_3344));
    g.report_eax(0x1122_3344)?;
    g.a.mov(ecx, dword_ptr(B + 4))?;
    g.expect(Access::mr(B + 4, 4, 0x99aa_bbcc));
    g.report(ecx, 0x99aa_bbcc)?;

    // --- writes
    g.a.mov(dword_ptr(ebx + 0x20), 0xcafe_f00du32)?;
    g.expect(Access::mw(B + 0x20, 4, 0xcafe_f00d));
    g.a.mov(eax, 0x5678u32)?;
    g.a.mov(word_ptr(ebx + 0x24), ax)?;
    g.expect(Access::mw(B + 0x24, 2, 0x5678));
    g.a.mov(ecx, 0x9au32)?;
    g.a.mov(byte_ptr(ebx + 0x26), cl)?;
    g.expect(Access::mw(B + 0x26, 1, 0x9a));
    g.a.mov(byte_ptr(ebx + 0x27), 0x42)?;
    g.expect(Access::mw(B + 0x27, 1, 0x42));
    g.a.mov(edx, 0x89ab_cdefu32)?;
    g.a.mov(dword_ptr(ebx + esi * 4 + 0x28), edx)?;
    g.expect(Access::mw(B + 0x30, 4, 0x89ab_cdef));
    g.a.mov(dword_ptr(B + 0x38), ecx)?;
    g.expect(Access::mw(B + 0x38, 4, 0x9a));
    g.a.mov(dword_ptr(H + 8), eax)?;
    g.expect(Access::mw(H + 8, 4, 0x5678));

    // --- read-modify-write
    g.a.or(byte_ptr(ebx + 0x44), 0x80)?;
    g.expect(Access::mr(B + 0x44, 1, 0x01));
    g.expect(Access::mw(B + 0x44, 1, 0x81));
    g.report_flags(OR_MASK, OR_FLAGS)?;
    g.a.mov(ecx, 0x10u32)?;
    g.a.add(dword_ptr(B + 0x40), ecx)?;
    g.expect(Access::mr(B + 0x40, 4, 0xffff_fff0));
    g.expect(Access::mw(B + 0x40, 4, 0));
    g.report_flags(ARITH_FLAGS, ADD_FLAGS)?;
    g.a.add(dword_ptr(B + 0x40), ecx)?;
    g.expect(Access::mr(B + 0x40, 4, 0));
    g.expect(Access::mw(B + 0x40, 4, 0x10));
    g.report_if(|a, l| a.jnc(l), 0x7e57_0000)?;

    flags_and_compares(&mut g, AsmRegister32or64::E(ebx))?;

    g.exit(GOOD)?;
    Ok(g)
}

/// Real-mode guest, 16-bit addressing with DS = ES = 0xd000 (the MMIO window) and
/// BX = 0, SI = 2, DI = 4, BP = 8: `[bx]`, `es:[bp+di]` (an override: BP defaults to
/// SS), `[si+disp8]`, `[bx+si+disp8]`, `[bx+di+disp8]`, moffs16 and disp16 absolute
/// forms, 32-bit operands through the 0x66 prefix; the same writes, RMWs and compares as
/// the other modes.
fn real_mode_guest() -> AsmResult<Guest> {
    let mut g = Guest::new(Mode::Real);
    g.a.mov(ax, (B >> 4) as u32)?;
    g.a.mov(ds, ax)?;
    g.a.mov(es, ax)?;
    g.a.xor(ebx, ebx)?;
    g.a.mov(esi, 2u32)?;
    g.a.mov(edi, 4u32)?;
    g.a.mov(ebp, 8u32)?;

    // --- reads
    g.a.mov(eax, dword_ptr(bx))?;
    g.expect(Access::mr(B, 4, 0x1122_3344));
    g.report_eax(0x1122_3344)?;
    g.a.mov(eax, u32::MAX)?;
    g.a.mov(ax, word_ptr(bp + di).es())?;
    g.expect(Access::mr(B + 0xc, 2, 0x6655));
    g.report_eax(0xffff_6655)?;
    g.a.movzx(eax, byte_ptr(si + 0x0e))?;
    g.expect(Access::mr(B + 0x10, 1, 0x85));
    g.report_eax(0x85)?;
    g.a.movsx(eax, byte_ptr(bx + si + 0x0e))?;
    g.expect(Access::mr(B + 0x10, 1, 0x85));
    g.report_eax(0xffff_ff85)?;
    g.a.movsx(eax, word_ptr(bx + di + 0x0e))?;
    g.expect(Access::mr(B + 0x12, 2, 0x8001));
    g.report_eax(0xffff_8001)?;
    g.a.xor(eax, eax)?;
    g.a.mov(al, byte_ptr(0x10u64))?;
    g.expect(Access::mr(B + 0x10, 1, 0x85));
    g.report_eax(0x85)?;
    g.a.mov(ecx, dword_ptr(0x04u64))?;
    g.expect(Access::mr(B + 4, 4, 0x99aa_bbcc));
    g.report(ecx, 0x99aa_bbcc)?;

    // --- writes
    g.a.mov(dword_ptr(bx + 0x20), 0xcafe_f00du32)?;
    g.expect(Access::mw(B + 0x20, 4, 0xcafe_f00d));
    g.a.mov(eax, 0x5678u32)?;
    g.a.mov(word_ptr(bx + si + 0x22), ax)?;
    g.expect(Access::mw(B + 0x24, 2, 0x5678));
    g.a.mov(ecx, 0x9au32)?;
    g.a.mov(byte_ptr(di + 0x22), cl)?;
    g.expect(Access::mw(B + 0x26, 1, 0x9a));
    g.a.mov(byte_ptr(bx + 0x27), 0x42)?;
    g.expect(Access::mw(B + 0x27, 1, 0x42));
    g.a.mov(dword_ptr(0x38u64), ecx)?;
    g.expect(Access::mw(B + 0x38, 4, 0x9a));

    // --- read-modify-write
    g.a.or(byte_ptr(0x44u64), 0x80)?;
    g.expect(Access::mr(B + 0x44, 1, 0x01));
    g.expect(Access::mw(B + 0x44, 1, 0x81));
    g.report_flags(OR_MASK, OR_FLAGS)?;
    g.a.mov(ecx, 0x10u32)?;
    g.a.add(dword_ptr(si + 0x3e), ecx)?;
    g.expect(Access::mr(B + 0x40, 4, 0xffff_fff0));
    g.expect(Access::mw(B + 0x40, 4, 0));
    g.report_flags(ARITH_FLAGS, ADD_FLAGS)?;
    g.a.add(dword_ptr(si + 0x3e), ecx)?;
    g.expect(Access::mr(B + 0x40, 4, 0));
    g.expect(Access::mw(B + 0x40, 4, 0x10));
    g.report_if(|a, l| a.jnc(l), 0x7e57_0000)?;
    g.a.test(dword_ptr(bx + 0x48), 0x00ff_0000)?;
    g.expect(Access::mr(B + 0x48, 4, 0x00ff_0000));
    g.report_if(|a, l| a.jnz(l), 0x7e57_0001)?;
    g.a.cmp(dword_ptr(bx + 0x4c), 0x1234_5679)?;
    g.expect(Access::mr(B + 0x4c, 4, 0x1234_5678));
    g.report_if(|a, l| a.jb(l), 0x7e57_0002)?;
    g.a.cmp(dword_ptr(bx + 0x4c), 0x1234_5679)?;
    g.expect(Access::mr(B + 0x4c, 4, 0x1234_5678));
    g.report_flags(ARITH_FLAGS, CMP_FLAGS)?;
    g.a.mov(ecx, 0x1234_5679u32)?;
    g.a.cmp(ecx, dword_ptr(bx + 0x4c))?;
    g.expect(Access::mr(B + 0x4c, 4, 0x1234_5678));
    g.report_if(|a, l| a.ja(l), 0x7e57_0003)?;
    g.a.cmp(ecx, dword_ptr(bx + 0x4c))?;
    g.expect(Access::mr(B + 0x4c, 4, 0x1234_5678));
    g.report_flags(ARITH_FLAGS, 0)?;

    g.exit(GOOD)?;
    Ok(g)
}

/// String stores into MMIO: `rep stosd` of 4 dwords at B+0x80, then `rep movsb` of
/// RAM_SOURCE from RAM (DATA+0x10) to B+0xa0; reports the index and count registers
/// after each (in real mode ES = 0xd000 for the MMIO side, DS = 0 for RAM); exits GOOD.
fn string_store_guest(mode: Mode) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    // The MMIO side as (segment base, offset) seen from the guest.
    let off = if mode == Mode::Real {
        g.a.mov(ax, (B >> 4) as u32)?;
        g.a.mov(es, ax)?;
        0
    } else {
        B as u32
    };
    g.a.cld()?;
    g.a.mov(edi, off + 0x80)?;
    g.a.mov(ecx, 4u32)?;
    g.a.mov(eax, 0xa5a5_a5a5u32)?;
    g.a.rep().stosd()?;
    for i in 0..4 {
        g.expect(Access::mw(B + 0x80 + 4 * i, 4, 0xa5a5_a5a5));
    }
    g.report(edi, off + 0x90)?;
    g.report(ecx, 0)?;
    g.a.mov(esi, DATA as u32 + 0x10)?;
    g.a.mov(edi, off + 0xa0)?;
    g.a.mov(ecx, 3u32)?;
    g.a.rep().movsb()?;
    for (i, v) in RAM_SOURCE.iter().enumerate() {
        g.expect(Access::mw(B + 0xa0 + i as u64, 1, *v as u64));
    }
    g.report(esi, DATA as u32 + 0x13)?;
    g.report(edi, off + 0xa3)?;
    g.report(ecx, 0)?;
    g.exit(GOOD)?;
    Ok(g)
}

/// A string load from MMIO: `movsb` from B (the byte 0x44) to RAM at DATA, then
/// `rep movsb` of 3 bytes from B+0x10 to DATA+1; reports the byte(s) stored and the
/// index registers (in real mode DS = 0xd000 for the MMIO side, ES = 0 for RAM); exits GOOD.
fn string_load_guest(mode: Mode) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    let off = if mode == Mode::Real {
        g.a.mov(ax, (B >> 4) as u32)?;
        g.a.mov(ds, ax)?;
        0
    } else {
        B as u32
    };
    g.a.cld()?;
    g.a.mov(esi, off)?;
    g.a.mov(edi, DATA as u32)?;
    g.a.movsb()?;
    g.expect(Access::mr(B, 1, 0x44));
    g.report(esi, off + 1)?;
    g.report(edi, DATA as u32 + 1)?;
    g.a.mov(esi, off + 0x10)?;
    g.a.mov(ecx, 3u32)?;
    g.a.rep().movsb()?;
    for (i, v) in [0x85u64, 0, 0x01].iter().enumerate() {
        g.expect(Access::mr(B + 0x10 + i as u64, 1, *v));
    }
    g.report(esi, off + 0x13)?;
    g.report(edi, DATA as u32 + 4)?;
    g.report(ecx, 0)?;
    // DATA holds 44 85 00 01 now (read through ES in real mode: ES = 0).
    let data = if mode == Mode::Real { dword_ptr(DATA).es() } else { dword_ptr(DATA) };
    g.a.mov(eax, data)?;
    g.report_eax(0x0100_8544)?;
    g.exit(GOOD)?;
    Ok(g)
}

fn mmio_device(t: &mut TestMachine) -> std::sync::Arc<Recorder> {
    let low = t.recorder_mmio(MMIO_LOW, MMIO_LEN);
    let high = t.recorder_mmio(MMIO_HIGH, MMIO_LEN);
    for (offset, bytes) in registers() {
        low.set(offset, &bytes);
        high.set(offset, &bytes);
    }
    t.load(DATA + 0x10, &RAM_SOURCE);
    low
}

fn run_guest(mode: Mode, guest: fn(Mode) -> AsmResult<Guest>) {
    let mut t = TestMachine::new(mode);
    mmio_device(&mut t);
    let mut g = guest(mode).unwrap();
    t.load_guest(&mut g);
    let reason = t.run();
    t.check(&reason, GOOD, &g.expected);
}

fn mmio(mode: Mode) {
    let mut t = TestMachine::new(mode);
    let low = mmio_device(&mut t);
    let mut g = match mode {
        Mode::Real => real_mode_guest(),
        Mode::Protected => protected_mode_guest(),
        Mode::Long => long_mode_guest(),
    }
    .unwrap();
    t.load_guest(&mut g);
    let reason = t.run();
    t.check(&reason, GOOD, &g.expected);
    assert_eq!(low.get(0x40, 5), [0x10, 0, 0, 0, 0x81], "RMW results in the device");
}

#[test]
fn mmio_real_mode() {
    mmio(Mode::Real);
}

#[test]
fn mmio_protected_mode() {
    mmio(Mode::Protected);
}

#[test]
fn mmio_long_mode() {
    mmio(Mode::Long);
}

#[test]
fn mmio_string_store_real_mode() {
    run_guest(Mode::Real, string_store_guest);
}

#[test]
fn mmio_string_store_protected_mode() {
    run_guest(Mode::Protected, string_store_guest);
}

#[test]
fn mmio_string_store_long_mode() {
    run_guest(Mode::Long, string_store_guest);
}

#[test]
fn mmio_string_load_real_mode() {
    run_guest(Mode::Real, string_load_guest);
}

#[test]
fn mmio_string_load_protected_mode() {
    run_guest(Mode::Protected, string_load_guest);
}

#[test]
fn mmio_string_load_long_mode() {
    run_guest(Mode::Long, string_load_guest);
}
