//! The Intel MultiProcessor table (MP spec 1.4, chapter 4) for kernels that do not use
//! ACPI: a floating pointer at [`MPTABLE_START`] (the last KiB of base memory, which
//! Linux scans, MP spec 4.1) followed by the configuration table: one processor entry
//! per vCPU, the ISA bus, the IOAPIC, an I/O interrupt entry for ISA IRQs 0-15 and for
//! every virtio GSI above them, and LINT0 = ExtINT / LINT1 = NMI on all local APICs
//! (the virtual-wire setup of MP spec 3.6.2.2).
use crate::irq::{isa_route, IrqOverride, INTI_CONFORMS, ISA_IRQS};
use crate::layout::{IOAPIC_ADDR, IOAPIC_ID, LAPIC_ADDR, MAX_VCPUS, MPTABLE_START, RSDP_START};
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const SPEC_REV: u8 = 4;
/// Local APIC version of an integrated xAPIC (SDM vol. 3 11.4.8), IOAPIC version of the
/// 82093AA.
pub const LAPIC_VERSION: u8 = 0x14;
pub const IOAPIC_VERSION: u8 = 0x11;
const OEM_ID: &[u8; 8] = b"HVRUN   ";
const PRODUCT_ID: &[u8; 12] = b"HVRUNVM     ";
/// CPUID(1).EAX-style signature (family 6) and CPUID(1).EDX features FPU | APIC.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const BUS_ISA: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INT: u8 = 3;
const ENTRY_LOCAL_INT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;

#[derive(Debug, PartialEq, Eq)]
pub enum MptableError {
    TooBig { end: u64 },
    Write(u64),
}

impl fmt::Display for MptableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MptableError::TooBig { end } => {
                write!(f, "MP table ends at {end:#x}, into the ACPI area at {RSDP_START:#x}")
            }
            MptableError::Write(a) => write!(f, "cannot write the MP table at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for MptableError {}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn int_entry(ty: u8, int_type: u8, flags: u16, src_irq: u8, dst_id: u8, dst_pin: u8) -> [u8; 8] {
    let f = flags.to_le_bytes();
    [ty, int_type, f[0], f[1], BUS_ISA, src_irq, dst_id, dst_pin]
}

/// The floating pointer and the configuration table, as placed at [`MPTABLE_START`].
pub fn build(vcpus: u32, virtio_gsis: &[u32], overrides: &[IrqOverride]) -> Result<Vec<u8>, MptableError> {
    let config_addr = MPTABLE_START + 16;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |e: &[u8]| {
        entries.extend_from_slice(e);
        count += 1;
    };
    for id in 0..vcpus.min(MAX_VCPUS) {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        let mut e = vec![ENTRY_PROCESSOR, id as u8, LAPIC_VERSION, flags];
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        push(&e);
    }
    push(&[ENTRY_BUS, BUS_ISA, b'I', b'S', b'A', b' ', b' ', b' ']);
    let a = (IOAPIC_ADDR as u32).to_le_bytes();
    push(&[ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 1, a[0], a[1], a[2], a[3]]);
    for irq in 0..ISA_IRQS {
        let (pin, flags) = isa_route(irq, overrides);
        push(&int_entry(ENTRY_IO_INT, INT_TYPE_INT, flags, irq, IOAPIC_ID, pin as u8));
    }
    for &gsi in virtio_gsis.iter().filter(|g| **g >= ISA_IRQS as u32 && **g < 256) {
        push(&int_entry(ENTRY_IO_INT, INT_TYPE_INT, INTI_CONFORMS, gsi as u8, IOAPIC_ID, gsi as u8));
    }
    push(&int_entry(ENTRY_LOCAL_INT, INT_TYPE_EXTINT, INTI_CONFORMS, 0, 0xff, 0));
    push(&int_entry(ENTRY_LOCAL_INT, INT_TYPE_NMI, INTI_CONFORMS, 0, 0xff, 1));

    let table_len = 44 + entries.len();
    let end = config_addr + table_len as u64;
    if end > RSDP_START || table_len > u16::MAX as usize {
        return Err(MptableError::TooBig { end });
    }
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum
    table.extend_from_slice(OEM_ID);
    table.extend_from_slice(PRODUCT_ID);
    table.extend_from_slice(&[0; 6]); // no OEM table
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(config_addr as u32).to_le_bytes());
    // Length in 16-byte units, spec revision, checksum, feature bytes: 0 = a
    // configuration table is present, IMCR absent (virtual wire mode).
    out.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out[..16]);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Builds and writes the MP table; returns the floating pointer's address.
pub fn write<M: GuestMemoryBackend>(
    mem: &M,
    vcpus: u32,
    virtio_gsis: &[u32],
    overrides: &[IrqOverride],
) -> Result<u64, MptableError> {
    let bytes = build(vcpus, virtio_gsis, overrides)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START)).map_err(|_| MptableError::Write(MPTABLE_START))?;
    Ok(MPTABLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::{INTI_ACTIVE_HIGH, INTI_EDGE};

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_header() {
        let t = build(2, &[5, 20], &[]).unwrap();
        assert_eq!(&t[..16], &[b'_', b'M', b'P', b'_', 0x10, 0xfc, 0x09, 0, 1, 4, t[10], 0, 0, 0, 0, 0]);
        assert_eq!(sum(&t[..16]), 0);
        let c = &t[16..];
        assert_eq!(&c[..4], b"PCMP");
        let len = u16::from_le_bytes([c[4], c[5]]) as usize;
        assert_eq!(len, c.len());
        assert_eq!(c[6], 4);
        assert_eq!(sum(c), 0);
        assert_eq!(&c[8..28], b"HVRUN   HVRUNVM     ");
        // 2 CPUs + bus + IOAPIC + 16 ISA + GSI 20 (GSI 5 is ISA IRQ 5) + 2 LINT.
        assert_eq!(u16::from_le_bytes([c[34], c[35]]), 2 + 1 + 1 + 16 + 1 + 2);
        assert_eq!(&c[36..40], &[0, 0, 0xe0, 0xfe]);
        assert_eq!(len, 44 + 2 * 20 + 8 + 8 + 17 * 8 + 2 * 8);
    }

    #[test]
    fn entries_have_exact_bytes() {
        let o = [IrqOverride { isa_irq: 0, gsi: 2, flags: INTI_ACTIVE_HIGH | INTI_EDGE }];
        let t = build(2, &[20], &o).unwrap();
        let e = &t[16 + 44..];
        assert_eq!(&e[..20], &[0, 0, 0x14, 3, 0, 6, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&e[20..24], &[0, 1, 0x14, 1], "an AP: enabled, not BSP");
        assert_eq!(&e[40..48], b"\x01\x00ISA   ");
        assert_eq!(&e[48..56], &[2, 0, 0x11, 1, 0, 0, 0xc0, 0xfe]);
        assert_eq!(&e[56..64], &[3, 0, 5, 0, 0, 0, 0, 2], "IRQ 0 overridden to pin 2");
        assert_eq!(&e[64..72], &[3, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(&e[56 + 4 * 8..56 + 5 * 8], &[3, 0, 0, 0, 0, 4, 0, 4], "COM1");
        assert_eq!(&e[56 + 16 * 8..56 + 17 * 8], &[3, 0, 0, 0, 0, 20, 0, 20], "virtio GSI 20");
        assert_eq!(&e[56 + 17 * 8..56 + 18 * 8], &[4, 3, 0, 0, 0, 0, 0xff, 0], "LINT0 ExtINT");
        assert_eq!(&e[56 + 18 * 8..], &[4, 1, 0, 0, 0, 0, 0xff, 1], "LINT1 NMI");
    }

    #[test]
    fn fits_for_the_most_vcpus_and_writes() {
        let t = build(MAX_VCPUS, &[16, 17, 18, 19, 20, 21, 22, 23], &[]).unwrap();
        assert!(MPTABLE_START + t.len() as u64 <= RSDP_START);
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert_eq!(write(&mem, 1, &[], &[]).unwrap(), 0x9fc00);
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(0x9fc10)).unwrap();
        assert_eq!(&sig, b"PCMP");
        let small = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9f000)]).unwrap();
        assert_eq!(write(&small, 1, &[], &[]), Err(MptableError::Write(0x9fc00)));
    }
}
