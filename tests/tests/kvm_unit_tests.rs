//! kvm-unit-tests' x86 guests booted with the `hvrun` command (`--testdev`), on a real
//! KVM: the quick subset that passes under QEMU on the same KVM, each with the vCPUs
//! (`--cpus`) its section of unittests.cfg asks for. Each must end with the suite's success status (exit 1, no FAIL line, a SUMMARY line).
//! scripts/kvm-unit-tests.sh runs the longer list side by side with QEMU.
//!
//! Also, with no suite needed: a synthetic multiboot image that checks its own entry
//! state and reports through isa-debug-exit, and the loader's one-line errors.
//!
//! The suite is found at build time (tests/build.rs): without one, the suite's tests are
//! ignored (reported as not run).
use hvrun_tests::hvrun::*;
use iced_x86::code_asm::*;
use std::path::PathBuf;
use std::time::Duration;

/// Generous: the sandbox runs guests at emulated speed, and sieve is long.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// A temporary file, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, data: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("hvrun-kut-{}-{name}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        TempFile(path)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Multiboot header fields (Multiboot specification 0.6.96, 3.1.2).
const MB_HEADER_MAGIC: u32 = 0x1bad_b002;
/// What EAX holds at entry (3.2).
const MB_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// Where the synthetic image loads (where the suite's images load, too).
const LOAD: u32 = 0x40_0000;
/// ELF32 header and program header sizes; the code starts after both.
const EHDR: usize = 52;
const PHDR: usize = 32;
const CODE_OFFSET: usize = 0x100;
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// An ELF32 i386 executable with one PT_LOAD segment at [`LOAD`]: a multiboot header
/// (flags 0) then `code`.
fn multiboot_elf(code: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; CODE_OFFSET];
    img[..4].copy_from_slice(b"\x7fELF");
    img[4..7].copy_from_slice(&[1, 1, 1]); // ELFCLASS32, little-endian, version 1
    img[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    img[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    img[24..28].copy_from_slice(&(LOAD + 12).to_le_bytes()); // e_entry: after the header
    img[28..32].copy_from_slice(&(EHDR as u32).to_le_bytes()); // e_phoff
    img[42..44].copy_from_slice(&(PHDR as u16).to_le_bytes());
    img[44..46].copy_from_slice(&1u16.to_le_bytes());
    let size = (12 + code.len()) as u32;
    let ph = EHDR;
    img[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    img[ph + 4..ph + 8].copy_from_slice(&(CODE_OFFSET as u32).to_le_bytes());
    img[ph + 8..ph + 12].copy_from_slice(&LOAD.to_le_bytes());
    img[ph + 12..ph + 16].copy_from_slice(&LOAD.to_le_bytes());
    img[ph + 16..ph + 20].copy_from_slice(&size.to_le_bytes());
    img[ph + 20..ph + 24].copy_from_slice(&size.to_le_bytes());
    for v in [MB_HEADER_MAGIC, 0, 0u32.wrapping_sub(MB_HEADER_MAGIC)] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.extend_from_slice(code);
    img
}

/// A guest that checks the multiboot machine state and reports through isa-debug-exit:
/// status 0x55 if EAX is the magic, paging is off, EBX points at an information
/// structure whose command line is the image's path followed by `--append`'s words, and
/// whose module (the INITRD argument) holds `module`; otherwise the number of the first
/// check that failed.
fn checking_guest(cmdline: &[u8], module: &[u8]) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut fail = a.create_label();
    let mut halt = a.create_label();
    a.mov(edx, 1u32).unwrap(); // check 1: the magic in EAX
    a.cmp(eax, MB_BOOTLOADER_MAGIC).unwrap();
    a.jne(fail).unwrap();
    a.mov(edx, 2u32).unwrap(); // check 2: paging off, protected mode on
    a.mov(eax, cr0).unwrap();
    a.and(eax, 0x8000_0001u32).unwrap();
    a.cmp(eax, 1).unwrap();
    a.jne(fail).unwrap();
    a.mov(edx, 3u32).unwrap(); // check 3: flags say cmdline (bit 2) and mods (bit 3)
    a.mov(eax, dword_ptr(ebx)).unwrap();
    a.and(eax, 0xcu32).unwrap();
    a.cmp(eax, 0xc).unwrap();
    a.jne(fail).unwrap();
    a.mov(edx, 4u32).unwrap(); // check 4: the command line, byte by byte
    a.mov(esi, dword_ptr(ebx + 16)).unwrap();
    for (i, &byte) in cmdline.iter().chain(&[0]).enumerate() {
        a.cmp(byte_ptr(esi + i as i32), byte as u32).unwrap();
        a.jne(fail).unwrap();
    }
    a.mov(edx, 5u32).unwrap(); // check 5: one module with `module` in it
    a.cmp(dword_ptr(ebx + 20), 1).unwrap();
    a.jne(fail).unwrap();
    a.mov(esi, dword_ptr(ebx + 24)).unwrap();
    a.mov(ecx, dword_ptr(esi + 4)).unwrap();
    a.mov(esi, dword_ptr(esi)).unwrap();
    a.sub(ecx, esi).unwrap();
    a.cmp(ecx, module.len() as u32).unwrap();
    a.jne(fail).unwrap();
    for (i, &byte) in module.iter().enumerate() {
        a.cmp(byte_ptr(esi + i as i32), byte as u32).unwrap();
        a.jne(fail).unwrap();
    }
    a.mov(edx, 0x55u32).unwrap();
    a.set_label(&mut fail).unwrap();
    a.mov(eax, edx).unwrap();
    a.mov(dx, DEBUG_EXIT_PORT as u32).unwrap();
    a.out(dx, eax).unwrap();
    a.set_label(&mut halt).unwrap();
    a.hlt().unwrap();
    a.jmp(halt).unwrap();
    multiboot_elf(&a.assemble(u64::from(LOAD) + 12).unwrap())
}

#[test]
fn a_multiboot_image_sees_the_machine_state_the_specification_gives() {
    let module = b"NR_CPUS=1\nhello\n";
    let initrd = TempFile::new("module", module);
    // The path is in the command line the guest checks: make one of known length first.
    let kernel = TempFile::new("check.elf", &[]);
    let cmdline = format!("{} one two", kernel.path());
    std::fs::write(&kernel.0, checking_guest(cmdline.as_bytes(), module)).unwrap();
    let run = Hvrun::spawn(&["--testdev", "--append", "one two", &kernel.path(), &initrd.path()]).wait(RUN_TIMEOUT);
    // isa-debug-exit: (0x55 << 1) | 1.
    assert_eq!(run.code(), Some(0xab), "a failed check exits with (its number << 1) | 1:\n{}", run.report());
    assert!(run.stderr.find("guest exited with status 171").is_some(), "{}", run.report());
}

#[test]
fn a_failing_check_gives_a_failing_status() {
    // The same guest expecting another command line: check 4 fails, status (4 << 1) | 1.
    let module = b"x";
    let initrd = TempFile::new("module-bad", module);
    let kernel = TempFile::new("check-bad.elf", &checking_guest(b"not this", module));
    let run = Hvrun::spawn(&["--testdev", &kernel.path(), &initrd.path()]).wait(RUN_TIMEOUT);
    assert_eq!(run.code(), Some(9), "{}", run.report());
}

/// Bad images get the loader's one-line errors and status 1, before any guest runs.
#[test]
fn broken_multiboot_images_are_one_line_errors() {
    let good = checking_guest(b"", b"");
    let mut bad_checksum = good.clone();
    bad_checksum[CODE_OFFSET + 8] ^= 1;
    let truncated = good[..CODE_OFFSET + 6].to_vec();
    let mut video = good.clone();
    video[CODE_OFFSET + 4] = 4; // flag 2: a video mode
    video[CODE_OFFSET + 8..CODE_OFFSET + 12].copy_from_slice(&0u32.wrapping_sub(MB_HEADER_MAGIC + 4).to_le_bytes());
    let mut elf64 = good.clone();
    elf64[4] = 2;
    let mut outside = good.clone();
    outside[EHDR + 12..EHDR + 16].copy_from_slice(&0xe_0000u32.to_le_bytes()); // p_paddr in the BIOS area
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("checksum", bad_checksum, "bad multiboot header at offset 0x100: magic + flags + checksum is not 0"),
        ("truncated", truncated, "truncated multiboot header at offset 0x100"),
        ("video", video, "multiboot image requires a video mode (header flag 2): hvrun has no display"),
        ("elf64", elf64, "multiboot image: unsupported ELF file: 64-bit (multiboot v1 loads 32-bit ELF images)"),
        ("outside", outside, "multiboot image segment 0xe0000..0xe00"),
    ];
    for (name, image, message) in cases {
        let file = TempFile::new(name, &image);
        let run = Hvrun::spawn(&["--testdev", &file.path()]).wait(RUN_TIMEOUT);
        assert_eq!(run.code(), Some(1), "{name}: {}", run.report());
        let lines = run.stderr.all();
        assert_eq!(lines.len(), 1, "{name}: one line: {}", run.report());
        assert!(lines[0].1.starts_with(&format!("hvrun: {message}")), "{name}: {}", run.report());
    }
}

/// A test of the suite: its unittests.cfg section's file and arguments.
#[cfg(kut_suite)]
mod suite {
    use super::*;

    const SUITE: &str = env!("HVRUN_KUT_SUITE");

    /// `file`, `test_args` and `smp` of section `name` in unittests.cfg.
    fn section(name: &str) -> (String, String, String) {
        let cfg = std::fs::read_to_string(format!("{SUITE}/unittests.cfg")).expect("unittests.cfg");
        let mut in_section = false;
        let (mut file, mut args, mut smp) = (format!("{name}.flat"), String::new(), "1".to_string());
        for line in cfg.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_section = line == format!("[{name}]");
            } else if let (true, Some((key, value))) = (in_section, line.split_once('=')) {
                let value = value.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
                match key.trim() {
                    "file" => file = value,
                    "test_args" => args = value,
                    "smp" => smp = value,
                    _ => {}
                }
            }
        }
        (file, args, smp)
    }

    /// Runs the suite's test `name` and asserts it passed as the suite's runner judges it,
    /// and that its console shows `done` (the report's SUMMARY line; sieve, which reports
    /// nothing, its last result), so that a guest that stopped early cannot pass.
    pub fn passes(name: &str, done: &str) {
        let (file, args, smp) = section(name);
        let kernel = format!("{SUITE}/{file}");
        let mut argv = vec!["--testdev", "--mem", "256M", "--cpus", smp.as_str()];
        if !args.is_empty() {
            argv.extend(["--append", args.as_str()]);
        }
        argv.push(&kernel);
        let run = Hvrun::spawn(&argv).wait(RUN_TIMEOUT);
        let console = run.console.text();
        assert!(console.contains(done), "{name}: no {done:?} on the console\n{}", run.report());
        assert!(!console.lines().any(|l| l.starts_with("FAIL")), "{name}: a case failed\n{}", run.report());
        assert_eq!(run.code(), Some(1), "{name}: exit status (0 << 1) | 1 is the suite's PASS\n{}", run.report());
    }
}

macro_rules! suite_tests {
    ($($test:ident => $name:literal, $done:literal);* $(;)?) => {
        $(
            #[test]
            #[cfg_attr(not(kut_suite), ignore = "kvm-unit-tests not found (HVRUN_KUT_DIR or ../shared/kvm-unit-tests)")]
            fn $test() {
                #[cfg(kut_suite)]
                suite::passes($name, $done);
            }
        )*
    };
}

// The quick subset (scripts/kvm-unit-tests.py QUICK_TESTS): tests that pass under QEMU
// on the sandbox's KVM, each with the vCPUs its section asks for (`smp`).
suite_tests! {
    kut_ioapic => "ioapic", "SUMMARY: 30 tests";
    kut_smptest => "smptest", "SUMMARY: 1 tests";
    kut_idt_test => "idt_test", "SUMMARY: 4 tests";
    kut_tsc => "tsc", "SUMMARY: 3 tests";
    kut_setjmp => "setjmp", "SUMMARY: 10 tests";
    kut_sieve => "sieve", "virtual:5761455 out of 100000000";
}
