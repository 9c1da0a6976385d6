//! Interrupt delivery through hvrun's injection step and its HLT sleep: a halted vCPU
//! woken by a vector raised from another thread (and sleeping, not spinning, meanwhile);
//! a vector held back by IF=0 and by the STI shadow, delivered through the interrupt
//! window exactly one instruction after `sti`; and a vCPU spinning in the guest stopped
//! by a kick from another thread.
use hvrun_tests::*;
use iced_x86::code_asm::*;
use std::time::{Duration, Instant};
use vmm::machine::StopReason;

const VECTOR: u8 = 0x30;
/// The handler reports `HANDLER_TAG | ECX`.
const HANDLER_TAG: u32 = 0x4a40_0000;
/// Where the handler is loaded (after the main program).
const HANDLER: u64 = CODE + 0x1000;
/// Flags the guest polls: offset 0 for phase 1, 1 for phase 2; nonzero = go on.
const FLAG_PORT: u16 = 0x72;

fn install_handler(t: &mut TestMachine) {
    let mut h = Guest::reporting_handler(t.mode, HANDLER_TAG).unwrap();
    let code = h.assemble(HANDLER).unwrap();
    t.load(HANDLER, &code);
    t.set_handler(VECTOR, HANDLER);
}

/// `in al, port` until AL is nonzero.
fn poll(g: &mut Guest, port: u16) -> AsmResult {
    let mut again = g.a.create_label();
    g.a.set_label(&mut again)?;
    g.a.in_(al, port as u32)?;
    g.a.test(al, al)?;
    g.a.jz(again)
}

/// The guest: ECX = 1, reports 0x4a100001, `sti; hlt`; after the interrupt (whose
/// handler reports 0x4a400001) ECX = 2, reports 0x4a100002 and exits with GOOD.
fn hlt_guest(mode: Mode) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    g.a.mov(ecx, 1u32)?;
    g.mark(0x4a10_0001)?;
    g.a.sti()?;
    g.a.hlt()?;
    g.a.mov(ecx, 2u32)?;
    g.mark(0x4a10_0002)?;
    g.exit(GOOD)?;
    Ok(g)
}

fn hlt_woken_by_interrupt(mode: Mode) {
    let mut t = TestMachine::new(mode);
    install_handler(&mut t);
    let mut g = hlt_guest(mode).unwrap();
    t.load_guest(&mut g);
    t.start();
    assert!(t.log.wait_for_report(0x4a10_0001, DEFAULT_TIMEOUT), "the guest never reached its HLT\n{}", t.listing());
    // Let it reach the HLT, then watch it sleep for 2 s.
    std::thread::sleep(Duration::from_millis(200));
    let (cpu0, wall0) = (process_cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu, wall) = (process_cpu_time() - cpu0, wall0.elapsed());
    assert_eq!(t.log.reports(), [0x4a10_0001], "nothing runs before the interrupt");
    t.irq.raise(VECTOR);
    let reason = t.wait_with_timeout(DEFAULT_TIMEOUT);
    t.check(&reason, GOOD, &[Access::report(0x4a10_0001), Access::report(HANDLER_TAG | 1), Access::report(0x4a10_0002)]);
    eprintln!("{mode:?}: while halted the process used {cpu:?} of CPU in {wall:?}");
    assert!(cpu < wall / 2, "a halted vCPU must sleep: the process used {cpu:?} of CPU in {wall:?}");
}

#[test]
fn hlt_woken_by_interrupt_real_mode() {
    hlt_woken_by_interrupt(Mode::Real);
}

#[test]
fn hlt_woken_by_interrupt_protected_mode() {
    hlt_woken_by_interrupt(Mode::Protected);
}

#[test]
fn hlt_woken_by_interrupt_long_mode() {
    hlt_woken_by_interrupt(Mode::Long);
}

/// The guest, with the vector raised by the test while IF=0:
/// phase 1: `cli`, ECX = 0x11, reports 0x4a200001, polls FLAG_PORT+0 (the test raises
///   the vector, waits, then sets the flag), reports 0x4a200002 (still no handler),
///   ECX = 0x22, `mov eax, 0x4a200003; sti; out REPORT, eax` -- the `out` runs in the STI
///   shadow, so the handler (reporting 0x4a400022) comes after it -- then reports
///   0x4a200004;
/// phase 2: `cli`, reports 0x4a200005, polls FLAG_PORT+1, `xor ecx, ecx; sti; inc ecx;
///   inc ecx; inc ecx` -- no exit in that stretch: the interrupt-window exit must come
///   right after the first `inc`, so the handler reports 0x4a400001 -- then reports
///   0x4a200006 and exits with GOOD.
fn held_back_guest(mode: Mode) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    g.a.cli()?;
    g.a.mov(ecx, 0x11u32)?;
    g.mark(0x4a20_0001)?;
    poll(&mut g, FLAG_PORT)?;
    g.mark(0x4a20_0002)?;
    g.a.mov(ecx, 0x22u32)?;
    g.a.mov(eax, 0x4a20_0003u32)?;
    g.a.sti()?;
    g.report_eax(0x4a20_0003)?;
    g.expect(Access::report(HANDLER_TAG | 0x22));
    g.mark(0x4a20_0004)?;

    g.a.cli()?;
    g.mark(0x4a20_0005)?;
    poll(&mut g, FLAG_PORT + 1)?;
    g.a.xor(ecx, ecx)?;
    g.a.sti()?;
    g.a.inc(ecx)?;
    g.a.inc(ecx)?;
    g.a.inc(ecx)?;
    g.expect(Access::report(HANDLER_TAG | 1));
    g.mark(0x4a20_0006)?;
    g.exit(GOOD)?;
    Ok(g)
}

fn interrupt_held_back(mode: Mode) {
    let mut t = TestMachine::new(mode);
    install_handler(&mut t);
    let flags = t.recorder_pio(FLAG_PORT, 2);
    let mut g = held_back_guest(mode).unwrap();
    t.load_guest(&mut g);
    t.start();
    for (phase, mark) in [(0, 0x4a20_0001), (1, 0x4a20_0005)] {
        assert!(t.log.wait_for_report(mark, DEFAULT_TIMEOUT), "phase {phase}: no report {mark:#x}\n{}", t.listing());
        t.irq.raise(VECTOR);
        // The guest keeps exiting (polling) with the vector pending and IF=0.
        std::thread::sleep(Duration::from_millis(300));
        let reports = t.log.reports();
        assert_eq!(reports.last(), Some(&mark), "phase {phase}: the handler ran with IF=0: {reports:#x?}");
        flags.set(phase, &[1]);
    }
    let reason = t.wait_with_timeout(DEFAULT_TIMEOUT);
    let expected_reports: Vec<u32> = g.expected.iter().map(|a| a.value as u32).collect();
    let reports = t.log.reports();
    assert_eq!(reports, expected_reports, "got {reports:#x?}\nexpected {expected_reports:#x?}\nstop: {reason}\nguest:\n{}", t.listing());
    assert_eq!(reason, StopReason::Power(devices::power::PowerEvent::Exit(GOOD)));
}

#[test]
fn interrupt_held_back_by_if_and_sti_shadow_real_mode() {
    interrupt_held_back(Mode::Real);
}

#[test]
fn interrupt_held_back_by_if_and_sti_shadow_protected_mode() {
    interrupt_held_back(Mode::Protected);
}

#[test]
fn interrupt_held_back_by_if_and_sti_shadow_long_mode() {
    interrupt_held_back(Mode::Long);
}

/// The guest reports 0x4b000001 and spins in `jmp $` without a single exit.
fn kick(mode: Mode) {
    let mut t = TestMachine::new(mode);
    let mut g = Guest::new(mode);
    g.mark(0x4b00_0001).unwrap();
    let mut spin = g.a.create_label();
    g.a.set_label(&mut spin).unwrap();
    g.a.jmp(spin).unwrap();
    t.load_guest(&mut g);
    t.start();
    assert!(t.log.wait_for_report(0x4b00_0001, DEFAULT_TIMEOUT), "the guest never started\n{}", t.listing());
    std::thread::sleep(Duration::from_millis(200));
    let stopper = t.stopper.clone();
    let kicked = Instant::now();
    std::thread::spawn(move || stopper.stop(StopReason::Host)).join().unwrap();
    // The watchdog (which would make this test fail) is far beyond a prompt stop.
    let reason = t.wait_with_timeout(Duration::from_secs(20));
    assert_eq!(reason, StopReason::Host);
    eprintln!("kick: vm.wait() returned {:?} after the stop request", kicked.elapsed());
}

#[test]
fn kick_stops_a_spinning_guest_real_mode() {
    kick(Mode::Real);
}

#[test]
fn kick_stops_a_spinning_guest_long_mode() {
    kick(Mode::Long);
}
