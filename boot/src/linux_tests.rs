//! End-to-end: the real 6.1 test kernel (shared/guest/bzImage-min, see
//! shared/design/test-sandbox.md) loaded into guest memory, no VM needed; then
//! truncated, corrupted and garbage copies of it, which must all be clean errors.
use super::*;
use linux_loader::loader::bootparam::boot_params;
use std::io::{Cursor, Write};
use vm_memory::{Bytes, GuestMemoryMmap};

/// The test kernel, found as scripts/guest-kernel.sh finds it: HVRUN_TEST_KERNEL, else
/// shared/guest/bzImage-min beside the repo, else the one the recipe built in
/// .cache/guest/ (a user's clone has no shared/; scripts/test.sh builds it first).
/// Missing is a failure, not a skip: these tests are about a real kernel.
fn kernel_path() -> PathBuf {
    if let Some(path) = std::env::var_os("HVRUN_TEST_KERNEL") {
        return PathBuf::from(path);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = repo.join("../shared/guest/bzImage-min");
    if shared.exists() {
        shared
    } else {
        repo.join(".cache/guest/bzImage-min")
    }
}

fn kernel_bytes() -> Vec<u8> {
    let path = kernel_path();
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("test kernel {}: {e} (set HVRUN_TEST_KERNEL or run scripts/guest-kernel.sh)", path.display()))
}

fn guest(size: u64) -> GuestMemoryMmap {
    let ranges: Vec<_> =
        vmm::memory::ram_ranges(size).into_iter().map(|(s, l)| (GuestAddress(s), l as usize)).collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// A file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, data: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("hvrun-boot-{}-{name}", std::process::id()));
        std::fs::File::create(&path).unwrap().write_all(data).unwrap();
        TempFile(path)
    }
    fn sparse(name: &str, len: u64) -> Self {
        let path = std::env::temp_dir().join(format!("hvrun-boot-{}-{name}", std::process::id()));
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        TempFile(path)
    }
    fn open(&self) -> File {
        File::open(&self.0).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const MIB: u64 = 1 << 20;
const DEVS: [VirtioMmioDevice; 2] =
    [VirtioMmioDevice { base: 0xd000_0000, gsi: 5 }, VirtioMmioDevice { base: 0xd000_1000, gsi: 6 }];

fn one_line(e: &BootError) -> String {
    let s = e.to_string();
    assert!(!s.is_empty() && !s.contains('\n'), "{s:?}");
    s
}

#[test]
fn real_bzimage_with_initrd_in_256_mib() {
    let img = kernel_bytes();
    let mem = guest(256 * MIB);
    let initrd_data: Vec<u8> = (0..(3 * MIB + 123)).map(|i| (i * 7 % 251) as u8).collect();
    let initrd = TempFile::new("initrd-256", &initrd_data);
    let mut kernel = File::open(kernel_path()).unwrap();
    let cmdline = "console=ttyS0 reboot=k panic=-1";
    let info = load_linux(&mem, 256 * MIB, &mut kernel, Some(&mut initrd.open()), cmdline, 2, &DEVS).unwrap();

    assert_eq!(info.kernel.format, KernelFormat::BzImage);
    assert_eq!(info.kernel.protocol, 0x020f);
    // init_size 0xff1000 at pref_address 16 MiB (non-relocatable kernel).
    assert_eq!(info.kernel.footprint, (0x10_0000, 0x100_0000 + 0xff_1000));
    assert_eq!(info.entry.rip, 0x10_0200);
    assert_eq!(info.entry.rsi, 0x7000);
    assert_eq!(info.entry.cr3, 0x9000);
    assert_eq!((info.entry.cs.selector, info.entry.ds.selector), (0x10, 0x18));

    // The protected-mode kernel is at 1 MiB, byte for byte.
    let setup_len = (img[0x1f1] as usize + 1) * 512;
    let mut loaded = vec![0u8; img.len() - setup_len];
    mem.read_slice(&mut loaded, GuestAddress(0x10_0000)).unwrap();
    assert!(loaded == img[setup_len..], "kernel bytes differ");

    // Zero page: the image's header plus what the loader owns.
    let bp: boot_params = mem.read_obj(GuestAddress(0x7000)).unwrap();
    let h = bp.hdr;
    let (magic, version, loader, code32, cmd_ptr) =
        (h.header, h.version, h.type_of_loader, h.code32_start, h.cmd_line_ptr);
    assert_eq!((magic, version, loader, code32, cmd_ptr), (0x5372_6448, 0x020f, 0xff, 0x10_0000, 0x20000));
    let (setup_sects, syssize, xlf, cmdline_size, pref, init_size) =
        (h.setup_sects, h.syssize, h.xloadflags, h.cmdline_size, h.pref_address, h.init_size);
    assert_eq!((setup_sects, syssize, cmdline_size, pref, init_size), (31, 0x22140, 0x7ff, 0x100_0000, 0xff_1000));
    assert_eq!(xlf & 1, 1);
    let rsdp = bp.acpi_rsdp_addr;
    assert_eq!(rsdp, 0xe0000);
    assert_eq!(bp.e820_entries, 5);
    let e820: Vec<(u64, u64, u32)> = bp.e820_table[..5].iter().map(|e| (e.addr, e.size, e.r#type)).collect();
    assert_eq!(
        e820,
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x60400, 2),
            (0x10_0000, 256 * MIB - 0x10_0000, 1),
            (0xfec0_0000, 0x1000, 2),
            (0xfee0_0000, 0x1000, 2),
        ]
    );

    // Command line, NUL-terminated.
    let mut buf = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut buf, GuestAddress(0x20000)).unwrap();
    assert_eq!(&buf[..cmdline.len()], cmdline.as_bytes());
    assert_eq!(buf[cmdline.len()], 0);

    // Initrd: top of RAM, page-aligned, above the kernel's footprint.
    let size = initrd_data.len() as u64;
    let addr = (256 * MIB - size) & !0xfff;
    assert_eq!(info.initrd, Some((addr, size)));
    let (image, rsize) = (h.ramdisk_image, h.ramdisk_size);
    assert_eq!((image as u64, rsize as u64), (addr, size));
    assert!(addr >= info.kernel.footprint.1);
    let mut back = vec![0u8; initrd_data.len()];
    mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
    assert!(back == initrd_data, "initrd bytes differ");

    // GDT, page tables, RSDP, MP table are where the entry state and zero page say.
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x510)).unwrap(), 0x00af_9b00_0000_ffff);
    assert_eq!(paging::translate(&mem, 0x9000, addr + 5), Some(addr + 5));
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, GuestAddress(0xe0000)).unwrap();
    assert_eq!(&sig, b"RSD PTR ");
    mem.read_slice(&mut sig[..4], GuestAddress(info.mptable)).unwrap();
    assert_eq!(&sig[..4], b"_MP_");
}

#[test]
fn real_bzimage_in_16_gib_keeps_the_initrd_below_its_limit() {
    let img = kernel_bytes();
    let mem = guest(16 << 30);
    let mut kernel = Cursor::new(img);
    let mut initrd = Cursor::new(vec![0x5a; 0x2000]);
    let info = load_linux(&mem, 16 << 30, &mut kernel, Some(&mut initrd), "", 4, &[]).unwrap();
    // This kernel lacks XLF_CAN_BE_LOADED_ABOVE_4G: initrd_addr_max 0x7fffffff rules.
    assert_eq!(info.initrd, Some((0x8000_0000 - 0x2000, 0x2000)));
    assert_eq!(info.e820.len(), 6);
    assert_eq!(*info.e820.last().unwrap(), E820Entry { addr: 1 << 32, size: (16 << 30) - 0xc000_0000, kind: 1 });
    assert_eq!(info.e820[2].end(), 0xc000_0000);
    let bp: boot_params = mem.read_obj(GuestAddress(0x7000)).unwrap();
    assert_eq!(bp.e820_entries, 6);
    let top = bp.e820_table[5];
    let (a, s) = (top.addr, top.size);
    assert_eq!((a, s), (1 << 32, 13 << 30));
    // No initrd at all is fine too.
    let info = load_linux(&mem, 16 << 30, &mut kernel, None, "quiet", 1, &[]).unwrap();
    assert_eq!(info.initrd, None);
}

#[test]
fn truncated_copies_are_errors() {
    let img = kernel_bytes();
    let mem = guest(128 * MIB);
    let setup_len = (img[0x1f1] as usize + 1) * 512;
    for len in
        [0, 1, 100, 0x1f1, 0x205, 0x206, 0x250, 0x26b, 0x26c, setup_len - 1, setup_len, setup_len + 4096, img.len() - 1]
    {
        let file = TempFile::new(&format!("trunc-{len}"), &img[..len]);
        let err = load_linux(&mem, 128 * MIB, &mut file.open(), None, "", 1, &[]).unwrap_err();
        let msg = one_line(&err);
        if len < 0x206 {
            assert!(matches!(err, BootError::Kernel(KernelError::NotAKernel(_))), "{len}: {msg}");
        } else {
            assert!(
                matches!(err, BootError::Kernel(KernelError::Truncated { actual, .. }) if actual == len as u64),
                "{len}: {msg}"
            );
            assert!(msg.contains("truncated"), "{msg}");
        }
    }
}

#[test]
fn header_problems_have_their_own_errors() {
    let img = kernel_bytes();
    let mem = guest(128 * MIB);
    let run = |img: &[u8], cmdline: &str| load_linux(&mem, 128 * MIB, &mut Cursor::new(img), None, cmdline, 1, &[]);

    let mut old = img.clone();
    old[0x206..0x208].copy_from_slice(&0x020bu16.to_le_bytes());
    let e = run(&old, "").unwrap_err();
    assert!(matches!(e, BootError::Kernel(KernelError::ProtocolTooOld(0x020b))));
    assert_eq!(one_line(&e), "kernel boot protocol 2.11 is too old: the 64-bit entry needs 2.12 or later");

    let mut not64 = img.clone();
    not64[0x236] &= !1;
    let e = run(&not64, "").unwrap_err();
    assert!(matches!(e, BootError::Kernel(KernelError::Not64Bit)), "{e}");
    one_line(&e);

    let e = run(&img, &"x".repeat(2048)).unwrap_err();
    assert!(matches!(e, BootError::Cmdline(CmdlineError::TooLong { len: 2048, max: 2047 })), "{e}");
    assert!(run(&img, &"x".repeat(2047)).is_ok());

    let e = run(b"MZ\x90\x00 this is a PE file, not Linux", "").unwrap_err();
    assert!(one_line(&e).starts_with("not a Linux kernel image"));
}

#[test]
fn initrd_that_does_not_fit() {
    let img = kernel_bytes();
    let mem = guest(128 * MIB);
    // Sparse: nothing is written or read, placement fails first.
    let big = TempFile::sparse("initrd-big", 100 * MIB);
    let e = load_linux(&mem, 128 * MIB, &mut Cursor::new(img.clone()), Some(&mut Cursor::new(Vec::new())), "", 1, &[])
        .unwrap_err();
    assert!(matches!(e, BootError::Initrd(InitrdError::Empty)), "{e}");
    let mut kernel = TempFile::new("kernel-for-big-initrd", &img).open();
    let e = load_linux(&mem, 128 * MIB, &mut kernel, Some(&mut big.open()), "", 1, &[]).unwrap_err();
    // 128 MiB minus the kernel's footprint up to 0x1ff1000 (rounded to a page).
    assert!(
        matches!(e, BootError::Initrd(InitrdError::DoesNotFit { size, room }) if size == 100 * MIB && room == 128 * MIB - 0x1ff_1000),
        "{e}"
    );
    assert!(one_line(&e).starts_with("initrd does not fit"));
}

#[test]
fn memory_vcpu_and_file_errors() {
    let img = kernel_bytes();
    let mem = guest(128 * MIB);
    let run = |size, vcpus| load_linux(&mem, size, &mut Cursor::new(&img), None, "", vcpus, &[]);
    assert!(matches!(run(64 * MIB, 1), Err(BootError::MemorySize(_))));
    assert!(matches!(run(128 * MIB + 1, 1), Err(BootError::MemorySize(_))));
    assert!(matches!(run(512 << 30, 1), Err(BootError::MemorySize(_))));
    assert!(matches!(run(256 * MIB, 1), Err(BootError::MemoryMismatch(_))));
    assert!(matches!(run(128 * MIB, 0), Err(BootError::Vcpus(0))));
    assert!(matches!(run(128 * MIB, 255), Err(BootError::Vcpus(255))));
    one_line(&run(64 * MIB, 1).unwrap_err());
    let e = open_image("kernel", Path::new("/nonexistent/bzImage")).unwrap_err();
    assert!(one_line(&e).starts_with("cannot open kernel /nonexistent/bzImage: "));
}

/// A small deterministic generator for the fuzz-ish tests.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn garbage_and_corrupted_headers_never_panic() {
    let mem = guest(128 * MIB);
    let mut rng = Lcg(0x1234_5678);
    // Pure garbage, with and without the magic numbers.
    for round in 0..300 {
        let len = (rng.next() % 0x3000) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 3 == 0 && len >= 0x206 {
            data[0x202..0x206].copy_from_slice(b"HdrS");
        }
        if round % 3 == 1 && len >= 4 {
            data[..4].copy_from_slice(b"\x7fELF");
        }
        if let Err(e) = load_linux(&mem, 128 * MIB, &mut Cursor::new(&data), None, "", 1, &[]) {
            one_line(&e);
        }
    }
    // A valid small bzImage and ELF with random header bytes changed.
    let bz = loader_test_images::bzimage();
    let elf = loader_test_images::elf();
    for round in 0..2000 {
        let (mut img, range) = if round % 2 == 0 { (bz.clone(), 0x1f1..0x26c) } else { (elf.clone(), 0..0x80) };
        for _ in 0..(1 + rng.next() % 4) {
            let at = range.start + (rng.next() as usize % range.len());
            img[at] = rng.next() as u8;
        }
        let mut initrd = Cursor::new(vec![1u8; 4096]);
        if let Err(e) = load_linux(&mem, 128 * MIB, &mut Cursor::new(img), Some(&mut initrd), "console=ttyS0", 1, &DEVS)
        {
            one_line(&e);
        }
    }
}

/// Small valid images (the same builders as the loader's unit tests).
mod loader_test_images {
    use crate::loader::tests::{fake_bzimage, fake_elf};
    use linux_loader::loader::bootparam::{XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64};

    pub fn bzimage() -> Vec<u8> {
        fake_bzimage(0x020f, XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G, 0x2000)
    }
    pub fn elf() -> Vec<u8> {
        fake_elf(0x100_0000, 0x2000)
    }
}
