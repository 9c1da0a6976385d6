//! The virtio block device (virtio 1.2, 5.2): a raw disk image behind one request queue.
//!
//! Requests are served on a worker thread of the device's own, not on the vCPU thread
//! that writes QueueNotify. A Mac has no ioeventfd: the notify is an MMIO exit the vCPU
//! must finish before it runs the guest again, and a read that misses the host's page
//! cache or a FLUSH that waits for the drive takes milliseconds. Doing that I/O inside
//! the exit would stop the guest for as long (its timer interrupts too), so the exit only
//! wakes the worker, and the guest keeps running while the worker does the I/O, puts the
//! chains in the used ring and raises the interrupt.
pub mod disk;
pub mod request;

use super::{features, ActivateError, Interrupt, VirtioDevice};
use disk::Disk;
use request::{Limits, Request, RequestError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

/// The virtio device ID of a block device (virtio 1.2, 5).
pub const BLOCK_DEVICE_ID: u32 = 2;
/// Requests in flight at once: Linux sizes its queue from this.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Block feature bits (virtio 1.2, 5.2.3).
pub mod block_features {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Data descriptors per request: the queue holds a whole request, header and status
/// take two descriptors (the usual choice, as with Linux's own sizing).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Discard and write-zeroes limits, the same for both: a range may be as long as its
/// u32 sector count allows (hole punching costs the same for any length), and a request
/// may carry a few ranges.
pub const MAX_RANGE_SECTORS: u32 = u32::MAX;
pub const MAX_RANGES: u32 = 16;

/// Configuration-space layout (virtio 1.2, 5.2.4, struct virtio_blk_config).
mod config {
    pub const CAPACITY: usize = 0;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    pub const SIZE: usize = 60;
}

/// The configuration space for `limits`: what the driver reads at 0x100.
pub fn config_space(limits: &Limits) -> [u8; config::SIZE] {
    let mut c = [0u8; config::SIZE];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(config::CAPACITY, &limits.capacity.to_le_bytes());
    put(config::SEG_MAX, &SEG_MAX.to_le_bytes());
    put(config::BLK_SIZE, &(disk::SECTOR_SIZE as u32).to_le_bytes());
    put(config::MAX_DISCARD_SECTORS, &limits.max_discard_sectors.to_le_bytes());
    put(config::MAX_DISCARD_SEG, &limits.max_discard_segments.to_le_bytes());
    // Discards are freed at sector granularity by the host (partial blocks are zeroed).
    put(config::DISCARD_SECTOR_ALIGNMENT, &1u32.to_le_bytes());
    put(config::MAX_WRITE_ZEROES_SECTORS, &limits.max_write_zeroes_sectors.to_le_bytes());
    put(config::MAX_WRITE_ZEROES_SEG, &limits.max_write_zeroes_segments.to_le_bytes());
    // Zeroes are written by punching holes, which also frees the space.
    put(config::WRITE_ZEROES_MAY_UNMAP, &[1]);
    c
}

/// What the vCPU thread tells the worker.
#[derive(Default)]
struct Signal {
    notified: bool,
    stop: bool,
}

#[derive(Default)]
struct Wakeup {
    signal: Mutex<Signal>,
    cond: Condvar,
}

impl Wakeup {
    fn set(&self, change: impl FnOnce(&mut Signal)) {
        change(&mut self.signal.lock().unwrap_or_else(|e| e.into_inner()));
        self.cond.notify_one();
    }

    /// Waits for a notify or a stop; returns false on stop.
    fn wait(&self) -> bool {
        let mut s = self.signal.lock().unwrap_or_else(|e| e.into_inner());
        while !s.notified && !s.stop {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.notified = false;
        !s.stop
    }
}

/// A virtio block device on a disk image.
pub struct Block {
    disk: Arc<Disk>,
    id: Vec<u8>,
    limits: Limits,
    features: u64,
    config: [u8; config::SIZE],
    worker: Option<(Arc<Wakeup>, JoinHandle<()>)>,
}

impl Block {
    /// A block device on `disk`; `id` is its serial (GET_ID), at most 20 bytes used.
    pub fn new(disk: Disk, id: &str) -> Block {
        let limits = Limits {
            capacity: disk.sectors(),
            read_only: disk.read_only(),
            max_discard_sectors: MAX_RANGE_SECTORS,
            max_discard_segments: MAX_RANGES,
            max_write_zeroes_sectors: MAX_RANGE_SECTORS,
            max_write_zeroes_segments: MAX_RANGES,
        };
        let mut features = features::VERSION_1
            | features::RING_EVENT_IDX
            | block_features::SEG_MAX
            | block_features::BLK_SIZE
            | block_features::FLUSH;
        features |= if limits.read_only {
            block_features::RO
        } else {
            block_features::DISCARD | block_features::WRITE_ZEROES
        };
        Block {
            disk: Arc::new(disk),
            id: id.as_bytes().to_vec(),
            config: config_space(&limits),
            limits,
            features,
            worker: None,
        }
    }

    /// The image, for a last flush when hvrun exits.
    pub fn disk(&self) -> Arc<Disk> {
        self.disk.clone()
    }
}

impl VirtioDevice for Block {
    fn device_id(&self) -> u32 {
        BLOCK_DEVICE_ID
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Past the end (or overflowing): zeroes.
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else { return };
        if let Some(bytes) = self.config.get(start..).map(|rest| &rest[..rest.len().min(data.len())]) {
            data[..bytes.len()].copy_from_slice(bytes);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let mut queue = queues.pop().filter(|q| q.ready()).ok_or(ActivateError::BadQueue { index: 0 })?;
        queue.set_event_idx(features & features::RING_EVENT_IDX != 0);
        let wakeup = Arc::new(Wakeup::default());
        let worker = Worker { queue, mem, disk: self.disk.clone(), id: self.id.clone(), limits: self.limits, interrupt };
        let w = wakeup.clone();
        let handle = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || worker.run(&w))
            .map_err(|e| ActivateError::Worker(e.to_string()))?;
        self.worker = Some((wakeup, handle));
        Ok(())
    }

    fn notify(&self, _index: u16) {
        if let Some((wakeup, _)) = &self.worker {
            wakeup.set(|s| s.notified = true);
        }
    }

    fn reset(&mut self) {
        if let Some((wakeup, handle)) = self.worker.take() {
            wakeup.set(|s| s.stop = true);
            // The worker finishes the request it is on, then exits.
            if handle.join().is_err() {
                log::error!("virtio-blk: worker thread panicked");
            }
        }
    }
}

/// The worker: owns the queue from DRIVER_OK to reset.
struct Worker {
    queue: Queue,
    mem: GuestMemoryMmap,
    disk: Arc<Disk>,
    id: Vec<u8>,
    limits: Limits,
    interrupt: Arc<Interrupt>,
}

impl Worker {
    fn run(mut self, wakeup: &Wakeup) {
        // A notify may have come before the worker started waiting: look once first.
        loop {
            if let Err(e) = self.serve() {
                // The rings themselves are unusable (outside RAM, a bogus index): nothing
                // more can be done until the driver resets the device.
                log::warn!("virtio-blk: queue error: {e}; device needs reset");
                self.interrupt.needs_reset();
                while wakeup.wait() {}
                return;
            }
            if !wakeup.wait() {
                return;
            }
        }
    }

    fn serve(&mut self) -> Result<(), virtio_queue::Error> {
        if serve_queue(&mut self.queue, &self.mem, &self.disk, &self.id, &self.limits)? {
            self.interrupt.signal_used_buffer();
        }
        Ok(())
    }
}

/// Serves every request available in `queue`, with the driver's notifications off while
/// doing so (2.7.10). Returns whether the driver wants an interrupt for them (the
/// event-index rules, or always without RING_EVENT_IDX). An error means the rings
/// themselves are unusable.
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    disk: &Disk,
    id: &[u8],
    limits: &Limits,
) -> Result<bool, virtio_queue::Error> {
    let mut served = false;
    loop {
        queue.disable_notification(mem)?;
        // iter() rather than pop_descriptor_chain(): a bogus available index is an error
        // here, not an empty queue that enable_notification() keeps calling non-empty.
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let descriptors: Vec<Descriptor> = chain.collect();
            let complete = descriptors.last().is_some_and(|d| !d.has_next());
            let used = handle_chain(&descriptors, complete, mem, disk, id, limits);
            queue.add_used(mem, head, used)?;
            served = true;
        }
        // Re-enabling returns true if the driver added more meanwhile.
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(served && queue.needs_notification(mem)?)
}

/// Parses, validates and carries out one request; writes its status byte. Returns the
/// used length: the bytes written into the chain (data, then the status byte).
pub fn handle_chain(
    descriptors: &[Descriptor],
    complete: bool,
    mem: &GuestMemoryMmap,
    disk: &Disk,
    id: &[u8],
    limits: &Limits,
) -> u32 {
    let result = Request::parse(descriptors, complete, mem, limits)
        .and_then(|request| request.execute(disk, mem, id).map(|written| (request.status, written)));
    let (status_addr, written, status) = match result {
        Ok((addr, written)) => (addr, written, request::status::OK),
        Err(RequestError::NoStatus) => {
            log::warn!("virtio-blk: request without a status byte dropped");
            return 0;
        }
        Err(e) => {
            log::warn!("virtio-blk: request failed: {e}");
            // parse() found the status byte before anything else could fail.
            let Some(addr) = request::status_address(descriptors, mem) else { return 0 };
            (addr, 0, e.status())
        }
    };
    match mem.write_obj(status, status_addr) {
        Ok(()) => written + 1,
        Err(_) => 0,
    }
}

#[cfg(test)]
pub(crate) mod tests;
