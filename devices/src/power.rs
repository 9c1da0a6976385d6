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
