//! The bottom line: the filter being typed, else the last status message,
//! else the main keys; on the table, what is shown and how it is sorted.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Position, Rect},
    text::{Line, Span},
    widgets::Paragraph,
};

use super::{bold, dim, error};
use crate::dashboard::app::{App, Screen, StatusKind};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let right = if app.screen() == Screen::Table {
        table_summary(app)
    } else {
        Line::default()
    };
    // The summary only when it fits in half the line, after a space.
    let right_width = match right.width() as u16 {
        0 => 0,
        w if w < area.width / 2 => w + 1,
        _ => 0,
    };
    let [left_area, right_area] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(right_width)]).areas(area);

    let left = if app.editing_filter() {
        let prefix = "Filter: ";
        let x = left_area.x as usize + prefix.len() + app.filter().chars().count();
        if x < (left_area.x + left_area.width) as usize {
            frame.set_cursor_position(Position::new(x as u16, left_area.y));
        }
        Line::from(vec![
            Span::styled(prefix, bold()),
            Span::raw(app.filter().to_string()),
            Span::styled("  (Enter: keep, Esc: clear)", dim()),
        ])
    } else if let Some(status) = app.status() {
        let style = match status.kind {
            StatusKind::Info => bold(),
            StatusKind::Error => error(),
        };
        Line::from(Span::styled(status.text.clone(), style))
    } else {
        hints(app.screen(), usize::from(left_area.width))
    };
    frame.render_widget(Paragraph::new(left), left_area);
    frame.render_widget(Paragraph::new(right.right_aligned()), right_area);
}

/// The main keys of `screen`, as many as fit in `width`.
fn hints(screen: Screen, width: usize) -> Line<'static> {
    let keys: &[(&str, &str)] = match screen {
        Screen::Table => &[
            ("?", "help"),
            ("/", "filter"),
            ("Enter", "open"),
            ("d", "dump"),
            ("space", "pause"),
            ("q", "quit"),
        ],
        Screen::Process(_) => &[
            ("?", "help"),
            ("j/k", "stacks"),
            ("Esc", "back"),
            ("d", "dump"),
            ("space", "pause"),
            ("q", "quit"),
        ],
        Screen::Help { .. } => return Line::from(Span::styled("press any key to close", dim())),
    };
    let mut spans = Vec::new();
    let mut used = 0;
    for (i, (key, what)) in keys.iter().enumerate() {
        let sep = if i > 0 { 2 } else { 0 };
        let w = sep + key.chars().count() + 1 + what.len();
        if used + w > width {
            break;
        }
        used += w;
        if sep > 0 {
            spans.push(Span::raw("  "));
        }
        spans.push(Span::styled(*key, bold()));
        spans.push(Span::raw(format!(" {what}")));
    }
    Line::from(spans)
}

/// `filter "py" · 3/42 · sort SCORE▼`
fn table_summary(app: &App) -> Line<'static> {
    let mut parts = Vec::new();
    if !app.filter().is_empty() && !app.editing_filter() {
        parts.push(format!("filter \"{}\"", app.filter()));
    }
    if !app.filter().is_empty() {
        parts.push(format!(
            "{}/{}",
            app.visible_rows().len(),
            app.snapshot().rows.len()
        ));
    }
    let arrow = if app.descending() { "▼" } else { "▲" };
    parts.push(format!("sort {}{arrow}", app.sort().title()));
    Line::from(Span::styled(parts.join(" · "), dim()))
}
