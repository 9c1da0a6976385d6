//! How interrupts are routed, stated once for both the ACPI MADT and the MP table so
//! that the two descriptions cannot disagree.
//!
//! ISA IRQ n reaches IOAPIC pin (GSI) n: the IOAPIC model must wire the PIT to pin 0 and
//! COM1 to pin 4. Both tables then need no interrupt source override; [`ISA_OVERRIDES`]
//! is where one goes if a device model ever wires a legacy IRQ elsewhere (ACPI 6.x
//! 5.2.12.5 Interrupt Source Override, MP spec 4.3.4 I/O Interrupt Assignment).

/// ISA IRQs 0..16.
pub const ISA_IRQS: u8 = 16;

/// MPS INTI flags (MP spec table 4-10; ACPI 6.x table 5.26 uses the same encoding):
/// polarity in bits 0-1, trigger mode in bits 2-3; 0 = "conforms to the bus" (ISA:
/// edge-triggered, active high).
pub const INTI_CONFORMS: u16 = 0;
pub const INTI_ACTIVE_HIGH: u16 = 0b01;
pub const INTI_ACTIVE_LOW: u16 = 0b11;
pub const INTI_EDGE: u16 = 0b01 << 2;
pub const INTI_LEVEL: u16 = 0b11 << 2;

/// An ISA IRQ that is not identity-mapped or not edge/active-high.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqOverride {
    pub isa_irq: u8,
    pub gsi: u32,
    pub flags: u16,
}

/// The machine's overrides: none, every ISA IRQ is identity-mapped.
pub const ISA_OVERRIDES: &[IrqOverride] = &[];

/// The IOAPIC pin and INTI flags of ISA IRQ `irq` under `overrides`.
pub fn isa_route(irq: u8, overrides: &[IrqOverride]) -> (u32, u16) {
    overrides.iter().find(|o| o.isa_irq == irq).map_or((irq as u32, INTI_CONFORMS), |o| (o.gsi, o.flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_unless_overridden() {
        assert_eq!(isa_route(4, ISA_OVERRIDES), (4, 0));
        let o = [IrqOverride { isa_irq: 0, gsi: 2, flags: INTI_ACTIVE_HIGH | INTI_EDGE }];
        assert_eq!(isa_route(0, &o), (2, 5));
        assert_eq!(isa_route(1, &o), (1, 0));
    }
}
