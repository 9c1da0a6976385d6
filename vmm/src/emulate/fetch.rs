//! Instruction fetch: read the bytes at CS:RIP through segmentation and paging, and
//! decode them with iced-x86 at the code size of the current mode.

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

use super::cpu::{CpuState, Segment};
use super::walk::{translate, Access, PAGE_OFFSET_MASK, PAGE_SIZE};
use super::{EmulateError, GuestBus};

/// The architectural maximum instruction length (SDM vol. 2, 2.3.11): longer encodings
/// raise #GP, so no more bytes are ever needed.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// A fetched and decoded instruction.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub instruction: Instruction,
    /// The fetched bytes; the instruction is the first `instruction.len()` of them.
    pub raw: [u8; MAX_INSTRUCTION_LEN],
    /// How many bytes of `raw` were fetched (at least the instruction's length).
    pub fetched: usize,
}

impl Fetched {
    /// The instruction's bytes.
    pub fn bytes(&self) -> &[u8] {
        let len = self.instruction.len().min(self.fetched);
        self.raw.get(..len).unwrap_or(&self.raw)
    }
}

/// Decodes `bytes` as one instruction at `rip`. `Err(NoMoreBytes)` means the bytes end
/// before the instruction does.
fn decode(bitness: u32, rip: u64, bytes: &[u8]) -> Result<Instruction, DecoderError> {
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let instruction = decoder.decode();
    match decoder.last_error() {
        DecoderError::None => Ok(instruction),
        error => Err(error),
    }
}

fn unsupported(bytes: &[u8], what: String) -> EmulateError {
    EmulateError::Unsupported {
        bytes: bytes.to_vec(),
        what,
    }
}

/// Fetches up to 15 bytes at CS:RIP and decodes them at the current code size (16, 32
/// or 64 bits from CR0.PE, RFLAGS.VM, EFER.LMA and CS.L/D).
///
/// The bytes are fetched like the CPU does: with instruction-fetch permission checks
/// (so an NX page or, under SMEP, a user page faults), from guest RAM only. If the 15
/// bytes would cross into the next page, that page is fetched only if the bytes of the
/// first page do not already hold a complete instruction, so an instruction that ends
/// right before an unmapped page decodes fine, and one that really continues into it
/// raises #PF with CR2 at the start of that page.
///
/// Errors: `Fault` (#PF on fetch, #GP for a non-canonical RIP), `Unsupported` for code
/// outside RAM or bytes that do not decode.
pub fn fetch_and_decode(cpu: &CpuState, bus: &mut dyn GuestBus) -> Result<Fetched, EmulateError> {
    let bitness = cpu.mode().code_bits();
    let start = cpu.linear(Segment::Cs, cpu.rip);
    let mut raw = [0u8; MAX_INSTRUCTION_LEN];

    let room =
        usize::try_from(PAGE_SIZE - (start & PAGE_OFFSET_MASK)).unwrap_or(MAX_INSTRUCTION_LEN);
    let first_len = room.min(MAX_INSTRUCTION_LEN);
    let gpa = translate(cpu, bus, start, Access::Fetch)?;
    let first = raw.get_mut(..first_len).unwrap_or(&mut []);
    if bus.read_ram(gpa, first).is_err() {
        return Err(unsupported(
            &[],
            format!("instruction fetch from outside RAM (guest-physical {gpa:#x})"),
        ));
    }

    let mut fetched = first_len;
    if first_len < MAX_INSTRUCTION_LEN {
        match decode(bitness, cpu.rip, raw.get(..first_len).unwrap_or(&[])) {
            Ok(instruction) => {
                return Ok(Fetched {
                    instruction,
                    raw,
                    fetched,
                })
            }
            Err(DecoderError::NoMoreBytes) => {}
            Err(error) => {
                let bytes = raw.get(..first_len).unwrap_or(&[]);
                return Err(unsupported(
                    bytes,
                    format!("undecodable instruction ({error:?})"),
                ));
            }
        }
        // The instruction continues on the next page.
        let next = cpu.wrap_linear(start.wrapping_add(first_len as u64));
        let gpa = translate(cpu, bus, next, Access::Fetch)?;
        let second = raw.get_mut(first_len..).unwrap_or(&mut []);
        if bus.read_ram(gpa, second).is_err() {
            return Err(unsupported(
                raw.get(..first_len).unwrap_or(&[]),
                format!("instruction fetch from outside RAM (guest-physical {gpa:#x})"),
            ));
        }
        fetched = MAX_INSTRUCTION_LEN;
    }

    match decode(bitness, cpu.rip, &raw) {
        Ok(instruction) => Ok(Fetched {
            instruction,
            raw,
            fetched,
        }),
        Err(error) => Err(unsupported(
            &raw,
            format!("undecodable instruction ({error:?})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::cpu::{Cr0, Cr4, CsAccessRights, Efer};
    use crate::emulate::testbus::TestBus;
    use crate::emulate::walk::PfErrorCode;
    use crate::emulate::Fault;
    use iced_x86::code_asm::*;
    use iced_x86::Mnemonic;

    /// Long mode; linear pages 0x10000 and 0x11000 map to RAM 0x8000 and 0x9000 (so a
    /// page-crossing fetch reads two different physical pages); 0x12000 is not present.
    fn setup() -> (CpuState, TestBus) {
        let mut bus = TestBus::new();
        bus.put_u64(0x1000, 0x2000 | 3);
        bus.put_u64(0x2000, 0x3000 | 3);
        bus.put_u64(0x3000, 0x4000 | 3);
        bus.put_u64(0x4000 + 8 * 0x10, 0x8000 | 3);
        bus.put_u64(0x4000 + 8 * 0x11, 0x9000 | 3);
        let cpu = CpuState {
            cr0: (Cr0::PE | Cr0::PG).bits(),
            cr3: 0x1000,
            cr4: Cr4::PAE.bits(),
            efer: (Efer::LME | Efer::LMA | Efer::NXE).bits(),
            cs_ar: CsAccessRights::L.bits(),
            ..CpuState::default()
        };
        (cpu, bus)
    }

    fn movabs(rip: u64) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
        a.assemble(rip).unwrap()
    }

    #[test]
    fn fetch_crossing_a_page_boundary() {
        let (mut cpu, mut bus) = setup();
        let code = movabs(0x10ffc);
        assert_eq!(code.len(), 10);
        bus.put(0x8ffc, &code[..4]);
        bus.put(0x9000, &code[4..]);
        cpu.rip = 0x10ffc;
        let fetched = fetch_and_decode(&cpu, &mut bus).unwrap();
        assert_eq!(fetched.instruction.mnemonic(), Mnemonic::Mov);
        assert_eq!(fetched.instruction.immediate64(), 0x1122_3344_5566_7788);
        assert_eq!(fetched.bytes(), &code[..]);
    }

    #[test]
    fn instruction_ending_before_an_unmapped_page_decodes() {
        let (mut cpu, mut bus) = setup();
        let code = movabs(0x11ff6);
        bus.put(0x9ff6, &code);
        cpu.rip = 0x11ff6;
        assert_eq!(
            fetch_and_decode(&cpu, &mut bus).unwrap().instruction.len(),
            10
        );
    }

    #[test]
    fn fetch_continuing_into_a_non_present_page_faults_with_id() {
        let (mut cpu, mut bus) = setup();
        let code = movabs(0x11ffa);
        bus.put(0x9ffa, &code[..6]);
        cpu.rip = 0x11ffa;
        let err = fetch_and_decode(&cpu, &mut bus).unwrap_err();
        assert_eq!(
            err,
            EmulateError::Fault(Fault::page_fault(0x12000, PfErrorCode::FETCH))
        );
        // Straight from a non-present page.
        cpu.rip = 0x12010;
        let err = fetch_and_decode(&cpu, &mut bus).unwrap_err();
        assert_eq!(
            err,
            EmulateError::Fault(Fault::page_fault(0x12010, PfErrorCode::FETCH))
        );
    }

    #[test]
    fn fetch_from_nx_page_faults() {
        let (mut cpu, mut bus) = setup();
        bus.put_u64(0x4000 + 8 * 0x10, 0x8000 | 3 | 1 << 63);
        cpu.rip = 0x10000;
        let err = fetch_and_decode(&cpu, &mut bus).unwrap_err();
        assert_eq!(
            err,
            EmulateError::Fault(Fault::page_fault(
                0x10000,
                PfErrorCode::PRESENT | PfErrorCode::FETCH
            ))
        );
    }

    #[test]
    fn real_mode_uses_cs_base_and_16_bit_decoding() {
        let mut bus = TestBus::new();
        // mov ax, [bx+si+4]: 8B 40 04 in 16-bit code.
        bus.put(0xf_0100, &[0x8b, 0x40, 0x04]);
        let cpu = CpuState {
            rip: 0x100,
            seg_base: [0, 0xf_0000, 0, 0, 0, 0],
            ..CpuState::default()
        };
        let fetched = fetch_and_decode(&cpu, &mut bus).unwrap();
        assert_eq!(fetched.instruction.len(), 3);
        assert_eq!(fetched.instruction.memory_base(), iced_x86::Register::BX);
    }

    #[test]
    fn undecodable_bytes_are_unsupported() {
        let (mut cpu, mut bus) = setup();
        cpu.rip = 0x10000;
        // PUSH ES does not exist in 64-bit mode; LOCK on NOP is invalid. (0F FF is UD0,
        // which decodes: the executor refuses it, see the emulator tests.)
        for bytes in [&[0x06u8][..], &[0xf0, 0x90]] {
            bus.put(0x8000, bytes);
            let err = fetch_and_decode(&cpu, &mut bus).unwrap_err();
            assert!(matches!(err, EmulateError::Unsupported { .. }), "{err}");
            let hex = format!("[{:02x}", bytes[0]);
            assert!(
                err.to_string()
                    .starts_with(&format!("unsupported instruction {hex}")),
                "{err}"
            );
        }
    }

    #[test]
    fn code_outside_ram_is_unsupported() {
        let (mut cpu, mut bus) = setup();
        bus.put_u64(0x4000 + 8 * 0x10, 0x7_0000_0000 | 3);
        cpu.rip = 0x10000;
        assert!(matches!(
            fetch_and_decode(&cpu, &mut bus),
            Err(EmulateError::Unsupported { .. })
        ));
    }
}
