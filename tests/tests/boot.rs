//! Booting Linux with the `hvrun` command, on a real KVM: the minimal kernel to its init
//! marker through both device-discovery paths, console input on a real terminal, reboot
//! and panic statuses, the guest clock against the host's, a distribution kernel, the
//! CPU features the guest sees, and every bad-input case answered with one line and
//! status 1. The boots to init must be clean: no kernel noise (unchecked MSR accesses,
//! WARNINGs, call traces, XSAVE consistency problems) on the console.
//!
//! The guests come from scripts/test.sh (HVRUN_GUEST_KERNEL/INITRD, HVRUN_CLOUD_*).
use hvrun_tests::hvrun::*;
use std::time::Duration;

/// Generous: the sandbox runs the guest kernel at emulated speed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const MARKER: &str = "HVRUN-INIT-OK";

fn minimal() -> (String, String) {
    let k = guest_file("HVRUN_GUEST_KERNEL");
    let i = guest_file("HVRUN_GUEST_INITRD");
    (k.display().to_string(), i.display().to_string())
}

/// Boots the minimal guest with `append` added to the default command line.
fn boot(append: &str) -> Finished {
    let (kernel, initrd) = minimal();
    Hvrun::spawn(&["--append", append, &kernel, &initrd]).wait(BOOT_TIMEOUT)
}

#[test]
fn minimal_kernel_boots_with_acpi_and_powers_off() {
    let run = boot("hvrun.check=uptime");
    assert!(run.console.find(MARKER).is_some(), "{}", run.report());
    assert!(run.console.find("ACPI: RSDP").is_some(), "ACPI tables were used: {}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
    assert_no_kernel_noise(&run);
}

#[test]
fn minimal_kernel_boots_through_the_mp_table_with_acpi_off() {
    let run = boot("acpi=off hvrun.check=uptime");
    assert!(run.console.find(MARKER).is_some(), "{}", run.report());
    assert!(run.console.find("found SMP MP-table").is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
    assert_no_kernel_noise(&run);
}

#[test]
fn serial_input_reaches_the_guest_on_a_terminal() {
    let (kernel, initrd) = minimal();
    let mut hvrun = Hvrun::spawn_on_terminal(&["--append", "hvrun.check=echo", &kernel, &initrd]);
    assert!(hvrun.wait_for_console(MARKER, BOOT_TIMEOUT), "no marker:\n{}", hvrun.console.text());
    // The guest's `read` may start after the marker: type once it asks, and again later.
    hvrun.console.wait_for("HVRUN-ECHO-READY", BOOT_TIMEOUT);
    hvrun.type_keys(b"hello from the host\r");
    let run = hvrun.wait(BOOT_TIMEOUT);
    assert!(run.console.find("HVRUN-ECHO:hello from the host").is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
    let (before, after) = run.terminal_settings.expect("ran on a terminal");
    assert_eq!(
        (before.c_iflag, before.c_oflag, before.c_lflag, before.c_cflag),
        (after.c_iflag, after.c_oflag, after.c_lflag, after.c_cflag),
        "hvrun restores the terminal"
    );
}

#[test]
fn ctrl_a_x_quits_and_restores_the_terminal() {
    let (kernel, initrd) = minimal();
    let mut hvrun = Hvrun::spawn_on_terminal(&["--append", "hvrun.check=echo", &kernel, &initrd]);
    assert!(hvrun.wait_for_console(MARKER, BOOT_TIMEOUT), "no marker:\n{}", hvrun.console.text());
    hvrun.type_keys(&[0x01, b'x']);
    let run = hvrun.wait(BOOT_TIMEOUT);
    assert_eq!(run.code(), Some(130), "{}", run.report());
    assert!(run.console.find("HVRUN-ECHO:").is_none(), "{}", run.report());
    let (before, after) = run.terminal_settings.expect("ran on a terminal");
    assert_eq!((before.c_iflag, before.c_lflag), (after.c_iflag, after.c_lflag), "hvrun restores the terminal");
}

/// The state dump, on SIGUSR1 and on Ctrl-A i, while the guest sleeps: the vCPU answers
/// with its registers, its APIC shows the timer armed, the IOAPIC its COM1 pin; the
/// guest goes on and powers off as if nothing happened.
#[test]
fn state_dump_on_sigusr1_and_ctrl_a_i() {
    let (kernel, initrd) = minimal();
    let mut hvrun = Hvrun::spawn_on_terminal(&["--append", "hvrun.check=sleep hvrun.sleep=4", &kernel, &initrd]);
    assert!(hvrun.wait_for_console("HVRUN-UPTIME-BEFORE", BOOT_TIMEOUT), "{}", hvrun.console.text());
    let dump = hvrun.state_dump();
    for needle in ["hvrun: state dump", "vCPU 0: ", "RIP 0x", "RFLAGS 0x", "interruptibility", "lapic 0: ",
        "IRR ", "ISR ", "TPR ", "timer: LVT", "ioapic:", vmm::dump::END_LINE] {
        assert!(dump.contains(needle), "{needle:?} missing from the dump:\n{dump}");
    }
    assert!(dump.contains("a kick is"), "the Linux layer's held kick: {dump}");
    // The same from the console escape; the dump goes to stderr, not to the guest.
    let lines = hvrun.stderr.all().len();
    hvrun.type_keys(&[0x01, b'i']);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !hvrun.stderr.all()[lines..].iter().any(|(_, l)| l.contains(vmm::dump::END_LINE)) {
        assert!(std::time::Instant::now() < end, "no dump after Ctrl-A i: {}", hvrun.stderr.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = hvrun.wait(BOOT_TIMEOUT);
    assert!(run.console.find("HVRUN-UPTIME-AFTER").is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
}

#[test]
fn sigterm_stops_cleanly_and_restores_the_terminal() {
    let (kernel, initrd) = minimal();
    let hvrun = Hvrun::spawn_on_terminal(&["--append", "hvrun.check=echo", &kernel, &initrd]);
    assert!(hvrun.wait_for_console("HVRUN-ECHO-READY", BOOT_TIMEOUT), "{}", hvrun.console.text());
    // SAFETY: a signal to the child we started.
    assert_eq!(unsafe { libc::kill(hvrun.child.id() as i32, libc::SIGTERM) }, 0);
    let run = hvrun.wait(BOOT_TIMEOUT);
    assert_eq!(run.code(), Some(130), "{}", run.report());
    let (before, after) = run.terminal_settings.expect("ran on a terminal");
    assert_eq!((before.c_iflag, before.c_lflag), (after.c_iflag, after.c_lflag), "hvrun restores the terminal");
}

/// Boots the minimal guest on `cpus` vCPUs.
fn boot_on(cpus: &str, append: &str) -> Finished {
    let (kernel, initrd) = minimal();
    Hvrun::spawn(&["--cpus", cpus, "--append", append, &kernel, &initrd]).wait(BOOT_TIMEOUT)
}

/// On two vCPUs: the reset, made by whichever CPU runs `reboot`, must stop both vCPU
/// threads (the other one halted or in the guest), or hvrun never exits.
#[test]
fn reboot_gives_the_reboot_status() {
    let run = boot_on("2", "hvrun.check=reboot");
    assert!(run.console.find(MARKER).is_some(), "{}", run.report());
    assert!(run.console.find("Brought up 1 node, 2 CPUs").is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(3), "{}", run.report());
}

/// A panic on one of two vCPUs: Linux stops the other CPU (an IPI, then NMI), then resets.
#[test]
fn panic_with_panic_minus_one_gives_the_reboot_status() {
    let run = boot_on("2", "panic=-1 hvrun.check=panic");
    assert!(run.console.find("Kernel panic").is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(3), "{}", run.report());
}

/// The guest sleeps `hvrun.sleep` seconds; its uptime must advance by the host's elapsed
/// time between the two lines, within 5%.
#[test]
fn guest_uptime_follows_host_time() {
    let run = boot("hvrun.check=sleep hvrun.sleep=4");
    let value = |key: &str| -> (std::time::Instant, f64) {
        let (at, line) = run.console.find(key).unwrap_or_else(|| panic!("no {key}: {}", run.report()));
        let text = line[line.find(key).unwrap() + key.len()..].split_whitespace().next().unwrap_or("").to_string();
        (at, text.parse().unwrap_or_else(|_| panic!("{key} {text:?}: {}", run.report())))
    };
    let (host_before, guest_before) = value("HVRUN-UPTIME-BEFORE=");
    let (host_after, guest_after) = value("HVRUN-UPTIME-AFTER=");
    let host = (host_after - host_before).as_secs_f64();
    let guest = guest_after - guest_before;
    eprintln!("guest uptime advanced {guest:.3} s while the host saw {host:.3} s");
    assert!((guest - host).abs() <= 0.05 * host, "guest {guest:.3} s vs host {host:.3} s\n{}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
}

#[test]
fn debian_cloud_kernel_boots_to_the_init_marker() {
    let kernel = guest_file("HVRUN_CLOUD_KERNEL").display().to_string();
    let initrd = guest_file("HVRUN_CLOUD_INITRD").display().to_string();
    let run = Hvrun::spawn(&["--mem", "1G", "--append", "hvrun.check=uptime", &kernel, &initrd]).wait(Duration::from_secs(600));
    assert!(run.console.find(MARKER).is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
    assert_no_kernel_noise(&run);
}

/// User-visible CPU features QEMU's guest shows on the same KVM (`-cpu host`), where
/// the host has them: hvrun passes them through CPUID and the guest kernel keeps them.
const HOST_FEATURES: &[&str] = &[
    "sse4_2", "aes", "pclmulqdq", "rdrand", "movbe", "bmi1", "bmi2", "adx", "fsgsbase", "smep", "smap", "pdpe1gb",
];
/// Features of hvrun's own local APIC, shown whatever the host has.
const APIC_FEATURES: &[&str] = &["x2apic", "tsc_deadline_timer"];

/// The feature flags of the first CPU in a /proc/cpuinfo.
fn cpuinfo_flags(cpuinfo: &str) -> Vec<String> {
    let line = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    line.split_once(':').map_or("", |(_, f)| f).split_whitespace().map(str::to_string).collect()
}

/// The minimal guest's /proc/cpuinfo (the `cpuinfo` check) against the host's: the same
/// vendor, the host's user-visible features, the APIC's, and a clean boot.
#[test]
fn guest_cpuinfo_shows_the_host_features() {
    let run = boot("hvrun.check=cpuinfo");
    assert_eq!(run.code(), Some(0), "{}", run.report());
    let printed = |key: &str| {
        let (_, line) = run.console.find(key).unwrap_or_else(|| panic!("no {key}: {}", run.report()));
        line[line.find(key).unwrap() + key.len()..].to_string()
    };
    let guest: Vec<String> = printed("HVRUN-CPUINFO-FLAGS=").split_whitespace().map(str::to_string).collect();
    let host_cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("the host's /proc/cpuinfo");
    let host = cpuinfo_flags(&host_cpuinfo);
    let host_vendor = host_cpuinfo.lines().find_map(|l| l.strip_prefix("vendor_id")).and_then(|l| l.split(':').nth(1));
    assert_eq!(Some(printed("HVRUN-CPUINFO-VENDOR=").trim()), host_vendor.map(str::trim), "the host's vendor");
    let absent_on_host: Vec<&str> = HOST_FEATURES.iter().copied().filter(|f| !host.iter().any(|h| h == f)).collect();
    if !absent_on_host.is_empty() {
        eprintln!("the host has no {absent_on_host:?}: not expected of the guest either");
    }
    let wanted = HOST_FEATURES.iter().filter(|f| !absent_on_host.contains(f)).chain(APIC_FEATURES);
    let missing: Vec<&str> = wanted.copied().filter(|f| !guest.iter().any(|g| g == f)).collect();
    assert!(missing.is_empty(), "the guest lacks {missing:?}\nguest flags: {guest:?}\nhost flags: {host:?}");
    assert_no_kernel_noise(&run);
}

/// Bad input from the user: one line on stderr naming the problem, status 1, no panic.
fn refused(args: &[&str], expect: &str) {
    let run = Hvrun::spawn(args).wait(Duration::from_secs(60));
    let text = run.stderr.text();
    assert_eq!(run.code(), Some(1), "{args:?}: {}", run.report());
    assert!(text.contains(expect), "{args:?}: expected {expect:?} in: {text}");
    assert!(!text.contains("panicked"), "{args:?}: {text}");
    assert_eq!(text.lines().filter(|l| !l.starts_with('[')).count(), 1, "one line: {text}");
}

#[test]
fn bad_input_gets_one_line_and_status_one() {
    let (kernel, initrd) = minimal();
    let dir = std::env::temp_dir().join(format!("hvrun-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let image = std::fs::read(&kernel).unwrap();
    let not_kernel = file("notes.txt", b"this is not a kernel\n");
    let truncated = file("truncated", &image[..image.len() / 3]);
    let mut old = image.clone();
    old[0x206..0x208].copy_from_slice(&0x0201u16.to_le_bytes()); // boot protocol 2.01
    let old = file("old-protocol", &old);
    let mut no64 = image.clone();
    let xlf = u16::from_le_bytes([no64[0x236], no64[0x237]]) & !1; // clear XLF_KERNEL_64
    no64[0x236..0x238].copy_from_slice(&xlf.to_le_bytes());
    let no64 = file("not-64-bit", &no64);
    let big = dir.join("huge-initrd");
    std::fs::File::create(&big).unwrap().set_len(200 << 20).unwrap();
    let big = big.display().to_string();
    let long = "x".repeat(4096);
    let d = dir.display().to_string();

    refused(&["/nonexistent/bzImage"], "/nonexistent/bzImage");
    refused(&[&kernel, "/nonexistent/initrd"], "/nonexistent/initrd");
    refused(&[&d], "kernel");
    refused(&[&not_kernel], "kernel");
    refused(&[&truncated], "truncated");
    refused(&[&old], "protocol");
    refused(&[&no64], "64-bit");
    refused(&["--mem", "128M", &kernel, &big], "initrd");
    refused(&["--append", &long, &kernel, &initrd], "command line");
    refused(&["--mem", "64M", &kernel, &initrd], "memory");
    refused(&["--mem", "100000G", &kernel, &initrd], "--mem 100000G is out of range (128M to 256G)");
    std::fs::remove_dir_all(&dir).unwrap();
    // A vCPU count outside 1..=64 is a usage error (status 2) that names the range.
    for cpus in ["0", "65", "two"] {
        let run = Hvrun::spawn(&["--cpus", cpus, &kernel, &initrd]).wait(Duration::from_secs(60));
        let text = run.stderr.text();
        assert_eq!(run.code(), Some(2), "--cpus {cpus}: {}", run.report());
        assert!(text.contains("--cpus"), "--cpus {cpus}: {text}");
        if cpus != "two" {
            assert!(text.contains("1..=64"), "--cpus {cpus} names the range: {text}");
        }
    }
}
