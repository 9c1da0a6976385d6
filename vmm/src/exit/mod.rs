//! One handler per VM-exit reason (Intel SDM vol. 3, chapter 28 "VM Exits"; appendix C
//! lists the reasons). Each takes the [`ExitContext`] of the exit and says what the run
//! loop does next. Handlers only see the vCPU through [`VcpuRegs`], so a unit test can
//! feed any of them a [`crate::regs::RecordedExit`].
use crate::machine::{Machine, StopReason};
use crate::msr::MsrState;
use crate::regs::VcpuRegs;
use devices::lapic::Lapic;
use std::sync::Arc;
use hvf_sys::vmcs::*;
use hvf_sys::vmx::*;
use hvf_sys::*;

pub mod cpuid;
pub mod cr;
pub mod fault;
pub mod hlt;
pub mod io;
pub mod mmio;
pub mod msr;
pub mod vmcall;
pub mod xsetbv;

/// What the run loop does after a handler.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Resume,
    /// The guest executed HLT: sleep until an interrupt can be delivered.
    Halt,
    /// Stop this vCPU and the machine.
    Stop(StopReason),
}

/// Per-vCPU state the handlers keep between exits.
#[derive(Default)]
pub struct VcpuState {
    /// 0 for the boot processor.
    pub index: u32,
    pub msrs: MsrState,
    /// This vCPU's local APIC, if the machine has one.
    pub lapic: Option<Arc<Lapic>>,
}

/// Everything a handler may touch.
pub struct ExitContext<'a> {
    pub vcpu: &'a mut dyn VcpuRegs,
    pub machine: &'a Machine,
    pub state: &'a mut VcpuState,
    /// A decoded instruction or device access for the exit trace; handlers fill it only
    /// when tracing is on.
    pub note: Option<String>,
}

impl<'a> ExitContext<'a> {
    pub fn new(vcpu: &'a mut dyn VcpuRegs, machine: &'a Machine, state: &'a mut VcpuState) -> Self {
        ExitContext { vcpu, machine, state, note: None }
    }

    /// The VM-exit instruction length (SDM 28.2.5): valid for the instruction exits.
    pub fn instruction_len(&self) -> Result<u64, HvError> {
        self.vcpu.read_vmcs(VMCS_RO_VMEXIT_INSTR_LEN)
    }

    /// Moves RIP past the exiting instruction of `len` bytes, ending any STI/MOV SS
    /// blocking with it: otherwise an interrupt would stay held back one instruction too long.
    pub fn advance_rip(&mut self, len: u64) -> Result<(), HvError> {
        let rip = self.vcpu.read_reg(HV_X86_RIP)?;
        self.vcpu.write_reg(HV_X86_RIP, rip.wrapping_add(len))?;
        end_interrupt_shadow(self.vcpu)
    }

    /// Skips the exiting instruction, using the length the CPU reported.
    pub fn skip_instruction(&mut self) -> Result<(), HvError> {
        let len = self.instruction_len()?;
        self.advance_rip(len)
    }

    /// Delivers a hardware exception at the next entry (SDM 26.6 event injection), instead
    /// of completing the instruction: RIP stays at the faulting instruction.
    pub fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) -> Result<(), HvError> {
        let mut info = IRQ_INFO_VALID | IRQ_INFO_HARD_EXC | vector as u32;
        if let Some(code) = error_code {
            info |= IRQ_INFO_ERROR_VALID;
            self.vcpu.write_vmcs(VMCS_CTRL_VMENTRY_EXC_ERROR, code as u64)?;
        }
        self.vcpu.write_vmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, info as u64)
    }

    /// #GP(0), the answer to most invalid requests.
    pub fn inject_gp(&mut self) -> Result<(), HvError> {
        self.inject_exception(EXCEPTION_GP, Some(0))
    }

    /// Reads one of the general-purpose registers by its SDM number (0 RAX, 1 RCX, ...).
    pub fn read_gpr(&self, n: u8) -> Result<u64, HvError> {
        self.vcpu.read_reg(GPR_BY_NUMBER[n as usize & 15])
    }

    pub fn write_gpr(&mut self, n: u8, value: u64) -> Result<(), HvError> {
        self.vcpu.write_reg(GPR_BY_NUMBER[n as usize & 15], value)
    }

    /// EDX:EAX, as RDMSR/WRMSR/XSETBV use them.
    pub fn read_edx_eax(&self) -> Result<u64, HvError> {
        let eax = self.vcpu.read_reg(HV_X86_RAX)? & 0xffff_ffff;
        let edx = self.vcpu.read_reg(HV_X86_RDX)? & 0xffff_ffff;
        Ok(edx << 32 | eax)
    }

    /// Sets EDX:EAX; the upper halves of RAX and RDX are cleared, as a 32-bit register
    /// write in 64-bit mode does.
    pub fn write_edx_eax(&mut self, value: u64) -> Result<(), HvError> {
        self.vcpu.write_reg(HV_X86_RAX, value & 0xffff_ffff)?;
        self.vcpu.write_reg(HV_X86_RDX, value >> 32)
    }
}

/// Clears blocking by STI and by MOV SS: it lasts for one instruction only, so once RIP
/// moves past the exiting instruction it is over (SDM 25.4.2, table 25-3).
pub fn end_interrupt_shadow(vcpu: &mut dyn VcpuRegs) -> Result<(), HvError> {
    let blocking = vcpu.read_vmcs(VMCS_GUEST_IGNORE_IRQ)?;
    let shadow = (Interruptibility::STI | Interruptibility::MOV_SS).bits() as u64;
    if blocking & shadow != 0 {
        vcpu.write_vmcs(VMCS_GUEST_IGNORE_IRQ, blocking & !shadow)?;
    }
    Ok(())
}

pub const EXCEPTION_UD: u8 = 6;
pub const EXCEPTION_GP: u8 = 13;
pub const EXCEPTION_PF: u8 = 14;

/// General-purpose registers in the SDM's numbering (RAX, RCX, RDX, RBX, RSP, RBP, RSI,
/// RDI, R8-R15), as instruction encodings and exit qualifications name them.
pub const GPR_BY_NUMBER: [hv_x86_reg_t; 16] = [
    HV_X86_RAX, HV_X86_RCX, HV_X86_RDX, HV_X86_RBX, HV_X86_RSP, HV_X86_RBP, HV_X86_RSI, HV_X86_RDI,
    HV_X86_R8, HV_X86_R9, HV_X86_R10, HV_X86_R11, HV_X86_R12, HV_X86_R13, HV_X86_R14, HV_X86_R15,
];

/// Sends an exit to its handler: the heart of the run loop.
pub fn handle_exit(ctx: &mut ExitContext, reason: u32) -> Result<Action, HvError> {
    if reason & VMX_REASON_ENTRY_FAILED != 0 {
        return fault::entry_failed(ctx, reason);
    }
    match reason & 0xffff {
        VMX_REASON_IO => io::handle(ctx),
        VMX_REASON_EPT_VIOLATION => mmio::handle(ctx),
        VMX_REASON_CPUID => cpuid::handle(ctx),
        VMX_REASON_RDMSR => msr::handle_rdmsr(ctx),
        VMX_REASON_WRMSR => msr::handle_wrmsr(ctx),
        VMX_REASON_MOV_CR => cr::handle(ctx),
        VMX_REASON_XSETBV => xsetbv::handle(ctx),
        VMX_REASON_HLT => hlt::handle(ctx),
        VMX_REASON_VMCALL => vmcall::handle(ctx),
        // The window opened: the injection step before the next entry delivers.
        VMX_REASON_IRQ_WND => Ok(Action::Resume),
        // A host interrupt or a kick: nothing to do for the guest, RIP stays put.
        VMX_REASON_IRQ => Ok(Action::Resume),
        // The run's deadline (the kick backstop, crate::kick): the loop looks for work.
        VMX_REASON_VMX_TIMER_EXPIRED => Ok(Action::Resume),
        VMX_REASON_TRIPLE_FAULT => fault::triple_fault(ctx),
        other => fault::unhandled(ctx, other),
    }
}

/// A machine with a little RAM and empty buses, and recorded exits, for handler tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::cpuid::CpuidPolicy;
    use crate::machine::{Machine, Stopper};
    use crate::memory::GuestRam;
    use crate::regs::RecordedExit;
    use devices::bus::Bus;
    use hvf_sys::vmcs::*;
    use hvf_sys::*;

    pub fn machine() -> Machine {
        Machine {
            ram: GuestRam::new(1 << 20).unwrap(),
            pio: Bus::new(),
            mmio: Bus::new(),
            cpuid: CpuidPolicy::new(1, false),
            clock: crate::clock::GuestClock::start(1_000_000_000),
            stopper: Stopper::new(),
            parking: crate::machine::Parking::new(1),
            stats: Default::default(),
        }
    }

    /// An instruction exit at RIP 0x1000 with the given reason, qualification and length.
    pub fn exit(reason: u32, qualification: u64, len: u64) -> RecordedExit {
        RecordedExit::new()
            .reg(HV_X86_RIP, 0x1000)
            .field(VMCS_RO_EXIT_REASON, reason as u64)
            .field(VMCS_RO_EXIT_QUALIFIC, qualification)
            .field(VMCS_RO_VMEXIT_INSTR_LEN, len)
            .field(VMCS_GUEST_IGNORE_IRQ, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Port(Mutex<Vec<Vec<u8>>>);
    impl BusDevice for Port {
        fn read(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0xa0 + offset as u8 + i as u8;
            }
        }
        fn write(&self, _offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push(data.to_vec());
        }
    }

    fn run(v: &mut crate::regs::RecordedExit, m: &Machine) -> Action {
        let mut state = VcpuState::default();
        let reason = v.read_vmcs(VMCS_RO_EXIT_REASON).unwrap() as u32;
        let mut ctx = ExitContext::new(v, m, &mut state);
        handle_exit(&mut ctx, reason).unwrap()
    }

    #[test]
    fn out_dx_ax_writes_two_bytes_and_skips_the_instruction() {
        let mut m = machine();
        let port = Arc::new(Port::default());
        m.pio.insert(0x3f8, 8, port.clone()).unwrap();
        // `out dx, ax` (66 EF) with DX=0x3f9: size 2, OUT, port 0x3f9.
        let q = vmx::IoQualification { size: 2, is_in: false, string: false, rep: false, immediate: false, port: 0x3f9 };
        let mut v = exit(VMX_REASON_IO, q.encode(), 2).reg(HV_X86_RAX, 0xdead_beef_1234_5678);
        assert_eq!(run(&mut v, &m), Action::Resume);
        assert_eq!(port.0.lock().unwrap().as_slice(), &[vec![0x78, 0x56]]);
        assert_eq!(v.regs[&HV_X86_RIP], 0x1002);
    }

    #[test]
    fn in_al_keeps_the_rest_of_rax_and_in_eax_clears_the_top() {
        let mut m = machine();
        m.pio.insert(0x60, 4, Arc::new(Port::default())).unwrap();
        let q = vmx::IoQualification { size: 1, is_in: true, string: false, rep: false, immediate: true, port: 0x61 };
        let mut v = exit(VMX_REASON_IO, q.encode(), 2).reg(HV_X86_RAX, 0x1111_2222_3333_4444);
        run(&mut v, &m);
        assert_eq!(v.regs[&HV_X86_RAX], 0x1111_2222_3333_44a1);
        let q = vmx::IoQualification { size: 4, ..q };
        let mut v = exit(VMX_REASON_IO, q.encode(), 1).reg(HV_X86_RAX, u64::MAX);
        run(&mut v, &m);
        assert_eq!(v.regs[&HV_X86_RAX], 0xa4a3_a2a1);
        // Nothing at the port: the bus floats high.
        let q = vmx::IoQualification { port: 0x80, ..q };
        let mut v = exit(VMX_REASON_IO, q.encode(), 1).reg(HV_X86_RAX, 0);
        run(&mut v, &m);
        assert_eq!(v.regs[&HV_X86_RAX], 0xffff_ffff);
    }

    #[test]
    fn advancing_rip_ends_the_sti_shadow() {
        let m = machine();
        let mut v = exit(VMX_REASON_HLT, 0, 1).field(VMCS_GUEST_IGNORE_IRQ, 1);
        assert_eq!(run(&mut v, &m), Action::Halt);
        assert_eq!(v.regs[&HV_X86_RIP], 0x1001);
        assert_eq!(v.vmcs[&VMCS_GUEST_IGNORE_IRQ], 0);
    }

    #[test]
    fn cpuid_answers_from_the_policy_and_clears_upper_halves() {
        let m = machine();
        let mut v = exit(VMX_REASON_CPUID, 0, 2)
            .reg(HV_X86_RAX, 0xffff_ffff_4000_0000)
            .reg(HV_X86_RCX, 0)
            .reg(HV_X86_RBX, u64::MAX)
            .reg(HV_X86_RDX, u64::MAX)
            .reg(HV_X86_CR4, 0)
            .reg(HV_X86_XCR0, 1);
        run(&mut v, &m);
        assert_eq!(v.regs[&HV_X86_RAX], 0x4000_0000);
        assert_eq!(v.regs[&HV_X86_RBX], u32::from_le_bytes(*b"hvru") as u64);
        assert_eq!(v.regs[&HV_X86_RIP], 0x1002);
    }

    /// Leaf 1's OSXSAVE and leaf 0xD's current size come from the exiting vCPU's CR4 and
    /// XCR0, not from hvrun's own thread.
    #[test]
    fn cpuid_follows_the_guests_cr4_and_xcr0() {
        let m = machine();
        let cpuid = |leaf: u64, cr4: u64, xcr0: u64| {
            let mut v = exit(VMX_REASON_CPUID, 0, 2).reg(HV_X86_RAX, leaf).reg(HV_X86_RCX, 0).reg(HV_X86_CR4, cr4)
                .reg(HV_X86_XCR0, xcr0);
            run(&mut v, &m);
            [v.regs[&HV_X86_RAX], v.regs[&HV_X86_RBX], v.regs[&HV_X86_RCX], v.regs[&HV_X86_RDX]]
        };
        const OSXSAVE: u64 = 1 << 27;
        let xsave = cpuid(1, 0, 1)[2] & (1 << 26) != 0;
        assert_eq!(cpuid(1, 0, 1)[2] & OSXSAVE, 0);
        assert_eq!(cpuid(1, 1 << 18, 1)[2] & OSXSAVE != 0, xsave);
        assert_eq!(cpuid(0xd, 1 << 18, 1)[1], 576, "x87 only");
        let supported = m.cpuid.xcr0_supported();
        let all = cpuid(0xd, 1 << 18, supported);
        assert_eq!(all[1], all[2], "size for the guest's XCR0 = the maximum, all enabled");
    }

    #[test]
    fn rdmsr_known_unknown_and_wrmsr_efer_keeps_lma() {
        let m = machine();
        let mut v = exit(VMX_REASON_RDMSR, 0, 2).reg(HV_X86_RCX, 0xfe).reg(HV_X86_RAX, u64::MAX).reg(HV_X86_RDX, u64::MAX);
        run(&mut v, &m);
        assert_eq!((v.regs[&HV_X86_RAX], v.regs[&HV_X86_RDX], v.regs[&HV_X86_RIP]), (0x508, 0, 0x1002));

        // Unknown MSR: #GP(0) injected, RIP stays at the instruction.
        let mut v = exit(VMX_REASON_RDMSR, 0, 2).reg(HV_X86_RCX, 0xdead).field(VMCS_CTRL_VMENTRY_IRQ_INFO, 0);
        run(&mut v, &m);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0b0d);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_EXC_ERROR], 0);
        assert_eq!(v.regs[&HV_X86_RIP], 0x1000);

        // WRMSR EFER = SCE|LME|NXE while LMA is set: LMA stays the CPU's.
        let mut v = exit(VMX_REASON_WRMSR, 0, 2)
            .reg(HV_X86_RCX, crate::msr::IA32_EFER as u64)
            .reg(HV_X86_RAX, 0x901)
            .reg(HV_X86_RDX, 0)
            .field(VMCS_GUEST_IA32_EFER, 0x500);
        run(&mut v, &m);
        assert_eq!(v.vmcs[&VMCS_GUEST_IA32_EFER], 0xd01);
    }

    #[test]
    fn mov_cr0_enabling_paging_with_lme_enters_ia32e_mode() {
        let m = machine();
        // mov cr0, rax (0F 22 C0): CR0, MOV to, RAX.
        let cr0 = crate::controls::CR0_PE | crate::controls::CR0_PG | crate::controls::CR0_ET;
        let mut v = exit(VMX_REASON_MOV_CR, 0x0, 3)
            .reg(HV_X86_RAX, cr0)
            .field(VMCS_GUEST_IA32_EFER, crate::controls::EFER_LME)
            .field(VMCS_GUEST_CR4, crate::controls::CR4_PAE | crate::controls::CR4_VMXE)
            .field(VMCS_GUEST_TR_AR, 0x83)
            .field(VMCS_CTRL_VMENTRY_CONTROLS, 0x91ff);
        run(&mut v, &m);
        assert_eq!(v.vmcs[&VMCS_GUEST_TR_AR], 0x8b, "real mode's 16-bit busy TSS becomes a 64-bit one");
        assert_eq!(v.vmcs[&VMCS_GUEST_IA32_EFER], crate::controls::EFER_LME | crate::controls::EFER_LMA);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_CONTROLS], 0x93ff);
        assert_eq!(v.vmcs[&VMCS_CTRL_CR0_SHADOW], cr0);
        assert_eq!(v.vmcs[&VMCS_GUEST_CR0], cr0 | crate::controls::CR0_NE);
        assert_eq!(v.regs[&HV_X86_RIP], 0x1003);
        assert_eq!(v.tlb_invalidations, 1, "the framework is told the paging mode changed");

        // And back: clearing PG leaves IA-32e mode.
        let mut v = exit(VMX_REASON_MOV_CR, 0x300, 3)
            .reg(HV_X86_RBX, crate::controls::CR0_PE)
            .field(VMCS_GUEST_IA32_EFER, 0x500)
            .field(VMCS_GUEST_CR4, crate::controls::CR4_PAE | crate::controls::CR4_VMXE)
            .field(VMCS_CTRL_VMENTRY_CONTROLS, 0x93ff);
        run(&mut v, &m);
        assert_eq!(v.vmcs[&VMCS_GUEST_IA32_EFER], crate::controls::EFER_LME);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_CONTROLS], 0x91ff);
    }

    #[test]
    fn mov_cr3_loads_the_vmcs_and_flushes_unless_pcid_says_keep() {
        let m = machine();
        // mov cr3, rax (0F 22 D8: CR3, MOV to, RAX), then mov rbx, cr3 (0F 20 DB).
        let mut v = exit(VMX_REASON_MOV_CR, 0x3, 3).reg(HV_X86_RAX, 0x5000).field(VMCS_CTRL_CR4_SHADOW, 0);
        run(&mut v, &m);
        assert_eq!((v.vmcs[&VMCS_GUEST_CR3], v.tlb_invalidations, v.regs[&HV_X86_RIP]), (0x5000, 1, 0x1003));
        let pcide = 1 << 17;
        let mut v = exit(VMX_REASON_MOV_CR, 0x3, 3).reg(HV_X86_RAX, (1 << 63) | 0x6001).field(VMCS_CTRL_CR4_SHADOW, pcide);
        run(&mut v, &m);
        assert_eq!((v.vmcs[&VMCS_GUEST_CR3], v.tlb_invalidations), (0x6001, 0), "no-flush bit honoured, not stored");
        let mut v = exit(VMX_REASON_MOV_CR, 0x3 | (1 << 4) | (3 << 8), 3).field(VMCS_GUEST_CR3, 0x7000);
        run(&mut v, &m);
        assert_eq!(v.regs[&HV_X86_RBX], 0x7000);
    }

    #[test]
    fn mov_cr0_pg_without_pe_is_gp() {
        let m = machine();
        let mut v = exit(VMX_REASON_MOV_CR, 0, 3)
            .reg(HV_X86_RAX, crate::controls::CR0_PG)
            .field(VMCS_GUEST_IA32_EFER, 0)
            .field(VMCS_GUEST_CR4, crate::controls::CR4_VMXE);
        run(&mut v, &m);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0b0d);
        assert_eq!(v.regs[&HV_X86_RIP], 0x1000);
    }

    #[test]
    fn mov_cr4_keeps_vmxe_hidden_and_cr8_is_the_tpr() {
        let m = machine();
        let mut v = exit(VMX_REASON_MOV_CR, 0x4 | (1 << 8), 3).reg(HV_X86_RCX, 0x20);
        run(&mut v, &m);
        assert_eq!(v.vmcs[&VMCS_CTRL_CR4_SHADOW], 0x20);
        assert_eq!(v.vmcs[&VMCS_GUEST_CR4], 0x2020);
        assert_eq!(v.tlb_invalidations, 1);
        // Setting VMXE (no VMX is shown) or a bit the CPU lacks is #GP, RIP stays.
        for bad in [crate::controls::CR4_VMXE, 1 << 12] {
            let mut v = exit(VMX_REASON_MOV_CR, 0x4 | (1 << 8), 3).reg(HV_X86_RCX, 0x20 | bad)
                .field(VMCS_CTRL_VMENTRY_IRQ_INFO, 0);
            v.masks.insert(VMCS_GUEST_CR4, (0x2000, 0x0037_67ff));
            run(&mut v, &m);
            assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0b0d, "{bad:#x}");
            assert_eq!((v.regs[&HV_X86_RIP], v.tlb_invalidations), (0x1000, 0));
        }
        let mut v = exit(VMX_REASON_MOV_CR, 0x8 | (2 << 8), 4).reg(HV_X86_RDX, 0x7);
        run(&mut v, &m);
        assert_eq!(v.regs[&HV_X86_TPR], 7);
        // mov r9, cr8 (MOV from, GPR 9).
        let mut v = exit(VMX_REASON_MOV_CR, 0x8 | (1 << 4) | (9 << 8), 4).reg(HV_X86_TPR, 5);
        run(&mut v, &m);
        assert_eq!(v.regs[&HV_X86_R9], 5);
    }

    #[test]
    fn xsetbv_sets_xcr0_or_faults() {
        let m = machine();
        let mut v = exit(VMX_REASON_XSETBV, 0, 3).reg(HV_X86_RCX, 0).reg(HV_X86_RAX, 3).reg(HV_X86_RDX, 0);
        run(&mut v, &m);
        assert_eq!(v.regs[&HV_X86_XCR0], 3);
        assert_eq!(v.regs[&HV_X86_RIP], 0x1003);
        let mut v = exit(VMX_REASON_XSETBV, 0, 3).reg(HV_X86_RCX, 0).reg(HV_X86_RAX, 2).reg(HV_X86_RDX, 0);
        run(&mut v, &m);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_IRQ_INFO], 0x8000_0b0d);
        assert!(!v.regs.contains_key(&HV_X86_XCR0));
    }

    #[test]
    fn entry_failure_and_triple_fault_stop_with_a_dump() {
        let m = machine();
        let mut v = exit(VMX_REASON_VMENTRY_GUEST | VMX_REASON_ENTRY_FAILED, 0, 0);
        match run(&mut v, &m) {
            Action::Stop(StopReason::EntryFailed { reason: 33, qualification: 0, dump }) => {
                assert!(dump.contains("RIP=0000000000001000"), "{dump}");
                assert!(dump.contains("VMCS_RO_EXIT_REASON = 0x80000021"), "{dump}");
            }
            other => panic!("{other:?}"),
        }
        let mut v = exit(VMX_REASON_TRIPLE_FAULT, 0, 0);
        assert!(matches!(run(&mut v, &m), Action::Stop(StopReason::TripleFault { .. })));
        let mut v = exit(VMX_REASON_INVD, 0, 2);
        match run(&mut v, &m) {
            Action::Stop(StopReason::Fatal { message, .. }) => assert_eq!(message, "unhandled VM exit INVD (13)"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_hypercall_gets_kvms_answer_and_the_guest_goes_on() {
        let m = machine();
        for (ss_ar, answer) in [(0xc093, -vmcall::KVM_ENOSYS), (0xc0f3, -vmcall::KVM_EPERM)] {
            let mut v = exit(VMX_REASON_VMCALL, 0, 3).reg(HV_X86_RAX, 9).field(VMCS_GUEST_SS_AR, ss_ar);
            assert_eq!(run(&mut v, &m), Action::Resume);
            assert_eq!(v.regs[&HV_X86_RAX], answer as u64);
            assert_eq!(v.regs[&HV_X86_RIP], 0x1003);
        }
    }

    #[test]
    fn external_interrupt_and_window_exits_leave_rip_alone() {
        let m = machine();
        for reason in [VMX_REASON_IRQ, VMX_REASON_IRQ_WND, VMX_REASON_VMX_TIMER_EXPIRED] {
            let mut v = exit(reason, 0, 0);
            assert_eq!(run(&mut v, &m), Action::Resume);
            assert_eq!(v.regs[&HV_X86_RIP], 0x1000);
        }
    }
}
