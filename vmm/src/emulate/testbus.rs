//! Test scaffolding: a [`GuestBus`] with a flat RAM array at guest-physical 0 and one
//! recording MMIO region. It exists to feed the emulator; the emulator is what the tests
//! check.

use super::{GuestBus, OutsideRam};

/// Guest RAM size of the fixture: enough for page tables, code, data and a 4 MiB page.
pub const RAM_SIZE: usize = 16 << 20;
/// Where the fixture's MMIO region starts by default and how long it is.
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1_0000;
/// What a read of nothing (neither RAM nor MMIO) returns: all ones, like a real bus.
const UNCLAIMED_BYTE: u8 = 0xff;

/// One MMIO access as the device saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MmioAccess {
    Read { gpa: u64, len: usize },
    Write { gpa: u64, data: Vec<u8> },
}

pub struct TestBus {
    /// RAM at guest-physical 0; the MMIO region, if it overlaps, hides it.
    pub ram: Vec<u8>,
    pub mmio_base: u64,
    /// Backing bytes of the MMIO region: what device reads return ("programmed" values);
    /// device writes land here too so tests can look at them.
    pub mmio: Vec<u8>,
    pub log: Vec<MmioAccess>,
    /// Makes the next N `cmpxchg_ram` calls report a lost race.
    pub fail_cmpxchg: usize,
}

impl TestBus {
    pub fn new() -> Self {
        Self::with_mmio_at(MMIO_BASE)
    }

    /// A bus whose MMIO region starts at `mmio_base` (below 1 MiB for real-mode tests).
    pub fn with_mmio_at(mmio_base: u64) -> Self {
        TestBus {
            ram: vec![0; RAM_SIZE],
            mmio_base,
            mmio: vec![0; MMIO_SIZE as usize],
            log: Vec::new(),
            fail_cmpxchg: 0,
        }
    }

    fn overlaps_mmio(&self, gpa: u64, len: usize) -> bool {
        let end = gpa.saturating_add(len as u64);
        gpa < self.mmio_base.saturating_add(MMIO_SIZE) && end > self.mmio_base
    }

    fn ram_range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        if self.overlaps_mmio(gpa, len) {
            return None;
        }
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.ram.len()).then_some(start..end)
    }

    fn mmio_range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa.checked_sub(self.mmio_base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.mmio.len()).then_some(start..end)
    }

    pub fn put(&mut self, gpa: u64, bytes: &[u8]) {
        let range = self
            .ram_range(gpa, bytes.len())
            .expect("test writes inside RAM");
        self.ram[range].copy_from_slice(bytes);
    }

    pub fn put_u64(&mut self, gpa: u64, value: u64) {
        self.put(gpa, &value.to_le_bytes());
    }

    pub fn put_u32(&mut self, gpa: u64, value: u32) {
        self.put(gpa, &value.to_le_bytes());
    }

    pub fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.ram[self.ram_range(gpa, len).expect("test reads inside RAM")].to_vec()
    }

    pub fn get_u64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.get(gpa, 8).try_into().unwrap())
    }

    pub fn get_u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.get(gpa, 4).try_into().unwrap())
    }

    /// Programs the bytes MMIO reads at `gpa` will return.
    pub fn program_mmio(&mut self, gpa: u64, bytes: &[u8]) {
        let range = self.mmio_range(gpa, bytes.len()).expect("inside MMIO");
        self.mmio[range].copy_from_slice(bytes);
    }

    pub fn mmio_bytes(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.mmio[self.mmio_range(gpa, len).expect("inside MMIO")].to_vec()
    }
}

impl GuestBus for TestBus {
    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutsideRam> {
        let range = self.ram_range(gpa, buf.len()).ok_or(OutsideRam { gpa })?;
        buf.copy_from_slice(&self.ram[range]);
        Ok(())
    }

    fn cmpxchg_ram(&mut self, gpa: u64, old: &[u8], new: &[u8]) -> Result<bool, OutsideRam> {
        assert_eq!(old.len(), new.len());
        assert!(old.len() == 4 || old.len() == 8);
        let range = self.ram_range(gpa, old.len()).ok_or(OutsideRam { gpa })?;
        if self.fail_cmpxchg > 0 {
            self.fail_cmpxchg -= 1;
            return Ok(false);
        }
        if &self.ram[range.clone()] != old {
            return Ok(false);
        }
        self.ram[range].copy_from_slice(new);
        Ok(true)
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        assert!(!buf.is_empty() && buf.len() <= 4096);
        assert_eq!(
            gpa >> 12,
            gpa.wrapping_add(buf.len() as u64 - 1) >> 12,
            "emulator must split page-crossing accesses"
        );
        if let Some(range) = self.ram_range(gpa, buf.len()) {
            buf.copy_from_slice(&self.ram[range]);
        } else if let Some(range) = self.mmio_range(gpa, buf.len()) {
            buf.copy_from_slice(&self.mmio[range]);
            self.log.push(MmioAccess::Read {
                gpa,
                len: buf.len(),
            });
        } else {
            buf.fill(UNCLAIMED_BYTE);
        }
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        assert!(!data.is_empty() && data.len() <= 4096);
        assert_eq!(
            gpa >> 12,
            gpa.wrapping_add(data.len() as u64 - 1) >> 12,
            "emulator must split page-crossing accesses"
        );
        if let Some(range) = self.ram_range(gpa, data.len()) {
            self.ram[range].copy_from_slice(data);
        } else if let Some(range) = self.mmio_range(gpa, data.len()) {
            self.mmio[range].copy_from_slice(data);
            self.log.push(MmioAccess::Write {
                gpa,
                data: data.to_vec(),
            });
        }
    }
}
