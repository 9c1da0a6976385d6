//! hvrun's VT-x core: the VM and its vCPUs, the run loop, one handler per exit reason,
//! instruction emulation, and the CPUID/MSR policy the guest sees.
pub mod clock;
pub mod controls;
pub mod cpuid;
pub mod dump;
pub mod emulate;
pub mod entry;
pub mod exit;
pub mod host;
pub mod inject;
pub mod irq;
pub mod irqchip;
pub mod kick;
#[cfg(test)]
mod kick_model;
pub mod kvmclock;
pub mod machine;
pub mod memory;
pub mod msr;
pub mod regs;
pub mod startup;
pub mod tpr;
pub mod trace;
pub mod vcpu;
pub mod vm;
