//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): one 4 KiB register window
//! per device. Registers 0x000..0x100 are 32-bit; the device's configuration space
//! starts at 0x100.
//!
//! Everything here is written by the guest driver, so every write is checked against the
//! protocol: a driver that breaks it gets DEVICE_NEEDS_RESET in the status register, never
//! a host panic.
use super::{features, DeviceStatus, Interrupt, IrqLine, VirtioDevice};
use crate::bus::BusDevice;
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Register offsets (virtio 1.2, table 4.1).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern transport; version 1 is the legacy interface, not offered.
pub const VERSION: u32 = 2;
/// The vendor ID hvrun reports ("hvrn"): drivers do not look at it.
pub const VENDOR: u32 = 0x6e72_7668;
/// Size of the register window.
pub const WINDOW_SIZE: u64 = 0x1000;

struct State {
    device: Box<dyn VirtioDevice>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    /// The queues while the driver sets them up; moved into the device at DRIVER_OK.
    queues: Vec<Queue>,
    active: bool,
}

/// One virtio-mmio device window. Put it on the MMIO bus at its base address.
pub struct MmioTransport {
    state: Mutex<State>,
    interrupt: Arc<Interrupt>,
    mem: GuestMemoryMmap,
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    // Queue::new only fails for a maximum size that is zero, above 32768 or not a power
    // of two: the device's own constants, checked by its tests.
    device.queue_max_sizes().iter().map(|&max| Queue::new(max).expect("device queue size is valid")).collect()
}

/// Writes the `low` or `high` half of a 64-bit value.
fn set_half(value: u64, high: bool, half: u32) -> u64 {
    if high {
        (value & 0xffff_ffff) | (half as u64) << 32
    } else {
        (value & !0xffff_ffff) | half as u64
    }
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, line: Arc<dyn IrqLine>) -> Self {
        let queues = fresh_queues(device.as_ref());
        let state = State {
            device,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            active: false,
        };
        MmioTransport { state: Mutex::new(state), interrupt: Arc::new(Interrupt::new(line)), mem }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's status register, as the driver reads it.
    pub fn status(&self) -> DeviceStatus {
        self.interrupt.device_status()
    }

    /// Stops the device (hvrun is exiting): no request is in flight when this returns.
    pub fn shutdown(&self) {
        let mut s = self.lock();
        if s.active {
            s.device.reset();
            s.active = false;
        }
    }

    fn read_register(&self, s: &State, offset: u64) -> u32 {
        let queue = s.queues.get(s.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => s.device.device_id(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match s.device_features_sel {
                0 => s.device.features() as u32,
                1 => (s.device.features() >> 32) as u32,
                _ => 0,
            },
            // 0 for a queue that does not exist tells the driver so (4.2.3.2).
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| q.max_size() as u32),
            reg::QUEUE_READY => queue.is_some_and(|q| q.ready()) as u32,
            reg::INTERRUPT_STATUS => self.interrupt.status().bits(),
            reg::STATUS => self.interrupt.device_status().bits(),
            // No shared-memory regions: a length of all ones says "no such region".
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            // The configuration space never changes, so its generation never does.
            reg::CONFIG_GENERATION => 0,
            _ => {
                log::debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&self, s: &mut State, offset: u64, value: u32) {
        let status = self.interrupt.device_status();
        // Feature and queue registers may only change between DRIVER and DRIVER_OK, and
        // queue registers only after FEATURES_OK (3.1.1).
        let negotiating = status.contains(DeviceStatus::DRIVER) && !status.contains(DeviceStatus::FEATURES_OK);
        let configuring_queues = status.contains(DeviceStatus::FEATURES_OK) && !status.contains(DeviceStatus::DRIVER_OK);
        match offset {
            reg::DEVICE_FEATURES_SEL => s.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => s.driver_features_sel = value,
            reg::DRIVER_FEATURES if negotiating => match s.driver_features_sel {
                0 => s.driver_features = set_half(s.driver_features, false, value),
                1 => s.driver_features = set_half(s.driver_features, true, value),
                // Bits the device does not have: only zeroes make sense.
                _ if value != 0 => self.protocol_error("features beyond bit 63"),
                _ => {}
            },
            reg::QUEUE_SEL => s.queue_sel = value,
            reg::QUEUE_NUM | reg::QUEUE_READY | reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH if configuring_queues => {
                let Some(queue) = s.queues.get_mut(s.queue_sel as usize) else {
                    return self.protocol_error("setup of a queue that does not exist");
                };
                if offset != reg::QUEUE_READY && queue.ready() {
                    return self.protocol_error("queue changed while ready");
                }
                match offset {
                    reg::QUEUE_NUM => {
                        // A split queue's size is a power of two up to the maximum (2.7).
                        match u16::try_from(value) {
                            Ok(size) if size.is_power_of_two() && size <= queue.max_size() => queue.set_size(size),
                            _ => self.protocol_error("queue size not a power of two up to the maximum"),
                        }
                    }
                    reg::QUEUE_READY => queue.set_ready(value == 1),
                    reg::QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
                    reg::QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
                    reg::QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(value), None),
                    reg::QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(value)),
                    reg::QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(value), None),
                    reg::QUEUE_DEVICE_HIGH => queue.set_used_ring_address(None, Some(value)),
                    _ => log::debug!("virtio-mmio: write to unused queue register {offset:#x}"),
                }
            }
            // Linux's del_vqs disables each queue after the reset that ends a driver's
            // use of the device: turning a queue off is fine in any step before DRIVER_OK.
            reg::QUEUE_READY if value == 0 && !status.contains(DeviceStatus::DRIVER_OK) => {
                if let Some(queue) = s.queues.get_mut(s.queue_sel as usize) {
                    queue.set_ready(false);
                }
            }
            reg::QUEUE_NOTIFY if s.active => {
                // The driver has buffers for a queue. With no ioeventfd on a Mac this
                // arrives as an MMIO exit on the vCPU thread; the device hands it to its
                // worker and returns at once.
                match u16::try_from(value) {
                    Ok(index) if (index as usize) < s.queues.len() => s.device.notify(index),
                    _ => self.protocol_error("notify of a queue that does not exist"),
                }
            }
            // Before DRIVER_OK the queue is not live yet: nothing to do (Linux notifies
            // only live queues, but a notify is only a hint).
            reg::QUEUE_NOTIFY => {}
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            reg::STATUS => self.write_status(s, value),
            reg::SHM_SEL => {}
            reg::DRIVER_FEATURES | reg::QUEUE_NUM | reg::QUEUE_READY | reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH => {
                self.protocol_error("feature or queue register written outside its setup step")
            }
            _ => log::debug!("virtio-mmio: write of {value:#x} to read-only or unknown register {offset:#x}"),
        }
    }

    /// The driver broke the protocol: flag DEVICE_NEEDS_RESET (2.1.2).
    fn protocol_error(&self, what: &str) {
        log::warn!("virtio-mmio: driver error: {what}; device needs reset");
        self.interrupt.needs_reset();
    }

    fn write_status(&self, s: &mut State, value: u32) {
        if value == 0 {
            return self.reset(s);
        }
        let old = self.interrupt.device_status();
        let Some(new) = DeviceStatus::from_bits(value) else {
            return self.protocol_error("unknown status bits");
        };
        // DEVICE_NEEDS_RESET is the device's bit: the driver writes back what it read.
        let new = new - DeviceStatus::DEVICE_NEEDS_RESET;
        // Only a reset clears bits (3.1.1: the driver sets them one step at a time).
        if !new.contains(old - DeviceStatus::DEVICE_NEEDS_RESET) {
            return self.protocol_error("status bits cleared without a reset");
        }
        let mut added = new - old;
        if added.contains(DeviceStatus::FEATURES_OK) {
            let offered = s.device.features();
            // The driver may only take what is offered, and must take VERSION_1 on this
            // transport; otherwise FEATURES_OK stays clear and the driver gives up (3.1.1).
            if s.driver_features & !offered != 0 || s.driver_features & features::VERSION_1 == 0 {
                log::warn!("virtio-mmio: refusing driver features {:#x} (offered {offered:#x})", s.driver_features);
                added -= DeviceStatus::FEATURES_OK;
            }
        }
        // Bits are only ever added here, so a DEVICE_NEEDS_RESET the device's worker sets
        // at the same moment is not lost.
        self.interrupt.add_device_status(added);
        if added.contains(DeviceStatus::DRIVER_OK) {
            if !new.contains(DeviceStatus::FEATURES_OK) {
                return self.protocol_error("DRIVER_OK before FEATURES_OK");
            }
            self.activate(s);
        }
    }

    fn activate(&self, s: &mut State) {
        if self.interrupt.device_status().contains(DeviceStatus::DEVICE_NEEDS_RESET) {
            log::warn!("virtio-mmio: DRIVER_OK after a driver error: the device stays stopped until reset");
            return;
        }
        let queues = std::mem::replace(&mut s.queues, fresh_queues(s.device.as_ref()));
        // A queue the driver did not make ready stays unused; a ready one must fit in
        // guest RAM with a valid size.
        if let Some(index) = queues.iter().position(|q| q.ready() && !q.is_valid(&self.mem)) {
            return self.protocol_error(&format!("queue {index} has a bad size or rings outside guest RAM"));
        }
        match s.device.activate(self.mem.clone(), queues, s.driver_features, self.interrupt.clone()) {
            Ok(()) => s.active = true,
            Err(e) => self.protocol_error(&e.to_string()),
        }
    }

    /// Device reset (status 0, 4.2.2.1): the device stops, every register returns to
    /// its initial value, and the driver sees 0 when it reads the status back.
    fn reset(&self, s: &mut State) {
        if s.active {
            s.device.reset();
            s.active = false;
        }
        s.queues = fresh_queues(s.device.as_ref());
        s.device_features_sel = 0;
        s.driver_features_sel = 0;
        s.driver_features = 0;
        s.queue_sel = 0;
        self.interrupt.acknowledge(u32::MAX);
        self.interrupt.clear_device_status();
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            return self.lock().device.read_config(offset - reg::CONFIG, data);
        }
        // The driver must use 32-bit aligned accesses here (4.2.2.2); others read 0.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!("virtio-mmio: {}-byte read at {offset:#x} ignored", data.len());
            data.fill(0);
            return;
        }
        let value = self.read_register(&self.lock(), offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // No writable configuration field is offered (no CONFIG_WCE): ignore.
            log::debug!("virtio-mmio: write to configuration offset {:#x} ignored", offset - reg::CONFIG);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return self.protocol_error("register write that is not 32 bits wide");
        };
        if !offset.is_multiple_of(4) {
            return self.protocol_error("unaligned register write");
        }
        self.write_register(&mut self.lock(), offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::disk::Disk;
    use crate::virtio::block::tests::{memory, TestDisk};
    use crate::virtio::block::{block_features, Block, QUEUE_SIZE};
    use crate::virtio::InterruptReason;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    #[derive(Default)]
    struct CountPulses(AtomicUsize);
    impl IrqLine for CountPulses {
        fn pulse(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Setup {
        transport: MmioTransport,
        pulses: Arc<CountPulses>,
        mem: GuestMemoryMmap,
        _disk: TestDisk,
    }

    fn setup() -> Setup {
        let disk = TestDisk::new("mmio", 8);
        let mem = memory();
        let pulses = Arc::new(CountPulses::default());
        let block = Block::new(Disk::open(&disk.path, false).unwrap(), "X");
        let transport = MmioTransport::new(Box::new(block), mem.clone(), pulses.clone());
        Setup { transport, pulses, mem, _disk: disk }
    }

    fn r(t: &MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn status(bits: DeviceStatus) -> u32 {
        bits.bits()
    }

    /// The Linux driver's probe up to FEATURES_OK, taking every offered feature.
    fn negotiate(t: &MmioTransport) -> u64 {
        w(t, reg::STATUS, status(DeviceStatus::ACKNOWLEDGE));
        w(t, reg::STATUS, status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER));
        w(t, reg::DEVICE_FEATURES_SEL, 0);
        let low = r(t, reg::DEVICE_FEATURES);
        w(t, reg::DEVICE_FEATURES_SEL, 1);
        let high = r(t, reg::DEVICE_FEATURES);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, low);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, high);
        w(t, reg::STATUS, status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK));
        (high as u64) << 32 | low as u64
    }

    fn set_queue(t: &MmioTransport, q: &MockSplitQueue<GuestMemoryMmap>, size: u32) {
        w(t, reg::QUEUE_SEL, 0);
        assert_eq!(r(t, reg::QUEUE_NUM_MAX), QUEUE_SIZE as u32);
        assert_eq!(r(t, reg::QUEUE_READY), 0);
        w(t, reg::QUEUE_NUM, size);
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, q.desc_table_addr()),
            (reg::QUEUE_DRIVER_LOW, q.avail_addr()),
            (reg::QUEUE_DEVICE_LOW, q.used_addr()),
        ] {
            w(t, low, addr.0 as u32);
            w(t, low + 4, (addr.0 >> 32) as u32);
        }
        w(t, reg::QUEUE_READY, 1);
    }

    const ALL: DeviceStatus = DeviceStatus::ACKNOWLEDGE
        .union(DeviceStatus::DRIVER)
        .union(DeviceStatus::FEATURES_OK)
        .union(DeviceStatus::DRIVER_OK);

    #[test]
    fn identification_and_config_space() {
        let s = setup();
        let t = &s.transport;
        assert_eq!((r(t, reg::MAGIC_VALUE), r(t, reg::VERSION), r(t, reg::DEVICE_ID)), (MAGIC, 2, 2));
        assert_eq!(r(t, reg::CONFIG), 8, "capacity in sectors, low half");
        let mut byte = [0u8; 1];
        t.read(reg::CONFIG, &mut byte);
        assert_eq!(byte, [8], "config space takes byte reads");
        // Registers want 32-bit accesses: others read zero.
        let mut half = [0xffu8; 2];
        t.read(reg::MAGIC_VALUE, &mut half);
        assert_eq!(half, [0, 0]);
        let features = negotiate(t);
        assert_eq!(r(t, reg::STATUS) & status(DeviceStatus::FEATURES_OK), status(DeviceStatus::FEATURES_OK));
        assert_ne!(features & features::VERSION_1, 0);
        assert_ne!(features & block_features::FLUSH, 0);
    }

    #[test]
    fn a_request_goes_through_the_worker_to_the_used_ring_and_an_interrupt() {
        let s = setup();
        let t = &s.transport;
        negotiate(t);
        let q = MockSplitQueue::create(&s.mem, GuestAddress(0x10000), 16);
        set_queue(t, &q, 16);
        w(t, reg::STATUS, status(ALL));
        assert_eq!(t.status(), ALL);

        // A one-sector read of sector 3.
        let mut hdr = [0u8; 16];
        hdr[8] = 3;
        s.mem.write_slice(&hdr, GuestAddress(0x1000)).unwrap();
        let descs = [(0x1000, 16, 0), (0x2000, 512, 2), (0x3000, 1, 2)]
            .map(|(a, l, f)| RawDescriptor::from(Descriptor::new(a, l, f, 0)));
        q.build_desc_chain(&descs).unwrap();
        w(t, reg::QUEUE_NOTIFY, 0);

        let deadline = Instant::now() + Duration::from_secs(10);
        while q.used().idx().load() != 1 {
            assert!(Instant::now() < deadline, "the worker never completed the request");
            std::thread::sleep(Duration::from_millis(1));
        }
        let elem = q.used().ring().ref_at(0).unwrap().load();
        assert_eq!((elem.id(), elem.len()), (0, 513));
        assert_eq!(s.mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0);
        let mut data = [0u8; 512];
        s.mem.read_slice(&mut data, GuestAddress(0x2000)).unwrap();
        assert_eq!(data, [3u8; 512]);
        while s.pulses.0.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no interrupt");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(r(t, reg::INTERRUPT_STATUS), InterruptReason::USED_BUFFER.bits());
        w(t, reg::INTERRUPT_ACK, InterruptReason::USED_BUFFER.bits());
        assert_eq!(r(t, reg::INTERRUPT_STATUS), 0);

        // Reset: the worker stops, every register is back to its initial value. Then, as
        // Linux's del_vqs does, the driver turns the queue off: no driver error.
        w(t, reg::STATUS, 0);
        assert_eq!(r(t, reg::STATUS), 0);
        assert_eq!(r(t, reg::QUEUE_READY), 0);
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_READY, 0);
        assert_eq!(r(t, reg::STATUS), 0);
        // A notify after the reset does nothing (and does not crash).
        w(t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(q.used().idx().load(), 1);
    }

    fn needs_reset(t: &MmioTransport) -> bool {
        t.status().contains(DeviceStatus::DEVICE_NEEDS_RESET)
    }

    #[test]
    fn protocol_errors_set_needs_reset_and_a_reset_clears_it() {
        let s = setup();
        let t = &s.transport;
        let q = MockSplitQueue::create(&s.mem, GuestAddress(0x10000), 16);
        type Steps<'a> = Box<dyn Fn(&MmioTransport) + 'a>;
        let cases: Vec<(&str, Steps)> = vec![
            ("queue setup before FEATURES_OK", Box::new(|t| w(t, reg::QUEUE_NUM, 16))),
            (
                "status bit cleared",
                Box::new(|t| {
                    negotiate(t);
                    w(t, reg::STATUS, status(DeviceStatus::ACKNOWLEDGE));
                }),
            ),
            (
                "DRIVER_OK before FEATURES_OK",
                Box::new(|t| w(t, reg::STATUS, status(DeviceStatus::DRIVER | DeviceStatus::DRIVER_OK))),
            ),
            (
                "queue size not a power of two",
                Box::new(|t| {
                    negotiate(t);
                    set_queue(t, &q, 12);
                    w(t, reg::STATUS, status(ALL));
                }),
            ),
            (
                "used ring outside guest RAM",
                Box::new(|t| {
                    negotiate(t);
                    set_queue(t, &q, 16);
                    w(t, reg::QUEUE_READY, 0);
                    w(t, reg::QUEUE_DEVICE_LOW, 0x20_0000);
                    w(t, reg::QUEUE_READY, 1);
                    w(t, reg::STATUS, status(ALL));
                }),
            ),
            (
                "queue changed while ready",
                Box::new(|t| {
                    negotiate(t);
                    set_queue(t, &q, 16);
                    w(t, reg::QUEUE_NUM, 8);
                }),
            ),
            (
                "notify of a queue that does not exist",
                Box::new(|t| {
                    negotiate(t);
                    set_queue(t, &q, 16);
                    w(t, reg::STATUS, status(ALL));
                    w(t, reg::QUEUE_NOTIFY, 0x1_0000);
                }),
            ),
            ("16-bit register write", Box::new(|t| t.write(reg::STATUS, &[1, 0]))),
            ("unknown status bit", Box::new(|t| w(t, reg::STATUS, 0x10))),
        ];
        for (what, steps) in cases {
            steps(t);
            assert!(needs_reset(t), "{what}");
            w(t, reg::STATUS, 0);
            assert_eq!(r(t, reg::STATUS), 0, "{what}: reset");
        }
    }

    #[test]
    fn features_without_version_1_or_not_offered_are_refused() {
        let s = setup();
        let t = &s.transport;
        for (sel, value) in [(1, 0), (0, 1 << 28)] {
            negotiate(t);
            w(t, reg::STATUS, 0);
            w(t, reg::STATUS, status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER));
            w(t, reg::DRIVER_FEATURES_SEL, 1);
            w(t, reg::DRIVER_FEATURES, 1);
            w(t, reg::DRIVER_FEATURES_SEL, sel);
            w(t, reg::DRIVER_FEATURES, value);
            w(t, reg::STATUS, status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK));
            assert!(!t.status().contains(DeviceStatus::FEATURES_OK), "sel {sel} value {value:#x}");
            w(t, reg::STATUS, 0);
        }
    }

    #[test]
    fn any_access_anywhere_in_the_window_is_survived() {
        let s = setup();
        let t = &s.transport;
        negotiate(t);
        for offset in 0..WINDOW_SIZE + 8 {
            for len in [1usize, 2, 4, 8] {
                let mut buf = [0u8; 8];
                t.read(offset, &mut buf[..len]);
                if offset != reg::STATUS && offset != reg::QUEUE_NOTIFY {
                    t.write(offset, &[0xff; 8][..len]);
                }
            }
        }
        w(t, reg::STATUS, 0);
        assert_eq!(r(t, reg::STATUS), 0);
    }
}
