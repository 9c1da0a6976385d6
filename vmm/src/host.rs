//! Whether this Mac can run hvrun, and what to do when it cannot.
//!
//! [`check`] runs at start, before the VM is created, so that each known way of failing
//! (Rosetta, a macOS too old, no VT-x) is one line naming the cause instead of an
//! `hv_return_t` later. [`VmCreateError`] does the same for `hv_vm_create`'s own
//! failures (an unsigned binary, VT-x held by another hypervisor). The decisions are
//! plain functions of the values read, unit-tested on every host; only the reading is
//! macOS code.
//!
//! Why 11.0: hvrun runs every vCPU with `hv_vcpu_run_until` and a deadline, relying on
//! 11.0's semantics (it returns only on exits the framework did not handle).
//! `hv_vcpu_run_until` arrived in 10.15, and it is the only function hvrun imports that
//! 10.14 lacks. The import is strong, so on 10.14 dyld cannot resolve it: if dyld binds
//! it at launch, hvrun dies with "Symbol not found: _hv_vcpu_run_until" before `main`;
//! if lazily (classic binding, used below a macOS 12 deployment target), hvrun starts
//! and [`check`] refuses it before the first call. Either way 10.14 gets an error, not a
//! half-working VM; weak linking would only buy a nicer message there, and from 11.0 on
//! every function hvrun imports exists. scripts/build-macos.sh links with
//! MACOSX_DEPLOYMENT_TARGET set to [`MIN_MACOS`]. None of this has run on a Mac yet.
use hvf_sys::{hv_return_name, hv_return_t, HvError, HV_BUSY, HV_DENIED, HV_ERROR, HV_NO_DEVICE};
use std::fmt;
use std::path::Path;

/// The entitlement `hv_vm_create` requires of the calling binary.
pub const ENTITLEMENT: &str = "com.apple.security.hypervisor";

/// The entitlements file at the top of the source tree (scripts/build-macos.sh signs with it).
pub const ENTITLEMENTS_FILE: &str = "hvrun.entitlements";

/// The oldest macOS hvrun runs on (see the module comment).
pub const MIN_MACOS: Version = Version { major: 11, minor: 0, patch: 0 };

/// What macOS 11 and later report as their version to binaries built with an SDK older
/// than 11 (`kern.osproductversion` then means nothing).
const COMPAT_VERSION: Version = Version { major: 10, minor: 16, patch: 0 };

/// Darwin (kernel) major versions: macOS 10.x is Darwin x + 4 up to 10.15 (Darwin 19);
/// macOS 11 to 15 are Darwin 20 to 24; from Darwin 25 macOS is numbered by year (26).
const DARWIN_OF_MACOS_10_0: u32 = 4;
const DARWIN_OF_MACOS_11: u32 = 20;
const DARWIN_OF_MACOS_26: u32 = 25;
const MACOS_11: u32 = 11;
const MACOS_26: u32 = 26;

/// A macOS version: `11.7.10`, `15.1` (missing parts are 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// Parses `MAJOR[.MINOR[.PATCH]]`; anything else is `None`.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let mut next = |required: bool| match parts.next() {
            Some(part) if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) => part.parse().ok(),
            None if !required => Some(0),
            _ => None,
        };
        let version = Version { major: next(true)?, minor: next(false)?, patch: next(false)? };
        parts.next().is_none().then_some(version)
    }

    /// The macOS release of a Darwin kernel release (`kern.osrelease`, e.g. `20.6.0`):
    /// only the major version is known from it.
    pub fn of_darwin_release(release: &str) -> Option<Version> {
        let darwin = Version::parse(release)?.major;
        let (major, minor) = match darwin {
            d if d >= DARWIN_OF_MACOS_26 => (d - DARWIN_OF_MACOS_26 + MACOS_26, 0),
            d if d >= DARWIN_OF_MACOS_11 => (d - DARWIN_OF_MACOS_11 + MACOS_11, 0),
            d if d >= DARWIN_OF_MACOS_10_0 => (10, d - DARWIN_OF_MACOS_10_0),
            _ => return None,
        };
        Some(Version { major, minor, patch: 0 })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// The running macOS from `kern.osproductversion` (`product`; older releases lack it,
/// and [`COMPAT_VERSION`] says nothing), else from `kern.osrelease`.
pub fn macos_version(product: Option<&str>, darwin_release: Option<&str>) -> Option<Version> {
    product
        .and_then(Version::parse)
        .filter(|v| *v != COMPAT_VERSION)
        .or_else(|| darwin_release.and_then(Version::of_darwin_release))
}

/// Why this host cannot run hvrun at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// An x86_64 build translated by Rosetta on Apple silicon.
    Rosetta,
    /// macOS older than [`MIN_MACOS`].
    TooOld(Version),
    /// `kern.hv_support` is 0 (or missing).
    NoHypervisor,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Rosetta => write!(
                f,
                "this x86_64 hvrun runs under Rosetta on Apple silicon (sysctl.proc_translated = 1), where \
                 Hypervisor.framework has no Intel VT-x API: hvrun needs an Intel Mac"
            ),
            HostError::TooOld(found) => write!(
                f,
                "macOS {found} is too old: hvrun needs macOS {MIN_MACOS} or later (it relies on \
                 Hypervisor.framework's hv_vcpu_run_until as macOS 11 defines it); update macOS"
            ),
            HostError::NoHypervisor => write!(
                f,
                "this Mac cannot run virtual machines (sysctl kern.hv_support = 0): Hypervisor.framework \
                 needs an Intel CPU with VT-x, EPT and unrestricted guest; if this macOS itself runs in \
                 a virtual machine, enable nested virtualization in its hypervisor"
            ),
        }
    }
}

impl std::error::Error for HostError {}

/// What the host checks read (sysctl values; `None` when the name does not exist).
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// `sysctl.proc_translated`: 1 under Rosetta (missing on Intel-only releases).
    pub translated: Option<i32>,
    /// `kern.osproductversion`, e.g. `13.6.1`.
    pub product_version: Option<String>,
    /// `kern.osrelease`, the Darwin version, e.g. `22.6.0`.
    pub darwin_release: Option<String>,
    /// `kern.hv_support`: 1 when Hypervisor.framework can run VMs.
    pub hv_support: Option<i32>,
}

impl HostFacts {
    /// The first reason, in that order, why hvrun cannot run here. Rosetta comes first
    /// because Apple silicon reports hv_support = 1 (for its own arm64 API).
    pub fn check(&self) -> Result<(), HostError> {
        if self.translated == Some(1) {
            return Err(HostError::Rosetta);
        }
        match macos_version(self.product_version.as_deref(), self.darwin_release.as_deref()) {
            Some(version) if version < MIN_MACOS => return Err(HostError::TooOld(version)),
            Some(_) => {}
            // Unreadable: leave it to hv_vm_create rather than refuse a Mac that may work.
            None => log::warn!("cannot tell the macOS version (kern.osproductversion, kern.osrelease)"),
        }
        if self.hv_support != Some(1) {
            return Err(HostError::NoHypervisor);
        }
        Ok(())
    }
}

/// Checks that this Mac can run hvrun's VMs (sysctls; before `hv_vm_create`).
#[cfg(target_os = "macos")]
pub fn check() -> Result<(), HostError> {
    sysctl::read_facts().check()
}

/// Nothing to check off macOS: the Linux layer reports its own causes.
#[cfg(not(target_os = "macos"))]
pub fn check() -> Result<(), HostError> {
    Ok(())
}

/// `hv_vm_create` failed; on macOS with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmCreateError {
    pub error: HvError,
    advice: Option<String>,
}

impl VmCreateError {
    /// The error of this host: advice on macOS, where the codes mean what the framework
    /// says; none elsewhere (the Linux layer logs its own cause).
    pub fn new(error: HvError) -> VmCreateError {
        #[cfg(target_os = "macos")]
        let advice = {
            let exe = std::env::current_exe().unwrap_or_else(|_| "hvrun".into());
            macos_vm_create_advice(error.0, &exe)
        };
        #[cfg(not(target_os = "macos"))]
        let advice = None;
        VmCreateError { error, advice }
    }

    /// The macOS error for `error`, as if hvrun's binary were `exe`.
    pub fn on_macos(error: HvError, exe: &Path) -> VmCreateError {
        VmCreateError { error, advice: macos_vm_create_advice(error.0, exe) }
    }
}

/// What a failed `hv_vm_create` means on macOS, for the codes that have one known cause.
fn macos_vm_create_advice(code: hv_return_t, exe: &Path) -> Option<String> {
    let sign = format!(
        "sign it (from hvrun's source tree): codesign -s - --entitlements {ENTITLEMENTS_FILE} --force {}, \
         or build with scripts/build-macos.sh",
        exe.display()
    );
    match code {
        HV_DENIED => Some(format!("{} lacks the {ENTITLEMENT} entitlement; {sign}", exe.display())),
        // Big Sur and later answer an unsigned binary with HV_ERROR, not only HV_DENIED.
        HV_ERROR => {
            Some(format!("{} is probably not signed with the {ENTITLEMENT} entitlement; {sign}", exe.display()))
        }
        HV_BUSY | HV_NO_DEVICE => Some(
            "VT-x is held by another hypervisor with its own kernel extension (VirtualBox, Intel HAXM, an older \
             VMware Fusion or Parallels Desktop): stop its virtual machines and try again"
                .into(),
        ),
        _ => None,
    }
}

impl fmt::Display for VmCreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.advice, hv_return_name(self.error.0)) {
            (Some(advice), Some(name)) => write!(f, "hv_vm_create returned {name}: {advice}"),
            _ => write!(f, "hv_vm_create: {}", self.error),
        }
    }
}

impl std::error::Error for VmCreateError {}

/// Reading the facts with sysctlbyname(3).
#[cfg(target_os = "macos")]
mod sysctl {
    use super::HostFacts;
    use std::ffi::CStr;

    pub fn read_facts() -> HostFacts {
        HostFacts {
            translated: int(c"sysctl.proc_translated"),
            product_version: string(c"kern.osproductversion"),
            darwin_release: string(c"kern.osrelease"),
            hv_support: int(c"kern.hv_support"),
        }
    }

    /// An integer sysctl, `None` if it does not exist.
    fn int(name: &CStr) -> Option<i32> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>();
        // SAFETY: a NUL-terminated name; `value` and `len` outlive the call, which writes
        // at most `len` bytes.
        let ret = unsafe {
            libc::sysctlbyname(name.as_ptr(), &mut value as *mut libc::c_int as *mut libc::c_void, &mut len,
                std::ptr::null_mut(), 0)
        };
        (ret == 0 && len == std::mem::size_of::<libc::c_int>()).then_some(value)
    }

    /// A string sysctl, `None` if it does not exist or is not UTF-8.
    fn string(name: &CStr) -> Option<String> {
        let mut len = 0;
        // SAFETY: a NUL-terminated name; a null buffer asks only for the size.
        let ret = unsafe { libc::sysctlbyname(name.as_ptr(), std::ptr::null_mut(), &mut len, std::ptr::null_mut(), 0) };
        if ret != 0 || len == 0 {
            return None;
        }
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` holds `len` bytes and outlives the call, which writes at most `len`.
        let ret = unsafe {
            libc::sysctlbyname(name.as_ptr(), buf.as_mut_ptr() as *mut libc::c_void, &mut len, std::ptr::null_mut(), 0)
        };
        if ret != 0 {
            return None;
        }
        buf.truncate(len);
        let text = CStr::from_bytes_until_nul(&buf).ok()?.to_str().ok()?;
        Some(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvf_sys::{HV_BAD_ARGUMENT, HV_UNSUPPORTED};

    fn v(major: u32, minor: u32, patch: u32) -> Version {
        Version { major, minor, patch }
    }

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(Version::parse("11.7.10"), Some(v(11, 7, 10)));
        assert_eq!(Version::parse("15.1"), Some(v(15, 1, 0)));
        assert_eq!(Version::parse("26"), Some(v(26, 0, 0)));
        assert_eq!(Version::parse(" 10.15.7\n"), Some(v(10, 15, 7)));
        for bad in ["", "11.", ".1", "11..1", "11.0.0.1", "eleven", "11.0b", "-11"] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
        // Numerically, not as text: 10.9 < 10.15 < 11.0.
        assert!(v(10, 9, 5) < v(10, 15, 7));
        assert!(v(10, 15, 7) < MIN_MACOS);
        assert!(v(11, 0, 0) >= MIN_MACOS);
        assert_eq!(v(11, 7, 10).to_string(), "11.7.10");
        assert_eq!(MIN_MACOS.to_string(), "11.0");
    }

    #[test]
    fn darwin_releases_name_their_macos() {
        assert_eq!(Version::of_darwin_release("18.7.0"), Some(v(10, 14, 0)));
        assert_eq!(Version::of_darwin_release("19.6.0"), Some(v(10, 15, 0)));
        assert_eq!(Version::of_darwin_release("20.6.0"), Some(v(11, 0, 0)));
        assert_eq!(Version::of_darwin_release("24.1.0"), Some(v(15, 0, 0)));
        assert_eq!(Version::of_darwin_release("25.0.0"), Some(v(26, 0, 0)));
        assert_eq!(Version::of_darwin_release("3.0"), None);
        assert_eq!(Version::of_darwin_release("x"), None);
    }

    #[test]
    fn the_product_version_wins_unless_it_is_the_compat_one() {
        assert_eq!(macos_version(Some("13.6.1"), Some("22.6.0")), Some(v(13, 6, 1)));
        assert_eq!(macos_version(Some("10.16"), Some("21.6.0")), Some(v(12, 0, 0)));
        assert_eq!(macos_version(None, Some("17.7.0")), Some(v(10, 13, 0)));
        assert_eq!(macos_version(Some("garbage"), Some("19.6.0")), Some(v(10, 15, 0)));
        assert_eq!(macos_version(Some("10.16"), None), None);
        assert_eq!(macos_version(None, None), None);
    }

    fn facts(translated: Option<i32>, product: &str, hv_support: Option<i32>) -> HostFacts {
        HostFacts { translated, product_version: Some(product.into()), darwin_release: None, hv_support }
    }

    #[test]
    fn host_checks_in_order() {
        assert_eq!(facts(None, "13.6", Some(1)).check(), Ok(()));
        assert_eq!(facts(Some(0), "11.0", Some(1)).check(), Ok(()));
        // Apple silicon says hv_support = 1: Rosetta must be caught first.
        assert_eq!(facts(Some(1), "14.2", Some(1)).check(), Err(HostError::Rosetta));
        assert_eq!(facts(None, "10.15.7", Some(1)).check(), Err(HostError::TooOld(v(10, 15, 7))));
        assert_eq!(facts(None, "10.14.6", None).check(), Err(HostError::TooOld(v(10, 14, 6))));
        assert_eq!(facts(None, "12.7", Some(0)).check(), Err(HostError::NoHypervisor));
        assert_eq!(facts(None, "12.7", None).check(), Err(HostError::NoHypervisor));
        // An unknown version does not refuse by itself.
        assert_eq!(HostFacts { hv_support: Some(1), ..HostFacts::default() }.check(), Ok(()));
    }

    #[test]
    fn host_errors_say_what_to_do() {
        let rosetta = HostError::Rosetta.to_string();
        assert!(rosetta.contains("Rosetta") && rosetta.contains("Intel Mac"), "{rosetta}");
        let old = HostError::TooOld(v(10, 15, 7)).to_string();
        assert!(old.starts_with("macOS 10.15.7 is too old: hvrun needs macOS 11.0 or later"), "{old}");
        let none = HostError::NoHypervisor.to_string();
        assert!(none.contains("kern.hv_support = 0") && none.contains("nested virtualization"), "{none}");
        for e in [rosetta, old, none] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn vm_create_failures_name_the_fix() {
        let exe = Path::new("/Users/me/hvrun/target/release/hvrun");
        let denied = VmCreateError::on_macos(HvError(HV_DENIED), exe).to_string();
        let lacks = "hv_vm_create returned HV_DENIED: /Users/me/hvrun/target/release/hvrun lacks";
        assert!(denied.starts_with(lacks), "{denied}");
        assert!(denied.contains(ENTITLEMENT), "{denied}");
        let codesign = "codesign -s - --entitlements hvrun.entitlements --force /Users/me/hvrun/target/release/hvrun";
        assert!(denied.contains(codesign), "{denied}");
        let error = VmCreateError::on_macos(HvError(HV_ERROR), exe).to_string();
        assert!(error.starts_with("hv_vm_create returned HV_ERROR: ") && error.contains("not signed"), "{error}");
        assert!(error.contains("codesign -s - --entitlements hvrun.entitlements --force"), "{error}");
        for code in [HV_BUSY, HV_NO_DEVICE] {
            let busy = VmCreateError::on_macos(HvError(code), exe).to_string();
            assert!(busy.contains("another hypervisor") && busy.contains("VirtualBox"), "{busy}");
        }
        // Codes without one known cause keep the framework's name and description.
        assert_eq!(
            VmCreateError::on_macos(HvError(HV_BAD_ARGUMENT), exe).to_string(),
            "hv_vm_create: HV_BAD_ARGUMENT (bad argument)"
        );
        let plain = |code| VmCreateError::on_macos(HvError(code), exe).to_string();
        assert_eq!(plain(HV_UNSUPPORTED), "hv_vm_create: HV_UNSUPPORTED (unsupported)");
        assert_eq!(plain(-1), "hv_vm_create: unknown hv_return_t 0xffffffff");
    }

    #[test]
    fn off_macos_the_error_is_the_code() {
        if cfg!(target_os = "macos") {
            return;
        }
        assert_eq!(
            VmCreateError::new(HvError(HV_NO_DEVICE)).to_string(),
            "hv_vm_create: HV_NO_DEVICE (no device (no hardware virtualization))"
        );
    }
}
