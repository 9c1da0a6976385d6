//! The guest state a vCPU starts in, written into the VMCS (SDM vol. 3, 25.4 guest-state
//! area; the VM-entry checks of 27.3.1 / 26.3.1 decide what is valid).
use crate::controls::*;
use crate::regs::VcpuRegs;
use hvf_sys::vmcs::*;
use hvf_sys::vmx::*;
use hvf_sys::*;

/// A segment register as the VMCS holds it: access rights in VMX format (table 25-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub ar: u32,
}

impl Segment {
    /// A null selector: unusable, as VM entry requires outside real mode.
    pub const UNUSABLE: Segment = Segment { selector: 0, base: 0, limit: 0, ar: AR_UNUSABLE };

    /// A real-mode segment: base = selector * 16, 64 KiB, present read/write data
    /// (or execute/read code).
    pub const fn real(selector: u16, code: bool) -> Segment {
        let ty = if code { 0xb } else { 0x3 };
        Segment { selector, base: (selector as u64) << 4, limit: 0xffff, ar: ty | AR_S | AR_P }
    }

    /// A flat 4 GiB segment from a GDT entry `selector`: `code` chooses execute/read
    /// (accessed) or read/write (accessed); `long` sets L (64-bit code), else D/B=1.
    pub const fn flat(selector: u16, code: bool, long: bool) -> Segment {
        let ty = if code { 0xb } else { 0x3 };
        let size = if long { AR_L } else { AR_DB };
        Segment { selector, base: 0, limit: 0xffff_ffff, ar: ty | AR_S | AR_P | AR_G | size }
    }
}

/// Everything a vCPU needs to start executing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryState {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// The general registers a boot protocol passes values in (the others start at 0):
    /// RAX and RBX (multiboot: the magic and the information structure, Multiboot
    /// specification 0.6.96 section 3.2), RSI (Linux: the zero page).
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdt: (u64, u32),
    pub idt: (u64, u32),
}

/// RFLAGS bit 1 is always one (SDM vol. 1, 3.4.3).
pub const RFLAGS_FIXED: u64 = 1 << 1;
pub const RFLAGS_IF: u64 = 1 << 9;

/// A busy TSS (VM entry demands one in TR, 27.3.1.2) of `ty` with nothing in it.
const fn busy_tss(ty: u32) -> Segment {
    Segment { selector: 0, base: 0, limit: 0xffff, ar: ty | AR_P }
}

impl EntryState {
    /// Real mode at `cs:ip`, stack below `sp`, as after a far jump from the BIOS.
    pub fn real_mode(cs: u16, ip: u16, sp: u16) -> Self {
        let data = Segment::real(0, false);
        EntryState {
            rip: ip as u64,
            rsp: sp as u64,
            rflags: RFLAGS_FIXED,
            rax: 0,
            rbx: 0,
            rsi: 0,
            cr0: CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            cs: Segment::real(cs, true),
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: busy_tss(AR_TYPE_TSS16_BUSY),
            ldtr: Segment { ar: AR_UNUSABLE | AR_TYPE_LDT | AR_P, ..Segment::UNUSABLE },
            gdt: (0, 0xffff),
            idt: (0, 0x3ff),
        }
    }

    /// 32-bit protected mode with flat segments from a GDT at `gdt` (code selector 0x8,
    /// data 0x10), paging off.
    pub fn protected_flat(gdt: (u64, u32), rip: u64, rsp: u64) -> Self {
        let data = Segment::flat(0x10, false, false);
        EntryState {
            rip,
            rsp,
            cr0: CR0_PE | CR0_ET,
            cs: Segment::flat(0x8, true, false),
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: busy_tss(AR_TYPE_TSS32_BUSY),
            gdt,
            idt: (0, 0),
            ..Self::real_mode(0, 0, 0)
        }
    }

    /// 64-bit mode with paging from `cr3` (4-level), flat segments from a GDT at `gdt`
    /// (code selector 0x8 with L=1, data 0x10).
    pub fn long_mode(gdt: (u64, u32), cr3: u64, rip: u64, rsp: u64) -> Self {
        EntryState {
            cr0: CR0_PE | CR0_ET | CR0_PG | CR0_WP,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            cs: Segment::flat(0x8, true, true),
            tr: busy_tss(AR_TYPE_TSS32_BUSY),
            ..Self::protected_flat(gdt, rip, rsp)
        }
    }

    /// Writes this state into the vCPU: guest-state fields, CR shadows, and the IA-32e
    /// entry control, which must equal EFER.LMA (27.3.1.1).
    pub fn write(&self, vcpu: &mut dyn VcpuRegs, controls: &Controls) -> Result<(), HvError> {
        let segments = [
            (VMCS_GUEST_CS, VMCS_GUEST_CS_BASE, VMCS_GUEST_CS_LIMIT, VMCS_GUEST_CS_AR, self.cs),
            (VMCS_GUEST_DS, VMCS_GUEST_DS_BASE, VMCS_GUEST_DS_LIMIT, VMCS_GUEST_DS_AR, self.ds),
            (VMCS_GUEST_ES, VMCS_GUEST_ES_BASE, VMCS_GUEST_ES_LIMIT, VMCS_GUEST_ES_AR, self.es),
            (VMCS_GUEST_FS, VMCS_GUEST_FS_BASE, VMCS_GUEST_FS_LIMIT, VMCS_GUEST_FS_AR, self.fs),
            (VMCS_GUEST_GS, VMCS_GUEST_GS_BASE, VMCS_GUEST_GS_LIMIT, VMCS_GUEST_GS_AR, self.gs),
            (VMCS_GUEST_SS, VMCS_GUEST_SS_BASE, VMCS_GUEST_SS_LIMIT, VMCS_GUEST_SS_AR, self.ss),
            (VMCS_GUEST_TR, VMCS_GUEST_TR_BASE, VMCS_GUEST_TR_LIMIT, VMCS_GUEST_TR_AR, self.tr),
            (VMCS_GUEST_LDTR, VMCS_GUEST_LDTR_BASE, VMCS_GUEST_LDTR_LIMIT, VMCS_GUEST_LDTR_AR, self.ldtr),
        ];
        for (sel, base, limit, ar, seg) in segments {
            vcpu.write_vmcs(sel, seg.selector as u64)?;
            vcpu.write_vmcs(base, seg.base)?;
            vcpu.write_vmcs(limit, seg.limit as u64)?;
            vcpu.write_vmcs(ar, seg.ar as u64)?;
        }
        vcpu.write_vmcs(VMCS_GUEST_GDTR_BASE, self.gdt.0)?;
        vcpu.write_vmcs(VMCS_GUEST_GDTR_LIMIT, self.gdt.1 as u64)?;
        vcpu.write_vmcs(VMCS_GUEST_IDTR_BASE, self.idt.0)?;
        vcpu.write_vmcs(VMCS_GUEST_IDTR_LIMIT, self.idt.1 as u64)?;

        vcpu.write_vmcs(VMCS_GUEST_CR0, effective_cr0(self.cr0))?;
        vcpu.write_vmcs(VMCS_CTRL_CR0_SHADOW, self.cr0)?;
        vcpu.write_vmcs(VMCS_GUEST_CR3, self.cr3)?;
        vcpu.write_vmcs(VMCS_GUEST_CR4, effective_cr4(self.cr4))?;
        vcpu.write_vmcs(VMCS_CTRL_CR4_SHADOW, self.cr4)?;
        vcpu.write_vmcs(VMCS_GUEST_IA32_EFER, self.efer)?;
        let mut entry = controls.entry & !EntryControls::GUEST_IA32E.bits();
        if self.efer & EFER_LMA != 0 {
            entry |= EntryControls::GUEST_IA32E.bits();
        }
        vcpu.write_vmcs(VMCS_CTRL_VMENTRY_CONTROLS, entry as u64)?;

        vcpu.write_vmcs(VMCS_GUEST_DR7, 0x400)?;
        vcpu.write_vmcs(VMCS_GUEST_IGNORE_IRQ, 0)?;
        vcpu.write_vmcs(VMCS_GUEST_ACTIVITY_STATE, ACTIVITY_ACTIVE as u64)?;
        vcpu.write_vmcs(VMCS_GUEST_LINK_POINTER, u64::MAX)?;
        // No VMCS_GUEST_IA32_PAT: Hypervisor.framework refuses that write. The guest's PAT
        // starts at its power-on value in software (crate::msr::MsrState).

        vcpu.write_reg(HV_X86_RIP, self.rip)?;
        vcpu.write_reg(HV_X86_RSP, self.rsp)?;
        vcpu.write_reg(HV_X86_RFLAGS, self.rflags | RFLAGS_FIXED)?;
        vcpu.write_reg(HV_X86_RAX, self.rax)?;
        vcpu.write_reg(HV_X86_RBX, self.rbx)?;
        vcpu.write_reg(HV_X86_RSI, self.rsi)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::RecordedExit;

    const CONTROLS: Controls = Controls { pin: 0x1f, proc: 0, proc2: 0, entry: 0x91ff, exit: 0 };

    #[test]
    fn long_mode_sets_the_ia32e_entry_control_and_hides_vmxe() {
        let mut v = RecordedExit::new();
        EntryState::long_mode((0x500, 0x17), 0x9000, 0x100_0000, 0x8ff0).write(&mut v, &CONTROLS).unwrap();
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_CONTROLS], 0x91ff | 0x200);
        assert_eq!(v.vmcs[&VMCS_GUEST_CR4], CR4_PAE | CR4_VMXE);
        assert_eq!(v.vmcs[&VMCS_CTRL_CR4_SHADOW], CR4_PAE);
        assert_eq!(v.vmcs[&VMCS_GUEST_CR0], 0x8001_0031);
        assert_eq!(v.vmcs[&VMCS_GUEST_CS_AR], 0xa09b);
        assert_eq!(v.vmcs[&VMCS_GUEST_DS_AR], 0xc093);
        assert_eq!(v.vmcs[&VMCS_GUEST_TR_AR], 0x8b);
        assert_eq!(v.vmcs[&VMCS_GUEST_IA32_EFER], 0x500);
        assert_eq!(v.regs[&HV_X86_RFLAGS], 2);
        assert!(!v.vmcs.contains_key(&VMCS_GUEST_IA32_PAT), "HVF refuses this field");
    }

    #[test]
    fn real_mode_segments() {
        let mut v = RecordedExit::new();
        EntryState::real_mode(0x1000, 0x10, 0xfff0).write(&mut v, &CONTROLS).unwrap();
        assert_eq!(v.vmcs[&VMCS_GUEST_CS_BASE], 0x10000);
        assert_eq!(v.vmcs[&VMCS_GUEST_CS_AR], 0x9b);
        assert_eq!(v.vmcs[&VMCS_GUEST_SS_AR], 0x93);
        assert_eq!(v.vmcs[&VMCS_GUEST_LDTR_AR], 0x10082);
        assert_eq!(v.vmcs[&VMCS_GUEST_TR_AR], 0x83);
        assert_eq!(v.vmcs[&VMCS_CTRL_VMENTRY_CONTROLS], 0x91ff);
        assert_eq!(v.vmcs[&VMCS_GUEST_CR0], CR0_ET | CR0_NE);
        assert!(!v.vmcs.contains_key(&VMCS_GUEST_IA32_PAT), "HVF refuses this field");
    }
}
