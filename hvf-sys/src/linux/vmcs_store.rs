//! The VMCS of a vCPU: VT-x field encodings (crate::vmcs) mapped onto KVM state.
//!
//! - Guest registers, segments, control registers, EFER, GDTR/IDTR and the
//!   interruptibility state live in KVM's sync-regs area (read and written in place,
//!   marked dirty for the next entry). Guest MSR-backed fields (PAT, DEBUGCTL, SYSENTER)
//!   and DR7 cost an ioctl, only when touched.
//! - Everything else (controls, exit information, fields KVM has no place for) is stored
//!   here and given meaning by the run loop (`run.rs`).
//!
//! Two presentation rules make KVM's state look like a VMCS (SDM 25.4.1 / A.7-A.8):
//! - CR4: under VT-x CR4.VMXE is a fixed-1 bit of the guest's real CR4 (hidden from the
//!   guest by the CR4 mask/shadow). KVM's CR4 is that value without VMXE; the VMCS view
//!   adds the VMXE the VMM last wrote.
//! - KVM lets the guest write CR0 and load null selectors without exiting. A VT-x CPU
//!   keeps CR0.NE set (hvrun's CR0 mask intercepts the write) and marks null data
//!   selectors unusable. After an exit the view shows KVM's state that way; what the VMM
//!   itself writes is shown and checked as written (`written` bits).
use super::entry_checks::{GuestView, CR0_NE, CR0_PE, CR4_VMXE, EFER_LMA};
use super::errors::*;
use super::segments::*;
use super::caps;
use super::controls::Controls;
use super::vcpu::VcpuState;
use crate::error::*;
use crate::vmcs::*;
use crate::vmx::*;
use kvm_bindings::{KVM_VCPUEVENT_VALID_SHADOW, KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI};
use kvm_ioctls::SyncReg;
use std::collections::HashMap;

/// `written` bit of segment register i (SEG_*) is 1 << i; CR0 is this one.
pub const WRITTEN_CR0: u32 = 1 << SEGMENT_COUNT;

/// IA32_PAT, IA32_DEBUGCTL and the SYSENTER MSRs (SDM vol. 4).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_DEBUGCTL: u32 = 0x1d9;
const MSR_IA32_PAT: u32 = 0x277;

/// Guest-state fields backed by an MSR of the KVM vCPU.
fn msr_of_field(field: u32) -> Option<u32> {
    Some(match field {
        VMCS_GUEST_IA32_PAT => MSR_IA32_PAT,
        VMCS_GUEST_IA32_DEBUGCTL => MSR_IA32_DEBUGCTL,
        VMCS_GUEST_IA32_SYSENTER_CS => MSR_IA32_SYSENTER_CS,
        VMCS_GUEST_SYSENTER_ESP => MSR_IA32_SYSENTER_ESP,
        VMCS_GUEST_SYSENTER_EIP => MSR_IA32_SYSENTER_EIP,
        _ => return None,
    })
}

/// The stored fields of a fresh vCPU: the control fields with their must-be-one bits and
/// the framework's extra defaults (`caps::FRESH_PROCBASED2_EXTRA`), the VMCS link pointer
/// all ones (SDM 26.3.1.5), as a fresh HVF VMCS has them; everything else zero.
pub fn initial_fields() -> HashMap<u32, u64> {
    let mut fields = HashMap::new();
    fields.insert(VMCS_GUEST_LINK_POINTER, u64::MAX);
    for field in [VMCS_CTRL_PIN_BASED, VMCS_CTRL_CPU_BASED, VMCS_CTRL_CPU_BASED2, VMCS_CTRL_VMENTRY_CONTROLS, VMCS_CTRL_VMEXIT_CONTROLS] {
        if let Some((must, _)) = caps::control_write_masks(field) {
            fields.insert(field, must);
        }
    }
    *fields.entry(VMCS_CTRL_CPU_BASED2).or_default() |= caps::FRESH_PROCBASED2_EXTRA as u64;
    fields
}

/// Why the layer refuses a VMCS write that VMWRITE itself would take, as HVF does:
/// `Some(reason)` for a refused write.
pub fn refused_write(field: u32, value: u64) -> Option<String> {
    if field == VMCS_GUEST_IA32_PAT {
        // HVF keeps the guest's PAT itself: "macOS doesn't let us set VMCS_GUEST_IA32_PAT"
        // (orbstack's HVF code). Which error it returns is not known; any is fatal to a
        // VMM that checks.
        return Some("VMCS_GUEST_IA32_PAT may not be written (Hypervisor.framework refuses it)".into());
    }
    let (must, may) = caps::control_write_masks(field)?;
    if value & must != must || value & !may != 0 {
        return Some(format!("{} {value:#x} is outside hv_vmx_vcpu_get_cap_write_vmcs's masks \
            (must-be-one {must:#x}, may-be-one {may:#x})", vmcs_field_name(field).unwrap_or("?")));
    }
    None
}

/// A written value cut to the field's width (VMWRITE semantics, SDM 31.3 "VMWRITE").
fn truncate(field: u32, value: u64) -> u64 {
    match field_width(field) {
        FieldWidth::Bits16 => value & 0xffff,
        FieldWidth::Bits32 => value & 0xffff_ffff,
        FieldWidth::Bits64 | FieldWidth::Natural => value,
    }
}

/// VMX interruptibility bits of KVM's interrupt shadow and NMI masking.
///
/// AMD SVM has a single interrupt-shadow bit, which KVM reports as both STI and MOV SS
/// blocking. VT-x never has both (SDM 27.3.1.5 refuses a VM entry with both), so that
/// one-instruction shadow is shown as one of them, with the same effect on interrupts:
/// STI blocking while RFLAGS.IF=1, MOV SS blocking while IF=0 (a shadow with IF=0
/// cannot come from STI, and VM entry refuses STI blocking with IF=0, 27.3.1.5).
pub fn interruptibility_from_kvm(shadow: u8, nmi_masked: u8, rflags: u64) -> u32 {
    let shadow = shadow as u32;
    let mut bits = Interruptibility::empty();
    let interrupts_on = rflags & (1 << 9) != 0;
    if shadow & KVM_X86_SHADOW_INT_STI != 0 && interrupts_on {
        bits |= Interruptibility::STI;
    } else if shadow & (KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI) != 0 {
        bits |= Interruptibility::MOV_SS;
    }
    if nmi_masked != 0 {
        bits |= Interruptibility::NMI;
    }
    bits.bits()
}

/// KVM's interrupt shadow for VMX interruptibility bits.
pub fn shadow_from_vmx(bits: u32) -> u8 {
    let bits = Interruptibility::from_bits_retain(bits);
    let mut shadow = 0;
    if bits.contains(Interruptibility::STI) {
        shadow |= KVM_X86_SHADOW_INT_STI;
    }
    if bits.contains(Interruptibility::MOV_SS) {
        shadow |= KVM_X86_SHADOW_INT_MOV_SS;
    }
    shadow as u8
}

impl VcpuState {
    /// A stored field (0 if never written).
    pub fn field(&self, field: u32) -> u64 {
        self.fields.get(&field).copied().unwrap_or(0)
    }

    pub fn set_field(&mut self, field: u32, value: u64) {
        self.fields.insert(field, value);
    }

    /// The segment register `index` as the VMCS presents it.
    fn segment_view(&self, index: usize) -> VmxSegment {
        let sregs = &self.fd.sync_regs().sregs;
        let mut seg = VmxSegment::from_kvm(segment(sregs, index));
        let data_segment = matches!(index, SEG_ES | SEG_SS | SEG_DS | SEG_FS | SEG_GS);
        if self.written & (1 << index) == 0 && data_segment && sregs.cr0 & CR0_PE != 0 && seg.selector & !3 == 0 {
            seg.ar |= AR_UNUSABLE;
        }
        seg
    }

    fn cr0_view(&self) -> u64 {
        let cr0 = self.fd.sync_regs().sregs.cr0;
        if self.written & WRITTEN_CR0 != 0 { cr0 } else { cr0 | CR0_NE }
    }

    /// VMREAD.
    pub fn read_field(&mut self, field: u32) -> Result<u64, hv_return_t> {
        if vmcs_field_name(field).is_none() {
            log::debug!("hvf-sys/linux: VMCS read of unknown field {field:#x}");
            return Err(HV_BAD_ARGUMENT);
        }
        if let Some((index, part)) = segment_field(field) {
            let seg = self.segment_view(index);
            return Ok(match part {
                SegmentPart::Selector => seg.selector as u64,
                SegmentPart::Limit => seg.limit as u64,
                SegmentPart::AccessRights => seg.ar as u64,
                SegmentPart::Base => seg.base,
            });
        }
        if let Some(msr) = msr_of_field(field) {
            return super::msr::read(&self.fd, msr);
        }
        let sync = self.fd.sync_regs();
        Ok(match field {
            VMCS_GUEST_CR0 => self.cr0_view(),
            VMCS_GUEST_CR3 => sync.sregs.cr3,
            VMCS_GUEST_CR4 => sync.sregs.cr4 | if self.cr4_vmxe { CR4_VMXE } else { 0 },
            VMCS_GUEST_IA32_EFER => sync.sregs.efer,
            VMCS_GUEST_GDTR_BASE => sync.sregs.gdt.base,
            VMCS_GUEST_GDTR_LIMIT => sync.sregs.gdt.limit as u64,
            VMCS_GUEST_IDTR_BASE => sync.sregs.idt.base,
            VMCS_GUEST_IDTR_LIMIT => sync.sregs.idt.limit as u64,
            VMCS_GUEST_RIP => sync.regs.rip,
            VMCS_GUEST_RSP => sync.regs.rsp,
            VMCS_GUEST_RFLAGS => sync.regs.rflags,
            VMCS_GUEST_IGNORE_IRQ => interruptibility_from_kvm(sync.events.interrupt.shadow, sync.events.nmi.masked, sync.regs.rflags) as u64,
            VMCS_GUEST_DR7 => match self.fd.get_debug_regs() {
                Ok(dr) => dr.dr7,
                Err(e) => return Err(ioctl_failed("KVM_GET_DEBUGREGS", &e)),
            },
            _ => self.field(field),
        })
    }

    /// VMWRITE.
    pub fn write_field(&mut self, field: u32, value: u64) -> Result<(), hv_return_t> {
        if vmcs_field_name(field).is_none() {
            log::debug!("hvf-sys/linux: VMCS write of unknown field {field:#x}");
            return Err(HV_BAD_ARGUMENT);
        }
        if field_is_read_only(field) {
            // VMWRITE to a read-only field fails (SDM 31.3; no "VMWRITE to any field").
            log::debug!("hvf-sys/linux: VMCS write of read-only field {}", vmcs_field_name(field).unwrap_or("?"));
            return Err(HV_BAD_ARGUMENT);
        }
        let value = truncate(field, value);
        if let Some(reason) = refused_write(field, value) {
            log::error!("hvf-sys/linux: {reason}");
            return Err(HV_BAD_ARGUMENT);
        }
        if let Some((index, part)) = segment_field(field) {
            let sregs = &mut self.fd.sync_regs_mut().sregs;
            let seg = segment_mut(sregs, index);
            match part {
                SegmentPart::Selector => seg.selector = value as u16,
                SegmentPart::Limit => seg.limit = value as u32,
                SegmentPart::AccessRights => set_ar(seg, value as u32),
                SegmentPart::Base => seg.base = value,
            }
            self.written |= 1 << index;
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            return Ok(());
        }
        if let Some(msr) = msr_of_field(field) {
            return super::msr::write(&self.fd, msr, value);
        }
        match field {
            VMCS_GUEST_DR7 => {
                let mut dr = self.fd.get_debug_regs().map_err(|e| ioctl_failed("KVM_GET_DEBUGREGS", &e))?;
                dr.dr7 = value;
                self.fd.set_debug_regs(&dr).map_err(|e| ioctl_failed("KVM_SET_DEBUGREGS", &e))?;
                return Ok(());
            }
            VMCS_GUEST_RIP | VMCS_GUEST_RSP | VMCS_GUEST_RFLAGS => {
                let regs = &mut self.fd.sync_regs_mut().regs;
                match field {
                    VMCS_GUEST_RIP => regs.rip = value,
                    VMCS_GUEST_RSP => regs.rsp = value,
                    _ => regs.rflags = value,
                }
                self.fd.set_sync_dirty_reg(SyncReg::Register);
                return Ok(());
            }
            VMCS_GUEST_IGNORE_IRQ => {
                let events = &mut self.fd.sync_regs_mut().events;
                events.interrupt.shadow = shadow_from_vmx(value as u32);
                events.nmi.masked = (value as u32 & Interruptibility::NMI.bits() != 0) as u8;
                events.flags |= KVM_VCPUEVENT_VALID_SHADOW;
                self.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
                // Also stored: bits KVM has no place for (SMI blocking) read back as 0.
                return Ok(());
            }
            _ => {}
        }
        let sregs_field = matches!(field, VMCS_GUEST_CR0 | VMCS_GUEST_CR3 | VMCS_GUEST_CR4 | VMCS_GUEST_IA32_EFER
            | VMCS_GUEST_GDTR_BASE | VMCS_GUEST_GDTR_LIMIT | VMCS_GUEST_IDTR_BASE | VMCS_GUEST_IDTR_LIMIT);
        if sregs_field {
            let sregs = &mut self.fd.sync_regs_mut().sregs;
            match field {
                VMCS_GUEST_CR0 => sregs.cr0 = value,
                VMCS_GUEST_CR3 => sregs.cr3 = value,
                VMCS_GUEST_CR4 => sregs.cr4 = value & !CR4_VMXE,
                VMCS_GUEST_IA32_EFER => sregs.efer = value,
                VMCS_GUEST_GDTR_BASE => sregs.gdt.base = value,
                VMCS_GUEST_GDTR_LIMIT => sregs.gdt.limit = value as u16,
                VMCS_GUEST_IDTR_BASE => sregs.idt.base = value,
                _ => sregs.idt.limit = value as u16,
            }
            match field {
                VMCS_GUEST_CR0 => self.written |= WRITTEN_CR0,
                VMCS_GUEST_CR4 => self.cr4_vmxe = value & CR4_VMXE != 0,
                _ => {}
            }
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            return Ok(());
        }
        self.set_field(field, value);
        Ok(())
    }

    /// The control fields as the entry checks need them.
    pub fn controls(&self) -> Controls {
        Controls {
            pin: self.field(VMCS_CTRL_PIN_BASED) as u32,
            proc: self.field(VMCS_CTRL_CPU_BASED) as u32,
            proc2: self.field(VMCS_CTRL_CPU_BASED2) as u32,
            entry: self.field(VMCS_CTRL_VMENTRY_CONTROLS) as u32,
            exit: self.field(VMCS_CTRL_VMEXIT_CONTROLS) as u32,
            entry_irq_info: self.field(VMCS_CTRL_VMENTRY_IRQ_INFO) as u32,
            entry_exc_error: self.field(VMCS_CTRL_VMENTRY_EXC_ERROR) as u32,
            entry_instr_len: self.field(VMCS_CTRL_VMENTRY_INSTR_LEN) as u32,
            guest_pe: self.fd.sync_regs().sregs.cr0 & CR0_PE != 0,
        }
    }

    /// The guest state as the VM-entry checks see it.
    pub fn guest_view(&self, controls: &Controls) -> GuestView {
        let sync = self.fd.sync_regs();
        let mut segs = [VmxSegment::default(); SEGMENT_COUNT];
        for (index, seg) in segs.iter_mut().enumerate() {
            *seg = self.segment_view(index);
        }
        GuestView {
            cr0: self.cr0_view(),
            cr4: sync.sregs.cr4 | if self.cr4_vmxe { CR4_VMXE } else { 0 },
            efer: sync.sregs.efer,
            rflags: sync.regs.rflags,
            segs,
            interruptibility: interruptibility_from_kvm(sync.events.interrupt.shadow, sync.events.nmi.masked, sync.regs.rflags),
            activity: self.field(VMCS_GUEST_ACTIVITY_STATE) as u32,
            entry_controls: controls.entry,
            proc2: controls.effective_proc2(),
            entry_irq_info: controls.entry_irq_info,
        }
    }

    /// KVM executes MOV to CR0 itself, so the exit in which a VMM on VT-x sees the guest
    /// enter IA-32e mode never reaches hvrun here. At that exit the VMM must turn a
    /// 16-bit busy TSS in TR (an AP fresh from real mode) into a 64-bit one, which is all
    /// VM entry accepts in IA-32e mode (SDM 27.3.1.2; `vmm::exit::cr` does it on a Mac):
    /// the layer does it on hvrun's behalf, once the guest is in IA-32e mode.
    fn stand_in_for_the_cr0_exit(&mut self) {
        let tr = &mut self.fd.sync_regs_mut().sregs.tr;
        if tr.type_ == AR_TYPE_TSS16_BUSY as u8 {
            tr.type_ = AR_TYPE_TSS32_BUSY as u8;
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
        }
    }

    /// After every exit: the VM-exit information fields, and "IA-32e mode guest" from
    /// EFER.LMA as a VM exit stores it (SDM 28.2 / 27.2, "Updating VM-entry controls").
    pub fn record_exit(&mut self, exit: &ExitInfo) {
        self.written = 0;
        let lma = self.fd.sync_regs().sregs.efer & EFER_LMA != 0;
        let entry = self.field(VMCS_CTRL_VMENTRY_CONTROLS);
        let ia32e = EntryControls::GUEST_IA32E.bits() as u64;
        self.set_field(VMCS_CTRL_VMENTRY_CONTROLS, if lma { entry | ia32e } else { entry & !ia32e });
        if lma {
            self.stand_in_for_the_cr0_exit();
        }
        self.set_field(VMCS_RO_EXIT_REASON, exit.reason as u64);
        self.set_field(VMCS_RO_EXIT_QUALIFIC, exit.qualification);
        self.set_field(VMCS_GUEST_PHYSICAL_ADDRESS, exit.gpa);
        self.set_field(VMCS_RO_GUEST_LIN_ADDR, exit.linear);
        self.set_field(VMCS_RO_VMEXIT_INSTR_LEN, exit.instr_len as u64);
        self.set_field(VMCS_RO_VMEXIT_IRQ_INFO, 0);
        self.set_field(VMCS_RO_VMEXIT_IRQ_ERROR, 0);
        // Every VM exit clears the valid bit of the entry interruption field (SDM 25.8.3),
        // a failed entry's too: an event not delivered comes back as IDT-vectoring
        // information, never as a still-valid entry field.
        let entry_event = self.field(VMCS_CTRL_VMENTRY_IRQ_INFO);
        self.set_field(VMCS_CTRL_VMENTRY_IRQ_INFO, entry_event & !(IRQ_INFO_VALID as u64));
        let (info, error) = self.take_undelivered_event();
        self.set_field(VMCS_RO_IDT_VECTOR_INFO, info as u64);
        self.set_field(VMCS_RO_IDT_VECTOR_ERROR, error as u64);
    }

    /// An event the VMM injected that KVM still holds undelivered (KVM_RUN returned
    /// before the guest ran, on a kick; or delivery was cut short): on VT-x that is an
    /// event whose delivery the exit interrupted, reported as IDT-vectoring information
    /// for the VMM to inject again (SDM 28.2.4). Every kind is reported: an exception (a
    /// #GP the VMM queued for an MSR), an NMI, an external interrupt.
    /// It is taken out of KVM, so that it is not delivered twice and the VMM's next
    /// injection finds KVM empty. Leaving an exception in KVM while the VMM, seeing the
    /// entry field free, injects an interrupt gives KVM two events at once: it delivers
    /// the exception and drops the interrupt when it next completes an exit (its
    /// "injected" interrupt was never in the hardware's event field). That is how the
    /// boot hang of issue 8 lost a timer interrupt the LAPIC had already moved to ISR.
    /// A software interrupt or exception, which the layer hands KVM as a hardware one
    /// with RIP already past the instruction (`run.rs`), comes back the same way; injected
    /// again it pushes the same return address.
    fn take_undelivered_event(&mut self) -> (u32, u32) {
        let events = self.fd.sync_regs().events;
        let report = if events.exception.injected != 0 || events.exception.pending != 0 {
            let mut info = IRQ_INFO_VALID | IRQ_INFO_HARD_EXC | events.exception.nr as u32;
            if events.exception.has_error_code != 0 {
                info |= IRQ_INFO_ERROR_VALID;
            }
            let ev = &mut self.fd.sync_regs_mut().events;
            ev.exception.injected = 0;
            ev.exception.pending = 0;
            Some((info, events.exception.error_code))
        } else if events.nmi.injected != 0 {
            self.fd.sync_regs_mut().events.nmi.injected = 0;
            Some((IRQ_INFO_VALID | IRQ_INFO_NMI | 2, 0))
        } else if events.interrupt.injected != 0 && events.interrupt.soft == 0 {
            self.fd.sync_regs_mut().events.interrupt.injected = 0;
            Some((IRQ_INFO_VALID | IRQ_INFO_EXT_IRQ | events.interrupt.nr as u32, 0))
        } else {
            None
        };
        match report {
            Some(event) => {
                self.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
                event
            }
            None => (0, 0),
        }
    }
}

/// The exit information the run loop presents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    pub reason: u32,
    pub qualification: u64,
    pub gpa: u64,
    pub linear: u64,
    pub instr_len: u32,
}

impl ExitInfo {
    pub fn simple(reason: u32) -> Self {
        ExitInfo { reason, ..Default::default() }
    }

    /// A failed VM entry because of invalid guest state (SDM 27.8 / 26.8).
    pub fn entry_failure() -> Self {
        ExitInfo::simple(VMX_REASON_VMENTRY_GUEST | VMX_REASON_ENTRY_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruptibility_converts_both_ways() {
        for bits in [0, 1, 2, 8, 9, 10] {
            let shadow = shadow_from_vmx(bits);
            assert_eq!(interruptibility_from_kvm(shadow, (bits & 8 != 0) as u8, 0x202), bits);
        }
        assert_eq!(shadow_from_vmx(Interruptibility::STI.bits()) as u32, KVM_X86_SHADOW_INT_STI);
        assert_eq!(shadow_from_vmx(Interruptibility::MOV_SS.bits()) as u32, KVM_X86_SHADOW_INT_MOV_SS);
        // AMD's one shadow bit, reported by KVM as both kinds: shown as STI blocking with
        // IF=1, as MOV SS blocking with IF=0 (STI blocking with IF=0 fails VM entry).
        let amd = (KVM_X86_SHADOW_INT_STI | KVM_X86_SHADOW_INT_MOV_SS) as u8;
        assert_eq!(interruptibility_from_kvm(amd, 0, 0x202), Interruptibility::STI.bits());
        assert_eq!(interruptibility_from_kvm(amd, 0, 0x2), Interruptibility::MOV_SS.bits());
        assert_eq!(interruptibility_from_kvm(KVM_X86_SHADOW_INT_STI as u8, 0, 0x2), Interruptibility::MOV_SS.bits());
    }

    #[test]
    fn writes_are_cut_to_the_field_width() {
        assert_eq!(truncate(VMCS_GUEST_CS, 0x1_2345), 0x2345);
        assert_eq!(truncate(VMCS_CTRL_CPU_BASED, 0x1_0000_0001), 1);
        assert_eq!(truncate(VMCS_GUEST_RIP, u64::MAX), u64::MAX);
    }
}
