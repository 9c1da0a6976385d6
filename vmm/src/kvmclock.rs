//! kvmclock: the paravirtual clock Linux reads instead of calibrating timers (the pvclock
//! ABI of Linux's arch/x86/include/asm/pvclock-abi.h). The guest names a page with an MSR;
//! hvrun fills it once with how to turn the guest TSC into nanoseconds. The TSC is stable
//! and shared by every vCPU here, so the page never needs updating (flag TSC_STABLE).
use crate::clock::GuestClock;
use std::time::UNIX_EPOCH;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// CPUID 0x4000_0001 EAX: CLOCKSOURCE2 (the MSRs above) and CLOCKSOURCE_STABLE_BIT.
pub const FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
pub const FEATURE_CLOCKSOURCE_STABLE: u32 = 1 << 24;
/// `pvclock_vcpu_time_info.flags`: the TSC is the same on every vCPU and never jumps.
pub const PVCLOCK_TSC_STABLE: u8 = 1 << 0;
/// Bit 0 of MSR_KVM_SYSTEM_TIME_NEW: enable.
const SYSTEM_TIME_ENABLE: u64 = 1;

/// Multiplier and shift so that `ns = ((tsc << shift) * mul) >> 32` (shift may be
/// negative: right shift), with `mul` as large as fits in 32 bits for precision.
pub fn time_scale(tsc_hz: u64) -> (u32, i8) {
    let ns_hz: u64 = 1_000_000_000;
    let mut base = tsc_hz.max(1);
    let mut shift: i8 = 0;
    // Bring the ratio ns_hz / base into [0.5, 1) by scaling the TSC side by powers of 2.
    while base > ns_hz * 2 {
        base >>= 1;
        shift -= 1;
    }
    while base <= ns_hz {
        base <<= 1;
        shift += 1;
    }
    // mul = ns_hz / base in 0.32 fixed point; base > ns_hz so it fits in 32 bits.
    let mul = ((u128::from(ns_hz) << 32) / u128::from(base)) as u32;
    (mul, shift)
}

/// What the guest computes from a TSC delta (pvclock's `pvclock_scale_delta`).
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 { delta << shift } else { delta >> -shift };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

/// `struct pvclock_vcpu_time_info`, 32 bytes, little endian.
pub fn vcpu_time_info(version: u32, tsc_timestamp: u64, system_time: u64, mul: u32, shift: i8, flags: u8) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..4].copy_from_slice(&version.to_le_bytes());
    b[8..16].copy_from_slice(&tsc_timestamp.to_le_bytes());
    b[16..24].copy_from_slice(&system_time.to_le_bytes());
    b[24..28].copy_from_slice(&mul.to_le_bytes());
    b[28] = shift as u8;
    b[29] = flags;
    b
}

/// Writes a structure the guest reads while the version is odd, as the ABI asks: odd
/// version first, then the fields, then the even version.
fn publish(mem: &GuestMemoryMmap, gpa: u64, bytes: &[u8]) -> bool {
    let addr = GuestAddress(gpa);
    let mut odd = bytes.to_vec();
    odd[0] |= 1;
    mem.write_slice(&odd[..4], addr).is_ok()
        && mem.write_slice(&odd[4..], GuestAddress(gpa + 4)).is_ok()
        && mem.write_slice(&bytes[..4], addr).is_ok()
}

/// MSR_KVM_SYSTEM_TIME_NEW: fills the guest's time page. An address outside RAM is
/// ignored (the guest gets no clock from it), never written elsewhere.
pub fn write_system_time(mem: &GuestMemoryMmap, clock: &GuestClock, value: u64) {
    if value & SYSTEM_TIME_ENABLE == 0 {
        return;
    }
    // The page is wherever the guest says, only bit 0 being the enable bit (KVM's
    // msr.rst: "4-byte aligned physical address"): kvm-unit-tests keeps its vCPUs'
    // structures in a 4-byte-aligned array, and rounding down to 32 bytes made two
    // vCPUs share and tear one structure.
    let gpa = value & !SYSTEM_TIME_ENABLE;
    let (mul, shift) = time_scale(clock.tsc_hz);
    // One reference point: the guest TSC now, and the system time the same scale gives
    // for it (the guest TSC is 0 when the guest's time starts). Deriving the time from
    // the TSC, rather than reading a host clock beside it, puts every vCPU's page on
    // one line: vCPUs that read their pages at the same TSC get the same time (to the
    // nanosecond of rounding), so the guest sees no warp between them.
    let tsc = clock.guest_tsc();
    let ns = scale_delta(tsc, mul, shift);
    let info = vcpu_time_info(2, tsc, ns, mul, shift, PVCLOCK_TSC_STABLE);
    if !publish(mem, gpa, &info) {
        log::warn!("kvmclock: time page {gpa:#x} is outside guest RAM; not written");
    }
}

/// MSR_KVM_WALL_CLOCK_NEW: the wall-clock time at which the guest's system time was 0.
pub fn write_wall_clock(mem: &GuestMemoryMmap, clock: &GuestClock, gpa: u64) {
    let since_epoch = clock.start_wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&2u32.to_le_bytes());
    b[4..8].copy_from_slice(&(since_epoch.as_secs() as u32).to_le_bytes());
    b[8..12].copy_from_slice(&since_epoch.subsec_nanos().to_le_bytes());
    if !publish(mem, gpa, &b) {
        log::warn!("kvmclock: wall-clock structure {gpa:#x} is outside guest RAM; not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::scale_delta as scale;

    #[test]
    fn scale_turns_ticks_into_nanoseconds() {
        for hz in [1_000_000_000u64, 2_593_906_000, 3_000_000_000, 400_000_000, 24_000_000] {
            let (mul, shift) = time_scale(hz);
            let ns = scale(hz, mul, shift);
            assert!((999_999_990..=1_000_000_000).contains(&ns), "{hz} Hz: one second of ticks gave {ns} ns");
        }
        assert_eq!(time_scale(2_000_000_000), (0x8000_0000, 0));
    }

    #[test]
    fn time_info_layout() {
        let b = vcpu_time_info(2, 0x1122_3344_5566_7788, 0x99, 0xdead_beef, -1, 1);
        assert_eq!(&b[0..4], &[2, 0, 0, 0]);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x99u64.to_le_bytes());
        assert_eq!(&b[24..28], &0xdead_beefu32.to_le_bytes());
        assert_eq!((b[28], b[29]), (0xff, 1));
    }

    #[test]
    fn pages_are_written_in_ram_only() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let clock = GuestClock::start(1_000_000_000);
        write_system_time(&mem, &clock, 0x2000 | 1);
        let mut b = [0u8; 32];
        mem.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 2, "even version");
        assert_eq!(b[29], PVCLOCK_TSC_STABLE);
        // A second vCPU's page, written later, right after the first (4-byte aligned, as
        // the ABI allows): the first stays whole, and both give the same time for one TSC.
        std::thread::sleep(std::time::Duration::from_millis(2));
        write_system_time(&mem, &clock, 0x2024 | 1);
        let mut again = [0u8; 32];
        mem.read_slice(&mut again, GuestAddress(0x2000)).unwrap();
        assert_eq!(again[..32], b[..], "the first vCPU's page is untouched");
        let mut c = [0u8; 32];
        mem.read_slice(&mut c, GuestAddress(0x2024)).unwrap();
        let field = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let (mul, shift) = (u32::from_le_bytes(b[24..28].try_into().unwrap()), b[28] as i8);
        let at = |page: &[u8], tsc: u64| field(page, 16) + scale(tsc - field(page, 8), mul, shift);
        let later = field(&c, 8) + 1_000_000;
        assert_eq!(at(&b, later), at(&c, later), "the pages agree (exactly at 1 GHz: no rounding)");
        write_system_time(&mem, &clock, 0x1_0000_0000 | 1); // outside RAM: ignored
        write_wall_clock(&mem, &clock, 0x3000);
        let mut w = [0u8; 12];
        mem.read_slice(&mut w, GuestAddress(0x3000)).unwrap();
        assert!(u32::from_le_bytes(w[4..8].try_into().unwrap()) > 1_700_000_000, "seconds since 1970");
    }
}
