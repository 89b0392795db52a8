//! `keys::handle_key`: what each key does to the app, and what it asks of
//! the event loop.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{pids, populated};
use crate::dashboard::{
    app::{App, Screen, SortColumn},
    keys::{Action, handle_key},
    ui::fixtures::{self, key},
};

fn press(app: &mut App, code: KeyCode) -> Action {
    handle_key(app, KeyEvent::new(code, KeyModifiers::NONE))
}

fn chr(app: &mut App, c: char) -> Action {
    // Terminals report uppercase letters with SHIFT.
    let mods = if c.is_ascii_uppercase() {
        KeyModifiers::SHIFT
    } else {
        KeyModifiers::NONE
    };
    handle_key(app, KeyEvent::new(KeyCode::Char(c), mods))
}

fn ctrl_c() -> KeyEvent {
    KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
}

#[test]
fn quit_with_q_or_ctrl_c() {
    let mut app = populated();
    assert_eq!(chr(&mut app, 'q'), Action::Quit);
    assert_eq!(handle_key(&mut app, ctrl_c()), Action::Quit);
    // Ctrl-C quits from anywhere, even while typing a filter or in help.
    chr(&mut app, '/');
    assert_eq!(handle_key(&mut app, ctrl_c()), Action::Quit);
    let mut app = populated();
    chr(&mut app, '?');
    assert_eq!(handle_key(&mut app, ctrl_c()), Action::Quit);
}

#[test]
fn navigation_keys() {
    let mut app = populated();
    let order = pids(&app);
    let at = |app: &App| app.selected().map(|k| k.pid);
    chr(&mut app, 'j');
    assert_eq!(at(&app), Some(order[1]));
    press(&mut app, KeyCode::Down);
    assert_eq!(at(&app), Some(order[2]));
    chr(&mut app, 'k');
    press(&mut app, KeyCode::Up);
    assert_eq!(at(&app), Some(order[0]));
    chr(&mut app, 'G');
    assert_eq!(at(&app), Some(order[9]));
    chr(&mut app, 'g');
    assert_eq!(at(&app), Some(order[0]));
    press(&mut app, KeyCode::End);
    assert_eq!(at(&app), Some(order[9]));
    press(&mut app, KeyCode::Home);
    assert_eq!(at(&app), Some(order[0]));
    app.table_height().set(4);
    press(&mut app, KeyCode::PageDown);
    assert_eq!(at(&app), Some(order[4]));
    press(&mut app, KeyCode::PageUp);
    assert_eq!(at(&app), Some(order[0]));
}

#[test]
fn sort_keys() {
    let mut app = populated();
    for col in SortColumn::ALL {
        chr(&mut app, col.hotkey());
        assert_eq!(app.sort(), col);
    }
    chr(&mut app, 'S');
    chr(&mut app, '>');
    assert_eq!(app.sort(), SortColumn::Bytes);
    chr(&mut app, '<');
    chr(&mut app, '<');
    assert_eq!(app.sort(), SortColumn::Pid);
    chr(&mut app, 'I');
    assert!(app.descending());
    chr(&mut app, 'I');
    assert!(!app.descending());
    // Hotkeys need no clash with other keys: every one is distinct.
    let mut keys: Vec<char> = SortColumn::ALL.iter().map(|c| c.hotkey()).collect();
    keys.extend(['G', 'I']);
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n);
    // With Ctrl or Alt, letters do nothing.
    handle_key(
        &mut app,
        KeyEvent::new(KeyCode::Char('B'), KeyModifiers::ALT),
    );
    assert_eq!(app.sort(), SortColumn::Pid);
}

#[test]
fn filter_editing_mode() {
    let mut app = populated();
    assert_eq!(chr(&mut app, '/'), Action::None);
    assert!(app.editing_filter());
    // Letters are text now, even q and sort keys.
    for c in "pqS".chars() {
        assert_eq!(chr(&mut app, c), Action::None);
    }
    assert_eq!(app.filter(), "pqS");
    assert_eq!(app.sort(), SortColumn::Score);
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    assert_eq!(app.filter(), "p");
    assert_eq!(pids(&app), [1337, 2718]);
    // Arrows still move.
    press(&mut app, KeyCode::Down);
    assert_eq!(app.selected(), Some(key(2718)));
    // Enter keeps the filter.
    press(&mut app, KeyCode::Enter);
    assert!(!app.editing_filter());
    assert_eq!(app.filter(), "p");
    // '/' edits it again; Esc clears it.
    chr(&mut app, '/');
    chr(&mut app, 'y');
    assert_eq!(app.filter(), "py");
    press(&mut app, KeyCode::Esc);
    assert!(!app.editing_filter());
    assert_eq!(app.filter(), "");
    assert_eq!(app.selected(), Some(key(2718)));
}

#[test]
fn esc_on_the_table_clears_a_kept_filter() {
    let mut app = populated();
    chr(&mut app, '/');
    chr(&mut app, 'n');
    press(&mut app, KeyCode::Enter);
    assert_eq!(press(&mut app, KeyCode::Esc), Action::None);
    assert_eq!(app.filter(), "");
}

#[test]
fn open_close_and_dump() {
    let mut app = populated();
    assert_eq!(chr(&mut app, 'd'), Action::Dump(key(4242)));
    chr(&mut app, 'j');
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Action::Open(key(4_194_303))
    );
    assert_eq!(app.screen(), Screen::Process(key(4_194_303)));
    assert_eq!(chr(&mut app, 'd'), Action::Dump(key(4_194_303)));
    // Sorting and filtering belong to the table.
    chr(&mut app, 'B');
    chr(&mut app, '/');
    assert_eq!(app.sort(), SortColumn::Score);
    assert!(!app.editing_filter());
    assert_eq!(press(&mut app, KeyCode::Esc), Action::Close);
    assert_eq!(app.screen(), Screen::Table);
    // Left and Backspace go back too, but do nothing on the table.
    press(&mut app, KeyCode::Enter);
    assert_eq!(press(&mut app, KeyCode::Left), Action::Close);
    press(&mut app, KeyCode::Enter);
    assert_eq!(press(&mut app, KeyCode::Backspace), Action::Close);
    chr(&mut app, '/');
    chr(&mut app, 'p');
    press(&mut app, KeyCode::Enter);
    assert_eq!(press(&mut app, KeyCode::Left), Action::None);
    assert_eq!(press(&mut app, KeyCode::Backspace), Action::None);
    assert_eq!(app.filter(), "p");
    assert_eq!(press(&mut app, KeyCode::Esc), Action::None);
    // Nothing to open or dump in an empty table.
    let mut empty = App::new();
    assert_eq!(press(&mut empty, KeyCode::Enter), Action::None);
    assert_eq!(chr(&mut empty, 'd'), Action::None);
    assert!(empty.status().is_some());
}

#[test]
fn stack_scrolling_in_the_process_view() {
    let mut app = populated();
    press(&mut app, KeyCode::Enter);
    app.set_detail(fixtures::detail());
    chr(&mut app, 'j');
    chr(&mut app, 'j');
    assert_eq!(app.stack_selected(), 2);
    chr(&mut app, 'k');
    assert_eq!(app.stack_selected(), 1);
    chr(&mut app, 'G');
    assert_eq!(app.stack_selected(), 3);
    assert_eq!(app.selected(), Some(key(4242)));
}

#[test]
fn help_and_any_key_closes_it() {
    let mut app = populated();
    chr(&mut app, '?');
    assert_eq!(app.screen(), Screen::Help { back: None });
    // Even q only closes help.
    assert_eq!(chr(&mut app, 'q'), Action::None);
    assert_eq!(app.screen(), Screen::Table);
    press(&mut app, KeyCode::F(1));
    chr(&mut app, 'j');
    assert_eq!(app.screen(), Screen::Table);
    assert_eq!(app.selected(), Some(key(4242)), "the key only closed help");
}

#[test]
fn a_key_clears_the_status_message() {
    let mut app = populated();
    app.set_status("report written");
    chr(&mut app, 'j');
    assert!(app.status().is_none());
}

#[test]
fn space_pauses() {
    let mut app = populated();
    chr(&mut app, ' ');
    assert!(app.paused());
    chr(&mut app, ' ');
    assert!(!app.paused());
}

#[test]
fn key_releases_are_ignored() {
    let mut app = populated();
    let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
    release.kind = KeyEventKind::Release;
    assert_eq!(handle_key(&mut app, release), Action::None);
}
