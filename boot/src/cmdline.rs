//! The kernel command line: a NUL-terminated string at [`CMDLINE_START`] that
//! `hdr.cmd_line_ptr` points to, at most `cmdline_size` bytes without the NUL
//! (boot.rst, "THE KERNEL COMMAND LINE" and the `cmdline_size` field, protocol 2.06+).
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

#[derive(Debug, PartialEq, Eq)]
pub enum CmdlineError {
    TooLong { len: usize, max: u64 },
    Nul(usize),
    Write(u64),
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::TooLong { len, max } => {
                write!(f, "command line too long: {len} bytes, the kernel accepts at most {max}")
            }
            CmdlineError::Nul(at) => write!(f, "command line contains a NUL byte at offset {at}"),
            CmdlineError::Write(a) => write!(f, "cannot write the command line at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for CmdlineError {}

/// The longest command line (NUL excluded) for a kernel whose header allows
/// `kernel_max`: also bounded by the room the layout reserves.
pub fn max_len(kernel_max: u64) -> u64 {
    kernel_max.min(CMDLINE_MAX_SIZE - 1)
}

pub fn check(cmdline: &str, kernel_max: u64) -> Result<(), CmdlineError> {
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(CmdlineError::Nul(at));
    }
    let max = max_len(kernel_max);
    if cmdline.len() as u64 > max {
        return Err(CmdlineError::TooLong { len: cmdline.len(), max });
    }
    Ok(())
}

/// Checks and writes `cmdline` with its NUL at [`CMDLINE_START`]; returns the address.
pub fn write<M: GuestMemoryBackend>(mem: &M, cmdline: &str, kernel_max: u64) -> Result<u64, CmdlineError> {
    check(cmdline, kernel_max)?;
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START)).map_err(|_| CmdlineError::Write(CMDLINE_START))?;
    Ok(CMDLINE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn writes_nul_terminated_bytes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        mem.write_slice(&[0xff; 16], GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(write(&mem, "console=ttyS0", 2047).unwrap(), 0x20000);
        let mut buf = [0u8; 15];
        mem.read_slice(&mut buf, GuestAddress(0x20000)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0\xff");
        write(&mem, "", 0).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20000)).unwrap(), 0);
    }

    #[test]
    fn limits() {
        assert_eq!(check(&"x".repeat(2047), 2047), Ok(()));
        assert_eq!(check(&"x".repeat(2048), 2047), Err(CmdlineError::TooLong { len: 2048, max: 2047 }));
        assert_eq!(max_len(u32::MAX as u64), 0xffff);
        assert_eq!(check("a\0b", 100), Err(CmdlineError::Nul(1)));
        assert_eq!(
            CmdlineError::TooLong { len: 5000, max: 2047 }.to_string(),
            "command line too long: 5000 bytes, the kernel accepts at most 2047"
        );
    }
}
