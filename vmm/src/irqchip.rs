//! The machine's interrupt controller, with one owner: the IOAPIC, the APIC bus that
//! carries its messages and the IPIs, one local APIC per vCPU with the waker that gets
//! that vCPU to look at it, and the one thread that fires every APIC timer.
//!
//! A vCPU asks its part ([`VcpuInterrupts`]) what to inject and sleeps on its waker;
//! devices raise IOAPIC pins; whoever changes what a vCPU should see kicks that vCPU's
//! waker (the kick protocol, `crate::kick`).
use crate::kick::Waker;
use devices::apic_bus::ApicBus;
use devices::apic_timers::ApicTimers;
use devices::ioapic::Ioapic;
use devices::irq::LocalInterrupts;
use devices::lapic::Lapic;
use devices::tsc::GuestTscClock;
use std::sync::Arc;

/// Where one vCPU's interrupts come from.
#[derive(Clone)]
pub enum VcpuInterrupts {
    /// Its local APIC (a machine built by [`IrqChip`]): the page at 0xfee00000, the APIC
    /// MSRs and CR8 all reach it.
    Lapic(Arc<Lapic>),
    /// A simpler controller with no registers the guest can see (test machines).
    Other(Arc<dyn LocalInterrupts>),
}

impl VcpuInterrupts {
    pub fn local(&self) -> &dyn LocalInterrupts {
        match self {
            VcpuInterrupts::Lapic(lapic) => lapic.as_ref(),
            VcpuInterrupts::Other(irq) => irq.as_ref(),
        }
    }

    pub fn lapic(&self) -> Option<&Arc<Lapic>> {
        match self {
            VcpuInterrupts::Lapic(lapic) => Some(lapic),
            VcpuInterrupts::Other(_) => None,
        }
    }
}

pub struct IrqChip {
    ioapic: Arc<Ioapic>,
    /// Kept for the life of the machine: the IOAPIC and the APICs hold it.
    _bus: Arc<ApicBus>,
    lapics: Vec<Arc<Lapic>>,
    wakers: Vec<Arc<Waker>>,
    timers: ApicTimers,
}

impl IrqChip {
    /// `vcpus` local APICs with IDs 0.. (0 is the BSP), in xAPIC mode at power-up, as the
    /// MADT, the MP table and CPUID describe them; their timers count on `tsc`.
    pub fn new(vcpus: u32, tsc: GuestTscClock) -> Self {
        let bus = Arc::new(ApicBus::new());
        let ioapic = Arc::new(Ioapic::new(bus.clone()));
        bus.set_ioapic(&ioapic);
        let timers = ApicTimers::new();
        let mut lapics = Vec::new();
        let mut wakers = Vec::new();
        for id in 0..vcpus {
            let waker = Arc::new(Waker::new());
            let lapic = Lapic::new(id, id == 0, waker.clone(), bus.clone(), tsc).with_timer_signal(timers.signal());
            let lapic = Arc::new(lapic);
            bus.add_lapic(&lapic);
            lapics.push(lapic);
            wakers.push(waker);
        }
        IrqChip { ioapic, _bus: bus, lapics, wakers, timers }
    }

    pub fn ioapic(&self) -> &Arc<Ioapic> {
        &self.ioapic
    }

    pub fn vcpus(&self) -> u32 {
        self.lapics.len() as u32
    }

    /// vCPU `index`'s local APIC.
    pub fn lapic(&self, index: u32) -> &Arc<Lapic> {
        &self.lapics[index as usize]
    }

    /// What wakes vCPU `index` (its APIC kicks it).
    pub fn waker(&self, index: u32) -> &Arc<Waker> {
        &self.wakers[index as usize]
    }

    /// Starts the timer thread.
    pub fn start_timers(&self) -> std::io::Result<()> {
        self.timers.start(self.lapics.clone())
    }

    /// Stops the timer thread and waits for it (after the vCPUs are gone).
    pub fn stop_timers(&self) {
        self.timers.stop();
    }
}
