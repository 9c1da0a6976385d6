//! A per-vCPU local APIC (Intel SDM vol. 3, ch. 11): the xAPIC MMIO page, the x2APIC MSRs,
//! IA32_APIC_BASE, interrupt acceptance and priorities (IRR/ISR/TMR/TPR/PPR), EOI, the
//! timer (one-shot, periodic, TSC-deadline) and IPIs.
//!
//! Locking: all state sits behind one mutex. Nothing is called out of the device (the
//! [`Kick`], the [`ApicRouter`]) while that mutex is held, so that other components may
//! call into the LAPIC while holding their own locks (the IOAPIC delivers under its lock;
//! the vCPU's waker evaluates `pending()` under its lock).
//!
//! Timer clock: the APIC timer counts at [`APIC_BUS_HZ`] (1 GHz: one count per ns at a
//! divisor of one) divided by the divide configuration. Advertise it to the guest (e.g. CPUID leaf 0x15
//! crystal clock, or 0x40000010 EBX in kHz) if the guest is to skip timer calibration.
use crate::apic_history::{ApicEvent, ApicHistory};
use crate::apic_timers::TimerSignal;
use crate::irq::{Kick, LocalInterrupts};
use crate::tsc::GuestTscClock;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Guest-physical base of the xAPIC MMIO page.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Size of the xAPIC MMIO page.
pub const LAPIC_SIZE: u64 = 0x1000;
/// Frequency of the clock the APIC timer divides (1 GHz: 1 ns per count at divide 1).
pub const APIC_BUS_HZ: u64 = 1_000_000_000;
/// The version register: version 0x14 (integrated xAPIC), max LVT entry 5 (six LVTs:
/// timer, thermal, performance, LINT0, LINT1, error; no CMCI), no EOI-broadcast
/// suppression.
pub const APIC_VERSION: u32 = 0x0005_0014;
/// Periodic timers are not rearmed faster than this, whatever the guest programs, so a
/// tiny period cannot make the host spin (one-shot and TSC-deadline are not clamped).
pub const MIN_PERIODIC_INTERVAL: Duration = Duration::from_micros(100);

/// IA32_APIC_BASE.
pub const MSR_IA32_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// First and last x2APIC MSR.
pub const MSR_X2APIC_FIRST: u32 = 0x800;
pub const MSR_X2APIC_LAST: u32 = 0x8ff;

/// IA32_APIC_BASE bits.
pub const APIC_BASE_BSP: u64 = 1 << 8;
pub const APIC_BASE_EXTD: u64 = 1 << 10;
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
/// Physical-address bits of the APIC base (bits 12..=51, i.e. MAXPHYADDR 52 at most; the
/// VMM's CPUID should not advertise more).
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

// Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset / 16).
pub const REG_ID: u32 = 0x020;
pub const REG_VERSION: u32 = 0x030;
pub const REG_TPR: u32 = 0x080;
pub const REG_APR: u32 = 0x090;
pub const REG_PPR: u32 = 0x0a0;
pub const REG_EOI: u32 = 0x0b0;
pub const REG_RRD: u32 = 0x0c0;
pub const REG_LDR: u32 = 0x0d0;
pub const REG_DFR: u32 = 0x0e0;
pub const REG_SVR: u32 = 0x0f0;
pub const REG_ISR: u32 = 0x100;
pub const REG_TMR: u32 = 0x180;
pub const REG_IRR: u32 = 0x200;
pub const REG_ESR: u32 = 0x280;
pub const REG_ICR_LOW: u32 = 0x300;
pub const REG_ICR_HIGH: u32 = 0x310;
pub const REG_LVT_TIMER: u32 = 0x320;
pub const REG_LVT_THERMAL: u32 = 0x330;
pub const REG_LVT_PERF: u32 = 0x340;
pub const REG_LVT_LINT0: u32 = 0x350;
pub const REG_LVT_LINT1: u32 = 0x360;
pub const REG_LVT_ERROR: u32 = 0x370;
pub const REG_TIMER_INITIAL: u32 = 0x380;
pub const REG_TIMER_CURRENT: u32 = 0x390;
pub const REG_TIMER_DIVIDE: u32 = 0x3e0;
/// x2APIC only (MSR 0x83f).
pub const REG_SELF_IPI: u32 = 0x3f0;

const SVR_ENABLE: u32 = 1 << 8;
/// Vector, software enable, focus-processor checking (bit 12, EOI-broadcast suppression,
/// is not supported: the version register says so).
const SVR_WRITABLE: u32 = 0x3ff;
const LVT_MASKED: u32 = 1 << 16;
const LVT_DELIVERY_STATUS: u32 = 1 << 12;
const LVT_REMOTE_IRR: u32 = 1 << 14;
const LVT_TIMER_MODE_SHIFT: u32 = 17;
const LVT_TIMER_MODE_MASK: u32 = 3 << LVT_TIMER_MODE_SHIFT;
/// Writable bits of each LVT, in LVT order (timer, thermal, perf, LINT0, LINT1, error).
const LVT_WRITABLE: [u32; 6] = [0x0007_00ff, 0x0001_07ff, 0x0001_07ff, 0x0001_a7ff, 0x0001_a7ff, 0x0001_00ff];
/// Read-only LVT bits a guest may write back as read (not a reserved-bit #GP).
const LVT_READ_ONLY: u32 = LVT_DELIVERY_STATUS | LVT_REMOTE_IRR;
const LVT_TIMER: usize = 0;
const LVT_ERROR: usize = 5;

const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;

/// ICR low-word bits that a write may set (vector, delivery mode, destination mode,
/// level, trigger mode, shorthand).
const ICR_WRITABLE: u32 = 0x000c_cfff;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
const ICR_LOGICAL: u32 = 1 << 11;

/// A fault the guest must see: the VMM injects #GP(0) into the vCPU that made the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpFault;

impl fmt::Display for GpFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#GP")
    }
}

impl std::error::Error for GpFault {}

/// How an interrupt message is delivered (ICR and redirection-entry bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    /// INIT, level assert (or edge).
    Init,
    /// INIT level de-assert (ICR mode INIT, level 0, trigger level): a no-op on
    /// integrated APICs, kept apart so a router can drop it.
    InitDeassert,
    /// Start-up IPI; the vector is the start page (CS = vector << 8).
    Startup,
    ExtInt,
    /// A reserved encoding (3): dropped.
    Reserved,
}

impl DeliveryMode {
    /// Decodes bits 10:8 of an ICR or redirection entry.
    pub fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::Startup,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// ICR destination shorthand (bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An inter-processor interrupt, as written to the ICR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// APIC ID of the sender.
    pub source: u32,
    /// Destination field: 8 bits (xAPIC, ICR high bits 31:24) or 32 bits (x2APIC).
    pub dest: u32,
    /// Logical (true) or physical destination mode.
    pub logical: bool,
    /// Whether `dest` is in x2APIC format (the sender was in x2APIC mode).
    pub x2apic: bool,
    pub shorthand: Shorthand,
    pub mode: DeliveryMode,
    pub vector: u8,
    /// Trigger mode bit (level when true); meaningful for INIT de-assert only.
    pub level_triggered: bool,
}

/// What connects the local APICs to each other and to the IOAPIC. One instance serves all
/// vCPUs (see [`crate::apic_bus::ApicBus`]).
pub trait ApicRouter: Send + Sync {
    /// Delivers an IPI with a shorthand other than self (self-IPIs stay local).
    fn send_ipi(&self, ipi: Ipi);
    /// EOI of a level-triggered vector: the IOAPICs clear their remote IRR.
    fn broadcast_eoi(&self, vector: u8);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// The interrupt and timer state of a local APIC at one moment, for the state dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LapicSnapshot {
    pub id: u32,
    pub x2apic: bool,
    pub software_enabled: bool,
    pub irr: [u32; 8],
    pub isr: [u32; 8],
    pub tmr: [u32; 8],
    pub tpr: u32,
    pub ppr: u32,
    /// The vector `pending()` would hand the vCPU now.
    pub deliverable: Option<u8>,
    pub lvt_timer: u32,
    pub timer_mode: TimerMode,
    pub initial_count: u32,
    pub current_count: u32,
    /// IA32_TSC_DEADLINE as written (TSC-deadline mode; 0: disarmed or fired).
    pub tsc_deadline: u64,
    /// How long until the timer fires; `None`: not armed.
    pub fires_in: Option<Duration>,
    /// The last interrupt events, oldest first, with machine-wide sequence numbers.
    pub history: Vec<(u64, ApicEvent)>,
}

/// The vectors whose bits are set, e.g. `[0x21, 0xec]`.
fn vectors(bits: &[u32; 8]) -> Vec<u8> {
    (0..=255u8).filter(|&v| test_bit(bits, v)).collect()
}

impl fmt::Display for LapicSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |bits: &[u32; 8]| {
            let v = vectors(bits);
            if v.is_empty() { "-".to_string() } else { v.iter().map(|v| format!("{v:#04x}")).collect::<Vec<_>>().join(",") }
        };
        writeln!(f, "  lapic {}: {}, software {}", self.id, if self.x2apic { "x2APIC" } else { "xAPIC" },
            if self.software_enabled { "enabled" } else { "disabled" })?;
        writeln!(f, "    IRR {}  ISR {}  TMR {}", list(&self.irr), list(&self.isr), list(&self.tmr))?;
        let deliverable = self.deliverable.map_or("none".to_string(), |v| format!("{v:#04x}"));
        writeln!(f, "    TPR {:#04x}  PPR {:#04x}  deliverable now: {deliverable}", self.tpr, self.ppr)?;
        let fires = self.fires_in.map_or("not armed".to_string(), |d| format!("fires in {d:?}"));
        write!(f, "    timer: LVT {:#x} ({:?}{}), initial count {}, current count {}, TSC deadline {:#x}, {fires}",
            self.lvt_timer, self.timer_mode, if self.lvt_timer & LVT_MASKED != 0 { ", masked" } else { "" },
            self.initial_count, self.current_count, self.tsc_deadline)?;
        if !self.history.is_empty() {
            let events: Vec<_> = self.history.iter().map(|(seq, e)| format!("#{seq} {e}")).collect();
            write!(f, "\n    recent interrupts, oldest first: {}", events.join("; "))?;
        }
        Ok(())
    }
}

/// Work to do once the state lock is released.
#[derive(Default)]
#[must_use]
struct Effects {
    kick: bool,
    ipi: Option<Ipi>,
    eoi: Option<u8>,
}

#[derive(Default)]
struct Timer {
    /// Time per count at the divide configuration in force when the count was written.
    tick: Duration,
    /// When the initial count was written (one-shot and periodic).
    start: Option<Instant>,
    /// When the timer next fires; `None`: disarmed (or a deadline beyond `Instant`).
    deadline: Option<Instant>,
    /// IA32_TSC_DEADLINE as the guest wrote it (TSC-deadline mode).
    tsc_deadline: u64,
}

struct State {
    apic_base: u64,
    /// Local APIC ID: bits 31:24 of the xAPIC ID register, the whole x2APIC ID.
    id: u32,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    esr: u32,
    /// Errors since the last ESR write.
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; 6],
    timer_initial: u32,
    timer_divide: u32,
    timer: Timer,
    nmi_pending: bool,
    /// An INIT arrived that the vCPU has not acted on yet ([`Lapic::take_init`]).
    init_pending: bool,
    /// An AP that INIT (or power-up) left waiting for a start-up IPI: only then is a SIPI
    /// accepted, so the second SIPI of INIT-SIPI-SIPI is ignored (SDM vol. 3, 9.4.4.1
    /// and 11.6.1: "a SIPI is ignored unless the processor is in wait-for-SIPI").
    wait_for_sipi: bool,
    sipi_pending: Option<u8>,
    /// The last interrupts accepted, injected, ended and sent (the state dump's).
    history: ApicHistory,
}

fn highest_bit(bits: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find(|&i| bits[i] != 0).map(|i| (i * 32 + 31 - bits[i].leading_zeros() as usize) as u8)
}

fn test_bit(bits: &[u32; 8], v: u8) -> bool {
    bits[v as usize / 32] & (1 << (v % 32)) != 0
}

fn set_bit(bits: &mut [u32; 8], v: u8, on: bool) {
    if on {
        bits[v as usize / 32] |= 1 << (v % 32);
    } else {
        bits[v as usize / 32] &= !(1 << (v % 32));
    }
}

/// The divisor encoded in the divide configuration register (bits 3, 1:0).
fn divisor(tdcr: u32) -> u32 {
    let code = ((tdcr >> 1) & 4) | (tdcr & 3);
    if code == 7 {
        1
    } else {
        2 << code
    }
}

impl State {
    fn new(id: u32, bsp: bool) -> Self {
        let mut s = State {
            apic_base: LAPIC_BASE | APIC_BASE_ENABLE | if bsp { APIC_BASE_BSP } else { 0 },
            id,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [0; 6],
            timer_initial: 0,
            timer_divide: 0,
            timer: Timer::default(),
            nmi_pending: false,
            init_pending: false,
            wait_for_sipi: !bsp,
            sipi_pending: None,
            history: ApicHistory::default(),
        };
        s.reset_registers();
        s
    }

    /// Power-up register state (SDM 11.4.7.1), keeping the ID and IA32_APIC_BASE.
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xffff_ffff;
        self.svr = 0xff;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_MASKED; 6];
        self.timer_initial = 0;
        self.timer_divide = 0;
        self.timer = Timer::default();
    }

    fn enabled(&self) -> bool {
        self.apic_base & APIC_BASE_ENABLE != 0
    }

    fn x2apic(&self) -> bool {
        self.enabled() && self.apic_base & APIC_BASE_EXTD != 0
    }

    fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The ID register as the guest reads it.
    fn id_register(&self) -> u32 {
        if self.x2apic() {
            self.id
        } else {
            self.id << 24
        }
    }

    /// x2APIC logical ID (SDM 11.12.10.2): cluster in 31:16, one bit of 15:0.
    fn x2apic_ldr(&self) -> u32 {
        ((self.id >> 4) << 16) | (1 << (self.id & 0xf))
    }

    fn ppr(&self) -> u32 {
        let isrv = highest_bit(&self.isr).map_or(0, u32::from);
        if (self.tpr & 0xf0) >= (isrv & 0xf0) {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    fn pending(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        let v = highest_bit(&self.irr)?;
        (u32::from(v & 0xf0) > (self.ppr() & 0xf0)).then_some(v)
    }

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt[LVT_TIMER] & LVT_TIMER_MODE_MASK) >> LVT_TIMER_MODE_SHIFT {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            // 3 is reserved: behaves as one-shot here.
            _ => TimerMode::OneShot,
        }
    }

    /// Records an error (ESR) and raises the error LVT if it is unmasked.
    fn error(&mut self, bits: u32) -> bool {
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR];
        let vector = lvt as u8;
        if lvt & LVT_MASKED == 0 && vector >= 16 {
            return self.accept_fixed(vector, false);
        }
        false
    }

    /// A fixed interrupt arrives: latch it in the IRR. Returns whether the vCPU must look.
    fn accept_fixed(&mut self, vector: u8, level: bool) -> bool {
        if !self.enabled() || !self.software_enabled() {
            return false;
        }
        if vector < 16 {
            return self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
        }
        self.history.record(ApicEvent::Accepted { vector, coalesced: test_bit(&self.irr, vector) });
        set_bit(&mut self.irr, vector, true);
        set_bit(&mut self.tmr, vector, level);
        true
    }

    fn accept(&mut self, mode: DeliveryMode, vector: u8, level: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        match mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => self.accept_fixed(vector, level),
            DeliveryMode::Nmi => {
                self.nmi_pending = true;
                true
            }
            // INIT to the BSP would restart it in the BIOS, which hvrun does not have.
            DeliveryMode::Init if self.apic_base & APIC_BASE_BSP != 0 => {
                log::warn!("lapic {}: ignoring INIT to the boot processor", self.id);
                false
            }
            DeliveryMode::Init => {
                self.init_pending = true;
                self.wait_for_sipi = true;
                self.sipi_pending = None;
                true
            }
            DeliveryMode::Startup if self.wait_for_sipi => {
                self.wait_for_sipi = false;
                self.sipi_pending = Some(vector);
                true
            }
            DeliveryMode::Startup => false,
            DeliveryMode::InitDeassert | DeliveryMode::Smi | DeliveryMode::ExtInt | DeliveryMode::Reserved => {
                log::debug!("lapic {}: dropping {mode:?} interrupt (vector {vector:#x})", self.id);
                false
            }
        }
    }

    fn eoi(&mut self) -> Effects {
        let mut fx = Effects::default();
        if let Some(v) = highest_bit(&self.isr) {
            set_bit(&mut self.isr, v, false);
            self.history.record(ApicEvent::Eoi(v));
            // A level-triggered vector's EOI goes on to the IOAPICs. The TMR bit stays:
            // it records the trigger mode of the vector's last acceptance and only the
            // next acceptance changes it (SDM vol. 3, 11.8.4 and 11.8.5).
            if test_bit(&self.tmr, v) {
                fx.eoi = Some(v);
            }
            // A lower-priority interrupt held back by the ISR may now be deliverable.
            fx.kick = self.pending().is_some();
        }
        fx
    }

    // --- Timer ---

    fn disarm_timer(&mut self) {
        self.timer.start = None;
        self.timer.deadline = None;
    }

    fn write_initial_count(&mut self, count: u32, now: Instant) {
        if self.timer_mode() == TimerMode::TscDeadline {
            return; // Ignored in TSC-deadline mode (SDM 11.5.4.1).
        }
        self.timer_initial = count;
        if count == 0 {
            self.disarm_timer();
            return;
        }
        self.timer.tick = Duration::from_nanos(1_000_000_000 / APIC_BUS_HZ * u64::from(divisor(self.timer_divide)));
        self.timer.start = Some(now);
        let mut interval = self.timer.tick * count;
        if self.timer_mode() == TimerMode::Periodic {
            interval = interval.max(MIN_PERIODIC_INTERVAL);
        }
        self.timer.deadline = now.checked_add(interval);
    }

    fn current_count(&self, now: Instant) -> u32 {
        let (Some(start), true) = (self.timer.start, self.timer_initial != 0) else {
            return 0;
        };
        if self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let tick = self.timer.tick.as_nanos().max(1);
        let elapsed = now.saturating_duration_since(start).as_nanos() / tick;
        let initial = u128::from(self.timer_initial);
        match self.timer_mode() {
            TimerMode::Periodic => (initial - elapsed % initial) as u32,
            _ if self.timer.deadline.is_none() || elapsed >= initial => 0,
            _ => (initial - elapsed) as u32,
        }
    }

    fn write_tsc_deadline(&mut self, value: u64, clock: &GuestTscClock) {
        if self.timer_mode() != TimerMode::TscDeadline {
            return; // Ignored outside TSC-deadline mode.
        }
        self.timer.tsc_deadline = value;
        self.timer.start = None;
        self.timer.deadline = if value == 0 { None } else { clock.instant_at(value) };
    }

    fn write_lvt(&mut self, index: usize, value: u32) {
        let mut value = value & LVT_WRITABLE[index];
        if !self.software_enabled() {
            value |= LVT_MASKED;
        }
        if index == LVT_TIMER {
            let old = self.timer_mode();
            self.lvt[index] = value;
            if self.timer_mode() != old {
                // A mode change disarms the timer.
                self.disarm_timer();
                self.timer_initial = 0;
                self.timer.tsc_deadline = 0;
            }
        } else {
            self.lvt[index] = value;
        }
    }

    /// Fires the timer if it is due at `now`. Returns whether an interrupt was latched.
    fn expire(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.timer.deadline else {
            return false;
        };
        if deadline > now {
            return false;
        }
        match self.timer_mode() {
            TimerMode::Periodic => {
                let period = (self.timer.tick * self.timer_initial).max(MIN_PERIODIC_INTERVAL);
                // Periods missed while nobody looked coalesce into this one interrupt.
                let missed = (now - deadline).as_nanos() / period.as_nanos() + 1;
                let advance = Duration::from_nanos(u64::try_from(period.as_nanos() * missed).unwrap_or(u64::MAX));
                self.timer.deadline = deadline.checked_add(advance);
            }
            TimerMode::OneShot => self.timer.deadline = None,
            TimerMode::TscDeadline => {
                self.timer.deadline = None;
                self.timer.tsc_deadline = 0;
            }
        }
        let lvt = self.lvt[LVT_TIMER];
        if lvt & LVT_MASKED != 0 {
            return false; // The count runs out, the interrupt is not delivered.
        }
        self.accept_fixed(lvt as u8, false)
    }

    fn next_deadline(&self) -> Option<Instant> {
        // A masked timer raises nothing: no reason to wake for it.
        (self.lvt[LVT_TIMER] & LVT_MASKED == 0).then_some(self.timer.deadline).flatten()
    }

    // --- Register file ---

    /// Reads the register at xAPIC offset `reg` (16-byte aligned). `None`: not readable in
    /// the current mode (x2APIC: #GP).
    fn read(&self, reg: u32, now: Instant) -> Option<u32> {
        let x2 = self.x2apic();
        let value = match reg {
            REG_ID => self.id_register(),
            REG_VERSION => APIC_VERSION,
            REG_TPR => self.tpr,
            REG_APR | REG_RRD if !x2 => 0,
            REG_PPR => self.ppr(),
            REG_LDR if x2 => self.x2apic_ldr(),
            REG_LDR => self.ldr,
            REG_DFR if !x2 => self.dfr,
            REG_SVR => self.svr,
            0x100..=0x170 => self.isr[((reg - REG_ISR) >> 4) as usize],
            0x180..=0x1f0 => self.tmr[((reg - REG_TMR) >> 4) as usize],
            0x200..=0x270 => self.irr[((reg - REG_IRR) >> 4) as usize],
            REG_ESR => self.esr,
            REG_ICR_LOW => self.icr_low,
            REG_ICR_HIGH if !x2 => self.icr_high,
            0x320..=0x370 => self.lvt[((reg - REG_LVT_TIMER) >> 4) as usize],
            REG_TIMER_INITIAL => self.timer_initial,
            REG_TIMER_CURRENT => self.current_count(now),
            REG_TIMER_DIVIDE => self.timer_divide,
            _ => return None,
        };
        Some(value)
    }

    /// Writes `value` to the register at xAPIC offset `reg`. `Err`: #GP in x2APIC mode
    /// (read-only or absent register, reserved bits); xAPIC callers ignore it.
    fn write(&mut self, reg: u32, value: u32, now: Instant) -> Result<Effects, GpFault> {
        let x2 = self.x2apic();
        // x2APIC: reserved bits set in a write fault (SDM 11.12.1.2).
        let check = |writable: u32| if x2 && value & !writable != 0 { Err(GpFault) } else { Ok(()) };
        let mut fx = Effects::default();
        match reg {
            REG_ID if !x2 => log::debug!("lapic {}: ignoring write of {value:#x} to the ID register", self.id),
            REG_TPR => {
                check(0xff)?;
                self.tpr = value & 0xff;
                // A lower TPR may unblock a pending interrupt.
                fx.kick = self.pending().is_some();
            }
            REG_EOI => {
                check(0)?;
                fx = self.eoi();
            }
            REG_LDR if !x2 => self.ldr = value & 0xff00_0000,
            REG_DFR if !x2 => self.dfr = value | 0x0fff_ffff,
            REG_SVR => {
                check(SVR_WRITABLE)?;
                self.svr = value & SVR_WRITABLE;
                if !self.software_enabled() {
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
            }
            REG_ESR => {
                check(0)?;
                self.esr = std::mem::take(&mut self.esr_pending);
            }
            REG_ICR_LOW => {
                check(ICR_WRITABLE)?;
                self.icr_low = value & ICR_WRITABLE;
                fx = self.send_ipi();
            }
            REG_ICR_HIGH if !x2 => self.icr_high = value & 0xff00_0000,
            0x320..=0x370 => {
                let index = ((reg - REG_LVT_TIMER) >> 4) as usize;
                check(LVT_WRITABLE[index] | LVT_READ_ONLY)?;
                if x2 && index == LVT_TIMER && value & LVT_TIMER_MODE_MASK == LVT_TIMER_MODE_MASK {
                    return Err(GpFault); // Reserved timer mode.
                }
                self.write_lvt(index, value);
            }
            REG_TIMER_INITIAL => self.write_initial_count(value, now),
            REG_TIMER_DIVIDE => {
                check(0xb)?;
                self.timer_divide = value & 0xb;
            }
            REG_SELF_IPI if x2 => {
                check(0xff)?;
                fx.kick = self.self_ipi(value as u8);
            }
            _ => {
                if x2 {
                    return Err(GpFault);
                }
                log::debug!("lapic {}: ignoring write of {value:#x} to offset {reg:#x}", self.id);
            }
        }
        Ok(fx)
    }

    fn self_ipi(&mut self, vector: u8) -> bool {
        if vector < 16 {
            return self.error(ESR_SEND_ILLEGAL_VECTOR);
        }
        self.accept_fixed(vector, false)
    }

    /// The ICR low word was written: send what it describes.
    fn send_ipi(&mut self) -> Effects {
        let low = self.icr_low;
        let x2 = self.x2apic();
        self.history.record(ApicEvent::Sent { icr_low: low, dest: if x2 { self.icr_high } else { self.icr_high >> 24 } });
        let level_triggered = low & ICR_TRIGGER_LEVEL != 0;
        let mut mode = DeliveryMode::from_bits(low >> 8);
        if mode == DeliveryMode::Init && level_triggered && low & ICR_LEVEL_ASSERT == 0 {
            mode = DeliveryMode::InitDeassert;
        }
        let shorthand = match (low >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        let vector = low as u8;
        let mut fx = Effects::default();
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            fx.kick = self.error(ESR_SEND_ILLEGAL_VECTOR);
            return fx;
        }
        if shorthand == Shorthand::SelfOnly {
            // Only fixed interrupts can be sent to self (SDM table 11-3).
            if mode == DeliveryMode::Fixed {
                fx.kick = self.accept_fixed(vector, false);
            } else {
                log::debug!("lapic {}: dropping self IPI with mode {mode:?}", self.id);
            }
            return fx;
        }
        let dest = if x2 { self.icr_high } else { self.icr_high >> 24 };
        fx.ipi = Some(Ipi {
            source: self.id,
            dest,
            logical: low & ICR_LOGICAL != 0,
            x2apic: x2,
            shorthand,
            mode,
            vector,
            level_triggered,
        });
        fx
    }

    /// Whether this APIC is a target of `dest` in the given destination mode (SDM 11.6.2).
    fn matches_destination(&self, dest: u32, logical: bool, x2apic_format: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        let broadcast = if x2apic_format { 0xffff_ffff } else { 0xff };
        if dest == broadcast {
            return true;
        }
        if !logical {
            return dest == self.id;
        }
        if self.x2apic() {
            let ldr = self.x2apic_ldr();
            return dest >> 16 == ldr >> 16 && dest & ldr & 0xffff != 0;
        }
        let ldr = self.ldr >> 24;
        let dest = dest & 0xff;
        if self.dfr >> 28 == 0xf {
            ldr & dest != 0 // Flat model.
        } else {
            dest >> 4 == ldr >> 4 && dest & ldr & 0xf != 0 // Cluster model.
        }
    }

    fn write_apic_base(&mut self, value: u64) -> Result<(), GpFault> {
        if value & !(APIC_BASE_ADDR_MASK | APIC_BASE_BSP | APIC_BASE_EXTD | APIC_BASE_ENABLE) != 0 {
            return Err(GpFault);
        }
        let new_enabled = value & APIC_BASE_ENABLE != 0;
        let new_x2 = value & APIC_BASE_EXTD != 0;
        let (old_enabled, old_x2) = (self.enabled(), self.x2apic());
        // Invalid state and invalid transitions (SDM 11.12.5, figure 11-28).
        if (!new_enabled && new_x2) || (old_x2 && new_enabled && !new_x2) || (!old_enabled && new_x2) {
            return Err(GpFault);
        }
        let base = value & APIC_BASE_ADDR_MASK;
        if base != LAPIC_BASE {
            log::warn!("lapic {}: guest moved the APIC base to {base:#x}; the MMIO page stays at {LAPIC_BASE:#x}", self.id);
        }
        self.apic_base = (value & !APIC_BASE_BSP) | (self.apic_base & APIC_BASE_BSP);
        if old_enabled && !new_enabled {
            self.reset_registers();
        }
        Ok(())
    }
}

/// One vCPU's local APIC. Shared by reference: the vCPU thread and whoever delivers
/// interrupts to it (IOAPIC, other vCPUs' IPIs) call it concurrently.
pub struct Lapic {
    state: Mutex<State>,
    /// Tells the timer thread (crate::apic_timers) that the deadline changed.
    timer_signal: Arc<TimerSignal>,
    kick: Arc<dyn Kick>,
    router: Arc<dyn ApicRouter>,
    tsc: GuestTscClock,
}

impl Lapic {
    /// A local APIC in its power-up state: xAPIC mode, globally enabled at
    /// [`LAPIC_BASE`], software-disabled (SVR 0xff), every LVT masked.
    /// `apic_id` must match the MADT's; the BSP has `bsp` set.
    pub fn new(apic_id: u32, bsp: bool, kick: Arc<dyn Kick>, router: Arc<dyn ApicRouter>, tsc: GuestTscClock) -> Self {
        let timer_signal = Arc::new(TimerSignal::default());
        Lapic { state: Mutex::new(State::new(apic_id, bsp)), timer_signal, kick, router, tsc }
    }

    /// Served by the timer thread whose signal this is ([`crate::apic_timers::ApicTimers`]).
    /// Without one, the timer fires only when the vCPU looks ([`LocalInterrupts::pending`]).
    pub fn with_timer_signal(self, timer_signal: Arc<TimerSignal>) -> Self {
        Lapic { timer_signal, ..self }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, fx: Effects) {
        if let Some(vector) = fx.eoi {
            self.router.broadcast_eoi(vector);
        }
        if let Some(ipi) = fx.ipi {
            self.router.send_ipi(ipi);
        }
        if fx.kick {
            self.kick.kick();
        }
    }

    /// The state the state dump shows (no side effects: a due timer is not latched).
    pub fn snapshot(&self) -> LapicSnapshot {
        let s = self.lock();
        let now = Instant::now();
        LapicSnapshot {
            id: s.id,
            x2apic: s.x2apic(),
            software_enabled: s.software_enabled(),
            irr: s.irr,
            isr: s.isr,
            tmr: s.tmr,
            tpr: s.tpr,
            ppr: s.ppr(),
            deliverable: s.pending(),
            lvt_timer: s.lvt[LVT_TIMER],
            timer_mode: s.timer_mode(),
            initial_count: s.timer_initial,
            current_count: s.current_count(now),
            tsc_deadline: s.timer.tsc_deadline,
            fires_in: s.timer.deadline.map(|d| d.saturating_duration_since(now)),
            history: s.history.events(),
        }
    }

    pub fn apic_id(&self) -> u32 {
        self.lock().id
    }

    fn deadline_maybe_changed(&self, s: &State, before: Option<Instant>) {
        if s.next_deadline() != before {
            self.timer_signal.notify();
        }
    }

    /// In x2APIC mode: the VMM routes MSRs 0x800-0x8ff here, and the MMIO page is dead.
    pub fn is_x2apic(&self) -> bool {
        self.lock().x2apic()
    }

    /// The interrupt a delivery agent (IOAPIC, another APIC) sends to this one. `level`:
    /// level-triggered (sets the TMR bit so that EOI is broadcast). Returns whether the
    /// interrupt was accepted; the vCPU is kicked if so.
    pub fn deliver(&self, mode: DeliveryMode, vector: u8, level: bool) -> bool {
        let accepted = self.lock().accept(mode, vector, level);
        if accepted {
            self.kick.kick();
        }
        accepted
    }

    /// Whether this APIC is addressed by `dest` (physical ID or logical, flat or cluster
    /// model; `x2apic_format`: a 32-bit destination whose broadcast is 0xffffffff,
    /// otherwise 8-bit with broadcast 0xff).
    pub fn matches_destination(&self, dest: u32, logical: bool, x2apic_format: bool) -> bool {
        self.lock().matches_destination(dest, logical, x2apic_format)
    }

    /// The task-priority register (the vCPU mirrors CR8 from it).
    pub fn tpr(&self) -> u32 {
        self.lock().tpr
    }

    /// A MOV to CR8 changed the TPR to `tpr` (CR8 << 4): the vCPU's side of the register.
    pub fn set_tpr(&self, tpr: u32) {
        self.lock().tpr = tpr & 0xff;
    }

    /// A pending NMI (delivery mode NMI), consumed. The VMM injects it (NMIs are not
    /// blocked by RFLAGS.IF).
    pub fn take_nmi(&self) -> bool {
        std::mem::take(&mut self.lock().nmi_pending)
    }

    /// A pending INIT, consumed: the APIC's registers go back to their power-up state
    /// (keeping its ID and IA32_APIC_BASE, SDM vol. 3, 11.4.7.3), and the VMM resets the
    /// vCPU and waits for a SIPI. The reset happens here, on the vCPU's thread, so that
    /// nothing the vCPU injected before it saw the INIT survives into the restarted AP.
    pub fn take_init(&self) -> bool {
        let mut s = self.lock();
        if !std::mem::take(&mut s.init_pending) {
            return false;
        }
        let before = s.next_deadline();
        s.reset_registers();
        self.deadline_maybe_changed(&s, before);
        true
    }

    /// Whether a start-up IPI waits for [`Lapic::take_sipi`].
    pub fn sipi_pending(&self) -> bool {
        self.lock().sipi_pending.is_some()
    }

    /// Whether an INIT waits for [`Lapic::take_init`] (it wakes a halted vCPU).
    pub fn init_pending(&self) -> bool {
        self.lock().init_pending
    }

    /// A pending start-up IPI's vector, consumed: the AP starts at CS = vector << 8, IP 0.
    pub fn take_sipi(&self) -> Option<u8> {
        self.lock().sipi_pending.take()
    }

    // --- MSRs ---

    /// Whether the VMM should route RDMSR/WRMSR of `msr` here.
    pub fn handles_msr(msr: u32) -> bool {
        matches!(msr, MSR_IA32_APIC_BASE | MSR_IA32_TSC_DEADLINE | MSR_X2APIC_FIRST..=MSR_X2APIC_LAST)
    }

    /// RDMSR. `Err`: inject #GP (x2APIC MSR while not in x2APIC mode, write-only or
    /// absent register, MSR not the APIC's).
    pub fn read_msr(&self, msr: u32) -> Result<u64, GpFault> {
        self.read_msr_at(msr, Instant::now())
    }

    fn read_msr_at(&self, msr: u32, now: Instant) -> Result<u64, GpFault> {
        let s = self.lock();
        match msr {
            MSR_IA32_APIC_BASE => Ok(s.apic_base),
            MSR_IA32_TSC_DEADLINE => {
                Ok(if s.timer_mode() == TimerMode::TscDeadline { s.timer.tsc_deadline } else { 0 })
            }
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST if s.x2apic() => {
                let reg = (msr - MSR_X2APIC_FIRST) << 4;
                let value = s.read(reg, now).ok_or(GpFault)?;
                Ok(if reg == REG_ICR_LOW { u64::from(s.icr_high) << 32 | u64::from(value) } else { u64::from(value) })
            }
            _ => Err(GpFault),
        }
    }

    /// WRMSR. `Err`: inject #GP.
    pub fn write_msr(&self, msr: u32, value: u64) -> Result<(), GpFault> {
        self.write_msr_at(msr, value, Instant::now())
    }

    fn write_msr_at(&self, msr: u32, value: u64, now: Instant) -> Result<(), GpFault> {
        let mut s = self.lock();
        let before = s.next_deadline();
        let fx = match msr {
            MSR_IA32_APIC_BASE => {
                s.write_apic_base(value)?;
                Effects::default()
            }
            MSR_IA32_TSC_DEADLINE => {
                s.write_tsc_deadline(value, &self.tsc);
                // Already due: latch it now rather than at the next poll.
                Effects { kick: s.expire(now), ..Effects::default() }
            }
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST if s.x2apic() => {
                let reg = (msr - MSR_X2APIC_FIRST) << 4;
                if reg == REG_ICR_LOW {
                    s.icr_high = (value >> 32) as u32;
                } else if value >> 32 != 0 {
                    return Err(GpFault);
                }
                s.write(reg, value as u32, now)?
            }
            _ => return Err(GpFault),
        };
        self.deadline_maybe_changed(&s, before);
        drop(s);
        self.apply(fx);
        Ok(())
    }

    /// Arms the TSC-deadline timer (the guest's WRMSR to IA32_TSC_DEADLINE); 0 disarms.
    /// Ignored unless the LVT timer is in TSC-deadline mode.
    pub fn set_tsc_deadline(&self, guest_tsc: u64) {
        // Cannot fault: the MSR is always the APIC's.
        let _ = self.write_msr(MSR_IA32_TSC_DEADLINE, guest_tsc);
    }

    /// Reads IA32_TSC_DEADLINE (0 outside TSC-deadline mode and once fired).
    pub fn tsc_deadline(&self) -> u64 {
        self.read_msr(MSR_IA32_TSC_DEADLINE).unwrap_or(0)
    }

    fn mmio_read_at(&self, offset: u64, data: &mut [u8], now: Instant) {
        let s = self.lock();
        // Globally disabled, the APIC is not there (SDM vol. 3, 11.4.3); in x2APIC mode its
        // page behaves the same way (11.12.1.2): nothing decodes the address, and a read
        // sees the floating bus, all ones, whatever was written (kvm-unit-tests' apic
        // "apic_disable" checks this).
        if !s.enabled() || s.x2apic() || offset >= LAPIC_SIZE {
            data.fill(0xff);
            return;
        }
        data.fill(0);
        let reg = (offset & !0xf) as u32;
        let within = (offset & 0xf) as usize;
        if within >= 4 {
            return;
        }
        let bytes = s.read(reg, now).unwrap_or(0).to_le_bytes();
        let n = data.len().min(4 - within);
        data[..n].copy_from_slice(&bytes[within..within + n]);
    }

    fn mmio_write_at(&self, offset: u64, data: &[u8], now: Instant) {
        let mut s = self.lock();
        if !s.enabled() || s.x2apic() || offset >= LAPIC_SIZE {
            return;
        }
        // Registers are 32 bits wide at 16-byte boundaries: other accesses are undefined
        // (SDM 11.4.1) and dropped.
        if offset & 0xf != 0 || data.len() < 4 {
            log::debug!("lapic {}: ignoring {}-byte write at offset {offset:#x}", s.id, data.len());
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let before = s.next_deadline();
        // In xAPIC mode nothing faults: a write to a read-only register is ignored.
        let fx = s.write(offset as u32, value, now).unwrap_or_default();
        self.deadline_maybe_changed(&s, before);
        drop(s);
        self.apply(fx);
    }
}

impl crate::bus::BusDevice for Lapic {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.mmio_read_at(offset, data, Instant::now());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.mmio_write_at(offset, data, Instant::now());
    }
}

impl LocalInterrupts for Lapic {
    /// The highest IRR vector whose priority class is above the PPR's (SDM 11.8.3.1).
    /// Also latches a timer that is already due (no kick: the caller is the vCPU).
    fn pending(&self) -> Option<u8> {
        let mut s = self.lock();
        s.expire(Instant::now());
        s.pending()
    }

    /// The vCPU injected `vector`: it moves from the IRR to the ISR.
    fn acknowledge(&self, vector: u8) {
        let mut s = self.lock();
        if test_bit(&s.irr, vector) {
            set_bit(&mut s.irr, vector, false);
            set_bit(&mut s.isr, vector, true);
            s.history.record(ApicEvent::Injected(vector));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lock().next_deadline()
    }

    fn poll_timers(&self, now: Instant) {
        let fired = self.lock().expire(now);
        if fired {
            self.kick.kick();
        }
    }

    fn nmi_pending(&self) -> bool {
        self.lock().nmi_pending
    }

    fn acknowledge_nmi(&self) {
        self.lock().nmi_pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    use crate::irq::testing::CountKicks;

    #[derive(Default)]
    struct Recorder {
        ipis: Mutex<Vec<Ipi>>,
        eois: Mutex<Vec<u8>>,
    }
    impl ApicRouter for Recorder {
        fn send_ipi(&self, ipi: Ipi) {
            self.ipis.lock().unwrap().push(ipi);
        }
        fn broadcast_eoi(&self, vector: u8) {
            self.eois.lock().unwrap().push(vector);
        }
    }

    struct Fixture {
        lapic: Lapic,
        kicks: Arc<CountKicks>,
        router: Arc<Recorder>,
        t0: Instant,
    }

    const TSC_HZ: u64 = 2_000_000_000;

    fn fixture(id: u32) -> Fixture {
        let kicks = Arc::new(CountKicks::default());
        let router = Arc::new(Recorder::default());
        let t0 = Instant::now();
        let tsc = GuestTscClock::new(TSC_HZ, 1_000_000, t0);
        let lapic = Lapic::new(id, id == 0, kicks.clone(), router.clone(), tsc);
        Fixture { lapic, kicks, router, t0 }
    }

    impl Fixture {
        fn rd(&self, reg: u32) -> u32 {
            let mut b = [0u8; 4];
            self.lapic.mmio_read_at(reg as u64, &mut b, self.t0);
            u32::from_le_bytes(b)
        }
        fn wr(&self, reg: u32, value: u32) {
            self.lapic.mmio_write_at(reg as u64, &value.to_le_bytes(), self.t0);
        }
        fn wr_at(&self, reg: u32, value: u32, now: Instant) {
            self.lapic.mmio_write_at(reg as u64, &value.to_le_bytes(), now);
        }
        fn enable(&self) {
            self.wr(REG_SVR, SVR_ENABLE | 0xff);
        }
        fn kicks(&self) -> usize {
            self.kicks.0.load(Ordering::SeqCst)
        }
        fn inject(&self) -> Option<u8> {
            let v = self.lapic.lock().pending()?;
            self.lapic.acknowledge(v);
            Some(v)
        }
    }

    #[test]
    fn power_up_registers() {
        let f = fixture(3);
        assert_eq!(f.rd(REG_ID), 3 << 24);
        assert_eq!(f.rd(REG_VERSION), 0x50014);
        assert_eq!(f.rd(REG_SVR), 0xff);
        assert_eq!(f.rd(REG_DFR), 0xffff_ffff);
        for reg in (REG_LVT_TIMER..=REG_LVT_ERROR).step_by(16) {
            assert_eq!(f.rd(reg), LVT_MASKED, "LVT {reg:#x} masked");
        }
        assert_eq!(f.lapic.read_msr(MSR_IA32_APIC_BASE), Ok(0xfee0_0800));
        assert_eq!(fixture(0).lapic.read_msr(MSR_IA32_APIC_BASE), Ok(0xfee0_0900), "BSP bit");
        // Not in x2APIC mode: the x2APIC MSRs fault.
        assert_eq!(f.lapic.read_msr(0x802), Err(GpFault));
    }

    #[test]
    fn register_write_masks() {
        let f = fixture(1);
        f.wr(REG_ID, 0x5500_0000);
        assert_eq!(f.rd(REG_ID), 1 << 24, "ID writes ignored");
        f.wr(REG_VERSION, 0);
        assert_eq!(f.rd(REG_VERSION), APIC_VERSION);
        f.wr(REG_TPR, 0xffff_ff5a);
        assert_eq!(f.rd(REG_TPR), 0x5a);
        f.wr(REG_LDR, 0x12ff_ffff);
        assert_eq!(f.rd(REG_LDR), 0x1200_0000);
        f.wr(REG_DFR, 0);
        assert_eq!(f.rd(REG_DFR), 0x0fff_ffff);
        f.wr(REG_SVR, 0xffff_ffff);
        assert_eq!(f.rd(REG_SVR), 0x3ff);
        f.wr(REG_LVT_TIMER, 0xffff_ffff);
        assert_eq!(f.rd(REG_LVT_TIMER), 0x7_00ff);
        f.wr(REG_LVT_LINT0, 0xffff_ffff);
        assert_eq!(f.rd(REG_LVT_LINT0), 0x1_a7ff);
        f.wr(REG_LVT_ERROR, 0xffff_ffff);
        assert_eq!(f.rd(REG_LVT_ERROR), 0x1_00ff);
        f.wr(REG_TIMER_DIVIDE, 0xff);
        assert_eq!(f.rd(REG_TIMER_DIVIDE), 0xb);
        f.wr(REG_ICR_HIGH, 0xffff_ffff);
        assert_eq!(f.rd(REG_ICR_HIGH), 0xff00_0000);
        // Misaligned and partial accesses.
        f.lapic.mmio_write_at(REG_TPR as u64 + 4, &7u32.to_le_bytes(), f.t0);
        f.lapic.mmio_write_at(REG_TPR as u64, &[7], f.t0);
        assert_eq!(f.rd(REG_TPR), 0x5a);
        let mut byte = [0u8; 1];
        f.lapic.mmio_read_at(REG_VERSION as u64 + 2, &mut byte, f.t0);
        assert_eq!(byte, [5]);
        let mut wide = [0xffu8; 8];
        f.lapic.mmio_read_at(REG_VERSION as u64, &mut wide, f.t0);
        assert_eq!(wide, [0x14, 0, 5, 0, 0, 0, 0, 0]);
        f.lapic.mmio_read_at(0xfff, &mut wide, f.t0);
        f.lapic.mmio_read_at(u64::MAX, &mut wide, f.t0);
        f.lapic.mmio_write_at(u64::MAX, &[1; 8], f.t0);
    }

    #[test]
    fn software_disable_masks_lvts_and_refuses_interrupts() {
        let f = fixture(0);
        f.wr(REG_LVT_LINT0, 0x700);
        assert_eq!(f.rd(REG_LVT_LINT0), 0x700 | LVT_MASKED, "stays masked while disabled");
        assert!(!f.lapic.deliver(DeliveryMode::Fixed, 0x30, false));
        f.enable();
        f.wr(REG_LVT_LINT0, 0x700);
        assert_eq!(f.rd(REG_LVT_LINT0), 0x700);
        f.wr(REG_SVR, 0xff);
        assert_eq!(f.rd(REG_LVT_LINT0), 0x700 | LVT_MASKED);
    }

    #[test]
    fn priority_rules_follow_ppr() {
        let f = fixture(0);
        f.enable();
        assert_eq!(f.lapic.pending(), None);
        assert!(f.lapic.deliver(DeliveryMode::Fixed, 0x45, false));
        assert_eq!(f.kicks(), 1);
        assert_eq!(f.lapic.pending(), Some(0x45));
        // TPR class 4 blocks class 4 (must be strictly above).
        f.wr(REG_TPR, 0x40);
        assert_eq!(f.rd(REG_PPR), 0x40);
        assert_eq!(f.lapic.pending(), None);
        f.wr(REG_TPR, 0x3f);
        assert_eq!(f.lapic.pending(), Some(0x45));
        f.wr(REG_TPR, 0);
        // In service 0x45: PPR is its class, 0x41 (same class) waits, 0x51 goes through.
        assert_eq!(f.inject(), Some(0x45));
        assert_eq!(f.rd(REG_PPR), 0x40);
        assert_eq!(f.rd(REG_ISR + 0x20), 1 << 5);
        f.lapic.deliver(DeliveryMode::Fixed, 0x41, false);
        assert_eq!(f.lapic.pending(), None);
        f.lapic.deliver(DeliveryMode::Fixed, 0x51, false);
        assert_eq!(f.lapic.pending(), Some(0x51));
        // TPR above the ISR's class wins in PPR.
        f.wr(REG_TPR, 0x62);
        assert_eq!(f.rd(REG_PPR), 0x62);
        assert_eq!(f.lapic.pending(), None);
        // IRR shows both.
        assert_eq!(f.rd(REG_IRR + 0x20), (1 << 1) | (1 << 0x11));
    }

    #[test]
    fn eoi_clears_the_highest_isr_and_nests() {
        let f = fixture(0);
        f.enable();
        f.lapic.deliver(DeliveryMode::Fixed, 0x30, false);
        assert_eq!(f.inject(), Some(0x30));
        // A higher one interrupts the handler.
        f.lapic.deliver(DeliveryMode::Fixed, 0x80, false);
        assert_eq!(f.inject(), Some(0x80));
        assert_eq!(f.rd(REG_PPR), 0x80);
        f.lapic.deliver(DeliveryMode::Fixed, 0x31, false);
        assert_eq!(f.lapic.pending(), None, "0x31 waits for both handlers");
        f.wr(REG_EOI, 0);
        assert_eq!(f.rd(REG_ISR + 0x40), 0, "0x80 done");
        assert_eq!(f.rd(REG_PPR), 0x30);
        assert_eq!(f.lapic.pending(), None, "0x31 is in 0x30's class");
        let kicks = f.kicks();
        f.wr(REG_EOI, 0);
        assert_eq!(f.rd(REG_PPR), 0);
        assert_eq!(f.kicks(), kicks + 1, "EOI unblocked 0x31: the vCPU is kicked");
        assert_eq!(f.inject(), Some(0x31));
        f.wr(REG_EOI, 0);
        // EOI with nothing in service is harmless.
        f.wr(REG_EOI, 0);
        assert!(f.router.eois.lock().unwrap().is_empty(), "edge interrupts: no EOI broadcast");
    }

    #[test]
    fn level_triggered_eoi_is_broadcast() {
        let f = fixture(0);
        f.enable();
        f.lapic.deliver(DeliveryMode::Fixed, 0x61, true);
        assert_eq!(f.rd(REG_TMR + 0x30), 1 << 1);
        assert_eq!(f.inject(), Some(0x61));
        f.wr(REG_EOI, 0);
        assert_eq!(*f.router.eois.lock().unwrap(), [0x61]);
        // The TMR keeps the last acceptance's trigger mode (kvm-unit-tests' ioapic
        // "TMR for ioapic ... (expected true)"); an edge acceptance clears it.
        assert_eq!(f.rd(REG_TMR + 0x30), 1 << 1, "the TMR survives the EOI");
        f.lapic.deliver(DeliveryMode::Fixed, 0x61, false);
        assert_eq!(f.rd(REG_TMR + 0x30), 0);
        assert_eq!(f.inject(), Some(0x61));
        f.wr(REG_EOI, 0);
        assert_eq!(*f.router.eois.lock().unwrap(), [0x61], "edge now: no second broadcast");
    }

    #[test]
    fn illegal_vectors_set_esr() {
        let f = fixture(0);
        f.enable();
        f.wr(REG_LVT_ERROR, 0xfe);
        assert!(f.lapic.deliver(DeliveryMode::Fixed, 5, false), "the error interrupt was raised");
        f.wr(REG_ESR, 0);
        assert_eq!(f.rd(REG_ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(f.lapic.pending(), Some(0xfe));
        f.wr(REG_ICR_LOW, 0x4_0003); // Self IPI, vector 3.
        f.wr(REG_ESR, 0);
        assert_eq!(f.rd(REG_ESR), ESR_SEND_ILLEGAL_VECTOR);
        f.wr(REG_ESR, 0);
        assert_eq!(f.rd(REG_ESR), 0);
    }

    #[test]
    fn self_ipi_and_routed_ipis() {
        let f = fixture(2);
        f.enable();
        f.wr(REG_ICR_LOW, 0x4_00f3); // Shorthand self, fixed, vector 0xf3.
        assert_eq!(f.lapic.pending(), Some(0xf3));
        assert!(f.router.ipis.lock().unwrap().is_empty());
        // INIT to APIC 1, then SIPI with vector 0x9a (physical).
        f.wr(REG_ICR_HIGH, 1 << 24);
        f.wr(REG_ICR_LOW, 0x4500);
        f.wr(REG_ICR_LOW, 0x8500); // INIT level de-assert.
        f.wr(REG_ICR_LOW, 0x069a);
        f.wr(REG_ICR_LOW, 0xc_0040 | 0x800); // All but self, logical, fixed 0x40.
        let ipis = f.router.ipis.lock().unwrap().clone();
        let base = Ipi {
            source: 2,
            dest: 1,
            logical: false,
            x2apic: false,
            shorthand: Shorthand::None,
            mode: DeliveryMode::Init,
            vector: 0,
            level_triggered: false,
        };
        assert_eq!(ipis[0], base);
        assert_eq!(ipis[1], Ipi { mode: DeliveryMode::InitDeassert, level_triggered: true, ..base });
        assert_eq!(ipis[2], Ipi { mode: DeliveryMode::Startup, vector: 0x9a, ..base });
        assert_eq!(
            ipis[3],
            Ipi { shorthand: Shorthand::AllExcludingSelf, logical: true, mode: DeliveryMode::Fixed, vector: 0x40, ..base }
        );
        assert_eq!(f.rd(REG_ICR_LOW), 0xc_0840, "delivery status reads idle");
        // Receiving side of INIT/SIPI/NMI.
        assert!(f.lapic.deliver(DeliveryMode::Init, 0, false));
        assert!(f.lapic.deliver(DeliveryMode::Startup, 0x9a, false));
        assert!(f.lapic.deliver(DeliveryMode::Nmi, 0, false));
        assert!(f.lapic.take_init() && !f.lapic.take_init());
        assert_eq!(f.lapic.take_sipi(), Some(0x9a));
        assert!(f.lapic.take_nmi());
    }

    #[test]
    fn destination_matching() {
        let f = fixture(3);
        f.enable();
        assert!(f.lapic.matches_destination(3, false, false));
        assert!(!f.lapic.matches_destination(4, false, false));
        assert!(f.lapic.matches_destination(0xff, false, false));
        // Flat logical: LDR bit 3.
        f.wr(REG_LDR, 0x08 << 24);
        assert!(f.lapic.matches_destination(0x0c, true, false));
        assert!(!f.lapic.matches_destination(0x03, true, false));
        // Cluster: cluster 2, member bit 1.
        f.wr(REG_DFR, 0x0fff_ffff);
        f.wr(REG_LDR, 0x22 << 24);
        assert!(f.lapic.matches_destination(0x23, true, false));
        assert!(!f.lapic.matches_destination(0x13, true, false));
        // x2APIC: ID 3 is cluster 0, bit 3.
        f.lapic.write_msr(MSR_IA32_APIC_BASE, 0xfee0_0c00).unwrap();
        assert_eq!(f.lapic.read_msr(0x80d), Ok(1 << 3));
        assert!(f.lapic.matches_destination(0x0000_0008, true, true));
        assert!(!f.lapic.matches_destination(0x0001_0008, true, true));
        assert!(f.lapic.matches_destination(0xffff_ffff, false, true));
    }

    #[test]
    fn x2apic_msrs() {
        let f = fixture(5);
        let l = &f.lapic;
        // EXTD without EN is an invalid state.
        assert_eq!(l.write_msr(MSR_IA32_APIC_BASE, 0xfee0_0400), Err(GpFault));
        assert_eq!(l.write_msr(MSR_IA32_APIC_BASE, 0xfee0_0001), Err(GpFault), "reserved bit");
        l.write_msr(MSR_IA32_APIC_BASE, 0xfee0_0c00).unwrap();
        assert!(l.is_x2apic());
        assert_eq!(l.read_msr(MSR_IA32_APIC_BASE), Ok(0xfee0_0c00));
        // x2APIC -> xAPIC is invalid; -> disabled is fine.
        assert_eq!(l.write_msr(MSR_IA32_APIC_BASE, 0xfee0_0800), Err(GpFault));
        assert_eq!(l.read_msr(0x802), Ok(5), "32-bit ID");
        assert_eq!(l.read_msr(0x803), Ok(0x50014));
        assert_eq!(l.read_msr(0x80b), Err(GpFault), "EOI is write-only");
        assert_eq!(l.read_msr(0x83f), Err(GpFault), "SELF_IPI is write-only");
        assert_eq!(l.read_msr(0x80e), Err(GpFault), "no DFR in x2APIC mode");
        assert_eq!(l.read_msr(0x831), Err(GpFault), "no ICR high");
        assert_eq!(l.read_msr(0x82f), Err(GpFault), "no CMCI LVT");
        assert_eq!(l.write_msr(0x802, 1), Err(GpFault), "ID is read-only");
        assert_eq!(l.write_msr(0x80d, 1), Err(GpFault), "LDR is read-only");
        assert_eq!(l.write_msr(0x808, 0x100), Err(GpFault), "reserved TPR bits");
        assert_eq!(l.write_msr(0x808, 1 << 32), Err(GpFault), "high half");
        assert_eq!(l.write_msr(0x80b, 1), Err(GpFault), "EOI of a non-zero value");
        assert_eq!(l.write_msr(0x828, 1), Err(GpFault), "ESR of a non-zero value");
        assert_eq!(l.write_msr(0x832, 3 << 17), Err(GpFault), "reserved timer mode");
        l.write_msr(0x80f, 0x1ff).unwrap();
        l.write_msr(0x808, 0x20).unwrap();
        assert_eq!(l.read_msr(0x808), Ok(0x20));
        assert_eq!(l.read_msr(0x80a), Ok(0x20), "PPR");
        // SELF_IPI, then EOI through the MSR.
        l.write_msr(0x83f, 0x55).unwrap();
        assert_eq!(l.pending(), Some(0x55));
        l.acknowledge(0x55);
        assert_eq!(l.read_msr(0x812), Ok(1 << 0x15), "ISR word 2");
        l.write_msr(0x80b, 0).unwrap();
        assert_eq!(l.read_msr(0x812), Ok(0));
        // ICR is one 64-bit MSR with a 32-bit destination.
        l.write_msr(0x830, (7u64 << 32) | 0x40).unwrap();
        assert_eq!(l.read_msr(0x830), Ok((7u64 << 32) | 0x40));
        let ipi = f.router.ipis.lock().unwrap()[0];
        assert_eq!((ipi.dest, ipi.x2apic, ipi.vector, ipi.mode), (7, true, 0x40, DeliveryMode::Fixed));
        // The MMIO page is dead in x2APIC mode: the floating bus, writes go nowhere.
        assert_eq!(f.rd(REG_VERSION), u32::MAX);
        let tpr = l.read_msr(0x808).unwrap();
        f.wr(REG_TPR, !tpr as u32 & 0xff);
        assert_eq!(f.rd(REG_TPR), u32::MAX);
        assert_eq!(l.read_msr(0x808), Ok(tpr));
        // Disabling resets the registers; re-enabling goes to xAPIC mode.
        l.write_msr(MSR_IA32_APIC_BASE, 0xfee0_0000).unwrap();
        assert_eq!(l.pending(), None);
        assert_eq!(l.write_msr(MSR_IA32_APIC_BASE, 0xfee0_0c00), Err(GpFault), "disabled -> x2APIC");
        assert!(!l.deliver(DeliveryMode::Fixed, 0x40, false));
        assert_eq!(l.read_msr(0x808), Err(GpFault));
        l.write_msr(MSR_IA32_APIC_BASE, 0xfee0_0900).unwrap();
        assert_eq!(l.read_msr(MSR_IA32_APIC_BASE), Ok(0xfee0_0800), "BSP bit is read-only");
        assert_eq!(f.rd(REG_SVR), 0xff);
        assert_eq!(f.rd(REG_TPR), 0);
        assert!(!Lapic::handles_msr(0x10) && Lapic::handles_msr(0x6e0) && Lapic::handles_msr(0x8ff));
    }

    #[test]
    fn one_shot_timer_fires_after_its_count() {
        let f = fixture(0);
        f.enable();
        f.wr(REG_TIMER_DIVIDE, 0x1); // Divide by 4.
        f.wr(REG_LVT_TIMER, 0xec);
        f.wr_at(REG_TIMER_INITIAL, 1_000_000, f.t0);
        let due = f.t0 + Duration::from_millis(4); // 1e6 counts x 4 ns.
        assert_eq!(f.lapic.next_deadline(), Some(due));
        let at = |d: Instant| {
            let mut b = [0u8; 4];
            f.lapic.mmio_read_at(REG_TIMER_CURRENT as u64, &mut b, d);
            u32::from_le_bytes(b)
        };
        assert_eq!(at(f.t0), 1_000_000);
        assert_eq!(at(f.t0 + Duration::from_millis(1)), 750_000);
        f.lapic.poll_timers(due - Duration::from_nanos(1));
        assert_eq!(f.lapic.lock().pending(), None, "not yet");
        f.lapic.poll_timers(due);
        assert_eq!(f.lapic.lock().pending(), Some(0xec));
        assert_eq!(f.kicks(), 1);
        assert_eq!(f.lapic.next_deadline(), None, "one-shot: done");
        assert_eq!(at(due), 0);
        assert_eq!(f.rd(REG_TIMER_INITIAL), 1_000_000);
        // Writing 0 stops a running timer.
        f.wr_at(REG_TIMER_INITIAL, 10, f.t0);
        f.wr_at(REG_TIMER_INITIAL, 0, f.t0);
        assert_eq!(f.lapic.next_deadline(), None);
    }

    #[test]
    fn periodic_timer_rearms_and_masked_timer_is_silent() {
        let f = fixture(0);
        f.enable();
        f.wr(REG_TIMER_DIVIDE, 0xb); // Divide by 1.
        f.wr(REG_LVT_TIMER, (1 << 17) | 0x30);
        f.wr_at(REG_TIMER_INITIAL, 1_000_000, f.t0); // 1 ms.
        let ms = Duration::from_millis(1);
        assert_eq!(f.lapic.next_deadline(), Some(f.t0 + ms));
        f.lapic.poll_timers(f.t0 + ms);
        assert_eq!(f.inject(), Some(0x30));
        assert_eq!(f.lapic.next_deadline(), Some(f.t0 + 2 * ms));
        // Missed periods coalesce; the next deadline stays on the grid.
        f.lapic.poll_timers(f.t0 + ms * 5 + ms / 2);
        assert_eq!(f.lapic.next_deadline(), Some(f.t0 + 6 * ms));
        let mut b = [0u8; 4];
        f.lapic.mmio_read_at(REG_TIMER_CURRENT as u64, &mut b, f.t0 + ms * 5 + ms / 4);
        assert_eq!(u32::from_le_bytes(b), 750_000);
        // Masked: it keeps counting, nobody is woken for it, nothing is latched.
        f.wr(REG_EOI, 0);
        assert_eq!(f.inject(), Some(0x30));
        f.wr(REG_EOI, 0);
        f.wr(REG_LVT_TIMER, (1 << 17) | LVT_MASKED | 0x30);
        assert_eq!(f.lapic.next_deadline(), None);
        f.lapic.poll_timers(f.t0 + 10 * ms);
        assert_eq!(f.lapic.lock().pending(), None);
        // A tiny period is clamped.
        f.wr(REG_LVT_TIMER, (1 << 17) | 0x30);
        f.wr_at(REG_TIMER_INITIAL, 1, f.t0);
        assert_eq!(f.lapic.next_deadline(), Some(f.t0 + MIN_PERIODIC_INTERVAL));
        // A mode change disarms.
        f.wr(REG_LVT_TIMER, 0x30);
        assert_eq!(f.lapic.next_deadline(), None);
        assert_eq!(f.rd(REG_TIMER_INITIAL), 0);
    }

    #[test]
    fn divide_configuration_encoding() {
        let expected = [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xa, 128), (0xb, 1)];
        for (tdcr, div) in expected {
            assert_eq!(divisor(tdcr), div, "TDCR {tdcr:#x}");
        }
    }

    #[test]
    fn tsc_deadline_timer() {
        let f = fixture(0);
        f.enable();
        // Not in TSC-deadline mode: the MSR is ignored and reads 0.
        f.lapic.set_tsc_deadline(5_000_000);
        assert_eq!(f.lapic.tsc_deadline(), 0);
        assert_eq!(f.lapic.next_deadline(), None);
        f.wr(REG_LVT_TIMER, (2 << 17) | 0xef);
        // Initial count is ignored in this mode.
        f.wr_at(REG_TIMER_INITIAL, 100, f.t0);
        assert_eq!(f.lapic.next_deadline(), None);
        // The guest TSC was 1e6 at t0 and runs at 2 GHz: 2e6 ticks later is 1 ms later.
        f.lapic.write_msr_at(MSR_IA32_TSC_DEADLINE, 3_000_000, f.t0).unwrap();
        assert_eq!(f.lapic.tsc_deadline(), 3_000_000);
        let due = f.t0 + Duration::from_millis(1);
        assert_eq!(f.lapic.next_deadline(), Some(due));
        f.lapic.poll_timers(due - Duration::from_nanos(1));
        assert_eq!(f.lapic.lock().pending(), None);
        f.lapic.poll_timers(due);
        assert_eq!(f.lapic.lock().pending(), Some(0xef));
        assert_eq!(f.lapic.tsc_deadline(), 0, "fired: the MSR reads 0");
        assert_eq!(f.lapic.next_deadline(), None);
        // A deadline already passed fires at once; 0 disarms.
        f.lapic.acknowledge(0xef);
        f.wr(REG_EOI, 0);
        f.lapic.write_msr_at(MSR_IA32_TSC_DEADLINE, 1, f.t0).unwrap();
        assert_eq!(f.lapic.lock().pending(), Some(0xef));
        f.lapic.write_msr_at(MSR_IA32_TSC_DEADLINE, u64::MAX, f.t0).unwrap();
        f.lapic.write_msr_at(MSR_IA32_TSC_DEADLINE, 0, f.t0).unwrap();
        assert_eq!(f.lapic.next_deadline(), None);
        // Leaving the mode disarms.
        f.lapic.write_msr_at(MSR_IA32_TSC_DEADLINE, 9_000_000, f.t0).unwrap();
        f.wr(REG_LVT_TIMER, 0xef);
        assert_eq!(f.lapic.next_deadline(), None);
        assert_eq!(f.lapic.tsc_deadline(), 0);
    }
}
