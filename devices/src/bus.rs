//! Address-range buses: the port-I/O bus and the MMIO bus route a guest access to the
//! device that owns the address, with the offset into that device's range.
//!
//! Devices take `&self` and keep their own lock, because every vCPU thread dispatches
//! through the same bus.
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A device on a bus. `offset` is relative to the start of the range it was inserted at;
/// `data.len()` is the access size (1, 2, 4 or 8 bytes).
/// The value of a bus write of 1 to 8 bytes, little-endian (x86 order); bytes past the
/// eighth are ignored.
pub fn le_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

pub trait BusDevice: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    BadRange { base: u64, len: u64 },
    /// The range overlaps one already on the bus.
    Overlap { base: u64, len: u64 },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::BadRange { base, len } => write!(f, "bad bus range {base:#x}+{len:#x}"),
            BusError::Overlap { base, len } => write!(f, "bus range {base:#x}+{len:#x} overlaps another device"),
        }
    }
}

impl std::error::Error for BusError {}

struct Entry {
    len: u64,
    device: Arc<dyn BusDevice>,
}

/// A set of non-overlapping ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `device` the addresses `base..base + len`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<dyn BusDevice>) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base, len })?;
        let overlaps_below = self.ranges.range(..end).next_back().is_some_and(|(b, e)| b + e.len > base);
        if overlaps_below {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device owning `addr` and the offset of `addr` in its range.
    pub fn resolve(&self, addr: u64) -> Option<(&Arc<dyn BusDevice>, u64)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((&entry.device, offset))
    }

    /// Reads from the device at `addr`. Nothing there: the bus floats, all ones, as on a PC.
    /// Returns whether a device answered.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                device.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; a write to nothing is dropped. Returns whether a
    /// device took it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_value_of_narrow_and_wide_writes() {
        assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
        assert_eq!(le_value(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), 0x0807_0605_0403_0201);
        assert_eq!(le_value(&[]), 0);
    }
    use std::sync::Mutex;

    /// Remembers the last write and answers reads with its offset.
    #[derive(Default)]
    struct Latch(Mutex<Vec<(u64, Vec<u8>)>>);

    impl BusDevice for Latch {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = Bus::new();
        let a = Arc::new(Latch::default());
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        let mut byte = [0u8];
        assert!(bus.read(0x3fd, &mut byte));
        assert_eq!(byte, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(a.0.lock().unwrap()[0], (0, vec![b'x']));
        // Just past the end: nobody there, reads float high.
        assert!(!bus.read(0x400, &mut byte));
        assert_eq!(byte, [0xff]);
        assert!(!bus.write(0x3f7, &[0]));
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let d = Arc::new(Latch::default());
        bus.insert(0x1000, 0x1000, d.clone()).unwrap();
        assert_eq!(bus.insert(0x1fff, 1, d.clone()), Err(BusError::Overlap { base: 0x1fff, len: 1 }));
        assert_eq!(bus.insert(0x800, 0x801, d.clone()), Err(BusError::Overlap { base: 0x800, len: 0x801 }));
        assert!(bus.insert(0x800, 0x800, d.clone()).is_ok());
        assert!(bus.insert(0x2000, 0x10, d.clone()).is_ok());
        assert_eq!(bus.insert(5, 0, d.clone()), Err(BusError::BadRange { base: 5, len: 0 }));
        assert_eq!(bus.insert(u64::MAX, 2, d), Err(BusError::BadRange { base: u64::MAX, len: 2 }));
    }
}
