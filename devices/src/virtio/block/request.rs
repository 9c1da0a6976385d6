//! Block requests (virtio 1.2, 5.2.6): parsing a descriptor chain into a request,
//! validating it, and carrying it out on a [`Disk`].
//!
//! A request is a header the device reads (type, reserved, sector: 16 bytes), then data
//! (read by the device for writes, written for reads), then one status byte the device
//! writes. The driver may split or merge these across descriptors as it likes (the
//! layout is free with VERSION_1, 2.7.4), so everything here works on byte offsets in
//! the chain's readable part and writable part, never on descriptor positions.
//!
//! All of it is guest-controlled: every length, address and sector is checked before
//! anything is read or written, and a bad request completes with an error status.
use super::disk::{Disk, SECTOR_SIZE};
use std::fmt;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Request types (virtio 1.2, 5.2.6).
pub mod request_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values (virtio 1.2, 5.2.6).
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Size of the request header, and of one discard / write-zeroes segment.
pub const HEADER_SIZE: u32 = 16;
pub const RANGE_SIZE: u32 = 16;
/// GET_ID answers with at most this many bytes (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
/// The `unmap` flag of a discard / write-zeroes segment.
const RANGE_FLAG_UNMAP: u32 = 1;

/// Limits the device advertises in its configuration space and enforces here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Disk capacity in 512-byte sectors.
    pub capacity: u64,
    pub read_only: bool,
    pub max_discard_sectors: u32,
    pub max_discard_segments: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_segments: u32,
}

/// A run of guest-physical bytes, already checked to be in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// One discard or write-zeroes range, in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRange {
    pub sector: u64,
    pub sectors: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `data` bytes from the disk at `sector` into guest memory.
    In { sector: u64, data: Vec<Segment> },
    /// Write guest memory `data` to the disk at `sector`.
    Out { sector: u64, data: Vec<Segment> },
    Flush,
    /// Write the disk's serial into `data`.
    GetId { data: Vec<Segment> },
    Discard(Vec<SectorRange>),
    WriteZeroes(Vec<SectorRange>),
}

/// A validated request and where its status byte goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub status: GuestAddress,
}

/// What is wrong with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The chain has no writable byte in guest RAM for the status: the request cannot
    /// even be answered.
    NoStatus,
    /// The chain loops, is longer than the queue, or a descriptor could not be read.
    BrokenChain,
    /// A device-readable descriptor follows a device-writable one (2.7.4.2).
    ReadableAfterWritable,
    /// A descriptor points outside guest RAM.
    OutsideRam { addr: u64, len: u32 },
    HeaderTooShort { readable: u64 },
    /// Data the device would read for a request that only has it write, or vice versa.
    WrongDirection,
    /// Data length not a whole number of sectors (or of ranges).
    Unaligned { len: u64 },
    /// Sectors past the end of the disk.
    OutOfRange { sector: u64, sectors: u64, capacity: u64 },
    /// A write, discard or write-zeroes on a read-only disk.
    ReadOnly,
    TooManySegments { count: u64, max: u32 },
    /// A range larger than the advertised maximum.
    RangeTooLarge { sectors: u32, max: u32 },
    /// A request type or flag the device does not implement (status UNSUPP).
    Unsupported { request_type: u32, flags: u32 },
    /// The host could not do the I/O.
    Io(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::NoStatus => write!(f, "no writable status byte in guest RAM"),
            RequestError::BrokenChain => write!(f, "descriptor chain loops, is too long or cannot be read"),
            RequestError::ReadableAfterWritable => write!(f, "device-readable descriptor after a device-writable one"),
            RequestError::OutsideRam { addr, len } => write!(f, "descriptor {addr:#x}+{len:#x} is outside guest RAM"),
            RequestError::HeaderTooShort { readable } => write!(f, "only {readable} readable bytes for the 16-byte header"),
            RequestError::WrongDirection => write!(f, "data buffers in the wrong direction for the request type"),
            RequestError::Unaligned { len } => write!(f, "data length {len} is not a whole number of units"),
            RequestError::OutOfRange { sector, sectors, capacity } => {
                write!(f, "sectors {sector}+{sectors} beyond the disk's {capacity}")
            }
            RequestError::ReadOnly => write!(f, "write to a read-only disk"),
            RequestError::TooManySegments { count, max } => write!(f, "{count} ranges, at most {max} allowed"),
            RequestError::RangeTooLarge { sectors, max } => write!(f, "range of {sectors} sectors, at most {max} allowed"),
            RequestError::Unsupported { request_type, flags } => {
                write!(f, "unsupported request type {request_type} (flags {flags:#x})")
            }
            RequestError::Io(e) => write!(f, "host I/O error: {e}"),
        }
    }
}

impl std::error::Error for RequestError {}

impl RequestError {
    /// The status byte that reports this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported { .. } => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// The first `len` bytes of `segments`, and the rest.
fn split_segments(segments: &[Segment], mut len: u64) -> (Vec<Segment>, Vec<Segment>) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    for s in segments {
        if len >= s.len as u64 {
            head.push(*s);
            len -= s.len as u64;
        } else if len > 0 {
            head.push(Segment { addr: s.addr, len: len as u32 });
            tail.push(Segment { addr: GuestAddress(s.addr.0 + len), len: s.len - len as u32 });
            len = 0;
        } else {
            tail.push(*s);
        }
    }
    head.retain(|s| s.len > 0);
    tail.retain(|s| s.len > 0);
    (head, tail)
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len as u64).sum()
}

/// Reads exactly `buf.len()` bytes from the start of `segments`.
fn gather(mem: &GuestMemoryMmap, segments: &[Segment], buf: &mut [u8]) -> Result<(), RequestError> {
    let mut done = 0;
    for s in segments {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(s.len as usize);
        mem.read_slice(&mut buf[done..done + n], s.addr).map_err(|e| RequestError::Io(e.to_string()))?;
        done += n;
    }
    Ok(())
}

/// Writes `bytes` to the start of `segments`; returns how many fitted.
fn scatter(mem: &GuestMemoryMmap, segments: &[Segment], bytes: &[u8]) -> Result<usize, RequestError> {
    let mut done = 0;
    for s in segments {
        if done == bytes.len() {
            break;
        }
        let n = (bytes.len() - done).min(s.len as usize);
        mem.write_slice(&bytes[done..done + n], s.addr).map_err(|e| RequestError::Io(e.to_string()))?;
        done += n;
    }
    Ok(done)
}

/// The host addresses of `segments` (a segment may span two RAM regions).
fn host_buffers(mem: &GuestMemoryMmap, segments: &[Segment]) -> Result<Vec<(*mut u8, usize)>, RequestError> {
    let mut bufs = Vec::with_capacity(segments.len());
    for s in segments {
        for slice in mem.get_slices(s.addr, s.len as usize) {
            let slice = slice.map_err(|e| RequestError::Io(e.to_string()))?;
            bufs.push((slice.ptr_guard_mut().as_ptr(), slice.len()));
        }
    }
    Ok(bufs)
}

/// Checks that `sectors` sectors at `sector` lie on a disk of `capacity` sectors.
fn check_range(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfRange { sector, sectors, capacity }),
    }
}

/// Where the status byte of a chain goes: the last byte of its writable part. `None` if
/// there is no such byte in guest RAM. Used to answer even a request that fails parsing.
pub fn status_address(descriptors: &[Descriptor], mem: &GuestMemoryMmap) -> Option<GuestAddress> {
    let last = descriptors.iter().rev().find(|d| d.is_write_only() && d.len() > 0)?;
    let addr = last.addr().0.checked_add(last.len() as u64 - 1)?;
    mem.check_range(GuestAddress(addr), 1).then_some(GuestAddress(addr))
}

impl Request {
    /// Parses and validates the chain `descriptors` (in chain order). `complete` is false
    /// when the chain was cut short (it loops, is too long, or a descriptor could not be
    /// read).
    pub fn parse(
        descriptors: &[Descriptor],
        complete: bool,
        mem: &GuestMemoryMmap,
        limits: &Limits,
    ) -> Result<Request, RequestError> {
        let status = status_address(descriptors, mem).ok_or(RequestError::NoStatus)?;
        if !complete {
            return Err(RequestError::BrokenChain);
        }
        let (mut readable, mut writable) = (Vec::new(), Vec::new());
        for d in descriptors {
            if !mem.check_range(d.addr(), d.len() as usize) {
                return Err(RequestError::OutsideRam { addr: d.addr().0, len: d.len() });
            }
            let segment = Segment { addr: d.addr(), len: d.len() };
            if d.is_write_only() {
                writable.push(segment);
            } else if !writable.is_empty() {
                return Err(RequestError::ReadableAfterWritable);
            } else {
                readable.push(segment);
            }
        }
        let readable_len = total(&readable);
        if readable_len < HEADER_SIZE as u64 {
            return Err(RequestError::HeaderTooShort { readable: readable_len });
        }
        let (header_segments, read_data) = split_segments(&readable, HEADER_SIZE as u64);
        // The status byte is the last writable byte; what comes before it is data.
        let (write_data, _status) = split_segments(&writable, total(&writable) - 1);
        let mut header = [0u8; HEADER_SIZE as usize];
        gather(mem, &header_segments, &mut header)?;
        let request_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());

        let kind = match request_type {
            request_type::IN | request_type::OUT => {
                let (data, wrong) = if request_type == request_type::IN {
                    (write_data, read_data)
                } else {
                    (read_data, write_data)
                };
                if !wrong.is_empty() {
                    return Err(RequestError::WrongDirection);
                }
                let len = total(&data);
                if !len.is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::Unaligned { len });
                }
                check_range(sector, len / SECTOR_SIZE, limits.capacity)?;
                if request_type == request_type::IN {
                    RequestKind::In { sector, data }
                } else if limits.read_only {
                    return Err(RequestError::ReadOnly);
                } else {
                    RequestKind::Out { sector, data }
                }
            }
            request_type::FLUSH => RequestKind::Flush,
            request_type::GET_ID => {
                if !read_data.is_empty() || write_data.is_empty() {
                    return Err(RequestError::WrongDirection);
                }
                RequestKind::GetId { data: write_data }
            }
            request_type::DISCARD | request_type::WRITE_ZEROES => {
                let discard = request_type == request_type::DISCARD;
                if !write_data.is_empty() {
                    return Err(RequestError::WrongDirection);
                }
                let len = total(&read_data);
                if len == 0 || !len.is_multiple_of(RANGE_SIZE as u64) {
                    return Err(RequestError::Unaligned { len });
                }
                let (max_segments, max_sectors) = if discard {
                    (limits.max_discard_segments, limits.max_discard_sectors)
                } else {
                    (limits.max_write_zeroes_segments, limits.max_write_zeroes_sectors)
                };
                let count = len / RANGE_SIZE as u64;
                if count > max_segments as u64 {
                    return Err(RequestError::TooManySegments { count, max: max_segments });
                }
                if limits.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let mut bytes = vec![0u8; len as usize];
                gather(mem, &read_data, &mut bytes)?;
                let mut ranges = Vec::with_capacity(count as usize);
                for raw in bytes.chunks_exact(RANGE_SIZE as usize) {
                    let range = SectorRange {
                        sector: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
                        sectors: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
                    };
                    let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap());
                    // Discard must not ask for unmap, and no other flag exists (5.2.6.2).
                    let allowed = if discard { 0 } else { RANGE_FLAG_UNMAP };
                    if flags & !allowed != 0 {
                        return Err(RequestError::Unsupported { request_type, flags });
                    }
                    if range.sectors > max_sectors {
                        return Err(RequestError::RangeTooLarge { sectors: range.sectors, max: max_sectors });
                    }
                    check_range(range.sector, range.sectors as u64, limits.capacity)?;
                    ranges.push(range);
                }
                if discard {
                    RequestKind::Discard(ranges)
                } else {
                    RequestKind::WriteZeroes(ranges)
                }
            }
            _ => return Err(RequestError::Unsupported { request_type, flags: 0 }),
        };
        Ok(Request { kind, status })
    }

    /// Carries the request out. Returns how many bytes the device wrote into the chain's
    /// writable buffers before the status byte (the used length is that plus one).
    pub fn execute(&self, disk: &Disk, mem: &GuestMemoryMmap, id: &[u8]) -> Result<u32, RequestError> {
        let io = |e: std::io::Error| RequestError::Io(e.to_string());
        match &self.kind {
            RequestKind::In { sector, data } => {
                let bufs = host_buffers(mem, data)?;
                // SAFETY: the buffers are guest RAM, mapped for as long as `mem` (which
                // the worker holds) lives.
                unsafe { disk.read_vectored_at(sector * SECTOR_SIZE, &bufs).map_err(io)? };
                Ok(total(data) as u32)
            }
            RequestKind::Out { sector, data } => {
                let bufs = host_buffers(mem, data)?;
                // SAFETY: as above.
                unsafe { disk.write_vectored_at(sector * SECTOR_SIZE, &bufs).map_err(io)? };
                Ok(0)
            }
            RequestKind::Flush => disk.flush().map(|_| 0).map_err(io),
            RequestKind::GetId { data } => {
                // Shorter IDs are NUL-padded; a 20-byte ID has no terminator (5.2.6).
                let mut bytes = [0u8; ID_BYTES];
                let n = id.len().min(ID_BYTES);
                bytes[..n].copy_from_slice(&id[..n]);
                Ok(scatter(mem, data, &bytes)? as u32)
            }
            RequestKind::Discard(ranges) => {
                for r in ranges {
                    match disk.punch_hole(r.sector * SECTOR_SIZE, r.sectors as u64 * SECTOR_SIZE) {
                        // Discard is a hint: a host that cannot free space keeps the data.
                        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
                        other => other.map_err(io)?,
                    }
                }
                Ok(0)
            }
            RequestKind::WriteZeroes(ranges) => {
                for r in ranges {
                    disk.write_zeroes(r.sector * SECTOR_SIZE, r.sectors as u64 * SECTOR_SIZE).map_err(io)?;
                }
                Ok(0)
            }
        }
    }
}
