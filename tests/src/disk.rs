//! Disk images for the end-to-end tests of virtio disks (tests/tests/disk.rs, and
//! tests/tests/smp.rs's disk on a chosen CPU): scratch directories, ext4 images made and
//! read back with e2fsprogs, the pseudo-random data guest/tools/pattern.c also makes,
//! what guest/checks/disk printed, and the two disks of its read-write round trip
//! (`hvrun.disk=rw`), checked byte for byte in the images once hvrun has exited.
use crate::hvrun::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const MARKER: &str = "HVRUN-INIT-OK";
pub const MIB: usize = 1 << 20;

// --- scratch files and host tools --------------------------------------------------------

/// A directory for one test's images. Removed when the test passes; kept when it fails,
/// for a look at the images.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("hvrun-disk-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
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
pub fn sbin(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: scripts/setup.sh installs e2fsprogs")
}

/// Runs a host tool that must succeed.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = || format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}: {}\n{}", out.status, text());
}

/// SHA-256 in hex, as the guest's sha256sum prints it.
pub fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run sha256sum");
    // sha256sum prints only once it has read everything: writing all first cannot block.
    child.stdin.take().expect("stdin").write_all(bytes).expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum: {}", out.status);
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// `len` bytes that look random, different for each `seed` and the same on every run.
/// guest/tools/pattern.c makes the same bytes in the guest.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
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
pub fn run_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    1000 + (now.as_nanos() as u64 ^ std::process::id() as u64) % 1_000_000_000
}

/// Space the host really gives a file (holes take none).
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).blocks() * 512
}

/// Files by path relative to a file system's root.
pub type Files = BTreeMap<String, Vec<u8>>;

pub fn write_tree(dir: &Path, files: &Files) {
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("a parent")).unwrap();
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

/// The regular files under `dir` (symbolic links and directories are skipped).
pub fn read_tree(dir: &Path) -> Files {
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
pub fn make_ext4(image: &Path, tree: &Path, size_mib: usize) {
    run(Command::new(sbin("mke2fs"))
        .args(["-q", "-t", "ext4", "-b", "4096", "-d"])
        .arg(tree)
        .arg("-F")
        .arg(image)
        .arg(format!("{size_mib}M")));
}

/// Every regular file in an ext4 image, read with debugfs: no mount, no kernel involved.
pub fn files_in(image: &Path, scratch: &Scratch) -> Files {
    let out = scratch.path("read-back");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new(sbin("debugfs")).arg("-R").arg(format!("rdump / {}", out.display())).arg(image));
    read_tree(&out)
}

/// `e2fsck -fn`: a full check that changes nothing; status 0 means no errors at all.
pub fn assert_fsck_clean(image: &Path) {
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
pub fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
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

pub fn assert_files_eq(what: &str, got: &Files, want: &Files) {
    let names = |f: &Files| f.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: the files");
    for (name, bytes) in want {
        assert_bytes_eq(&format!("{what}: {name}"), &got[name], bytes);
    }
}

// --- what the guest printed -----------------------------------------------------------

/// The result lines of guest/checks/disk: "HVRUN-DISK KEY VALUE" and
/// "HVRUN-DISK-SUM SHA256 PATH".
pub struct Printed<'a> {
    pub run: &'a Finished,
    pub values: Vec<(String, String)>,
    pub sums: BTreeMap<String, String>,
}

impl<'a> Printed<'a> {
    pub fn of(run: &'a Finished) -> Printed<'a> {
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
    pub fn get(&self, key: &str) -> &str {
        self.all(key).first().copied().unwrap_or_else(|| panic!("the guest printed no {key}:\n{}", self.run.report()))
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.values.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// A number the guest printed.
    pub fn number(&self, key: &str) -> u64 {
        let v = self.get(key);
        v.parse().unwrap_or_else(|_| panic!("{key} {v:?} is not a number:\n{}", self.run.report()))
    }

    /// Asserts that the guest printed `want` for `key`.
    pub fn expect(&self, key: &str, want: &str) {
        assert_eq!(self.get(key), want, "{key}:\n{}", self.run.report());
    }
}

/// The check ran to its end, the guest powered off, and its kernel printed no noise.
pub fn assert_check_passed(run: &Finished) {
    assert!(run.console.find(MARKER).is_some(), "{}", run.report());
    assert!(run.console.find("HVRUN-DISK-ERROR").is_none(), "{}", run.report());
    assert!(run.console.find("HVRUN-DISK-DONE").is_some(), "{}", run.report());
    assert!(run.console.find("HVRUN-CHECK-STATUS=0").is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
    assert_no_kernel_noise(run);
}


// --- the read-write round trip ---------------------------------------------------------

pub const DATA_MIB: usize = 64;
pub const RAW_MIB: usize = 12;
/// guest/random.bin, from the run's seed.
pub const RANDOM_LEN: usize = 6 * MIB;
/// Where the guest writes random.bin's bytes on the raw disk.
pub const RAW_AT: usize = MIB;
/// The guest's patch of pattern.bin (from the seed + 1): 12 KiB at an offset that is not
/// block aligned.
pub const PATCH_AT: usize = 1_000_001;
pub const PATCH_LEN: usize = 12 * 1024;
pub const NOTE: &[u8] = b"written by the guest through virtio-blk\n";

/// The files the ext4 images start with.
pub fn known_files() -> Files {
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
pub struct RwDisks {
    pub scratch: Scratch,
    pub data: PathBuf,
    pub raw: PathBuf,
    pub known: Files,
    pub raw_before: Vec<u8>,
    pub seed: u64,
}

impl RwDisks {
    pub fn new(test: &str) -> RwDisks {
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
    pub fn args(&self, append: &str) -> Vec<String> {
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
    pub fn check(&self, run: &Finished) {
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
