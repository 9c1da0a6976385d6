//! Whether KVM sees the guest's XSETBV. On VT-x XSETBV always exits (SDM 26.1.2) and KVM
//! tracks the guest's XCR0 from it: the guest's AVX state is switched on every entry
//! and exit, and CPUID leaf 0xD's sizes follow. Nested under QEMU's TCG (the test
//! sandbox), the instruction runs without exiting: KVM keeps XCR0 at x87 only, reloads
//! that value on every entry, and answers CPUID 0xD with the x87-only size while the
//! guest believes it enabled AVX (Linux's "XSAVE consistency problem" warning, with
//! QEMU as with hvrun; Linux then falls back to FXSAVE, which is what keeps its SSE
//! registers safe). Where that is so the layer offers no XSAVE at all
//! (`cpuid::limit_to_kvm`): the guest sees a consistent CPU that KVM can run.
//!
//! The probe runs a throwaway 16-bit guest once per process: set CR4.OSXSAVE, XSETBV
//! x87|SSE|AVX, HLT; then reads XCR0 back through KVM.
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use std::sync::OnceLock;

/// XCR0 bits (SDM vol. 1, 13.3).
const XCR0_X87_SSE: u64 = 0b11;
const XCR0_AVX: u64 = 1 << 2;

/// The probe's code at 0x1000 (real mode, CS = 0):
/// mov eax, cr4; or eax, 1 << 18 (OSXSAVE); mov cr4, eax;
/// xor ecx, ecx; mov eax, 7; xor edx, edx; xsetbv; hlt
const CODE: [u8; 28] = [
    0x0f, 0x20, 0xe0, 0x66, 0x0d, 0x00, 0x00, 0x04, 0x00, 0x0f, 0x22, 0xe0, 0x66, 0x31, 0xc9, 0x66, 0xb8, 0x07, 0x00,
    0x00, 0x00, 0x66, 0x31, 0xd2, 0x0f, 0x01, 0xd1, 0xf4,
];
const CODE_GPA: u64 = 0x1000;
/// Every interrupt vector points at a HLT here, so that a fault ends the probe too.
const FAULT_HLT_GPA: u64 = 0x800;
const RAM: usize = 0x2000;
const HLT: u8 = 0xf4;

/// Whether the guest's XSETBV reaches KVM (`true` where it cannot be told, or where the
/// host has no AVX state to lose).
pub fn kvm_tracks_guest_xcr0() -> bool {
    static TRACKED: OnceLock<bool> = OnceLock::new();
    *TRACKED.get_or_init(|| {
        let host_xcr0 = {
            let r = std::arch::x86_64::__cpuid_count(0xd, 0);
            u64::from(r.edx) << 32 | u64::from(r.eax)
        };
        if host_xcr0 & XCR0_AVX == 0 {
            return true;
        }
        match probe() {
            Ok(tracked) => tracked,
            Err(e) => {
                log::debug!("hvf-sys/linux: XSETBV probe failed ({e}); assuming KVM tracks XCR0");
                true
            }
        }
    })
}

/// Page-aligned anonymous memory (KVM wants a memory slot's host address page-aligned).
struct Pages(*mut u8);

impl Pages {
    fn new() -> Result<Pages, String> {
        // SAFETY: a private anonymous mapping, checked below.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), RAM, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Pages(p as *mut u8))
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: RAM bytes mapped by `new`, owned by this value.
        unsafe { std::slice::from_raw_parts_mut(self.0, RAM) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `new`.
        unsafe { libc::munmap(self.0 as *mut libc::c_void, RAM) };
    }
}

fn probe() -> Result<bool, String> {
    // Declared first, dropped last: the VM's memory slot points into it.
    let mut pages = Pages::new()?;
    let ram = pages.bytes();
    let kvm = Kvm::new().map_err(|e| e.to_string())?;
    let vm = kvm.create_vm().map_err(|e| e.to_string())?;
    for vector in 0..256 {
        // Real-mode IVT entry: offset, then segment 0.
        ram[vector * 4..vector * 4 + 2].copy_from_slice(&(FAULT_HLT_GPA as u16).to_le_bytes());
    }
    ram[FAULT_HLT_GPA as usize] = HLT;
    ram[CODE_GPA as usize..CODE_GPA as usize + CODE.len()].copy_from_slice(&CODE);
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: RAM as u64,
        userspace_addr: ram.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `pages` outlives the VM and its vCPU (declared before them).
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| e.to_string())?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| e.to_string())?;
    let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(|e| e.to_string())?;
    vcpu.set_cpuid2(&cpuid).map_err(|e| e.to_string())?;
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    let mut regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    regs.rip = CODE_GPA;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;
    match vcpu.run().map_err(|e| e.to_string())? {
        VcpuExit::Hlt => {}
        other => return Err(format!("unexpected exit {other:?}")),
    }
    let rip = vcpu.get_regs().map_err(|e| e.to_string())?.rip;
    if rip != CODE_GPA + CODE.len() as u64 {
        return Err(format!("the probe faulted (stopped at {rip:#x})"));
    }
    let xcrs = vcpu.get_xcrs().map_err(|e| e.to_string())?;
    let xcr0 = xcrs.xcrs.iter().take(xcrs.nr_xcrs as usize).find(|x| x.xcr == 0).map_or(1, |x| x.value);
    let tracked = xcr0 & XCR0_AVX != 0;
    if !tracked {
        log::info!("hvf-sys/linux: KVM does not see the guest's XSETBV here (nested under TCG?): guests get no XSAVE");
    }
    Ok(tracked && xcr0 & XCR0_X87_SSE == XCR0_X87_SSE)
}
