//! Virtio 1.x devices (OASIS virtio v1.2) on the virtio-mmio transport.
//!
//! [`mmio::MmioTransport`] is the register window the guest driver talks to: status,
//! feature negotiation, queue setup (virtio 1.2, 4.2.2). When the driver sets DRIVER_OK it
//! hands the configured queues to a [`VirtioDevice`], which from then on owns them and
//! raises interrupts through a shared [`Interrupt`].
pub mod block;
pub mod mmio;

use crate::ioapic::Ioapic;
use bitflags::bitflags;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

bitflags! {
    /// The device status field (virtio 1.2, 2.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DeviceStatus: u32 {
        const ACKNOWLEDGE = 1;
        const DRIVER = 2;
        const DRIVER_OK = 4;
        const FEATURES_OK = 8;
        /// Set by the device: the driver broke the protocol and must reset it.
        const DEVICE_NEEDS_RESET = 0x40;
        const FAILED = 0x80;
    }
}

bitflags! {
    /// The interrupt status register's reasons (virtio 1.2, 4.2.2, InterruptStatus).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct InterruptReason: u32 {
        const USED_BUFFER = 1;
        const CONFIG_CHANGE = 2;
    }
}

/// Feature bits common to every device (virtio 1.2, 6). Device-specific bits are below 24.
pub mod features {
    /// Driver and device may use the used-ring `avail_event` / `used_event` fields to
    /// suppress notifications (2.7.10).
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// The modern (1.x) interface; this transport offers nothing else.
    pub const VERSION_1: u64 = 1 << 32;
}

/// An edge-triggered interrupt line: a device raises it once per event.
pub trait IrqLine: Send + Sync {
    fn pulse(&self);
}

/// A pin of the IOAPIC, as described to the guest by the DSDT or `virtio_mmio.device=`.
pub struct IoapicPin {
    pub ioapic: Arc<Ioapic>,
    pub pin: usize,
}

impl IrqLine for IoapicPin {
    fn pulse(&self) {
        self.ioapic.pulse_irq(self.pin);
    }
}

/// State the transport and an active device share: the interrupt status register, the
/// device status (the device sets DEVICE_NEEDS_RESET in it) and the interrupt line.
pub struct Interrupt {
    status: AtomicU32,
    device_status: AtomicU32,
    line: Arc<dyn IrqLine>,
}

impl Interrupt {
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Interrupt { status: AtomicU32::new(0), device_status: AtomicU32::new(0), line }
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_buffer(&self) {
        self.raise(InterruptReason::USED_BUFFER);
    }

    /// The device hit a driver error it cannot continue from (virtio 1.2, 2.1.2): it sets
    /// DEVICE_NEEDS_RESET and, once the driver is running, tells it with a configuration
    /// change interrupt.
    pub fn needs_reset(&self) {
        let old = self.device_status.fetch_or(DeviceStatus::DEVICE_NEEDS_RESET.bits(), Ordering::SeqCst);
        if old & DeviceStatus::DRIVER_OK.bits() != 0 && old & DeviceStatus::DEVICE_NEEDS_RESET.bits() == 0 {
            self.raise(InterruptReason::CONFIG_CHANGE);
        }
    }

    fn raise(&self, reason: InterruptReason) {
        self.status.fetch_or(reason.bits(), Ordering::SeqCst);
        self.line.pulse();
    }

    pub fn status(&self) -> InterruptReason {
        InterruptReason::from_bits_truncate(self.status.load(Ordering::SeqCst))
    }

    fn acknowledge(&self, reasons: u32) {
        self.status.fetch_and(!reasons, Ordering::SeqCst);
    }

    pub fn device_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.device_status.load(Ordering::SeqCst))
    }

    fn add_device_status(&self, bits: DeviceStatus) {
        self.device_status.fetch_or(bits.bits(), Ordering::SeqCst);
    }

    fn clear_device_status(&self) {
        self.device_status.store(0, Ordering::SeqCst);
    }
}

/// Why a device refused the queues the driver set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivateError {
    /// Queue `index` is not ready, or its size or ring addresses are not usable.
    BadQueue { index: usize },
    /// The host could not start the device's worker.
    Worker(String),
}

impl fmt::Display for ActivateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivateError::BadQueue { index } => write!(f, "queue {index} is not ready or its rings are outside guest RAM"),
            ActivateError::Worker(e) => write!(f, "cannot start the device worker: {e}"),
        }
    }
}

impl std::error::Error for ActivateError {}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio 1.2, 5): 2 for a block device.
    fn device_id(&self) -> u32;
    /// Every feature bit the device offers, VERSION_1 included.
    fn features(&self) -> u64;
    /// The largest size of each of the device's queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space (at offset 0x100 of the window).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver set DRIVER_OK: from now on the device owns `queues`, negotiated
    /// `features`, and raises interrupts through `interrupt`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index` (a QueueNotify write, on the vCPU thread).
    fn notify(&self, index: u16);
    /// The driver reset the device: stop using the queues. Returns once no request is in
    /// flight, so that the driver, reading status 0 back, may reuse its buffers.
    fn reset(&mut self);
}
