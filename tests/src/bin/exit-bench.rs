//! exit-bench: what one VM exit costs through hvrun's run loop (exit handler + the hv_*
//! layer over KVM) next to the same guest work in a raw KVM loop (kvm-ioctls, handling
//! KVM_EXIT_IO / KVM_EXIT_MMIO itself, nothing on top). Prints a table; not a test.
//!
//!     exit-bench [N]        N exits per measured run (default 50000: about 30 s in the sandbox)
//!
//! Run it where KVM is real: `scripts/sandbox.sh -- target/release/exit-bench` on the
//! development machines (their own /dev/kvm is a software emulator).
//!
//! Method: three 64-bit guests, each a loop of N exits of one kind (`out 0x80, al` to a
//! do-nothing port device; `in al, 0x80`; `mov [0xd0000], eax` to a do-nothing MMIO
//! device at an address without RAM), then an `out` to the exit port. Every guest runs
//! with N/10 and with N iterations; the cost per exit is the difference of the wall
//! times over the difference of the counts, so VM/vCPU creation and the first entry
//! cancel out. hvrun's own exit histogram (`--exit-stats`) is on during its runs and
//! gives the part of each exit spent in hvrun's handler (after `hv_vcpu_run` returned),
//! the rest being the layer and KVM. The raw KVM VM is created only after hvrun's VM
//! is destroyed (the layer allows one hv VM per process; raw KVM is independent of it).
use hvrun_tests::*;
use iced_x86::code_asm::*;
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::machine::StopReason;

const SINK_PORT: u16 = 0x80;
const SINK_MMIO: u64 = MMIO_LOW;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Out,
    In,
    MmioWrite,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Out, Kind::In, Kind::MmioWrite];

    fn name(self) -> &'static str {
        match self {
            Kind::Out => "port out (IO)",
            Kind::In => "port in (IO)",
            Kind::MmioWrite => "MMIO write (EPT)",
        }
    }

    /// The VT-x exit reason hvrun sees for it.
    fn reason(self) -> u32 {
        match self {
            Kind::Out | Kind::In => hvf_sys::vmx::VMX_REASON_IO,
            Kind::MmioWrite => hvf_sys::vmx::VMX_REASON_EPT_VIOLATION,
        }
    }
}

/// The guest (64-bit, at CODE): `n` exits of `kind` in a `dec ecx; jnz` loop, then
/// `out EXIT_PORT, eax`.
fn guest(kind: Kind, n: u32) -> Vec<u8> {
    let build = || -> AsmResult<Vec<u8>> {
        let mut g = Guest::new(Mode::Long);
        g.a.mov(ebx, SINK_MMIO as u32)?;
        g.a.mov(ecx, n)?;
        let mut again = g.a.create_label();
        g.a.set_label(&mut again)?;
        match kind {
            Kind::Out => g.a.out(SINK_PORT as u32, al)?,
            Kind::In => g.a.in_(al, SINK_PORT as u32)?,
            Kind::MmioWrite => g.a.mov(dword_ptr(rbx), eax)?,
        }
        g.a.dec(ecx)?;
        g.a.jnz(again)?;
        g.exit(GOOD)?;
        g.assemble(CODE)
    };
    build().expect("assembling the benchmark guest")
}

/// One run through hvrun: wall time from starting the vCPU to the machine's stop, and
/// the exits of `kind`'s reason with hvrun's handler time for them.
fn run_hvrun(kind: Kind, n: u32) -> (Duration, u64, Duration) {
    let mut t = TestMachine::new(Mode::Long);
    t.add_pio(SINK_PORT, 1, Arc::new(NullDevice));
    t.add_mmio(SINK_MMIO, 0x1000, Arc::new(NullDevice));
    t.load(CODE, &guest(kind, n));
    let started = Instant::now();
    t.start();
    let reason = t.wait_with_timeout(Duration::from_secs(1800));
    let wall = started.elapsed();
    assert_eq!(reason, StopReason::Power(devices::power::PowerEvent::Exit(GOOD)), "{}", t.listing());
    let stats = t.vm.machine().stats.lock().unwrap().clone();
    let r = kind.reason() as usize;
    (wall, stats.count[r], stats.time[r])
}

/// One run in a raw KVM VM: wall time of the KVM_RUN loop, and the exits it handled.
fn run_raw(kind: Kind, n: u32) -> (Duration, u64) {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let size = RAM_SIZE as usize;
    // SAFETY: a fresh anonymous mapping, unmapped at the end of this function after the
    // VM (the fds) is gone.
    let host = unsafe {
        libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    assert_ne!(host, libc::MAP_FAILED);
    let ram = host as *mut u8;
    let load = |addr: u64, bytes: &[u8]| {
        assert!(addr as usize + bytes.len() <= size);
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ram.add(addr as usize), bytes.len()) };
    };
    let gdt_bytes: Vec<u8> = gdt(Mode::Long).iter().flat_map(|d| d.to_le_bytes()).collect();
    load(GDT, &gdt_bytes);
    for (addr, bytes) in identity_page_tables(PML4) {
        load(addr, &bytes);
    }
    load(CODE, &guest(kind, n));
    let region = kvm_userspace_memory_region { slot: 0, flags: 0, guest_phys_addr: 0, memory_size: size as u64, userspace_addr: host as u64 };
    // SAFETY: the region is valid memory of this process for the VM's lifetime.
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).expect("KVM_GET_SUPPORTED_CPUID");
    vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");

    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    let code = kvm_segment { base: 0, limit: 0xffff_ffff, selector: 0x8, type_: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0, padding: 0 };
    let data = kvm_segment { selector: 0x10, type_: 0x3, db: 1, l: 0, ..code };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = GDT_LIMIT as u16;
    sregs.cr0 = 0x8000_0031; // PG NE ET PE
    sregs.cr3 = PML4;
    sregs.cr4 = 0x20; // PAE
    sregs.efer = 0x500; // LME LMA
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = CODE;
    regs.rsp = STACK_TOP;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");

    let mut exits = 0u64;
    let started = Instant::now();
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, _) if port == EXIT_PORT => break,
            VcpuExit::IoOut(..) => exits += (kind == Kind::Out) as u64,
            VcpuExit::IoIn(_, data) => {
                data.fill(0);
                exits += (kind == Kind::In) as u64;
            }
            VcpuExit::MmioWrite(..) => exits += (kind == Kind::MmioWrite) as u64,
            VcpuExit::MmioRead(_, data) => data.fill(0),
            other => panic!("raw KVM loop: unexpected exit {other:?}"),
        }
    }
    let wall = started.elapsed();
    drop(vcpu);
    drop(vm);
    // SAFETY: the VM that used the mapping is gone.
    unsafe { libc::munmap(host, size) };
    (wall, exits)
}

fn per_exit(short: Duration, long: Duration, n_short: u32, n_long: u32) -> f64 {
    (long.as_secs_f64() - short.as_secs_f64()) * 1e9 / (n_long - n_short) as f64
}

fn main() {
    init_logging();
    let n: u32 = std::env::args().nth(1).map(|a| a.parse().expect("N: a number of exits")).unwrap_or(50_000);
    let n_short = (n / 10).max(1);
    eprintln!("exit-bench: {n} exits per run (baseline {n_short}); KVM: {}", std::env::var("HVRUN_KVM").unwrap_or_else(|_| "?".into()));
    let total = Instant::now();

    vmm::trace::set_stats(true);
    let mut hv = Vec::new();
    for kind in Kind::ALL {
        let (short, ..) = run_hvrun(kind, n_short);
        let (long, count, handler) = run_hvrun(kind, n);
        assert!(count >= n as u64, "{}: hvrun counted {count} exits for {n}", kind.name());
        hv.push((per_exit(short, long, n_short, n), handler.as_secs_f64() * 1e9 / count as f64));
        eprintln!("  hvrun   {:<17} {:>9.0} ns/exit", kind.name(), hv.last().unwrap().0);
    }
    vmm::trace::set_stats(false);

    let mut raw = Vec::new();
    for kind in Kind::ALL {
        let (short, _) = run_raw(kind, n_short);
        let (long, exits) = run_raw(kind, n);
        assert_eq!(exits, n as u64, "{}: the raw loop saw {exits} exits for {n}", kind.name());
        raw.push(per_exit(short, long, n_short, n));
        eprintln!("  raw KVM {:<17} {:>9.0} ns/exit", kind.name(), raw.last().unwrap());
    }

    println!();
    println!("{:<17} {:>15} {:>17} {:>7} {:>22}", "exit kind", "hvrun ns/exit", "raw KVM ns/exit", "ratio", "of which hvrun handler");
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let (h, handler) = hv[i];
        println!("{:<17} {:>15.0} {:>17.0} {:>6.2}x {:>19.0} ns", kind.name(), h, raw[i], h / raw[i], handler);
    }
    println!("({n} exits per run, difference to a {n_short}-exit run; whole benchmark {:.1} s)", total.elapsed().as_secs_f64());
}
