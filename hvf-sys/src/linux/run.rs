//! `hv_vcpu_run`: one VT-x style run of the guest on KVM.
//!
//! Entry: the control checks (`controls.rs`, VMfail -> HV_ERROR) and the guest-state
//! checks (`entry_checks.rs`, -> exit reason 33 | bit 31), then the event injection the
//! VMM wrote into VMCS_CTRL_VMENTRY_IRQ_INFO, then KVM_RUN.
//!
//! Exit: KVM's exit is presented in the VMCS exit-information fields as VT-x would
//! report it, with RIP at the exiting instruction and nothing of it executed. For IO,
//! MMIO and MSR exits KVM has an operation pending that must be completed before the
//! next KVM_RUN; the layer completes it at once (immediate_exit: no guest code runs),
//! learns the instruction's length from how far RIP moved, and puts the guest state
//! back as it was at the exit ("complete early, restore, let the VMM emulate", see
//! /work/shared/design/linux-host.md). Where KVM had already retired the instruction, its
//! start is found by decoding backwards (`decode.rs`).
use super::decode::{self, AddressMatch, IndexRegs, IoInsn, RegisterFile};
use super::entry_checks::{self, CR0_PE, CR0_PG, EFER_LMA, RFLAGS_IF};
use super::errors::*;
use super::kick;
use super::vcpu::{Vcpu, VcpuState};
use super::vm::{lock, Vm};
use super::vmcs_store::ExitInfo;
use super::controls;
use crate::error::*;
use crate::vmcs::*;
use crate::vmx::*;
use iced_x86::Register;
use kvm_bindings::*;
use kvm_ioctls::SyncReg;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// KVM_RUN = _IO(KVMIO, 0x80); KVM_INTERRUPT = _IOW(KVMIO, 0x86, struct kvm_interrupt);
/// KVM_NMI = _IO(KVMIO, 0x9a) (linux/kvm.h). Issued directly: the run loop reads the
/// kvm_run page itself, and kvm-ioctls has no KVM_INTERRUPT wrapper.
const KVM_RUN: libc::c_ulong = 0xae80;
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;

/// Completion rounds before giving up (a multi-access instruction needs a few).
const MAX_COMPLETION_ROUNDS: usize = 64;


const HLT_OPCODE: u8 = 0xf4;
const STI_OPCODE: u8 = 0xfb;
/// RDMSR and WRMSR are 0F 32 / 0F 30.
const MSR_INSN_LEN: u64 = 2;

/// A copy of the guest state KVM shared at an exit.
#[derive(Clone, Copy)]
struct Snapshot {
    regs: kvm_regs,
    sregs: kvm_sregs,
    events: kvm_vcpu_events,
}

impl Snapshot {
    fn take(st: &VcpuState) -> Self {
        let s = st.fd.sync_regs();
        Snapshot { regs: s.regs, sregs: s.sregs, events: s.events }
    }

    /// Code size of the guest: 16 in real mode, 64 with EFER.LMA and CS.L, else CS.D.
    fn bitness(&self) -> u32 {
        let cs = &self.sregs.cs;
        if self.sregs.cr0 & CR0_PE == 0 {
            16
        } else if self.sregs.efer & EFER_LMA != 0 && cs.l != 0 {
            64
        } else if cs.db != 0 {
            32
        } else {
            16
        }
    }

    /// Linear address of an offset in CS (SDM vol. 3, 3.4).
    fn code_linear(&self, ip: u64) -> u64 {
        let linear = self.sregs.cs.base.wrapping_add(ip);
        if self.bitness() == 64 { linear } else { linear & 0xffff_ffff }
    }

    fn paging(&self) -> bool {
        self.sregs.cr0 & CR0_PG != 0
    }
}

impl Snapshot {
    fn index_regs(&self) -> IndexRegs {
        IndexRegs { rsi: self.regs.rsi, rdi: self.regs.rdi, rcx: self.regs.rcx }
    }

    fn set_index_regs(&mut self, index: IndexRegs) {
        (self.regs.rsi, self.regs.rdi, self.regs.rcx) = (index.rsi, index.rdi, index.rcx);
    }

    /// For a string instruction (at the start of `bytes`, at `ip`) whose registers KVM
    /// had already advanced by the `count` elements it handed out at this exit: puts
    /// them back as they were before those elements, as VT-x would show them.
    fn rewind_string(&mut self, bytes: &[u8], ip: u64, count: u64) -> Result<(), hv_return_t> {
        let Some(string) = decode::string_at(self.bitness(), bytes, ip) else {
            return Err(instruction_not_found("string I/O", self));
        };
        let df = self.regs.rflags & decode::RFLAGS_DF != 0;
        self.set_index_regs(string.rewind(self.index_regs(), df, count));
        Ok(())
    }
}

impl RegisterFile for Snapshot {
    fn gpr(&self, reg: Register) -> Option<u64> {
        let r = &self.regs;
        Some(match reg {
            Register::RAX => r.rax, Register::RCX => r.rcx, Register::RDX => r.rdx, Register::RBX => r.rbx,
            Register::RSP => r.rsp, Register::RBP => r.rbp, Register::RSI => r.rsi, Register::RDI => r.rdi,
            Register::R8 => r.r8, Register::R9 => r.r9, Register::R10 => r.r10, Register::R11 => r.r11,
            Register::R12 => r.r12, Register::R13 => r.r13, Register::R14 => r.r14, Register::R15 => r.r15,
            _ => return None,
        })
    }

    fn segment_base(&self, reg: Register) -> Option<u64> {
        let s = &self.sregs;
        Some(match reg {
            Register::ES => s.es.base, Register::CS => s.cs.base, Register::SS => s.ss.base,
            Register::DS => s.ds.base, Register::FS => s.fs.base, Register::GS => s.gs.base,
            _ => return None,
        })
    }

    fn rflags(&self) -> u64 {
        self.regs.rflags
    }
}

/// Reads guest code at a linear address into `buf`, page by page (KVM_TRANSLATE when
/// paging is on, identity otherwise); returns how many leading bytes could be read.
fn read_linear(vm: &Vm, st: &VcpuState, snap: &Snapshot, linear: u64, buf: &mut [u8]) -> usize {
    let memory = lock(&vm.memory);
    let mut done = 0;
    while done < buf.len() {
        let addr = linear.wrapping_add(done as u64);
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        let gpa = if snap.paging() {
            match st.fd.translate_gva(addr) {
                Ok(t) if t.valid != 0 => t.physical_address,
                Ok(_) => break,
                Err(e) => {
                    log::debug!("hvf-sys/linux: KVM_TRANSLATE({addr:#x}) failed: {e}");
                    break;
                }
            }
        } else {
            addr
        };
        if !memory.read(gpa, &mut buf[done..done + n]) {
            break;
        }
        done += n;
    }
    done
}

/// The up to 15 bytes of guest code that end at `linear` (fewer if the page before is
/// not readable); the slice ends exactly at `linear`.
fn read_before(vm: &Vm, st: &VcpuState, snap: &Snapshot, linear: u64) -> Vec<u8> {
    let want = (decode::MAX_INSN_LEN as u64).min(linear) as usize;
    let start = linear - want as u64;
    let split = ((linear & !0xfff).max(start) - start) as usize; // bytes in the previous page
    let mut buf = vec![0u8; want];
    let tail_ok = read_linear(vm, st, snap, start + split as u64, &mut buf[split..]) == want - split;
    if !tail_ok {
        return Vec::new();
    }
    if split > 0 && read_linear(vm, st, snap, start, &mut buf[..split]) == split {
        buf
    } else {
        buf.split_off(split)
    }
}

fn read_forward(vm: &Vm, st: &VcpuState, snap: &Snapshot, ip: u64) -> Vec<u8> {
    let mut buf = vec![0u8; decode::MAX_INSN_LEN];
    let n = read_linear(vm, st, snap, snap.code_linear(ip), &mut buf);
    buf.truncate(n);
    buf
}

/// Whether the guest code at offset `ip` in CS is `want` (false if it cannot be read).
fn code_is(vm: &Vm, st: &VcpuState, snap: &Snapshot, ip: u64, want: &[u8]) -> bool {
    let mut buf = [0u8; 4];
    let buf = &mut buf[..want.len()];
    read_linear(vm, st, snap, snap.code_linear(ip), buf) == want.len() && buf == want
}

/// One KVM_RUN; Ok(()) on an exit, Err(errno) otherwise. Time inside is guest time,
/// measured with RDTSC and KVM's TSC frequency: clock_gettime is a system call on hosts
/// whose clocksource is not the TSC (the test sandbox uses the HPET, where two clock
/// reads per KVM_RUN doubled the cost of an exit); Instant when the frequency is unknown.
fn kvm_run(st: &mut VcpuState) -> Result<(), i32> {
    // The sync area's sregs.interrupt_bitmap only ever gains bits: KVM sets the vector of
    // an interrupt it holds at an exit and never clears the others. Written back with the
    // next system-register change (a SIPI's real-mode state, a CR8 write), the lowest
    // vector there becomes an injected interrupt, delivered whatever RFLAGS.IF says (an AP
    // triple-faulted in its trampoline on it). The layer's events are the one channel
    // for a held interrupt (inject, take_undelivered_event), so the bitmap stays empty.
    st.fd.sync_regs_mut().sregs.interrupt_bitmap = [0; 4];
    let tsc_start = tsc();
    let start = if st.tsc_khz.is_none() { Some(Instant::now()) } else { None };
    // SAFETY: KVM_RUN on our vCPU fd takes no argument; the kvm_run page it fills is
    // mapped for the fd's lifetime.
    let ret = unsafe { libc::ioctl(st.fd.as_raw_fd(), KVM_RUN as _, 0) };
    let errno = if ret < 0 { last_errno() } else { 0 };
    let ns = match (st.tsc_khz, start) {
        (Some(khz), _) => (tsc().wrapping_sub(tsc_start) as u128 * 1_000_000 / khz as u128) as u64,
        (None, Some(start)) => start.elapsed().as_nanos() as u64,
        (None, None) => 0,
    };
    st.exec_ns = st.exec_ns.saturating_add(ns);
    if ret < 0 { Err(errno) } else { Ok(()) }
}

fn tsc() -> u64 {
    // SAFETY: RDTSC exists on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// What completing a pending operation revealed.
struct Completion {
    /// A read exit was followed by a write to the same address: read-modify-write.
    read_modify_write: bool,
}

/// Completes the operation KVM has pending (reads return zeros) without running guest
/// code: KVM_RUN with immediate_exit returns EINTR once nothing is pending; instructions
/// with several accesses exit again first.
fn complete(vcpu: &Vcpu, st: &mut VcpuState) -> Result<Completion, hv_return_t> {
    let mut outcome = Completion { read_modify_write: false };
    let first_read_gpa = {
        let run = st.fd.get_kvm_run();
        // SAFETY (union reads here and below): exit_reason says which member is valid.
        (run.exit_reason == KVM_EXIT_MMIO && unsafe { run.__bindgen_anon_1.mmio.is_write } == 0)
            .then_some(unsafe { run.__bindgen_anon_1.mmio.phys_addr })
    };
    for _ in 0..MAX_COMPLETION_ROUNDS {
        {
            let run = st.fd.get_kvm_run();
            match run.exit_reason {
                KVM_EXIT_IO => {
                    let io = unsafe { run.__bindgen_anon_1.io };
                    if io.direction as u32 == KVM_EXIT_IO_IN {
                        let len = io.size as usize * io.count as usize;
                        let page = run as *mut kvm_run as *mut u8;
                        // SAFETY: KVM places the data inside the mmapped kvm_run area
                        // (data_offset + len stays within the vCPU mmap size).
                        unsafe { std::ptr::write_bytes(page.add(io.data_offset as usize), 0, len) };
                    }
                }
                KVM_EXIT_MMIO => {
                    let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
                    if mmio.is_write == 0 {
                        mmio.data = [0; 8];
                    }
                }
                KVM_EXIT_X86_RDMSR | KVM_EXIT_X86_WRMSR => {
                    let msr = unsafe { &mut run.__bindgen_anon_1.msr };
                    msr.data = 0;
                    msr.error = 0;
                }
                _ => {}
            }
        }
        vcpu.set_immediate_exit(1);
        match kvm_run(st) {
            Err(libc::EINTR) => break,
            Err(libc::EAGAIN) => continue,
            Err(errno) => {
                vcpu.set_immediate_exit(vcpu.kick.load(Ordering::SeqCst) as u8);
                return Err(raw_ioctl_failed("KVM_RUN (completing an exit)", errno));
            }
            Ok(()) => {
                let run = st.fd.get_kvm_run();
                match run.exit_reason {
                    KVM_EXIT_MMIO => {
                        let mmio = unsafe { run.__bindgen_anon_1.mmio };
                        if mmio.is_write != 0 && first_read_gpa == Some(mmio.phys_addr) {
                            outcome.read_modify_write = true;
                        }
                    }
                    KVM_EXIT_IO | KVM_EXIT_X86_RDMSR | KVM_EXIT_X86_WRMSR => {}
                    other => {
                        log::warn!("hvf-sys/linux: KVM exit {other} while completing an exit");
                        break;
                    }
                }
            }
        }
    }
    // Keep a kick that arrived meanwhile (its immediate_exit must survive).
    vcpu.set_immediate_exit(vcpu.kick.load(Ordering::SeqCst) as u8);
    Ok(outcome)
}

/// Puts the state of the exit back (RIP at `rip`), for the next entry: registers always,
/// system registers and events only if completing changed them.
fn restore(st: &mut VcpuState, snap: &Snapshot, rip: u64) {
    let sync = st.fd.sync_regs_mut();
    sync.regs = snap.regs;
    sync.regs.rip = rip;
    let sregs_changed = bytes_of(&sync.sregs) != bytes_of(&snap.sregs);
    let events_changed = bytes_of(&sync.events) != bytes_of(&snap.events);
    if sregs_changed {
        sync.sregs = snap.sregs;
    }
    if events_changed {
        sync.events = snap.events;
    }
    st.fd.set_sync_dirty_reg(SyncReg::Register);
    if sregs_changed {
        st.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
    }
    if events_changed {
        st.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
    }
}

fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a plain C struct from kvm-bindings (no references); reading its bytes,
    // padding included, is fine for an equality test of values KVM wrote.
    unsafe { std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>()) }
}

fn instruction_not_found(what: &str, snap: &Snapshot) -> hv_return_t {
    log::error!("hvf-sys/linux: cannot locate the {what} instruction near CS:RIP {:#x}:{:#x}",
        snap.sregs.cs.selector, snap.regs.rip);
    HV_ERROR
}

/// KVM_EXIT_IO -> VMX_REASON_IO (SDM 28.2.1, table 28-5).
fn io_exit(vm: &Vm, vcpu: &Vcpu, st: &mut VcpuState) -> Result<ExitInfo, hv_return_t> {
    let io = unsafe { st.fd.get_kvm_run().__bindgen_anon_1.io };
    let (port, size, is_in) = (io.port, io.size, io.direction as u32 == KVM_EXIT_IO_IN);
    let mut snap = Snapshot::take(st);
    complete(vcpu, st)?;
    let after = Snapshot::take(st);
    let moved = after.regs.rip.wrapping_sub(snap.regs.rip);
    let bitness = snap.bitness();
    let dx = snap.regs.rdx as u16;
    let forward = read_forward(vm, st, &snap, snap.regs.rip);
    let at_rip = decode::io_at_fast(bitness, &forward, snap.regs.rip, port, size, is_in, dx);
    let advanced = after.index_regs() != snap.index_regs();
    let (start, insn) = if (1..=decode::MAX_INSN_LEN as u64).contains(&moved) {
        // RIP was at the instruction and completing it moved RIP past it.
        let insn = at_rip.unwrap_or(IoInsn { len: 0, is_in, size, string: false, rep: false, immediate: false, port_imm: None });
        (snap.regs.rip, IoInsn { len: moved as usize, ..insn })
    } else if let Some(insn) = at_rip.filter(|i| i.string && advanced) {
        // A string instruction KVM has not finished (REP iterations left): RIP at it.
        (snap.regs.rip, insn)
    } else if let Some(insn) = at_rip.filter(|i| i.rep) {
        // A REP string instruction with iterations left whose registers KVM had already
        // advanced past this exit's elements (OUTS: the data was handed out at once, so
        // completing it changed nothing): rewind them.
        snap.rewind_string(&forward, snap.regs.rip, io.count as u64)?;
        (snap.regs.rip, insn)
    } else {
        // KVM already retired it: RIP is past; find it by decoding backwards. A string
        // instruction's registers are past this exit's elements then: rewind them.
        let before = read_before(vm, st, &snap, snap.code_linear(snap.regs.rip));
        match decode::io_before(bitness, &before, snap.regs.rip, port, size, is_in, dx) {
            Some(insn) => {
                let start = snap.regs.rip.wrapping_sub(insn.len as u64);
                if insn.string {
                    snap.rewind_string(&before[before.len() - insn.len..], start, io.count as u64)?;
                }
                (start, insn)
            }
            None => return Err(instruction_not_found("I/O", &snap)),
        }
    };
    restore(st, &snap, start);
    let qualification = IoQualification { size, is_in, string: insn.string, rep: insn.rep, immediate: insn.immediate, port };
    // INS/OUTS report the linear address of their memory operand (SDM 28.2.1).
    let linear = match (insn.string, is_in) {
        (true, true) => snap.sregs.es.base.wrapping_add(snap.regs.rdi),
        (true, false) => snap.sregs.ds.base.wrapping_add(snap.regs.rsi),
        _ => 0,
    };
    Ok(ExitInfo { reason: VMX_REASON_IO, qualification: qualification.encode(), gpa: 0, linear, instr_len: insn.len as u32 })
}

/// KVM_EXIT_MMIO -> VMX_REASON_EPT_VIOLATION (SDM 28.2.1, table 28-7).
fn mmio_exit(vm: &Vm, vcpu: &Vcpu, st: &mut VcpuState) -> Result<ExitInfo, hv_return_t> {
    let mmio = unsafe { st.fd.get_kvm_run().__bindgen_anon_1.mmio };
    let (gpa, len, is_write) = (mmio.phys_addr, mmio.len as usize, mmio.is_write != 0);
    let mut snap = Snapshot::take(st);
    let completion = complete(vcpu, st)?;
    let after = Snapshot::take(st);
    let moved = after.regs.rip.wrapping_sub(snap.regs.rip);
    let how = if snap.paging() { AddressMatch::PageOffset } else { AddressMatch::Exact };
    let (start, instr_len) = if (1..=decode::MAX_INSN_LEN as u64).contains(&moved) {
        (snap.regs.rip, moved as usize)
    } else {
        let bitness = snap.bitness();
        let before = read_before(vm, st, &snap, snap.code_linear(snap.regs.rip));
        let forward = read_forward(vm, st, &snap, snap.regs.rip);
        let found = if is_write {
            // A REP string store with iterations left (KVM keeps RIP at it), then a store
            // KVM retired (RIP past it), then any store at RIP.
            decode::rep_store_at(bitness, &forward, snap.regs.rip, &snap, len, gpa, how)
                .map(|store| (snap.regs.rip, store))
                .or_else(|| {
                    let data = &mmio.data[..len.min(mmio.data.len())];
                    decode::store_before(bitness, &before, snap.regs.rip, &snap, len, gpa, how, data)
                        .map(|store| (snap.regs.rip.wrapping_sub(store.len as u64), store))
                })
                .or_else(|| {
                    decode::store_at(bitness, &forward, snap.regs.rip, &snap, len, gpa, how)
                        .map(|store| (snap.regs.rip, store))
                })
        } else {
            // An unfinished string load (REP MOVS/LODS from MMIO) is still at RIP.
            decode::length_at(bitness, &forward, snap.regs.rip)
                .map(|len| (snap.regs.rip, decode::Store { len, rewound: None }))
        };
        let Some((start, store)) = found else {
            return Err(instruction_not_found("MMIO", &snap));
        };
        // A string store KVM had already advanced past the element it wrote: rewind.
        if let Some(index) = store.rewound {
            snap.set_index_regs(index);
        }
        (start, store.len)
    };
    restore(st, &snap, start);
    let mut q = if is_write { EptQualification::WRITE } else { EptQualification::READ };
    if completion.read_modify_write {
        q |= EptQualification::WRITE;
    }
    // A write to a read-only mapping: the EPT entry allows read and execute.
    if lock(&vm.memory).find(gpa).is_some() {
        q |= EptQualification::READABLE | EptQualification::EXECUTABLE;
    }
    Ok(ExitInfo { reason: VMX_REASON_EPT_VIOLATION, qualification: q.bits(), gpa, linear: 0, instr_len: instr_len as u32 })
}

/// KVM_EXIT_X86_RDMSR/WRMSR -> VMX_REASON_RDMSR/WRMSR: ECX and EDX:EAX are the guest's.
fn msr_exit(vcpu: &Vcpu, st: &mut VcpuState, reason: u32) -> Result<ExitInfo, hv_return_t> {
    let snap = Snapshot::take(st);
    complete(vcpu, st)?;
    let after = Snapshot::take(st);
    let moved = after.regs.rip.wrapping_sub(snap.regs.rip);
    let start = if moved == MSR_INSN_LEN { snap.regs.rip } else { snap.regs.rip.wrapping_sub(MSR_INSN_LEN) };
    restore(st, &snap, start);
    Ok(ExitInfo { reason, instr_len: MSR_INSN_LEN as u32, ..Default::default() })
}

/// KVM_EXIT_HLT -> VMX_REASON_HLT with RIP at the HLT. KVM reports it past the HLT on
/// the hosts measured; the byte before RIP is checked rather than assumed.
fn hlt_exit(vm: &Vm, st: &mut VcpuState) -> ExitInfo {
    let snap = Snapshot::take(st);
    let rip = snap.regs.rip;
    let at_rip = code_is(vm, st, &snap, rip, &[HLT_OPCODE]);
    let before = code_is(vm, st, &snap, rip.wrapping_sub(1), &[HLT_OPCODE]);
    if before || !at_rip {
        st.fd.sync_regs_mut().regs.rip = rip.wrapping_sub(1);
        st.fd.set_sync_dirty_reg(SyncReg::Register);
    }
    ExitInfo { reason: VMX_REASON_HLT, instr_len: 1, ..Default::default() }
}

/// Turns VMCS_CTRL_VMENTRY_IRQ_INFO into KVM state (SDM 27.6 / 26.6 "Event Injection"),
/// then clears its valid bit as a successful VM entry does. Returns whether an event was
/// injected.
fn inject(st: &mut VcpuState) -> Result<bool, hv_return_t> {
    let info = st.field(VMCS_CTRL_VMENTRY_IRQ_INFO) as u32;
    if info & IRQ_INFO_VALID == 0 {
        return Ok(false);
    }
    let vector = (info & IRQ_INFO_VECTOR_MASK) as u8;
    let events_dirty = st.fd.get_kvm_run().kvm_dirty_regs & KVM_SYNC_X86_EVENTS as u64 != 0;
    match info & IRQ_INFO_TYPE_MASK {
        IRQ_INFO_EXT_IRQ => {
            if events_dirty {
                // The events written at the next entry would overwrite a queued
                // interrupt: queue it in them instead (the same KVM state).
                let ev = &mut st.fd.sync_regs_mut().events;
                ev.interrupt.injected = 1;
                ev.interrupt.nr = vector;
                ev.interrupt.soft = 0;
            } else {
                let irq = kvm_interrupt { irq: vector as u32 };
                // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer.
                let ret = unsafe { libc::ioctl(st.fd.as_raw_fd(), KVM_INTERRUPT as _, &irq as *const kvm_interrupt) };
                if ret < 0 {
                    return Err(raw_ioctl_failed("KVM_INTERRUPT", last_errno()));
                }
            }
        }
        IRQ_INFO_NMI => {
            if events_dirty {
                let ev = &mut st.fd.sync_regs_mut().events;
                ev.nmi.pending = 1;
                ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING;
            } else {
                st.fd.nmi().map_err(|e| ioctl_failed("KVM_NMI", &e))?;
            }
        }
        IRQ_INFO_HARD_EXC => {
            let error = st.field(VMCS_CTRL_VMENTRY_EXC_ERROR) as u32;
            let ev = &mut st.fd.sync_regs_mut().events;
            ev.exception.injected = 1;
            ev.exception.nr = vector;
            ev.exception.has_error_code = (info & IRQ_INFO_ERROR_VALID != 0) as u8;
            ev.exception.error_code = error;
            st.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
        }
        _ => {
            // Software interrupt / exception: delivered with the return address past the
            // instruction (RIP + entry instruction length). KVM cannot take a software
            // event's length from userspace, so RIP is advanced here and the vector
            // delivered as an exception (vectors 0-31 except NMI) or as an interrupt.
            // Difference from VT-x: the gate's DPL is not checked against CPL.
            let len = st.field(VMCS_CTRL_VMENTRY_INSTR_LEN);
            let sync = st.fd.sync_regs_mut();
            sync.regs.rip = sync.regs.rip.wrapping_add(len);
            if vector < 32 && vector != 2 {
                sync.events.exception.injected = 1;
                sync.events.exception.nr = vector;
                sync.events.exception.has_error_code = 0;
            } else {
                sync.events.interrupt.injected = 1;
                sync.events.interrupt.nr = vector;
                sync.events.interrupt.soft = 0;
            }
            st.fd.set_sync_dirty_reg(SyncReg::Register);
            st.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
        }
    }
    st.set_field(VMCS_CTRL_VMENTRY_IRQ_INFO, (info & !IRQ_INFO_VALID) as u64);
    Ok(true)
}

/// State VT-x loads at entry that KVM keeps elsewhere.
fn prepare_entry(st: &mut VcpuState, ctrls: &controls::Controls) -> Result<(), hv_return_t> {
    // Without "load IA32_EFER", entry sets EFER.LMA/LME from "IA-32e mode guest"
    // (SDM 27.3.2.1 / 26.3.2.1).
    if ctrls.entry & EntryControls::LOAD_EFER.bits() == 0 {
        let ia32e = ctrls.entry & EntryControls::GUEST_IA32E.bits() != 0;
        let sregs = &mut st.fd.sync_regs_mut().sregs;
        let lm = entry_checks::EFER_LMA | entry_checks::EFER_LME;
        let efer = if ia32e { sregs.efer | lm } else { sregs.efer & !lm };
        if efer != sregs.efer {
            sregs.efer = efer;
            st.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
        }
    }
    // TSC offsetting (SDM 26.6.5 / 25.6.5): the VCPU TSC offset attribute, set on change.
    let offset = if ctrls.proc & ProcBased::TSC_OFFSET.bits() != 0 { st.field(VMCS_CTRL_TSC_OFFSET) } else { 0 };
    st.set_tsc_offset(offset)?;
    // Interrupt-window exiting is KVM's request_interrupt_window, set before each
    // KVM_RUN (request_interrupt_window).
    Ok(())
}

/// Interrupt-window exiting (SDM 26.7.5 / 25.7.5) exits before an instruction only when
/// RFLAGS.IF=1 and there is no blocking by STI or MOV SS: the instruction in the shadow
/// runs first. Linux idles with `sti; hlt`, and an interrupt injected between the two
/// returns to the HLT, so the CPU sleeps with the wake-up it just took undone. KVM on the
/// nested test sandbox's SVM reported the window open inside the shadow (a --cpus 4 boot
/// hung on it: test `the_sti_shadow_before_hlt_...`), and its single-step never trapped
/// there either. So in a shadow the layer does not ask KVM for the window: the guest runs
/// on to its next exit, after which the VMM asks again with the shadow gone. Later than
/// VT-x would open it, never earlier.
///
/// A shadow before a HLT is always held: the HLT exits as soon as it runs, however many
/// kicks come first (one the host lost there is put back first,
/// `restore_sti_shadow_before_hlt`). The same KVM also reported a shadow that never
/// ended (a guest spinning on `jmp $` after an IRET; kick_stress lost an interrupt for
/// good): before
/// any other instruction, a shadow still there after STALE_SHADOW_ENTRIES entries at one
/// RIP is taken as stale and the window asked for.
fn request_interrupt_window(vm: &Vm, st: &mut VcpuState, wanted: bool) {
    const STALE_SHADOW_ENTRIES: u32 = 4;
    let in_shadow = st.fd.sync_regs().events.interrupt.shadow != 0;
    let hold = wanted && in_shadow && {
        let snap = Snapshot::take(st);
        let rip = snap.regs.rip;
        let before_hlt = code_is(vm, st, &snap, rip, &[HLT_OPCODE]);
        let held = match st.window_held_at {
            Some((at, n)) if at == rip => n,
            _ => 0,
        };
        let hold = before_hlt || held < STALE_SHADOW_ENTRIES;
        st.window_held_at = Some((rip, held + 1));
        hold
    };
    if !(wanted && in_shadow) {
        st.window_held_at = None;
    }
    st.fd.get_kvm_run().request_interrupt_window = (wanted && !hold) as u8;
}

/// Puts back the shadow of an `sti` right before a `hlt` that the host lost; returns
/// whether it did. KVM on the test sandbox's nested SVM (QEMU TCG) reports some exits
/// there (a window it calls open, a kick) with RFLAGS.IF=1 and no shadow, which VT-x
/// never does: an exit between STI and the instruction after it records blocking by STI
/// (SDM 25.4.2, table 25-3). An interrupt delivered there returns to the HLT and the CPU
/// sleeps with the wake-up it just took undone (a task queued by a wake-up IPI waited on
/// a halted vCPU: a --cpus 4 boot hung, 1 in 30; QEMU's own guest hangs there too). Only
/// exits that can land between two instructions (a window, a kick, a deadline) are
/// looked at. If the STI had found IF already set (no shadow on hardware), holding the
/// interrupt until the HLT has run only delivers it one instruction later, as an
/// interrupt arriving during the HLT would be.
fn restore_sti_shadow_before_hlt(vm: &Vm, st: &mut VcpuState) -> bool {
    let sync = st.fd.sync_regs();
    if sync.regs.rflags & RFLAGS_IF == 0 || sync.events.interrupt.shadow != 0 {
        return false;
    }
    let snap = Snapshot::take(st);
    if !code_is(vm, st, &snap, snap.regs.rip.wrapping_sub(1), &[STI_OPCODE, HLT_OPCODE]) {
        return false;
    }
    let events = &mut st.fd.sync_regs_mut().events;
    events.interrupt.shadow = KVM_X86_SHADOW_INT_STI as u8;
    events.flags |= KVM_VCPUEVENT_VALID_SHADOW;
    st.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
    log::debug!("hvf-sys/linux: vCPU exit at RIP {:#x}: the STI shadow before the HLT put back", snap.regs.rip);
    true
}

/// Waits in the HLT (or shutdown / wait-for-SIPI) activity state until kicked, asleep:
/// the kick signal is blocked while the flag is checked and unblocked atomically by
/// `ppoll` for the wait, so a kick between the check and the wait is not lost (it stays
/// pending and ends the `ppoll` at once).
fn wait_for_kick(vcpu: &Vcpu) {
    // SAFETY: signal-mask calls on this thread with initialised sets; ppoll with no
    // descriptors and no timeout only waits for a signal.
    unsafe {
        let mut kick_only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut kick_only);
        libc::sigaddset(&mut kick_only, kick::kick_signal());
        let mut during_wait: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &kick_only, &mut during_wait);
        libc::sigdelset(&mut during_wait, kick::kick_signal());
        while !vcpu.kick.load(Ordering::SeqCst) {
            libc::ppoll(std::ptr::null_mut(), 0, std::ptr::null(), &during_wait);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &kick_only, std::ptr::null_mut());
    }
}

/// hv_vcpu_run, and hv_vcpu_run_until with a deadline (CLOCK_MONOTONIC nanoseconds, the
/// layer's absolute time): at the deadline the run ends with a VMX-preemption-timer exit
/// (reason 52), as HVF's does (it arms that timer for the deadline).
pub fn run(vm: &Vm, vcpu: &Vcpu, st: &mut VcpuState, deadline: Option<u64>) -> hv_return_t {
    kick::entering_run(vcpu);
    let ret = run_inside(vm, vcpu, st, deadline);
    kick::leaving_run(vcpu);
    ret
}

fn deadline_passed(deadline: Option<u64>) -> bool {
    deadline.is_some_and(|d| crate::absolute_time::now() >= d)
}

fn run_inside(vm: &Vm, vcpu: &Vcpu, st: &mut VcpuState, deadline: Option<u64>) -> hv_return_t {
    let ctrls = st.controls();
    if let Err(message) = controls::check_controls(&ctrls) {
        log::error!("hvf-sys/linux: vCPU {}: VM entry with invalid controls: {message}", vcpu.id);
        st.set_field(VMCS_RO_INSTR_ERROR, VMX_INSTR_ERROR_INVALID_CONTROLS as u64);
        return HV_ERROR;
    }
    if let Err(message) = super::cpuid::check_gated(st.cpuid_controls_needed, ctrls.effective_proc2()) {
        log::error!("hvf-sys/linux: vCPU {}: VM entry refused: {message}", vcpu.id);
        return HV_ERROR;
    }
    if let Err(message) = entry_checks::check_guest_state(&st.guest_view(&ctrls)) {
        log::warn!("hvf-sys/linux: vCPU {}: VM entry fails on guest state: {message}", vcpu.id);
        // What the VMM wrote stays "written" so a retry is checked the same way.
        let written = st.written;
        st.record_exit(&ExitInfo::entry_failure());
        st.written = written;
        return HV_SUCCESS;
    }
    if let Err(code) = prepare_entry(st, &ctrls) {
        return code;
    }
    let injected = match inject(st) {
        Ok(injected) => injected,
        Err(code) => return code,
    };
    let activity = st.field(VMCS_GUEST_ACTIVITY_STATE) as u32;
    if activity != ACTIVITY_ACTIVE {
        if injected && activity == ACTIVITY_HLT {
            // An injected event wakes the vCPU (SDM 27.6.x: HLT state left on delivery).
            st.set_field(VMCS_GUEST_ACTIVITY_STATE, ACTIVITY_ACTIVE as u64);
        } else {
            wait_for_kick(vcpu);
            kick::take(vcpu);
            st.record_exit(&ExitInfo::simple(VMX_REASON_IRQ));
            return HV_SUCCESS;
        }
    }
    if let Some(deadline) = deadline {
        if let Err(code) = st.arm_deadline(vcpu.owner_tid, deadline) {
            return code;
        }
    }
    let window_wanted = ctrls.proc & ProcBased::IRQ_WND.bits() != 0;
    let exit = loop {
        request_interrupt_window(vm, st, window_wanted);
        // No look at the kick flag here: a kick sets immediate_exit, so KVM_RUN returns
        // EINTR at once, and does so with the state (an injected event still queued)
        // written back to the sync regs, which record_exit needs to see. A deadline
        // already passed is the same: the timer's signal has set immediate_exit.
        let result = kvm_run(st);
        match result {
            Err(libc::EINTR) => {
                restore_sti_shadow_before_hlt(vm, st);
                if kick::take(vcpu) {
                    break ExitInfo::simple(VMX_REASON_IRQ);
                }
                if deadline_passed(deadline) {
                    break ExitInfo::simple(VMX_REASON_VMX_TIMER_EXPIRED);
                }
                continue; // another signal, or the timer of an earlier run: run on
            }
            Err(libc::EAGAIN) => continue,
            Err(errno) => {
                st.disarm_deadline();
                return raw_ioctl_failed("KVM_RUN", errno);
            }
            Ok(()) => {}
        }
        let reason = st.fd.get_kvm_run().exit_reason;
        let presented = match reason {
            KVM_EXIT_IO => io_exit(vm, vcpu, st),
            KVM_EXIT_MMIO => mmio_exit(vm, vcpu, st),
            KVM_EXIT_X86_RDMSR => msr_exit(vcpu, st, VMX_REASON_RDMSR),
            KVM_EXIT_X86_WRMSR => msr_exit(vcpu, st, VMX_REASON_WRMSR),
            KVM_EXIT_HLT => Ok(hlt_exit(vm, st)),
            KVM_EXIT_IRQ_WINDOW_OPEN => {
                // Not open in a shadow: the HLT runs first, then exits.
                if restore_sti_shadow_before_hlt(vm, st) {
                    continue;
                }
                if ctrls.proc & ProcBased::IRQ_WND.bits() != 0 {
                    Ok(ExitInfo::simple(VMX_REASON_IRQ_WND))
                } else {
                    continue;
                }
            }
            KVM_EXIT_SHUTDOWN => Ok(ExitInfo::simple(VMX_REASON_TRIPLE_FAULT)),
            // Without an in-kernel LAPIC, KVM exits when the guest lowers CR8 (SVM's
            // cr8_write_interception): an interrupt the TPR held back may now go in.
            // VT-x without a TPR shadow does not exit here; presented as an
            // external-interrupt exit (nothing to handle), the VMM takes the new CR8 and
            // looks at its pending interrupts before the next entry.
            KVM_EXIT_SET_TPR => Ok(ExitInfo::simple(VMX_REASON_IRQ)),
            KVM_EXIT_FAIL_ENTRY => {
                let fail = unsafe { st.fd.get_kvm_run().__bindgen_anon_1.fail_entry };
                log::error!("hvf-sys/linux: KVM_EXIT_FAIL_ENTRY, hardware reason {:#x}", fail.hardware_entry_failure_reason);
                Ok(ExitInfo::entry_failure())
            }
            KVM_EXIT_INTERNAL_ERROR => {
                let internal = unsafe { st.fd.get_kvm_run().__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                log::error!("hvf-sys/linux: KVM_EXIT_INTERNAL_ERROR, suberror {} data {:x?} at RIP {:#x}",
                    internal.suberror, &internal.data[..n], st.fd.sync_regs().regs.rip);
                Err(HV_ERROR)
            }
            other => {
                log::error!("hvf-sys/linux: unexpected KVM exit reason {other} at RIP {:#x}", st.fd.sync_regs().regs.rip);
                Err(HV_ERROR)
            }
        };
        match presented {
            Ok(exit) => break exit,
            Err(code) => {
                st.disarm_deadline();
                return code;
            }
        }
    };
    if deadline.is_some() {
        st.disarm_deadline();
    }
    st.record_exit(&exit);
    HV_SUCCESS
}
