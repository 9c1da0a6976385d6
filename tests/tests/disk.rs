//! Disks (`--disk`, virtio-mmio block devices) end to end, with the `hvrun` command on a
//! real KVM: what a guest does to its disks is checked in the image files themselves, byte
//! for byte, once hvrun has exited. (A guest reading back what it wrote can be fooled by
//! its own page cache; the image on the host cannot.)
//!
//! - Read-write, found through the DSDT (ACPI) and, with `acpi=off`, through the
//!   `virtio_mmio.device=` words hvrun adds: two disks in order (an ext4 image as vda, a
//!   raw one as vdb) with their sizes, serials, MMIO windows and interrupts; the guest
//!   reads the known files, writes new files and random data, patches a file in the
//!   middle, removes one, and writes the raw disk with O_DIRECT. The host then finds
//!   exactly that in both images, and a clean file system.
//! - The image lock: while a guest runs, a second hvrun on its image is refused with one
//!   line, and so is one image given twice to one hvrun.
//! - Read-only: every way of writing fails inside the guest, and the image is unchanged;
//!   two read-only users share one image.
//! - Discard and write-zeroes: fstrim, blkdiscard and a WRITE_ZEROES request in the
//!   guest punch holes in the images, so they take less space on the host, and nothing
//!   else changes.
//! - `--root` without an initramfs: the test initramfs's files as an ext4 root file system.
//! - Debian's cloud kernel (virtio as modules) on the same read-write round trip.
//!
//! The guest side is guest/checks/disk (`hvrun.disk=MODE`; its comment lists what it
//! prints). The images are made in a scratch directory under the temporary directory
//! with e2fsprogs: `mke2fs -d` for known content, `debugfs` to read files back without
//! mounting, `e2fsck -fn` to judge the file system (helpers in tests/src/disk.rs, which
//! tests/tests/smp.rs shares). The guests come from scripts/test.sh
//! (HVRUN_GUEST_KERNEL/INITRD, HVRUN_CLOUD_*). Six boots in all: the sandbox is slow.
use hvrun_tests::disk::*;
use hvrun_tests::hvrun::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: the sandbox runs the guest kernel at emulated speed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The cloud kernel is much bigger and probes much more.
const CLOUD_TIMEOUT: Duration = Duration::from_secs(600);

fn minimal() -> (String, String) {
    let k = guest_file("HVRUN_GUEST_KERNEL");
    let i = guest_file("HVRUN_GUEST_INITRD");
    (k.display().to_string(), i.display().to_string())
}

fn cloud() -> (String, String) {
    let k = guest_file("HVRUN_CLOUD_KERNEL");
    let i = guest_file("HVRUN_CLOUD_INITRD");
    (k.display().to_string(), i.display().to_string())
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

// --- what the guest printed -----------------------------------------------------------

/// The contract for the i-th disk: its window at 0xd0000000 + i * 0x1000, its GSI 5, 6, ...
/// (the IOAPIC's input pin: Linux's own IRQ numbers for them vary, 24 and up under ACPI).
fn assert_windows_and_interrupts(p: &Printed) {
    let iomem = p.all("iomem").join("\n");
    for window in ["d0000000-d0000fff", "d0001000-d0001fff"] {
        assert!(iomem.contains(window), "no {window} in /proc/iomem:\n{}", p.run.report());
    }
    p.expect("vda.pin", "IO-APIC 5");
    p.expect("vdb.pin", "IO-APIC 6");
}

/// The kernel found the disks in the DSDT (LNRO0005, the ACPI ID of virtio-mmio), and
/// hvrun did not also name them on the command line (they would be probed twice).
fn assert_found_through_acpi(p: &Printed) {
    assert!(!p.get("cmdline").contains("virtio_mmio.device"), "{}", p.run.report());
    for d in ["vda", "vdb"] {
        let dev = p.get(&format!("{d}.device"));
        assert!(dev.contains("/LNRO0005:"), "{d} is {dev}, not an ACPI device:\n{}", p.run.report());
    }
}

/// The kernel found the disks through the `virtio_mmio.device=` words hvrun added.
fn assert_found_through_command_line(p: &Printed) {
    let words = "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6";
    assert!(p.get("cmdline").contains(words), "no {words:?}:\n{}", p.run.report());
    for d in ["vda", "vdb"] {
        let dev = p.get(&format!("{d}.device"));
        // Devices made from the command line are platform devices virtio-mmio.N.
        assert!(dev.contains("/virtio-mmio."), "{d} is {dev}:\n{}", p.run.report());
    }
}

// --- running guests --------------------------------------------------------------------

/// Types a line on a guest's console when dropped. A guest waiting for the host
/// (hvrun.wait=1) then goes on and powers off even when the test fails before it lets the
/// guest go: no hvrun is left behind holding its images.
struct Release(std::fs::File);

impl Release {
    fn new(hvrun: &Hvrun) -> Release {
        Release(hvrun.terminal.as_ref().expect("on a terminal").try_clone().expect("dup the terminal"))
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.0.write_all(b"go\r");
    }
}

/// Waits until the guest prints HVRUN-DISK-WAITING (or gives up: its check ended, or hvrun
/// exited); fails the test with the console if it does not.
fn wait_until_waiting(hvrun: &mut Hvrun) {
    let end = Instant::now() + BOOT_TIMEOUT;
    while Instant::now() < end {
        if hvrun.console.find("HVRUN-DISK-WAITING").is_some() {
            return;
        }
        if hvrun.console.find("HVRUN-CHECK-STATUS").is_some() || !matches!(hvrun.child.try_wait(), Ok(None)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the guest did not wait for the host:\n{}\n--- stderr ---\n{}", hvrun.console.text(), hvrun.stderr.text());
}

/// A second hvrun on `image` (as `disk`, a --disk value), while another hvrun holds it:
/// refused before any guest runs, with one line that says why and names the image.
fn assert_in_use(disk: &str, image: &Path) {
    let (kernel, initrd) = minimal();
    let image = image.display().to_string();
    refused(&["--disk", disk, "--append", "hvrun.check=uptime", &kernel, &initrd], 1, &["in use", &image]);
}

/// hvrun refuses `args`: exit status `code`, stderr mentions every one of `expect`, no
/// panic. Status 1 (hvrun's own check) is one line; 2 is the argument parser's usage text.
fn refused(args: &[&str], code: i32, expect: &[&str]) {
    // A guest that does start (the refusal failed) powers off at once.
    let run = Hvrun::spawn(args).wait(BOOT_TIMEOUT);
    let text = run.stderr.text();
    assert_eq!(run.code(), Some(code), "{args:?}: {}", run.report());
    for e in expect {
        assert!(text.contains(e), "{args:?}: expected {e:?} in: {text}");
    }
    assert!(!text.contains("panicked"), "{args:?}: {text}");
    if code == 1 {
        // Lines starting with '[' are the logger's, not the message.
        assert_eq!(text.lines().filter(|l| !l.starts_with('[')).count(), 1, "{args:?}: one line: {text}");
    }
}

// --- the read-write round trip (RwDisks) -----------------------------------------------

/// ACPI discovery, two disks in order with serials, the read-write round trip; and the
/// image lock: while this guest runs, a second hvrun can neither write nor read its image.
#[test]
fn disks_found_through_acpi_read_and_write_and_are_locked_while_in_use() {
    let disks = RwDisks::new("acpi");
    let (kernel, initrd) = minimal();
    let mut args = disks.args("hvrun.wait=1");
    args.extend([kernel, initrd]);
    // On a terminal, to let the waiting guest go on with a line of input.
    let mut hvrun = Hvrun::spawn_on_terminal(&strs(&args));
    let release = Release::new(&hvrun);
    wait_until_waiting(&mut hvrun);
    let data = disks.data.display().to_string();
    assert_in_use(&data, &disks.data);
    assert_in_use(&format!("{data},ro"), &disks.data);
    let raw = disks.raw.display().to_string();
    assert_in_use(&raw, &disks.raw);
    drop(release);
    let run = hvrun.wait(BOOT_TIMEOUT);

    disks.check(&run);
    let p = Printed::of(&run);
    assert_found_through_acpi(&p);
    assert_windows_and_interrupts(&p);
}

/// `acpi=off`: no DSDT, so hvrun names the disks on the command line, in the form the
/// kernel's virtio_mmio.device= parameter reads; the same round trip works.
#[test]
fn disks_found_through_the_command_line_with_acpi_off_read_and_write() {
    let disks = RwDisks::new("acpi-off");
    let (kernel, initrd) = minimal();
    let mut args = disks.args("acpi=off");
    args.extend([kernel, initrd]);
    let run = Hvrun::spawn(&strs(&args)).wait(BOOT_TIMEOUT);

    disks.check(&run);
    let p = Printed::of(&run);
    assert_found_through_command_line(&p);
    assert_windows_and_interrupts(&p);
}

/// Debian's cloud kernel: ACPI only, virtio-mmio and virtio-blk as modules its initramfs
/// loads; ext4 built in.
#[test]
fn debian_cloud_kernel_reads_and_writes_the_disks() {
    let disks = RwDisks::new("cloud");
    let (kernel, initrd) = cloud();
    let mut args = vec!["--mem".to_string(), "1G".to_string()];
    args.extend(disks.args(""));
    args.extend([kernel, initrd]);
    let run = Hvrun::spawn(&strs(&args)).wait(CLOUD_TIMEOUT);

    disks.check(&run);
    let p = Printed::of(&run);
    assert_found_through_acpi(&p);
    assert_windows_and_interrupts(&p);
}

// --- read-only ----------------------------------------------------------------------------

/// The same ext4 image twice, both `ro` (read-only users share an image): the guest sees
/// read-only disks, every way of writing fails, and the image does not change by a byte.
/// While the guest runs, a writer is refused.
#[test]
fn read_only_disks_refuse_writes_and_the_image_stays_the_same() {
    let scratch = Scratch::new("ro");
    let known = known_files();
    let tree = scratch.path("tree");
    write_tree(&tree, &known);
    let image = scratch.path("data.img");
    make_ext4(&image, &tree, DATA_MIB);
    let before = std::fs::read(&image).unwrap();
    let (kernel, initrd) = minimal();
    let disk = format!("{},ro", image.display());
    let append = "hvrun.check=disk hvrun.disk=ro hvrun.wait=1";
    let mut hvrun = Hvrun::spawn_on_terminal(&["--disk", &disk, "--disk", &disk, "--append", append, &kernel, &initrd]);
    let release = Release::new(&hvrun);
    wait_until_waiting(&mut hvrun);
    assert_in_use(&image.display().to_string(), &image);
    drop(release);
    let run = hvrun.wait(BOOT_TIMEOUT);

    assert_check_passed(&run);
    let p = Printed::of(&run);
    p.expect("disks", "vda vdb");
    let sum = sha256(&before);
    for d in ["vda", "vdb"] {
        p.expect(&format!("{d}.ro"), "1");
        p.expect(&format!("{d}.getro"), "1");
        // The whole device reads as the image.
        p.expect(&format!("{d}.sum"), &sum);
    }
    for kind in ["raw", "mount-rw", "file"] {
        let outcome = p.get(&format!("write.{kind}"));
        assert!(outcome.starts_with("failed"), "write.{kind} {outcome}:\n{}", run.report());
    }
    let sums: BTreeMap<String, String> = known.iter().map(|(n, b)| (n.clone(), sha256(b))).collect();
    assert_eq!(p.sums, sums, "the known files as the guest read them:\n{}", run.report());
    assert_bytes_eq("data.img after the read-only guest", &std::fs::read(&image).unwrap(), &before);
}

// --- discard ------------------------------------------------------------------------------

/// fstrim after removing a large file, blkdiscard and a write-zeroes on a raw disk: the
/// guest's DISCARD and WRITE_ZEROES requests punch holes in the images, which then take
/// less space on the host; those ranges read as zeroes and everything else is intact.
#[test]
fn discard_and_write_zeroes_punch_holes_in_the_disk_images() {
    const FILL: usize = 40 * MIB;
    // On the raw disk: DISCARD (blkdiscard) and WRITE_ZEROES (guest/tools/zeroout.c).
    const RAW_DISCARD: std::ops::Range<usize> = MIB..5 * MIB;
    const RAW_ZEROED: std::ops::Range<usize> = 6 * MIB..9 * MIB;
    let scratch = Scratch::new("trim");
    let known = known_files();
    let mut files = known.clone();
    files.insert("fill.bin".into(), pattern(3, FILL));
    let tree = scratch.path("tree");
    write_tree(&tree, &files);
    let data = scratch.path("data.img");
    make_ext4(&data, &tree, DATA_MIB);
    let raw = scratch.path("raw.img");
    let raw_before = pattern(4, RAW_MIB * MIB);
    std::fs::write(&raw, &raw_before).unwrap();
    let (data_before, raw_before_space) = (allocated(&data), allocated(&raw));
    // Without this the test would prove nothing (a host file system that compresses or
    // deduplicates, say).
    assert!(data_before >= FILL as u64, "data.img takes only {data_before} bytes");
    assert!(raw_before_space >= (RAW_MIB * MIB) as u64, "raw.img takes only {raw_before_space} bytes");

    let (kernel, initrd) = minimal();
    let (d, r) = (data.display().to_string(), raw.display().to_string());
    let append = "hvrun.check=disk hvrun.disk=trim hvrun.raw=vdb";
    let run = Hvrun::spawn(&["--disk", &d, "--disk", &r, "--append", append, &kernel, &initrd]).wait(BOOT_TIMEOUT);

    assert_check_passed(&run);
    let p = Printed::of(&run);
    // The device offers discard and write-zeroes, so the kernel uses them.
    for key in ["vda.discard_max_bytes", "vda.write_zeroes_max_bytes", "vdb.discard_max_bytes"] {
        assert!(p.number(key) > 0, "{key}:\n{}", run.report());
    }
    assert!(p.get("fstrim").contains("bytes trimmed"), "{}", run.report());
    // fill.bin's blocks are free again on the host; a little is written back (the journal).
    let data_after = allocated(&data);
    eprintln!("data.img: {data_before} bytes allocated before, {data_after} after");
    assert!(
        data_after + (FILL - 4 * MIB) as u64 <= data_before,
        "data.img took {data_before} bytes before the guest's fstrim and {data_after} after\n{}",
        run.report()
    );
    let sums: BTreeMap<String, String> = known.iter().map(|(n, b)| (n.clone(), sha256(b))).collect();
    assert_eq!(p.sums, sums, "the files left after fstrim, as the guest read them:\n{}", run.report());
    assert_files_eq("data.img after fstrim", &files_in(&data, &scratch), &known);
    assert_fsck_clean(&data);

    // The raw disk: both ranges read as zeroes, in the guest and in the image, and no
    // longer take space on the host; the rest is as it was.
    p.expect("raw-discarded", &sha256(&vec![0; RAW_DISCARD.len()]));
    p.expect("raw-zeroed", &sha256(&vec![0; RAW_ZEROED.len()]));
    let mut want = raw_before.clone();
    want[RAW_DISCARD].fill(0);
    want[RAW_ZEROED].fill(0);
    assert_bytes_eq("raw.img after blkdiscard and zeroout", &std::fs::read(&raw).unwrap(), &want);
    let raw_after = allocated(&raw);
    assert!(
        raw_after + (RAW_DISCARD.len() + RAW_ZEROED.len()) as u64 <= raw_before_space,
        "raw.img took {raw_before_space} bytes before the guest's blkdiscard and zeroout, {raw_after} after"
    );
}

// --- root file system -------------------------------------------------------------------

/// `--root` and no initramfs: the kernel mounts /dev/vda as / (an ext4 image of the test
/// initramfs's files) and runs its /init, which runs the check from the disk; what the
/// guest writes to / ends up in the image.
#[test]
fn root_file_system_on_a_disk_without_an_initramfs() {
    let scratch = Scratch::new("root");
    let tree = scratch.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let initrd = guest_file("HVRUN_GUEST_INITRD");
    let mut gzip = Command::new("gzip").arg("-dc").arg(&initrd).stdout(Stdio::piped()).spawn().expect("run gzip");
    run(Command::new("cpio").args(["-idm", "--quiet"]).current_dir(&tree).stdin(gzip.stdout.take().expect("gzip's output")));
    assert!(gzip.wait().expect("gzip").success(), "gzip -dc {}", initrd.display());
    let original = read_tree(&tree);
    assert!(original.contains_key("init") && original.contains_key("checks/disk"), "the initramfs: {:?}", original.keys());
    let image = scratch.path("root.img");
    make_ext4(&image, &tree, DATA_MIB);

    let (kernel, _) = minimal();
    let token = format!("hvrun-root-{}", std::process::id());
    let seed = run_seed();
    let disk = format!("{},serial=hvrun-root", image.display());
    // rw: the kernel mounts the root read-only otherwise. init=: the kernel's default is
    // /sbin/init, the initramfs has /init.
    let append = format!("rw init=/init hvrun.check=disk hvrun.disk=root hvrun.token={token} hvrun.seed={seed}");
    let run = Hvrun::spawn(&["--disk", &disk, "--root", "--append", &append, &kernel]).wait(BOOT_TIMEOUT);

    assert_check_passed(&run);
    assert!(run.console.find("VFS: Mounted root (ext4 filesystem)").is_some(), "{}", run.report());
    let p = Printed::of(&run);
    assert!(p.get("cmdline").split_whitespace().any(|w| w == "root=/dev/vda"), "{}", run.report());
    p.expect("disks", "vda");
    p.expect("vda.serial", "hvrun-root");
    p.expect("root.fstype", "ext4");
    p.expect("root.dev", p.get("vda.dev"));

    let random = pattern(seed, MIB);
    p.expect("root.random", &sha256(&random));
    let mut want = original;
    want.insert("root-check/random.bin".into(), random);
    want.insert("root-check/token.txt".into(), format!("{token}\n").into_bytes());
    assert_files_eq("root.img", &files_in(&image, &scratch), &want);
    assert_fsck_clean(&image);
}

// --- bad arguments ----------------------------------------------------------------------

/// Disk arguments hvrun cannot use: status 1 and one line naming the image, or the
/// argument parser's status 2; before any guest runs.
#[test]
fn bad_disk_arguments_are_refused() {
    let scratch = Scratch::new("bad-args");
    let image = scratch.path("a.img");
    std::fs::File::create(&image).unwrap().set_len(MIB as u64).unwrap();
    let img = image.display().to_string();
    let img_ro = format!("{img},ro");
    let dir = scratch.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.display().to_string();
    let (kernel, initrd) = minimal();
    let refused_1 = |disks: &[&str], expect: &[&str]| {
        let mut args: Vec<&str> = disks.iter().flat_map(|d| ["--disk", d]).collect();
        args.extend(["--append", "hvrun.check=uptime", &kernel, &initrd]);
        refused(&args, 1, expect);
    };

    refused_1(&["/nonexistent/disk.img"], &["/nonexistent/disk.img"]);
    refused_1(&[&dir], &[&dir]);
    refused_1(&[&format!("{dir},ro")], &[&dir]);
    // One image twice in one hvrun: the lock holds against this process too.
    refused_1(&[&img, &img], &["in use", &img]);
    refused_1(&[&img_ro, &img], &["in use", &img]);
    refused_1(&[&img, &img_ro], &["in use", &img]);
    // More disks than free interrupt lines.
    let many: Vec<String> = (0..40)
        .map(|i| {
            let p = scratch.path(&format!("many-{i}.img"));
            std::fs::File::create(&p).unwrap().set_len(MIB as u64).unwrap();
            p.display().to_string()
        })
        .collect();
    refused_1(&strs(&many), &["too many disks"]);

    let usage = |args: &[&str], expect: &str| refused(&[args, &[kernel.as_str(), initrd.as_str()]].concat(), 2, &[expect]);
    usage(&["--disk", &format!("{img},rw")], "unknown disk option");
    usage(&["--disk", &format!("{img},serial=")], "serial");
    usage(&["--disk", &format!("{img},serial=123456789012345678901")], "serial");
    usage(&["--root"], "--disk");
}
