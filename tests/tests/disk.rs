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
//! mounting, `e2fsck -fn` to judge the file system. The guests come from scripts/test.sh
//! (HVRUN_GUEST_KERNEL/INITRD, HVRUN_CLOUD_*). Six boots in all: the sandbox is slow.
use hvrun_tests::hvrun::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: the sandbox runs the guest kernel at emulated speed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The cloud kernel is much bigger and probes much more.
const CLOUD_TIMEOUT: Duration = Duration::from_secs(600);
const MARKER: &str = "HVRUN-INIT-OK";
const MIB: usize = 1 << 20;

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

// --- scratch files and host tools --------------------------------------------------------

/// A directory for one test's images. Removed when the test passes; kept when it fails,
/// for a look at the images.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("hvrun-disk-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("disk test: the images are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// An e2fsprogs tool. They live in /usr/sbin, which a user's PATH may lack.
fn sbin(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: scripts/setup.sh installs e2fsprogs")
}

/// Runs a host tool that must succeed.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = || format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}: {}\n{}", out.status, text());
}

/// SHA-256 in hex, as the guest's sha256sum prints it.
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run sha256sum");
    // sha256sum prints only once it has read everything: writing all first cannot block.
    child.stdin.take().expect("stdin").write_all(bytes).expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum: {}", out.status);
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// `len` bytes that look random, different for each `seed` and the same on every run.
/// guest/tools/pattern.c makes the same bytes in the guest.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A seed for the guest's pseudo-random data (hvrun.seed; guest/tools/pattern.c makes
/// the same bytes as [`pattern`]): different on every run, so data left from an earlier
/// run cannot pass for this one's. Small enough for the guest shell's arithmetic.
fn run_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    1000 + (now.as_nanos() as u64 ^ std::process::id() as u64) % 1_000_000_000
}

/// Space the host really gives a file (holes take none).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).blocks() * 512
}

/// Files by path relative to a file system's root.
type Files = BTreeMap<String, Vec<u8>>;

fn write_tree(dir: &Path, files: &Files) {
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("a parent")).unwrap();
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

/// The regular files under `dir` (symbolic links and directories are skipped).
fn read_tree(dir: &Path) -> Files {
    fn walk(root: &Path, dir: &Path, files: &mut Files) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_dir() {
                walk(root, &path, files);
            } else if kind.is_file() {
                let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = Files::new();
    walk(dir, dir, &mut files);
    files
}

/// An ext4 image of `size_mib` MiB holding the files of `tree`. 4 KiB blocks, as on a
/// real disk (for an image this small, mke2fs would choose 1 KiB).
fn make_ext4(image: &Path, tree: &Path, size_mib: usize) {
    run(Command::new(sbin("mke2fs"))
        .args(["-q", "-t", "ext4", "-b", "4096", "-d"])
        .arg(tree)
        .arg("-F")
        .arg(image)
        .arg(format!("{size_mib}M")));
}

/// Every regular file in an ext4 image, read with debugfs: no mount, no kernel involved.
fn files_in(image: &Path, scratch: &Scratch) -> Files {
    let out = scratch.path("read-back");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new(sbin("debugfs")).arg("-R").arg(format!("rdump / {}", out.display())).arg(image));
    read_tree(&out)
}

/// `e2fsck -fn`: a full check that changes nothing; status 0 means no errors at all.
fn assert_fsck_clean(image: &Path) {
    let out = Command::new(sbin("e2fsck")).arg("-fn").arg(image).output().expect("run e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn {}: {}\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Byte equality with a readable failure: the first differing offset, not megabytes of
/// bytes.
fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| b[at.min(b.len())..(at + 16).min(b.len())].to_vec();
    panic!(
        "{what}: {} bytes, expected {}; first difference at byte {at} ({at:#x}): {:02x?} instead of {:02x?}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

fn assert_files_eq(what: &str, got: &Files, want: &Files) {
    let names = |f: &Files| f.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: the files");
    for (name, bytes) in want {
        assert_bytes_eq(&format!("{what}: {name}"), &got[name], bytes);
    }
}

// --- what the guest printed -----------------------------------------------------------

/// The result lines of guest/checks/disk: "HVRUN-DISK KEY VALUE" and
/// "HVRUN-DISK-SUM SHA256 PATH".
struct Printed<'a> {
    run: &'a Finished,
    values: Vec<(String, String)>,
    sums: BTreeMap<String, String>,
}

impl<'a> Printed<'a> {
    fn of(run: &'a Finished) -> Printed<'a> {
        let (mut values, mut sums) = (Vec::new(), BTreeMap::new());
        for (_, line) in run.console.all() {
            // Found anywhere in the line: a kernel message may have started it.
            if let Some(at) = line.find("HVRUN-DISK ") {
                let rest = &line[at + "HVRUN-DISK ".len()..];
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                values.push((key.to_string(), value.trim().to_string()));
            } else if let Some(at) = line.find("HVRUN-DISK-SUM ") {
                let mut words = line[at..].split_whitespace().skip(1);
                if let (Some(sum), Some(path)) = (words.next(), words.next()) {
                    sums.insert(path.to_string(), sum.to_string());
                }
            }
        }
        Printed { run, values, sums }
    }

    /// The value of `key`, which the guest must have printed.
    fn get(&self, key: &str) -> &str {
        self.all(key).first().copied().unwrap_or_else(|| panic!("the guest printed no {key}:\n{}", self.run.report()))
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.values.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// A number the guest printed.
    fn number(&self, key: &str) -> u64 {
        let v = self.get(key);
        v.parse().unwrap_or_else(|_| panic!("{key} {v:?} is not a number:\n{}", self.run.report()))
    }

    /// Asserts that the guest printed `want` for `key`.
    fn expect(&self, key: &str, want: &str) {
        assert_eq!(self.get(key), want, "{key}:\n{}", self.run.report());
    }
}

/// The check ran to its end, the guest powered off, and its kernel printed no noise.
fn assert_check_passed(run: &Finished) {
    assert!(run.console.find(MARKER).is_some(), "{}", run.report());
    assert!(run.console.find("HVRUN-DISK-ERROR").is_none(), "{}", run.report());
    assert!(run.console.find("HVRUN-DISK-DONE").is_some(), "{}", run.report());
    assert!(run.console.find("HVRUN-CHECK-STATUS=0").is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
    assert_no_kernel_noise(run);
}

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

// --- the read-write round trip ---------------------------------------------------------

const DATA_MIB: usize = 64;
const RAW_MIB: usize = 12;
/// guest/random.bin, from the run's seed.
const RANDOM_LEN: usize = 6 * MIB;
/// Where the guest writes random.bin's bytes on the raw disk.
const RAW_AT: usize = MIB;
/// The guest's patch of pattern.bin (from the seed + 1): 12 KiB at an offset that is not
/// block aligned.
const PATCH_AT: usize = 1_000_001;
const PATCH_LEN: usize = 12 * 1024;
const NOTE: &[u8] = b"written by the guest through virtio-blk\n";

/// The files the ext4 images start with.
fn known_files() -> Files {
    let mut f = Files::new();
    f.insert("hello.txt".into(), b"hello from the host\n".to_vec());
    // Bigger than one request, and not a whole number of blocks.
    f.insert("pattern.bin".into(), pattern(1, 3 * MIB + 1234));
    f.insert("sub/dir/small.txt".into(), b"a small file, two directories down\n".to_vec());
    f.insert("empty".into(), Vec::new());
    f.insert("delete-me.txt".into(), b"the guest removes this file\n".to_vec());
    f
}

/// The two disks of the read-write round trip: vda, an ext4 image with the known files;
/// vdb, a raw image full of a pattern.
struct RwDisks {
    scratch: Scratch,
    data: PathBuf,
    raw: PathBuf,
    known: Files,
    raw_before: Vec<u8>,
    seed: u64,
}

impl RwDisks {
    fn new(test: &str) -> RwDisks {
        let scratch = Scratch::new(test);
        let known = known_files();
        let tree = scratch.path("tree");
        write_tree(&tree, &known);
        let data = scratch.path("data.img");
        make_ext4(&data, &tree, DATA_MIB);
        let raw = scratch.path("raw.img");
        let raw_before = pattern(2, RAW_MIB * MIB);
        std::fs::write(&raw, &raw_before).unwrap();
        RwDisks { scratch, data, raw, known, raw_before, seed: run_seed() }
    }

    /// hvrun's arguments for the two disks (each with a serial) and the check.
    fn args(&self, append: &str) -> Vec<String> {
        vec![
            "--disk".into(),
            format!("{},serial=hvrun-data", self.data.display()),
            "--disk".into(),
            format!("{},serial=hvrun-raw", self.raw.display()),
            "--append".into(),
            format!("hvrun.check=disk hvrun.disk=rw hvrun.raw=vdb hvrun.seed={} {append}", self.seed),
        ]
    }

    /// Everything the guest reported, and what the host finds in the images.
    fn check(&self, run: &Finished) {
        assert_check_passed(run);
        let p = Printed::of(run);
        // Both disks, in the order given, as the sizes and serials tell them apart.
        p.expect("disks", "vda vdb");
        p.expect("vda.size", &(DATA_MIB * MIB / 512).to_string());
        p.expect("vdb.size", &(RAW_MIB * MIB / 512).to_string());
        p.expect("vda.serial", "hvrun-data");
        p.expect("vdb.serial", "hvrun-raw");
        p.expect("vda.ro", "0");
        p.expect("vdb.ro", "0");
        // The device takes flushes, so the guest's syncs reach the host file.
        p.expect("vda.write_cache", "write back");
        p.expect("vdb.write_cache", "write back");

        // The guest read what the host wrote.
        let sums: BTreeMap<String, String> = self.known.iter().map(|(n, b)| (n.clone(), sha256(b))).collect();
        assert_eq!(p.sums, sums, "the known files as the guest read them:\n{}", run.report());
        p.expect("raw-before", &sha256(&self.raw_before));

        // What the guest wrote, as it read it back.
        let random = pattern(self.seed, RANDOM_LEN);
        let patch = pattern(self.seed + 1, PATCH_LEN);
        p.expect("random.bin", &sha256(&random));
        p.expect("patch", &sha256(&patch));
        p.expect("raw-readback", &sha256(&random));

        // The file system holds exactly what the guest made of it.
        let mut want = self.known.clone();
        want.remove("delete-me.txt");
        want.insert("guest/note.txt".into(), NOTE.to_vec());
        want.insert("guest/random.bin".into(), random.clone());
        want.get_mut("pattern.bin").unwrap()[PATCH_AT..PATCH_AT + PATCH_LEN].copy_from_slice(&patch);
        assert_files_eq("data.img", &files_in(&self.data, &self.scratch), &want);
        assert_fsck_clean(&self.data);

        // The raw disk: random.bin at 1 MiB, the old pattern everywhere else.
        let mut want = self.raw_before.clone();
        want[RAW_AT..RAW_AT + RANDOM_LEN].copy_from_slice(&random);
        assert_bytes_eq("raw.img", &std::fs::read(&self.raw).unwrap(), &want);
    }
}

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
