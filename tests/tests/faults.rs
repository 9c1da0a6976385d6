//! Machines that cannot go on, reported cleanly: a guest triple fault (KVM shutdown,
//! VT-x reason 2) and a guest state that VM entry refuses (reason 33, checked by the
//! Linux layer as a VT-x CPU would).
use hvrun_tests::*;
use hvf_sys::vmx::{AR_DB, AR_UNUSABLE};
use vmm::entry::Segment;
use vmm::machine::StopReason;

/// The guest reports 0x7f000001, loads an empty IDT (limit 0, from DATA) and executes
/// `fault`: its exception cannot be delivered (#GP, then #DF, then shutdown). A report
/// 0x7f000002 after it would mean the fault was lost.
fn triple_fault(mode: Mode, fault: impl FnOnce(&mut Guest) -> AsmResult) {
    let mut t = TestMachine::new(mode);
    t.load(DATA, &[0; 10]);
    let mut g = Guest::new(mode);
    g.mark(0x7f00_0001).unwrap();
    g.a.lidt(iced_x86::code_asm::ptr(DATA)).unwrap();
    fault(&mut g).unwrap();
    g.a.mov(iced_x86::code_asm::eax, 0x7f00_0002u32).unwrap();
    g.a.out(REPORT_PORT as u32, iced_x86::code_asm::eax).unwrap();
    g.exit(GOOD).unwrap();
    t.load_guest(&mut g);
    let reason = t.run();
    let StopReason::TripleFault { dump } = &reason else {
        panic!("expected a triple fault, got: {reason}\nguest:\n{}", t.listing());
    };
    assert!(dump.contains("RIP"), "the dump shows the registers: {dump}");
    assert_eq!(t.log.reports(), [0x7f00_0001], "{reason}");
    eprintln!("{reason}");
}

#[test]
fn triple_fault_long_mode_ud2() {
    triple_fault(Mode::Long, |g| g.a.ud2());
}

#[test]
fn triple_fault_protected_mode_int3() {
    triple_fault(Mode::Protected, |g| g.a.int3());
}

/// A guest that must never run: it would report and exit.
fn never_runs(t: &mut TestMachine) {
    let mut g = Guest::new(t.mode);
    g.mark(0x7f00_0003).unwrap();
    g.exit(GOOD).unwrap();
    t.load_guest(&mut g);
}

fn expect_entry_failure(t: &mut TestMachine, what: &str) {
    let reason = t.run();
    match &reason {
        StopReason::EntryFailed { reason: 33, dump, .. } => {
            assert!(dump.contains("RIP"), "{dump}");
        }
        other => panic!("{what}: expected VM entry failure reason 33, got: {other}"),
    }
    assert!(t.log.all().is_empty(), "{what}: the guest ran: {:?}", t.log.all());
}

/// 64-bit code segment with both L and D/B set: SDM 27.3.1.2 ("if the guest will be in
/// IA-32e mode and the L bit is 1, the D/B bit must be 0").
#[test]
fn entry_fails_long_mode_cs_with_l_and_db() {
    let mut t = TestMachine::new(Mode::Long);
    never_runs(&mut t);
    t.entry.cs.ar |= AR_DB;
    expect_entry_failure(&mut t, "CS.L=1 D/B=1");
}

/// TR marked unusable: SDM 27.3.1.2 ("TR ... the unusable bit must be 0").
#[test]
fn entry_fails_protected_mode_tr_unusable() {
    let mut t = TestMachine::new(Mode::Protected);
    never_runs(&mut t);
    t.entry.tr = Segment { ar: t.entry.tr.ar | AR_UNUSABLE, ..t.entry.tr };
    expect_entry_failure(&mut t, "TR unusable");
}

/// `cli; hlt` on a machine with one vCPU and no NMI source can never resume: hvrun
/// reports the machine powered off (how Linux powers off without ACPI) instead of
/// sleeping forever. The report before it shows the guest ran up to there.
#[test]
fn halt_with_interrupts_disabled_powers_off() {
    for mode in [Mode::Real, Mode::Long] {
        let mut t = TestMachine::new(mode);
        let mut g = Guest::new(mode);
        g.mark(0x7f00_0004).unwrap();
        g.a.cli().unwrap();
        g.a.hlt().unwrap();
        g.exit(GOOD).unwrap();
        t.load_guest(&mut g);
        let reason = t.run();
        assert_eq!(reason, StopReason::Power(devices::power::PowerEvent::PowerOff), "{mode:?}");
        assert_eq!(t.log.reports(), [0x7f00_0004], "{mode:?}");
    }
}
