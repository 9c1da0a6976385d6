//! RDMSR/WRMSR through hvrun's MSR policy (exits 31/32; on Linux every MSR access is
//! sent to userspace by the layer's MSR filter): fixed answers, MTRR storage, EFER from
//! the VMCS, and #GP for an MSR nobody has, delivered to the guest's own handler.
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
