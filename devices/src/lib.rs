//! hvrun's platform devices and the buses that route guest accesses to them.
pub mod apic_bus;
pub mod apic_history;
pub mod apic_timers;
pub mod bus;
pub mod escape;
pub mod fw_cfg;
pub mod i8042;
pub mod ioapic;
pub mod irq;
pub mod lapic;
pub mod output;
pub mod power;
pub mod serial;
pub mod testdev;
pub mod tsc;
pub mod virtio;
