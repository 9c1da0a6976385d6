//! [`load_multiboot`] on synthetic images: where everything goes, the entry state, and
//! the placement errors. (The real kvm-unit-tests images boot in the end-to-end tests.)
use super::*;
use crate::elf32::tests::fake_elf32;
use crate::multiboot::header::tests::header_bytes;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 256 << 20;

fn guest() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

/// A multiboot ELF32 image: header (flags 0) at 0xb0 of its first segment's bytes.
fn image(segments: &[(u32, u32, u32)], entry: u32) -> Vec<u8> {
    let mut img = fake_elf32(entry, segments);
    img[0x10b0..0x10bc].copy_from_slice(&header_bytes(0));
    img
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, data: &[u8]) -> Self {
        // Unique per file: the tests run in parallel threads of one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hvrun-multiboot-{}-{n}-{name}", std::process::id()));
        File::create(&path).unwrap().write_all(data).unwrap();
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

fn boot(img: &[u8], module: Option<&[u8]>, cmdline: &str) -> (GuestMemoryMmap, Result<MultibootBoot, BootError>) {
    let mem = guest();
    let kernel = TempFile::new("kernel", img);
    let header = header::find(img).unwrap().expect("a multiboot header");
    let module_file = module.map(|m| TempFile::new("module", m));
    let mut opened = module_file.as_ref().map(|f| f.open());
    let res = load_multiboot(&mem, MEM, &mut kernel.open(), header, opened.as_mut().map(|f| (f, "env")), cmdline, 1, &[]);
    (mem, res)
}

fn le32(mem: &GuestMemoryMmap, addr: u64) -> u32 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

#[test]
fn loads_the_image_the_module_and_the_information() {
    let img = image(&[(0x40_0000, 0x200, 0x200), (0x40_1000, 0x10, 0xc3_5030)], 0x40_00bc);
    let (mem, res) = boot(&img, Some(b"NR_CPUS=1\n"), "x86/tsc.flat");
    let b = res.unwrap();
    assert_eq!((b.entry.rip, b.entry.rax, b.entry.rbx), (0x40_00bc, 0x2bad_b002, 0x1000));
    assert_eq!(b.image.footprint(), (0x40_0000, 0x40_1000 + 0xc3_5030));
    // The header is where the file had it, in the loaded first segment.
    assert_eq!(le32(&mem, 0x40_00b0), 0x1bad_b002);
    // The module at the top of RAM, page-aligned, with its end and string.
    let (start, size) = b.module.unwrap();
    assert_eq!((start, size), (MEM - 0x1000, 10));
    let info = b.info;
    assert_eq!(le32(&mem, info + 20), 1, "mods_count");
    let mods = u64::from(le32(&mem, info + 24));
    assert_eq!((le32(&mem, mods), le32(&mem, mods + 4)), ((MEM - 0x1000) as u32, (MEM - 0x1000 + 10) as u32));
    let mut env = [0u8; 10];
    mem.read_slice(&mut env, GuestAddress(start)).unwrap();
    assert_eq!(&env, b"NR_CPUS=1\n");
    // mem_lower/mem_upper: 639 KiB below the EBDA, RAM from 1 MiB to the end.
    assert_eq!((le32(&mem, info + 4), le32(&mem, info + 8)), (639, ((MEM - 0x10_0000) / 1024) as u32));
    let mut cmdline = [0u8; 13];
    mem.read_slice(&mut cmdline, GuestAddress(u64::from(le32(&mem, info + 16)))).unwrap();
    assert_eq!(&cmdline, b"x86/tsc.flat\0");
    // The memory map says the same as the e820 map Linux gets.
    assert_eq!(le32(&mem, info + 44) as usize, b.e820.len() * info::MMAP_ENTRY_SIZE);
    // The 32-bit GDT, and the ACPI tables the suite finds by scanning for the RSDP.
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x508)).unwrap(), 0x00cf_9b00_0000_ffff);
    assert_eq!(b.rsdp, 0xe_0000);
    assert_eq!(mem.read_obj::<u64>(GuestAddress(b.rsdp)).unwrap(), u64::from_le_bytes(*b"RSD PTR "));
}

#[test]
fn without_a_module_there_is_no_module_list() {
    let img = image(&[(0x8000, 0x200, 0x3000)], 0x8018);
    let (mem, res) = boot(&img, None, "x86/realmode.flat");
    let b = res.unwrap();
    assert_eq!(b.module, None);
    assert_eq!((le32(&mem, b.info + 20), le32(&mem, b.info + 24)), (0, 0));
    assert_eq!(b.entry.rip, 0x8018);
}

#[test]
fn segments_over_hvrun_structures_or_outside_ram_are_refused() {
    let cases: [(u32, &str); 4] = [
        (0x1000, "multiboot image segment 0x1000..0x1200 overlaps the multiboot information area at 0x1000..0x8000"),
        (0x7f00, "multiboot image segment 0x7f00..0x8100 overlaps the multiboot information area at 0x1000..0x8000"),
        (0x400, "multiboot image segment 0x400..0x600 overlaps the boot GDT at 0x500..0x518"),
        (0xe_0000, "multiboot image segment 0xe0000..0xe0200 is not in guest RAM (0..0x9fc00, and from 0x100000 to the end of low memory)"),
    ];
    for (paddr, message) in cases {
        let img = image(&[(paddr, 0x200, 0x200)], paddr);
        let (mem, res) = boot(&img, None, "");
        assert_eq!(res.unwrap_err().to_string(), message);
        // Nothing was written: the information area is still zero.
        assert_eq!(le32(&mem, MULTIBOOT_INFO_START), 0);
    }
    // Beyond the end of RAM: the ELF reader's limit.
    let img = image(&[(0x40_0000, 0x200, 0x200), (0xff0_0000, 0, 0x20_0000)], 0x40_0000);
    assert_eq!(boot(&img, None, "").1.unwrap_err().to_string(), "multiboot image: bad ELF program header 1: does not fit in guest RAM below the MMIO hole");
}

#[test]
fn a_module_that_does_not_fit_and_a_command_line_that_is_too_long() {
    let img = image(&[(0x40_0000, 0x200, 0x200)], 0x40_0000);
    let huge = vec![0u8; MEM as usize];
    assert!(matches!(boot(&img, Some(&huge), "").1, Err(BootError::Initrd(initrd::InitrdError::DoesNotFit { .. }))));
    let long = "x".repeat(0x8000);
    assert!(matches!(boot(&img, None, &long).1, Err(BootError::Multiboot(MultibootError::Info(InfoError::TooBig { .. })))));
}

#[test]
fn mem_lower_and_upper_from_the_map() {
    let map = build_e820(MEM).unwrap();
    assert_eq!(mem_lower_upper(&map), (639, 0x3_fc00));
    let big = build_e820(8 << 30).unwrap();
    assert_eq!(mem_lower_upper(&big), (639, ((0xc000_0000u64 - 0x10_0000) / 1024) as u32));
}
