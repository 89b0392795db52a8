//! The help screen: keys, then the columns and their sort keys.

use ratatui::{
    Frame,
    layout::Rect,
    text::{Line, Span},
    widgets::Paragraph,
};

use super::{bold, dim};
use crate::dashboard::app::SortColumn;

const KEYS: [(&str, &str); 9] = [
    (
        "↑ ↓  k j",
        "move the selection (in a process view: the stack)",
    ),
    (
        "PgUp PgDn",
        "a page up / down;  Home End  g G: first / last",
    ),
    (
        "Enter",
        "open the selected process: its stacks, chart, percentiles",
    ),
    ("Esc", "back to the table; on the table, clear the filter"),
    ("/", "filter by command or PID (Enter: keep, Esc: clear)"),
    (
        "< >  I",
        "sort by the column to the left / right; invert the sort",
    ),
    ("space", "pause: freeze the figures"),
    ("d", "dump the selected process's report to a file"),
    ("q  Ctrl-C", "quit"),
];

pub fn draw(frame: &mut Frame, area: Rect) {
    let mut lines = vec![
        Line::from(vec![
            Span::styled("memtrace", bold()),
            Span::raw(" — live memory-leak dashboard"),
        ]),
        Line::from(Span::styled(
            "Only allocations made since memtrace started are seen.",
            dim(),
        )),
        Line::default(),
    ];
    for (keys, what) in KEYS {
        lines.push(Line::from(vec![
            Span::styled(format!("  {keys:<15}"), bold()),
            Span::raw(what),
        ]));
    }
    lines.push(Line::default());
    lines.push(Line::from(Span::styled("Sort keys and columns", bold())));
    for col in SortColumn::ALL {
        if matches!(col, SortColumn::Pid | SortColumn::Command) {
            continue;
        }
        lines.push(column(col, col.describe()));
    }
    let (p, c) = (SortColumn::Pid, SortColumn::Command);
    let mut both = column(p, "");
    both.spans.extend(column(c, c.describe()).spans);
    lines.push(both);
    frame.render_widget(Paragraph::new(lines), area);
}

/// `  S  SCORE    leak score: …`
fn column(col: SortColumn, what: &'static str) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("  {}  ", col.hotkey()), bold()),
        Span::raw(format!("{:<9}", col.title())),
        Span::styled(what, dim()),
    ])
}
