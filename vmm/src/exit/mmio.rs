//! EPT violations (exit reason 48) where no RAM is mapped: MMIO. The exit gives only the
//! guest-physical address (SDM 28.2.1, table 28-7) and no instruction length, so hvrun
//! fetches the instruction through the guest's page tables, decodes it and carries it out
//! against the device ([`crate::emulate`]). INS/OUTS need the same machinery (linear
//! addresses through segments and paging), so string I/O lives here too.
use super::{Action, ExitContext, GPR_BY_NUMBER};
use crate::emulate::{self, CpuState, EmulateError, Fault, GuestBus, OutsideRam};
use crate::machine::{Machine, StopReason};
use crate::regs::VcpuRegs;
use hvf_sys::vmcs::*;
use hvf_sys::vmx::{IoQualification, AR_DPL_SHIFT};
use hvf_sys::*;
use iced_x86::OpKind;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use devices::bus::BusDevice;
use devices::lapic::{Lapic, LAPIC_BASE, LAPIC_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

pub fn handle(ctx: &mut ExitContext) -> Result<Action, HvError> {
    let gpa = ctx.vcpu.read_vmcs(VMCS_GUEST_PHYSICAL_ADDRESS)?;
    let before = load_cpu_state(ctx.vcpu, ctx.machine)?;
    let mut cpu = before.clone();
    let mut bus = MachineBus { machine: ctx.machine, lapic: ctx.state.lapic.as_deref() };
    let outcome = emulate::emulate_mmio(&mut cpu, &mut bus, gpa);
    store_cpu_state(ctx.vcpu, &before, &cpu)?;
    match outcome {
        Ok(instruction) => {
            if crate::trace::tracing() {
                ctx.note = Some(format!("gpa={gpa:#x} `{instruction}`"));
            }
            Ok(Action::Resume)
        }
        Err(EmulateError::Fault(fault)) => {
            inject_fault(ctx, &fault)?;
            Ok(Action::Resume)
        }
        Err(EmulateError::Unsupported { bytes, what }) => Ok(Action::Stop(StopReason::Fatal {
            message: format!(
                "cannot emulate the instruction at RIP {:#x} that accessed MMIO {gpa:#x}: {what} (bytes: {})",
                before.rip,
                hex(&bytes)
            ),
            dump: super::fault::dump(ctx.vcpu),
        })),
    }
}

/// INS/OUTS, with or without REP: one port access per element, moving through memory at
/// ES:(E/R)DI or DS:(E/R)SI (or the segment override) by the element size, backwards when
/// RFLAGS.DF is set (SDM vol. 2, INS/OUTS). A long REP is cut into rounds of at most
/// [`emulate::MAX_REP_ITERATIONS`] elements: RIP stays at the instruction until RCX reaches
/// zero, so the guest stays interruptible, as on hardware.
pub fn string_io(ctx: &mut ExitContext, q: IoQualification) -> Result<Action, HvError> {
    let before = load_cpu_state(ctx.vcpu, ctx.machine)?;
    let mut cpu = before.clone();
    let mut bus = MachineBus { machine: ctx.machine, lapic: ctx.state.lapic.as_deref() };
    let fetched = match emulate::fetch_and_decode(&cpu, &mut bus) {
        Ok(fetched) => fetched,
        Err(EmulateError::Fault(fault)) => {
            inject_fault(ctx, &fault)?;
            return Ok(Action::Resume);
        }
        Err(EmulateError::Unsupported { bytes, what }) => {
            return Ok(Action::Stop(StopReason::Fatal {
                message: format!("cannot decode the string I/O instruction at {:#x}: {what} (bytes: {})", before.rip, hex(&bytes)),
                dump: super::fault::dump(ctx.vcpu),
            }))
        }
    };
    let insn = &fetched.instruction;
    // The memory operand: operand 0 of INS (always ES:DI), operand 1 of OUTS.
    let (kind, index_reg) = if q.is_in { (insn.op0_kind(), 7) } else { (insn.op1_kind(), 6) };
    let address_mask: u64 = match kind {
        OpKind::MemoryESDI | OpKind::MemorySegSI => 0xffff,
        OpKind::MemoryESEDI | OpKind::MemorySegESI => 0xffff_ffff,
        OpKind::MemoryESRDI | OpKind::MemorySegRSI => u64::MAX,
        _ => {
            return Ok(Action::Stop(StopReason::Fatal {
                message: format!("I/O exit for a string instruction at {:#x} that is `{insn}`", before.rip),
                dump: super::fault::dump(ctx.vcpu),
            }))
        }
    };
    let segment = emulate::Segment::from_register(insn.memory_segment()).unwrap_or(emulate::Segment::Ds);
    let size = super::io::access_size(q.size);
    let step = if cpu.rflags & (1 << 10) != 0 { (size as u64).wrapping_neg() } else { size as u64 };
    let rep = insn.has_rep_prefix() || insn.has_repne_prefix();
    let mut remaining = if rep { cpu.gprs[1] & address_mask } else { 1 };
    let mut rounds = 0;
    let mut fault = None;
    while remaining > 0 && rounds < emulate::MAX_REP_ITERATIONS {
        let offset = cpu.gprs[index_reg] & address_mask;
        // In 64-bit mode only FS/GS bases apply; elsewhere linear addresses wrap at 4 GiB.
        let linear = cpu.linear(segment, offset);
        let mut data = [0u8; 4];
        let result = if q.is_in {
            ctx.machine.pio.read(q.port as u64, &mut data[..size]);
            emulate::write_linear(&cpu, &mut bus, linear, &data[..size])
        } else {
            emulate::read_linear(&cpu, &mut bus, linear, &mut data[..size]).map(|()| {
                ctx.machine.pio.write(q.port as u64, &data[..size]);
            })
        };
        if let Err(f) = result {
            fault = Some(f);
            break;
        }
        // Only the address-size part of the index and count registers changes.
        let moved = offset.wrapping_add(step) & address_mask;
        cpu.gprs[index_reg] = (cpu.gprs[index_reg] & !address_mask) | moved;
        remaining -= 1;
        if rep {
            cpu.gprs[1] = (cpu.gprs[1] & !address_mask) | remaining;
        }
        rounds += 1;
    }
    if fault.is_none() && remaining == 0 {
        cpu.rip = cpu.rip.wrapping_add(insn.len() as u64);
    }
    store_cpu_state(ctx.vcpu, &before, &cpu)?;
    if let Some(f) = fault {
        inject_fault(ctx, &f)?;
    }
    Ok(Action::Resume)
}

/// Loads CR2 for a page fault and queues the exception.
fn inject_fault(ctx: &mut ExitContext, fault: &Fault) -> Result<(), HvError> {
    if let Some(cr2) = fault.cr2 {
        ctx.vcpu.write_reg(HV_X86_CR2, cr2)?;
    }
    ctx.inject_exception(fault.vector, fault.error_code)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

const SEGMENT_BASES: [u32; 6] = [
    VMCS_GUEST_ES_BASE, VMCS_GUEST_CS_BASE, VMCS_GUEST_SS_BASE, VMCS_GUEST_DS_BASE, VMCS_GUEST_FS_BASE, VMCS_GUEST_GS_BASE,
];

/// The state the emulator needs, read from the vCPU.
pub fn load_cpu_state(vcpu: &dyn VcpuRegs, machine: &Machine) -> Result<CpuState, HvError> {
    let mut cpu = CpuState::default();
    for (value, &reg) in cpu.gprs.iter_mut().zip(GPR_BY_NUMBER.iter()) {
        *value = vcpu.read_reg(reg)?;
    }
    cpu.rip = vcpu.read_reg(HV_X86_RIP)?;
    cpu.rflags = vcpu.read_reg(HV_X86_RFLAGS)?;
    // The CPU's own CR0/CR4 (not the read shadows): they decide how it translates.
    cpu.cr0 = vcpu.read_vmcs(VMCS_GUEST_CR0)?;
    cpu.cr3 = vcpu.read_vmcs(VMCS_GUEST_CR3)?;
    cpu.cr4 = vcpu.read_vmcs(VMCS_GUEST_CR4)?;
    cpu.efer = vcpu.read_vmcs(VMCS_GUEST_IA32_EFER)?;
    for (base, &field) in cpu.seg_base.iter_mut().zip(SEGMENT_BASES.iter()) {
        *base = vcpu.read_vmcs(field)?;
    }
    cpu.cs_ar = vcpu.read_vmcs(VMCS_GUEST_CS_AR)? as u32;
    // CPL is SS.DPL (SDM 25.4.1).
    cpu.cpl = ((vcpu.read_vmcs(VMCS_GUEST_SS_AR)? >> AR_DPL_SHIFT) & 3) as u8;
    cpu.phys_addr_bits = machine.cpuid.phys_addr_bits;
    Ok(cpu)
}

/// Writes back the registers the emulator changed, and only those. An instruction that
/// completed moved RIP, which ends STI/MOV SS blocking.
pub fn store_cpu_state(vcpu: &mut dyn VcpuRegs, before: &CpuState, after: &CpuState) -> Result<(), HvError> {
    for (i, &reg) in GPR_BY_NUMBER.iter().enumerate() {
        if before.gprs[i] != after.gprs[i] {
            vcpu.write_reg(reg, after.gprs[i])?;
        }
    }
    if before.rflags != after.rflags {
        vcpu.write_reg(HV_X86_RFLAGS, after.rflags)?;
    }
    if before.rip != after.rip {
        vcpu.write_reg(HV_X86_RIP, after.rip)?;
        super::end_interrupt_shadow(vcpu)?;
    }
    Ok(())
}

/// The machine as the emulator sees it: RAM through vm-memory, everything else on the
/// MMIO bus.
pub struct MachineBus<'a> {
    pub machine: &'a Machine,
    /// The exiting vCPU's local APIC: its page is private to the vCPU (SDM 11.4.1).
    pub lapic: Option<&'a Lapic>,
}

impl MachineBus<'_> {
    /// The local APIC and the offset into its page, if `gpa` is in it.
    fn apic_at(&self, gpa: u64) -> Option<(&Lapic, u64)> {
        let offset = gpa.checked_sub(LAPIC_BASE).filter(|&o| o < LAPIC_SIZE)?;
        self.lapic.map(|lapic| (lapic, offset))
    }
}

impl GuestBus for MachineBus<'_> {
    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutsideRam> {
        self.machine.ram.memory().read_slice(buf, GuestAddress(gpa)).map_err(|_| OutsideRam { gpa })
    }

    fn cmpxchg_ram(&mut self, gpa: u64, old: &[u8], new: &[u8]) -> Result<bool, OutsideRam> {
        let len = old.len() as u64;
        let aligned = (len == 4 || len == 8) && new.len() == old.len() && gpa.is_multiple_of(len);
        if !aligned || !self.machine.ram.contains(gpa, len) {
            return Err(OutsideRam { gpa });
        }
        let host = self.machine.ram.memory().get_host_address(GuestAddress(gpa)).map_err(|_| OutsideRam { gpa })?;
        // SAFETY: `host` points at `len` bytes of mapped guest RAM, naturally aligned
        // (guest RAM is page-aligned and gpa is a multiple of len); other vCPUs access
        // it concurrently, hence the atomic types.
        let swapped = unsafe {
            if len == 8 {
                let (o, n) = (u64::from_le_bytes(old.try_into().unwrap_or([0; 8])), u64::from_le_bytes(new.try_into().unwrap_or([0; 8])));
                (*(host as *const AtomicU64)).compare_exchange(o, n, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            } else {
                let (o, n) = (u32::from_le_bytes(old.try_into().unwrap_or([0; 4])), u32::from_le_bytes(new.try_into().unwrap_or([0; 4])));
                (*(host as *const AtomicU32)).compare_exchange(o, n, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            }
        };
        Ok(swapped)
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        if let Some((lapic, offset)) = self.apic_at(gpa) {
            lapic.read(offset, buf);
        } else if self.machine.ram.contains(gpa, buf.len() as u64) {
            let _ = self.machine.ram.memory().read_slice(buf, GuestAddress(gpa));
        } else {
            self.machine.mmio.read(gpa, buf);
        }
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        if let Some((lapic, offset)) = self.apic_at(gpa) {
            lapic.write(offset, data);
        } else if self.machine.ram.contains(gpa, data.len() as u64) {
            let _ = self.machine.ram.memory().write_slice(data, GuestAddress(gpa));
        } else {
            self.machine.mmio.write(gpa, data);
        }
    }
}
