//! The block device's queue handling and request parsing on guest memory the fuzzer
//! writes: descriptor table, available ring, headers, data and ring indexes are all
//! fuzzer bytes, as they are guest bytes in a VM. The disk is a real file.
#![no_main]

use devices::virtio::block::disk::Disk;
use devices::virtio::block::request::Limits;
use devices::virtio::block::serve_queue;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Two RAM regions with a hole between them, so that buffers can straddle or miss RAM.
const LOW: (u64, usize) = (0, 0x1_0000);
const HIGH: (u64, usize) = (0x2_0000, 0x1_0000);
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const SECTORS: u64 = 64;

fn disk() -> &'static Disk {
    static DISK: OnceLock<Disk> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("hvrun-fuzz-{}.img", std::process::id()));
        std::fs::write(&path, vec![0x5a; (SECTORS * 512) as usize]).unwrap();
        let disk = Disk::open(&path, false).unwrap();
        let _ = std::fs::remove_file(&path);
        disk
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, memory)) = data.split_first() else { return };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(LOW.0), LOW.1), (GuestAddress(HIGH.0), HIGH.1)]).unwrap();
    let n = memory.len().min(LOW.1);
    mem.write_slice(&memory[..n], GuestAddress(0)).unwrap();
    if memory.len() > n {
        let rest = &memory[n..];
        mem.write_slice(&rest[..rest.len().min(HIGH.1)], GuestAddress(HIGH.0)).unwrap();
    }

    let mut queue = Queue::new(256).unwrap();
    queue.set_size(1 << (control & 7));
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_event_idx(control & 8 != 0);
    queue.set_ready(true);
    let limits = Limits {
        capacity: SECTORS,
        read_only: control & 16 != 0,
        max_discard_sectors: 32,
        max_discard_segments: 4,
        max_write_zeroes_sectors: 32,
        max_write_zeroes_segments: 4,
    };
    // Twice: the second pass starts from where the first left the indexes.
    for _ in 0..2 {
        if serve_queue(&mut queue, &mem, disk(), b"fuzz", &limits).is_err() {
            break;
        }
    }
});
