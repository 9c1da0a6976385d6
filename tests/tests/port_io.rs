//! Port I/O through hvrun's IO exit handler (reason 30) in real, protected and 64-bit
//! mode: byte/word/dword `out` and `in` through DX and the imm8 form, how `in` merges
//! into RAX, and string I/O (`rep outsb`, `outsw`, `rep insb`, `insw`), whose
//! iterations hvrun carries out itself.
use hvrun_tests::*;
use iced_x86::code_asm::*;

/// A recording device with reads answered from a queue.
const DEV_PORT: u16 = 0x70;
/// The string-I/O device (a port above 0xff: DX only).
const STR_PORT: u16 = 0x3f0;

/// The plain guest: writes 0x77 / 0x6677 / 0x44556677 to DEV_PORT (through DX) and to
/// DEV_PORT+4/+6 (imm8 ports); reads a byte, a word, a dword and an imm8-port byte and
/// reports EAX after each; exits with GOOD.
fn port_guest(mode: Mode) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    let dev = DEV_PORT as u32;

    g.a.mov(edx, dev)?;
    g.a.mov(eax, 0x4455_6677u32)?;
    g.a.out(dx, al)?;
    g.expect(Access::out(DEV_PORT, 1, 0x77));
    g.a.out(dx, ax)?;
    g.expect(Access::out(DEV_PORT, 2, 0x6677));
    g.a.out(dx, eax)?;
    g.expect(Access::out(DEV_PORT, 4, 0x4455_6677));
    g.a.out(dev + 4, al)?;
    g.expect(Access::out(DEV_PORT + 4, 1, 0x77));
    g.a.out(dev + 6, ax)?;
    g.expect(Access::out(DEV_PORT + 6, 2, 0x6677));

    // IN: AL and AX keep the rest of EAX; a dword IN replaces EAX (and in 64-bit mode
    // clears RAX 63:32, like every 32-bit register write).
    g.a.mov(eax, 0xaabb_ccddu32)?;
    g.a.in_(al, dx)?;
    g.expect(Access::inp(DEV_PORT, 1, 0x5a));
    g.report_eax(0xaabb_cc5a)?;
    g.a.mov(eax, 0xaabb_ccddu32)?;
    g.a.in_(ax, dx)?;
    g.expect(Access::inp(DEV_PORT, 2, 0x1234));
    g.report_eax(0xaabb_1234)?;
    if mode == Mode::Long {
        g.a.mov(rax, u64::MAX)?;
        g.a.in_(eax, dx)?;
        g.expect(Access::inp(DEV_PORT, 4, 0xdead_beef));
        g.report_eax(0xdead_beef)?;
        g.a.shr(rax, 32)?;
        g.report_eax(0)?;
    } else {
        g.a.mov(eax, u32::MAX)?;
        g.a.in_(eax, dx)?;
        g.expect(Access::inp(DEV_PORT, 4, 0xdead_beef));
        g.report_eax(0xdead_beef)?;
    }
    g.a.mov(eax, 0x1111_1111u32)?;
    g.a.in_(al, dev + 5)?;
    g.expect(Access::inp(DEV_PORT + 5, 1, 0x7e));
    g.report_eax(0x1111_117e)?;
    g.exit(GOOD)?;
    Ok(g)
}

/// With 16-bit addressing REP counts CX only: in real mode the upper half of ECX is
/// set and must survive.
fn count_high(mode: Mode) -> u32 {
    if mode == Mode::Real {
        0x0001_0000
    } else {
        0
    }
}

/// String output: `rep outsb` of "hello" from RAM at DATA to STR_PORT, then a single
/// `outsw` of the word 0x1234 that follows; reports ESI and ECX after each; exits GOOD.
fn outs_guest(mode: Mode) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    g.a.cld()?;
    g.a.mov(esi, DATA as u32)?;
    g.a.mov(edx, STR_PORT as u32)?;
    g.a.mov(ecx, count_high(mode) | 5)?;
    g.a.rep().outsb()?;
    for b in b"hello" {
        g.expect(Access::out(STR_PORT, 1, *b as u64));
    }
    g.report(esi, DATA as u32 + 5)?;
    g.report(ecx, count_high(mode))?;
    g.a.outsw()?;
    g.expect(Access::out(STR_PORT, 2, 0x1234));
    g.report(esi, DATA as u32 + 7)?;
    g.report(ecx, count_high(mode))?;
    g.exit(GOOD)?;
    Ok(g)
}

/// String input: `rep insb` of 4 bytes from STR_PORT into RAM at DATA+0x100, then a
/// single `insw`; reports EDI and ECX after each and the dword read in; exits GOOD.
fn ins_guest(mode: Mode) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    g.a.cld()?;
    g.a.mov(edx, STR_PORT as u32)?;
    g.a.mov(edi, DATA as u32 + 0x100)?;
    g.a.mov(ecx, count_high(mode) | 4)?;
    g.a.rep().insb()?;
    for b in [0xb1, 0xb2, 0xb3, 0xb4] {
        g.expect(Access::inp(STR_PORT, 1, b));
    }
    g.report(edi, DATA as u32 + 0x104)?;
    g.report(ecx, count_high(mode))?;
    g.a.mov(eax, dword_ptr(DATA + 0x100))?;
    g.report_eax(0xb4b3_b2b1)?;
    g.a.insw()?;
    g.expect(Access::inp(STR_PORT, 2, 0xc2c1));
    g.report(edi, DATA as u32 + 0x106)?;
    g.report(ecx, count_high(mode))?;
    g.exit(GOOD)?;
    Ok(g)
}

fn port_io(mode: Mode) {
    let mut t = TestMachine::new(mode);
    let dev = t.recorder_pio(DEV_PORT, 8);
    dev.queue_reads(&[0x5a, 0x1234, 0xdead_beef, 0x7e]);
    let mut g = port_guest(mode).unwrap();
    t.load_guest(&mut g);
    let reason = t.run();
    t.check(&reason, GOOD, &g.expected);
}

fn string_out(mode: Mode) {
    let mut t = TestMachine::new(mode);
    t.recorder_pio(STR_PORT, 8);
    t.load(DATA, b"hello\x34\x12");
    let mut g = outs_guest(mode).unwrap();
    t.load_guest(&mut g);
    let reason = t.run();
    t.check(&reason, GOOD, &g.expected);
}

fn string_in(mode: Mode) {
    let mut t = TestMachine::new(mode);
    let dev = t.recorder_pio(STR_PORT, 8);
    dev.queue_reads(&[0xb1, 0xb2, 0xb3, 0xb4, 0xc2c1]);
    let mut g = ins_guest(mode).unwrap();
    t.load_guest(&mut g);
    let reason = t.run();
    t.check(&reason, GOOD, &g.expected);
    assert_eq!(t.read(DATA + 0x100, 6), [0xb1, 0xb2, 0xb3, 0xb4, 0xc1, 0xc2], "INS stored the data in RAM");
}

#[test]
fn string_out_real_mode() {
    string_out(Mode::Real);
}

#[test]
fn string_out_protected_mode() {
    string_out(Mode::Protected);
}

#[test]
fn string_out_long_mode() {
    string_out(Mode::Long);
}

#[test]
fn string_in_real_mode() {
    string_in(Mode::Real);
}

#[test]
fn string_in_protected_mode() {
    string_in(Mode::Protected);
}

#[test]
fn string_in_long_mode() {
    string_in(Mode::Long);
}

#[test]
fn port_io_real_mode() {
    port_io(Mode::Real);
}

#[test]
fn port_io_protected_mode() {
    port_io(Mode::Protected);
}

#[test]
fn port_io_long_mode() {
    port_io(Mode::Long);
}
