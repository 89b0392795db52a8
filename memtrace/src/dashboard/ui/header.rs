//! The table screen's header: what is watched and since when, host-wide
//! figures, and what memtrace itself costs.

use ratatui::{
    Frame,
    layout::Rect,
    text::{Line, Span},
    widgets::{Clear, Paragraph},
};

use super::{bold, dim, fmt, paused, warn};
use crate::dashboard::app::App;

pub const HEIGHT: u16 = 3;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let h = &app.snapshot().header;
    let exited = app.snapshot().rows.iter().filter(|r| r.exited).count();

    let since = if h.since.is_empty() {
        format!("watching for {}", fmt::duration(h.watching_for))
    } else {
        format!("since {} ({}", h.since, fmt::duration(h.watching_for))
    };
    let scope = if h.scope.is_empty() {
        "all processes"
    } else {
        &h.scope
    };
    let title = Line::from(vec![
        Span::styled("memtrace", bold()),
        Span::raw(format!(" · {scope} · {since}")),
        Span::styled("; earlier allocations unknown", dim()),
        Span::raw(if h.since.is_empty() { "" } else { ")" }),
    ]);

    let mut procs = format!("{} processes", h.processes);
    if exited > 0 {
        procs.push_str(&format!(" (+{exited} exited)"));
    }
    let totals = Line::from(vec![
        Span::raw("Outstanding "),
        Span::styled(fmt::bytes(h.outstanding_bytes), bold()),
        Span::raw(" · "),
        Span::styled(fmt::compact(h.allocs_per_s), bold()),
        Span::raw(" allocs/s · "),
        Span::raw(procs),
        Span::raw(format!(" · rates over {}", fmt::duration(h.window))),
    ]);

    let lost = if h.lost_events > 0 { warn() } else { bold() };
    let untracked = if h.untracked_frees > 0 {
        warn()
    } else {
        bold()
    };
    let mut cost = vec![
        Span::raw("memtrace: "),
        Span::styled(fmt::compact(h.events_per_s), bold()),
        Span::raw(" events/s · "),
        Span::styled(fmt::count(h.lost_events), lost),
        Span::raw(" lost · "),
        Span::styled(fmt::count(h.untracked_frees), untracked),
        Span::raw(" untracked frees · CPU "),
        Span::styled(fmt::percent(h.cpu_percent), bold()),
    ];
    // Rarer losses, shown only when they happen.
    for (n, what) in [(h.stack_failures, " cut stacks"), (h.dropped, " dropped")] {
        if n > 0 {
            cost.push(Span::raw(" · "));
            cost.push(Span::styled(fmt::count(n), warn()));
            cost.push(Span::raw(what));
        }
    }
    let cost = Line::from(cost);

    frame.render_widget(Paragraph::new(vec![title, totals, cost]), area);
    if app.paused() && area.height >= HEIGHT {
        let w = (super::PAUSED.len() as u16).min(area.width);
        let marker = Rect::new(area.right() - w, area.y + HEIGHT - 1, w, 1);
        frame.render_widget(Clear, marker);
        frame.render_widget(
            Paragraph::new(Span::styled(super::PAUSED, paused())),
            marker,
        );
    }
}
