//! The kick protocol under load: a guest spins with IF=1 and never exits on its own,
//! while two host threads raise interrupts at random moments, 10,000 in all. Each one
//! must reach the guest's handler (it counts them in memory) within a bound. Run in both
//! of the Linux layer's kick modes: kicks that land outside `hv_vcpu_run` kept until
//! the next run, or lost (as Hypervisor.framework may lose them, where only hvrun's run
//! deadline, `vmm::kick::KICK_BACKSTOP`, gets the vCPU to look again).
#![cfg(target_os = "linux")]

use hvf_sys::linux::{hv_linux_set_kick_mode, KickMode};
use hvrun_tests::*;
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress};
use std::time::{Duration, Instant};
use vmm::machine::StopReason;

const RAISES_PER_THREAD: u32 = 5_000;
/// Vectors of the two raising threads, and where each handler counts.
const VECTORS: [u8; 2] = [0x30, 0x31];
const COUNTERS: [u64; 2] = [DATA, DATA + 0x100];
const HANDLERS: [u64; 2] = [CODE + 0x1000, CODE + 0x1100];
/// How long one interrupt may take to arrive: far beyond any real delivery (a kick
/// round trip in the nested sandbox is well under a millisecond; a dropped kick costs
/// at most the 10 ms backstop), so a failure is a lost interrupt, not a slow one.
const BOUND: Duration = Duration::from_secs(5);

/// `inc dword [counter]; iret`.
fn counting_handler(mode: Mode, counter: u64) -> AsmResult<Guest> {
    let mut g = Guest::new(mode);
    g.a.inc(dword_ptr(counter as u32))?;
    match mode {
        Mode::Long => g.a.iretq()?,
        _ => g.a.iretd()?,
    }
    Ok(g)
}

fn stress(mode: Mode, kicks: KickMode) {
    let mut t = TestMachine::new(mode);
    hv_linux_set_kick_mode(kicks);
    for i in 0..2 {
        let code = counting_handler(mode, COUNTERS[i]).unwrap().assemble(HANDLERS[i]).unwrap();
        t.load(HANDLERS[i], &code);
        t.set_handler(VECTORS[i], HANDLERS[i]);
    }
    let mut g = Guest::new(mode);
    g.mark(0x4c00_0001).unwrap();
    g.a.sti().unwrap();
    let mut spin = g.a.create_label();
    g.a.set_label(&mut spin).unwrap();
    g.a.jmp(spin).unwrap();
    t.load_guest(&mut g);
    t.start();
    assert!(t.log.wait_for_report(0x4c00_0001, DEFAULT_TIMEOUT), "the guest never started\n{}", t.listing());

    let raisers: Vec<_> = (0..2)
        .map(|i| {
            let (irq, machine) = (t.irq.clone(), t.vm.machine().clone());
            std::thread::spawn(move || {
                let count = || machine.ram.memory().read_obj::<u32>(GuestAddress(COUNTERS[i])).unwrap();
                // A small xorshift: random gaps of 0-255 us between raises.
                let mut x = 0x9e37_79b9u32 ^ (i as u32 + 1);
                let mut worst = Duration::ZERO;
                for n in 1..=RAISES_PER_THREAD {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    std::thread::sleep(Duration::from_micros((x & 0xff) as u64));
                    let raised = Instant::now();
                    irq.raise(VECTORS[i]);
                    while count() < n {
                        if raised.elapsed() > BOUND {
                            return Err(format!("vector {:#x}: interrupt {n} not delivered after {BOUND:?} (count {})",
                                VECTORS[i], count()));
                        }
                        std::hint::spin_loop();
                    }
                    worst = worst.max(raised.elapsed());
                }
                Ok(worst)
            })
        })
        .collect();
    let results: Vec<_> = raisers.into_iter().map(|r| r.join().unwrap()).collect();
    t.stopper.stop(StopReason::Host);
    let reason = t.wait_with_timeout(Duration::from_secs(20));
    for r in &results {
        if let Err(e) = r {
            panic!("{mode:?}, {kicks:?}: {e}");
        }
    }
    assert_eq!(reason, StopReason::Host);
    let worst: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    eprintln!("{mode:?}, {kicks:?}: {} interrupts delivered; slowest per thread {worst:?}", 2 * RAISES_PER_THREAD);
}

#[test]
fn every_interrupt_reaches_a_spinning_guest_when_kicks_outside_run_are_lost() {
    stress(Mode::Long, KickMode::LostOutsideRun);
}

#[test]
fn every_interrupt_reaches_a_spinning_guest_when_kicks_outside_run_are_kept() {
    stress(Mode::Long, KickMode::KeptUntilRun);
}
