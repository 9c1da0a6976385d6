//! The virtio-mmio transport driven by arbitrary register accesses: any offset, width
//! and value, in any order, including DRIVER_OK with whatever queues were set up,
//! notifies, and resets while the device works.
#![no_main]

use devices::bus::BusDevice;
use devices::virtio::block::disk::Disk;
use devices::virtio::block::Block;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::IrqLine;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};

struct NoLine;
impl IrqLine for NoLine {
    fn pulse(&self) {}
}

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("hvrun-fuzz-mmio-{}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; 8 * 512]).unwrap();
    let disk = Disk::open(&path, false).unwrap();
    let _ = std::fs::remove_file(&path);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let transport = MmioTransport::new(Box::new(Block::new(disk, "fuzz")), mem, Arc::new(NoLine));
    // Each access: 2 bytes offset (within the 4 KiB window and a little past), 1 byte
    // width and direction, 4 bytes value.
    for op in data.chunks_exact(7) {
        let offset = u16::from_le_bytes([op[0], op[1]]) as u64 % 0x1010;
        let width = [1usize, 2, 4, 8][(op[2] & 3) as usize];
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[3..7]);
        if op[2] & 4 != 0 {
            transport.write(offset, &value[..width]);
        } else {
            transport.read(offset, &mut value[..width]);
        }
    }
    transport.shutdown();
});
