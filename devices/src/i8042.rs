//! A minimal i8042 keyboard controller, there for one thing: `reboot` through the
//! controller's reset line (command 0xfe to port 0x64), the path Linux tries after the
//! ACPI reset register. No keyboard: the data port reads 0, the status register reads
//! "output buffer empty, input buffer empty" so that the guest's wait loops end at once.
//!
//! The two ports are not contiguous (0x61-0x63 belong to others), so the device gives one
//! bus device per port: see [`I8042::data_port`] and [`I8042::command_port`].
use crate::bus::BusDevice;
use crate::power::{PowerControl, PowerEvent};
use std::sync::Arc;

pub const I8042_DATA_PORT: u64 = 0x60;
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// Controller command: pulse the output port's bit 0 (the CPU reset line).
pub const I8042_CMD_RESET: u8 = 0xfe;
/// The status register: OBF (bit 0) and IBF (bit 1) clear; system flag (bit 2) set, as
/// after a successful self-test.
pub const I8042_STATUS: u8 = 0x04;

pub struct I8042 {
    power: Arc<dyn PowerControl>,
}

impl I8042 {
    pub fn new(power: Arc<dyn PowerControl>) -> Arc<Self> {
        Arc::new(I8042 { power })
    }

    /// The bus device for [`I8042_DATA_PORT`] (one port).
    pub fn data_port(self: &Arc<Self>) -> Arc<dyn BusDevice> {
        Arc::new(Port { controller: self.clone(), command: false })
    }

    /// The bus device for [`I8042_COMMAND_PORT`] (one port).
    pub fn command_port(self: &Arc<Self>) -> Arc<dyn BusDevice> {
        Arc::new(Port { controller: self.clone(), command: true })
    }
}

struct Port {
    controller: Arc<I8042>,
    command: bool,
}

impl BusDevice for Port {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (true, Some(first)) = (self.command, data.first_mut()) {
            *first = I8042_STATUS;
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if self.command && offset == 0 && data.first() == Some(&I8042_CMD_RESET) {
            self.controller.power.power_event(PowerEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Events(Mutex<Vec<PowerEvent>>);
    impl PowerControl for Events {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn reset_command_resets_and_status_is_idle() {
        let events = Arc::new(Events::default());
        let kbc = I8042::new(events.clone());
        let mut io = Bus::new();
        io.insert(I8042_DATA_PORT, 1, kbc.data_port()).unwrap();
        io.insert(I8042_COMMAND_PORT, 1, kbc.command_port()).unwrap();
        let mut b = [0xffu8];
        io.read(I8042_COMMAND_PORT, &mut b);
        assert_eq!(b[0] & 0x03, 0, "no data, input buffer empty");
        io.read(I8042_DATA_PORT, &mut b);
        assert_eq!(b, [0]);
        // Other commands, and 0xfe on the data port, do nothing.
        io.write(I8042_COMMAND_PORT, &[0xaa]);
        io.write(I8042_DATA_PORT, &[I8042_CMD_RESET]);
        io.write(I8042_COMMAND_PORT, &[]);
        assert!(events.0.lock().unwrap().is_empty());
        io.write(I8042_COMMAND_PORT, &[I8042_CMD_RESET]);
        assert_eq!(*events.0.lock().unwrap(), [PowerEvent::Reset]);
    }
}
