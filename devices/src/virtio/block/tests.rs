//! The block device fed real descriptor chains in real guest memory, on real image
//! files: well-formed requests do the I/O; every malformed one completes with an error
//! status (or, without a status byte, with nothing written) and leaves the image alone.
use super::disk::Disk;
use super::request::{request_type as t, status, Limits, Request, RequestError};
use super::*;
use std::io::Write;
use std::path::PathBuf;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
/// Guest RAM for the tests: 1 MiB at 0, a hole, 1 MiB at 16 MiB.
const RAM_TOP: u64 = 0x10_0000;
const HIGH_RAM: u64 = 0x100_0000;

const HDR: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x9000;

pub(crate) struct TestDisk {
    pub path: PathBuf,
}

impl TestDisk {
    /// An image of `sectors` sectors, sector n filled with byte n.
    pub fn new(name: &str, sectors: u64) -> TestDisk {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("hvrun-blk-{name}-{}-{n}.img", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        for s in 0..sectors {
            f.write_all(&[s as u8; 512]).unwrap();
        }
        TestDisk { path }
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for TestDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_TOP as usize), (GuestAddress(HIGH_RAM), 0x10_0000)]).unwrap()
}

fn header(mem: &GuestMemoryMmap, at: u64, request_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&request_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
    Descriptor::new(addr, len, flags | NEXT, 0)
}

/// The chain as the queue yields it: NEXT on all but the last.
fn chain(mut descs: Vec<Descriptor>) -> Vec<Descriptor> {
    let last = descs.pop().unwrap();
    descs.push(Descriptor::new(last.addr().0, last.len(), last.flags() & !NEXT, 0));
    descs
}

fn limits(capacity: u64, read_only: bool) -> Limits {
    Limits {
        capacity,
        read_only,
        max_discard_sectors: 64,
        max_discard_segments: 2,
        max_write_zeroes_sectors: 64,
        max_write_zeroes_segments: 2,
    }
}

struct Run {
    used: u32,
    status: u8,
}

fn run(descs: &[Descriptor], disk: &TestDisk, read_only: bool, mem: &GuestMemoryMmap) -> Run {
    let image = Disk::open(&disk.path, read_only).unwrap();
    let l = limits(image.sectors(), read_only);
    mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let used = handle_chain(descs, true, mem, &image, b"SERIAL-7", &l);
    Run { used, status: mem.read_obj(GuestAddress(STATUS)).unwrap() }
}

#[test]
fn read_with_header_data_and_status_split_anyhow() {
    let disk = TestDisk::new("read", 8);
    let mem = memory();
    // Header in two pieces; data across two descriptors (one in high RAM), the second
    // also holding the status byte at its end.
    header(&mem, HDR, t::IN, 2);
    let descs = chain(vec![d(HDR, 10, 0), d(HDR + 10, 6, 0), d(DATA, 512, WRITE), d(HIGH_RAM, 513, WRITE)]);
    mem.write_obj(0xeeu8, GuestAddress(HIGH_RAM + 512)).unwrap();
    let image = Disk::open(&disk.path, false).unwrap();
    let used = handle_chain(&descs, true, &mem, &image, b"", &limits(8, false));
    assert_eq!(used, 1025);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(HIGH_RAM + 512)).unwrap(), status::OK);
    let mut a = [0u8; 512];
    mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
    assert_eq!(a, [2u8; 512]);
    mem.read_slice(&mut a, GuestAddress(HIGH_RAM)).unwrap();
    assert_eq!(a, [3u8; 512]);
}

#[test]
fn write_then_flush_reach_the_file() {
    let disk = TestDisk::new("write", 8);
    let mem = memory();
    header(&mem, HDR, t::OUT, 5);
    mem.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
    // Header and data in one descriptor.
    header(&mem, DATA - 16, t::OUT, 5);
    let descs = chain(vec![d(DATA - 16, 16 + 1024, 0), d(STATUS, 1, WRITE)]);
    let r = run(&descs, &disk, false, &mem);
    assert_eq!((r.status, r.used), (status::OK, 1));
    let bytes = disk.bytes();
    assert!(bytes[5 * 512..7 * 512].iter().all(|&b| b == 0x5a));
    assert!(bytes[4 * 512..5 * 512].iter().all(|&b| b == 4) && bytes[7 * 512..].iter().all(|&b| b == 7));

    header(&mem, HDR, t::FLUSH, 0);
    let r = run(&chain(vec![d(HDR, 16, 0), d(STATUS, 1, WRITE)]), &disk, false, &mem);
    assert_eq!((r.status, r.used), (status::OK, 1));
}

#[test]
fn get_id_pads_the_serial() {
    let disk = TestDisk::new("id", 1);
    let mem = memory();
    header(&mem, HDR, t::GET_ID, 0);
    mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
    let r = run(&chain(vec![d(HDR, 16, 0), d(DATA, 20, WRITE), d(STATUS, 1, WRITE)]), &disk, false, &mem);
    assert_eq!((r.status, r.used), (status::OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"SERIAL-7\0\0\0\0\0\0\0\0\0\0\0\0");
}

fn range(mem: &GuestMemoryMmap, at: u64, sector: u64, sectors: u32, flags: u32) {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&sectors.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&r, GuestAddress(at)).unwrap();
}

#[test]
fn write_zeroes_and_discard_zero_the_ranges() {
    let disk = TestDisk::new("zero", 16);
    let mem = memory();
    header(&mem, HDR, t::WRITE_ZEROES, 0);
    range(&mem, DATA, 1, 2, 1);
    range(&mem, DATA + 16, 9, 1, 0);
    let r = run(&chain(vec![d(HDR, 16, 0), d(DATA, 32, 0), d(STATUS, 1, WRITE)]), &disk, false, &mem);
    assert_eq!(r.status, status::OK);
    header(&mem, HDR, t::DISCARD, 0);
    range(&mem, DATA, 12, 4, 0);
    let r = run(&chain(vec![d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, WRITE)]), &disk, false, &mem);
    assert_eq!(r.status, status::OK);
    let bytes = disk.bytes();
    for s in 0..16u64 {
        let zeroed = matches!(s, 1 | 2 | 9 | 12..=15);
        let expect = if zeroed { 0 } else { s as u8 };
        assert!(bytes[s as usize * 512..(s as usize + 1) * 512].iter().all(|&b| b == expect), "sector {s}");
    }
}

/// A malformed request: its status, and the image untouched.
fn refused(descs: Vec<Descriptor>, read_only: bool, mem: &GuestMemoryMmap, expect: u8) {
    let disk = TestDisk::new("bad", 8);
    let before = disk.bytes();
    let r = run(&chain(descs), &disk, read_only, mem);
    assert_eq!(r.status, expect);
    assert_eq!(r.used, if expect == 0xee { 0 } else { 1 });
    assert_eq!(disk.bytes(), before, "image unchanged");
}

#[test]
fn malformed_requests_get_an_error_status() {
    let mem = memory();
    header(&mem, HDR, t::OUT, 0);
    mem.write_slice(&[0x11; 4096], GuestAddress(DATA)).unwrap();
    let e = status::IOERR;
    // Header too short.
    refused(vec![d(HDR, 15, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    // Data not a whole number of sectors.
    refused(vec![d(HDR, 16, 0), d(DATA, 511, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    // Past the end of the 8-sector disk, and a sector number that overflows.
    header(&mem, HDR, t::OUT, 7);
    refused(vec![d(HDR, 16, 0), d(DATA, 1024, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    header(&mem, HDR, t::OUT, u64::MAX);
    refused(vec![d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    header(&mem, HDR, t::OUT, 0);
    // A write on a read-only disk.
    refused(vec![d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, WRITE)], true, &mem, e);
    // Data outside guest RAM (in the hole, and past the top of the address space).
    refused(vec![d(HDR, 16, 0), d(RAM_TOP, 512, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    refused(vec![d(HDR, 16, 0), d(u64::MAX - 100, 512, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    refused(vec![d(HDR, 16, 0), d(RAM_TOP - 256, 512, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    // A readable descriptor after a writable one.
    refused(vec![d(HDR, 16, 0), d(DATA, 512, WRITE), d(DATA + 512, 512, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    // A write whose data the device would have to write (wrong direction).
    refused(vec![d(HDR, 16, 0), d(DATA, 512, WRITE), d(STATUS, 1, WRITE)], false, &mem, e);
    // A read with device-readable data.
    header(&mem, HDR, t::IN, 0);
    refused(vec![d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, WRITE)], false, &mem, e);
    // An unknown request type: UNSUPP.
    header(&mem, HDR, 99, 0);
    refused(vec![d(HDR, 16, 0), d(STATUS, 1, WRITE)], false, &mem, status::UNSUPP);
}

#[test]
fn malformed_discards_get_an_error_status() {
    let mem = memory();
    header(&mem, HDR, t::DISCARD, 0);
    let descs = || vec![d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, WRITE)];
    // Discard with the unmap flag, or an unknown flag: UNSUPP (virtio 1.2, 5.2.6.2).
    range(&mem, DATA, 0, 1, 1);
    refused(descs(), false, &mem, status::UNSUPP);
    range(&mem, DATA, 0, 1, 4);
    refused(descs(), false, &mem, status::UNSUPP);
    // Past the end; larger than the advertised maximum; on a read-only disk.
    range(&mem, DATA, 7, 2, 0);
    refused(descs(), false, &mem, status::IOERR);
    range(&mem, DATA, 0, 65, 0);
    refused(descs(), false, &mem, status::IOERR);
    range(&mem, DATA, 0, 1, 0);
    refused(descs(), true, &mem, status::IOERR);
    // Three ranges where two are allowed; a partial range; none.
    refused(vec![d(HDR, 16, 0), d(DATA, 48, 0), d(STATUS, 1, WRITE)], false, &mem, status::IOERR);
    refused(vec![d(HDR, 16, 0), d(DATA, 8, 0), d(STATUS, 1, WRITE)], false, &mem, status::IOERR);
    refused(vec![d(HDR, 16, 0), d(STATUS, 1, WRITE)], false, &mem, status::IOERR);
}

#[test]
fn a_chain_without_a_status_byte_writes_nothing() {
    let mem = memory();
    header(&mem, HDR, t::IN, 0);
    // No writable descriptor; a zero-length one; a status byte outside RAM.
    refused(vec![d(HDR, 16, 0)], false, &mem, 0xee);
    refused(vec![d(HDR, 16, 0), d(STATUS, 0, WRITE)], false, &mem, 0xee);
    refused(vec![d(HDR, 16, 0), d(RAM_TOP, 1, WRITE)], false, &mem, 0xee);
}

#[test]
fn a_broken_chain_is_refused_before_any_io() {
    let mem = memory();
    header(&mem, HDR, t::OUT, 0);
    let disk = TestDisk::new("broken", 8);
    let image = Disk::open(&disk.path, false).unwrap();
    let descs = chain(vec![d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, WRITE)]);
    let l = limits(8, false);
    assert_eq!(Request::parse(&descs, false, &mem, &l), Err(RequestError::BrokenChain));
    mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    assert_eq!(handle_chain(&descs, false, &mem, &image, b"", &l), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), status::IOERR);
}

#[test]
fn config_space_layout() {
    let l = Limits {
        capacity: 0x1122_3344_5566,
        read_only: false,
        max_discard_sectors: 7,
        max_discard_segments: 3,
        max_write_zeroes_sectors: 9,
        max_write_zeroes_segments: 4,
    };
    let c = config_space(&l);
    assert_eq!(&c[0..8], &0x1122_3344_5566u64.to_le_bytes());
    assert_eq!(&c[12..16], &254u32.to_le_bytes(), "seg_max");
    assert_eq!(&c[20..24], &512u32.to_le_bytes(), "blk_size");
    assert_eq!(&c[36..48], &[7, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0], "discard limits and alignment");
    assert_eq!(&c[48..57], &[9, 0, 0, 0, 4, 0, 0, 0, 1], "write-zeroes limits, may unmap");
    // Reads past the end are zeroes.
    let disk = TestDisk::new("cfg", 4);
    let block = Block::new(Disk::open(&disk.path, true).unwrap(), "");
    let mut tail = [0xffu8; 8];
    block.read_config(60, &mut tail);
    assert_eq!(tail, [0; 8]);
    block.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 4);
    assert_ne!(block.features() & block_features::RO, 0);
    assert_eq!(block.features() & (block_features::DISCARD | block_features::WRITE_ZEROES), 0);
}

#[test]
fn a_bogus_available_index_is_a_queue_error_not_a_busy_loop() {
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    let mem = memory();
    let disk = TestDisk::new("avail", 8);
    let image = Disk::open(&disk.path, false).unwrap();
    let q = MockSplitQueue::create(&mem, GuestAddress(0x10000), 16);
    let mut queue: Queue = q.create_queue().unwrap();
    header(&mem, HDR, t::IN, 0);
    let descs = [(HDR, 16, 0), (DATA, 512, WRITE), (STATUS, 1, WRITE)]
        .map(|(a, l, f)| RawDescriptor::from(Descriptor::new(a, l, f, 0)));
    q.build_desc_chain(&descs).unwrap();
    assert_eq!(serve_queue(&mut queue, &mem, &image, b"", &limits(8, false)).ok(), Some(true));
    assert_eq!(q.used().idx().load(), 1);
    // The driver claims 100 more requests in a 16-entry ring.
    q.avail().idx().store(101);
    assert!(serve_queue(&mut queue, &mem, &image, b"", &limits(8, false)).is_err());
}

#[test]
fn a_looping_chain_completes_with_an_error() {
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    let mem = memory();
    let disk = TestDisk::new("loop", 8);
    let before = disk.bytes();
    let image = Disk::open(&disk.path, false).unwrap();
    let q = MockSplitQueue::create(&mem, GuestAddress(0x10000), 16);
    let mut queue: Queue = q.create_queue().unwrap();
    header(&mem, HDR, t::OUT, 0);
    // 0 -> 1 -> 2 -> 1 -> 2 ...: the status descriptor points back at the data.
    let descs = [(HDR, 16, NEXT, 1), (DATA, 512, NEXT, 2), (STATUS, 1, WRITE | NEXT, 1)]
        .map(|(a, l, f, n)| RawDescriptor::from(Descriptor::new(a, l, f, n)));
    q.add_desc_chains(&descs, 0).unwrap();
    mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    serve_queue(&mut queue, &mem, &image, b"", &limits(8, false)).unwrap();
    assert_eq!(q.used().idx().load(), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), status::IOERR);
    assert_eq!(disk.bytes(), before);
}
