//! The initial ramdisk: placed page-aligned at the top of RAM below the MMIO hole, as
//! high as the kernel allows (boot.rst: `initrd_addr_max` is the highest address it may
//! occupy; "the initrd should typically be located as high in memory as possible").
//! `XLF_CAN_BE_LOADED_ABOVE_4G` would allow RAM above 4 GiB, but low RAM keeps
//! `ramdisk_image` a 32-bit field and the kernel's early mapping simple.
use crate::layout::PAGE_SIZE;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

/// Read the file in pieces: a single read() is capped (2 GiB on Linux, INT_MAX on macOS)
/// and may be short.
const CHUNK: usize = 16 << 20;

#[derive(Debug)]
pub enum InitrdError {
    Empty,
    DoesNotFit { size: u64, room: u64 },
    Truncated { expected: u64, actual: u64 },
    Io(io::Error),
    Write(u64),
}

impl fmt::Display for InitrdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitrdError::Empty => write!(f, "initrd file is empty"),
            InitrdError::DoesNotFit { size, room } => write!(
                f,
                "initrd does not fit: {size} bytes, but only {room} bytes are free between the kernel and the initrd limit"
            ),
            InitrdError::Truncated { expected, actual } => {
                write!(f, "initrd file shrank while loading: read {actual} of {expected} bytes")
            }
            InitrdError::Io(e) => write!(f, "cannot read initrd: {e}"),
            InitrdError::Write(a) => write!(f, "cannot write the initrd at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for InitrdError {}

/// Where a `size`-byte initrd goes: the highest page-aligned address such that it ends
/// at or below both `low_ram_end` and `addr_max + 1` (unless `above_4g_ok` lifts the
/// header limit) and starts at or above `lowest` (the end of the kernel's footprint).
pub fn placement(
    size: u64,
    low_ram_end: u64,
    addr_max: u64,
    above_4g_ok: bool,
    lowest: u64,
) -> Result<u64, InitrdError> {
    if size == 0 {
        return Err(InitrdError::Empty);
    }
    let limit = if above_4g_ok { low_ram_end } else { low_ram_end.min(addr_max.saturating_add(1)) };
    let lowest = lowest.next_multiple_of(PAGE_SIZE);
    let room = limit.saturating_sub(lowest);
    match limit.checked_sub(size) {
        Some(start) if start / PAGE_SIZE * PAGE_SIZE >= lowest => Ok(start / PAGE_SIZE * PAGE_SIZE),
        _ => Err(InitrdError::DoesNotFit { size, room }),
    }
}

/// The size of the initrd file.
pub fn file_size<F: Seek>(file: &mut F) -> Result<u64, InitrdError> {
    file.seek(SeekFrom::End(0)).map_err(InitrdError::Io)
}

/// Copies `size` bytes of `file` (from its start) to guest memory at `addr`.
pub fn load<F, M>(mem: &M, file: &mut F, addr: u64, size: u64) -> Result<(), InitrdError>
where
    F: Read + ReadVolatile + Seek,
    M: GuestMemoryBackend,
{
    file.seek(SeekFrom::Start(0)).map_err(InitrdError::Io)?;
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(CHUNK as u64) as usize;
        let at = GuestAddress(addr + done);
        let n = match mem.read_volatile_from(at, file, want) {
            Ok(n) => n,
            Err(vm_memory::GuestMemoryError::IOError(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(vm_memory::GuestMemoryError::IOError(e)) => return Err(InitrdError::Io(e)),
            Err(_) => return Err(InitrdError::Write(at.0)),
        };
        if n == 0 {
            return Err(InitrdError::Truncated { expected: size, actual: done });
        }
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn placed_at_the_top_page_aligned() {
        // 256 MiB guest, kernel up to 32 MiB.
        assert_eq!(placement(0x1234, 256 << 20, 0x7fff_ffff, false, 32 << 20).unwrap(), 0xfffe000);
        assert_eq!(placement(0x1000, 256 << 20, 0x7fff_ffff, false, 32 << 20).unwrap(), 0xffff000);
        // The header's limit wins when it is lower than RAM.
        assert_eq!(placement(0x1000, 0xc000_0000, 0x37ff_ffff, false, 32 << 20).unwrap(), 0x37ff_f000);
        // ... unless the kernel can take it anywhere; it still stays in low RAM.
        assert_eq!(placement(0x1000, 0xc000_0000, 0x37ff_ffff, true, 32 << 20).unwrap(), 0xbfff_f000);
    }

    #[test]
    fn too_big_or_empty() {
        assert!(matches!(
            placement(225 << 20, 256 << 20, 0x7fff_ffff, false, 32 << 20),
            Err(InitrdError::DoesNotFit { size: 0xe10_0000, room: 0xe00_0000 })
        ));
        assert_eq!(placement(224 << 20, 256 << 20, 0x7fff_ffff, false, 32 << 20).unwrap(), 32 << 20);
        assert!(matches!(placement(u64::MAX, 256 << 20, u64::MAX, false, 0), Err(InitrdError::DoesNotFit { .. })));
        assert!(matches!(placement(0, 256 << 20, 0x7fff_ffff, false, 0), Err(InitrdError::Empty)));
        let msg = InitrdError::DoesNotFit { size: 1, room: 0 }.to_string();
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn loads_bytes_and_detects_shrinking_files() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut f = Cursor::new(data.clone());
        assert_eq!(file_size(&mut f).unwrap(), 5000);
        load(&mem, &mut f, 0x8000, 5000).unwrap();
        let mut back = vec![0u8; 5000];
        mem.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
        assert_eq!(back, data);
        assert!(matches!(
            load(&mem, &mut f, 0x8000, 6000),
            Err(InitrdError::Truncated { expected: 6000, actual: 5000 })
        ));
        assert!(matches!(load(&mem, &mut f, 0xff000, 5000), Err(InitrdError::Write(_))));
    }
}
