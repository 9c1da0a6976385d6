//! ACPI tables for a hardware-reduced platform (ACPI 6.x 4.1 "Hardware-Reduced ACPI"):
//! RSDP -> XSDT -> {FADT -> DSDT, MADT}. No FACS, no SCI, no PM1/GPE blocks; poweroff
//! goes through the FADT sleep control/status registers (ACPI 6.x 4.8.3.7) with the
//! `\_S5` sleep type from the DSDT, reboot through the FADT reset register.
//!
//! Layout: the RSDP at [`RSDP_START`], the other tables after it, 16-byte aligned, all
//! below 1 MiB inside the e820-reserved BIOS area.
use crate::irq::IrqOverride;
use crate::layout::*;
use crate::VirtioMmioDevice;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

pub const OEM_ID: [u8; 6] = *b"HVRUN ";
pub const OEM_TABLE_ID: [u8; 8] = *b"HVRUNVM ";
pub const OEM_REVISION: u32 = 1;

/// The FADT sleep control register (ACPI 6.x 4.8.3.7.1): an 8-bit I/O port decoded by
/// `devices::power::AcpiPmDevice`. Linux powers off by writing
/// `SLP_EN | S5_SLP_TYP << SLP_TYP_SHIFT` (0x34) to it.
pub const SLEEP_CONTROL_PORT: u16 = devices::power::ACPI_SLEEP_CONTROL_PORT;
/// The FADT sleep status register (ACPI 6.x 4.8.3.7.2): WAK_STS is bit 7.
pub const SLEEP_STATUS_PORT: u16 = devices::power::ACPI_SLEEP_STATUS_PORT;
pub const SLP_EN: u8 = 1 << 5;
pub const SLP_TYP_SHIFT: u8 = 2;
pub const SLP_TYP_MASK: u8 = 0x7 << SLP_TYP_SHIFT;
pub const WAK_STS: u8 = 1 << 7;
/// The sleep type `\_S5` declares in the DSDT.
pub const S5_SLP_TYP: u8 = devices::power::ACPI_S5_SLP_TYP;
/// The FADT reset register (ACPI 6.x 4.8.3.6), same device. Linux tries it first and
/// then the i8042 reset line (`devices::i8042`).
pub const RESET_PORT: u16 = devices::power::ACPI_RESET_PORT;
pub const RESET_VALUE: u8 = devices::power::ACPI_RESET_VALUE;
/// IAPC_BOOT_ARCH (ACPI 6.x table 5.11): no VGA. The 8042 flag stays clear: the i8042
/// model only resets, so Linux need not probe it for a keyboard (its reboot path writes
/// port 0x64 regardless).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// Whether a byte written to [`SLEEP_CONTROL_PORT`] asks for S5 (soft off).
pub const fn is_poweroff_request(value: u8) -> bool {
    value & SLP_EN != 0 && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLP_TYP
}

#[derive(Debug, PartialEq, Eq)]
pub enum AcpiError {
    TooBig { end: u64 },
    Write(u64),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::TooBig { end } => {
                write!(f, "ACPI tables end at {end:#x}, beyond the BIOS area that ends at {ACPI_TABLES_END:#x}")
            }
            AcpiError::Write(a) => write!(f, "cannot write ACPI tables at guest address {a:#x}"),
        }
    }
}

impl std::error::Error for AcpiError {}

/// Tables ready to be written: (guest address, bytes), the RSDP first.
#[derive(Debug)]
pub struct AcpiTables {
    pub rsdp: u64,
    pub tables: Vec<(u64, Vec<u8>)>,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT: `\_S5` and, under `\_SB`, COM1 and the virtio-mmio devices (ACPI 6.x
/// 6.1.5 _HID, 6.1.12 _UID, 6.2.17 _CCA, 6.4 resource descriptors).
pub fn dsdt(virtio: &[VirtioMmioDevice]) -> Vec<u8> {
    // Temporaries live to the end of each statement, so each device is encoded in one.
    let com1 = bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ as u32),
                ]),
            ),
        ],
    ));
    let mut devices: Vec<Vec<u8>> = vec![com1];
    for (i, d) in virtio.iter().enumerate() {
        // Memory32Fixed(ReadWrite, base, 0x1000); Interrupt(ResourceConsumer, Edge,
        // ActiveHigh, Exclusive) { gsi }: what Linux's virtio_mmio platform driver reads.
        let uid = i as u32;
        devices.push(bytes(&aml::Device::new(
            format!("V{:03X}", i & 0xfff).as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, d.base as u32, VIRTIO_MMIO_SIZE as u32),
                        &aml::Interrupt::new(true, true, false, false, d.gsi),
                    ]),
                ),
            ],
        )));
    }
    let raw: Vec<RawAml> = devices.iter().map(|d| RawAml(d)).collect();
    let children: Vec<&dyn Aml> = raw.iter().map(|d| d as &dyn Aml).collect();
    let mut body = bytes(&aml::Scope::new("\\_SB_".into(), children));
    body.extend(bytes(&aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLP_TYP, &aml::ZERO]))));

    // Revision 2: 64-bit AML integers (ACPI 6.x 5.2.11.1).
    let mut sdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

/// Already-encoded AML as an AML object, so encoded devices can go into a Scope.
struct RawAml<'a>(&'a [u8]);

impl Aml for RawAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.0);
    }
}

/// The MADT (ACPI 6.x 5.2.12): LAPIC address, one enabled Processor Local APIC per
/// vCPU (UID = APIC ID = index), the IOAPIC with GSI base 0, interrupt source overrides,
/// and LINT1 of every processor as NMI (5.2.12.7), matching the MP table.
pub fn madt(vcpus: u32, overrides: &[IrqOverride]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.write_u32(36, LAPIC_ADDR as u32);
    // Flags: PCAT_COMPAT clear, there are no 8259s to disable (5.2.12, table 5.20).
    sdt.write_u32(40, 0);
    for i in 0..vcpus.min(MAX_VCPUS) {
        sdt.append_slice(&bytes(&ProcessorLocalApic::new(i as u8, i as u8, EnabledStatus::Enabled)));
    }
    sdt.append_slice(&bytes(&IoApic::new(IOAPIC_ID, IOAPIC_ADDR as u32, 0)));
    for o in overrides {
        let mut iso = vec![2u8, 10, 0 /* bus: ISA */, o.isa_irq];
        iso.extend_from_slice(&o.gsi.to_le_bytes());
        iso.extend_from_slice(&o.flags.to_le_bytes());
        sdt.append_slice(&iso);
    }
    // Local APIC NMI: all processors (UID 0xff), edge/active-high, LINT1.
    let nmi_flags = crate::irq::INTI_ACTIVE_HIGH | crate::irq::INTI_EDGE;
    let mut nmi = vec![4u8, 6, 0xff];
    nmi.extend_from_slice(&nmi_flags.to_le_bytes());
    nmi.push(1);
    sdt.append_slice(&nmi);
    sdt.as_slice().to_vec()
}

/// The hardware-reduced FADT (ACPI 6.x 5.2.9) pointing at the DSDT.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // No fixed-feature power/sleep buttons (table 5.10: set = not fixed hardware).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    b.sleep_control_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, SLEEP_CONTROL_PORT as u64);
    b.sleep_status_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, SLEEP_STATUS_PORT as u64);
    b.reset_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, RESET_PORT as u64);
    b.reset_value = RESET_VALUE;
    b.iapc_boot_arch = IAPC_VGA_NOT_PRESENT.into();
    bytes(&b.finalize())
}

const fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// Builds every table at its final address starting from [`RSDP_START`].
pub fn build(vcpus: u32, virtio: &[VirtioMmioDevice], overrides: &[IrqOverride]) -> Result<AcpiTables, AcpiError> {
    let rsdp_addr = RSDP_START;
    let xsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align16(xsdt_addr + xsdt_len);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt = madt(vcpus, overrides);
    let madt_addr = align16(fadt_addr + fadt_len);
    let dsdt = dsdt(virtio);
    let dsdt_addr = align16(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > ACPI_TABLES_END {
        return Err(AcpiError::TooBig { end });
    }
    let fadt = fadt(dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    Ok(AcpiTables {
        rsdp: rsdp_addr,
        tables: vec![
            (rsdp_addr, bytes(&rsdp)),
            (xsdt_addr, bytes(&xsdt)),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (dsdt_addr, dsdt),
        ],
    })
}

/// Builds and writes the tables; returns the RSDP address for `boot_params.acpi_rsdp_addr`.
pub fn write<M: GuestMemoryBackend>(
    mem: &M,
    vcpus: u32,
    virtio: &[VirtioMmioDevice],
    overrides: &[IrqOverride],
) -> Result<u64, AcpiError> {
    let t = build(vcpus, virtio, overrides)?;
    for (addr, data) in &t.tables {
        mem.write_slice(data, GuestAddress(*addr)).map_err(|_| AcpiError::Write(*addr))?;
    }
    Ok(t.rsdp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::{INTI_ACTIVE_HIGH, INTI_EDGE};

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    fn u32at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    const DEVS: [VirtioMmioDevice; 2] =
        [VirtioMmioDevice { base: 0xd000_0000, gsi: 5 }, VirtioMmioDevice { base: 0xd000_1000, gsi: 6 }];

    #[test]
    fn rsdp_and_xsdt_point_at_the_tables() {
        let t = build(2, &DEVS, &[]).unwrap();
        assert_eq!(t.rsdp, 0xe0000);
        let (addr, rsdp) = &t.tables[0];
        assert_eq!(*addr, 0xe0000);
        assert_eq!(rsdp.len(), 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(&rsdp[9..15], b"HVRUN ");
        assert_eq!(u32at(rsdp, 20), 36, "length");
        assert_eq!(u64at(rsdp, 24), 0xe0030, "XSDT address");
        let (xaddr, xsdt) = &t.tables[1];
        assert_eq!(*xaddr, 0xe0030);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(u32at(xsdt, 4) as usize, xsdt.len());
        assert_eq!(sum(xsdt), 0);
        assert_eq!(u64at(xsdt, 36), t.tables[2].0);
        assert_eq!(u64at(xsdt, 44), t.tables[3].0);
        for w in t.tables.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0);
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_registers() {
        let t = build(1, &[], &[]).unwrap();
        let f = &t.tables[2].1;
        assert_eq!(&f[..4], b"FACP");
        assert_eq!(u32at(f, 4) as usize, f.len());
        assert_eq!(f.len(), 276);
        assert_eq!(sum(f), 0);
        assert_eq!(f[8], 6, "FADT major revision");
        assert_eq!(u32at(f, 112) & (1 << 20), 1 << 20, "HW_REDUCED_ACPI");
        assert_eq!(u32at(f, 112) & (3 << 4), 3 << 4, "no fixed power/sleep buttons");
        assert_eq!(u64at(f, 140), t.tables[4].0, "X_DSDT");
        assert_eq!(u32at(f, 40), 0, "no 32-bit DSDT pointer");
        // Sleep control/status GAS at 244/256: I/O space, 8 bits, byte access.
        assert_eq!(&f[244..256], &[1, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&f[256..268], &[1, 8, 0, 1, 0x01, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&f[116..128], &[1, 8, 0, 1, 0x02, 0x06, 0, 0, 0, 0, 0, 0], "reset register");
        assert_eq!(f[128], 0x01, "reset value");
        assert_eq!(&f[109..111], &[4, 0], "IAPC_BOOT_ARCH: VGA not present");
        assert!(is_poweroff_request(0x34));
        assert!(!is_poweroff_request(0x14));
        assert!(!is_poweroff_request(0x20));
    }

    #[test]
    fn madt_lists_cpus_ioapic_overrides_and_nmi() {
        let o = [IrqOverride { isa_irq: 0, gsi: 2, flags: INTI_ACTIVE_HIGH | INTI_EDGE }];
        let m = madt(3, &o);
        assert_eq!(&m[..4], b"APIC");
        assert_eq!(u32at(&m, 4) as usize, m.len());
        assert_eq!(sum(&m), 0);
        assert_eq!(u32at(&m, 36), 0xfee0_0000);
        assert_eq!(&m[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&m[52..60], &[0, 8, 1, 1, 1, 0, 0, 0]);
        assert_eq!(&m[60..68], &[0, 8, 2, 2, 1, 0, 0, 0]);
        assert_eq!(&m[68..80], &[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        assert_eq!(&m[80..90], &[2, 10, 0, 0, 2, 0, 0, 0, 5, 0]);
        assert_eq!(&m[90..96], &[4, 6, 0xff, 5, 0, 1]);
        assert_eq!(m.len(), 96);
    }

    #[test]
    fn dsdt_describes_com1_and_virtio_devices() {
        let d = dsdt(&DEVS);
        assert_eq!(&d[..4], b"DSDT");
        assert_eq!(u32at(&d, 4) as usize, d.len());
        assert_eq!(sum(&d), 0);
        // EISAID("PNP0501") = 0x0105d041; IO(Decode16, 0x3f8, 0x3f8, 1, 8).
        assert!(find(&d, &[0x0c, 0x41, 0xd0, 0x05, 0x01]).is_some());
        assert!(find(&d, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]).is_some());
        // Extended interrupt: consumer, edge, active high, exclusive; GSI 4, 5, 6.
        for gsi in [4u8, 5, 6] {
            assert!(find(&d, &[0x89, 6, 0, 0x03, 1, gsi, 0, 0, 0]).is_some(), "gsi {gsi}");
        }
        assert_eq!(d.windows(9).filter(|w| *w == b"LNRO0005\0").count(), 2);
        assert!(find(&d, b"V000").is_some() && find(&d, b"V001").is_some());
        // Memory32Fixed(ReadWrite, 0xd0001000, 0x1000).
        assert!(find(&d, &[0x86, 9, 0, 1, 0, 0x10, 0, 0xd0, 0, 0x10, 0, 0]).is_some());
        // _CCA = One; Name(_S5_, Package(2) { 5, 0 }).
        assert!(find(&d, &[0x08, b'_', b'C', b'C', b'A', 0x01]).is_some());
        assert!(find(&d, &[0x08, b'_', b'S', b'5', b'_', 0x12, 5, 2, 0x0a, 5, 0]).is_some());
    }

    #[test]
    fn written_tables_fit_below_1_mib() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let many: Vec<_> =
            (0..18).map(|i| VirtioMmioDevice { base: 0xd000_0000 + i * 0x1000, gsi: 5 + i as u32 }).collect();
        assert_eq!(write(&mem, MAX_VCPUS, &many, &[]).unwrap(), 0xe0000);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(0xe0000)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        let small = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xe0000)]).unwrap();
        assert_eq!(write(&small, 1, &[], &[]), Err(AcpiError::Write(0xe0000)));
    }
}
