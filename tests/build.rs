//! Finds kvm-unit-tests' built x86 guests for tests/tests/kvm_unit_tests.rs, as
//! scripts/lib/kut-suite.sh does: $HVRUN_KUT_DIR (a built checkout's x86/, or the
//! directory itself), else ../shared/kvm-unit-tests beside the repository. Found: the
//! directory is compiled in (HVRUN_KUT_SUITE) with cfg `kut_suite`. Not found (a user's
//! fresh clone): the suite's tests are compiled as ignored, so `cargo test` reports them
//! as not run instead of passed.
use std::path::{Path, PathBuf};

fn holds_suite(dir: &Path) -> bool {
    dir.join("unittests.cfg").is_file() && dir.join("ioapic.flat").is_file()
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kut_suite)");
    println!("cargo::rerun-if-env-changed=HVRUN_KUT_DIR");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = match std::env::var_os("HVRUN_KUT_DIR") {
        Some(dir) => vec![PathBuf::from(&dir).join("x86"), PathBuf::from(dir)],
        None => vec![manifest.join("../../shared/kvm-unit-tests")],
    };
    for dir in &candidates {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    if let Some(dir) = candidates.iter().find(|d| holds_suite(d)) {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        println!("cargo::rustc-cfg=kut_suite");
        println!("cargo::rustc-env=HVRUN_KUT_SUITE={}", dir.display());
    } else {
        println!("cargo::warning=kvm-unit-tests not found (HVRUN_KUT_DIR or ../shared/kvm-unit-tests): its tests are not run");
    }
}
