//! Independent cross-check of the heap ground truth with valgrind's leak
//! checker (unprivileged; skipped when valgrind is not installed).
//!
//! valgrind reports every block still allocated at exit with its allocation
//! stack; a block resized by realloc carries the realloc's stack, which is
//! memtrace's attribution rule too. It does not track mmap regions, and it
//! cannot run pvalloc or a throwing operator new: the workloads skip those
//! under `MEMTRACE_TEST_VALGRIND=1` and their ground-truth dump says what
//! actually ran.

use crate::TempDir;
use crate::check::{TRUTH_ENV, read_truth, scenario_command};
use crate::report::{Kind, Truth, function_matches, is_workload_site};
use crate::run::run_with_timeout;
use crate::scenarios::Scenario;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// True when `valgrind --version` runs.
pub fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One error record of valgrind's XML output.
#[derive(Debug)]
struct VgError {
    kind: String,
    bytes: u64,
    blocks: u64,
    frames: Vec<String>,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn tag<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let i = s.find(&open)? + open.len();
    let j = s[i..].find(&close)? + i;
    Some(&s[i..j])
}

fn parse_xml(xml: &str) -> Vec<VgError> {
    let mut v = Vec::new();
    for chunk in xml.split("<error>").skip(1) {
        let body = chunk.split("</error>").next().unwrap_or("");
        let kind = tag(body, "kind").unwrap_or("?").to_string();
        let bytes = tag(body, "leakedbytes")
            .and_then(|x| x.trim().parse().ok())
            .unwrap_or(0);
        let blocks = tag(body, "leakedblocks")
            .and_then(|x| x.trim().parse().ok())
            .unwrap_or(0);
        let stack = tag(body, "stack").unwrap_or("");
        let frames = stack
            .split("<frame>")
            .skip(1)
            .map(|f| tag(f, "fn").map(unescape).unwrap_or_else(|| "???".into()))
            .collect();
        v.push(VgError {
            kind,
            bytes,
            blocks,
            frames,
        });
    }
    v
}

fn is_allocator(f: &str) -> bool {
    const NAMES: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "free",
        "memalign",
        "posix_memalign",
        "aligned_alloc",
        "valloc",
        "pvalloc",
    ];
    NAMES.contains(&f) || f.starts_with("operator new")
}

fn plain(f: &str) -> &str {
    match f.find('(') {
        Some(i) => &f[..i],
        None => f,
    }
}

/// Run the scenario under valgrind; compare the outstanding heap blocks of
/// the workload's allocation sites with the ground truth the workload
/// wrote, and the callers with the scenario table. Returns the
/// differences (empty: agreement).
pub fn valgrind_errors(s: &Scenario) -> Vec<String> {
    let (exe, args) = scenario_command(s);
    let dir = TempDir::new("valgrind");
    let truth_path = dir.join("truth");
    let xml_pattern = dir.join("vg.%p.xml");
    let mut c = Command::new("valgrind");
    c.args([
        "-q",
        "--leak-check=full",
        "--show-leak-kinds=all",
        "--num-callers=40",
        "--trace-children=yes",
        "--child-silent-after-fork=yes",
        "--xml=yes",
    ])
    .arg(format!("--xml-file={}", xml_pattern.display()))
    .arg(&exe)
    .args(&args)
    .env(TRUTH_ENV, &truth_path)
    .env("MEMTRACE_TEST_VALGRIND", "1");
    // stdin from a file: run_with_timeout owns the output pipes.
    let input = dir.join("stdin");
    std::fs::File::create(&input)
        .and_then(|mut f| f.write_all(s.stdin.as_bytes()))
        .expect("stdin file");
    c.stdin(std::fs::File::open(&input).expect("open stdin file"));
    let out = run_with_timeout(&mut c, Duration::from_secs(120));
    let mut errs = Vec::new();
    if !out.status.success() {
        return vec![format!("{}: under valgrind: {}", s.name, out.describe())];
    }
    // One XML file per process (%p). exec keeps the pid (the file then
    // holds the final image's report); forked children get larger pids:
    // the traced process is the smallest pid.
    let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("vg.")?
                .strip_suffix(".xml")?
                .parse()
                .ok()?;
            Some((pid, e.path()))
        })
        .collect();
    files.sort();
    let Some((_, xml_path)) = files.first() else {
        return vec![format!("{}: valgrind wrote no XML", s.name)];
    };
    let xml = std::fs::read_to_string(xml_path).expect("read valgrind xml");
    let mut seen = Truth::new();
    for e in parse_xml(&xml) {
        if e.kind == "FishyValue" {
            continue; // the intentionally failing huge allocations
        }
        if !e.kind.starts_with("Leak_") {
            errs.push(format!(
                "{}: valgrind error {} at {:?}",
                s.name, e.kind, e.frames
            ));
            continue;
        }
        let rest: Vec<&str> = e
            .frames
            .iter()
            .map(String::as_str)
            .skip_while(|f| is_allocator(f))
            .collect();
        for (i, f) in rest.iter().enumerate().skip(1) {
            if is_workload_site(f) {
                errs.push(format!(
                    "{}: workload site {f} is frame {i} of a leak: {:?}",
                    s.name, e.frames
                ));
            }
        }
        let Some(f0) = rest.first().copied() else {
            continue;
        };
        if !is_workload_site(f0) {
            continue;
        }
        let v = seen.entry((Kind::Heap, plain(f0).to_string())).or_default();
        v.0 += e.bytes;
        v.1 += e.blocks;
        if let Some(exp) = s
            .expect
            .iter()
            .find(|x| x.kind == Kind::Heap && function_matches(f0, x.func))
            && let Some(caller) = exp.caller
            && !rest.get(1).is_some_and(|f| function_matches(f, caller))
        {
            errs.push(format!(
                "{}: {f0} called from {:?}, the table says {caller}",
                s.name,
                rest.get(1)
            ));
        }
    }
    let dumped: Truth = read_truth(&truth_path)
        .into_iter()
        .filter(|((k, _), _)| *k == Kind::Heap)
        .collect();
    if seen != dumped {
        errs.push(format!(
            "{}: valgrind sees outstanding\n    {seen:?}\nthe workload's ground truth says\n    {dumped:?}",
            s.name
        ));
    }
    errs
}
