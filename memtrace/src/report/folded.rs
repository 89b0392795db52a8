//! Folded stacks (`root;...;leaf bytes`), the input of flamegraph tools.

use super::Report;

/// The command's stacks, then each followed child's under a root frame
/// naming it (`comm [pid N]`).
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    render_one(&mut out, r, None);
    for c in &r.children {
        let root = format!("{} [pid {}]", c.comm, c.pid).replace([';', ' '], "_");
        render_one(&mut out, c, Some(&root));
    }
    out
}

fn render_one(out: &mut String, r: &Report, root: Option<&str>) {
    for s in &r.stacks {
        let mut names: Vec<String> = s
            .frames
            .iter()
            .rev()
            .map(|f| f.label().replace([';', ' '], "_"))
            .collect();
        if names.is_empty() {
            names.push("[unknown]".into());
        }
        if s.kind == "mmap" {
            names.push("[mmap]".into());
        }
        if let Some(root) = root {
            names.insert(0, root.to_string());
        }
        out.push_str(&names.join(";"));
        out.push(' ');
        out.push_str(&s.outstanding_bytes.to_string());
        out.push('\n');
    }
}
