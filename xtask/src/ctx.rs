//! What every command needs: workspace paths, the PATH children see, and a
//! small command runner that echoes what it runs, elevates to root when
//! asked, and honours `--dry-run`.

use std::{
    env,
    ffi::OsString,
    fmt::Write as _,
    fs,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Prints one `xtask:` line (to stderr, like cargo's own progress).
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("xtask: {}", format_args!($($arg)*)) };
}
pub(crate) use say;

pub struct Ctx {
    /// The workspace root (the parent of this crate).
    pub root: PathBuf,
    /// The cargo running us (`$CARGO`), so children use the same toolchain.
    pub cargo: String,
    /// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
    pub cargo_bin: PathBuf,
    /// `$PATH` with `cargo_bin` in front: build.rs must find bpf-linker.
    pub path: OsString,
    pub dry_run: bool,
    pub is_root: bool,
    /// `$CI` is set: cargo runs with `--locked` (the lock file is committed).
    pub ci: bool,
}

impl Ctx {
    pub fn new(dry_run: bool) -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let cargo_home = match env::var_os("CARGO_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
            }
        };
        let cargo_bin = cargo_home.join("bin");
        let old_path = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = vec![cargo_bin.clone()];
        dirs.extend(env::split_paths(&old_path).filter(|d| *d != cargo_bin));
        let path = env::join_paths(dirs).context("PATH contains an invalid entry")?;
        let ci = env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        Ok(Self {
            root,
            cargo: env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            cargo_bin,
            path,
            dry_run,
            is_root: effective_uid() == Some(0),
            ci,
        })
    }

    /// A command for `program`, run in the workspace root with our PATH.
    pub fn cmd(&self, program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            root: None,
            via_sudo: !self.is_root,
            cwd: Some(self.root.clone()),
            path: self.path.clone(),
        }
    }

    /// `cargo <subcommand>` with the cargo that runs us; under CI, commands
    /// that resolve dependencies get `--locked`.
    pub fn cargo(&self, subcommand: &str) -> Cmd {
        let mut cmd = self.cmd(self.cargo.clone()).arg(subcommand);
        if self.ci && matches!(subcommand, "build" | "check" | "clippy" | "test") {
            cmd = cmd.arg("--locked");
        }
        cmd
    }

    /// The cargo target directory (`$CARGO_TARGET_DIR` or `<root>/target`).
    pub fn target_dir(&self) -> PathBuf {
        ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
            .iter()
            .find_map(|var| env::var_os(var).filter(|v| !v.is_empty()))
            // Children run in `root`, so a relative path is relative to it.
            .map_or_else(|| self.root.join("target"), |dir| self.root.join(dir))
    }

    /// Finds `name` on our PATH.
    pub fn which(&self, name: &str) -> Option<PathBuf> {
        env::split_paths(&self.path)
            .map(|dir| dir.join(name))
            .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
    }

    /// Runs a command that changes something, echoing it first; fails unless
    /// it exits successfully. Under `--dry-run` it is only echoed.
    pub fn run(&self, cmd: &Cmd) -> Result<()> {
        let status = self.status(cmd)?;
        if !status.success() {
            bail!("`{cmd}` failed ({})", describe(status));
        }
        Ok(())
    }

    /// Like [`Ctx::run`], but returns the exit status instead of judging it.
    pub fn status(&self, cmd: &Cmd) -> Result<ExitStatus> {
        if self.dry_run {
            say!("would run: {cmd}");
            return Ok(ExitStatus::from_raw(0));
        }
        say!("$ {cmd}");
        self.command(cmd)
            .status()
            .with_context(|| format!("cannot start `{cmd}`"))
    }

    /// Replaces this process with `cmd` (so signals such as Ctrl-C reach it
    /// alone, and its exit status becomes ours). Returns only on failure,
    /// or under `--dry-run`.
    pub fn exec(&self, cmd: &Cmd) -> Result<()> {
        if self.dry_run {
            say!("would run: {cmd}");
            return Ok(());
        }
        say!("$ {cmd}");
        let err = self.command(cmd).exec();
        Err(err).with_context(|| format!("cannot start `{cmd}`"))
    }

    /// Runs a read-only check silently (even under `--dry-run`) and returns
    /// its stdout if it exits successfully.
    pub fn probe(&self, cmd: &Cmd) -> Option<String> {
        let out = self
            .command(cmd)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn command(&self, cmd: &Cmd) -> Command {
        let mut c = match cmd.root {
            Some(preserve_env) if cmd.via_sudo => {
                // `env` sets our variables after sudo's env_reset, whatever
                // the sudoers policy says about setenv.
                let mut c = Command::new("sudo");
                if preserve_env {
                    c.arg("-E");
                }
                c.arg("env").arg(pair("PATH", &cmd.path));
                c.args(cmd.envs.iter().map(|(k, v)| pair(k, v)));
                c.arg(&cmd.program);
                c
            }
            _ => {
                let mut c = Command::new(&cmd.program);
                c.env("PATH", &cmd.path);
                c.envs(cmd.envs.iter().map(|(k, v)| (k, v)));
                c
            }
        };
        c.args(&cmd.args);
        if let Some(cwd) = &cmd.cwd {
            c.current_dir(cwd);
        }
        c
    }
}

/// A command to run, printable as a shell line.
#[derive(Clone)]
pub struct Cmd {
    program: String,
    args: Vec<OsString>,
    envs: Vec<(String, OsString)>,
    /// `Some(preserve_env)`: run as root (via sudo when we are not root).
    root: Option<bool>,
    /// We are not root, so `root` means sudo.
    via_sudo: bool,
    /// `None`: the directory `cargo xtask` was started in.
    cwd: Option<PathBuf>,
    path: OsString,
}

impl Cmd {
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    /// Replaces the PATH the command sees.
    pub fn path(mut self, path: impl Into<OsString>) -> Self {
        self.path = path.into();
        self
    }

    /// Run in the directory `cargo xtask` was started in, not the
    /// workspace root.
    pub fn in_current_dir(mut self) -> Self {
        self.cwd = None;
        self
    }

    /// Run as root: directly when we are root, else through `sudo`
    /// (`sudo -E` when `preserve_env`).
    pub fn elevated(mut self, preserve_env: bool) -> Self {
        self.root = Some(preserve_env);
        self
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = String::new();
        match self.root {
            Some(true) if self.via_sudo => line.push_str("sudo -E "),
            Some(false) if self.via_sudo => line.push_str("sudo "),
            _ => {}
        }
        for (k, v) in &self.envs {
            let _ = write!(line, "{k}={} ", quote(&v.to_string_lossy()));
        }
        line.push_str(&quote(&self.program));
        for arg in &self.args {
            line.push(' ');
            line.push_str(&quote(&arg.to_string_lossy()));
        }
        f.write_str(&line)
    }
}

fn pair(key: &str, value: &OsString) -> OsString {
    let mut s = OsString::from(format!("{key}="));
    s.push(value);
    s
}

/// Quotes `s` for display as a POSIX shell word when needed.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// "exit status 101" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The effective uid, from /proc/self/status (no libc dependency).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}
