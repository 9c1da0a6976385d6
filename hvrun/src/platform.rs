//! The PC hvrun emulates, put together: RAM, 1 to 64 vCPUs with a local APIC each, the IOAPIC,
//! COM1, the ACPI power registers, the i8042's reset line, virtio-mmio disks, with
//! `--testdev` the test devices of kvm-unit-tests, and a kernel (Linux or multiboot)
//! loaded into it.
use crate::cmdline::CmdlineArgs;
use crate::disk_arg::DiskSpec;
use devices::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};
use devices::ioapic::{IOAPIC_BASE, IOAPIC_SIZE};
use devices::output::{ConsoleOutput, DEFAULT_OUTPUT_CAPACITY};
use devices::power::{AcpiPmDevice, ACPI_PM_PORT_COUNT, ACPI_SLEEP_CONTROL_PORT};
use devices::serial::{Serial, COM1_IRQ, COM1_PORT, COM1_PORT_COUNT};
use devices::virtio::block::disk::Disk;
use devices::virtio::block::Block;
use devices::virtio::mmio::{MmioTransport, WINDOW_SIZE};
use devices::virtio::IoapicPin;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use vmm::clock::{host_tsc_hz, GuestClock};
use vmm::cpuid::CpuidPolicy;
use vmm::dump::StateDump;
use vmm::irqchip::{IrqChip, VcpuInterrupts};
use vmm::machine::Stopper;
use vmm::vcpu::{Start, VcpuConfig};
use vmm::vm::Vm;

/// The most vCPUs hvrun gives a guest (`--cpus`): APIC IDs stay below 0xff, so xAPIC
/// MADT entries and the MP table describe them all.
pub const MAX_VCPUS: u32 = 64;

/// What `hvrun` asks for.
pub struct Config<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub mem_size: u64,
    /// vCPUs, 1..=MAX_VCPUS (the command line checks the range).
    pub cpus: u32,
    pub cmdline: CmdlineArgs,
    /// Disks in order: /dev/vda, /dev/vdb, ...
    pub disks: &'a [DiskSpec],
    /// The test devices (devices::testdev).
    pub testdev: bool,
}

/// A machine with its kernel loaded and its vCPU running.
pub struct Running {
    pub vm: Vm,
    pub serial: Arc<Serial<ConsoleOutput>>,
    pub output: ConsoleOutput,
    /// The interrupt controller, whose timer thread stops after the vCPUs.
    pub irqchip: Arc<IrqChip>,
    pub disks: Disks,
    /// The state dump (SIGUSR1, Ctrl-A i).
    pub dump: Arc<StateDump>,
}

/// The running disks, to be stopped and flushed when the guest is gone.
pub struct Disks(Vec<(Arc<MmioTransport>, Arc<Disk>)>);

impl Disks {
    /// Waits for requests in flight, then makes everything written durable on the host.
    pub fn shutdown(&self) {
        for (transport, disk) in &self.0 {
            transport.shutdown();
            if let Err(e) = disk.flush() {
                eprintln!("hvrun: cannot flush a disk image: {e}");
            }
        }
    }
}

/// Builds the machine, loads the kernel and starts the vCPU. Errors are one line each.
pub fn start(config: &Config, stopper: Arc<Stopper>) -> Result<Running, String> {
    // Files and sizes first: a bad path or size fails before anything is created.
    let mut kernel = boot::open_image("kernel", config.kernel).map_err(|e| e.to_string())?;
    let kind = boot::detect(&mut kernel).map_err(|e| e.to_string())?;
    let mut initrd = match config.initrd {
        Some(path) => Some(boot::open_image("initrd", path).map_err(|e| e.to_string())?),
        None => None,
    };
    boot::check_mem_size(config.mem_size).map_err(|e| e.to_string())?;
    let host_max = vmm::vm::max_vcpus().map_err(|e| format!("cannot ask the hypervisor how many vCPUs it allows: {e}"))?;
    if u64::from(config.cpus) > host_max {
        return Err(format!("--cpus {} is more than this host's hypervisor allows ({host_max})", config.cpus));
    }
    let vcpus = config.cpus;
    let mut disks = Vec::new();
    for (index, spec) in config.disks.iter().enumerate() {
        let slot = boot::virtio_mmio_slot(index)
            .ok_or_else(|| format!("too many disks: at most {}", boot::VIRTIO_GSIS.len()))?;
        let disk = Disk::open(&spec.path, spec.read_only).map_err(|e| e.to_string())?;
        disks.push((slot, Block::new(disk, &spec.serial)));
    }
    let slots: Vec<boot::VirtioMmioDevice> = disks.iter().map(|(slot, _)| *slot).collect();
    // Kernels without ACPI learn of the devices from the command line (the DSDT tells
    // the others; giving both makes Linux probe each device twice).
    let mut cmdline = match kind {
        boot::ImageKind::Linux => config.cmdline.linux(),
        boot::ImageKind::Multiboot(_) => config.cmdline.multiboot(config.kernel),
    };
    if !slots.is_empty() && cmdline.split_whitespace().any(|w| w == "acpi=off") {
        cmdline = format!("{cmdline} {}", boot::virtio_mmio_cmdline(&slots));
    }

    let tsc_hz = host_tsc_hz();
    let cpuid = CpuidPolicy::new(vcpus, true).with_kvmclock(tsc_hz);
    let clock = GuestClock::start(tsc_hz);
    let mut vm = Vm::with_clock(config.mem_size, cpuid, stopper.clone(), clock).map_err(|e| e.to_string())?;

    let irqchip = Arc::new(IrqChip::new(vcpus, clock.tsc_clock()));
    let ioapic = irqchip.ioapic().clone();

    let output = ConsoleOutput::spawn(std::io::stdout(), DEFAULT_OUTPUT_CAPACITY).map_err(|e| format!("cannot start the console: {e}"))?;
    let serial = Arc::new(Serial::new(ioapic.clone(), COM1_IRQ, output.clone()));
    let i8042 = I8042::new(stopper.clone());

    let machine = vm.machine_mut().map_err(|e| e.to_string())?;
    let bus_error = |e: devices::bus::BusError| e.to_string();
    machine.mmio.insert(IOAPIC_BASE, IOAPIC_SIZE, ioapic.clone()).map_err(bus_error)?;
    machine.pio.insert(COM1_PORT, COM1_PORT_COUNT, serial.clone()).map_err(bus_error)?;
    machine
        .pio
        .insert(ACPI_SLEEP_CONTROL_PORT as u64, ACPI_PM_PORT_COUNT, Arc::new(AcpiPmDevice::new(stopper.clone())))
        .map_err(bus_error)?;
    machine.pio.insert(I8042_DATA_PORT, 1, i8042.data_port()).map_err(bus_error)?;
    machine.pio.insert(I8042_COMMAND_PORT, 1, i8042.command_port()).map_err(bus_error)?;
    if config.testdev {
        let (pio, mmio) = (&mut machine.pio, &mut machine.mmio);
        devices::testdev::install(pio, mmio, ioapic.clone(), stopper.clone(), config.mem_size, vcpus as u16)
            .map_err(bus_error)?;
    }
    let mut running_disks = Vec::new();
    for (slot, block) in disks {
        let image = block.disk();
        let line = Arc::new(IoapicPin { ioapic: ioapic.clone(), pin: slot.gsi as usize });
        let transport = Arc::new(MmioTransport::new(Box::new(block), machine.ram.memory().clone(), line));
        machine.mmio.insert(slot.base, WINDOW_SIZE, transport.clone()).map_err(bus_error)?;
        running_disks.push((transport, image));
    }

    let memory = machine.ram.memory();
    let entry = match kind {
        boot::ImageKind::Linux => {
            let initrd = initrd.as_mut().map(|f: &mut File| f);
            boot::load_linux(memory, config.mem_size, &mut kernel, initrd, &cmdline, vcpus, &slots).map(|b| b.entry)
        }
        boot::ImageKind::Multiboot(header) => {
            // The module's string is its file name, as QEMU passes it.
            let name = config.initrd.map(|p| p.display().to_string()).unwrap_or_default();
            let module = initrd.as_mut().map(|f: &mut File| (f, name.as_str()));
            boot::load_multiboot(memory, config.mem_size, &mut kernel, header, module, &cmdline, vcpus, &slots)
                .map(|b| b.entry)
        }
    }
    .map_err(|e| e.to_string())?;

    let dump = StateDump::new();
    for index in 0..vcpus {
        dump.add_vcpu(index, irqchip.waker(index).clone(), Some(irqchip.lapic(index).clone()));
    }
    dump.set_ioapic(ioapic.clone());
    irqchip.start_timers().map_err(|e| format!("cannot start the APIC timer thread: {e}"))?;
    for index in 0..vcpus {
        // The BSP starts where the boot protocol says; the APs wait for the guest's
        // INIT-SIPI-SIPI (vmm::startup).
        let start = if index == 0 { Start::At(Box::new(entry.clone())) } else { Start::WaitForSipi };
        let interrupts = VcpuInterrupts::Lapic(irqchip.lapic(index).clone());
        let waker = irqchip.waker(index).clone();
        vm.start_vcpu(VcpuConfig { index, start, interrupts, waker }).map_err(|e| e.to_string())?;
    }
    Ok(Running { vm, serial, output, irqchip, disks: Disks(running_disks), dump })
}
