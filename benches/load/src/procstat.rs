//! CPU time and peak memory of processes, from Linux `/proc`. The parsers are pure; the readers
//! are thin; [`CpuWatch`] keeps each process's first reading and its latest successful one, so a
//! process that exits during a run still reports what it used up to its last reading.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

/// Clock ticks per second of `utime` and `stime` in `/proc/PID/stat`. `sysconf(_SC_CLK_TCK)`
/// would say, but `libc` is no workspace dependency and the workspace forbids `unsafe_code`; the
/// kernel scales these fields to USER_HZ, which is 100 on every mainstream Linux architecture
/// (x86, arm, arm64, riscv, powerpc, s390), whatever the kernel's own HZ.
const CLK_TCK: u64 = 100;

/// Clock ticks of `/proc/PID/stat` in seconds.
pub fn ticks_to_s(ticks: u64) -> f64 {
    ticks as f64 / CLK_TCK as f64
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// utime + stime, in clock ticks, over all the process's threads (dead ones included).
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks: tells a reused pid from the process we watched.
    pub start_time: u64,
}

/// Parses the text of `/proc/PID/stat`. The second field, `comm`, is in parentheses and may hold
/// spaces and `)` itself (a process can name itself anything), so fields are counted from the
/// last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // Fields after comm, from 0: state (field 3 of proc(5)), ..., utime (14), stime (15), ...,
    // starttime (22).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        cpu_ticks: num(11)?.checked_add(num(12)?)?,
        start_time: num(19)?,
    })
}

/// `VmHWM` (peak resident set size) in KiB from the text of `/proc/PID/status`. Absent for kernel
/// threads.
pub fn parse_vm_hwm_kib(text: &str) -> Option<u64> {
    let value = text.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let mut words = value.split_whitespace();
    let kib = words.next()?.parse().ok()?;
    matches!(words.next(), Some("kB") | None).then_some(kib)
}

/// `NAME=PID`, the value of `--cpu-pid`.
pub fn parse_name_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PID"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{s:?}: empty NAME"));
    }
    let pid = pid
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("{s:?}: bad PID: {e}"))?;
    Ok((name.to_owned(), pid))
}

/// A process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    /// This process, through `/proc/self`.
    Myself,
}

impl Target {
    fn file(self, name: &str) -> PathBuf {
        match self {
            Target::Pid(p) => PathBuf::from(format!("/proc/{p}/{name}")),
            Target::Myself => PathBuf::from(format!("/proc/self/{name}")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pid(p) => write!(f, "pid {p}"),
            Target::Myself => f.write_str("this process"),
        }
    }
}

fn read(target: Target, name: &str) -> anyhow::Result<String> {
    let path = target.file(name);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// Reads `/proc/PID/stat`. A blocking read, but `/proc` answers from kernel memory in
/// microseconds, so callers on the runtime need no `spawn_blocking`.
pub fn read_stat(target: Target) -> anyhow::Result<Stat> {
    let text = read(target, "stat")?;
    parse_stat(&text).with_context(|| format!("unexpected /proc stat of {target}: {text:?}"))
}

/// Reads `VmHWM` from `/proc/PID/status`, in KiB.
pub fn read_peak_rss_kib(target: Target) -> anyhow::Result<u64> {
    let text = read(target, "status")?;
    parse_vm_hwm_kib(&text).with_context(|| format!("no VmHWM in /proc status of {target}"))
}

/// One process to watch.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub target: Target,
    /// Also read its peak RSS.
    pub peak_rss: bool,
}

#[derive(Debug)]
struct Watched {
    spec: Spec,
    first: Stat,
    last: Stat,
    peak_rss_kib: Option<u64>,
    /// A reading failed (or found another process under the pid) after the first: the process
    /// is gone and is not read again, so a reused pid cannot add a stranger's CPU.
    gone: bool,
}

/// What one watched process used between the first reading and its latest successful one.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub name: String,
    pub cpu_ticks: u64,
    pub peak_rss_kib: Option<u64>,
    /// The process vanished before the last reading; the figures stop at its last reading.
    pub exited: bool,
}

impl Usage {
    pub fn cpu_s(&self) -> f64 {
        ticks_to_s(self.cpu_ticks)
    }
}

/// Start and latest readings of a set of processes.
#[derive(Debug)]
pub struct CpuWatch {
    /// std `Mutex`: held only for a few file reads, never across an `.await`.
    procs: Mutex<Vec<Watched>>,
}

impl CpuWatch {
    /// Takes the first reading of every process; fails when one cannot be read (a wrong pid is
    /// better reported now than as a missing figure at the end).
    pub fn start(specs: Vec<Spec>) -> anyhow::Result<CpuWatch> {
        let procs = specs
            .into_iter()
            .map(|spec| {
                let first = read_stat(spec.target)
                    .with_context(|| format!("CPU time of {} ({})", spec.name, spec.target))?;
                let peak_rss_kib = if spec.peak_rss {
                    Some(
                        read_peak_rss_kib(spec.target)
                            .with_context(|| format!("peak RSS of {}", spec.name))?,
                    )
                } else {
                    None
                };
                Ok(Watched {
                    spec,
                    first,
                    last: first,
                    peak_rss_kib,
                    gone: false,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(CpuWatch {
            procs: Mutex::new(procs),
        })
    }

    /// Reads every process not yet gone again.
    pub fn sample(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for w in procs.iter_mut().filter(|w| !w.gone) {
            match read_stat(w.spec.target) {
                Ok(s) if s.start_time == w.first.start_time => w.last = s,
                _ => {
                    w.gone = true;
                    continue;
                }
            }
            if w.spec.peak_rss {
                // VmHWM only grows; a failed read keeps the previous figure.
                if let Ok(kib) = read_peak_rss_kib(w.spec.target) {
                    w.peak_rss_kib = Some(kib);
                }
            }
        }
    }

    /// Samples every `every` until the returned task is aborted: keeps a recent reading of
    /// processes that exit before the end of the run.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.sample();
            }
        })
    }

    /// Usage so far, in the order the processes were given.
    pub fn usage(&self) -> Vec<Usage> {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .iter()
            .map(|w| Usage {
                name: w.spec.name.clone(),
                cpu_ticks: w.last.cpu_ticks.saturating_sub(w.first.cpu_ticks),
                peak_rss_kib: w.peak_rss_kib,
                exited: w.gone,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line of /proc/PID/stat (52 fields) with `comm` replaced.
    fn stat_line(comm: &str, utime: u64, stime: u64, start: u64) -> String {
        format!(
            "4242 ({comm}) S 1 4242 4242 0 -1 4194560 2714 0 0 0 {utime} {stime} 0 0 20 0 3 0 \
             {start} 21925888 2368 18446744073709551615 1 1 0 0 0 0 0 4096 17003 0 0 0 17 1 0 \
             0 0 0 0 0 0 0 0 0 0 0 0\n"
        )
    }

    #[test]
    fn stat_fields_after_the_last_parenthesis() {
        let s = parse_stat(&stat_line("mosquitto", 120, 35, 9876)).expect("parse");
        assert_eq!(
            s,
            Stat {
                cpu_ticks: 155,
                start_time: 9876
            }
        );
        // A name with spaces and parentheses must not shift the fields.
        let s = parse_stat(&stat_line("a) b (c) d", 7, 3, 11)).expect("parse");
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_time, 11);
        let s = parse_stat(&stat_line(") ) )", 1, 2, 3)).expect("parse");
        assert_eq!(s.cpu_ticks, 3);
    }

    #[test]
    fn malformed_stat_is_none() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("4242 (x) S 1 2 3"), None);
        assert_eq!(
            parse_stat(&stat_line("x", 1, 2, 3).replace(" 1 2 0", " x 2 0")),
            None
        );
    }

    #[test]
    fn vm_hwm_in_kib() {
        let status =
            "Name:\tccstream\nVmPeak:\t  812345 kB\nVmHWM:\t   61440 kB\nVmRSS:\t   50000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(61440));
        assert_eq!(parse_vm_hwm_kib("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(parse_vm_hwm_kib("VmHWM:\t 12 MB\n"), None);
        assert_eq!(parse_vm_hwm_kib("VmHWM:\n"), None);
    }

    #[test]
    fn name_pid_pairs() {
        assert_eq!(
            parse_name_pid("mosquitto=123"),
            Ok(("mosquitto".to_owned(), 123))
        );
        assert!(parse_name_pid("123").is_err());
        assert!(parse_name_pid("=123").is_err());
        assert!(parse_name_pid("x=-1").is_err());
    }

    #[test]
    fn watches_this_process() {
        let w = CpuWatch::start(vec![Spec {
            name: "me".into(),
            target: Target::Myself,
            peak_rss: true,
        }])
        .expect("read /proc/self");
        // Burn a little CPU so the second reading has something to show (not asserted: one
        // tick is 10 ms and a loaded machine may not schedule us for long).
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        w.sample();
        let u = w.usage();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].name, "me");
        assert!(!u[0].exited);
        assert!(u[0].peak_rss_kib.is_some_and(|k| k > 0));
    }

    #[test]
    fn a_process_that_exits_keeps_its_last_reading() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("run sleep");
        let w = CpuWatch::start(vec![Spec {
            name: "sleep".into(),
            target: Target::Pid(child.id()),
            peak_rss: true,
        }])
        .expect("read the child");
        w.sample();
        let _ = child.kill();
        let _ = child.wait();
        w.sample();
        let u = w.usage();
        assert!(u[0].exited, "{u:?}");
        assert!(u[0].peak_rss_kib.is_some(), "{u:?}");
    }

    #[test]
    fn a_missing_pid_fails_at_the_start() {
        let err = CpuWatch::start(vec![Spec {
            name: "nobody".into(),
            // Above the kernel's pid_max limit (4194304): never a process.
            target: Target::Pid(u32::MAX),
            peak_rss: false,
        }])
        .expect_err("no such pid");
        assert!(format!("{err:#}").contains("nobody"), "{err:#}");
    }
}
