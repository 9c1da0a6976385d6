//! Port I/O through hvrun's IO exit handler (reason 30) in real, protected and 64-bit
//! mode: byte/word/dword `out` and `in` through DX and the imm8 form, how `in` merges
//! into RAX, and string I/O (`rep outsb`, `outsw`, `rep insb`), whose iterations hvrun
//! carries out itself.
use hvrun_tests::*;
use iced_x86::code_asm::*;

/// A recording device with reads answered from a queue.
const DEV_PORT: u16 = 0x70;
/// The string-I/O device (a port above 0xff: DX only).
const STR_PORT: u16 = 0x3f0;

/// The guest: writes 0x77 / 0x6677 / 0x44556677 to DEV_PORT (through DX) and to
/// DEV_PORT+4/+6 (imm8 ports); reads a byte, a word, a dword and an imm8-port byte and
/// reports EAX after each; `rep outsb`s "hello" and `outsw`s 0x1234 from RAM to
/// STR_PORT; `rep insb`s 4 bytes from STR_PORT into RAM; reports the string registers
/// after each and the dword it read in; exits with GOOD.
fn port_guest(mode: Mode) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    let dev = DEV_PORT as u64;

    g.a.mov(edx, DEV_PORT as u32)?;
    g.a.mov(eax, 0x4455_6677u32)?;
    g.a.out(dx, al)?;
    g.expect(Access::out(DEV_PORT, 1, 0x77));
    g.a.out(dx, ax)?;
    g.expect(Access::out(DEV_PORT, 2, 0x6677));
    g.a.out(dx, eax)?;
    g.expect(Access::out(DEV_PORT, 4, 0x4455_6677));
    g.a.out(dev as u32 + 4, al)?;
    g.expect(Access::out(DEV_PORT + 4, 1, 0x77));
    g.a.out(dev as u32 + 6, ax)?;
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
    g.a.in_(al, dev as u32 + 5)?;
    g.expect(Access::inp(DEV_PORT + 5, 1, 0x7e));
    g.report_eax(0x1111_117e)?;

    // String output: RAM at DATA holds "hello" then the word 0x1234.
    g.a.cld()?;
    g.a.mov(esi, DATA as u32)?;
    g.a.mov(edx, STR_PORT as u32)?;
    // With 16-bit addressing REP counts CX only: the upper half of ECX must survive.
    let (count_hi, insb_hi) = if mode == Mode::Real { (0x0001_0000u32, 0x0002_0000u32) } else { (0, 0) };
    g.a.mov(ecx, count_hi | 5)?;
    g.a.rep().outsb()?;
    for b in b"hello" {
        g.expect(Access::out(STR_PORT, 1, *b as u64));
    }
    g.report(esi, DATA as u32 + 5)?;
    g.report(ecx, count_hi)?;
    g.a.outsw()?;
    g.expect(Access::out(STR_PORT, 2, 0x1234));
    g.report(esi, DATA as u32 + 7)?;

    // String input: 4 bytes into DATA+0x100.
    g.a.mov(edi, DATA as u32 + 0x100)?;
    g.a.mov(ecx, insb_hi | 4)?;
    g.a.rep().insb()?;
    for b in [0xb1, 0xb2, 0xb3, 0xb4] {
        g.expect(Access::inp(STR_PORT, 1, b));
    }
    g.report(edi, DATA as u32 + 0x104)?;
    g.report(ecx, insb_hi)?;
    g.a.mov(eax, dword_ptr(DATA + 0x100))?;
    g.report_eax(0xb4b3_b2b1)?;

    g.exit(GOOD)?;
    Ok(g)
}

fn port_io(mode: Mode) {
    let mut t = TestMachine::new(mode);
    let dev = t.recorder_pio(DEV_PORT, 8);
    dev.queue_reads(&[0x5a, 0x1234, 0xdead_beef, 0x7e]);
    let strdev = t.recorder_pio(STR_PORT, 8);
    strdev.queue_reads(&[0xb1, 0xb2, 0xb3, 0xb4]);
    t.load(DATA, b"hello\x34\x12");
    let mut g = port_guest(mode).unwrap();
    t.load_guest(&mut g);
    let reason = t.run();
    t.check(&reason, GOOD, &g.expected);
    assert_eq!(t.read(DATA + 0x100, 4), [0xb1, 0xb2, 0xb3, 0xb4], "rep insb stored the bytes in RAM");
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
