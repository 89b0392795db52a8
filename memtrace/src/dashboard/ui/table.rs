//! The process table. Columns drop out as the terminal narrows (least
//! important first, never the sort column); the command takes what is left.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Text},
    widgets::{Cell, HighlightSpacing, Paragraph, Row, Table, TableState},
};

use super::{bar, dim, fmt};
use crate::dashboard::{app::App, app::SortColumn, model};

/// Width of the selection marker.
const MARK: &str = "▶ ";
/// The command column gets at least this much before columns are dropped.
const COMMAND_MIN: u16 = 12;
/// Dropped first to last as the width shrinks; PID and the command always
/// stay.
const DROP_ORDER: [SortColumn; 8] = [
    SortColumn::FreesPerSec,
    SortColumn::AllocsPerSec,
    SortColumn::Rss,
    SortColumn::Allocations,
    SortColumn::Age,
    SortColumn::Growth,
    SortColumn::Score,
    SortColumn::Bytes,
];

/// Width of a figure column (room for its title and the sort arrow).
fn width(col: SortColumn) -> u16 {
    match col {
        SortColumn::Pid => 7,
        SortColumn::Score => 6,
        SortColumn::Bytes => 8,
        SortColumn::Allocations => 7,
        SortColumn::Growth => 9,
        SortColumn::Age => 7,
        SortColumn::Rss => 8,
        SortColumn::AllocsPerSec => 8,
        SortColumn::FreesPerSec => 7,
        SortColumn::Command => COMMAND_MIN,
    }
}

/// The columns shown at `total` width, in display order (command last).
pub fn columns(total: u16, sort: SortColumn) -> Vec<SortColumn> {
    let mut cols: Vec<SortColumn> = SortColumn::ALL.to_vec();
    // Selection marker, exited marker, and one space after each column but
    // the last.
    let need = |cols: &[SortColumn]| -> u16 {
        MARK.chars().count() as u16 + 2 + cols.iter().map(|&c| width(c) + 1).sum::<u16>() - 1
    };
    for drop in DROP_ORDER {
        if need(&cols) <= total {
            break;
        }
        if drop != sort {
            cols.retain(|&c| c != drop);
        }
    }
    // Too narrow even so: the sort column goes too.
    if need(&cols) > total && DROP_ORDER.contains(&sort) {
        cols.retain(|&c| c != sort);
    }
    cols
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    if area.height == 0 {
        return;
    }
    let cols = columns(area.width, app.sort());
    let arrow = if app.descending() { "▼" } else { "▲" };
    let header = Row::new(std::iter::once(Cell::from("")).chain(cols.iter().map(|&c| {
        let mut title = c.title().to_string();
        let mut style = Style::new();
        if c == app.sort() {
            title.push_str(arrow);
            style = style.add_modifier(Modifier::BOLD | Modifier::UNDERLINED);
        }
        Cell::from(align(c, title)).style(style)
    })))
    .style(bar());

    let rows = app.visible_rows();
    let selected = app
        .selected()
        .and_then(|k| rows.iter().position(|r| r.key == k));
    let body: Vec<Row> = rows.iter().map(|r| row(r, &cols)).collect();
    let widths = std::iter::once(Constraint::Length(1)).chain(cols.iter().map(|&c| {
        if c == SortColumn::Command {
            Constraint::Fill(1)
        } else {
            Constraint::Length(width(c))
        }
    }));
    let table = Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(MARK)
        .highlight_spacing(HighlightSpacing::Always);

    let mut state = TableState::new()
        .with_offset(app.table_offset().get())
        .with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
    app.table_offset().set(state.offset());
    app.table_height()
        .set(usize::from(area.height.saturating_sub(1)));

    if rows.is_empty() && area.height > 2 {
        let msg = if app.snapshot().rows.is_empty() {
            "no allocations seen yet".to_string()
        } else {
            format!("no process matches \"{}\"", app.filter())
        };
        let [_, middle, _] = Layout::vertical([
            Constraint::Fill(1),
            Constraint::Length(1),
            Constraint::Fill(1),
        ])
        .areas(area);
        frame.render_widget(Paragraph::new(msg).style(dim()).centered(), middle);
    }
}

fn row<'a>(r: &'a model::Row, cols: &[SortColumn]) -> Row<'a> {
    let cells = std::iter::once(Cell::from(if r.exited { "x" } else { "" }))
        .chain(cols.iter().map(|&c| Cell::from(align(c, value(r, c)))));
    let style = if r.exited { dim() } else { Style::new() };
    Row::new(cells).style(style)
}

fn value(r: &model::Row, col: SortColumn) -> String {
    match col {
        SortColumn::Pid => r.pid.to_string(),
        SortColumn::Score => fmt::compact(r.leak_score),
        SortColumn::Bytes => fmt::bytes(r.outstanding_bytes),
        SortColumn::Allocations => fmt::count(r.outstanding_allocations),
        SortColumn::Growth => fmt::signed_bytes(r.growth_bytes_per_s),
        SortColumn::Age => fmt::opt_age(r.oldest_age),
        SortColumn::Rss => r.rss_bytes.map_or_else(|| "-".into(), fmt::bytes),
        SortColumn::AllocsPerSec => fmt::compact(r.allocs_per_s),
        SortColumn::FreesPerSec => fmt::compact(r.frees_per_s),
        SortColumn::Command => r.comm.clone(),
    }
}

/// Figures right-aligned, the command left-aligned.
fn align<'a>(col: SortColumn, s: String) -> Text<'a> {
    let line = Line::from(s);
    if col == SortColumn::Command {
        Text::from(line)
    } else {
        Text::from(line.right_aligned())
    }
}
