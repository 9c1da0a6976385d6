//! RDMSR/WRMSR through hvrun's MSR policy (exits 31/32; on Linux every MSR access is
//! sent to userspace by the layer's MSR filter): fixed answers, MTRR storage, EFER from
//! the VMCS, and #GP for an MSR nobody has, delivered to the guest's own handler; the
//! PAT kept in software, the TSC moved through IA32_TSC and IA32_TSC_ADJUST, and the
//! MSRs of the host's vendor.
use hvrun_tests::*;
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

/// An MSR neither hvrun's policy nor KVM knows.
const UNKNOWN_MSR: u32 = 0x0000_dead;
const GP_HANDLER: u64 = CODE + 0x1000;
/// The #GP handler reports `GP_TAG | error code`, then the low half of the faulting RIP.
const GP_TAG: u32 = 0x6e00_0000;

/// #GP handler (64-bit): pops the error code and reports it tagged, reports the RIP it
/// would return to (the faulting instruction), steps over the 2-byte RDMSR/WRMSR and
/// returns.
fn gp_handler() -> AsmResult<Vec<u8>> {
    let mut h = Guest::new(Mode::Long);
    let a = &mut h.a;
    a.pop(rax)?;
    a.or(eax, GP_TAG as i32)?;
    a.out(REPORT_PORT as u32, eax)?;
    a.mov(rax, qword_ptr(rsp))?;
    a.out(REPORT_PORT as u32, eax)?;
    a.add(qword_ptr(rsp), 2)?;
    a.iretq()?;
    h.assemble(GP_HANDLER)
}

#[test]
fn msrs_through_the_policy_long_mode() {
    let mut t = TestMachine::new(Mode::Long);
    t.load(GP_HANDLER, &gp_handler().unwrap());
    t.set_handler(13, GP_HANDLER);

    // The guest: IA32_MTRRCAP must read 0x508 (EDX 0); IA32_MTRR_DEF_TYPE written with
    // 0xc06 reads back 0xc06; EFER reads LME|LMA; RDMSR and WRMSR of UNKNOWN_MSR raise
    // #GP(0) at the instruction (the handler reports it and skips it), each followed by
    // a marker showing the guest went on; exit GOOD.
    let mut g = Guest::new(Mode::Long);
    let a = &mut g.a;
    a.mov(ecx, 0xfeu32).unwrap();
    a.rdmsr().unwrap();
    a.out(REPORT_PORT as u32, eax).unwrap();
    a.mov(eax, edx).unwrap();
    a.out(REPORT_PORT as u32, eax).unwrap();
    a.mov(ecx, 0x2ffu32).unwrap();
    a.mov(eax, 0xc06u32).unwrap();
    a.xor(edx, edx).unwrap();
    a.wrmsr().unwrap();
    a.xor(eax, eax).unwrap();
    a.rdmsr().unwrap();
    a.out(REPORT_PORT as u32, eax).unwrap();
    a.mov(ecx, 0xc000_0080u32).unwrap();
    a.rdmsr().unwrap();
    a.out(REPORT_PORT as u32, eax).unwrap();
    a.mov(ecx, UNKNOWN_MSR).unwrap();
    let mut rd = a.create_label();
    a.set_label(&mut rd).unwrap();
    a.rdmsr().unwrap();
    a.mov(eax, 0x6e10_0001u32).unwrap();
    a.out(REPORT_PORT as u32, eax).unwrap();
    a.mov(eax, 1u32).unwrap();
    let mut wr = a.create_label();
    a.set_label(&mut wr).unwrap();
    a.wrmsr().unwrap();
    a.mov(eax, 0x6e10_0002u32).unwrap();
    a.out(REPORT_PORT as u32, eax).unwrap();
    g.exit(GOOD).unwrap();
    let result = g.a.assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let (rd_ip, wr_ip) = (result.label_ip(&rd).unwrap(), result.label_ip(&wr).unwrap());
    let code = result.inner.code_buffer;
    t.load(CODE, &code);

    let reason = t.run();
    let expected: Vec<Access> = [0x508, 0, 0xc06, 0x500, GP_TAG, rd_ip as u32, 0x6e10_0001, GP_TAG, wr_ip as u32, 0x6e10_0002]
        .into_iter()
        .map(Access::report)
        .collect();
    let got = t.log.all();
    assert_eq!(got, expected, "stop: {reason}\nguest:\n{}", disassemble(&code, CODE, 64));
    assert_eq!(reason, vmm::machine::StopReason::Power(devices::power::PowerEvent::Exit(GOOD)));
}

/// What the guest of [`pat_tsc_and_the_vendors_msrs_long_mode`] reports: a value, or the
/// RIP of the instruction that is expected to raise #GP.
enum Expect {
    Value(u32),
    GpAt(CodeLabel),
}

/// A guest that records what it expects next to the instructions, as [`Guest`] does,
/// with faults located by label.
struct MsrGuest {
    g: Guest,
    expected: Vec<Expect>,
}

impl MsrGuest {
    fn rdmsr(&mut self, msr: u32) {
        self.g.a.mov(ecx, msr).unwrap();
        self.g.a.rdmsr().unwrap();
    }

    /// RDMSR `msr`, reporting EAX and EDX.
    fn read(&mut self, msr: u32, value: u64) {
        self.rdmsr(msr);
        self.report(value);
    }

    /// Reports EAX then EDX (clobbers EAX).
    fn report(&mut self, value: u64) {
        let a = &mut self.g.a;
        a.out(REPORT_PORT as u32, eax).unwrap();
        a.mov(eax, edx).unwrap();
        a.out(REPORT_PORT as u32, eax).unwrap();
        self.expected.push(Expect::Value(value as u32));
        self.expected.push(Expect::Value((value >> 32) as u32));
    }

    /// Reports EDX only (the high half of a TSC; the low half is time).
    fn report_edx(&mut self, value: u32) {
        self.g.a.mov(eax, edx).unwrap();
        self.g.a.out(REPORT_PORT as u32, eax).unwrap();
        self.expected.push(Expect::Value(value));
    }

    fn write(&mut self, msr: u32, value: u64) {
        let a = &mut self.g.a;
        a.mov(ecx, msr).unwrap();
        a.mov(eax, value as u32).unwrap();
        a.mov(edx, (value >> 32) as u32).unwrap();
        a.wrmsr().unwrap();
    }

    /// An access that must raise #GP(0): the handler reports it and the faulting RIP and
    /// steps over it; a marker shows the guest went on.
    fn faults(&mut self, msr: u32, write: Option<u64>) {
        let a = &mut self.g.a;
        a.mov(ecx, msr).unwrap();
        if let Some(v) = write {
            a.mov(eax, v as u32).unwrap();
            a.mov(edx, (v >> 32) as u32).unwrap();
        }
        let mut at = a.create_label();
        a.set_label(&mut at).unwrap();
        if write.is_some() { a.wrmsr().unwrap() } else { a.rdmsr().unwrap() }
        let marker = 0x6e20_0000 | self.expected.len() as u32;
        a.mov(eax, marker).unwrap();
        a.out(REPORT_PORT as u32, eax).unwrap();
        self.expected.extend([Expect::Value(GP_TAG), Expect::GpAt(at), Expect::Value(marker)]);
    }

    /// RDTSC into RAX (all 64 bits).
    fn rdtsc_rax(&mut self) {
        let a = &mut self.g.a;
        a.rdtsc().unwrap();
        a.shl(rdx, 32).unwrap();
        a.or(rax, rdx).unwrap();
    }
}

/// Linux's PAT (WB WC UC- UC WB WP UC- UC) and one with a reserved type.
const LINUX_PAT: u64 = 0x0007_0506_0007_0106;
const BAD_PAT: u64 = 0x0007_0506_0007_0102;
const TSC_TARGET: u64 = 0x1234_5678_0000_0000;

#[test]
fn pat_tsc_and_the_vendors_msrs_long_mode() {
    use vmm::msr::{self, CpuModel, Vendor};
    let mut t = TestMachine::new(Mode::Long);
    t.load(GP_HANDLER, &gp_handler().unwrap());
    t.set_handler(13, GP_HANDLER);
    // The guest's CPUID is this policy's (hvrun's, from the host): so is its MSR model.
    let cpu = CpuModel::of(&vmm::cpuid::CpuidPolicy::new(1, false), 0, t.vm.machine().clock.tsc_hz);
    let mut g = MsrGuest { g: Guest::new(Mode::Long), expected: Vec::new() };

    // PAT: the reset value, then what the guest writes; a reserved type is #GP and
    // changes nothing. (hvrun never writes VMCS_GUEST_IA32_PAT, which HVF refuses.)
    g.read(msr::IA32_PAT, msr::PAT_RESET);
    g.write(msr::IA32_PAT, LINUX_PAT);
    g.read(msr::IA32_PAT, LINUX_PAT);
    g.faults(msr::IA32_PAT, Some(BAD_PAT));
    g.read(msr::IA32_PAT, LINUX_PAT);

    // IA32_TSC: after the write RDTSC and RDMSR read on from the value written (the
    // high half stays put for the 2^32 ticks that follow).
    g.write(msr::IA32_TSC, TSC_TARGET);
    g.g.a.rdtsc().unwrap();
    g.report_edx((TSC_TARGET >> 32) as u32);
    g.rdmsr(msr::IA32_TSC);
    g.report_edx((TSC_TARGET >> 32) as u32);

    // IA32_TSC_ADJUST where CPUID shows it: +2^40 moves the TSC by 2^40, and it reads back
    // 2^40 more than before. Elsewhere it is #GP.
    if cpu.tsc_adjust {
        const STEP: u64 = 1 << 40;
        g.rdtsc_rax();
        g.g.a.mov(r8, rax).unwrap();
        g.rdmsr(msr::IA32_TSC_ADJUST);
        g.g.a.shl(rdx, 32).unwrap();
        g.g.a.or(rax, rdx).unwrap();
        g.g.a.mov(r9, rax).unwrap();
        g.g.a.mov(rdx, STEP as i64).unwrap();
        g.g.a.add(rax, rdx).unwrap();
        g.g.a.mov(rdx, rax).unwrap();
        g.g.a.shr(rdx, 32).unwrap();
        g.g.a.mov(ecx, msr::IA32_TSC_ADJUST).unwrap();
        g.g.a.wrmsr().unwrap();
        g.rdtsc_rax();
        g.g.a.sub(rax, r8).unwrap();
        g.g.a.shr(rax, 40).unwrap();
        g.g.a.out(REPORT_PORT as u32, eax).unwrap();
        g.expected.push(Expect::Value(1));
        g.rdmsr(msr::IA32_TSC_ADJUST);
        g.g.a.shl(rdx, 32).unwrap();
        g.g.a.or(rax, rdx).unwrap();
        g.g.a.sub(rax, r9).unwrap();
        g.g.a.shr(rax, 40).unwrap();
        g.g.a.out(REPORT_PORT as u32, eax).unwrap();
        g.expected.push(Expect::Value(1));
    } else {
        g.faults(msr::IA32_TSC_ADJUST, None);
    }

    match cpu.vendor {
        Vendor::Amd => {
            g.read(msr::AMD_SYSCFG, 0);
            g.read(msr::AMD_HWCR, 1 << 24);
            g.read(msr::AMD_DE_CFG, 1 << 1);
            g.read(msr::AMD_NB_CFG, 0);
            g.write(msr::AMD_NB_CFG, 1 << 46);
            g.read(msr::AMD_NB_CFG, 1 << 46);
            g.faults(msr::AMD_NB_CFG, Some(1 << 54));
            g.read(msr::IA32_BIOS_SIGN_ID, cpu.microcode.into());
            g.faults(msr::AMD_LS_CFG, None);
            g.read(msr::AMD_PERF_LEGACY_FIRST, 0);
            g.faults(msr::AMD_PERF_CORE_FIRST, None);
            g.faults(msr::IA32_MISC_ENABLE, None);
        }
        Vendor::Intel => {
            g.read(msr::IA32_FEATURE_CONTROL, 1);
            g.faults(msr::IA32_FEATURE_CONTROL, Some(5));
            g.read(msr::IA32_MISC_ENABLE, 0x1801);
            let ratio = (cpu.tsc_hz + 50_000_000) / 100_000_000;
            g.read(msr::MSR_PLATFORM_INFO, ratio.clamp(1, 0xff) << 8);
            g.write(msr::IA32_BIOS_SIGN_ID, 0);
            g.read(msr::IA32_BIOS_SIGN_ID, u64::from(cpu.microcode) << 32);
            g.faults(msr::AMD_NB_CFG, None);
        }
        Vendor::Other => panic!("hvrun's tests run on Intel or AMD hosts"),
    }
    g.g.exit(GOOD).unwrap();

    let result = g.g.a.assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let expected: Vec<Access> = g
        .expected
        .iter()
        .map(|e| match e {
            Expect::Value(v) => Access::report(*v),
            Expect::GpAt(label) => Access::report(result.label_ip(label).unwrap() as u32),
        })
        .collect();
    let code = result.inner.code_buffer;
    t.load(CODE, &code);
    let reason = t.run();
    assert_eq!(t.log.all(), expected, "stop: {reason}\nguest:\n{}", disassemble(&code, CODE, 64));
    assert_eq!(reason, vmm::machine::StopReason::Power(devices::power::PowerEvent::Exit(GOOD)));
}
