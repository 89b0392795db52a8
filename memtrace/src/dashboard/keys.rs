//! Key presses → `App` actions, in the conventions of top/htop. What the
//! event loop must do in consequence comes back as an `Action`.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    app::{App, Screen, SortColumn},
    model::RowKey,
};

/// A side effect for the event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond the state change (redraw).
    None,
    Quit,
    /// Write the report of this process, then `app.set_status(path)`.
    Dump(RowKey),
    /// Start building this process's `Detail` (`app.set_detail` each refresh).
    Open(RowKey),
    /// The process view closed: stop building its detail.
    Close,
}

pub fn handle_key(app: &mut App, key: KeyEvent) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::None;
    }
    // A message stays until the next key.
    app.clear_status();
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(key.code, KeyCode::Char('c' | 'C')) {
        return Action::Quit;
    }
    if let Screen::Help { .. } = app.screen() {
        // Any key closes help.
        app.toggle_help();
        return Action::None;
    }
    if app.editing_filter() {
        return filter_key(app, key, ctrl);
    }
    if ctrl || key.modifiers.contains(KeyModifiers::ALT) {
        return Action::None;
    }
    let on_table = app.screen() == Screen::Table;
    match key.code {
        KeyCode::Char('q') => return Action::Quit,
        KeyCode::Char('?') | KeyCode::F(1) => app.toggle_help(),
        KeyCode::Char(' ') => app.toggle_pause(),
        KeyCode::Down | KeyCode::Char('j') => app.move_down(),
        KeyCode::Up | KeyCode::Char('k') => app.move_up(),
        KeyCode::PageDown => app.page_down(),
        KeyCode::PageUp => app.page_up(),
        KeyCode::Home | KeyCode::Char('g') => app.move_first(),
        KeyCode::End | KeyCode::Char('G') => app.move_last(),
        KeyCode::Enter => {
            if let Some(k) = app.open_selected() {
                return Action::Open(k);
            }
        }
        KeyCode::Esc => {
            return if app.back().is_some() {
                Action::Close
            } else {
                Action::None
            };
        }
        KeyCode::Backspace | KeyCode::Left if !on_table => {
            return if app.back().is_some() {
                Action::Close
            } else {
                Action::None
            };
        }
        KeyCode::Char('d') => {
            let target = match app.screen() {
                Screen::Process(k) => Some(k),
                _ => app.selected(),
            };
            match target {
                Some(k) => return Action::Dump(k),
                None => app.set_error("no process selected to dump"),
            }
        }
        KeyCode::Char('/') if on_table => app.start_filter(),
        KeyCode::Char('<') if on_table => app.sort_prev(),
        KeyCode::Char('>') if on_table => app.sort_next(),
        KeyCode::Char('I') if on_table => app.invert_sort(),
        KeyCode::Char(c) if on_table => {
            if let Some(col) = SortColumn::from_hotkey(c) {
                app.sort_by(col);
            }
        }
        _ => {}
    }
    Action::None
}

/// While typing the filter: text edits it, Enter keeps it, Esc clears it;
/// the arrows still move the selection.
fn filter_key(app: &mut App, key: KeyEvent, ctrl: bool) -> Action {
    match key.code {
        KeyCode::Enter => app.apply_filter(),
        KeyCode::Esc => app.clear_filter(),
        KeyCode::Backspace => app.filter_pop(),
        KeyCode::Down => app.move_down(),
        KeyCode::Up => app.move_up(),
        KeyCode::PageDown => app.page_down(),
        KeyCode::PageUp => app.page_up(),
        KeyCode::Char(c) if !ctrl && !c.is_control() => app.filter_push(c),
        _ => {}
    }
    Action::None
}
