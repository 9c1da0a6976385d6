//! The state dump: what each vCPU and the interrupt controllers are doing, printed on
//! SIGUSR1 or the console escape Ctrl-A i, and by the test suite before it kills a hung
//! hvrun. It answers "why is this guest waiting?": where each vCPU is (in the guest,
//! halted), whether it can take an interrupt (RFLAGS.IF, the interruptibility state, an
//! event already queued for the next entry), and what its local APIC holds (IRR, ISR,
//! TPR/PPR, the timer).
//!
//! Registers and VMCS fields can only be read on a vCPU's own thread, so the dump asks
//! each vCPU thread for its part through the kick protocol (`Waker::request_dump`) and
//! waits a little; a vCPU that does not answer is reported as such, with what is known
//! from outside (its place, the kicks sent to it, its APIC).
use crate::kick::{Place, Waker};
use crate::regs::VcpuRegs;
use devices::ioapic::Ioapic;
use devices::lapic::Lapic;
use hvf_sys::vmcs::*;
use hvf_sys::vmx::*;
use hvf_sys::*;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the dump waits for a vCPU thread's part.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);

/// The last line of every dump (scripts wait for it).
pub const END_LINE: &str = "hvrun: end of state dump";

/// A vCPU's own part, read on its thread between two runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuSnapshot {
    pub index: u32,
    pub rip: u64,
    pub rflags: u64,
    /// Guest activity state (SDM 25.4.2): 0 active, 1 HLT, 2 shutdown, 3 wait-for-SIPI.
    pub activity: u64,
    /// Guest interruptibility state (SDM 25.4.2, table 25-3).
    pub interruptibility: u64,
    /// VM-entry interruption-information field: an event queued for the next entry.
    pub entry_event: u64,
    /// Interrupt-window exiting is on: an interrupt waits for the guest to open.
    pub window_requested: bool,
    /// A kick the framework holds for the next run (Linux layer only; `None` elsewhere).
    pub kick_pending: Option<bool>,
    /// Exits so far, and the last few, oldest first.
    pub exits: u64,
    pub recent_exits: Vec<RecentExit>,
}

/// One exit as the state dump shows it: enough to see a guest that no longer moves (the
/// same RIP exit after exit) or an event injected again and again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentExit {
    pub reason: u32,
    pub rip: u64,
    /// The interrupt vector hvrun injected at the entry this exit ended.
    pub injected: Option<u8>,
    /// IDT-vectoring information (SDM 28.2.4): an event whose delivery the exit cut short.
    pub idt_vectoring: u32,
}

impl fmt::Display for RecentExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}) at RIP {:#x}", exit_reason_name(self.reason), self.reason, self.rip)?;
        if let Some(vector) = self.injected {
            write!(f, ", after injecting {vector:#04x}")?;
        }
        if self.idt_vectoring & IRQ_INFO_VALID != 0 {
            write!(f, ", cutting short the delivery of {:#x}", self.idt_vectoring)?;
        }
        Ok(())
    }
}

impl VcpuSnapshot {
    pub fn read(index: u32, vcpu: &dyn VcpuRegs) -> Result<Self, HvError> {
        Ok(VcpuSnapshot {
            index,
            rip: vcpu.read_reg(HV_X86_RIP)?,
            rflags: vcpu.read_reg(HV_X86_RFLAGS)?,
            activity: vcpu.read_vmcs(VMCS_GUEST_ACTIVITY_STATE)?,
            interruptibility: vcpu.read_vmcs(VMCS_GUEST_IGNORE_IRQ)?,
            entry_event: vcpu.read_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO)?,
            window_requested: vcpu.read_vmcs(VMCS_CTRL_CPU_BASED)? & ProcBased::IRQ_WND.bits() as u64 != 0,
            kick_pending: None,
            exits: 0,
            recent_exits: Vec::new(),
        })
    }
}

fn activity_name(activity: u64) -> &'static str {
    match activity as u32 {
        ACTIVITY_ACTIVE => "active",
        ACTIVITY_HLT => "HLT",
        ACTIVITY_SHUTDOWN => "shutdown",
        ACTIVITY_WAIT_SIPI => "wait-for-SIPI",
        _ => "invalid",
    }
}

impl fmt::Display for VcpuSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let blocking = Interruptibility::from_bits_truncate(self.interruptibility as u32);
        write!(f, "    RIP {:#x}  RFLAGS {:#x} (IF={})  activity {}  interruptibility {:#x} {:?}",
            self.rip, self.rflags, (self.rflags >> 9) & 1, activity_name(self.activity), self.interruptibility, blocking)?;
        let event = self.entry_event as u32;
        if event & IRQ_INFO_VALID != 0 {
            write!(f, "\n    queued for the next entry: vector {:#04x}, type {}", event & IRQ_INFO_VECTOR_MASK,
                (event & IRQ_INFO_TYPE_MASK) >> 8)?;
        } else {
            write!(f, "\n    nothing queued for the next entry")?;
        }
        write!(f, "; interrupt window {}", if self.window_requested { "requested" } else { "not requested" })?;
        if let Some(pending) = self.kick_pending {
            write!(f, "; a kick {} held for the next run", if pending { "is" } else { "is not" })?;
        }
        write!(f, "\n    {} exits", self.exits)?;
        if !self.recent_exits.is_empty() {
            write!(f, "; the last {}, oldest first:", self.recent_exits.len())?;
        }
        for exit in &self.recent_exits {
            write!(f, "\n      {exit}")?;
        }
        Ok(())
    }
}

/// One vCPU as the dump reaches it.
struct Target {
    index: u32,
    waker: Arc<Waker>,
    lapic: Option<Arc<Lapic>>,
}

/// Everything a dump shows. The platform registers its vCPUs and IOAPIC.
#[derive(Default)]
pub struct StateDump {
    vcpus: Mutex<Vec<Target>>,
    ioapic: Mutex<Option<Arc<Ioapic>>>,
}

impl StateDump {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add_vcpu(&self, index: u32, waker: Arc<Waker>, lapic: Option<Arc<Lapic>>) {
        self.vcpus.lock().unwrap_or_else(|e| e.into_inner()).push(Target { index, waker, lapic });
    }

    pub fn set_ioapic(&self, ioapic: Arc<Ioapic>) {
        *self.ioapic.lock().unwrap_or_else(|e| e.into_inner()) = Some(ioapic);
    }

    /// Asks every vCPU for its part and puts the dump together; ends with [`END_LINE`].
    pub fn collect(&self) -> String {
        let vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from("hvrun: state dump\n");
        for t in vcpus.iter() {
            let place = t.waker.place();
            t.waker.request_dump();
            let part = t.waker.wait_dump_answer(ANSWER_TIMEOUT);
            out.push_str(&format!("  vCPU {}: {}, {} kicks sent\n", t.index, place_name(place), t.waker.interrupts_sent()));
            match part {
                Some(part) => out.push_str(&format!("{part}\n")),
                None => out.push_str(&format!(
                    "    did not answer within {ANSWER_TIMEOUT:?} (still {}: a kick that never arrived?)\n",
                    place_name(t.waker.place())
                )),
            }
            if let Some(lapic) = &t.lapic {
                out.push_str(&format!("{}\n", lapic.snapshot()));
            }
        }
        if let Some(ioapic) = self.ioapic.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            out.push_str(&format!("{}\n", ioapic.snapshot()));
        }
        out.push_str(END_LINE);
        out.push('\n');
        out
    }
}

fn place_name(place: Place) -> &'static str {
    match place {
        Place::Outside => "in hvrun (between runs)",
        Place::InGuest => "in the guest",
        Place::Halted => "halted, waiting for an interrupt",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::RecordedExit;

    fn halted_with_timer_in_service() -> RecordedExit {
        RecordedExit::new()
            .reg(HV_X86_RIP, 0xffff_ffff_8126_f31b)
            .reg(HV_X86_RFLAGS, 0x246)
            .field(VMCS_GUEST_ACTIVITY_STATE, 0)
            .field(VMCS_GUEST_IGNORE_IRQ, 1)
            .field(VMCS_CTRL_VMENTRY_IRQ_INFO, 0x8000_00ec)
            .field(VMCS_CTRL_CPU_BASED, 0x84)
    }

    #[test]
    fn vcpu_fields_are_read_and_named() {
        let s = VcpuSnapshot::read(0, &halted_with_timer_in_service()).unwrap();
        assert_eq!(s, VcpuSnapshot {
            index: 0,
            rip: 0xffff_ffff_8126_f31b,
            rflags: 0x246,
            activity: 0,
            interruptibility: 1,
            entry_event: 0x8000_00ec,
            window_requested: true,
            kick_pending: None,
            exits: 0,
            recent_exits: Vec::new(),
        });
        let text = s.to_string();
        for needle in ["RIP 0xffffffff8126f31b", "RFLAGS 0x246 (IF=1)", "activity active", "interruptibility 0x1 Interruptibility(STI)",
            "queued for the next entry: vector 0xec, type 0", "interrupt window requested"] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        let quiet = VcpuSnapshot { entry_event: 0xb0d, window_requested: false, kick_pending: Some(true), rflags: 0x2, activity: 1,
            exits: 7, recent_exits: vec![
                RecentExit { reason: VMX_REASON_IO, rip: 0x1000, injected: Some(0x30), idt_vectoring: 0 },
                RecentExit { reason: VMX_REASON_IRQ, rip: 0x1002, injected: None, idt_vectoring: 0x8000_0b0d },
            ], ..s };
        let text = quiet.to_string();
        for needle in ["(IF=0)", "activity HLT", "nothing queued", "window not requested", "a kick is held",
            "7 exits; the last 2, oldest first:\n      IO (30) at RIP 0x1000, after injecting 0x30\n      IRQ (1) at RIP 0x1002, cutting short the delivery of 0x80000b0d"] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn a_dump_names_a_vcpu_that_does_not_answer_and_ends_with_its_end_line() {
        let dump = StateDump::new();
        let waker = Arc::new(Waker::new());
        dump.add_vcpu(0, waker.clone(), None);
        waker.entering_guest();
        let text = dump.collect();
        assert!(text.contains("vCPU 0: in the guest, 0 kicks sent"), "{text}");
        assert!(text.contains("did not answer within 500ms (still in the guest"), "{text}");
        assert!(text.ends_with(&format!("{END_LINE}\n")), "{text}");
    }

    #[test]
    fn a_dump_includes_the_vcpu_threads_answer() {
        let dump = StateDump::new();
        let waker = Arc::new(Waker::new());
        dump.add_vcpu(3, waker.clone(), None);
        let vcpu = {
            let waker = waker.clone();
            std::thread::spawn(move || {
                waker.sleep_until(None, || false);
                assert!(waker.take_dump_request());
                waker.answer_dump(VcpuSnapshot::read(3, &halted_with_timer_in_service()).unwrap().to_string());
            })
        };
        while waker.place() != Place::Halted {
            std::thread::yield_now();
        }
        let text = dump.collect();
        vcpu.join().unwrap();
        assert!(text.contains("vCPU 3: halted, waiting for an interrupt"), "{text}");
        assert!(text.contains("queued for the next entry: vector 0xec"), "{text}");
    }
}
