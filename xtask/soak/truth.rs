//! The ground truth the workload's processes wrote (`t<SEQ>.truth`, and
//! the parent's `key=value` files).

use std::{collections::HashMap, fs, path::Path};

/// One workload process's ground truth (`t<SEQ>.truth`).
#[derive(Clone, Debug)]
pub(super) struct Truth {
    pub(super) seq: u64,
    pub(super) pid: u32,
    pub(super) role: String,
    pub(super) comm: String,
    pub(super) state: String,
    pub(super) allocs: u64,
    pub(super) frees: u64,
    pub(super) out_allocs: u64,
    pub(super) out_bytes: u64,
    pub(super) reallocs: u64,
    pub(super) leaked_bytes: u64,
    pub(super) rate: u64,
    pub(super) end_boot_ns: i64,
}

pub(super) fn kv(s: &str) -> HashMap<String, String> {
    s.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn parse_truth(s: &str) -> Result<Truth, String> {
    let m = kv(s);
    let text = |k: &str| m.get(k).cloned().ok_or(format!("no {k}= in {s:?}"));
    let num = |k: &str| -> Result<u64, String> {
        text(k)?.parse().map_err(|_| format!("bad {k}= in {s:?}"))
    };
    Ok(Truth {
        seq: num("seq")?,
        pid: num("pid")? as u32,
        role: text("role")?,
        comm: text("comm")?,
        state: text("state")?,
        allocs: num("allocs")?,
        frees: num("frees")?,
        out_allocs: num("out_allocs")?,
        out_bytes: num("out_bytes")?,
        reallocs: num("reallocs")?,
        leaked_bytes: num("leaked_bytes")?,
        rate: num("rate")?,
        end_boot_ns: num("end_boot_ns")? as i64,
    })
}

pub(super) fn read_truths(dir: &Path) -> Result<Vec<Truth>, String> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('t') && name.ends_with(".truth") {
            let s = fs::read_to_string(e.path()).map_err(|e| format!("{name}: {e}"))?;
            v.push(parse_truth(&s).map_err(|e| format!("{name}: {e}"))?);
        }
    }
    v.sort_by_key(|t| t.seq);
    Ok(v)
}
