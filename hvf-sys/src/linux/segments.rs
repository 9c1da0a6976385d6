//! Segment registers: the VMCS holds selector, base, limit and an access-rights word
//! (SDM vol. 3, 25.4.1, table 25-2); KVM holds a `kvm_segment` with one field per bit
//! group. This module converts between the two, the "unusable" bit included.
use crate::vmcs::*;
use crate::vmx::*;
use kvm_bindings::{kvm_segment, kvm_sregs};

/// The guest segment registers in VMCS encoding order: ES, CS, SS, DS, FS, GS, LDTR, TR.
/// Selector, limit, access-rights and base fields of the VMCS follow this order with a
/// stride of 2 (SDM appendix B), which is how the VMCS code finds the index of a field.
pub const SEGMENT_COUNT: usize = 8;
pub const SEG_ES: usize = 0;
pub const SEG_CS: usize = 1;
pub const SEG_SS: usize = 2;
pub const SEG_DS: usize = 3;
pub const SEG_FS: usize = 4;
pub const SEG_GS: usize = 5;
pub const SEG_LDTR: usize = 6;
pub const SEG_TR: usize = 7;

/// Which part of a segment register a VMCS field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentPart {
    Selector,
    Limit,
    AccessRights,
    Base,
}

/// The segment register and part a VMCS field refers to, if it is a segment field.
pub fn segment_field(field: u32) -> Option<(usize, SegmentPart)> {
    let table = [
        (VMCS_GUEST_ES, SegmentPart::Selector),
        (VMCS_GUEST_ES_LIMIT, SegmentPart::Limit),
        (VMCS_GUEST_ES_AR, SegmentPart::AccessRights),
        (VMCS_GUEST_ES_BASE, SegmentPart::Base),
    ];
    for (first, part) in table {
        if field >= first && field < first + 2 * SEGMENT_COUNT as u32 && (field - first).is_multiple_of(2) {
            return Some((((field - first) / 2) as usize, part));
        }
    }
    None
}

/// The `kvm_segment` of register `index` (SEG_*) in `sregs`.
pub fn segment_mut(sregs: &mut kvm_sregs, index: usize) -> &mut kvm_segment {
    match index {
        SEG_ES => &mut sregs.es,
        SEG_CS => &mut sregs.cs,
        SEG_SS => &mut sregs.ss,
        SEG_DS => &mut sregs.ds,
        SEG_FS => &mut sregs.fs,
        SEG_GS => &mut sregs.gs,
        SEG_LDTR => &mut sregs.ldt,
        _ => &mut sregs.tr,
    }
}

/// Read-only twin of [`segment_mut`].
pub fn segment(sregs: &kvm_sregs, index: usize) -> &kvm_segment {
    match index {
        SEG_ES => &sregs.es,
        SEG_CS => &sregs.cs,
        SEG_SS => &sregs.ss,
        SEG_DS => &sregs.ds,
        SEG_FS => &sregs.fs,
        SEG_GS => &sregs.gs,
        SEG_LDTR => &sregs.ldt,
        _ => &sregs.tr,
    }
}

/// VMX access rights of a KVM segment (table 25-2: type 3:0, S 4, DPL 6:5, P 7, AVL 12,
/// L 13, D/B 14, G 15, unusable 16). A usable code or data segment shows the accessed
/// type bit, as VT-x stores it: loading a segment sets that bit (SDM 3.4.5.1), but AMD's
/// saved state, which KVM reports on an AMD host, can lack it, and the entry checks
/// would then refuse a state the guest never saw as wrong.
pub fn ar_from_kvm(seg: &kvm_segment) -> u32 {
    let accessed = if seg.s != 0 && seg.present != 0 && seg.unusable == 0 { 1 } else { 0 };
    (seg.type_ as u32 & AR_TYPE_MASK | accessed)
        | if seg.s != 0 { AR_S } else { 0 }
        | (seg.dpl as u32 & 3) << AR_DPL_SHIFT
        | if seg.present != 0 { AR_P } else { 0 }
        | if seg.avl != 0 { AR_AVL } else { 0 }
        | if seg.l != 0 { AR_L } else { 0 }
        | if seg.db != 0 { AR_DB } else { 0 }
        | if seg.g != 0 { AR_G } else { 0 }
        | if seg.unusable != 0 { AR_UNUSABLE } else { 0 }
}

/// Stores VMX access rights `ar` into a KVM segment (the other parts are left alone).
pub fn set_ar(seg: &mut kvm_segment, ar: u32) {
    seg.type_ = (ar & AR_TYPE_MASK) as u8;
    seg.s = (ar & AR_S != 0) as u8;
    seg.dpl = ((ar >> AR_DPL_SHIFT) & 3) as u8;
    seg.present = (ar & AR_P != 0) as u8;
    seg.avl = (ar & AR_AVL != 0) as u8;
    seg.l = (ar & AR_L != 0) as u8;
    seg.db = (ar & AR_DB != 0) as u8;
    seg.g = (ar & AR_G != 0) as u8;
    seg.unusable = (ar & AR_UNUSABLE != 0) as u8;
}

/// A segment register as the VMCS holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxSegment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub ar: u32,
}

impl VmxSegment {
    pub fn from_kvm(seg: &kvm_segment) -> Self {
        VmxSegment { selector: seg.selector, base: seg.base, limit: seg.limit, ar: ar_from_kvm(seg) }
    }

    pub fn usable(&self) -> bool {
        self.ar & AR_UNUSABLE == 0
    }

    pub fn seg_type(&self) -> u32 {
        self.ar & AR_TYPE_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rights_round_trip_through_kvm_segments() {
        // Real-mode code (0x9b), data (0x93), 64-bit code (0xa09b), 32-bit flat code with
        // G (0xc09b), busy TSS (0x8b), LDT (0x82), unusable (0x10000), DPL 3 data (0xf3).
        for ar in [0x9b, 0x93, 0xa09b, 0xc09b, 0x8b, 0x82, 0x1_0000, 0xf3, 0x1_0093, 0x10f3] {
            let mut seg = kvm_segment::default();
            set_ar(&mut seg, ar);
            assert_eq!(ar_from_kvm(&seg), ar, "AR {ar:#x}");
        }
        let mut seg = kvm_segment::default();
        set_ar(&mut seg, 0xa09b);
        assert_eq!((seg.type_, seg.s, seg.dpl, seg.present, seg.l, seg.db, seg.g), (11, 1, 0, 1, 1, 0, 1));
        // A loaded code segment whose saved type lacks the accessed bit (AMD) shows it set.
        seg.type_ = 10;
        assert_eq!(ar_from_kvm(&seg), 0xa09b);
        seg.s = 0;
        assert_eq!(ar_from_kvm(&seg) & AR_TYPE_MASK, 10, "system segments keep their type");
        set_ar(&mut seg, AR_UNUSABLE);
        assert_eq!((seg.unusable, seg.present), (1, 0));
    }

    #[test]
    fn segment_fields_find_their_register() {
        assert_eq!(segment_field(VMCS_GUEST_CS), Some((SEG_CS, SegmentPart::Selector)));
        assert_eq!(segment_field(VMCS_GUEST_TR_AR), Some((SEG_TR, SegmentPart::AccessRights)));
        assert_eq!(segment_field(VMCS_GUEST_LDTR_BASE), Some((SEG_LDTR, SegmentPart::Base)));
        assert_eq!(segment_field(VMCS_GUEST_GS_LIMIT), Some((SEG_GS, SegmentPart::Limit)));
        assert_eq!(segment_field(VMCS_GUEST_GDTR_BASE), None);
        assert_eq!(segment_field(VMCS_GUEST_IGNORE_IRQ), None);
    }
}
