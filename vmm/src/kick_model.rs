//! Exhaustive interleaving tests of the kick protocol (`crate::kick`, and the Linux
//! layer's `hvf-sys/src/linux/kick.rs`). Each protocol is written as small atomic steps
//! of a kicker thread and a vCPU thread over shared variables; every interleaving is
//! explored (sequential consistency, as the SeqCst operations and fences give), and a
//! reachable state from which the work can no longer reach the guest (a lost kick, or a
//! loop that spins without ever getting there) is reported with the steps to it. The old orderings (issue 8, candidates 1 and 2) are modelled
//! too and must fail: that is how the tests show they can catch the bug.
use std::collections::HashMap;

/// The interleaving explorer: a state, and for each thread the step it can take from it
/// (`None`: blocked or finished).
trait Model: Clone + Eq + std::hash::Hash + std::fmt::Debug {
    const THREADS: usize;
    fn step(&self, thread: usize) -> Option<(Self, &'static str)>;
    /// The protocol did its job in this state (the work reached the guest).
    fn goal(&self) -> bool;
}

/// Explores every interleaving and checks that from every reachable state some way
/// still leads to the goal: no interleaving strands the work (a lost kick, or a loop
/// that spins without ever getting there). Returns a path to a state that cannot reach
/// the goal, if there is one.
fn find_violation<M: Model>(start: M) -> Option<Vec<&'static str>> {
    let mut index: HashMap<M, usize> = HashMap::new();
    let mut states = vec![start.clone()];
    let mut parent: Vec<Option<(usize, &'static str)>> = vec![None];
    let mut preds: Vec<Vec<usize>> = vec![Vec::new()];
    index.insert(start, 0);
    let mut i = 0;
    while i < states.len() {
        for t in 0..M::THREADS {
            if let Some((next, what)) = states[i].step(t) {
                let j = *index.entry(next.clone()).or_insert_with(|| {
                    states.push(next);
                    parent.push(Some((i, what)));
                    preds.push(Vec::new());
                    states.len() - 1
                });
                preds[j].push(i);
            }
        }
        i += 1;
    }
    // Backwards from the goal states: everything that can still get there.
    let mut can = vec![false; states.len()];
    let mut work: Vec<usize> = (0..states.len()).filter(|&k| states[k].goal()).collect();
    for &k in &work {
        can[k] = true;
    }
    while let Some(k) = work.pop() {
        for &p in &preds[k] {
            if !can[p] {
                can[p] = true;
                work.push(p);
            }
        }
    }
    let bad = (0..states.len()).find(|&k| !can[k])?;
    let mut path = Vec::new();
    let mut k = bad;
    while let Some((p, what)) = parent[k] {
        path.push(what);
        k = p;
    }
    path.reverse();
    Some(path)
}

/// What the framework does with a kick sent while the vCPU is not inside run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Framework {
    KeepsKicks,
    DropsKicks,
}

/// The vmm's loop against one kicker that publishes one interrupt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VmmLoop {
    framework: Framework,
    /// Candidate 1 fixed: "in guest" is raised before the look (else after it).
    flag_before_look: bool,
    /// hv_vcpu_run_until with the backstop deadline (else FOREVER).
    backstop: bool,
    // shared
    work: bool,
    in_guest: bool,
    /// The vCPU thread is inside hv_vcpu_run.
    in_run: bool,
    /// The framework holds a kick for (or is delivering one to) the run.
    kick: bool,
    delivered: bool,
    // program counters
    kicker: u8,
    vcpu: u8,
}

impl VmmLoop {
    fn new(framework: Framework, flag_before_look: bool, backstop: bool) -> Self {
        VmmLoop {
            framework, flag_before_look, backstop,
            work: false, in_guest: false, in_run: false, kick: false, delivered: false,
            kicker: 0, vcpu: 0,
        }
    }
}

impl Model for VmmLoop {
    const THREADS: usize = 2;

    fn step(&self, thread: usize) -> Option<(Self, &'static str)> {
        let mut s = self.clone();
        if thread == 0 {
            // Kicker: publish the work, then kick if the vCPU is in the guest.
            match s.kicker {
                0 => { s.work = true; s.kicker = 1; Some((s, "kicker: publish the interrupt")) }
                1 => {
                    s.kicker = 2;
                    if s.in_guest {
                        if s.in_run || s.framework == Framework::KeepsKicks {
                            s.kick = true;
                            Some((s, "kicker: sees in-guest, hv_vcpu_interrupt"))
                        } else {
                            Some((s, "kicker: sees in-guest, hv_vcpu_interrupt (dropped: not in run yet)"))
                        }
                    } else {
                        Some((s, "kicker: sees the vCPU outside, no interrupt"))
                    }
                }
                _ => None,
            }
        } else {
            // vCPU: 0 flag (or look), 1 look (or flag), 2 enter run, 3 in the guest.
            match s.vcpu {
                0 | 1 if s.delivered => None,
                0 | 1 => {
                    let flag_now = (s.vcpu == 0) == s.flag_before_look;
                    s.vcpu += 1;
                    if flag_now {
                        s.in_guest = true;
                        Some((s, "vCPU: raise in-guest"))
                    } else {
                        if s.work {
                            s.work = false;
                            s.delivered = true;
                        }
                        Some((s, "vCPU: look for work"))
                    }
                }
                2 => {
                    s.in_run = true;
                    s.vcpu = 3;
                    Some((s, "vCPU: enter hv_vcpu_run"))
                }
                3 => {
                    // The run ends on a kick, or at the backstop deadline.
                    if s.kick {
                        s.kick = false;
                        Some((s.exit(), "vCPU: run exits (kick)"))
                    } else if s.backstop {
                        Some((s.exit(), "vCPU: run exits (deadline)"))
                    } else {
                        None // spins in the guest
                    }
                }
                _ => None,
            }
        }
    }

    fn goal(&self) -> bool {
        self.delivered
    }
}

impl VmmLoop {
    fn exit(mut self) -> Self {
        self.in_run = false;
        self.in_guest = false;
        self.vcpu = 0;
        self
    }
}

#[test]
fn the_vmm_loop_never_misses_an_interrupt_in_either_framework() {
    for framework in [Framework::KeepsKicks, Framework::DropsKicks] {
        let found = find_violation(VmmLoop::new(framework, true, true));
        assert_eq!(found, None, "{framework:?}");
    }
}

#[test]
fn the_old_order_look_then_flag_misses_an_interrupt() {
    // Candidate 1: the look before the flag. Even a framework that keeps kicks cannot
    // help: the kicker sees the vCPU outside and sends nothing.
    for framework in [Framework::KeepsKicks, Framework::DropsKicks] {
        let path = find_violation(VmmLoop::new(framework, false, false));
        assert!(path.is_some(), "{framework:?}: the old order should lose the interrupt");
    }
}

#[test]
fn without_the_backstop_a_dropped_kick_loses_the_interrupt() {
    assert_eq!(find_violation(VmmLoop::new(Framework::KeepsKicks, true, false)), None);
    let path = find_violation(VmmLoop::new(Framework::DropsKicks, true, false)).expect("a dropped kick");
    assert!(path.iter().any(|s| s.contains("dropped")), "{path:?}");
}

/// The Linux layer's kick: flag (the work), hint (kvm_run.immediate_exit), signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LayerKick {
    /// Candidate 2 fixed: `take` clears the hint before looking at the flag.
    hint_first: bool,
    flag: bool,
    hint: bool,
    /// The signal is pending for the vCPU thread (ends a KVM_RUN in progress).
    signal: bool,
    in_kvm_run: bool,
    kicker: u8,
    vcpu: u8,
    seen: bool,
}

impl LayerKick {
    fn new(hint_first: bool) -> Self {
        LayerKick { hint_first, flag: false, hint: false, signal: false, in_kvm_run: false, kicker: 0, vcpu: 0, seen: false }
    }
}

impl Model for LayerKick {
    const THREADS: usize = 2;

    fn step(&self, thread: usize) -> Option<(Self, &'static str)> {
        let mut s = self.clone();
        if thread == 0 {
            match s.kicker {
                0 => { s.flag = true; s.kicker = 1; Some((s, "kicker: flag = 1")) }
                1 => { s.hint = true; s.kicker = 2; Some((s, "kicker: hint = 1")) }
                2 => {
                    s.kicker = 3;
                    if s.in_kvm_run { s.signal = true; }
                    Some((s, "kicker: signal if in KVM_RUN"))
                }
                _ => None,
            }
        } else {
            // The vCPU runs take() (after an EINTR), then KVM_RUN again: with no kick
            // found, as the layer's loop does, and after one, as the next run does.
            match s.vcpu {
                0 => {
                    s.vcpu = 1;
                    if s.hint_first { s.hint = false; Some((s, "vCPU take: hint = 0")) }
                    else { let k = s.flag; s.flag = false; s.seen |= k; s.vcpu = if k { 1 } else { 2 }; Some((s, "vCPU take: swap flag")) }
                }
                1 => {
                    s.vcpu = 2;
                    if s.hint_first {
                        let k = s.flag; s.flag = false; s.seen |= k;
                        Some((s, "vCPU take: swap flag"))
                    } else {
                        s.hint = false;
                        Some((s, "vCPU take: hint = 0"))
                    }
                }
                2 => {
                    // KVM_RUN: the hint makes it return EINTR at once; else the guest runs.
                    if s.hint {
                        s.vcpu = 0;
                        Some((s, "vCPU: KVM_RUN returns EINTR at once (hint)"))
                    } else {
                        s.in_kvm_run = true;
                        s.vcpu = 3;
                        Some((s, "vCPU: KVM_RUN enters the guest"))
                    }
                }
                3 => {
                    if s.signal {
                        s.signal = false;
                        s.in_kvm_run = false;
                        s.vcpu = 0;
                        Some((s, "vCPU: KVM_RUN ends (EINTR, signal)"))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
    }

    /// The kick was seen and the vCPU is back in the guest (not spinning on EINTR).
    fn goal(&self) -> bool {
        self.seen && self.vcpu == 3
    }
}

#[test]
fn the_layer_kick_is_never_lost_and_never_spins() {
    assert_eq!(find_violation(LayerKick::new(true)), None);
}

#[test]
fn the_old_take_order_can_spin_on_eintr_forever() {
    // Candidate 2: take() swapped the flag before clearing the hint; a kick between the
    // two left hint = 1 with no flag, and every KVM_RUN returned EINTR.
    let path = find_violation(LayerKick::new(false)).expect("the old order should fail");
    assert!(path.contains(&"kicker: hint = 1"), "{path:?}");
}
