//! `App`: sorting, filtering, selection, pause, screens.

use std::time::Duration;

use super::{pids, populated};
use crate::dashboard::{
    app::{App, Screen, SortColumn, StatusKind},
    model::{Row, Snapshot},
    ui::fixtures::{self, key, row},
};

#[test]
fn default_order_is_leak_score_worst_first() {
    let app = populated();
    assert_eq!(app.sort(), SortColumn::Score);
    assert!(app.descending());
    assert_eq!(
        pids(&app),
        [4242, 4_194_303, 1337, 65001, 2718, 900, 31415, 1, 777, 2000]
    );
    // The first row is selected.
    assert_eq!(app.selected(), Some(key(4242)));
}

#[test]
fn each_column_sorts_worst_first_or_alphabetically() {
    let mut app = populated();
    for col in SortColumn::ALL {
        app.sort_by(col);
        let rows = app.visible_rows();
        assert_eq!(rows.len(), 10, "{col:?}");
        for pair in rows.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let ok = match col {
                SortColumn::Pid => a.pid < b.pid,
                SortColumn::Command => a.comm.to_lowercase() <= b.comm.to_lowercase(),
                SortColumn::Score => a.leak_score >= b.leak_score,
                SortColumn::Bytes => a.outstanding_bytes >= b.outstanding_bytes,
                SortColumn::Allocations => a.outstanding_allocations >= b.outstanding_allocations,
                // NaN sorts as the least alarming.
                SortColumn::Growth => {
                    b.growth_bytes_per_s.is_nan() || a.growth_bytes_per_s >= b.growth_bytes_per_s
                }
                SortColumn::Age => a.oldest_age >= b.oldest_age,
                SortColumn::Rss => a.rss_bytes >= b.rss_bytes,
                SortColumn::AllocsPerSec => a.allocs_per_s >= b.allocs_per_s,
                SortColumn::FreesPerSec => a.frees_per_s >= b.frees_per_s,
            };
            assert!(ok, "{col:?}: {} before {}", a.pid, b.pid);
        }
    }
}

#[test]
fn specific_orders() {
    let mut app = populated();
    app.sort_by(SortColumn::Bytes);
    assert_eq!(pids(&app)[..3], [4_194_303, 1337, 65001]);
    app.sort_by(SortColumn::Pid);
    assert_eq!(pids(&app)[..3], [1, 777, 900]);
    app.sort_by(SortColumn::Command);
    assert_eq!(pids(&app)[..3], [2000, 65001, 777]);
    app.sort_by(SortColumn::Growth);
    assert_eq!(pids(&app).first(), Some(&4242));
    assert_eq!(pids(&app).last(), Some(&900), "NaN growth last");
    app.sort_by(SortColumn::Rss);
    assert_eq!(pids(&app).last(), Some(&777), "no RSS last");
}

#[test]
fn inversion_reverses_and_resets_on_new_column() {
    let mut app = populated();
    let worst_first = pids(&app);
    app.invert_sort();
    assert!(!app.descending());
    let mut best_first = pids(&app);
    // Ties (score 0: PIDs 777 and 2000) stay in PID order.
    assert_eq!(best_first[..2], [777, 2000]);
    best_first.swap(0, 1);
    best_first.reverse();
    assert_eq!(best_first, worst_first);
    // A new column starts in its own direction: PIDs ascending.
    app.sort_by(SortColumn::Pid);
    assert!(!app.descending());
    app.invert_sort();
    assert!(app.descending());
    assert_eq!(pids(&app).first(), Some(&4_194_303));
}

#[test]
fn ties_break_by_pid() {
    let mut app = App::new();
    app.update(Snapshot {
        rows: vec![row(30, "b"), row(10, "b"), row(20, "a")],
        ..Default::default()
    });
    assert_eq!(pids(&app), [10, 20, 30]);
    app.sort_by(SortColumn::Command);
    assert_eq!(pids(&app), [20, 10, 30]);
}

#[test]
fn sort_next_and_prev_walk_the_columns_and_stop_at_the_ends() {
    let mut app = populated();
    app.sort_next();
    assert_eq!(app.sort(), SortColumn::Bytes);
    app.sort_prev();
    app.sort_prev();
    assert_eq!(app.sort(), SortColumn::Pid);
    app.sort_prev();
    assert_eq!(app.sort(), SortColumn::Pid);
    for _ in 0..20 {
        app.sort_next();
    }
    assert_eq!(app.sort(), SortColumn::Command);
}

#[test]
fn filter_by_command_substring_or_pid_prefix() {
    let mut app = populated();
    app.start_filter();
    assert!(app.editing_filter());
    for c in "SERVER".chars() {
        app.filter_push(c);
    }
    assert_eq!(pids(&app), [4242, 900]);
    app.apply_filter();
    assert!(!app.editing_filter());
    assert_eq!(app.filter(), "SERVER");
    assert_eq!(pids(&app), [4242, 900]);

    app.clear_filter();
    app.start_filter();
    app.filter_push('4');
    assert_eq!(pids(&app), [4242, 4_194_303]);
    app.filter_push('2');
    assert_eq!(pids(&app), [4242]);
    app.filter_pop();
    app.filter_pop();
    assert_eq!(pids(&app).len(), 10);
    // Digits match commands too (python3), PIDs by prefix (31415, not 1337).
    app.filter_push('3');
    assert_eq!(pids(&app), [2718, 31415]);
    app.clear_filter();
    assert_eq!(app.filter(), "");
    assert!(!app.editing_filter());
}

#[test]
fn filtering_moves_a_hidden_selection_to_the_first_match() {
    let mut app = populated();
    assert_eq!(app.selected(), Some(key(4242)));
    app.start_filter();
    app.filter_push('p');
    // postgres and python3.
    assert_eq!(pids(&app), [1337, 2718]);
    assert_eq!(app.selected(), Some(key(1337)));
    app.filter_push('x');
    assert_eq!(app.selected(), None);
    app.clear_filter();
    assert!(app.selected().is_some());
}

#[test]
fn selection_follows_the_process_across_resorts_and_updates() {
    let mut app = populated();
    app.move_down();
    app.move_down();
    assert_eq!(app.selected(), Some(key(1337)));
    app.sort_by(SortColumn::Pid);
    assert_eq!(app.selected(), Some(key(1337)));
    app.invert_sort();
    assert_eq!(app.selected(), Some(key(1337)));
    // Its score drops to last place: still selected.
    let mut snap = fixtures::snapshot();
    for r in &mut snap.rows {
        if r.pid == 1337 {
            r.leak_score = -1.0;
        }
    }
    app.sort_by(SortColumn::Score);
    app.update(snap);
    assert_eq!(app.selected(), Some(key(1337)));
    assert_eq!(pids(&app).last(), Some(&1337));
}

#[test]
fn selection_stays_in_place_when_the_process_disappears() {
    let mut app = populated();
    app.move_down();
    app.move_down();
    assert_eq!(app.selected(), Some(key(1337)));
    let mut snap = fixtures::snapshot();
    snap.rows.retain(|r| r.pid != 1337);
    app.update(snap);
    // The row now at its place (third).
    assert_eq!(app.selected(), Some(key(65001)));
    // Everything gone, then back.
    app.move_last();
    app.update(Snapshot::default());
    assert_eq!(app.selected(), None);
    app.move_down();
    app.update(fixtures::snapshot());
    // At its last place (ninth) again.
    assert_eq!(app.selected(), Some(key(777)));
}

#[test]
fn a_reused_pid_is_another_process() {
    let mut app = App::new();
    app.update(Snapshot {
        rows: vec![row(5, "a"), row(6, "b")],
        ..Default::default()
    });
    assert_eq!(app.selected(), Some(key(5)));
    let mut reborn = row(5, "a");
    reborn.key.first_ns += 1;
    app.update(Snapshot {
        rows: vec![reborn.clone(), row(6, "b")],
        ..Default::default()
    });
    assert_eq!(app.selected(), Some(reborn.key));
}

#[test]
fn moves_clamp_and_pages_use_the_drawn_height() {
    let mut app = populated();
    app.move_up();
    assert_eq!(app.selected(), Some(key(4242)));
    app.move_last();
    assert_eq!(app.selected(), Some(key(2000)));
    app.move_down();
    assert_eq!(app.selected(), Some(key(2000)));
    app.move_first();
    assert_eq!(app.selected(), Some(key(4242)));
    app.table_height().set(3);
    app.page_down();
    assert_eq!(app.selected(), Some(key(65001)));
    app.page_down();
    app.page_down();
    assert_eq!(app.selected(), Some(key(2000)));
    app.page_up();
    assert_eq!(app.selected(), Some(key(31415)));
    // Nothing to move in an empty table.
    let mut empty = App::new();
    empty.move_down();
    empty.page_up();
    assert_eq!(empty.selected(), None);
}

#[test]
fn pause_keeps_the_snapshot() {
    let mut app = populated();
    app.toggle_pause();
    assert!(app.paused());
    app.update(Snapshot::default());
    assert_eq!(app.snapshot().rows.len(), 10);
    assert_eq!(app.snapshot().header, fixtures::snapshot().header);
    app.toggle_pause();
    app.update(Snapshot::default());
    assert!(app.snapshot().rows.is_empty());
}

#[test]
fn process_view_open_detail_back() {
    let mut app = populated();
    assert_eq!(app.open_selected(), Some(key(4242)));
    assert_eq!(app.screen(), Screen::Process(key(4242)));
    assert_eq!(app.open_process(), Some(key(4242)));
    assert!(app.detail().is_none());
    // Another process's detail is stale: ignored.
    let mut other = fixtures::detail();
    other.key = key(1);
    app.set_detail(other);
    assert!(app.detail().is_none());
    app.set_detail(fixtures::detail());
    assert_eq!(app.detail().map(|d| d.stacks.len()), Some(4));
    // Already open: Enter does nothing more.
    assert_eq!(app.open_selected(), None);
    // j/k move the stack selection, clamped.
    app.move_down();
    assert_eq!(app.stack_selected(), 1);
    app.move_last();
    assert_eq!(app.stack_selected(), 3);
    app.page_up();
    assert_eq!(app.stack_selected(), 0);
    // The table selection did not move.
    assert_eq!(app.selected(), Some(key(4242)));
    // Fewer stacks: the selection is clamped.
    app.move_last();
    let mut fewer = fixtures::detail();
    fewer.stacks.truncate(2);
    app.set_detail(fewer);
    assert_eq!(app.stack_selected(), 1);
    assert_eq!(app.back(), Some(key(4242)));
    assert_eq!(app.screen(), Screen::Table);
    assert!(app.detail().is_none());
    app.set_detail(fixtures::detail());
    assert!(app.detail().is_none(), "closed: ignored");
}

#[test]
fn paused_process_view_keeps_its_detail() {
    let mut app = populated();
    app.open_selected();
    app.toggle_pause();
    // The first detail is still taken.
    app.set_detail(fixtures::detail_symbolizing());
    assert!(app.detail().is_some_and(|d| d.symbolizing));
    app.set_detail(fixtures::detail());
    assert!(app.detail().is_some_and(|d| d.symbolizing));
    app.toggle_pause();
    app.set_detail(fixtures::detail());
    assert!(app.detail().is_some_and(|d| !d.symbolizing));
}

#[test]
fn help_returns_where_it_was_opened() {
    let mut app = populated();
    app.toggle_help();
    assert_eq!(app.screen(), Screen::Help { back: None });
    app.toggle_help();
    assert_eq!(app.screen(), Screen::Table);
    app.open_selected();
    app.set_detail(fixtures::detail());
    app.toggle_help();
    assert_eq!(
        app.screen(),
        Screen::Help {
            back: Some(key(4242))
        }
    );
    // The detail keeps coming while help is over it.
    assert_eq!(app.open_process(), Some(key(4242)));
    assert_eq!(app.back(), None);
    assert_eq!(app.screen(), Screen::Process(key(4242)));
    assert!(app.detail().is_some());
}

#[test]
fn back_on_the_table_clears_the_filter() {
    let mut app = populated();
    app.start_filter();
    app.filter_push('x');
    app.apply_filter();
    assert_eq!(app.back(), None);
    assert_eq!(app.filter(), "");
}

#[test]
fn status_messages() {
    let mut app = App::new();
    assert!(app.status().is_none());
    app.set_status("report written to /tmp/r.txt");
    assert_eq!(app.status().map(|s| s.kind), Some(StatusKind::Info));
    app.set_error("symbolization failed: boom");
    let s = app.status().cloned();
    assert_eq!(s.as_ref().map(|s| s.kind), Some(StatusKind::Error));
    assert_eq!(
        s.map(|s| s.text).as_deref(),
        Some("symbolization failed: boom")
    );
    app.clear_status();
    assert!(app.status().is_none());
}

#[test]
fn exited_rows_stay_until_dropped() {
    let app = populated();
    let exited: Vec<&Row> = app
        .visible_rows()
        .into_iter()
        .filter(|r| r.exited)
        .collect();
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0].oldest_age, Some(Duration::from_secs(40)));
}
