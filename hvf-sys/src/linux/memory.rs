//! Guest-physical memory: `hv_vm_map/unmap/protect` as KVM memory slots, and the table
//! of mappings the layer reads guest code through.
//!
//! HVF maps, unmaps and protects arbitrary page-aligned ranges; a KVM slot can only be
//! created or deleted whole. So every operation deletes the slots it overlaps and
//! re-creates the parts that remain (SDM-independent; KVM API "KVM_SET_USER_MEMORY_REGION").
use crate::error::*;
use crate::types::*;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;

pub const PAGE_SIZE: u64 = 4096;

/// One guest-physical range backed by host memory, in one KVM slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub gpa: u64,
    pub size: u64,
    pub host: u64,
    pub flags: hv_memory_flags_t,
    pub slot: u32,
}

impl Mapping {
    fn end(&self) -> u64 {
        self.gpa + self.size
    }
}

/// All mappings of the VM, sorted by address, and the KVM slot numbers in use.
#[derive(Default)]
pub struct MemoryMap {
    maps: Vec<Mapping>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

fn aligned(value: u64) -> bool {
    value.is_multiple_of(PAGE_SIZE)
}

/// Checks the page alignment HVF requires of addresses and sizes.
pub fn check_range(gpa: u64, size: u64) -> Result<(), hv_return_t> {
    if size == 0 || !aligned(gpa) || !aligned(size) || gpa.checked_add(size).is_none() {
        log::debug!("hvf-sys/linux: guest range {gpa:#x}+{size:#x} not page-aligned or empty");
        return Err(HV_BAD_ARGUMENT);
    }
    Ok(())
}

impl MemoryMap {
    fn alloc_slot(&mut self) -> u32 {
        self.free_slots.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }

    fn set_slot(vm: &VmFd, m: &Mapping, size: u64) -> Result<(), hv_return_t> {
        let region = kvm_userspace_memory_region {
            slot: m.slot,
            // Without WRITE the slot is read-only: guest writes become MMIO exits, which
            // the layer presents as EPT violations (write to a readable page), like HVF.
            flags: if m.flags & HV_MEMORY_WRITE == 0 { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: m.gpa,
            memory_size: size,
            userspace_addr: m.host,
        };
        // SAFETY: the host range was handed to hv_vm_map by the VMM, which promises (as
        // on macOS) that it stays mapped while the guest mapping exists.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| super::errors::ioctl_failed(&format!("KVM_SET_USER_MEMORY_REGION slot {} gpa {:#x}", m.slot, m.gpa), &e))
    }

    fn add(&mut self, vm: &VmFd, gpa: u64, size: u64, host: u64, flags: hv_memory_flags_t) -> Result<(), hv_return_t> {
        let slot = self.alloc_slot();
        let m = Mapping { gpa, size, host, flags, slot };
        if let Err(e) = Self::set_slot(vm, &m, size) {
            self.free_slots.push(slot);
            return Err(e);
        }
        let at = self.maps.partition_point(|x| x.gpa < gpa);
        self.maps.insert(at, m);
        Ok(())
    }

    /// hv_vm_map: a new range, which must not overlap an existing one.
    pub fn map(&mut self, vm: &VmFd, host: u64, gpa: u64, size: u64, flags: hv_memory_flags_t) -> Result<(), hv_return_t> {
        check_range(gpa, size)?;
        if !aligned(host) || host == 0 {
            log::debug!("hvf-sys/linux: hv_vm_map host address {host:#x} not page-aligned");
            return Err(HV_BAD_ARGUMENT);
        }
        if flags & HV_MEMORY_READ == 0 {
            // KVM cannot map memory the guest may not read: say so instead of pretending.
            log::error!("hvf-sys/linux: hv_vm_map without HV_MEMORY_READ is not supported on KVM");
            return Err(HV_UNSUPPORTED);
        }
        if self.maps.iter().any(|m| m.gpa < gpa + size && gpa < m.end()) {
            log::debug!("hvf-sys/linux: hv_vm_map {gpa:#x}+{size:#x} overlaps an existing mapping");
            return Err(HV_BAD_ARGUMENT);
        }
        self.add(vm, gpa, size, host, flags)
    }

    /// Removes [gpa, gpa+size) from every mapping, re-creating what remains on either
    /// side; `replace` then decides what goes into the hole (for hv_vm_protect).
    fn carve(&mut self, vm: &VmFd, gpa: u64, size: u64, new_flags: Option<hv_memory_flags_t>) -> Result<(), hv_return_t> {
        let end = gpa + size;
        let hit: Vec<Mapping> = self.maps.iter().copied().filter(|m| m.gpa < end && gpa < m.end()).collect();
        for m in hit {
            // Delete the slot (size 0), then re-add the pieces.
            Self::set_slot(vm, &m, 0)?;
            self.maps.retain(|x| x.slot != m.slot);
            self.free_slots.push(m.slot);
            if m.gpa < gpa {
                self.add(vm, m.gpa, gpa - m.gpa, m.host, m.flags)?;
            }
            if let Some(flags) = new_flags {
                let lo = m.gpa.max(gpa);
                let hi = m.end().min(end);
                self.add(vm, lo, hi - lo, m.host + (lo - m.gpa), flags)?;
            }
            if m.end() > end {
                self.add(vm, end, m.end() - end, m.host + (end - m.gpa), m.flags)?;
            }
        }
        Ok(())
    }

    /// hv_vm_unmap.
    pub fn unmap(&mut self, vm: &VmFd, gpa: u64, size: u64) -> Result<(), hv_return_t> {
        check_range(gpa, size)?;
        self.carve(vm, gpa, size, None)
    }

    /// hv_vm_protect. READ|EXEC without WRITE becomes a read-only slot; EXEC alone is
    /// not enforceable (KVM has no non-executable or non-readable memory):
    /// HV_UNSUPPORTED. A missing EXEC is accepted and not enforced (documented gap).
    pub fn protect(&mut self, vm: &VmFd, gpa: u64, size: u64, flags: hv_memory_flags_t) -> Result<(), hv_return_t> {
        check_range(gpa, size)?;
        if flags & HV_MEMORY_READ == 0 {
            log::error!("hvf-sys/linux: hv_vm_protect without HV_MEMORY_READ is not supported on KVM");
            return Err(HV_UNSUPPORTED);
        }
        self.carve(vm, gpa, size, Some(flags))
    }

    /// Deletes every slot (hv_vm_destroy; the VM fd going away would do it as well).
    pub fn clear(&mut self, vm: &VmFd) {
        for m in std::mem::take(&mut self.maps) {
            let _ = Self::set_slot(vm, &m, 0);
        }
    }

    /// The mapping holding `gpa`.
    pub fn find(&self, gpa: u64) -> Option<&Mapping> {
        let at = self.maps.partition_point(|m| m.end() <= gpa);
        self.maps.get(at).filter(|m| m.gpa <= gpa)
    }

    /// Copies guest-physical memory into `buf`; false if any byte is not mapped.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let mut done = 0usize;
        while done < buf.len() {
            let addr = gpa.wrapping_add(done as u64);
            let Some(m) = self.find(addr) else { return false };
            let n = ((m.end() - addr) as usize).min(buf.len() - done);
            let src = (m.host + (addr - m.gpa)) as *const u8;
            // SAFETY: [src, src+n) lies inside a range the VMM mapped into the guest and
            // keeps mapped while the mapping exists. The guest may write it concurrently:
            // the bytes are only decoded, never trusted.
            unsafe { std::ptr::copy_nonoverlapping(src, buf[done..].as_mut_ptr(), n) };
            done += n;
        }
        true
    }

    #[cfg(test)]
    fn insert_for_test(&mut self, m: Mapping) {
        let at = self.maps.partition_point(|x| x.gpa < m.gpa);
        self.maps.insert(at, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_page_aligned() {
        assert_eq!(check_range(0x1000, 0x2000), Ok(()));
        assert_eq!(check_range(0x1001, 0x1000), Err(HV_BAD_ARGUMENT));
        assert_eq!(check_range(0x1000, 0x10), Err(HV_BAD_ARGUMENT));
        assert_eq!(check_range(0x1000, 0), Err(HV_BAD_ARGUMENT));
    }

    #[test]
    fn reads_go_through_the_table() {
        let page = vec![0xabu8; 8192];
        let mut map = MemoryMap::default();
        map.insert_for_test(Mapping { gpa: 0x10000, size: 8192, host: page.as_ptr() as u64, flags: 7, slot: 0 });
        let mut buf = [0u8; 4];
        assert!(map.read(0x11ffc, &mut buf));
        assert_eq!(buf, [0xab; 4]);
        assert!(!map.read(0x11ffe, &mut buf)); // runs past the end
        assert!(!map.read(0xfffe, &mut buf));
        assert!(map.find(0x12000).is_none());
    }
}
