//! Data accesses at linear addresses: translate page by page, then move the bytes
//! through [`GuestBus::read`]/[`GuestBus::write`], which route each piece to RAM or MMIO.

use super::cpu::CpuState;
use super::walk::{translate, Access, PAGE_OFFSET_MASK, PAGE_SIZE};
use super::{Fault, GuestBus};

/// The part of a linear access that falls in one 4 KiB page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub gpa: u64,
    pub len: usize,
}

/// Translates every page that `linear..linear + len` touches, for `access`.
///
/// All pages are translated before any byte moves, so a fault on the second page of a
/// page-crossing access leaves no half-done write behind: the CPU also completes the
/// checks for every byte of an access before it commits it. The address wraps the way
/// linear addresses do in the current mode ([`CpuState::wrap_linear`]).
pub(crate) fn translate_range(
    cpu: &CpuState,
    bus: &mut dyn GuestBus,
    linear: u64,
    len: usize,
    access: Access,
) -> Result<Vec<Piece>, Fault> {
    let mut pieces = Vec::with_capacity(len.div_ceil(PAGE_SIZE as usize).saturating_add(1));
    let mut addr = cpu.wrap_linear(linear);
    let mut remaining = len;
    while remaining > 0 {
        let room = PAGE_SIZE - (addr & PAGE_OFFSET_MASK);
        let chunk = remaining.min(usize::try_from(room).unwrap_or(usize::MAX));
        let gpa = translate(cpu, bus, addr, access)?;
        pieces.push(Piece { gpa, len: chunk });
        remaining -= chunk;
        addr = cpu.wrap_linear(addr.wrapping_add(chunk as u64));
    }
    Ok(pieces)
}

/// Reads the translated pieces into `buf` (whose length is the pieces' total).
pub(crate) fn read_pieces(bus: &mut dyn GuestBus, pieces: &[Piece], buf: &mut [u8]) {
    let mut rest = buf;
    for piece in pieces {
        let (head, tail) = rest.split_at_mut(piece.len.min(rest.len()));
        if !head.is_empty() {
            bus.read(piece.gpa, head);
        }
        rest = tail;
    }
}

/// Writes `data` to the translated pieces (whose total is `data.len()`).
pub(crate) fn write_pieces(bus: &mut dyn GuestBus, pieces: &[Piece], data: &[u8]) {
    let mut rest = data;
    for piece in pieces {
        let (head, tail) = rest.split_at(piece.len.min(rest.len()));
        if !head.is_empty() {
            bus.write(piece.gpa, head);
        }
        rest = tail;
    }
}

/// Reads `buf.len()` bytes at a linear address (segment base already added), through the
/// guest's paging, splitting at page boundaries. Each piece goes to RAM or MMIO,
/// whichever backs it. Nothing is read if any page faults. For the exit handler's
/// string I/O (INS/OUTS) as well as the emulator.
pub fn read_linear(
    cpu: &CpuState,
    bus: &mut dyn GuestBus,
    linear: u64,
    buf: &mut [u8],
) -> Result<(), Fault> {
    let pieces = translate_range(cpu, bus, linear, buf.len(), Access::Read)?;
    read_pieces(bus, &pieces, buf);
    Ok(())
}

/// Writes `data` at a linear address through the guest's paging, splitting at page
/// boundaries. Nothing is written if any page faults.
pub fn write_linear(
    cpu: &CpuState,
    bus: &mut dyn GuestBus,
    linear: u64,
    data: &[u8],
) -> Result<(), Fault> {
    let pieces = translate_range(cpu, bus, linear, data.len(), Access::Write)?;
    write_pieces(bus, &pieces, data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::cpu::{Cr0, Cr4, CsAccessRights, Efer};
    use crate::emulate::testbus::{MmioAccess, TestBus, MMIO_BASE};
    use crate::emulate::walk::PfErrorCode;

    /// 4-level paging: linear 0x10000 -> RAM 0x8000, linear 0x11000 -> MMIO, 0x12000 absent.
    fn setup() -> (CpuState, TestBus) {
        let mut bus = TestBus::new();
        bus.put_u64(0x1000, 0x2000 | 3);
        bus.put_u64(0x2000, 0x3000 | 3);
        bus.put_u64(0x3000, 0x4000 | 3);
        bus.put_u64(0x4000 + 8 * 0x10, 0x8000 | 3);
        bus.put_u64(0x4000 + 8 * 0x11, MMIO_BASE | 3);
        let cpu = CpuState {
            cr0: (Cr0::PE | Cr0::PG).bits(),
            cr3: 0x1000,
            cr4: Cr4::PAE.bits(),
            efer: (Efer::LME | Efer::LMA).bits(),
            cs_ar: CsAccessRights::L.bits(),
            ..CpuState::default()
        };
        (cpu, bus)
    }

    #[test]
    fn page_crossing_access_is_split() {
        let (cpu, mut bus) = setup();
        bus.put(0x8ffe, &[1, 2]);
        bus.program_mmio(MMIO_BASE, &[3, 4]);
        let mut buf = [0u8; 4];
        read_linear(&cpu, &mut bus, 0x10ffe, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        assert_eq!(
            bus.log,
            vec![MmioAccess::Read {
                gpa: MMIO_BASE,
                len: 2
            }]
        );
        write_linear(&cpu, &mut bus, 0x10fff, &[9, 8, 7]).unwrap();
        assert_eq!(bus.get(0x8fff, 1), vec![9]);
        assert_eq!(bus.mmio_bytes(MMIO_BASE, 2), vec![8, 7]);
    }

    #[test]
    fn fault_on_second_page_writes_nothing() {
        let (cpu, mut bus) = setup();
        let err = write_linear(&cpu, &mut bus, 0x11ffe, &[1, 2, 3, 4]).unwrap_err();
        assert_eq!(err, Fault::page_fault(0x12000, PfErrorCode::WRITE));
        assert!(bus.log.is_empty());
    }

    #[test]
    fn wraps_at_4g_outside_long_mode() {
        let mut bus = TestBus::new();
        bus.put(0, &[0xaa]);
        bus.put(0xfff, &[0xbb]);
        let cpu = CpuState::default();
        let mut buf = [0u8; 2];
        read_linear(&cpu, &mut bus, 0xffff_ffff, &mut buf).unwrap();
        // Paging off, linear 0xffff_ffff is outside the fixture's RAM (reads as 0xff),
        // and the second byte wraps to linear 0.
        assert_eq!(buf, [0xff, 0xaa]);
    }
}
