//! Several vCPUs (`hvrun --cpus N`) end to end, with the `hvrun` command on a real KVM:
//!
//! - The guest sees N CPUs (N = 2, 4, 8) through the MADT, and through the MP table with
//!   `acpi=off`: nproc, /proc/cpuinfo's processors and APIC IDs, sysfs's CPU lists; and
//!   work pinned to each CPU runs there, all CPUs at once, with the right result
//!   (guest/checks/smp, guest/tools/cpuwork.c). The same on Debian's cloud kernel.
//! - CPU hotplug: every AP taken offline and brought back (INIT, then INIT-SIPI-SIPI),
//!   20 rounds (guest/checks/smp-hotplug).
//! - An IPI storm: TLB shootdowns from every CPU to every other (guest/checks/smp-ipistorm,
//!   guest/tools/ipistorm.c); a lost IPI is a stale page, a hang, or an RCU stall.
//! - A disk whose interrupt the guest routes to the last CPU: the interrupts arrive
//!   there and only there, and the read-write round trip of tests/tests/disk.rs holds.
//!
//! Every boot must be clean ([`assert_no_kernel_noise`]: with several vCPUs that covers
//! TSCs out of step, APs that did not come up, soft lockups and RCU stalls). The guests
//! come from scripts/test.sh (HVRUN_GUEST_KERNEL/INITRD, HVRUN_CLOUD_*).
use hvrun_tests::disk::RwDisks;
use hvrun_tests::hvrun::*;
use std::time::Duration;

/// Generous: the sandbox runs the guest kernel at emulated speed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The cloud kernel is much bigger and probes much more.
const CLOUD_TIMEOUT: Duration = Duration::from_secs(600);
const MARKER: &str = "HVRUN-INIT-OK";

fn minimal() -> (String, String) {
    let k = guest_file("HVRUN_GUEST_KERNEL");
    let i = guest_file("HVRUN_GUEST_INITRD");
    (k.display().to_string(), i.display().to_string())
}

/// Boots the minimal guest on `cpus` vCPUs with `append` added to the command line.
fn boot(cpus: usize, append: &str) -> Finished {
    let (kernel, initrd) = minimal();
    Hvrun::spawn(&["--cpus", &cpus.to_string(), "--append", append, &kernel, &initrd]).wait(BOOT_TIMEOUT)
}

/// The "PREFIX KEY VALUE" lines a check printed, in order. Found anywhere in a line: a
/// kernel message may have started it.
fn printed(run: &Finished, prefix: &str) -> Vec<(String, String)> {
    let prefix = format!("{prefix} ");
    run.console
        .all()
        .into_iter()
        .filter_map(|(_, line)| {
            let rest = &line[line.find(&prefix)? + prefix.len()..];
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The one value of `key` among `values`.
fn value<'a>(run: &Finished, values: &'a [(String, String)], key: &str) -> &'a str {
    let found: Vec<&str> = values.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect();
    assert_eq!(found.len(), 1, "{key}: printed {found:?}\n{}", run.report());
    found[0]
}

/// The check (`NAME` its result prefix, e.g. HVRUN-SMP) ran to its end with status 0,
/// the guest powered off, and its kernel printed no noise.
fn assert_check_passed(run: &Finished, name: &str) {
    assert!(run.console.find(MARKER).is_some(), "{}", run.report());
    assert!(run.console.find(&format!("{name}-ERROR")).is_none(), "{}", run.report());
    assert!(run.console.find(&format!("{name}-DONE")).is_some(), "{}", run.report());
    assert!(run.console.find("HVRUN-CHECK-STATUS=0").is_some(), "{}", run.report());
    assert_eq!(run.code(), Some(0), "{}", run.report());
    assert_no_kernel_noise(run);
}

/// What guest/checks/smp must print on `n` vCPUs: every CPU online, with APIC IDs
/// 0..n-1, each running its copy of cpuwork on itself with the right count.
fn assert_sees_cpus(run: &Finished, n: usize) {
    assert_check_passed(run, "HVRUN-SMP");
    let brought_up = format!("smp: Brought up 1 node, {n} CPUs");
    assert!(run.console.find(&brought_up).is_some(), "no {brought_up:?}:\n{}", run.report());
    let v = printed(run, "HVRUN-SMP");
    let all = format!("0-{}", n - 1);
    let ids: Vec<String> = (0..n).map(|c| c.to_string()).collect();
    assert_eq!(value(run, &v, "nproc"), n.to_string(), "{}", run.report());
    assert_eq!(value(run, &v, "processors"), n.to_string(), "{}", run.report());
    assert_eq!(value(run, &v, "apicids"), ids.join(" "), "{}", run.report());
    for list in ["online", "present", "possible"] {
        assert_eq!(value(run, &v, list), all, "{list}:\n{}", run.report());
    }
    for c in 0..n {
        assert_eq!(value(run, &v, &format!("work.{c}")), format!("cpu {c} {c} primes 5133"), "{}", run.report());
    }
}

#[test]
fn two_cpus_through_the_madt() {
    let run = boot(2, "hvrun.check=smp");
    assert!(run.console.find("ACPI: RSDP").is_some(), "ACPI tables were used: {}", run.report());
    assert_sees_cpus(&run, 2);
}

#[test]
fn four_cpus_through_the_madt() {
    let run = boot(4, "hvrun.check=smp");
    assert!(run.console.find("ACPI: RSDP").is_some(), "ACPI tables were used: {}", run.report());
    assert_sees_cpus(&run, 4);
}

#[test]
fn eight_cpus_through_the_madt() {
    let run = boot(8, "hvrun.check=smp");
    assert!(run.console.find("ACPI: RSDP").is_some(), "ACPI tables were used: {}", run.report());
    assert_sees_cpus(&run, 8);
}

/// No ACPI: the kernel counts the CPUs in the MP table. It powers off by halting every
/// CPU with interrupts off, which hvrun must see as the machine being off.
#[test]
fn four_cpus_through_the_mp_table_with_acpi_off() {
    let run = boot(4, "acpi=off hvrun.check=smp");
    assert!(run.console.find("found SMP MP-table").is_some(), "{}", run.report());
    assert_sees_cpus(&run, 4);
}

/// Debian's cloud kernel (ACPI only, much more probing at boot) on two vCPUs.
#[test]
fn debian_cloud_kernel_on_two_cpus() {
    let kernel = guest_file("HVRUN_CLOUD_KERNEL").display().to_string();
    let initrd = guest_file("HVRUN_CLOUD_INITRD").display().to_string();
    let run = Hvrun::spawn(&["--cpus", "2", "--mem", "1G", "--append", "hvrun.check=smp", &kernel, &initrd])
        .wait(CLOUD_TIMEOUT);
    assert_sees_cpus(&run, 2);
}

/// 20 rounds of taking CPUs 1-3 offline and back: each offline parks the AP (INIT), each
/// online must start it again with INIT-SIPI-SIPI, and work pinned to it must then run
/// on it.
#[test]
fn cpu_hotplug_offline_and_online_twenty_rounds() {
    const ROUNDS: usize = 20;
    let run = boot(4, &format!("hvrun.check=smp-hotplug hvrun.rounds={ROUNDS}"));
    let rounds: Vec<String> = printed(&run, "HVRUN-HOTPLUG")
        .into_iter()
        .map(|(k, v)| format!("{k} {}", without_kernel_message(&v)))
        .collect();
    let want: Vec<String> = (1..=ROUNDS).flat_map(|r| (1..4).map(move |c| format!("round {r} cpu {c} ok"))).collect();
    assert_eq!(rounds, want, "{}", run.report());
    assert!(run.console.find("HVRUN-HOTPLUG-ONLINE 0-3").is_some(), "{}", run.report());
    assert_check_passed(&run, "HVRUN-HOTPLUG");
}

/// `v` without a kernel message the console appended to the same line (the kernel's
/// printk and the check's echo share the console: "ok[   41.78] hrtimer: ...").
fn without_kernel_message(v: &str) -> &str {
    let timestamp = |i: usize| {
        let rest = v[i + 1..].trim_start();
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        digits > 0 && rest[digits..].starts_with('.')
    };
    match v.match_indices('[').map(|(i, _)| i).find(|&i| timestamp(i)) {
        Some(i) => v[..i].trim_end(),
        None => v,
    }
}

#[test]
fn a_kernel_message_on_a_check_line_is_not_part_of_it() {
    assert_eq!(without_kernel_message("round 14 cpu 3 ok[   41.781423] hrtimer: interrupt took 11057564 ns"), "round 14 cpu 3 ok");
    assert_eq!(without_kernel_message("round 1 cpu 1 ok"), "round 1 cpu 1 ok");
    assert_eq!(without_kernel_message("cpu [x] ok"), "cpu [x] ok");
}

/// TLB shootdowns from all four CPUs at once for 20 s: every thread, each pinned to its
/// CPU, made progress (its IPIs were all answered) and never read a page through a TLB
/// entry its owner had flushed; no lockup or stall in the log.
#[test]
fn ipi_storm_of_tlb_shootdowns_on_four_cpus() {
    const CPUS: usize = 4;
    let run = boot(CPUS, "hvrun.check=smp-ipistorm hvrun.seconds=20");
    assert_check_passed(&run, "HVRUN-IPISTORM");
    let lines = printed(&run, "HVRUN-IPISTORM");
    let mut total = 0;
    for t in 0..CPUS {
        let line = lines
            .iter()
            .find(|(k, v)| k == "thread" && v.starts_with(&format!("{t} ")))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no line for thread {t}:\n{}", run.report()));
        // "T cpu C iterations N stale S"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 7, "thread {t}: {line:?}\n{}", run.report());
        let iterations: u64 = words[4].parse().unwrap_or_else(|_| panic!("thread {t}: {line:?}"));
        assert_eq!([words[1], words[2], words[3], words[5], words[6]], ["cpu", &t.to_string(), "iterations", "stale", "0"],
            "thread {t}: {line:?}\n{}", run.report());
        assert!(iterations > 0, "thread {t} made no progress: {line:?}\n{}", run.report());
        eprintln!("ipistorm: thread {t} on CPU {t}: {iterations} iterations");
        total += iterations;
    }
    assert_eq!(value(&run, &lines, "threads"), format!("{CPUS} total {total} stale 0"), "{}", run.report());
}

/// Both disks' interrupts routed by the guest to CPU 0, then to the last CPU (3): they
/// arrive there and nowhere else while the read-write round trip runs (hvrun delivers
/// to the CPU the IOAPIC's redirection entry names, also after the guest changes it),
/// and the round trip's data is right.
#[test]
fn disk_interrupts_routed_to_the_last_cpu() {
    let disks = RwDisks::new("smp-irq");
    let (kernel, initrd) = minimal();
    let mut args = vec!["--cpus".to_string(), "4".to_string()];
    args.extend(disks.args("hvrun.irqcpu=last"));
    args.extend([kernel, initrd]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = Hvrun::spawn(&args).wait(BOOT_TIMEOUT);

    disks.check(&run);
    let v = printed(&run, "HVRUN-DISK");
    assert_eq!(value(&run, &v, "irqcpu"), "3", "{}", run.report());
    for d in ["vda", "vdb"] {
        assert_eq!(value(&run, &v, &format!("{d}.irq.moved")), "0 3", "{d}:\n{}", run.report());
        assert_eq!(value(&run, &v, &format!("{d}.irq.cpus")), "3", "{d}:\n{}", run.report());
        let count = value(&run, &v, &format!("{d}.irq.count"));
        assert!(count.parse::<u64>().is_ok_and(|n| n > 0), "{d}.irq.count {count}:\n{}", run.report());
    }
}
