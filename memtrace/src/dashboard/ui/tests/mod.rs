//! Tests of the dashboard's UI layer: the app state, the key map, and
//! every screen rendered to text (insta snapshots in `dashboard/snapshots`).

mod app_state;
mod key_map;
mod screens;

use crate::dashboard::{app::App, ui::fixtures};

/// An app showing the fixture snapshot.
fn populated() -> App {
    let mut app = App::new();
    app.update(fixtures::snapshot());
    app
}

/// PIDs of the visible rows, in order.
fn pids(app: &App) -> Vec<u32> {
    app.visible_rows().iter().map(|r| r.pid).collect()
}
