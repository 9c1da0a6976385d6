//! `hvrun [OPTIONS] <KERNEL> [INITRD]`: boots a Linux kernel (or a multiboot image) to
//! its serial console.
mod cmdline;
mod console;
mod disk_arg;
mod mem_arg;
mod platform;
mod size;
mod terminal;

use clap::Parser;
use devices::power::PowerEvent;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use vmm::dump::StateDump;
use vmm::machine::{StopReason, Stopper};

/// Exit statuses (also in README.md).
mod status {
    /// The guest powered off.
    pub const POWER_OFF: u8 = 0;
    /// hvrun could not start the guest: bad arguments, files, sizes, or no hypervisor.
    pub const ERROR: u8 = 1;
    /// The guest rebooted (reset register, i8042 reset, or a panic with panic=-1).
    pub const REBOOT: u8 = 3;
    /// The guest crashed the virtual CPU: triple fault, invalid state, or an instruction
    /// hvrun cannot emulate. The dump is printed.
    pub const CRASH: u8 = 4;
    /// Stopped from the host: Ctrl-A x, SIGINT or SIGTERM.
    pub const HOST: u8 = 130;
}

#[derive(Parser)]
#[command(
    version,
    about = "Boot a Linux kernel on Hypervisor.framework's raw VT-x API (on Linux: over KVM).",
    after_help = "Examples:\n  hvrun bzImage initrd.cpio.gz\n  hvrun --mem 2G --append 'quiet' bzImage initrd.cpio.gz\n  hvrun --disk root.img --root --disk data.img,ro,serial=DATA bzImage\n  hvrun --exit-stats --cmdline 'console=ttyS0 acpi=off' vmlinux\n\nThe console is COM1 on your terminal: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A.\nExit status: 0 guest powered off, 1 error, 2 bad usage, 3 guest rebooted (or panicked with panic=-1), 4 guest crashed, 130 stopped from the host.\nWith --testdev (kvm-unit-tests: hvrun --testdev --append 'ARGS' x86/apic.flat) a guest write of V to port 0xf4 exits with status (V << 1) | 1."
)]
struct Args {
    /// The kernel: a bzImage, an uncompressed ELF vmlinux, or a multiboot image.
    kernel: PathBuf,
    /// An initramfs for the kernel (for a multiboot image: its module).
    initrd: Option<PathBuf>,
    /// Guest memory, e.g. 512M or 2G (128M to 256G).
    // Checked in main, not by clap: a bad size is status 1 and one line naming the value.
    #[arg(long, default_value = "512M")]
    mem: String,
    /// vCPUs (1 to 64; no more than the host's hypervisor allows).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=platform::MAX_VCPUS as i64))]
    cpus: u32,
    /// The whole kernel command line, replacing the default ("console=ttyS0").
    #[arg(long)]
    cmdline: Option<String>,
    /// Words added to the end of the kernel command line.
    #[arg(long)]
    append: Option<String>,
    /// Print every VM exit as it happens (reason, RIP, decoded qualification).
    #[arg(long)]
    trace_exits: bool,
    /// Print a histogram of VM exits by reason when the guest stops.
    #[arg(long)]
    exit_stats: bool,
    /// A disk image for the guest, as /dev/vda, /dev/vdb, ... in order (repeatable).
    /// ro: the guest cannot write it; serial=ID: the ID the guest reads (up to 20 characters).
    #[arg(long, value_name = "PATH[,ro][,serial=ID]", value_parser = disk_arg::parse_disk)]
    disk: Vec<disk_arg::DiskSpec>,
    /// Boot from the first disk: adds root=/dev/vda to the command line.
    #[arg(long, requires = "disk")]
    root: bool,
    /// Add the test devices kvm-unit-tests uses (isa-debug-exit at 0xf4: the guest
    /// sets hvrun's exit status; pc-testdev; fw_cfg).
    #[arg(long)]
    testdev: bool,
    /// Log level: error, warn, info, debug, trace (RUST_LOG also works).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new().parse_filters(&args.log_level).parse_default_env().init();
    vmm::trace::set_tracing(args.trace_exits);
    vmm::trace::set_stats(args.exit_stats);
    if let Err(e) = vmm::host::check() {
        eprintln!("hvrun: {e}");
        return ExitCode::from(status::ERROR);
    }
    let mem_size = match mem_arg::parse_mem(&args.mem) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("hvrun: {e}");
            return ExitCode::from(status::ERROR);
        }
    };

    let cmdline = cmdline::CmdlineArgs { cmdline: args.cmdline.clone(), root: args.root, append: args.append.clone() };
    let config = platform::Config {
        kernel: &args.kernel,
        initrd: args.initrd.as_deref(),
        mem_size,
        cpus: args.cpus,
        cmdline,
        disks: &args.disk,
        testdev: args.testdev,
    };

    let stopper = Stopper::new();
    let signals = block_signals();
    let running = match platform::start(&config, stopper.clone()) {
        Ok(running) => running,
        Err(e) => {
            eprintln!("hvrun: {e}");
            return ExitCode::from(status::ERROR);
        }
    };
    take_signals(signals, stopper.clone(), running.dump.clone());
    let raw = terminal::enter_raw_mode();
    let _restore = terminal::RawModeGuard;
    let quit = stopper.clone();
    let dump = running.dump.clone();
    console::spawn_input(running.serial.clone(), move || quit.stop(StopReason::Host), move || print_dump(&dump));

    let platform::Running { mut vm, output, irqchip, disks, .. } = running;
    let reason = vm.wait();
    irqchip.stop_timers();
    disks.shutdown();
    output.drain(Duration::from_secs(2));
    terminal::restore_now();
    if raw {
        // The guest's last line may lack a newline; start ours on a fresh line.
        eprintln!();
    }
    if args.exit_stats {
        eprintln!("{}", vm.machine().stats.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let code = match &reason {
        StopReason::Power(PowerEvent::PowerOff) => status::POWER_OFF,
        StopReason::Power(PowerEvent::Reset) => status::REBOOT,
        StopReason::Power(PowerEvent::Exit(code)) => *code as u8,
        StopReason::Host => status::HOST,
        StopReason::TripleFault { .. } | StopReason::EntryFailed { .. } | StopReason::Fatal { .. } => status::CRASH,
    };
    if code != status::POWER_OFF {
        eprintln!("hvrun: {reason}");
    }
    ExitCode::from(code)
}

/// Prints the state dump on stderr (with carriage returns while the terminal is raw).
fn print_dump(dump: &StateDump) {
    let text = dump.collect();
    let text = if terminal::is_raw() { text.replace('\n', "\r\n") } else { text };
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// Blocks SIGINT, SIGTERM and SIGUSR1 in this thread, before any other starts, so every
/// thread inherits the mask and only the signal thread takes them (with sigwait).
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The signal thread: SIGINT and SIGTERM stop the machine cleanly (the terminal is
/// restored on the way out); SIGUSR1 prints the state dump.
fn take_signals(set: libc::sigset_t, stopper: Arc<Stopper>, dump: Arc<StateDump>) {
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let mut signal = 0;
        // SAFETY: `set` is initialised; sigwait writes the signal number.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            return;
        }
        if signal == libc::SIGUSR1 {
            print_dump(&dump);
        } else {
            stopper.stop(StopReason::Host);
        }
    });
    if let Err(e) = spawned {
        log::warn!("SIGINT/SIGTERM will not stop hvrun cleanly: {e}");
    }
}
