//! Drawing the dashboard: one full frame per call (ratatui diffs frames, so
//! nothing flickers), from `App` alone. Any terminal size is drawn without
//! panicking; small ones show less.

mod chart;
mod fmt;
mod footer;
mod header;
mod help;
mod process;
mod table;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
};

use super::app::{App, Screen};

/// Draw the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    let [main, status] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(area);
    match app.screen() {
        Screen::Table => {
            // On tiny terminals the table's first rows matter more.
            let head_h = header::HEIGHT.min(main.height.saturating_sub(2));
            let [head, body] =
                Layout::vertical([Constraint::Length(head_h), Constraint::Min(0)]).areas(main);
            header::draw(frame, head, app);
            table::draw(frame, body, app);
        }
        Screen::Process(key) => process::draw(frame, main, app, key),
        Screen::Help { .. } => help::draw(frame, main),
    }
    footer::draw(frame, status, app);
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

/// Bars: the table's column headers, the PAUSED marker.
fn bar() -> Style {
    Style::new().fg(Color::Black).bg(Color::Cyan)
}

fn paused() -> Style {
    Style::new()
        .fg(Color::Black)
        .bg(Color::Yellow)
        .add_modifier(Modifier::BOLD)
}

fn warn() -> Style {
    Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
}

fn error() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}

const PAUSED: &str = " PAUSED ";
