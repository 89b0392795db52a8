//! Folded stacks (`root;...;leaf bytes`), the input of flamegraph tools.

use super::Report;

pub fn render(r: &Report) -> String {
    let mut out = String::new();
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
        out.push_str(&names.join(";"));
        out.push(' ');
        out.push_str(&s.outstanding_bytes.to_string());
        out.push('\n');
    }
    out
}
