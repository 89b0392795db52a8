//! The process view: who it is and its figures, outstanding bytes over
//! time with the percentiles beside, then its top stacks (the selected one
//! expanded).

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Block, HighlightSpacing, List, ListItem, ListState, Paragraph},
};

use super::{bold, chart, dim, fmt, paused, warn};
use crate::dashboard::{
    app::App,
    model::{Detail, FrameView, RowKey, StackView},
};

/// Frames shown of the selected stack, and of the others.
const FRAMES_SELECTED: usize = 16;
const FRAMES_OTHER: usize = 3;
/// Below this height the chart gives its room to the stacks.
const CHART_MIN_HEIGHT: u16 = 16;
const CHART_HEIGHT: u16 = 8;

pub fn draw(frame: &mut Frame, area: Rect, app: &App, key: RowKey) {
    let chart_h = if area.height >= CHART_MIN_HEIGHT {
        CHART_HEIGHT
    } else {
        0
    };
    let [title, figures, band, stacks] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(chart_h),
        Constraint::Min(0),
    ])
    .areas(area);
    draw_title(frame, title, app, key);
    draw_figures(frame, figures, app, key);
    let Some(detail) = app.detail() else {
        frame.render_widget(
            Paragraph::new(Span::styled("loading…", dim())).block(stacks_block(None)),
            stacks,
        );
        return;
    };
    if chart_h > 0 {
        if band.width >= 2 * chart::PERCENTILES_WIDTH {
            let [left, right] = Layout::horizontal([
                Constraint::Min(0),
                Constraint::Length(chart::PERCENTILES_WIDTH),
            ])
            .areas(band);
            chart::history(frame, left, detail);
            chart::percentiles(frame, right, detail);
        } else {
            chart::history(frame, band, detail);
        }
    }
    draw_stacks(frame, stacks, app, detail);
}

fn draw_title(frame: &mut Frame, area: Rect, app: &App, key: RowKey) {
    let row = app.row(key);
    let comm = app
        .detail()
        .map(|d| d.comm.as_str())
        .filter(|c| !c.is_empty())
        .or(row.map(|r| r.comm.as_str()))
        .unwrap_or("?");
    let mut spans = vec![
        Span::styled(format!("PID {}", key.pid), bold()),
        Span::raw("  "),
        Span::styled(comm.to_string(), bold().fg(Color::Cyan)),
    ];
    if let Some(r) = row {
        spans.push(Span::raw("  score "));
        spans.push(Span::styled(fmt::compact(r.leak_score), bold()));
        if let Some(rss) = r.rss_bytes {
            spans.push(Span::raw(format!("  RSS {}", fmt::bytes(rss))));
        }
    }
    if let Some(exe) = app.detail().and_then(|d| d.exe.as_deref()) {
        spans.push(Span::styled(format!("  {exe}"), dim()));
    }
    let mut marks = Vec::new();
    if row.is_none_or(|r| r.exited) {
        marks.push(Span::styled(" exited ", warn()));
    }
    if app.paused() {
        marks.push(Span::styled(super::PAUSED, paused()));
    }
    let marks = Line::from(marks);
    let w = (marks.width() as u16).min(area.width);
    let [left, right] = Layout::horizontal([Constraint::Min(0), Constraint::Length(w)]).areas(area);
    frame.render_widget(Paragraph::new(Line::from(spans)), left);
    frame.render_widget(Paragraph::new(marks), right);
}

fn draw_figures(frame: &mut Frame, area: Rect, app: &App, key: RowKey) {
    let Some(r) = app.row(key) else {
        frame.render_widget(
            Paragraph::new(Span::styled("no longer in the table", dim())),
            area,
        );
        return;
    };
    let spans = vec![
        Span::styled(fmt::bytes(r.outstanding_bytes), bold()),
        Span::raw(format!(
            " outstanding in {} · growth ",
            fmt::count_of(r.outstanding_allocations, "allocation")
        )),
        Span::styled(
            format!("{}/s", fmt::signed_bytes(r.growth_bytes_per_s)),
            bold(),
        ),
        Span::raw(format!(" · oldest {}", fmt::opt_age(r.oldest_age))),
    ];
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn stacks_block(detail: Option<&Detail>) -> Block<'static> {
    let title = match detail {
        Some(d) => format!(" top stacks by outstanding bytes ({}) ", d.stacks.len()),
        None => " top stacks by outstanding bytes ".into(),
    };
    let mut block = Block::bordered().title(Span::styled(title, bold()));
    if detail.is_some_and(|d| d.symbolizing) {
        block =
            block.title(Line::from(Span::styled(" resolving symbols… ", warn())).right_aligned());
    }
    block
}

fn draw_stacks(frame: &mut Frame, area: Rect, app: &App, detail: &Detail) {
    let block = stacks_block(Some(detail));
    if detail.stacks.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no outstanding allocations", dim())).block(block),
            area,
        );
        return;
    }
    let selected = app.stack_selected().min(detail.stacks.len() - 1);
    // An item taller than the list would not be drawn at all.
    let avail = usize::from(area.height.saturating_sub(2)).max(1);
    let items: Vec<ListItem> = detail
        .stacks
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let want = if i == selected {
                FRAMES_SELECTED
            } else {
                FRAMES_OTHER
            };
            ListItem::new(stack_text(i, st, want, avail, detail.symbolizing))
        })
        .collect();
    let list = List::new(items)
        .block(block)
        .highlight_symbol("▶ ")
        .highlight_style(Style::new().add_modifier(Modifier::BOLD))
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = ListState::default()
        .with_offset(app.stack_offset().get())
        .with_selected(Some(selected));
    frame.render_stateful_widget(list, area, &mut state);
    app.stack_offset().set(state.offset());
}

/// A stack's summary line, then up to `want` frames, in at most `avail`
/// lines.
fn stack_text(
    i: usize,
    st: &StackView,
    want: usize,
    avail: usize,
    symbolizing: bool,
) -> Text<'static> {
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("#{} ", i + 1), bold()),
        Span::styled(format!("{:<5}", st.kind), dim()),
        Span::styled(fmt::bytes(st.outstanding_bytes), bold()),
        Span::raw(format!(
            " in {} · oldest {}",
            fmt::count_of(st.outstanding_allocations, "allocation"),
            fmt::opt_age(st.oldest_age)
        )),
    ])];
    if st.frames.is_empty() {
        let note = if symbolizing {
            "resolving symbols…"
        } else {
            "(no frames)"
        };
        lines.push(Line::from(Span::styled(format!("   {note}"), dim())));
    }
    // Room after the summary line, for the frames and the "more" line.
    let room = avail.saturating_sub(1);
    let n = st.frames.len();
    let shown = if n <= want.min(room) {
        n
    } else {
        want.min(room.saturating_sub(1))
    };
    lines.extend(
        st.frames
            .iter()
            .take(shown)
            .map(|f| frame_line(f, symbolizing)),
    );
    if shown < n {
        let more = n - shown;
        let s = if more == 1 { "" } else { "s" };
        lines.push(Line::from(Span::styled(
            format!("   … {more} more frame{s}"),
            dim(),
        )));
    }
    lines.truncate(avail);
    Text::from(lines)
}

/// `   function  file:line  module`
fn frame_line(f: &FrameView, symbolizing: bool) -> Line<'static> {
    let mut spans = vec![Span::raw("   ")];
    match &f.function {
        Some(func) => spans.push(Span::raw(func.clone())),
        None => {
            spans.push(Span::styled(format!("{:#x}", f.ip), dim()));
            if symbolizing {
                spans.push(Span::styled(" (resolving…)", dim()));
            }
        }
    }
    if let Some(file) = &f.file {
        let loc = match f.line {
            Some(l) => format!("  {}:{l}", fmt::short_path(file)),
            None => format!("  {}", fmt::short_path(file)),
        };
        spans.push(Span::styled(loc, Style::new().fg(Color::Green)));
    }
    if let Some(m) = &f.module {
        spans.push(Span::styled(format!("  {}", fmt::file_name(m)), dim()));
    }
    Line::from(spans)
}
