//! End-to-end tests of [`emulate_mmio`]: instruction bytes come from iced's assembler,
//! the machine is the [`TestBus`] fixture, and each test checks the device accesses and
//! the resulting registers, flags and RIP.

use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction, MemoryOperand, Register};

use super::cpu::{Cr0, Cr4, CsAccessRights, Efer, Rflags};
use super::testbus::{MmioAccess, TestBus, MMIO_BASE};
use super::walk::PfErrorCode;
use super::*;

/// Guest-physical (and, identity-mapped, linear) address of the code under test.
const CODE: u64 = 0x1_0000;
/// Linear address that 64-bit tests map to the MMIO region through a 1 GiB page, within
/// RIP-relative reach of CODE.
const MMIO_ALIAS: u64 = 0x5000_0000;
const GIB: u64 = 1 << 30;

const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RBP: usize = 5;
const RSI: usize = 6;
const RDI: usize = 7;

const CF: u64 = Rflags::CF.bits();
const PF: u64 = Rflags::PF.bits();
const AF: u64 = Rflags::AF.bits();
const ZF: u64 = Rflags::ZF.bits();
const SF: u64 = Rflags::SF.bits();
const OF: u64 = Rflags::OF.bits();
const DF: u64 = Rflags::DF.bits();
const FIXED: u64 = Rflags::FIXED.bits();

/// Long mode, 4-level paging with 1 GiB pages: linear 0-4 GiB identity-mapped, and
/// MMIO_ALIAS's gigabyte mapped onto the one that holds MMIO_BASE.
fn long_mode(bus: &mut TestBus) -> CpuState {
    const PRESENT_WRITABLE_LARGE: u64 = 0x83;
    bus.put_u64(0x1000, 0x2000 | 0x3);
    for i in 0..4 {
        bus.put_u64(0x2000 + 8 * i, (i * GIB) | PRESENT_WRITABLE_LARGE);
    }
    bus.put_u64(
        0x2000 + 8,
        (MMIO_BASE & !(GIB - 1)) | PRESENT_WRITABLE_LARGE,
    );
    CpuState {
        rip: CODE,
        cr0: (Cr0::PE | Cr0::PG | Cr0::WP).bits(),
        cr3: 0x1000,
        cr4: Cr4::PAE.bits(),
        efer: (Efer::LME | Efer::LMA | Efer::NXE).bits(),
        cs_ar: CsAccessRights::L.bits(),
        ..CpuState::default()
    }
}

/// 32-bit protected mode, flat CS, paging off.
fn protected32() -> CpuState {
    CpuState {
        rip: CODE,
        cr0: Cr0::PE.bits(),
        cs_ar: CsAccessRights::DB.bits(),
        ..CpuState::default()
    }
}

/// Real mode with CS = 0x1000 (base CODE), IP 0.
fn real_mode() -> CpuState {
    CpuState {
        rip: 0,
        seg_base: [0, CODE, 0, 0, 0, 0],
        ..CpuState::default()
    }
}

/// A snippet of assembly for one test case.
type Asm = fn(&mut CodeAssembler) -> Result<(), IcedError>;

fn assemble(
    bitness: u32,
    ip: u64,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(bitness).unwrap();
    f(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

fn asm64(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    assemble(64, CODE, f)
}

/// Places `code` at CODE and emulates it; checks that RIP moved past it on success.
fn emulate(
    cpu: &mut CpuState,
    bus: &mut TestBus,
    code: &[u8],
    gpa: u64,
) -> Result<Instruction, EmulateError> {
    bus.put(CODE, code);
    let rip = cpu.rip;
    let result = emulate_mmio(cpu, bus, gpa);
    if let Ok(instr) = &result {
        assert_eq!(instr.len(), code.len(), "decoded {instr}");
        if !is_rep_string(instr.code()) {
            assert_eq!(cpu.rip, rip + code.len() as u64);
        }
    }
    result
}

fn is_rep_string(code: Code) -> bool {
    let name = format!("{code:?}");
    name.starts_with("Stos") || name.starts_with("Movs") || name.starts_with("Lods")
}

fn write(gpa: u64, data: &[u8]) -> MmioAccess {
    MmioAccess::Write {
        gpa,
        data: data.to_vec(),
    }
}

fn read(gpa: u64, len: usize) -> MmioAccess {
    MmioAccess::Read { gpa, len }
}

// ---- MOV -------------------------------------------------------------------------------

#[test]
fn mov_store_every_size_with_sib() {
    let cases: [(Asm, &[u8]); 4] = [
        (|a| a.mov(byte_ptr(rbx + rcx * 4 + 8), al), &[0x88]),
        (|a| a.mov(word_ptr(rbx + rcx * 4 + 8), ax), &[0x88, 0x77]),
        (
            |a| a.mov(dword_ptr(rbx + rcx * 4 + 8), eax),
            &[0x88, 0x77, 0x66, 0x55],
        ),
        (
            |a| a.mov(qword_ptr(rbx + rcx * 4 + 8), rax),
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
        ),
    ];
    for (f, expected) in cases {
        let mut bus = TestBus::new();
        let mut cpu = long_mode(&mut bus);
        cpu.gprs[RAX] = 0x1122_3344_5566_7788;
        cpu.gprs[RBX] = MMIO_BASE;
        cpu.gprs[RCX] = 0x10;
        emulate(&mut cpu, &mut bus, &asm64(f), MMIO_BASE + 0x48).unwrap();
        assert_eq!(bus.log, vec![write(MMIO_BASE + 0x48, expected)]);
    }
}

#[test]
fn mov_load_merges_or_zero_extends() {
    let cases: [(Asm, u64); 5] = [
        (|a| a.mov(al, byte_ptr(rsi)), 0xffff_ffff_ffff_ff88),
        (|a| a.mov(ah, byte_ptr(rsi)), 0xffff_ffff_ffff_88ff),
        (|a| a.mov(ax, word_ptr(rsi)), 0xffff_ffff_ffff_7788),
        // A 32-bit destination clears bits 63:32.
        (|a| a.mov(eax, dword_ptr(rsi)), 0x5566_7788),
        (|a| a.mov(rax, qword_ptr(rsi)), 0x1122_3344_5566_7788),
    ];
    for (f, expected) in cases {
        let mut bus = TestBus::new();
        bus.program_mmio(MMIO_BASE + 0x10, &0x1122_3344_5566_7788u64.to_le_bytes());
        let mut cpu = long_mode(&mut bus);
        cpu.gprs[RAX] = u64::MAX;
        cpu.gprs[RSI] = MMIO_BASE + 0x10;
        let flags = cpu.rflags;
        emulate(&mut cpu, &mut bus, &asm64(f), MMIO_BASE + 0x10).unwrap();
        assert_eq!(cpu.gprs[RAX], expected, "{:x}", cpu.gprs[RAX]);
        assert_eq!(cpu.rflags, flags, "MOV leaves the flags alone");
        assert_eq!(bus.log.len(), 1);
    }
}

#[test]
fn high_byte_registers_and_rex_low_bytes() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RBX] = 0xab00;
    cpu.gprs[RSI] = 0x5a;
    cpu.gprs[RDI] = MMIO_BASE;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(byte_ptr(rdi), bh)),
        MMIO_BASE,
    )
    .unwrap();
    cpu.rip = CODE;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(byte_ptr(rdi + 1), sil)),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(
        bus.log,
        vec![write(MMIO_BASE, &[0xab]), write(MMIO_BASE + 1, &[0x5a])]
    );
}

#[test]
fn mov_immediate_every_size() {
    let cases: [(Asm, &[u8]); 4] = [
        (|a| a.mov(byte_ptr(rdi), 0x12), &[0x12]),
        (|a| a.mov(word_ptr(rdi), 0x1234), &[0x34, 0x12]),
        (
            |a| a.mov(dword_ptr(rdi), 0x1234_5678),
            &[0x78, 0x56, 0x34, 0x12],
        ),
        // imm32 sign-extended to 64 bits.
        (
            |a| a.mov(qword_ptr(rdi), -2),
            &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ];
    for (f, expected) in cases {
        let mut bus = TestBus::new();
        let mut cpu = long_mode(&mut bus);
        cpu.gprs[RDI] = MMIO_BASE + 0x100;
        emulate(&mut cpu, &mut bus, &asm64(f), MMIO_BASE + 0x100).unwrap();
        assert_eq!(bus.log, vec![write(MMIO_BASE + 0x100, expected)]);
    }
}

#[test]
fn mov_moffs_forms() {
    let mut bus = TestBus::new();
    bus.program_mmio(MMIO_BASE + 0x20, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut cpu = long_mode(&mut bus);
    // A1 with a 64-bit absolute address.
    let code = asm64(|a| a.mov(eax, dword_ptr(MMIO_BASE + 0x20)));
    let instr = emulate(&mut cpu, &mut bus, &code, MMIO_BASE).unwrap();
    assert_eq!(instr.code(), Code::Mov_EAX_moffs32);
    assert_eq!(cpu.gprs[RAX], 0x0403_0201);
    // A0 / A2 / A3.
    cpu.rip = CODE;
    let instr = emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(al, byte_ptr(MMIO_BASE + 0x27))),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(instr.code(), Code::Mov_AL_moffs8);
    assert_eq!(cpu.gprs[RAX], 0x0403_0208);
    cpu.rip = CODE;
    let code = asm64(|a| a.mov(qword_ptr(MMIO_BASE + 0x30), rax));
    assert_eq!(
        emulate(&mut cpu, &mut bus, &code, MMIO_BASE)
            .unwrap()
            .code(),
        Code::Mov_moffs64_RAX
    );
    cpu.rip = CODE;
    let code = asm64(|a| a.mov(byte_ptr(MMIO_BASE + 0x38), al));
    assert_eq!(
        emulate(&mut cpu, &mut bus, &code, MMIO_BASE)
            .unwrap()
            .code(),
        Code::Mov_moffs8_AL
    );
    assert_eq!(
        bus.mmio_bytes(MMIO_BASE + 0x30, 9),
        vec![8, 2, 3, 4, 0, 0, 0, 0, 8]
    );
    // moffs in 32-bit code: a 32-bit address, DS base applies.
    let mut bus = TestBus::new();
    let mut cpu = protected32();
    cpu.seg_base[Segment::Ds as usize] = 0x1000;
    cpu.gprs[RAX] = 0xaabb;
    let code = assemble(32, CODE, |a| {
        a.mov(word_ptr(MMIO_BASE as i64 - 0x1000 + 4), ax)
    });
    let instr = emulate(&mut cpu, &mut bus, &code, MMIO_BASE).unwrap();
    assert_eq!(instr.code(), Code::Mov_moffs16_AX);
    assert_eq!(bus.log, vec![write(MMIO_BASE + 4, &[0xbb, 0xaa])]);
}

#[test]
fn rip_and_eip_relative() {
    let mut bus = TestBus::new();
    bus.program_mmio(MMIO_BASE + 0x40, &0xcafe_f00du32.to_le_bytes());
    let mut cpu = long_mode(&mut bus);
    let mut a = CodeAssembler::new(64).unwrap();
    let mem = MemoryOperand::with_base_displ(Register::RIP, (MMIO_ALIAS + 0x40) as i64);
    a.add_instruction(Instruction::with2(Code::Mov_r32_rm32, Register::ECX, mem).unwrap())
        .unwrap();
    let code = a.assemble(CODE).unwrap();
    let instr = emulate(&mut cpu, &mut bus, &code, MMIO_BASE + 0x40).unwrap();
    assert!(instr.is_ip_rel_memory_operand());
    assert_eq!(cpu.gprs[RCX], 0xcafe_f00d);
    assert_eq!(bus.log, vec![read(MMIO_BASE + 0x40, 4)]);

    // EIP-relative (0x67): the target is computed in 32 bits. (Encoded with iced's
    // Encoder: the CodeAssembler's block encoder turns EIP-relative into RIP-relative.)
    cpu.rip = CODE;
    let mem = MemoryOperand::with_base_displ(Register::EIP, (MMIO_ALIAS + 0x40) as i64);
    let instr = Instruction::with2(Code::Mov_r32_rm32, Register::EDX, mem).unwrap();
    let mut encoder = iced_x86::Encoder::new(64);
    encoder.encode(&instr, CODE).unwrap();
    let code = encoder.take_buffer();
    assert_eq!(code[0], 0x67, "{code:02x?}");
    emulate(&mut cpu, &mut bus, &code, MMIO_BASE + 0x40).unwrap();
    assert_eq!(cpu.gprs[RDX], 0xcafe_f00d);
}

#[test]
fn address_size_prefix_in_64_bit_mode_wraps_at_4g() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RAX] = 0x99;
    // Bits 63:32 of RBX are ignored with a 32-bit address size, and EBX + ECX wraps.
    cpu.gprs[RBX] = 0xffff_ffff_0000_0000 | (MMIO_BASE + 0x1000);
    cpu.gprs[RCX] = 0xffff_fff0;
    let code = asm64(|a| a.mov(byte_ptr(ebx + ecx + 0x14), al));
    assert_eq!(code[0], 0x67);
    emulate(&mut cpu, &mut bus, &code, MMIO_BASE).unwrap();
    assert_eq!(bus.log, vec![write(MMIO_BASE + 0x1004, &[0x99])]);
}

#[test]
fn negative_displacement_and_scale() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RAX] = 0x77;
    cpu.gprs[RBX] = MMIO_BASE + 0x100;
    cpu.gprs[RCX] = 2;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(byte_ptr(rbx + rcx * 8 - 0x20), al)),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(bus.log, vec![write(MMIO_BASE + 0xf0, &[0x77])]);
}

#[test]
fn fs_gs_overrides_in_64_bit_mode() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.seg_base = [0x1000, 0x1000, 0x1000, 0x1000, MMIO_BASE, MMIO_BASE + 0x200];
    cpu.gprs[RAX] = 0x42;
    cpu.gprs[RBX] = 0x10;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(byte_ptr(rbx).fs(), al)),
        MMIO_BASE,
    )
    .unwrap();
    cpu.rip = CODE;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(byte_ptr(rbx).gs(), al)),
        MMIO_BASE,
    )
    .unwrap();
    // ES/CS/SS/DS bases do not apply in 64-bit mode.
    cpu.rip = CODE;
    cpu.gprs[RBX] = MMIO_BASE + 0x300;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(byte_ptr(rbx).es(), al)),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(
        bus.log,
        vec![
            write(MMIO_BASE + 0x10, &[0x42]),
            write(MMIO_BASE + 0x210, &[0x42]),
            write(MMIO_BASE + 0x300, &[0x42])
        ]
    );
}

#[test]
fn protected_mode_segment_base() {
    let mut bus = TestBus::new();
    let mut cpu = protected32();
    cpu.seg_base[Segment::Ds as usize] = MMIO_BASE;
    cpu.seg_base[Segment::Ss as usize] = MMIO_BASE + 0x800;
    cpu.gprs[RAX] = 0x0102_0304;
    cpu.gprs[RBX] = 0x40;
    cpu.gprs[RBP] = 0x40;
    emulate(
        &mut cpu,
        &mut bus,
        &assemble(32, CODE, |a| a.mov(dword_ptr(ebx), eax)),
        MMIO_BASE,
    )
    .unwrap();
    // EBP as base defaults to SS.
    cpu.rip = CODE;
    emulate(
        &mut cpu,
        &mut bus,
        &assemble(32, CODE, |a| a.mov(word_ptr(ebp + 2), ax)),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(
        bus.log,
        vec![
            write(MMIO_BASE + 0x40, &[4, 3, 2, 1]),
            write(MMIO_BASE + 0x842, &[4, 3])
        ]
    );
}

// ---- real mode / 16-bit addressing -------------------------------------------------------

/// MMIO at 0xA0000 (the legacy VGA window), reachable from real mode.
const VGA: u64 = 0xa_0000;

#[test]
fn real_mode_16_bit_addressing() {
    let mut bus = TestBus::with_mmio_at(VGA);
    bus.program_mmio(VGA + 0x10, &[0x34, 0x12]);
    let mut cpu = real_mode();
    cpu.seg_base[Segment::Ds as usize] = VGA; // DS = 0xA000
    cpu.seg_base[Segment::Ss as usize] = VGA + 0x100; // SS = 0xA010
    cpu.seg_base[Segment::Es as usize] = VGA + 0x200; // ES = 0xA020
    cpu.gprs[RBX] = 0x8;
    cpu.gprs[RSI] = 0x4;
    cpu.gprs[RAX] = 0xffff_ffff_0000_0000;
    // mov ax, [bx+si+4]
    let instr = emulate(
        &mut cpu,
        &mut bus,
        &assemble(16, 0, |a| a.mov(ax, word_ptr(bx + si + 4))),
        VGA,
    )
    .unwrap();
    assert_eq!(instr.code_size(), iced_x86::CodeSize::Code16);
    assert_eq!(cpu.gprs[RAX], 0xffff_ffff_0000_1234);
    assert_eq!(cpu.rip, 3);

    // [bp+di-2] uses SS.
    cpu.rip = 0;
    cpu.gprs[RBP] = 0x10;
    cpu.gprs[RDI] = 0x2;
    emulate(
        &mut cpu,
        &mut bus,
        &assemble(16, 0, |a| a.mov(byte_ptr(bp + di - 2), al)),
        VGA,
    )
    .unwrap();
    // ES override.
    cpu.rip = 0;
    emulate(
        &mut cpu,
        &mut bus,
        &assemble(16, 0, |a| a.mov(word_ptr(bx).es(), ax)),
        VGA,
    )
    .unwrap();
    // 16-bit effective addresses wrap at 64 KiB: 0xfffe + 4 + 4 = 0x10006 -> 6.
    cpu.rip = 0;
    cpu.gprs[RBX] = 0xfffe;
    emulate(
        &mut cpu,
        &mut bus,
        &assemble(16, 0, |a| a.mov(byte_ptr(bx + si + 4), ah)),
        VGA,
    )
    .unwrap();
    assert_eq!(
        bus.log[1..],
        [
            write(VGA + 0x110, &[0x34]),
            write(VGA + 0x208, &[0x34, 0x12]),
            write(VGA + 6, &[0x12])
        ]
    );
}

#[test]
fn real_mode_prefixes_66_and_67() {
    let mut bus = TestBus::with_mmio_at(VGA);
    bus.program_mmio(VGA + 0x44, &[1, 2, 3, 4]);
    let mut cpu = real_mode();
    cpu.seg_base[Segment::Ds as usize] = VGA;
    cpu.gprs[RAX] = 0xffff_ffff_ffff_ffff;
    cpu.gprs[RBX] = 0x40;
    cpu.gprs[RCX] = 0x2;
    // 0x67: 32-bit addressing with SIB in 16-bit code; 0x66: 32-bit operand.
    let code = assemble(16, 0, |a| a.mov(eax, dword_ptr(ebx + ecx * 2)));
    assert!(
        code[..2].contains(&0x66) && code[..2].contains(&0x67),
        "{code:02x?}"
    );
    emulate(&mut cpu, &mut bus, &code, VGA).unwrap();
    assert_eq!(cpu.gprs[RAX], 0x0403_0201);
}

// ---- MOVZX / MOVSX / MOVSXD ----------------------------------------------------------------

#[test]
fn zero_and_sign_extension() {
    let cases: [(Asm, u64); 7] = [
        (|a| a.movzx(eax, byte_ptr(rsi)), 0x80),
        (|a| a.movzx(rax, word_ptr(rsi)), 0xff80),
        (|a| a.movzx(cx, byte_ptr(rsi)), 0xffff_ffff_ffff_0080),
        (|a| a.movsx(rax, byte_ptr(rsi)), 0xffff_ffff_ffff_ff80),
        (|a| a.movsx(eax, word_ptr(rsi)), 0xffff_ff80),
        (|a| a.movsx(cx, byte_ptr(rsi)), 0xffff_ffff_ffff_ff80),
        (|a| a.movsxd(rax, dword_ptr(rsi)), 0xffff_ffff_8000_ff80),
    ];
    for (i, (f, expected)) in cases.into_iter().enumerate() {
        let mut bus = TestBus::new();
        bus.program_mmio(MMIO_BASE, &[0x80, 0xff, 0x00, 0x80]);
        let mut cpu = long_mode(&mut bus);
        cpu.gprs[RAX] = u64::MAX;
        cpu.gprs[RCX] = u64::MAX;
        cpu.gprs[RSI] = MMIO_BASE;
        let instr = emulate(&mut cpu, &mut bus, &asm64(f), MMIO_BASE).unwrap();
        let reg = if instr.op0_register() == Register::CX {
            RCX
        } else {
            RAX
        };
        assert_eq!(cpu.gprs[reg], expected, "case {i}: {instr}");
    }
}

// ---- arithmetic ------------------------------------------------------------------------

/// Runs one instruction against an MMIO location holding `mem` (8 bytes) with RAX =
/// `rax`; returns (RAX, RFLAGS status bits, MMIO bytes afterwards, log).
fn arith(f: Asm, mem: u64, acc: u64, rflags: u64) -> (u64, u64, u64, Vec<MmioAccess>) {
    let mut bus = TestBus::new();
    bus.program_mmio(MMIO_BASE, &mem.to_le_bytes());
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RAX] = acc;
    cpu.gprs[RDI] = MMIO_BASE;
    cpu.rflags = rflags | FIXED;
    emulate(&mut cpu, &mut bus, &asm64(f), MMIO_BASE).unwrap();
    let after = u64::from_le_bytes(bus.mmio_bytes(MMIO_BASE, 8).try_into().unwrap());
    (
        cpu.gprs[RAX],
        cpu.rflags & Rflags::STATUS.bits(),
        after,
        bus.log,
    )
}

#[test]
fn add_every_size_to_memory() {
    // Byte: 0x7f + 1 -> 0x80, OF SF AF.
    let (_, flags, mem, log) = arith(|a| a.add(byte_ptr(rdi), al), 0x7f, 1, 0);
    assert_eq!((flags, mem), (OF | SF | AF, 0x80));
    assert_eq!(log, vec![read(MMIO_BASE, 1), write(MMIO_BASE, &[0x80])]);
    // Word: 0xffff + 1 -> 0, CF ZF PF AF; the byte above is untouched.
    let (_, flags, mem, _) = arith(|a| a.add(word_ptr(rdi), ax), 0xaa_ffff, 1, 0);
    assert_eq!((flags, mem), (CF | ZF | PF | AF, 0xaa_0000));
    // Dword with a sign-extended imm8: 5 + (-1) = 4, CF (unsigned wrap).
    let (_, flags, mem, _) = arith(|a| a.add(dword_ptr(rdi), -1), 5, 0, 0);
    assert_eq!((flags, mem), (CF | AF, 4));
    // Qword, register destination: RAX += [mem].
    let (acc, flags, mem, log) = arith(
        |a| a.add(rax, qword_ptr(rdi)),
        0x8000_0000_0000_0000,
        0x8000_0000_0000_0000,
        0,
    );
    assert_eq!(
        (acc, flags, mem),
        (0, CF | OF | ZF | PF, 0x8000_0000_0000_0000)
    );
    assert_eq!(log, vec![read(MMIO_BASE, 8)]);
}

#[test]
fn adc_sbb_use_the_carry() {
    let (_, flags, mem, _) = arith(|a| a.adc(byte_ptr(rdi), 1), 0xfe, 0, CF);
    assert_eq!((flags, mem), (CF | ZF | PF | AF, 0));
    let (acc, flags, _, _) = arith(|a| a.sbb(eax, dword_ptr(rdi)), 0, 0, CF);
    assert_eq!((acc, flags), (0xffff_ffff, CF | SF | PF | AF));
}

#[test]
fn sub_and_cmp() {
    // SUB word [mem], imm16: 0x8000 - 1 = 0x7fff, signed overflow.
    let (_, flags, mem, _) = arith(|a| a.sub(word_ptr(rdi), 1), 0x8000, 0, 0);
    assert_eq!((flags, mem), (OF | AF | PF, 0x7fff));
    // CMP: flags only, no write.
    let (_, flags, mem, log) = arith(|a| a.cmp(dword_ptr(rdi), eax), 3, 5, 0);
    assert_eq!((flags, mem), (CF | SF | AF, 3));
    assert_eq!(log, vec![read(MMIO_BASE, 4)]);
    let (_, flags, _, _) = arith(|a| a.cmp(qword_ptr(rdi), 0x10), 0x10, 0, CF | OF);
    assert_eq!(flags, ZF | PF);
    let (_, flags, _, _) = arith(|a| a.cmp(al, byte_ptr(rdi)), 0x01, 0x80, 0);
    assert_eq!(flags, OF | AF);
}

#[test]
fn logic_and_test() {
    // 0x1234 & 0xff00 = 0x1200: the low byte is 0, so PF is set.
    let (_, flags, mem, _) = arith(|a| a.and(dword_ptr(rdi), 0xff00), 0x1234, 0, CF | OF | AF);
    assert_eq!((flags, mem), (PF, 0x1200));
    let (_, flags, mem, _) = arith(|a| a.or(byte_ptr(rdi), al), 0x80, 0x01, 0);
    assert_eq!((flags, mem), (SF | PF, 0x81));
    let (acc, flags, _, _) = arith(|a| a.xor(rax, qword_ptr(rdi)), 0xff, 0xff, CF);
    assert_eq!((acc, flags), (0, ZF | PF));
    let (_, flags, mem, log) = arith(|a| a.test(word_ptr(rdi), ax), 0x8001, 0x8000, CF);
    assert_eq!((flags, mem), (SF | PF, 0x8001));
    assert_eq!(log, vec![read(MMIO_BASE, 2)]);
    let (_, flags, _, _) = arith(|a| a.test(byte_ptr(rdi), 0x10), 0x01, 0, 0);
    assert_eq!(flags, ZF | PF);
}

// ---- BT family ---------------------------------------------------------------------------

#[test]
fn bt_immediate_offset_is_modulo_size() {
    let (_, flags, _, log) = arith(|a| a.bt(dword_ptr(rdi), 33), 0b10, 0, ZF);
    // 33 mod 32 = bit 1; ZF untouched.
    assert_eq!(flags, CF | ZF);
    assert_eq!(log, vec![read(MMIO_BASE, 4)]);
    let (_, flags, mem, _) = arith(|a| a.bts(word_ptr(rdi), 15), 0, 0, 0);
    assert_eq!((flags, mem), (0, 0x8000));
}

#[test]
fn bt_register_offset_addresses_beyond_the_operand() {
    // Bit 35 of a dword bit string at rdi: dword at rdi+4, bit 3.
    let mut bus = TestBus::new();
    bus.program_mmio(MMIO_BASE + 0x104, &[0x08, 0, 0, 0]);
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RDI] = MMIO_BASE + 0x100;
    cpu.gprs[RAX] = 35;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.bt(dword_ptr(rdi), eax)),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(cpu.rflags & CF, CF);
    assert_eq!(bus.log, vec![read(MMIO_BASE + 0x104, 4)]);

    // Offset -1 (as a signed 64-bit number): the qword before, bit 63; BTR clears it.
    bus.log.clear();
    bus.program_mmio(MMIO_BASE + 0xf8, &[0, 0, 0, 0, 0, 0, 0, 0x80]);
    cpu.rip = CODE;
    cpu.gprs[RAX] = u64::MAX;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.btr(qword_ptr(rdi), rax)),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(cpu.rflags & CF, CF);
    assert_eq!(
        bus.log,
        vec![read(MMIO_BASE + 0xf8, 8), write(MMIO_BASE + 0xf8, &[0; 8])]
    );

    // 16-bit operand: offset 0x8010 as a signed word is -32752 = -2047 words + bit 0.
    bus.log.clear();
    cpu.rip = CODE;
    cpu.gprs[RAX] = 0xffff_8010;
    cpu.gprs[RDI] = MMIO_BASE + 0x2000;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.btc(word_ptr(rdi), ax)),
        MMIO_BASE,
    )
    .unwrap();
    let at = MMIO_BASE + 0x2000 - 2047 * 2;
    assert_eq!(cpu.rflags & CF, 0);
    assert_eq!(bus.log, vec![read(at, 2), write(at, &[1, 0])]);
}

// ---- XCHG --------------------------------------------------------------------------------

#[test]
fn xchg_with_memory() {
    let (acc, _, mem, log) = arith(
        |a| a.xchg(dword_ptr(rdi), eax),
        0x1111_2222,
        0xffff_ffff_3333_4444,
        0,
    );
    assert_eq!((acc, mem), (0x1111_2222, 0x3333_4444));
    assert_eq!(
        log,
        vec![
            read(MMIO_BASE, 4),
            write(MMIO_BASE, &[0x44, 0x44, 0x33, 0x33])
        ]
    );
    let (acc, _, mem, _) = arith(|a| a.xchg(byte_ptr(rdi), ah), 0x12, 0xab00, 0);
    assert_eq!((acc, mem), (0x1200, 0xab));
}

// ---- string instructions ------------------------------------------------------------------

#[test]
fn rep_stos_forward_and_backward() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RAX] = 0xaabb_ccdd;
    cpu.gprs[RDI] = MMIO_BASE;
    cpu.gprs[RCX] = 3;
    let code = asm64(|a| a.rep().stosd());
    emulate(&mut cpu, &mut bus, &code, MMIO_BASE).unwrap();
    assert_eq!(
        (cpu.gprs[RCX], cpu.gprs[RDI], cpu.rip),
        (0, MMIO_BASE + 12, CODE + 2)
    );
    let value = [0xdd, 0xcc, 0xbb, 0xaa];
    assert_eq!(
        bus.log,
        vec![
            write(MMIO_BASE, &value),
            write(MMIO_BASE + 4, &value),
            write(MMIO_BASE + 8, &value)
        ]
    );

    // DF = 1: downwards; STOSW.
    bus.log.clear();
    cpu.rip = CODE;
    cpu.rflags |= DF;
    cpu.gprs[RCX] = 2;
    cpu.gprs[RDI] = MMIO_BASE + 0x10;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.rep().stosw()), MMIO_BASE).unwrap();
    assert_eq!(cpu.gprs[RDI], MMIO_BASE + 0xc);
    assert_eq!(
        bus.log,
        vec![
            write(MMIO_BASE + 0x10, &[0xdd, 0xcc]),
            write(MMIO_BASE + 0xe, &[0xdd, 0xcc])
        ]
    );

    // RCX = 0: nothing happens but RIP moves on.
    bus.log.clear();
    cpu.rip = CODE;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.rep().stosq()), MMIO_BASE).unwrap();
    assert!(bus.log.is_empty());
    assert_eq!(cpu.rip, CODE + 3);

    // No REP: one element, RCX untouched.
    cpu.rip = CODE;
    cpu.rflags &= !DF;
    cpu.gprs[RCX] = 7;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.stosb()), MMIO_BASE).unwrap();
    assert_eq!(
        (cpu.gprs[RCX], cpu.gprs[RDI], cpu.rip),
        (7, MMIO_BASE + 0xd, CODE + 1)
    );
}

#[test]
fn repe_cmps_and_repne_scas_stop_on_the_condition() {
    let mut bus = TestBus::new();
    bus.program_mmio(MMIO_BASE, b"abcXef");
    let mut cpu = long_mode(&mut bus);
    bus.put(0x20_0000, b"abcdef");
    // REPE CMPSB: equal bytes go on, the first difference stops it (after counting it).
    cpu.gprs[RSI] = MMIO_BASE;
    cpu.gprs[RDI] = 0x20_0000;
    cpu.gprs[RCX] = 6;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.repe().cmpsb()), MMIO_BASE).unwrap();
    assert_eq!((cpu.gprs[RSI], cpu.gprs[RDI], cpu.gprs[RCX]), (MMIO_BASE + 4, 0x20_0004, 2));
    assert_eq!(cpu.rflags & 0x8d5, 0x81, "'X' - 'd': ZF clear, CF and SF set");
    assert_eq!(cpu.rip, CODE + 2);
    // Equal all the way: RCX runs out with ZF set.
    cpu.rip = CODE;
    cpu.gprs[RSI] = MMIO_BASE;
    cpu.gprs[RDI] = 0x20_0000;
    cpu.gprs[RCX] = 3;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.repe().cmpsb()), MMIO_BASE).unwrap();
    assert_eq!((cpu.gprs[RCX], cpu.rflags & 0x40), (0, 0x40));
    // REPNE SCASB for 'X' in MMIO: stops on the match, ZF set; only RDI moves.
    cpu.rip = CODE;
    cpu.gprs[RAX] = u64::from(b'X');
    cpu.gprs[RDI] = MMIO_BASE;
    cpu.gprs[RSI] = 0x1234;
    cpu.gprs[RCX] = 6;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.repne().scasb()), MMIO_BASE).unwrap();
    assert_eq!((cpu.gprs[RDI], cpu.gprs[RCX], cpu.gprs[RSI]), (MMIO_BASE + 4, 2, 0x1234));
    assert_eq!(cpu.rflags & 0x40, 0x40);
    // One SCASW without REP: flags of AX - [rDI], RCX untouched.
    cpu.rip = CODE;
    cpu.gprs[RAX] = 0x6261; // "ab"
    cpu.gprs[RDI] = MMIO_BASE;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.scasw()), MMIO_BASE).unwrap();
    assert_eq!((cpu.gprs[RDI], cpu.gprs[RCX], cpu.rflags & 0x40), (MMIO_BASE + 2, 2, 0x40));
}

#[test]
fn rep_movs_mmio_to_ram_and_back() {
    let mut bus = TestBus::new();
    bus.program_mmio(MMIO_BASE, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RSI] = MMIO_BASE;
    cpu.gprs[RDI] = 0x20_0000;
    cpu.gprs[RCX] = 8;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.rep().movsb()), MMIO_BASE).unwrap();
    assert_eq!(bus.get(0x20_0000, 8), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        (cpu.gprs[RSI], cpu.gprs[RDI], cpu.gprs[RCX]),
        (MMIO_BASE + 8, 0x20_0008, 0)
    );
    assert_eq!(bus.log.len(), 8);

    // RAM -> MMIO, quadwords, DF = 1.
    bus.log.clear();
    bus.put(0x30_0000, &[0x11; 8]);
    bus.put(0x30_0008, &[0x22; 8]);
    cpu.rip = CODE;
    cpu.rflags |= DF;
    cpu.gprs[RSI] = 0x30_0008;
    cpu.gprs[RDI] = MMIO_BASE + 0x108;
    cpu.gprs[RCX] = 2;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.rep().movsq()), MMIO_BASE).unwrap();
    assert_eq!(
        bus.log,
        vec![
            write(MMIO_BASE + 0x108, &[0x22; 8]),
            write(MMIO_BASE + 0x100, &[0x11; 8])
        ]
    );
    assert_eq!(
        (cpu.gprs[RSI], cpu.gprs[RDI]),
        (0x2f_fff8, MMIO_BASE + 0xf8)
    );

    // MMIO -> MMIO with an FS source override.
    bus.log.clear();
    cpu.rip = CODE;
    cpu.rflags &= !DF;
    cpu.seg_base[Segment::Fs as usize] = MMIO_BASE;
    cpu.gprs[RSI] = 0;
    cpu.gprs[RDI] = MMIO_BASE + 0x200;
    cpu.gprs[RCX] = 1;
    let mut a = CodeAssembler::new(64).unwrap();
    a.add_instruction(
        Instruction::with_movsd(64, Register::FS, iced_x86::RepPrefixKind::Repe).unwrap(),
    )
    .unwrap();
    let code = a.assemble(CODE).unwrap();
    emulate(&mut cpu, &mut bus, &code, MMIO_BASE).unwrap();
    assert_eq!(
        bus.log,
        vec![read(MMIO_BASE, 4), write(MMIO_BASE + 0x200, &[1, 2, 3, 4])]
    );
}

#[test]
fn string_address_size_16_and_32() {
    // Real mode: SI/DI/CX are 16 bits and wrap; the upper bits stay.
    let mut bus = TestBus::with_mmio_at(VGA);
    bus.program_mmio(VGA + 0xffff, &[0x5a]);
    bus.program_mmio(VGA, &[0xa5]);
    let mut cpu = real_mode();
    cpu.seg_base[Segment::Ds as usize] = VGA;
    cpu.seg_base[Segment::Es as usize] = 0x2_0000;
    cpu.gprs[RSI] = 0xdead_0000_0000_ffff;
    cpu.gprs[RDI] = 0x10;
    cpu.gprs[RCX] = 0x1_0000_0002;
    emulate(
        &mut cpu,
        &mut bus,
        &assemble(16, 0, |a| a.rep().movsb()),
        VGA,
    )
    .unwrap();
    assert_eq!(bus.get(0x2_0010, 2), vec![0x5a, 0xa5]);
    assert_eq!(
        (cpu.gprs[RSI], cpu.gprs[RDI], cpu.gprs[RCX]),
        (0xdead_0000_0000_0001, 0x12, 0x1_0000_0000)
    );

    // 0x67 in 64-bit mode: ECX/EDI, and writing them zero-extends.
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RDI] = 0xffff_ffff_0000_0000 | MMIO_BASE;
    cpu.gprs[RCX] = 0xffff_ffff_0000_0001;
    let mut a = CodeAssembler::new(64).unwrap();
    a.add_instruction(Instruction::with_stosb(32, iced_x86::RepPrefixKind::Repe).unwrap())
        .unwrap();
    let code = a.assemble(CODE).unwrap();
    assert_eq!(code[0], 0x67);
    emulate(&mut cpu, &mut bus, &code, MMIO_BASE).unwrap();
    assert_eq!((cpu.gprs[RDI], cpu.gprs[RCX]), (MMIO_BASE + 1, 0));
    assert_eq!(bus.log, vec![write(MMIO_BASE, &[0])]);
}

#[test]
fn lods_from_mmio() {
    let mut bus = TestBus::new();
    bus.program_mmio(MMIO_BASE, &[0x34, 0x12]);
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RSI] = MMIO_BASE;
    cpu.gprs[RAX] = u64::MAX;
    emulate(&mut cpu, &mut bus, &asm64(|a| a.lodsw()), MMIO_BASE).unwrap();
    assert_eq!(
        (cpu.gprs[RAX], cpu.gprs[RSI]),
        (0xffff_ffff_ffff_1234, MMIO_BASE + 2)
    );
}

#[test]
fn long_rep_is_done_in_bounded_batches() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RDI] = MMIO_BASE;
    cpu.gprs[RCX] = 5000;
    let code = asm64(|a| a.rep().stosb());
    emulate(&mut cpu, &mut bus, &code, MMIO_BASE).unwrap();
    // RIP stays on the instruction; the guest re-executes it for the rest.
    assert_eq!(cpu.rip, CODE);
    assert_eq!(cpu.gprs[RCX], 5000 - MAX_REP_ITERATIONS);
    assert_eq!(cpu.gprs[RDI], MMIO_BASE + MAX_REP_ITERATIONS);
    for _ in 0..4 {
        emulate_mmio(&mut cpu, &mut bus, MMIO_BASE).unwrap();
    }
    assert_eq!((cpu.gprs[RCX], cpu.rip), (0, CODE + 2));
    assert_eq!(bus.log.len(), 5000);
}

#[test]
fn fault_in_the_middle_of_rep_retires_the_done_iterations() {
    // 4-level paging with 4 KiB pages: linear 0x40_0000 -> MMIO, 0x40_1000 not present.
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    bus.put_u64(0x2000, 0x3000 | 3); // PDPTE 0 -> PD (replaces the 1 GiB page)
    bus.put_u64(0x3000, 0x83); // 2 MiB identity page for the code and tables
    bus.put_u64(0x3000 + 8 * 2, 0x4000 | 3); // PD[2] -> PT
    bus.put_u64(0x4000, MMIO_BASE | 3);
    cpu.gprs[RDI] = 0x40_0ffe;
    cpu.gprs[RCX] = 4;
    let err = emulate(&mut cpu, &mut bus, &asm64(|a| a.rep().stosb()), MMIO_BASE).unwrap_err();
    assert_eq!(
        err,
        EmulateError::Fault(Fault::page_fault(0x40_1000, PfErrorCode::WRITE))
    );
    assert_eq!(
        (cpu.gprs[RDI], cpu.gprs[RCX], cpu.rip),
        (0x40_1000, 2, CODE)
    );
    assert_eq!(bus.log.len(), 2);
}

// ---- page crossing, faults, mismatches ------------------------------------------------------

#[test]
fn access_spanning_two_pages_is_split() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RAX] = 0x4433_2211;
    cpu.gprs[RDI] = MMIO_BASE + 0xffe;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(dword_ptr(rdi), eax)),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(
        bus.log,
        vec![
            write(MMIO_BASE + 0xffe, &[0x11, 0x22]),
            write(MMIO_BASE + 0x1000, &[0x33, 0x44])
        ]
    );
}

#[test]
fn data_page_fault_changes_nothing() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    // PML4 entry 1 is not present: linear 0x80_0000_0000 faults.
    cpu.gprs[RDI] = 0x80_0000_0010;
    let before = cpu.clone();
    let err = emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.add(dword_ptr(rdi), eax)),
        MMIO_BASE,
    )
    .unwrap_err();
    assert_eq!(
        err,
        EmulateError::Fault(Fault::page_fault(0x80_0000_0010, PfErrorCode::WRITE))
    );
    assert_eq!(cpu, before);
    // Non-canonical: #GP(0).
    cpu.gprs[RDI] = 0x8000_0000_0000_0000;
    let err = emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(eax, dword_ptr(rdi))),
        MMIO_BASE,
    )
    .unwrap_err();
    assert_eq!(err, EmulateError::Fault(Fault::general_protection()));
}

#[test]
fn operand_not_on_the_exit_page_is_still_emulated() {
    let mut bus = TestBus::new();
    let mut cpu = long_mode(&mut bus);
    cpu.gprs[RDI] = MMIO_BASE + 0x3000;
    emulate(
        &mut cpu,
        &mut bus,
        &asm64(|a| a.mov(byte_ptr(rdi), al)),
        MMIO_BASE,
    )
    .unwrap();
    assert_eq!(bus.log, vec![write(MMIO_BASE + 0x3000, &[0])]);
}

#[test]
fn unsupported_instructions_have_no_effect() {
    let cases: [(&str, Asm); 6] = [
        ("Mov", |a| a.mov(ds, word_ptr(rdi))),
        ("Inc", |a| a.inc(dword_ptr(rdi))),
        ("Movsd", |a| a.movsd_2(xmm0, qword_ptr(rdi))),
        ("Mov", |a| a.mov(eax, ebx)),
        ("Push", |a| a.push(qword_ptr(rdi))),
        ("Ud0", |a| {
            a.db(&[0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        }),
    ];
    for (mnemonic, f) in cases {
        let mut bus = TestBus::new();
        let mut cpu = long_mode(&mut bus);
        cpu.gprs[RDI] = MMIO_BASE;
        let before = cpu.clone();
        let code = asm64(f);
        let err = emulate(&mut cpu, &mut bus, &code, MMIO_BASE).unwrap_err();
        let text = err.to_string();
        let hex: Vec<String> = code.iter().take(2).map(|b| format!("{b:02x}")).collect();
        assert!(
            text.starts_with(&format!("unsupported instruction [{}", hex.join(" "))),
            "{text}"
        );
        assert!(text.contains(&format!("({mnemonic})")), "{text}");
        assert_eq!(cpu, before);
        assert!(bus.log.is_empty());
    }
}

// ---- robustness -----------------------------------------------------------------------------

/// xorshift64: a fixed-seed pseudo-random source, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = [0usize; 3];
    for round in 0..4000 {
        let mut bus = TestBus::new();
        let mut cpu = match round % 4 {
            0 => long_mode(&mut bus),
            1 => protected32(),
            2 => real_mode(),
            _ => {
                // Random paging state: hostile CR3, CR4, EFER bits.
                let mut cpu = long_mode(&mut bus);
                cpu.cr3 = rng.next();
                cpu.cr4 = rng.next() & 0x30_1030;
                cpu.efer = rng.next() & 0xd00;
                cpu.cr0 = rng.next() & 0x8001_0001;
                cpu.cs_ar = rng.next() as u32;
                cpu.cpl = rng.next() as u8;
                cpu.phys_addr_bits = rng.next() as u8;
                cpu
            }
        };
        // Registers: a mix of MMIO pointers, small numbers and noise.
        for gpr in cpu.gprs.iter_mut() {
            *gpr = match rng.next() % 4 {
                0 => MMIO_BASE + (rng.next() & 0xffff),
                1 => rng.next() & 0xff,
                _ => rng.next(),
            };
        }
        cpu.rflags = rng.next() & (DF | CF | Rflags::AC.bits()) | FIXED;
        cpu.seg_base = [
            0,
            cpu.seg_base[1],
            rng.next(),
            rng.next() & 0xffff_ffff,
            MMIO_BASE,
            rng.next(),
        ];
        let mut code = [0u8; 15];
        for byte in code.iter_mut() {
            *byte = rng.next() as u8;
        }
        // Bias towards instructions the emulator handles.
        let prefixes = [
            0x88, 0x89, 0x8a, 0x8b, 0xa4, 0xab, 0x0f, 0x81, 0x66, 0x67, 0xf3, 0x48, 0xc7, 0x85,
        ];
        code[0] = prefixes[(rng.next() % prefixes.len() as u64) as usize];
        let linear_code = cpu.linear(Segment::Cs, cpu.rip);
        bus.put(linear_code, &code);
        match emulate_mmio(&mut cpu, &mut bus, MMIO_BASE) {
            Ok(_) => outcomes[0] += 1,
            Err(EmulateError::Fault(_)) => outcomes[1] += 1,
            Err(EmulateError::Unsupported { what, .. }) => {
                assert!(!what.is_empty());
                outcomes[2] += 1
            }
        }
    }
    eprintln!("emulated, faulted, unsupported: {outcomes:?}");
    // The mix must actually exercise the emulator, not just the error paths.
    assert!(outcomes[0] > 500, "{outcomes:?}");
}
