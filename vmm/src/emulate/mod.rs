//! Instruction emulation for EPT-violation (MMIO) exits.
//!
//! When a guest instruction touches a guest-physical address that no RAM backs, the CPU
//! leaves the guest with an EPT violation that tells us *where* (the guest-physical
//! address) but not *what* (which instruction, which register, how many bytes). This
//! module recovers the "what" and carries the instruction out in software:
//!
//! 1. [`fetch_and_decode`] ([`fetch`]): read the instruction bytes at CS:RIP through the
//!    guest's own segmentation and paging, and decode them with iced-x86 at the code
//!    size of the current mode ([`CpuState::mode`]).
//! 2. [`emulate_mmio`] ([`exec`]): compute the memory operand's linear address, translate
//!    it ([`translate`], [`walk`]), perform the access(es) through the [`GuestBus`] (which
//!    routes each one to RAM or to an MMIO device), update registers and arithmetic flags
//!    ([`flags`]) and advance RIP.
//!
//! Everything here is pure logic over a [`CpuState`] snapshot and a [`GuestBus`]; nothing
//! depends on Hypervisor.framework, so it is unit-tested on any host.
//!
//! Everything the guest controls is treated as hostile: instruction bytes, page tables,
//! register values and addresses. Code in this module never panics on guest input, never
//! indexes out of bounds and uses wrapping arithmetic wherever the CPU wraps.

mod cpu;
mod exec;
mod fetch;
mod flags;
mod linear;
mod walk;

#[cfg(test)]
mod testbus;
#[cfg(test)]
mod tests;

use std::fmt;

pub use cpu::{
    CpuMode, CpuState, Cr0, Cr4, CsAccessRights, Efer, Rflags, Segment, DEFAULT_PHYS_ADDR_BITS,
};
pub use exec::{emulate_mmio, MAX_REP_ITERATIONS};
pub use fetch::{fetch_and_decode, Fetched, MAX_INSTRUCTION_LEN};
pub use linear::{read_linear, write_linear};
pub use walk::{translate, Access, PagingMode, PfErrorCode, PAGE_SIZE};

/// A guest-physical address that no guest RAM backs (it may still be an MMIO device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsideRam {
    /// The first guest-physical address of the access.
    pub gpa: u64,
}

impl fmt::Display for OutsideRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest-physical address {:#x} is outside guest RAM",
            self.gpa
        )
    }
}

impl std::error::Error for OutsideRam {}

/// What the emulator needs from the machine.
///
/// `read_ram`/`cmpxchg_ram` are for the emulator's *implicit* accesses (page-table
/// entries, instruction bytes): those must come from RAM, never from a device. `read` and
/// `write` are the instruction's *data* accesses and go to whatever is at the address.
pub trait GuestBus {
    /// Reads guest RAM only (page tables, instruction bytes). `Err` if any byte of
    /// `gpa..gpa + buf.len()` is outside RAM; `buf` is then unspecified.
    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutsideRam>;

    /// Atomically replaces the little-endian paging-structure entry at `gpa` with `new`
    /// if it still holds `old` (both slices have the same length, 4 or 8 bytes, and the
    /// entry is naturally aligned). Returns `Ok(true)` if it was replaced, `Ok(false)` if
    /// the entry had changed meanwhile (another vCPU or the guest wrote it), `Err` if the
    /// entry is not in RAM.
    ///
    /// The page walker uses this to set accessed/dirty bits the way the CPU does: with a
    /// locked read-modify-write (SDM vol. 3, 4.8), so a concurrent change to the entry by
    /// another vCPU is never overwritten. Implementations shared between vCPUs must use a
    /// real atomic compare-and-exchange on the host mapping.
    fn cmpxchg_ram(&mut self, gpa: u64, old: &[u8], new: &[u8]) -> Result<bool, OutsideRam>;

    /// A data read: RAM or an MMIO device, whichever is at `gpa`. Never crosses a 4 KiB
    /// page: the emulator splits accesses that do. What an access to nothing returns is
    /// the bus's choice (real buses return all ones).
    fn read(&mut self, gpa: u64, buf: &mut [u8]);

    /// A data write: RAM or an MMIO device, whichever is at `gpa`. Never crosses a 4 KiB
    /// page.
    fn write(&mut self, gpa: u64, data: &[u8]);
}

/// An exception the guest must see (the caller injects it through the VM-entry
/// interruption-information field, and loads CR2 for a page fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The exception vector: [`Fault::PAGE_FAULT`], [`Fault::GENERAL_PROTECTION`] or
    /// [`Fault::INVALID_OPCODE`].
    pub vector: u8,
    /// The error code to push, for the exceptions that have one (SDM vol. 3, 6.13).
    pub error_code: Option<u32>,
    /// The faulting linear address to load into CR2 (page faults only).
    pub cr2: Option<u64>,
}

impl Fault {
    /// #UD, invalid opcode (SDM vol. 3, 6.15, interrupt 6).
    pub const INVALID_OPCODE: u8 = 6;
    /// #GP, general protection (SDM vol. 3, 6.15, interrupt 13).
    pub const GENERAL_PROTECTION: u8 = 13;
    /// #PF, page fault (SDM vol. 3, 6.15, interrupt 14).
    pub const PAGE_FAULT: u8 = 14;

    /// A page fault at `linear` with the given error code (SDM vol. 3, 4.7).
    pub fn page_fault(linear: u64, error_code: PfErrorCode) -> Fault {
        Fault {
            vector: Self::PAGE_FAULT,
            error_code: Some(error_code.bits()),
            cr2: Some(linear),
        }
    }

    /// #GP(0): what a non-canonical address raises (SDM vol. 3, 3.3.7.1).
    pub fn general_protection() -> Fault {
        Fault {
            vector: Self::GENERAL_PROTECTION,
            error_code: Some(0),
            cr2: None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.vector {
            Self::INVALID_OPCODE => "#UD",
            Self::GENERAL_PROTECTION => "#GP",
            Self::PAGE_FAULT => "#PF",
            _ => "exception",
        };
        write!(f, "{name} (vector {})", self.vector)?;
        if let Some(code) = self.error_code {
            write!(f, " error code {code:#x}")?;
        }
        if let Some(cr2) = self.cr2 {
            write!(f, " at linear address {cr2:#x}")?;
        }
        Ok(())
    }
}

/// Why an instruction was not emulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmulateError {
    /// The guest must see this exception. `CpuState` holds the state the exception is
    /// taken with: RIP still at the faulting instruction, and for a REP string
    /// instruction the iterations completed before the fault retired (RSI/RDI/RCX
    /// updated), exactly as the CPU leaves them (SDM vol. 2, "REP" description).
    Fault(Fault),
    /// The emulator cannot carry this instruction out; `CpuState` is unchanged. The
    /// caller decides (typically: log it and stop the VM, or inject #UD).
    Unsupported {
        /// The instruction bytes fetched at CS:RIP (may be empty if none could be read).
        bytes: Vec<u8>,
        /// The decoded instruction and iced's mnemonic, and why it was refused.
        what: String,
    },
}

impl From<Fault> for EmulateError {
    fn from(fault: Fault) -> Self {
        EmulateError::Fault(fault)
    }
}

impl fmt::Display for EmulateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmulateError::Fault(fault) => write!(f, "guest fault: {fault}"),
            EmulateError::Unsupported { bytes, what } => {
                write!(f, "unsupported instruction [")?;
                for (i, byte) in bytes.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                write!(f, "]: {what}")
            }
        }
    }
}

impl std::error::Error for EmulateError {}
