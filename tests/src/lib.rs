//! Shared helpers of the end-to-end tests: a [`TestMachine`] (one hvrun `Vm` with RAM,
//! a test exit port, recording port and MMIO devices, descriptor tables and page tables
//! for the guest's mode), a [`Guest`] builder (iced's assembler plus the device accesses
//! the guest is expected to make), and a run with a watchdog.
//!
//! The devices are scaffolding: what is under test is hvrun's run loop and exit handlers
//! and, on Linux, the hv_* layer over a real KVM. Tests assert on what the guest
//! computed (values it reports through [`REPORT_PORT`]), on the exact sequence of device
//! accesses, and on the [`StopReason`].
//!
//! Only one VM may exist per process (Hypervisor.framework's rule, enforced by the Linux
//! layer): a `TestMachine` holds [`vm_lock`] for the whole life of its `Vm` and drops
//! the `Vm` before the lock.

pub mod disk;
pub mod hvrun;
use devices::bus::BusDevice;
use devices::power::{PowerControl, PowerEvent};
use iced_x86::code_asm::*;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm::cpuid::CpuidPolicy;
use vmm::entry::EntryState;
use vmm::irq::VectorLatch;
use vmm::kick::Waker;
use vmm::machine::{StopReason, Stopper};
use vmm::irqchip::VcpuInterrupts;
use vmm::vcpu::{Start, VcpuConfig};
use vmm::vm::Vm;

pub use iced_x86;
pub use vmm;

// --- the one-VM-per-process lock ------------------------------------------------------

static VM_LOCK: Mutex<()> = Mutex::new(());

/// Serialises VMs in this process. Poison-tolerant: a test that panicked with the lock
/// held has already dropped its VM (see [`TestMachine`]'s field order).
pub fn vm_lock() -> MutexGuard<'static, ()> {
    VM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// --- logging ------------------------------------------------------------------------

/// Prints the log records of hvrun and the Linux layer to stderr: warnings and errors
/// by default, more with RUST_LOG=info|debug|trace (passed through by the sandbox).
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }
    fn flush(&self) {}
}

/// Installs [`StderrLogger`] once per process.
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let level = match std::env::var("RUST_LOG").unwrap_or_default().to_ascii_lowercase().as_str() {
            "off" => log::LevelFilter::Off,
            "error" => log::LevelFilter::Error,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            _ => log::LevelFilter::Warn,
        };
        if log::set_logger(&StderrLogger).is_ok() {
            log::set_max_level(level);
        }
    });
}

// --- guest memory layout (the same in every mode) -----------------------------------

/// 512 KiB of RAM: everything from 0x80000 up is unbacked, so MMIO.
pub const RAM_SIZE: u64 = 0x8_0000;
/// Real-mode interrupt vector table.
pub const IVT: u64 = 0;
/// GDT: null, code 0x08, data 0x10.
pub const GDT: u64 = 0x500;
pub const GDT_LIMIT: u32 = 3 * 8 - 1;
/// IDT of 256 gates (16 bytes each in 64-bit mode, 8 in protected mode).
pub const IDT: u64 = 0x1000;
/// 4-level identity map of the low 4 GiB with 2 MiB pages: PML4, PDPT, 4 page directories.
pub const PML4: u64 = 0x2000;
/// Where guest code is loaded (CS=0 in real mode, so IP = CODE).
pub const CODE: u64 = 0x8000;
/// Scratch RAM for guests (reachable with DS=0 in real mode).
pub const DATA: u64 = 0xe000;
pub const STACK_TOP: u64 = 0xfff0;

/// An MMIO window reachable from real mode (segment 0xd000) and, identity-mapped, from
/// every other mode.
pub const MMIO_LOW: u64 = 0xd_0000;
/// An MMIO window in the PCI hole, above 3 GiB.
pub const MMIO_HIGH: u64 = 0xd000_0000;
pub const MMIO_LEN: u64 = 0x1000;

/// A `out` of a value here stops the machine with `PowerEvent::Exit(value)`.
pub const EXIT_PORT: u16 = 0xf4;
/// Guests report values here (dword writes); recorded like every other access.
pub const REPORT_PORT: u16 = 0xe0;

/// What the tests consider a guest that hangs: the sandbox runs guests at TCG speed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// OF SF ZF AF PF CF.
pub const ARITH_FLAGS: u32 = 0x8d5;

/// The guest's exit code of "all checks passed".
pub const GOOD: u32 = 0x600d;

// --- modes ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Real mode, CS=DS=ES=SS=0.
    Real,
    /// 32-bit protected mode, flat segments, paging off.
    Protected,
    /// 64-bit mode, identity-mapped low 4 GiB.
    Long,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Real, Mode::Protected, Mode::Long];

    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real => 16,
            Mode::Protected => 32,
            Mode::Long => 64,
        }
    }

    /// Bytes per IDT gate (IVT entry in real mode).
    pub fn gate_size(self) -> u64 {
        match self {
            Mode::Real => 4,
            Mode::Protected => 8,
            Mode::Long => 16,
        }
    }

    /// The IDTR of a 256-entry table at [`IDT`] (the IVT in real mode).
    pub fn idtr(self) -> (u64, u32) {
        match self {
            Mode::Real => (IVT, 0x3ff),
            _ => (IDT, (256 * self.gate_size() - 1) as u32),
        }
    }

    /// The entry state of a guest at [`CODE`] with its stack at [`STACK_TOP`]; the IDTR
    /// points at the (initially empty) table of [`Mode::idtr`].
    pub fn entry(self) -> EntryState {
        let mut e = match self {
            Mode::Real => EntryState::real_mode(0, CODE as u16, STACK_TOP as u16),
            Mode::Protected => EntryState::protected_flat((GDT, GDT_LIMIT), CODE, STACK_TOP),
            Mode::Long => EntryState::long_mode((GDT, GDT_LIMIT), PML4, CODE, STACK_TOP),
        };
        e.idt = self.idtr();
        e
    }
}

/// The GDT of `mode`: null, flat code at 0x08 (L=1 in 64-bit mode, else D=1), flat data
/// at 0x10; accessed bits set, as the entry state's segment registers have them.
pub fn gdt(mode: Mode) -> [u64; 3] {
    let code = if mode == Mode::Long { 0x00af_9b00_0000_ffff } else { 0x00cf_9b00_0000_ffff };
    [0, code, 0x00cf_9300_0000_ffff]
}

/// Page tables identity-mapping the low 4 GiB with 2 MiB pages, to be placed at `base`
/// (PML4 at `base`, PDPT at +0x1000, page directories at +0x2000..+0x6000). Returns
/// (guest address, bytes) pairs.
pub fn identity_page_tables(base: u64) -> Vec<(u64, Vec<u8>)> {
    const P_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    let pdpt = base + 0x1000;
    let pml4: Vec<u8> = (pdpt | P_RW).to_le_bytes().to_vec();
    let pdpt_entries: Vec<u8> =
        (0..4u64).flat_map(|i| ((base + 0x2000 + i * 0x1000) | P_RW).to_le_bytes()).collect();
    let pds: Vec<u8> = (0..4 * 512u64).flat_map(|i| ((i << 21) | P_RW | PS).to_le_bytes()).collect();
    vec![(base, pml4), (pdpt, pdpt_entries), (base + 0x2000, pds)]
}

/// The bytes of one interrupt gate (IVT entry in real mode) for a handler at `handler`
/// (a linear address; in real mode segment 0, offset `handler`).
pub fn gate(mode: Mode, handler: u64) -> Vec<u8> {
    match mode {
        Mode::Real => ((handler as u16 as u32).to_le_bytes()).to_vec(),
        Mode::Protected => {
            let g = (handler & 0xffff) | (0x8 << 16) | (0x8e00u64 << 32) | ((handler >> 16) & 0xffff) << 48;
            g.to_le_bytes().to_vec()
        }
        Mode::Long => {
            let lo = (handler & 0xffff) | (0x8 << 16) | (0x8e00u64 << 32) | ((handler >> 16) & 0xffff) << 48;
            let hi = handler >> 32;
            [lo.to_le_bytes(), hi.to_le_bytes()].concat()
        }
    }
}

// --- recorded device accesses -----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Pio,
    Mmio,
}

/// One device access as a device saw it: absolute port or guest-physical address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub space: Space,
    pub write: bool,
    pub addr: u64,
    pub size: u8,
    pub value: u64,
}

impl Access {
    /// `out` of `size` bytes.
    pub fn out(port: u16, size: u8, value: u64) -> Self {
        Access { space: Space::Pio, write: true, addr: port as u64, size, value }
    }
    /// `in` of `size` bytes that returned `value`.
    pub fn inp(port: u16, size: u8, value: u64) -> Self {
        Access { space: Space::Pio, write: false, addr: port as u64, size, value }
    }
    pub fn mw(addr: u64, size: u8, value: u64) -> Self {
        Access { space: Space::Mmio, write: true, addr, size, value }
    }
    pub fn mr(addr: u64, size: u8, value: u64) -> Self {
        Access { space: Space::Mmio, write: false, addr, size, value }
    }
    /// A report of `value` by the guest.
    pub fn report(value: u32) -> Self {
        Self::out(REPORT_PORT, 4, value as u64)
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.space, self.write) {
            (Space::Pio, true) => "out",
            (Space::Pio, false) => "in ",
            (Space::Mmio, true) => "mw ",
            (Space::Mmio, false) => "mr ",
        };
        write!(f, "{what} {:#x}/{} {:#x}", self.addr, self.size, self.value)
    }
}

/// Every access of every recording device of one machine, in order.
#[derive(Default)]
pub struct AccessLog(Mutex<Vec<Access>>);

impl AccessLog {
    pub fn push(&self, a: Access) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(a);
    }

    pub fn all(&self) -> Vec<Access> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The values the guest reported.
    pub fn reports(&self) -> Vec<u32> {
        self.all().iter().filter(|a| a.space == Space::Pio && a.write && a.addr == REPORT_PORT as u64).map(|a| a.value as u32).collect()
    }

    /// Polls until `pred` holds for the log (or `limit` passes: returns false).
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&[Access]) -> bool) -> bool {
        let end = Instant::now() + limit;
        loop {
            if pred(&self.0.lock().unwrap_or_else(|e| e.into_inner())) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls until the guest has reported `value`.
    pub fn wait_for_report(&self, value: u32, limit: Duration) -> bool {
        self.wait_for(limit, |log| log.contains(&Access::report(value)))
    }
}

/// A device that records every access into an [`AccessLog`]. Reads are answered from a
/// queue of programmed values first, then from its register file (little-endian, zero
/// beyond it); writes go into the register file.
pub struct Recorder {
    space: Space,
    base: u64,
    log: Arc<AccessLog>,
    regs: Mutex<Vec<u8>>,
    reads: Mutex<VecDeque<u64>>,
}

impl Recorder {
    pub fn new(space: Space, base: u64, len: u64, log: Arc<AccessLog>) -> Arc<Self> {
        Arc::new(Recorder { space, base, log, regs: Mutex::new(vec![0; len as usize]), reads: Mutex::default() })
    }

    /// Sets register-file bytes at `offset`.
    pub fn set(&self, offset: u64, bytes: &[u8]) {
        let mut regs = self.regs.lock().unwrap();
        regs[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    }

    /// Register-file bytes at `offset`.
    pub fn get(&self, offset: u64, len: usize) -> Vec<u8> {
        self.regs.lock().unwrap()[offset as usize..offset as usize + len].to_vec()
    }

    pub fn get_u64(&self, offset: u64) -> u64 {
        u64::from_le_bytes(self.get(offset, 8).try_into().unwrap())
    }

    /// The next reads (of any size) return these values, in order.
    pub fn queue_reads(&self, values: &[u64]) {
        self.reads.lock().unwrap().extend(values);
    }
}

impl BusDevice for Recorder {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match self.reads.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
            Some(v) => v,
            None => {
                let regs = self.regs.lock().unwrap_or_else(|e| e.into_inner());
                let mut bytes = [0u8; 8];
                for (i, b) in bytes.iter_mut().enumerate().take(data.len()) {
                    *b = regs.get(offset as usize + i).copied().unwrap_or(0);
                }
                u64::from_le_bytes(bytes)
            }
        };
        let n = data.len().min(8);
        data[..n].copy_from_slice(&value.to_le_bytes()[..n]);
        let mask = if n == 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 };
        self.log.push(Access { space: self.space, write: false, addr: self.base + offset, size: data.len() as u8, value: value & mask });
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        {
            let mut regs = self.regs.lock().unwrap_or_else(|e| e.into_inner());
            for (i, b) in data.iter().enumerate() {
                if let Some(r) = regs.get_mut(offset as usize + i) {
                    *r = *b;
                }
            }
        }
        self.log.push(Access { space: self.space, write: true, addr: self.base + offset, size: data.len() as u8, value: u64::from_le_bytes(bytes) });
    }
}

/// The test exit port: an `out` of a value stops the machine with `Exit(value)`.
pub struct ExitPort(pub Arc<Stopper>);

impl BusDevice for ExitPort {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        self.0.power_event(PowerEvent::Exit(devices::bus::le_value(data) as u32));
    }
}

/// A device that does nothing: reads return zero.
pub struct NullDevice;

impl BusDevice for NullDevice {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

// --- guests -----------------------------------------------------------------------------

/// A test guest being written: the assembler for its mode and the device accesses it is
/// expected to make, written down next to the instructions that make them.
pub struct Guest {
    pub mode: Mode,
    pub a: CodeAssembler,
    pub expected: Vec<Access>,
}

pub type AsmResult<T = ()> = Result<T, IcedError>;

impl Guest {
    pub fn new(mode: Mode) -> Self {
        Guest { mode, a: CodeAssembler::new(mode.bitness()).unwrap(), expected: Vec::new() }
    }

    pub fn expect(&mut self, access: Access) {
        self.expected.push(access);
    }

    /// `out REPORT_PORT, eax`, expected to report `value`.
    pub fn report_eax(&mut self, value: u32) -> AsmResult {
        self.a.out(REPORT_PORT as u32, eax)?;
        self.expect(Access::report(value));
        Ok(())
    }

    /// `mov eax, reg; out REPORT_PORT, eax`.
    pub fn report(&mut self, reg: AsmRegister32, value: u32) -> AsmResult {
        if reg != eax {
            self.a.mov(eax, reg)?;
        }
        self.report_eax(value)
    }

    /// Reports a constant: a marker in the access sequence. Clobbers EAX.
    pub fn mark(&mut self, value: u32) -> AsmResult {
        self.a.mov(eax, value)?;
        self.report_eax(value)
    }

    /// Reports RFLAGS & `mask` (the arithmetic flags: OF 0x800, SF 0x80, ZF 0x40,
    /// AF 0x10, PF 0x4, CF 0x1; all six are [`ARITH_FLAGS`]). Clobbers EAX.
    pub fn report_flags(&mut self, mask: u32, value: u32) -> AsmResult {
        if self.mode == Mode::Long {
            self.a.pushfq()?;
            self.a.pop(rax)?;
        } else {
            self.a.pushfd()?;
            self.a.pop(eax)?;
        }
        self.a.and(eax, mask as i32)?;
        self.report_eax(value & mask)
    }

    /// Reports `good` if `jcc` (a conditional jump to the label it is given) is taken;
    /// otherwise reports `good ^ 0xbad0_0000`, which no expected list contains.
    pub fn report_if(&mut self, jcc: impl FnOnce(&mut CodeAssembler, CodeLabel) -> AsmResult, good: u32) -> AsmResult {
        let mut taken = self.a.create_label();
        let mut done = self.a.create_label();
        jcc(&mut self.a, taken)?;
        self.a.mov(eax, good ^ 0xbad0_0000)?;
        self.a.out(REPORT_PORT as u32, eax)?;
        self.a.jmp(done)?;
        self.a.set_label(&mut taken)?;
        self.mark(good)?;
        self.a.set_label(&mut done)?;
        self.a.nop()
    }

    /// An interrupt handler: reports `tag | ECX` (so the main program can show, through
    /// ECX, exactly where it was interrupted) and returns, preserving every register.
    pub fn reporting_handler(mode: Mode, tag: u32) -> AsmResult<Guest> {
        let mut g = Guest::new(mode);
        let a = &mut g.a;
        match mode {
            Mode::Long => a.push(rax)?,
            _ => a.push(eax)?,
        }
        a.mov(eax, ecx)?;
        a.or(eax, tag as i32)?;
        a.out(REPORT_PORT as u32, eax)?;
        match mode {
            Mode::Long => {
                a.pop(rax)?;
                a.iretq()?;
            }
            Mode::Protected => {
                a.pop(eax)?;
                a.iretd()?;
            }
            Mode::Real => {
                a.pop(eax)?;
                a.iret()?;
            }
        }
        Ok(g)
    }

    /// `mov eax, code; out EXIT_PORT, eax`, then spins (the machine has stopped).
    pub fn exit(&mut self, code: u32) -> AsmResult {
        self.a.mov(eax, code)?;
        self.a.out(EXIT_PORT as u32, eax)?;
        let mut spin = self.a.create_label();
        self.a.set_label(&mut spin)?;
        self.a.jmp(spin)?;
        Ok(())
    }

    /// The machine code, for loading at `ip`.
    pub fn assemble(&mut self, ip: u64) -> AsmResult<Vec<u8>> {
        self.a.assemble(ip)
    }
}

/// The disassembly of `code` loaded at `ip`, for failure messages.
pub fn disassemble(code: &[u8], ip: u64, bitness: u32) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut out = String::new();
    let mut decoder = Decoder::with_ip(bitness, code, ip, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    for instr in &mut decoder {
        let mut text = String::new();
        f.format(&instr, &mut text);
        out.push_str(&format!("  {:#07x}  {text}\n", instr.ip()));
    }
    out
}

// --- the machine ------------------------------------------------------------------------

/// One hvrun VM for a test: RAM with the mode's GDT and page tables, the exit port, a
/// recording report port, and whatever devices the test adds; one vCPU.
///
/// Field order matters: the `Vm` drops (stopping its vCPU and destroying the VM) before
/// the lock is released.
pub struct TestMachine {
    pub vm: Vm,
    pub mode: Mode,
    pub stopper: Arc<Stopper>,
    pub waker: Arc<Waker>,
    pub irq: Arc<VectorLatch>,
    pub log: Arc<AccessLog>,
    /// The entry state `start` uses; tests may change it before.
    pub entry: EntryState,
    /// The code loaded at [`CODE`] (for failure messages).
    code: Vec<u8>,
    started: bool,
    _lock: MutexGuard<'static, ()>,
}

impl TestMachine {
    pub fn new(mode: Mode) -> Self {
        Self::with_ram(mode, RAM_SIZE)
    }

    pub fn with_ram(mode: Mode, ram: u64) -> Self {
        init_logging();
        let lock = vm_lock();
        let stopper = Stopper::new();
        let mut vm = Vm::new(ram, CpuidPolicy::new(1, false), stopper.clone()).unwrap_or_else(|e| panic!("Vm::new: {e}"));
        let log = Arc::new(AccessLog::default());
        {
            let m = vm.machine_mut().unwrap();
            m.pio.insert(EXIT_PORT as u64, 4, Arc::new(ExitPort(stopper.clone()))).unwrap();
            m.pio.insert(REPORT_PORT as u64, 4, Recorder::new(Space::Pio, REPORT_PORT as u64, 4, log.clone())).unwrap();
        }
        let waker = Arc::new(Waker::new());
        let irq = Arc::new(VectorLatch::new(waker.clone()));
        let t = TestMachine { vm, mode, stopper, waker, irq, log, entry: mode.entry(), code: Vec::new(), started: false, _lock: lock };
        if mode != Mode::Real {
            t.write_u64s(GDT, &gdt(mode));
        }
        if mode == Mode::Long {
            for (addr, bytes) in identity_page_tables(PML4) {
                t.load(addr, &bytes);
            }
        }
        t
    }

    /// Copies `bytes` into guest RAM at `addr`.
    pub fn load(&self, addr: u64, bytes: &[u8]) {
        self.vm.machine().ram.memory().write_slice(bytes, GuestAddress(addr)).unwrap_or_else(|e| panic!("load at {addr:#x}: {e}"));
    }

    pub fn write_u64s(&self, addr: u64, values: &[u64]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.load(addr, &bytes);
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.vm.machine().ram.memory().read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Assembles `guest` at [`CODE`] and loads it; returns the machine code.
    pub fn load_guest(&mut self, guest: &mut Guest) -> Vec<u8> {
        assert_eq!(guest.mode, self.mode, "guest assembled for another mode");
        let code = guest.assemble(CODE).unwrap_or_else(|e| panic!("assembling the guest: {e}"));
        self.load(CODE, &code);
        self.code = code.clone();
        code
    }

    /// The loaded guest's disassembly.
    pub fn listing(&self) -> String {
        disassemble(&self.code, CODE, self.mode.bitness())
    }

    /// Points interrupt `vector` at `handler` (IVT entry or IDT gate).
    pub fn set_handler(&self, vector: u8, handler: u64) {
        let table = if self.mode == Mode::Real { IVT } else { IDT };
        self.load(table + vector as u64 * self.mode.gate_size(), &gate(self.mode, handler));
    }

    pub fn add_pio(&mut self, port: u16, len: u64, dev: Arc<dyn BusDevice>) {
        self.vm.machine_mut().expect("devices are added before start").pio.insert(port as u64, len, dev).unwrap();
    }

    pub fn add_mmio(&mut self, addr: u64, len: u64, dev: Arc<dyn BusDevice>) {
        self.vm.machine_mut().expect("devices are added before start").mmio.insert(addr, len, dev).unwrap();
    }

    /// A recording port device at `port..port+len`, logging into this machine's log.
    pub fn recorder_pio(&mut self, port: u16, len: u64) -> Arc<Recorder> {
        let r = Recorder::new(Space::Pio, port as u64, len, self.log.clone());
        self.add_pio(port, len, r.clone());
        r
    }

    /// A recording MMIO device at `addr..addr+len`, logging into this machine's log.
    pub fn recorder_mmio(&mut self, addr: u64, len: u64) -> Arc<Recorder> {
        let r = Recorder::new(Space::Mmio, addr, len, self.log.clone());
        self.add_mmio(addr, len, r.clone());
        r
    }

    /// Starts vCPU 0 at `self.entry`.
    pub fn start(&mut self) {
        assert!(!self.started, "started twice");
        self.started = true;
        let config = VcpuConfig {
            index: 0,
            start: Start::At(Box::new(self.entry.clone())),
            interrupts: VcpuInterrupts::Other(self.irq.clone()),
            waker: self.waker.clone(),
        };
        self.vm.start_vcpu(config).unwrap_or_else(|e| panic!("start_vcpu: {e}"));
    }

    /// Waits for the machine to stop. A watchdog prints the state dump and stops it
    /// (StopReason::Host) after `limit`, and the test then fails with the accesses
    /// recorded so far.
    pub fn wait_with_timeout(&mut self, limit: Duration) -> StopReason {
        let (done, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let stopper = self.stopper.clone();
            let fired = fired.clone();
            let waker = self.waker.clone();
            std::thread::spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    fired.store(true, Ordering::SeqCst);
                    // The hang handler: the vCPU's state first, then the stop.
                    let dump = vmm::dump::StateDump::new();
                    dump.add_vcpu(0, waker, None);
                    eprintln!("{}", dump.collect());
                    stopper.stop(StopReason::Host);
                }
            })
        };
        let reason = self.vm.wait();
        drop(done);
        let _ = watchdog.join();
        if fired.load(Ordering::SeqCst) {
            let log = self.log.all();
            let tail = &log[log.len().saturating_sub(40)..];
            panic!(
                "the guest did not stop within {limit:?} (then: {reason}); {} accesses recorded, the last ones: {tail:#?}\nguest:\n{}",
                log.len(),
                self.listing()
            );
        }
        reason
    }

    /// Starts the vCPU and waits with the default deadline.
    pub fn run(&mut self) -> StopReason {
        self.start();
        self.wait_with_timeout(DEFAULT_TIMEOUT)
    }

    /// Asserts that the machine stopped with exit code `code` and that the recorded
    /// accesses are exactly `expected`.
    pub fn check(&self, reason: &StopReason, code: u32, expected: &[Access]) {
        let log = self.log.all();
        let context = || format!("stop: {reason}\nguest:\n{}", self.listing());
        if log != expected {
            let first = log.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(log.len().min(expected.len()));
            panic!(
                "device accesses differ from access #{first} on\n  got:      {:?}\n  expected: {:?}\nfull log: {log:#?}\nexpected: {expected:#?}\n{}",
                log.get(first),
                expected.get(first),
                context()
            );
        }
        assert_eq!(*reason, StopReason::Power(PowerEvent::Exit(code)), "{}", context());
    }
}

/// CPU time (user + system) of the whole process so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
