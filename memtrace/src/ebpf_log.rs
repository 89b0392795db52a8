//! Messages from the eBPF programs (aya-log): only on rare error paths, and
//! only when asked for with `MEMTRACE_EBPF_LOG=1` (otherwise their level is
//! set to 0 at load, which makes them free). They go to stderr, never onto
//! the dashboard's screen.

use aya::Ebpf;
use aya_log::EbpfLogger;

/// Environment variable that turns eBPF messages on.
pub const ENV: &str = "MEMTRACE_EBPF_LOG";

/// The aya-log level the eBPF programs run with: warnings when asked for,
/// else nothing.
pub fn level() -> u8 {
    // aya_log_common::Level: Error = 1, Warn = 2.
    if std::env::var_os(ENV).is_some() {
        2
    } else {
        0
    }
}

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!("memtrace: ebpf: {}", record.args());
    }

    fn flush(&self) {}
}

/// Forward the eBPF programs' messages to stderr, when asked for.
pub struct Messages(Option<EbpfLogger<Stderr>>);

impl Messages {
    pub fn start(ebpf: &mut Ebpf) -> Self {
        if level() == 0 {
            return Self(None);
        }
        match EbpfLogger::init_with_logger(ebpf, Stderr) {
            Ok(l) => Self(Some(l)),
            Err(e) => {
                eprintln!("memtrace: eBPF messages unavailable: {e}");
                Self(None)
            }
        }
    }

    pub fn flush(&mut self) {
        if let Some(l) = &mut self.0 {
            l.flush();
        }
    }
}
