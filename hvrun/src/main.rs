//! The `hvrun` command. Booting a Linux kernel (`hvrun bzImage initrd`) is being built:
//! the VT-x core (crates hvf-sys and vmm) runs guests today through the tests; the boot
//! loader, platform devices and this command's options come next.
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("hvrun: booting a kernel is not available yet: this build has the VT-x core only (see README.md)");
    ExitCode::from(2)
}
