//! The exit histogram (`--exit-stats`): every exit of a run is counted by reason.
use hvrun_tests::*;
use iced_x86::code_asm::*;
use vmm::trace;

const N: u32 = 500;
const SINK_PORT: u16 = 0x80;

#[test]
fn histogram_counts_every_io_exit() {
    trace::set_stats(true);
    let mut t = TestMachine::new(Mode::Long);
    t.add_pio(SINK_PORT, 1, std::sync::Arc::new(NullDevice));
    // The guest: N `out 0x80, al` in a loop, then exit GOOD.
    let mut g = Guest::new(Mode::Long);
    g.a.mov(ecx, N).unwrap();
    let mut again = g.a.create_label();
    g.a.set_label(&mut again).unwrap();
    g.a.out(SINK_PORT as u32, al).unwrap();
    g.a.dec(ecx).unwrap();
    g.a.jnz(again).unwrap();
    g.exit(GOOD).unwrap();
    t.load_guest(&mut g);
    let reason = t.run();
    trace::set_stats(false);
    t.check(&reason, GOOD, &[]);
    let stats = t.vm.machine().stats.lock().unwrap().clone();
    eprintln!("{stats}");
    let io = stats.count[hvf_sys::vmx::VMX_REASON_IO as usize];
    // N sink writes and the exit port's.
    assert!(io > N as u64, "{io} IO exits counted for {} port writes:\n{stats}", N + 1);
    assert!(stats.total() >= io);
}
