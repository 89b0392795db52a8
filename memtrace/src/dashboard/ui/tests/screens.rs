//! Every screen rendered with ratatui's `TestBackend`, as insta snapshots.

use ratatui::{Terminal, backend::TestBackend};

use super::populated;
use crate::dashboard::{
    app::{App, SortColumn},
    ui::{draw, fixtures},
};

fn terminal(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| draw(f, app)).unwrap();
    terminal
}

fn render(app: &App, width: u16, height: u16) -> String {
    terminal(app, width, height).backend().to_string()
}

macro_rules! snap {
    ($name:expr, $app:expr, $w:expr, $h:expr) => {
        insta::with_settings!(
            {
                snapshot_path => "../../snapshots",
                prepend_module_to_snapshot => false,
                omit_expression => true,
            },
            { insta::assert_snapshot!($name, render(&$app, $w, $h)) }
        )
    };
}

/// The process view of the leaker, with its detail.
fn process_view(detail: crate::dashboard::model::Detail) -> App {
    let mut app = populated();
    app.sort_by(SortColumn::Pid);
    while app.selected().map(|k| k.pid) != Some(4242) {
        app.move_down();
    }
    app.open_selected();
    app.set_detail(detail);
    app
}

#[test]
fn table_empty() {
    snap!("table_empty", App::new(), 100, 12);
}

#[test]
fn table_populated() {
    snap!("table_populated", populated(), 120, 18);
}

#[test]
fn table_sorted_by_bytes() {
    let mut app = populated();
    app.sort_by(SortColumn::Bytes);
    snap!("table_sorted_by_bytes", app, 120, 18);
}

#[test]
fn table_sorted_by_command_inverted() {
    let mut app = populated();
    app.sort_by(SortColumn::Command);
    app.invert_sort();
    app.move_down();
    snap!("table_sorted_by_command_inverted", app, 120, 18);
}

#[test]
fn table_filtered() {
    let mut app = populated();
    app.start_filter();
    for c in "server".chars() {
        app.filter_push(c);
    }
    app.apply_filter();
    snap!("table_filtered", app, 120, 12);
}

#[test]
fn table_filter_editing_without_match() {
    let mut app = populated();
    app.start_filter();
    for c in "zzz".chars() {
        app.filter_push(c);
    }
    snap!("table_filter_editing_without_match", app, 100, 12);
}

#[test]
fn table_paused_with_status() {
    let mut app = populated();
    app.toggle_pause();
    app.set_status("report of PID 4242 written to /tmp/memtrace-4242.txt");
    snap!("table_paused_with_status", app, 100, 16);
}

#[test]
fn table_error_status() {
    let mut app = populated();
    app.set_error("symbolization failed: /usr/lib/libstripped.so.1: no debug info");
    snap!("table_error_status", app, 100, 10);
}

#[test]
fn table_80x24() {
    let mut app = populated();
    app.move_down();
    snap!("table_80x24", app, 80, 24);
}

#[test]
fn table_60x20() {
    snap!("table_60x20", populated(), 60, 20);
}

#[test]
fn table_40x10() {
    snap!("table_40x10", populated(), 40, 10);
}

#[test]
fn table_narrow_keeps_sort_column() {
    let mut app = populated();
    app.sort_by(SortColumn::FreesPerSec);
    snap!("table_narrow_keeps_sort_column", app, 60, 8);
}

#[test]
fn table_scrolls_to_selection() {
    let mut app = populated();
    app.move_last();
    snap!("table_scrolls_to_selection", app, 80, 10);
}

#[test]
fn tiny_10x3() {
    snap!("tiny_10x3", populated(), 10, 3);
}

#[test]
fn process_view_full() {
    snap!("process_view", process_view(fixtures::detail()), 110, 44);
}

#[test]
fn process_view_80x24() {
    snap!(
        "process_view_80x24",
        process_view(fixtures::detail()),
        80,
        24
    );
}

#[test]
fn process_view_60x20() {
    snap!(
        "process_view_60x20",
        process_view(fixtures::detail()),
        60,
        20
    );
}

#[test]
fn process_view_second_stack() {
    let mut app = process_view(fixtures::detail());
    app.move_down();
    snap!("process_view_second_stack", app, 100, 30);
}

#[test]
fn process_view_symbolizing() {
    snap!(
        "process_view_symbolizing",
        process_view(fixtures::detail_symbolizing()),
        100,
        32
    );
}

#[test]
fn process_view_loading() {
    let mut app = populated();
    app.open_selected();
    snap!("process_view_loading", app, 80, 12);
}

#[test]
fn process_view_exited_and_paused() {
    let mut app = process_view(fixtures::detail());
    let mut snap = fixtures::snapshot();
    snap.rows.retain(|r| r.pid != 4242);
    app.update(snap);
    app.toggle_pause();
    snap!("process_view_exited_paused", app, 80, 14);
}

#[test]
fn table_offset_survives_fewer_rows() {
    let mut app = populated();
    app.move_last();
    render(&app, 80, 8);
    assert!(app.table_offset().get() > 0);
    app.start_filter();
    app.filter_push('l');
    app.filter_push('e');
    app.filter_push('a');
    let screen = render(&app, 80, 8);
    assert!(screen.contains("▶      4242"), "{screen}");
}

#[test]
fn help_80x24() {
    let mut app = populated();
    app.toggle_help();
    snap!("help_80x24", app, 80, 24);
}

/// Draws `app` at many sizes, small ones especially: none may panic.
fn sweep(app: &App) {
    let widths = [
        0, 1, 2, 3, 5, 8, 10, 13, 20, 29, 30, 40, 59, 60, 61, 79, 80, 81, 130,
    ];
    let heights = [0, 1, 2, 3, 4, 5, 8, 12, 15, 16, 17, 24, 40];
    for w in widths {
        for h in heights {
            terminal(app, w, h);
        }
    }
}

#[test]
fn any_size_table_empty() {
    sweep(&App::new());
}

#[test]
fn any_size_table() {
    sweep(&populated());
}

#[test]
fn any_size_table_filtering_paused() {
    let mut app = populated();
    app.toggle_pause();
    app.set_error("symbolization failed: x");
    app.start_filter();
    app.filter_push('p');
    sweep(&app);
}

#[test]
fn any_size_process_view() {
    sweep(&process_view(fixtures::detail()));
}

#[test]
fn any_size_process_view_symbolizing_or_loading() {
    let mut app = process_view(fixtures::detail_symbolizing());
    app.move_last();
    sweep(&app);
    let mut loading = populated();
    loading.open_selected();
    sweep(&loading);
}

#[test]
fn any_size_help() {
    let mut app = populated();
    app.toggle_help();
    sweep(&app);
}

#[test]
fn table_with_losses_in_the_header() {
    let mut snapshot = fixtures::snapshot();
    snapshot.header.lost_events = 17;
    snapshot.header.stack_failures = 93;
    snapshot.header.dropped = 4;
    let mut app = App::new();
    app.update(snapshot);
    let screen = render(&app, 120, 12);
    snap!("table_with_losses", app, 120, 12);
    let cost = screen.lines().nth(2).unwrap_or_default();
    assert!(cost.contains("17 lost"), "{cost}");
    assert!(cost.contains("93 cut stacks"), "{cost}");
    assert!(cost.contains("4 dropped"), "{cost}");
}
