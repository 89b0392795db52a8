//! The process view's middle band: outstanding bytes over time, and the
//! size and lifetime percentiles.

use std::time::Duration;

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Style},
    symbols::Marker,
    text::{Line, Span},
    widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph, Row, Table},
};

use super::{bold, dim, fmt};
use crate::dashboard::model::{Detail, Percentiles};

/// Width of the percentiles box.
pub const PERCENTILES_WIDTH: u16 = 30;

pub fn history(frame: &mut Frame, area: Rect, detail: &Detail) {
    let block = Block::bordered().title(Span::styled(" outstanding bytes ", bold()));
    if detail.history.len() < 2 {
        frame.render_widget(
            Paragraph::new(Span::styled("collecting samples…", dim())).block(block),
            area,
        );
        return;
    }
    let data: Vec<(f64, f64)> = detail
        .history
        .iter()
        .map(|&(t, b)| (if t.is_finite() { t } else { 0.0 }, b as f64))
        .collect();
    let x0 = data.first().map_or(0.0, |p| p.0);
    let x1 = data.last().map_or(0.0, |p| p.0).max(x0 + 1.0);
    let max = detail.history.iter().map(|p| p.1).max().unwrap_or(0).max(1);
    let span = Duration::try_from_secs_f64(x1 - x0).unwrap_or_default();
    let chart = Chart::new(vec![
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Cyan))
            .data(&data),
    ])
    .block(block)
    .x_axis(
        Axis::default()
            .bounds([x0, x1])
            .style(dim())
            .labels([format!("-{}", fmt::age(span)), "now".into()]),
    )
    .y_axis(
        Axis::default()
            .bounds([0.0, max as f64])
            .style(dim())
            .labels(["0".to_string(), fmt::bytes(max / 2), fmt::bytes(max)]),
    )
    .legend_position(None);
    frame.render_widget(chart, area);
}

pub fn percentiles(frame: &mut Frame, area: Rect, detail: &Detail) {
    let (sizes, lives) = (&detail.sizes, &detail.lifetimes_ms);
    let size = |p: &Percentiles, v: u64| {
        if p.count == 0 {
            "-".to_string()
        } else {
            fmt::bytes(v)
        }
    };
    let life = |p: &Percentiles, v: u64| {
        if p.count == 0 {
            "-".to_string()
        } else {
            fmt::age(Duration::from_millis(v))
        }
    };
    let right = |s: String| Line::from(s).right_aligned();
    let rows = [
        ("p50", sizes.p50, lives.p50),
        ("p90", sizes.p90, lives.p90),
        ("p99", sizes.p99, lives.p99),
        ("max", sizes.max, lives.max),
    ]
    .map(|(name, s, l)| {
        Row::new([
            Line::from(name),
            right(size(sizes, s)),
            right(life(lives, l)),
        ])
    })
    .into_iter()
    .chain([Row::new([
        Line::from("count"),
        right(fmt::count(sizes.count)),
        right(fmt::count(lives.count)),
    ])
    .style(dim())]);
    let header = Row::new([
        Line::from(""),
        right("size".into()),
        right("lifetime".into()),
    ])
    .style(bold());
    let table = Table::new(
        rows,
        [
            Constraint::Length(5),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(header)
    .column_spacing(2)
    .block(Block::bordered().title(Span::styled(" percentiles ", bold())));
    frame.render_widget(table, area);
}
