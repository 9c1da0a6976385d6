//! The Linux layer of hvf-sys on a real KVM: tiny real-mode guests driven through the raw
//! `hv_*` API, checking that each exit looks like VT-x's (reason, qualification, RIP at
//! the instruction, instruction length, nothing executed).
//!
//! These need a KVM that runs guests properly: run them in the sandbox
//! (`scripts/sandbox.sh -- <test binary> --test-threads=1`). One VM per process, so every
//! test holds VM_LOCK and tears its VM down (vCPU on its own thread first).
#![cfg(target_os = "linux")]

use hvf_sys::linux::{hv_linux_kvm_tracks_guest_xcr0, hv_linux_set_kick_mode, hv_linux_vcpu_set_cpuid, KickMode};
use hvf_sys::vmcs::*;
use hvf_sys::vmx::*;
use hvf_sys::*;
use std::sync::{Mutex, MutexGuard};

static VM_LOCK: Mutex<()> = Mutex::new(());

/// Guest RAM: 512 KiB at 0; everything above is unmapped (MMIO).
const RAM_SIZE: usize = 0x8_0000;
/// Where test code is placed and starts.
const CODE: u64 = 0x1000;
/// An unmapped guest-physical page used as MMIO in real mode (DS = 0xd000).
const MMIO_SEGMENT: u64 = 0xd000;

fn ok(code: hv_return_t, what: &str) {
    assert_eq!(code, HV_SUCCESS, "{what}: {}", HvError(code));
}

/// A VM with one vCPU in real mode, torn down on drop.
struct Guest {
    ram: *mut u8,
    vcpu: hv_vcpuid_t,
    _lock: MutexGuard<'static, ()>,
}

impl Guest {
    fn new(code: &[u8]) -> Guest {
        let lock = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // The strict default; tests of the other mode choose it after this.
        hv_linux_set_kick_mode(KickMode::LostOutsideRun);
        // SAFETY: anonymous private mapping, checked below.
        let ram = unsafe {
            libc::mmap(std::ptr::null_mut(), RAM_SIZE, libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(ram, libc::MAP_FAILED);
        let ram = ram as *mut u8;
        unsafe {
            ok(hv_vm_create(HV_VM_DEFAULT), "hv_vm_create");
            ok(hv_vm_map(ram as _, 0, RAM_SIZE, HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC), "hv_vm_map");
        }
        let mut vcpu = 0;
        unsafe { ok(hv_vcpu_create(&mut vcpu, HV_VCPU_DEFAULT), "hv_vcpu_create") };
        let g = Guest { ram, vcpu, _lock: lock };
        g.poke(CODE, code);
        g.setup_real_mode();
        g
    }

    fn poke(&self, gpa: u64, bytes: &[u8]) {
        assert!(gpa as usize + bytes.len() <= RAM_SIZE);
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ram.add(gpa as usize), bytes.len()) };
    }

    fn cap(&self, cap: hv_vmx_capability_t) -> u64 {
        let mut v = 0;
        unsafe { ok(hv_vmx_read_capability(cap, &mut v), "hv_vmx_read_capability") };
        v
    }

    fn w(&self, field: u32, value: u64) {
        unsafe { ok(hv_vmx_vcpu_write_vmcs(self.vcpu, field, value), vmcs_field_name(field).unwrap_or("?")) };
    }

    fn r(&self, field: u32) -> u64 {
        let mut v = 0;
        unsafe { ok(hv_vmx_vcpu_read_vmcs(self.vcpu, field, &mut v), vmcs_field_name(field).unwrap_or("?")) };
        v
    }

    fn reg(&self, reg: hv_x86_reg_t) -> u64 {
        let mut v = 0;
        unsafe { ok(hv_vcpu_read_register(self.vcpu, reg, &mut v), hv_x86_reg_name(reg)) };
        v
    }

    fn set_reg(&self, reg: hv_x86_reg_t, value: u64) {
        unsafe { ok(hv_vcpu_write_register(self.vcpu, reg, value), hv_x86_reg_name(reg)) };
    }

    /// The controls hvrun uses, computed from the capabilities.
    fn controls(&self) -> (u32, u32, u32, u32, u32) {
        (
            cap2ctrl(self.cap(HV_VMX_CAP_PINBASED), (PinBased::EXTINT | PinBased::NMI).bits()),
            cap2ctrl(self.cap(HV_VMX_CAP_PROCBASED), (ProcBased::HLT | ProcBased::UNCOND_IO
                | ProcBased::MSR_BITMAPS | ProcBased::TSC_OFFSET | ProcBased::SECONDARY).bits()),
            cap2ctrl(self.cap(HV_VMX_CAP_PROCBASED2), (ProcBased2::EPT | ProcBased2::UNRESTRICTED).bits()),
            cap2ctrl(self.cap(HV_VMX_CAP_ENTRY), EntryControls::LOAD_EFER.bits()),
            cap2ctrl(self.cap(HV_VMX_CAP_EXIT), (ExitControls::HOST_IA32E | ExitControls::LOAD_EFER).bits()),
        )
    }

    /// Real mode: CS 0 AR 0x9b, data AR 0x93, limits 0xffff, TR a busy 16-bit TSS,
    /// LDTR unusable, CR0 = ET|NE, CR4 = VMXE, RFLAGS = 2, IVT at 0.
    fn setup_real_mode(&self) {
        let (pin, proc, proc2, entry, exit) = self.controls();
        self.w(VMCS_CTRL_PIN_BASED, pin as u64);
        self.w(VMCS_CTRL_CPU_BASED, proc as u64);
        self.w(VMCS_CTRL_CPU_BASED2, proc2 as u64);
        self.w(VMCS_CTRL_VMENTRY_CONTROLS, entry as u64);
        self.w(VMCS_CTRL_VMEXIT_CONTROLS, exit as u64);
        for (sel, limit, ar, base) in [
            (VMCS_GUEST_CS, VMCS_GUEST_CS_LIMIT, VMCS_GUEST_CS_AR, VMCS_GUEST_CS_BASE),
            (VMCS_GUEST_DS, VMCS_GUEST_DS_LIMIT, VMCS_GUEST_DS_AR, VMCS_GUEST_DS_BASE),
            (VMCS_GUEST_ES, VMCS_GUEST_ES_LIMIT, VMCS_GUEST_ES_AR, VMCS_GUEST_ES_BASE),
            (VMCS_GUEST_FS, VMCS_GUEST_FS_LIMIT, VMCS_GUEST_FS_AR, VMCS_GUEST_FS_BASE),
            (VMCS_GUEST_GS, VMCS_GUEST_GS_LIMIT, VMCS_GUEST_GS_AR, VMCS_GUEST_GS_BASE),
            (VMCS_GUEST_SS, VMCS_GUEST_SS_LIMIT, VMCS_GUEST_SS_AR, VMCS_GUEST_SS_BASE),
        ] {
            self.w(sel, 0);
            self.w(limit, 0xffff);
            self.w(ar, if sel == VMCS_GUEST_CS { 0x9b } else { 0x93 });
            self.w(base, 0);
        }
        self.w(VMCS_GUEST_TR, 0);
        self.w(VMCS_GUEST_TR_LIMIT, 0xffff);
        self.w(VMCS_GUEST_TR_AR, 0x8b);
        self.w(VMCS_GUEST_TR_BASE, 0);
        self.w(VMCS_GUEST_LDTR, 0);
        self.w(VMCS_GUEST_LDTR_LIMIT, 0);
        self.w(VMCS_GUEST_LDTR_AR, AR_UNUSABLE as u64);
        self.w(VMCS_GUEST_LDTR_BASE, 0);
        self.w(VMCS_GUEST_GDTR_BASE, 0);
        self.w(VMCS_GUEST_GDTR_LIMIT, 0xffff);
        self.w(VMCS_GUEST_IDTR_BASE, 0);
        self.w(VMCS_GUEST_IDTR_LIMIT, 0x3ff);
        self.w(VMCS_GUEST_CR0, 0x30);
        self.w(VMCS_GUEST_CR3, 0);
        self.w(VMCS_GUEST_CR4, 1 << 13);
        self.w(VMCS_GUEST_IA32_EFER, 0);
        self.w(VMCS_GUEST_RFLAGS, 2);
        self.w(VMCS_GUEST_RIP, CODE);
        self.w(VMCS_GUEST_RSP, 0x8000);
        self.w(VMCS_GUEST_IGNORE_IRQ, 0);
        self.w(VMCS_GUEST_ACTIVITY_STATE, 0);
    }

    fn run(&self) -> u32 {
        unsafe { ok(hv_vcpu_run(self.vcpu), "hv_vcpu_run") };
        self.r(VMCS_RO_EXIT_REASON) as u32
    }

    fn rip(&self) -> u64 {
        self.r(VMCS_GUEST_RIP)
    }

    /// What a VMM does after emulating the instruction: RIP past it.
    fn skip(&self) {
        let len = self.r(VMCS_RO_VMEXIT_INSTR_LEN);
        self.w(VMCS_GUEST_RIP, self.rip() + len);
    }

    fn io(&self) -> IoQualification {
        IoQualification::decode(self.r(VMCS_RO_EXIT_QUALIFIC))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        unsafe {
            let _ = hv_vcpu_destroy(self.vcpu);
            let _ = hv_vm_destroy();
            libc::munmap(self.ram as _, RAM_SIZE);
        }
    }
}

#[test]
fn port_out_then_in_exit_at_the_instruction() {
    // 1000: mov dx, 0x3f8   BA F8 03
    // 1003: mov al, 'A'     B0 41
    // 1005: out dx, al      EE
    // 1006: in al, dx       EC
    // 1007: hlt             F4
    let g = Guest::new(&[0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xec, 0xf4]);
    assert_eq!(g.run(), VMX_REASON_IO);
    let q = g.io();
    assert_eq!((q.port, q.size, q.is_in, q.string, q.rep, q.immediate), (0x3f8, 1, false, false, false, false));
    assert_eq!(g.rip(), 0x1005, "RIP at the out");
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 1);
    assert_eq!(g.reg(HV_X86_RAX) & 0xff, 0x41);
    // Nothing executed: running again without advancing RIP exits on the same out.
    assert_eq!(g.run(), VMX_REASON_IO);
    assert_eq!(g.rip(), 0x1005);
    assert!(!g.io().is_in);
    g.skip();
    assert_eq!(g.run(), VMX_REASON_IO);
    let q = g.io();
    assert_eq!((q.port, q.size, q.is_in), (0x3f8, 1, true));
    assert_eq!(g.rip(), 0x1006, "RIP at the in");
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 1);
    assert_eq!(g.reg(HV_X86_RAX) & 0xff, 0x41, "AL untouched by the exit");
    // The VMM emulates the IN: AL = 0x5a.
    g.set_reg(HV_X86_RAX, 0x5a);
    g.skip();
    assert_eq!(g.run(), VMX_REASON_HLT);
    assert_eq!(g.rip(), 0x1007, "RIP at the hlt");
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 1);
    assert_eq!(g.reg(HV_X86_RAX) & 0xff, 0x5a);
}

#[test]
fn out_with_an_immediate_port() {
    // 1000: mov al, 0x12    B0 12
    // 1002: out 0x80, al    E6 80
    // 1004: hlt             F4
    let g = Guest::new(&[0xb0, 0x12, 0xe6, 0x80, 0xf4]);
    assert_eq!(g.run(), VMX_REASON_IO);
    let q = g.io();
    assert_eq!((q.port, q.size, q.is_in, q.immediate), (0x80, 1, false, true));
    assert_eq!(g.rip(), 0x1002);
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 2);
    g.skip();
    assert_eq!(g.run(), VMX_REASON_HLT);
    assert_eq!(g.rip(), 0x1004);
}

#[test]
fn mmio_write_and_read_are_ept_violations() {
    // DS = 0xd000 (base 0xd0000, unmapped).
    // 1000: mov byte [0x10], 0x42   C6 06 10 00 42
    // 1005: mov bx, 0x30            BB 30 00
    // 1008: mov [bx+8], ax          89 47 08
    // 100b: mov al, [0x20]          A0 20 00
    // 100e: hlt                     F4
    let g = Guest::new(&[0xc6, 0x06, 0x10, 0x00, 0x42, 0xbb, 0x30, 0x00, 0x89, 0x47, 0x08, 0xa0, 0x20, 0x00, 0xf4]);
    g.w(VMCS_GUEST_DS, MMIO_SEGMENT);
    g.w(VMCS_GUEST_DS_BASE, MMIO_SEGMENT << 4);
    g.set_reg(HV_X86_RAX, 0x1234);
    let linear_valid = EptQualification::LINEAR_VALID.bits();

    assert_eq!(g.run(), VMX_REASON_EPT_VIOLATION);
    assert_eq!(g.r(VMCS_GUEST_PHYSICAL_ADDRESS), 0xd0010);
    let q = g.r(VMCS_RO_EXIT_QUALIFIC);
    assert_eq!(q & 3, EptQualification::WRITE.bits(), "write, not read: {q:#x}");
    assert_eq!(q & linear_valid, 0);
    assert_eq!(g.rip(), 0x1000);
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 5);
    g.skip();

    assert_eq!(g.run(), VMX_REASON_EPT_VIOLATION);
    assert_eq!(g.r(VMCS_GUEST_PHYSICAL_ADDRESS), 0xd0038);
    assert_eq!(g.r(VMCS_RO_EXIT_QUALIFIC) & 3, EptQualification::WRITE.bits());
    assert_eq!(g.rip(), 0x1008, "RIP at mov [bx+8], ax");
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 3);
    assert_eq!(g.reg(HV_X86_RBX), 0x30);
    g.skip();

    assert_eq!(g.run(), VMX_REASON_EPT_VIOLATION);
    assert_eq!(g.r(VMCS_GUEST_PHYSICAL_ADDRESS), 0xd0020);
    let q = g.r(VMCS_RO_EXIT_QUALIFIC);
    assert_eq!(q & 3, EptQualification::READ.bits(), "read: {q:#x}");
    assert_eq!(g.rip(), 0x100b);
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 3);
    assert_eq!(g.reg(HV_X86_RAX), 0x1234, "AL not loaded by the exit");
    g.set_reg(HV_X86_RAX, 0x99);
    g.skip();
    assert_eq!(g.run(), VMX_REASON_HLT);
    assert_eq!(g.rip(), 0x100e);
    assert_eq!(g.reg(HV_X86_RAX), 0x99);
}

#[test]
fn hlt_exits_at_the_hlt() {
    // 1000: nop   90
    // 1001: hlt   F4
    let g = Guest::new(&[0x90, 0xf4]);
    assert_eq!(g.run(), VMX_REASON_HLT);
    assert_eq!(g.rip(), 0x1001);
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 1);
}

#[test]
fn rdmsr_and_wrmsr_exit_with_the_guest_registers() {
    // 1000: mov ecx, 0x1b          66 B9 1B 00 00 00
    // 1006: rdmsr                  0F 32
    // 1008: mov eax, 0x11223344    66 B8 44 33 22 11
    // 100e: mov edx, 0x55667788    66 BA 88 77 66 55
    // 1014: wrmsr                  0F 30
    // 1016: hlt                    F4
    let g = Guest::new(&[0x66, 0xb9, 0x1b, 0, 0, 0, 0x0f, 0x32, 0x66, 0xb8, 0x44, 0x33, 0x22, 0x11,
        0x66, 0xba, 0x88, 0x77, 0x66, 0x55, 0x0f, 0x30, 0xf4]);
    g.set_reg(HV_X86_RAX, 0xaaaa);
    assert_eq!(g.run(), VMX_REASON_RDMSR);
    assert_eq!(g.reg(HV_X86_RCX), 0x1b);
    assert_eq!(g.rip(), 0x1006);
    assert_eq!(g.r(VMCS_RO_VMEXIT_INSTR_LEN), 2);
    assert_eq!(g.reg(HV_X86_RAX), 0xaaaa, "EAX not written by the exit");
    g.set_reg(HV_X86_RAX, 0xfee0_0900);
    g.set_reg(HV_X86_RDX, 0);
    g.skip();
    assert_eq!(g.run(), VMX_REASON_WRMSR);
    assert_eq!(g.reg(HV_X86_RCX), 0x1b);
    assert_eq!(g.reg(HV_X86_RAX), 0x1122_3344);
    assert_eq!(g.reg(HV_X86_RDX), 0x5566_7788);
    assert_eq!(g.rip(), 0x1014);
    g.skip();
    assert_eq!(g.run(), VMX_REASON_HLT);
}

#[test]
fn kick_from_another_thread_stops_a_spinning_guest() {
    // 1000: jmp $   EB FE
    let g = Guest::new(&[0xeb, 0xfe]);
    let mut id = g.vcpu;
    let kicker = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        unsafe { hv_vcpu_interrupt(&mut id, 1) }
    });
    assert_eq!(g.run(), VMX_REASON_IRQ);
    assert_eq!(kicker.join().unwrap(), HV_SUCCESS);
    assert_eq!(g.rip(), 0x1000);
}

/// A vCPU the VMM puts in the HLT activity state sleeps in hv_vcpu_run until a kick
/// (SDM 25.4.2): the kick from another thread ends it with reason 1, nothing executed.
#[test]
fn hlt_activity_state_sleeps_until_kicked() {
    // 1000: jmp $   EB FE
    let g = Guest::new(&[0xeb, 0xfe]);
    g.w(VMCS_GUEST_ACTIVITY_STATE, ACTIVITY_HLT as u64);
    let mut id = g.vcpu;
    let kicker = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        unsafe { hv_vcpu_interrupt(&mut id, 1) }
    });
    assert_eq!(g.run(), VMX_REASON_IRQ);
    assert_eq!(kicker.join().unwrap(), HV_SUCCESS);
    assert_eq!(g.rip(), 0x1000);
}

/// The kick a vCPU outside run gets from another thread.
fn kick_from_another_thread(g: &Guest) {
    let mut id = g.vcpu;
    assert_eq!(std::thread::spawn(move || unsafe { hv_vcpu_interrupt(&mut id, 1) }).join().unwrap(), HV_SUCCESS);
}

#[test]
fn kick_before_run_is_lost_by_default() {
    // 1000: hlt   F4
    let g = Guest::new(&[0xf4]);
    kick_from_another_thread(&g);
    assert_eq!(g.run(), VMX_REASON_HLT, "a kick outside run is dropped, as HVF may drop it");
}

#[test]
fn kick_before_run_exits_at_once_when_kicks_are_kept() {
    // 1000: hlt   F4
    let g = Guest::new(&[0xf4]);
    hv_linux_set_kick_mode(KickMode::KeptUntilRun);
    let mut id = g.vcpu;
    let code = std::thread::spawn(move || unsafe { hv_vcpu_interrupt(&mut id, 1) }).join().unwrap();
    assert_eq!(code, HV_SUCCESS);
    assert_eq!(g.run(), VMX_REASON_IRQ);
    assert_eq!(g.rip(), 0x1000, "nothing ran");
    // The kick is consumed: the next run reaches the hlt.
    assert_eq!(g.run(), VMX_REASON_HLT);
}

/// IVT entry `vector` -> 0000:handler, and a handler that writes 0x77 to port 0x81.
fn install_handler(g: &Guest, vector: u8, handler: u16) {
    g.poke(vector as u64 * 4, &[handler as u8, (handler >> 8) as u8, 0, 0]);
    // handler: mov al, 0x77 (B0 77); out 0x81, al (E6 81); iret (CF)
    g.poke(handler as u64, &[0xb0, 0x77, 0xe6, 0x81, 0xcf]);
}

#[test]
fn interrupt_window_opens_after_the_sti_shadow_and_injection_is_delivered() {
    // 1000: cli           FA
    // 1001: out 0x80, al  E6 80
    // 1003: sti           FB
    // 1004: nop           90
    // 1005: jmp $         EB FE
    let g = Guest::new(&[0xfa, 0xe6, 0x80, 0xfb, 0x90, 0xeb, 0xfe]);
    install_handler(&g, 0x20, 0x2000);
    assert_eq!(g.run(), VMX_REASON_IO);
    assert_eq!(g.rip(), 0x1001);
    let proc = g.r(VMCS_CTRL_CPU_BASED);
    g.w(VMCS_CTRL_CPU_BASED, proc | ProcBased::IRQ_WND.bits() as u64);
    g.skip();
    assert_eq!(g.run(), VMX_REASON_IRQ_WND);
    assert_eq!(g.rip(), 0x1005, "window opens after the instruction in the STI shadow");
    assert_eq!(g.reg(HV_X86_RFLAGS) & 0x200, 0x200);
    // Inject vector 0x20 as the VMM does once the window is open.
    g.w(VMCS_CTRL_CPU_BASED, proc);
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, (IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x20) as u64);
    assert_eq!(g.run(), VMX_REASON_IO);
    assert_eq!(g.io().port, 0x81);
    assert_eq!(g.rip(), 0x2002, "inside the IVT handler");
    assert_eq!(g.reg(HV_X86_RAX) & 0xff, 0x77);
    assert_eq!(g.r(VMCS_CTRL_VMENTRY_IRQ_INFO) as u32 & IRQ_INFO_VALID, 0, "valid bit cleared on entry");
}

/// `code` (an STI at 0x1000) as an exit right after the STI leaves it: at 0x1001, IF=1,
/// blocking by STI, and the VMM asking for the interrupt window.
fn in_the_sti_shadow_asking_for_the_window(code: &[u8]) -> Guest {
    let g = Guest::new(code);
    g.w(VMCS_GUEST_RIP, 0x1001);
    g.w(VMCS_GUEST_RFLAGS, 0x202);
    g.w(VMCS_GUEST_IGNORE_IRQ, Interruptibility::STI.bits() as u64);
    assert_eq!(g.r(VMCS_GUEST_IGNORE_IRQ), Interruptibility::STI.bits() as u64, "the shadow reads back");
    let proc = g.r(VMCS_CTRL_CPU_BASED);
    g.w(VMCS_CTRL_CPU_BASED, proc | ProcBased::IRQ_WND.bits() as u64);
    g
}

/// Linux idles with `sti; hlt`: an interrupt may arrive only once HLT has begun, so its
/// handler returns past the HLT. A VMM that injected one between the two (an exit in the
/// STI shadow, then an interrupt window that opened too early) would send the CPU to
/// sleep with the wake-up it just handled undone: a --cpus 4 boot hung that way.
#[test]
fn the_sti_shadow_before_hlt_survives_an_exit_and_holds_the_window_shut() {
    // 1000: sti   FB
    // 1001: hlt   F4
    // 1002: jmp $ EB FE
    let g = in_the_sti_shadow_asking_for_the_window(&[0xfb, 0xf4, 0xeb, 0xfe]);
    // SDM 26.7.5: no interrupt-window exit before the instruction in the shadow.
    assert_eq!(g.run(), VMX_REASON_HLT, "the HLT in the shadow runs before the window opens");
    assert_eq!(g.rip(), 0x1001);
}

/// Kicks before the shadowed HLT has run (IPIs to a vCPU on its way to idle) end runs
/// with nothing executed, and leave the shadow where it was: however many come first, the
/// window stays shut until the HLT has run. (A layer that gave up on a shadow after a few
/// entries at one RIP hung a --cpus 4 boot in CI this way.)
#[test]
fn kicks_before_the_hlt_in_an_sti_shadow_keep_the_window_shut() {
    // 1000: sti   FB
    // 1001: hlt   F4
    // 1002: jmp $ EB FE
    let g = in_the_sti_shadow_asking_for_the_window(&[0xfb, 0xf4, 0xeb, 0xfe]);
    hv_linux_set_kick_mode(KickMode::KeptUntilRun);
    for kick in 0..8 {
        kick_from_another_thread(&g);
        assert_eq!(g.run(), VMX_REASON_IRQ, "kick {kick} ends the run");
        assert_eq!(g.rip(), 0x1001, "kick {kick}: nothing ran");
        assert_eq!(g.r(VMCS_GUEST_IGNORE_IRQ), Interruptibility::STI.bits() as u64, "kick {kick}: the shadow stays");
    }
    assert_eq!(g.run(), VMX_REASON_HLT, "the HLT in the shadow runs before the window opens");
    assert_eq!(g.rip(), 0x1001);
}

/// The test sandbox's nested SVM loses the shadow of `sti` right before `hlt` at some
/// exits (IF=1, no blocking, RIP at the HLT) and then calls the window open there; an
/// interrupt delivered at the HLT returns to it, and a --cpus 4 boot hung with a woken
/// task queued on a halted vCPU. The layer puts such a shadow back: the window stays shut
/// until the HLT has run, and a kick's exit shows the blocking by STI.
#[test]
fn a_shadow_lost_between_sti_and_hlt_is_put_back() {
    // 1000: sti   FB
    // 1001: hlt   F4
    // 1002: jmp $ EB FE
    let lost = || {
        let g = in_the_sti_shadow_asking_for_the_window(&[0xfb, 0xf4, 0xeb, 0xfe]);
        g.w(VMCS_GUEST_IGNORE_IRQ, 0);
        g
    };
    let g = lost();
    assert_eq!(g.run(), VMX_REASON_HLT, "no window at the HLT: it runs first");
    assert_eq!(g.rip(), 0x1001);
    drop(g); // one guest at a time
    let g = lost();
    hv_linux_set_kick_mode(KickMode::KeptUntilRun);
    kick_from_another_thread(&g);
    assert_eq!(g.run(), VMX_REASON_IRQ);
    assert_eq!(g.rip(), 0x1001, "nothing ran");
    assert_eq!(g.r(VMCS_GUEST_IGNORE_IRQ), Interruptibility::STI.bits() as u64, "the shadow is back");
    assert_eq!(g.run(), VMX_REASON_HLT);
    drop(g);
    // Anywhere else IF=1 without a shadow is open: the window opens at once.
    let g = lost();
    g.w(VMCS_GUEST_RIP, 0x1002);
    assert_eq!(g.run(), VMX_REASON_IRQ_WND);
    assert_eq!(g.rip(), 0x1002);
}

/// The same rule when the instruction in the shadow does not exit: it runs before the
/// window opens. The layer opens it at the run's next exit (here its deadline), later than
/// VT-x's exit right after the instruction, never before the instruction.
#[test]
fn the_interrupt_window_opens_after_the_instruction_in_an_sti_shadow() {
    // 1000: sti   FB
    // 1001: nop   90
    // 1002: jmp $ EB FE
    let g = in_the_sti_shadow_asking_for_the_window(&[0xfb, 0x90, 0xeb, 0xfe]);
    let soon = || hvf_sys::absolute_time::now() + hvf_sys::absolute_time::from_duration(std::time::Duration::from_millis(20));
    unsafe { ok(hv_vcpu_run_until(g.vcpu, soon()), "hv_vcpu_run_until") };
    let first = g.r(VMCS_RO_EXIT_REASON) as u32;
    assert!(first == VMX_REASON_VMX_TIMER_EXPIRED || first == VMX_REASON_IRQ_WND, "exit {first}");
    assert_eq!(g.rip(), 0x1002, "the nop ran first");
    assert_eq!(g.r(VMCS_GUEST_IGNORE_IRQ), 0, "no shadow left");
    unsafe { ok(hv_vcpu_run_until(g.vcpu, soon()), "hv_vcpu_run_until") };
    assert_eq!(g.r(VMCS_RO_EXIT_REASON) as u32, VMX_REASON_IRQ_WND, "out of the shadow, the window opens");
    assert_eq!(g.rip(), 0x1002);
}

#[test]
fn injected_external_interrupt_runs_the_ivt_handler() {
    // 1000: jmp $   EB FE   (RFLAGS.IF = 1)
    let g = Guest::new(&[0xeb, 0xfe]);
    install_handler(&g, 0x30, 0x3000);
    g.w(VMCS_GUEST_RFLAGS, 0x202);
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, (IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x30) as u64);
    assert_eq!(g.run(), VMX_REASON_IO);
    assert_eq!(g.io().port, 0x81);
    assert_eq!(g.rip(), 0x3002);
    // The handler's frame returns to the interrupted jmp.
    let sp = g.reg(HV_X86_RSP) as usize;
    let ip = unsafe { *g.ram.add(sp) as u64 | (*g.ram.add(sp + 1) as u64) << 8 };
    assert_eq!(ip, 0x1000);
}

/// A kick that lands between the VMM's injection and the guest's entry: the interrupt
/// was not delivered, so the exit reports it as IDT-vectoring information (SDM 28.2.4)
/// and the VMM injects it again; it then reaches the handler once, not lost, not twice.
#[test]
fn an_interrupt_cut_short_by_a_kick_comes_back_as_idt_vectoring_info() {
    // 1000: jmp $   EB FE   (RFLAGS.IF = 1)
    let g = Guest::new(&[0xeb, 0xfe]);
    hv_linux_set_kick_mode(KickMode::KeptUntilRun);
    install_handler(&g, 0x30, 0x3000);
    g.w(VMCS_GUEST_RFLAGS, 0x202);
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, (IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x30) as u64);
    let mut id = g.vcpu;
    assert_eq!(std::thread::spawn(move || unsafe { hv_vcpu_interrupt(&mut id, 1) }).join().unwrap(), HV_SUCCESS);
    assert_eq!(g.run(), VMX_REASON_IRQ);
    let idt = g.r(VMCS_RO_IDT_VECTOR_INFO) as u32;
    assert_eq!(idt, IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x30, "undelivered: {idt:#x}");
    assert_eq!(g.rip(), 0x1000);
    // Re-injected as a VMM does: delivered to the handler exactly once.
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, idt as u64);
    assert_eq!(g.run(), VMX_REASON_IO);
    assert_eq!((g.io().port, g.rip()), (0x81, 0x3002));
    assert_eq!(g.r(VMCS_RO_IDT_VECTOR_INFO), 0);
}

/// An interrupt a kick left undelivered, which the VMM then drops (an INIT arrived): a
/// later system-register write must not bring it back. KVM keeps the vector in the sync
/// area's sregs bitmap, and writing that back made KVM deliver it with RFLAGS.IF=0 (a
/// re-onlined AP triple-faulted in its trampoline).
#[test]
fn a_dropped_interrupt_does_not_come_back_with_a_system_register_write() {
    // 1000: out 0x80, al  E6 80
    // 1002: jmp $         EB FE
    let g = Guest::new(&[0xe6, 0x80, 0xeb, 0xfe]);
    hv_linux_set_kick_mode(KickMode::KeptUntilRun);
    install_handler(&g, 0x30, 0x3000);
    g.w(VMCS_GUEST_RFLAGS, 0x202);
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, (IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x30) as u64);
    kick_from_another_thread(&g);
    assert_eq!(g.run(), VMX_REASON_IRQ);
    assert_eq!(g.r(VMCS_RO_IDT_VECTOR_INFO) as u32, IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x30);
    // Dropped, interrupts off, and the segments written again (as a SIPI does).
    g.w(VMCS_GUEST_RFLAGS, 0x2);
    g.w(VMCS_GUEST_DS_BASE, 0);
    g.w(VMCS_GUEST_CR0, 0x30);
    assert_eq!(g.run(), VMX_REASON_IO);
    assert_eq!((g.io().port, g.rip()), (0x80, 0x1000), "the guest's own out, not the handler's");
    g.skip();
    g.w(VMCS_GUEST_ES_BASE, 0);
    let mut id = g.vcpu;
    assert_eq!(std::thread::spawn(move || unsafe { hv_vcpu_interrupt(&mut id, 1) }).join().unwrap(), HV_SUCCESS);
    assert_eq!(g.run(), VMX_REASON_IRQ, "still spinning at the jmp");
    assert_eq!(g.rip(), 0x1002);
    assert_eq!(g.r(VMCS_RO_IDT_VECTOR_INFO), 0);
}

/// The boot hang of issue 8: an exception the VMM queued (the #GP for an unknown MSR)
/// and a kick before the entry. The exit must report the exception as IDT-vectoring
/// information; it used to stay inside KVM with the entry field showing free, the VMM
/// then injected the timer interrupt, and KVM, holding both, dropped the interrupt.
#[test]
fn an_exception_cut_short_by_a_kick_comes_back_as_idt_vectoring_info() {
    // 1000: jmp $   EB FE
    let g = Guest::new(&[0xeb, 0xfe]);
    hv_linux_set_kick_mode(KickMode::KeptUntilRun);
    install_handler(&g, 13, 0x2000);
    let gp = IRQ_INFO_VALID | IRQ_INFO_HARD_EXC | 13;
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, gp as u64);
    kick_from_another_thread(&g);
    assert_eq!(g.run(), VMX_REASON_IRQ);
    let idt = g.r(VMCS_RO_IDT_VECTOR_INFO) as u32;
    assert_eq!(idt, gp, "the undelivered #GP: {idt:#x}");
    assert_eq!(g.rip(), 0x1000, "nothing ran");
    // Re-injected: the handler runs once.
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, idt as u64);
    assert_eq!(g.run(), VMX_REASON_IO);
    assert_eq!((g.io().port, g.rip()), (0x81, 0x2002));
    assert_eq!(g.r(VMCS_RO_IDT_VECTOR_INFO), 0);
}

/// hv_vcpu_run_until with a deadline ends a spinning guest with a VMX-preemption-timer
/// exit, at the guest's RIP, no earlier than the deadline; a past deadline at once.
#[test]
fn a_run_deadline_ends_the_run_with_a_preemption_timer_exit() {
    // 1000: jmp $   EB FE
    let g = Guest::new(&[0xeb, 0xfe]);
    let wait = std::time::Duration::from_millis(30);
    let start = std::time::Instant::now();
    let deadline = hvf_sys::absolute_time::now() + hvf_sys::absolute_time::from_duration(wait);
    unsafe { ok(hv_vcpu_run_until(g.vcpu, deadline), "hv_vcpu_run_until") };
    assert!(start.elapsed() >= wait, "ended after {:?}", start.elapsed());
    assert_eq!(g.r(VMCS_RO_EXIT_REASON) as u32, VMX_REASON_VMX_TIMER_EXPIRED);
    assert_eq!(g.rip(), 0x1000);
    unsafe { ok(hv_vcpu_run_until(g.vcpu, 1), "hv_vcpu_run_until") };
    assert_eq!(g.r(VMCS_RO_EXIT_REASON) as u32, VMX_REASON_VMX_TIMER_EXPIRED);
    // A kick still ends a run with a deadline first.
    let mut id = g.vcpu;
    let kicker = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        unsafe { hv_vcpu_interrupt(&mut id, 1) }
    });
    let far = hvf_sys::absolute_time::now() + hvf_sys::absolute_time::from_duration(std::time::Duration::from_secs(600));
    unsafe { ok(hv_vcpu_run_until(g.vcpu, far), "hv_vcpu_run_until") };
    assert_eq!(g.r(VMCS_RO_EXIT_REASON) as u32, VMX_REASON_IRQ);
    assert_eq!(kicker.join().unwrap(), HV_SUCCESS);
}

#[test]
fn invalid_guest_state_fails_the_entry() {
    let g = Guest::new(&[0xf4]);
    let failed = VMX_REASON_VMENTRY_GUEST | VMX_REASON_ENTRY_FAILED;
    g.w(VMCS_GUEST_RFLAGS, 0); // bit 1 clear
    assert_eq!(g.run(), failed);
    assert_eq!(g.r(VMCS_RO_EXIT_QUALIFIC), 0);
    g.w(VMCS_GUEST_RFLAGS, 2);
    g.w(VMCS_GUEST_CR4, 0); // VMXE clear
    assert_eq!(g.run(), failed);
    g.w(VMCS_GUEST_CR4, 1 << 13);
    // An external interrupt with IF=0.
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, (IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | 0x20) as u64);
    assert_eq!(g.run(), failed);
    // Every VM exit clears the entry field's valid bit (SDM 25.8.3), a failed entry's too.
    assert_eq!(g.r(VMCS_CTRL_VMENTRY_IRQ_INFO), (IRQ_INFO_EXT_IRQ | 0x20) as u64);
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, 0);
    assert_eq!(g.run(), VMX_REASON_HLT);
}

#[test]
fn invalid_controls_are_refused() {
    let g = Guest::new(&[0xf4]);
    let proc = g.r(VMCS_CTRL_CPU_BASED);
    g.w(VMCS_CTRL_CPU_BASED, proc & !(ProcBased::HLT.bits() as u64));
    assert_eq!(unsafe { hv_vcpu_run(g.vcpu) }, HV_ERROR);
    assert_eq!(g.r(VMCS_RO_INSTR_ERROR), VMX_INSTR_ERROR_INVALID_CONTROLS as u64);
    g.w(VMCS_CTRL_CPU_BASED, proc);
    assert_eq!(g.run(), VMX_REASON_HLT);
}

/// What Hypervisor.framework refuses at VMWRITE, the layer refuses too: the guest PAT
/// field, and a control value outside hv_vmx_vcpu_get_cap_write_vmcs's masks (a bit the
/// CPU cannot set, a must-be-one bit left out). The field keeps its value.
#[test]
fn vmcs_writes_the_framework_refuses_are_refused() {
    let g = Guest::new(&[0xf4]);
    let write = |field, value| unsafe { hv_vmx_vcpu_write_vmcs(g.vcpu, field, value) };
    assert_eq!(write(VMCS_GUEST_IA32_PAT, 0x0007_0406_0007_0406), HV_BAD_ARGUMENT);
    let proc2 = g.r(VMCS_CTRL_CPU_BASED2);
    assert_eq!(write(VMCS_CTRL_CPU_BASED2, proc2 | ProcBased2::VMCS_SHADOW.bits() as u64), HV_BAD_ARGUMENT);
    assert_eq!(g.r(VMCS_CTRL_CPU_BASED2), proc2);
    let (mut must, mut may) = (0, 0);
    unsafe { ok(hv_vmx_vcpu_get_cap_write_vmcs(g.vcpu, VMCS_CTRL_PIN_BASED, &mut must, &mut may), "get_cap_write_vmcs") };
    assert_ne!(must, 0, "the pin-based controls have must-be-one bits");
    assert_eq!(write(VMCS_CTRL_PIN_BASED, 0), HV_BAD_ARGUMENT);
    assert_eq!(write(VMCS_CTRL_PIN_BASED, must | (PinBased::EXTINT | PinBased::NMI).bits() as u64), HV_SUCCESS);
    assert_eq!(g.run(), VMX_REASON_HLT);
}

/// A fresh VMCS holds the must-be-one control bits and the framework's own default
/// (VPID), as HVF's does: a VMM that rebuilds the controls from zero loses them.
#[test]
fn a_fresh_vmcs_has_its_default_control_bits() {
    let _lock = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    unsafe { ok(hv_vm_create(HV_VM_DEFAULT), "hv_vm_create") };
    let mut vcpu = 0;
    unsafe { ok(hv_vcpu_create(&mut vcpu, HV_VCPU_DEFAULT), "hv_vcpu_create") };
    let read = |field| {
        let mut v = 0;
        unsafe { ok(hv_vmx_vcpu_read_vmcs(vcpu, field, &mut v), "read") };
        v
    };
    let cap = |c| {
        let mut v = 0;
        unsafe { ok(hv_vmx_read_capability(c, &mut v), "cap") };
        v
    };
    let fresh = [(VMCS_CTRL_PIN_BASED, read(VMCS_CTRL_PIN_BASED)), (VMCS_CTRL_CPU_BASED, read(VMCS_CTRL_CPU_BASED)),
        (VMCS_CTRL_VMENTRY_CONTROLS, read(VMCS_CTRL_VMENTRY_CONTROLS)), (VMCS_CTRL_VMEXIT_CONTROLS, read(VMCS_CTRL_VMEXIT_CONTROLS))];
    let proc2 = read(VMCS_CTRL_CPU_BASED2);
    unsafe {
        let _ = hv_vcpu_destroy(vcpu);
        let _ = hv_vm_destroy();
    }
    for ((field, value), c) in fresh.into_iter().zip([HV_VMX_CAP_PINBASED, HV_VMX_CAP_PROCBASED, HV_VMX_CAP_ENTRY, HV_VMX_CAP_EXIT]) {
        assert_eq!(value, cap(c) & 0xffff_ffff, "{}", vmcs_field_name(field).unwrap_or("?"));
    }
    assert_ne!(proc2 & ProcBased2::VPID.bits() as u64, 0, "VPID on in a fresh VMCS");
}

/// A CPUID table that shows an instruction whose VT-x control is off is refused (a Mac
/// would give the guest #UD), and so is an entry after the control was turned off.
/// KVM, left alone, would turn the control on from the CPUID.
#[test]
fn cpuid_showing_an_instruction_without_its_control_is_refused() {
    let g = Guest::new(&[0xf4]);
    // RDTSCP: CPUID.80000001H:EDX[27] (every x86-64 host KVM runs on has it).
    let policy = |leaf: u32, _sub: u32| match leaf {
        0x8000_0000 => [0x8000_0001, 0, 0, 0],
        0x8000_0001 => [0, 0, 0, 1 << 27],
        _ => [0; 4],
    };
    let proc2 = g.r(VMCS_CTRL_CPU_BASED2);
    assert_eq!(proc2 & ProcBased2::RDTSCP.bits() as u64, 0);
    assert_eq!(hv_linux_vcpu_set_cpuid(g.vcpu, &policy), HV_BAD_ARGUMENT);
    g.w(VMCS_CTRL_CPU_BASED2, proc2 | ProcBased2::RDTSCP.bits() as u64);
    assert_eq!(hv_linux_vcpu_set_cpuid(g.vcpu, &policy), HV_SUCCESS);
    g.w(VMCS_CTRL_CPU_BASED2, proc2);
    assert_eq!(unsafe { hv_vcpu_run(g.vcpu) }, HV_ERROR, "entry with the control off");
    g.w(VMCS_CTRL_CPU_BASED2, proc2 | ProcBased2::RDTSCP.bits() as u64);
    assert_eq!(g.run(), VMX_REASON_HLT);
}

/// HVF ignores an XCR0 it does not like and still succeeds; so does the layer, so a VMM
/// that does not read XCR0 back fails here as it would on a Mac.
#[test]
fn an_xcr0_write_the_cpu_refuses_is_ignored_silently() {
    let g = Guest::new(&[0xf4]);
    let before = g.reg(HV_X86_XCR0);
    assert_eq!(before & 1, 1);
    // XCR0 without x87 (bit 0) is invalid on every CPU (SDM vol. 1, 13.3).
    assert_eq!(unsafe { hv_vcpu_write_register(g.vcpu, HV_X86_XCR0, 2) }, HV_SUCCESS);
    assert_eq!(g.reg(HV_X86_XCR0), before);
}

#[test]
fn one_vm_per_process() {
    let _g = Guest::new(&[0xf4]);
    assert_eq!(unsafe { hv_vm_create(HV_VM_DEFAULT) }, HV_BUSY);
}

#[test]
fn vcpu_calls_from_another_thread_are_refused() {
    let g = Guest::new(&[0xf4]);
    let id = g.vcpu;
    let (read, run) = std::thread::spawn(move || unsafe {
        let mut v = 0;
        (hv_vcpu_read_register(id, HV_X86_RIP, &mut v), hv_vcpu_run(id))
    })
    .join()
    .unwrap();
    assert_eq!(read, HV_BAD_ARGUMENT);
    assert_eq!(run, HV_BAD_ARGUMENT);
    assert_eq!(g.run(), VMX_REASON_HLT);
}

#[test]
fn cpuid_hook_installs_the_policy() {
    // 1000: xor eax, eax   66 31 C0
    // 1003: cpuid          0F A2
    // 1005: out 0x80, al   E6 80
    let g = Guest::new(&[0x66, 0x31, 0xc0, 0x0f, 0xa2, 0xe6, 0x80]);
    let policy = |leaf: u32, _sub: u32| if leaf == 0 { [1, 0x6c6c_6568, 0x2121_646c, 0x6f77_206f] } else { [0; 4] };
    assert_eq!(hv_linux_vcpu_set_cpuid(g.vcpu, &policy), HV_SUCCESS);
    assert_eq!(g.run(), VMX_REASON_IO);
    assert_eq!(g.reg(HV_X86_RBX) as u32, 0x6c6c_6568);
    assert_eq!(g.reg(HV_X86_RDX) as u32, 0x6f77_206f);
}

/// XSAVE is offered only where KVM follows the guest's XSETBV: a guest that enables AVX
/// state here must find it enabled in KVM (which switches it at every entry); where KVM
/// would not follow (nested under TCG) the CPUID table shows no XSAVE, so the guest
/// keeps to FXSAVE, which KVM's XCR0 reloads cannot break.
#[test]
fn xsave_state_is_offered_only_where_kvm_follows_xsetbv() {
    // mov eax, cr4; or eax, 1 << 18; mov cr4, eax; xor ecx, ecx; mov eax, 7; xor edx, edx;
    // xsetbv; hlt; then: mov eax, 0xd; xor ecx, ecx; cpuid; hlt
    let g = Guest::new(&[0x0f, 0x20, 0xe0, 0x66, 0x0d, 0x00, 0x00, 0x04, 0x00, 0x0f, 0x22, 0xe0, 0x66, 0x31, 0xc9,
        0x66, 0xb8, 0x07, 0, 0, 0, 0x66, 0x31, 0xd2, 0x0f, 0x01, 0xd1, 0xf4,
        0x66, 0xb8, 0x0d, 0, 0, 0, 0x66, 0x31, 0xc9, 0x0f, 0xa2, 0xf4]);
    let host = std::arch::x86_64::__cpuid_count(0xd, 0);
    if host.eax & 0b111 != 0b111 {
        eprintln!("the host has no AVX state: nothing to check");
        return;
    }
    let policy = |leaf: u32, sub: u32| match (leaf, sub) {
        (0, _) => [0xd, 0, 0, 0],
        (1, _) => [0, 0, 1 << 26, 0], // XSAVE
        (0xd, 0) => [0b111, 576, 832, 0],
        (0xd, 2) => [256, 576, 0, 0],
        _ => [0; 4],
    };
    assert_eq!(hv_linux_vcpu_set_cpuid(g.vcpu, &policy), HV_SUCCESS);
    let tracked = hv_linux_kvm_tracks_guest_xcr0();
    if tracked {
        assert_eq!(g.run(), VMX_REASON_HLT);
        assert_eq!(g.reg(HV_X86_XCR0), 0b111, "KVM followed the guest's XSETBV");
        g.skip();
        assert_eq!(g.run(), VMX_REASON_HLT);
        assert_eq!(g.reg(HV_X86_RAX) as u32 & 0b111, 0b111, "AVX state offered");
    } else {
        g.w(VMCS_GUEST_RIP, 0x101c); // straight to the CPUID
        assert_eq!(g.run(), VMX_REASON_HLT);
        assert_eq!([g.reg(HV_X86_RAX), g.reg(HV_X86_RBX), g.reg(HV_X86_RCX)].map(|r| r as u32), [0; 3], "no XSAVE leaf");
    }
}
