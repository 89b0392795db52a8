//! The JSON report of `memtrace report --format json` (schema_version 1):
//! parsing, schema validation and queries.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Kind of a reported stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Heap,
    Mmap,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Heap => "heap",
            Kind::Mmap => "mmap",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "heap" => Some(Kind::Heap),
            "mmap" => Some(Kind::Mmap),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outstanding memory of one (kind, function): bytes and allocations.
pub type Truth = BTreeMap<(Kind, String), (u64, u64)>;

/// Parse the ground-truth file a workload writes when
/// `MEMTRACE_TEST_TRUTH` is set (lines `kind function bytes count`). A
/// missing file is an empty truth (the workload leaked nothing it reports).
pub fn parse_truth(text: &str) -> Result<Truth, String> {
    let mut t = Truth::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            return Err(format!("bad truth line {line:?}"));
        }
        let kind = Kind::parse(f[0]).ok_or_else(|| format!("bad kind in {line:?}"))?;
        let bytes: u64 = f[2].parse().map_err(|_| format!("bad bytes in {line:?}"))?;
        let count: u64 = f[3].parse().map_err(|_| format!("bad count in {line:?}"))?;
        let e = t.entry((kind, f[1].to_string())).or_default();
        e.0 += bytes;
        e.1 += count;
    }
    Ok(t)
}

/// True when the symbolized `actual` function name denotes `want`: equal,
/// or `want` followed by a parameter list (demangled C++ names such as
/// `wl::leak_cxx_mangled()`).
pub fn function_matches(actual: &str, want: &str) -> bool {
    actual == want || (actual.starts_with(want) && actual[want.len()..].starts_with('('))
}

/// The bare name of a (possibly demangled C++) function: without the
/// parameter list and namespaces. `wl::leak_x(int)` -> `leak_x`.
pub fn base_name(f: &str) -> &str {
    let f = match f.find('(') {
        Some(i) => &f[..i],
        None => f,
    };
    match f.rfind("::") {
        Some(i) => &f[i + 2..],
        None => f,
    }
}

/// True for the names of workload allocation sites (`leak_*`, `noleak_*`).
pub fn is_workload_site(f: &str) -> bool {
    let b = base_name(f);
    b.starts_with("leak_") || b.starts_with("noleak_")
}

/// A parsed and schema-checked report.
#[derive(Clone, Debug)]
pub struct Report {
    pub json: Value,
}

const SUMMARY_FIELDS: [&str; 7] = [
    "outstanding_bytes",
    "outstanding_allocations",
    "allocated_bytes",
    "allocations",
    "frees",
    "untracked_frees",
    "lost_events",
];

fn u64_field(v: &Value, key: &str, ctx: &str) -> Result<u64, String> {
    v.get(key)
        .ok_or_else(|| format!("{ctx}: missing field {key:?}"))?
        .as_u64()
        .ok_or_else(|| {
            format!(
                "{ctx}: field {key:?} is not a non-negative integer: {}",
                v[key]
            )
        })
}

fn str_field<'a>(v: &'a Value, key: &str, ctx: &str) -> Result<&'a str, String> {
    v.get(key)
        .ok_or_else(|| format!("{ctx}: missing field {key:?}"))?
        .as_str()
        .ok_or_else(|| format!("{ctx}: field {key:?} is not a string: {}", v[key]))
}

fn opt_field<'a>(v: &'a Value, key: &str, ctx: &str) -> Result<&'a Value, String> {
    v.get(key)
        .ok_or_else(|| format!("{ctx}: missing field {key:?} (null is allowed, absence is not)"))
}

impl Report {
    /// Parse and validate (see [`Report::validate`]).
    pub fn parse(text: &str) -> Result<Report, String> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| format!("report is not valid JSON: {e}"))?;
        let r = Report { json };
        r.validate()?;
        Ok(r)
    }

    /// Check the schema_version 1 contract: every field present with the
    /// right type; kinds are "heap"/"mmap"; every stack has something
    /// outstanding and at least one frame; frames have a hex `ip` and
    /// string-or-null `function`/`file`/`module`, integer-or-null `line`;
    /// the summary's outstanding totals equal the sums over the stacks.
    pub fn validate(&self) -> Result<(), String> {
        let r = &self.json;
        if !r.is_object() {
            return Err("report is not a JSON object".into());
        }
        let v = u64_field(r, "schema_version", "report")?;
        if v != 1 {
            return Err(format!("schema_version is {v}, expected 1"));
        }
        let pid = u64_field(r, "pid", "report")?;
        if pid == 0 {
            return Err("pid is 0".into());
        }
        str_field(r, "comm", "report")?;
        str_field(r, "exe", "report")?;
        r.get("exited")
            .and_then(Value::as_bool)
            .ok_or("report: field \"exited\" missing or not a boolean")?;
        let duration = u64_field(r, "duration_ms", "report")?;
        let summary = r.get("summary").ok_or("report: missing \"summary\"")?;
        if !summary.is_object() {
            return Err("summary is not an object".into());
        }
        for f in SUMMARY_FIELDS {
            u64_field(summary, f, "summary")?;
        }
        let stacks = r
            .get("stacks")
            .and_then(Value::as_array)
            .ok_or("report: \"stacks\" missing or not an array")?;
        let (mut bytes, mut allocs) = (0u64, 0u64);
        for (i, s) in stacks.iter().enumerate() {
            let ctx = format!("stacks[{i}]");
            let kind = str_field(s, "kind", &ctx)?;
            if Kind::parse(kind).is_none() {
                return Err(format!(
                    "{ctx}: kind {kind:?} is neither \"heap\" nor \"mmap\""
                ));
            }
            let b = u64_field(s, "outstanding_bytes", &ctx)?;
            let a = u64_field(s, "outstanding_allocations", &ctx)?;
            if a == 0 {
                return Err(format!("{ctx}: listed with 0 outstanding allocations"));
            }
            bytes += b;
            allocs += a;
            let age = u64_field(s, "oldest_age_ms", &ctx)?;
            if age > duration + 2000 {
                return Err(format!(
                    "{ctx}: oldest_age_ms {age} exceeds the trace duration {duration} ms"
                ));
            }
            let frames = s
                .get("frames")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{ctx}: \"frames\" missing or not an array"))?;
            if frames.is_empty() {
                return Err(format!("{ctx}: no frames"));
            }
            for (j, f) in frames.iter().enumerate() {
                let fctx = format!("{ctx}.frames[{j}]");
                let ip = str_field(f, "ip", &fctx)?;
                let hex = ip
                    .strip_prefix("0x")
                    .ok_or_else(|| format!("{fctx}: ip {ip:?} does not start with 0x"))?;
                u64::from_str_radix(hex, 16)
                    .map_err(|_| format!("{fctx}: ip {ip:?} is not hexadecimal"))?;
                for key in ["function", "file", "module"] {
                    let x = opt_field(f, key, &fctx)?;
                    if !(x.is_null() || x.is_string()) {
                        return Err(format!("{fctx}: {key} is neither a string nor null: {x}"));
                    }
                }
                let line = opt_field(f, "line", &fctx)?;
                if !(line.is_null() || line.is_u64()) {
                    return Err(format!(
                        "{fctx}: line is neither an integer nor null: {line}"
                    ));
                }
            }
        }
        let sb = summary["outstanding_bytes"].as_u64().unwrap_or(0);
        let sa = summary["outstanding_allocations"].as_u64().unwrap_or(0);
        if sb != bytes || sa != allocs {
            return Err(format!(
                "summary says {sb} bytes in {sa} allocations outstanding, the stacks sum to {bytes} bytes in {allocs}"
            ));
        }
        // Optional in the contract (memtrace always writes it).
        let children = match r.get("children") {
            None => &Vec::new(),
            Some(c) => c.as_array().ok_or("report: \"children\" is not an array")?,
        };
        for (i, c) in children.iter().enumerate() {
            let c = Report { json: c.clone() };
            c.validate().map_err(|e| format!("children[{i}]: {e}"))?;
            if !c.children().is_empty() {
                return Err(format!("children[{i}] has children of its own"));
            }
            u64_field(&c.json, "parent_pid", &format!("children[{i}]"))?;
        }
        Ok(())
    }

    /// The reports of the child processes followed (`--children`).
    pub fn children(&self) -> Vec<Report> {
        self.json["children"]
            .as_array()
            .map(|v| v.iter().map(|c| Report { json: c.clone() }).collect())
            .unwrap_or_default()
    }

    /// The process that created this one (a followed child's report).
    pub fn parent_pid(&self) -> Option<u64> {
        self.json["parent_pid"].as_u64()
    }

    pub fn notes(&self) -> Vec<&str> {
        self.json["notes"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u64 {
        self.json["pid"].as_u64().unwrap_or(0)
    }
    pub fn comm(&self) -> &str {
        self.json["comm"].as_str().unwrap_or("")
    }
    pub fn exe(&self) -> &str {
        self.json["exe"].as_str().unwrap_or("")
    }
    pub fn exited(&self) -> bool {
        self.json["exited"].as_bool().unwrap_or(false)
    }
    pub fn duration_ms(&self) -> u64 {
        self.json["duration_ms"].as_u64().unwrap_or(0)
    }

    /// A summary counter.
    pub fn summary(&self, field: &str) -> u64 {
        self.json["summary"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("summary.{field} missing"))
    }

    pub fn stacks(&self) -> &[Value] {
        self.json["stacks"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Stacks of `kind` whose frames[0] is `func`.
    pub fn stacks_for(&self, kind: Kind, func: &str) -> Vec<&Value> {
        self.stacks()
            .iter()
            .filter(|s| stack_kind(s) == Some(kind))
            .filter(|s| frame_fn(s, 0).is_some_and(|f| function_matches(f, func)))
            .collect()
    }

    /// (outstanding bytes, outstanding allocations) summed over the stacks
    /// of `kind` whose frames[0] is `func`.
    pub fn outstanding(&self, kind: Kind, func: &str) -> (u64, u64) {
        self.stacks_for(kind, func)
            .iter()
            .fold((0, 0), |(b, a), s| {
                (b + stack_bytes(s), a + stack_allocs(s))
            })
    }

    /// Sum of outstanding bytes over all stacks of `kind`.
    pub fn kind_bytes(&self, kind: Kind) -> u64 {
        self.stacks()
            .iter()
            .filter(|s| stack_kind(s) == Some(kind))
            .map(stack_bytes)
            .sum()
    }

    /// One line per stack, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in self.stacks() {
            out.push_str(&describe_stack(s));
            out.push('\n');
        }
        out
    }
}

pub fn stack_kind(s: &Value) -> Option<Kind> {
    s["kind"].as_str().and_then(Kind::parse)
}
pub fn stack_bytes(s: &Value) -> u64 {
    s["outstanding_bytes"].as_u64().unwrap_or(0)
}
pub fn stack_allocs(s: &Value) -> u64 {
    s["outstanding_allocations"].as_u64().unwrap_or(0)
}
pub fn frames(s: &Value) -> &[Value] {
    s["frames"].as_array().map(Vec::as_slice).unwrap_or(&[])
}
/// Function names of the frames, innermost first ("?" where unknown).
pub fn frame_names(s: &Value) -> Vec<String> {
    frames(s)
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_string())
        .collect()
}
/// Function name of frame `i` (innermost first), if symbolized.
pub fn frame_fn(s: &Value, i: usize) -> Option<&str> {
    frames(s).get(i).and_then(|f| f["function"].as_str())
}

/// `kind bytes/allocs: f0 <- f1 <- ...` (function names, or ips).
pub fn describe_stack(s: &Value) -> String {
    let fr: Vec<String> = frames(s)
        .iter()
        .map(|f| match f["function"].as_str() {
            Some(n) => n.to_string(),
            None => f["ip"].as_str().unwrap_or("?").to_string(),
        })
        .collect();
    format!(
        "{} {} bytes / {} allocs: {}",
        s["kind"].as_str().unwrap_or("?"),
        stack_bytes(s),
        stack_allocs(s),
        fr.join(" <- ")
    )
}
