//! Power events a device can raise: the guest asked to power off or reset the machine,
//! or (test machines) to exit with a status.
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    PowerOff,
    Reset,
    /// A test guest's exit port: stop with this status.
    Exit(u32),
}

impl fmt::Display for PowerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PowerEvent::PowerOff => write!(f, "guest powered off"),
            PowerEvent::Reset => write!(f, "guest reset"),
            PowerEvent::Exit(code) => write!(f, "guest exited with status {code}"),
        }
    }
}

/// Whoever turns power events into a stop of the machine (the VMM).
pub trait PowerControl: Send + Sync {
    fn power_event(&self, event: PowerEvent);
}

/// I/O port of the ACPI sleep control register (FADT SLEEP_CONTROL_REG: SystemIO, 8 bits
/// wide, offset 0, access size 1 (byte)).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// I/O port of the ACPI sleep status register (FADT SLEEP_STATUS_REG, same format).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// I/O port of the ACPI reset register (FADT RESET_REG, same format; set RESET_REG_SUP).
pub const ACPI_RESET_PORT: u16 = 0x602;
/// The value the guest writes to the reset register (FADT RESET_VALUE).
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// Ports the device decodes, from [`ACPI_SLEEP_CONTROL_PORT`].
pub const ACPI_PM_PORT_COUNT: u64 = 3;
/// The SLP_TYP of S5 (soft off): the DSDT's `\_S5` package must hold this value
/// (`Name(_S5, Package() { 5, 0 })`).
pub const ACPI_S5_SLP_TYP: u8 = 5;

/// SLP_EN, bit 5 of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP, bits 4:2.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7 << SLP_TYP_SHIFT;

/// The hardware-reduced ACPI registers of a FADT without PM1 blocks: sleep control,
/// sleep status and reset, one byte each at [`ACPI_SLEEP_CONTROL_PORT`] +0/+1/+2. Entering
/// S5 powers off; the reset value resets. Other sleep states are not supported (logged,
/// ignored: the DSDT should only declare `\_S5`). The status register reads 0 (WAK_STS
/// never set: the machine never wakes from a sleep state).
pub struct AcpiPmDevice {
    power: std::sync::Arc<dyn PowerControl>,
}

impl AcpiPmDevice {
    pub fn new(power: std::sync::Arc<dyn PowerControl>) -> Self {
        AcpiPmDevice { power }
    }
}

impl crate::bus::BusDevice for AcpiPmDevice {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            0 if value & SLP_EN != 0 => {
                let slp_typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                if slp_typ == ACPI_S5_SLP_TYP {
                    self.power.power_event(PowerEvent::PowerOff);
                } else {
                    log::warn!("acpi: guest asked for unsupported sleep type {slp_typ}");
                }
            }
            2 if value == ACPI_RESET_VALUE => self.power.power_event(PowerEvent::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub(crate) struct Events(pub(crate) Mutex<Vec<PowerEvent>>);
    impl PowerControl for Events {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let events = Arc::new(Events::default());
        let pm = AcpiPmDevice::new(events.clone());
        // What Linux's acpi_hw_extended_sleep writes: status first (WAK_STS, W1C), then
        // SLP_TYP without and with SLP_EN.
        pm.write(1, &[0x80]);
        pm.write(0, &[ACPI_S5_SLP_TYP << 2]);
        assert!(events.0.lock().unwrap().is_empty(), "no SLP_EN, no sleep");
        pm.write(0, &[(ACPI_S5_SLP_TYP << 2) | 0x20]);
        assert_eq!(*events.0.lock().unwrap(), [PowerEvent::PowerOff]);
        // S3 is not supported; other values at the reset register do nothing.
        pm.write(0, &[(3 << 2) | 0x20]);
        pm.write(2, &[0x06]);
        pm.write(2, &[]);
        pm.write(u64::MAX, &[1]);
        assert_eq!(events.0.lock().unwrap().len(), 1);
        pm.write(2, &[ACPI_RESET_VALUE]);
        assert_eq!(*events.0.lock().unwrap(), [PowerEvent::PowerOff, PowerEvent::Reset]);
        let mut status = [0xffu8];
        pm.read(1, &mut status);
        assert_eq!(status, [0]);
        assert_eq!(u64::from(ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT), ACPI_PM_PORT_COUNT - 1);
    }
}
