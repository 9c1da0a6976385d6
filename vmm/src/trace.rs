//! Watching exits: a line per exit as it happens (`--trace-exits`), and a histogram of
//! exits by reason with the time hvrun spent handling them (`--exit-stats`). Both switch
//! on and off at run time; when off they cost one relaxed atomic load per exit.
use hvf_sys::vmx::exit_reason_name;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static TRACE: AtomicBool = AtomicBool::new(false);
static STATS: AtomicBool = AtomicBool::new(false);

pub fn set_tracing(on: bool) {
    TRACE.store(on, Ordering::Relaxed);
}

pub fn tracing() -> bool {
    TRACE.load(Ordering::Relaxed)
}

pub fn set_stats(on: bool) {
    STATS.store(on, Ordering::Relaxed);
}

pub fn stats_enabled() -> bool {
    STATS.load(Ordering::Relaxed)
}

/// Basic exit reasons run from 0 to 64 (SDM appendix C).
const REASONS: usize = 65;

/// Exits by basic reason: how many, and the host time from each exit to the next entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitStats {
    pub count: [u64; REASONS],
    pub time: [Duration; REASONS],
}

impl Default for ExitStats {
    fn default() -> Self {
        ExitStats { count: [0; REASONS], time: [Duration::ZERO; REASONS] }
    }
}

impl ExitStats {
    pub fn record(&mut self, reason: u32, spent: Duration) {
        let i = (reason & 0xffff) as usize;
        if i < REASONS {
            self.count[i] += 1;
            self.time[i] += spent;
        }
    }

    pub fn merge(&mut self, other: &ExitStats) {
        for i in 0..REASONS {
            self.count[i] += other.count[i];
            self.time[i] += other.time[i];
        }
    }

    pub fn total(&self) -> u64 {
        self.count.iter().sum()
    }
}

impl fmt::Display for ExitStats {
    /// One row per reason seen, most frequent first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rows: Vec<usize> = (0..REASONS).filter(|&i| self.count[i] > 0).collect();
        rows.sort_by_key(|&i| std::cmp::Reverse(self.count[i]));
        writeln!(f, "{:<16} {:>10} {:>12} {:>10}", "exit reason", "count", "total", "mean")?;
        for i in rows {
            let mean = self.time[i] / self.count[i].max(1) as u32;
            writeln!(
                f,
                "{:<16} {:>10} {:>10.3}ms {:>8.2}us",
                exit_reason_name(i as u32),
                self.count[i],
                self.time[i].as_secs_f64() * 1e3,
                mean.as_secs_f64() * 1e6
            )?;
        }
        write!(f, "{:<16} {:>10}", "all", self.total())
    }
}

/// One trace line: vCPU, reason, RIP at the exit, and what the handler noted.
pub fn print_exit(vcpu: u32, reason: u32, rip: u64, qualification: u64, note: Option<&str>) {
    eprintln!(
        "[exit] vcpu{vcpu} {:<13} rip={rip:#x} qual={qualification:#x}{}{}",
        exit_reason_name(reason),
        if note.is_some() { " " } else { "" },
        note.unwrap_or("")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_and_prints_by_frequency() {
        let mut s = ExitStats::default();
        s.record(30, Duration::from_micros(10));
        s.record(30, Duration::from_micros(30));
        s.record(48, Duration::from_micros(5));
        s.record(0x8000_0021, Duration::from_micros(1));
        let mut t = ExitStats::default();
        t.merge(&s);
        assert_eq!(t.count[30], 2);
        assert_eq!(t.total(), 4);
        let text = t.to_string();
        let io = text.find("IO").unwrap();
        let ept = text.find("EPT_VIOLATION").unwrap();
        assert!(io < ept, "{text}");
        assert!(text.contains("20.00us"), "{text}");
        assert!(text.contains("VMENTRY_GUEST"));
    }
}
