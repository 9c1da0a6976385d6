//! Hypervisor.framework's Intel API (`Hypervisor/hv.h`, `hv_vmx.h`, `hv_arch_vmx.h`,
//! `hv_arch_x86.h`, `hv_error.h`), as C types, constants and functions.
//!
//! On macOS the functions link the framework. On Linux the same functions, with the same
//! signatures, are implemented over KVM by [`linux`]; the [`functions`] list is the one
//! place both are declared, so the two cannot drift apart.
#![allow(non_camel_case_types)]

pub mod absolute_time;
mod error;
mod types;
pub mod vmcs;
pub mod vmx;

#[macro_use]
mod functions;

#[cfg(target_os = "linux")]
pub mod linux;

pub use error::*;
pub use functions::*;
pub use types::*;
