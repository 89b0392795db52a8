//! The dashboard's UI state, changed only through methods named after what
//! the user does. No I/O and no terminal: the event loop feeds snapshots
//! and details in, `keys` maps key presses to these methods, `ui` draws.

mod sort;

use std::cell::Cell;

pub use self::sort::SortColumn;
use super::model::{Detail, Row, RowKey, Snapshot};

/// What fills the screen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Screen {
    #[default]
    Table,
    /// The process view of one process.
    Process(RowKey),
    /// Help, over the table (`back: None`) or a process view.
    Help { back: Option<RowKey> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    Info,
    Error,
}

/// A message on the status line, until replaced or cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub kind: StatusKind,
    pub text: String,
}

/// How many stacks PgUp/PgDn move in the process view.
const STACK_PAGE: usize = 5;

#[derive(Debug, Default)]
pub struct App {
    snapshot: Snapshot,
    selected: Option<RowKey>,
    /// Where the selection was in the visible rows: where it lands when its
    /// process disappears.
    selected_index: usize,
    sort: SortColumn,
    inverted: bool,
    filter: String,
    editing_filter: bool,
    paused: bool,
    screen: Screen,
    detail: Option<Detail>,
    status: Option<Status>,
    /// The selected stack of the process view.
    stack_selected: usize,
    // Written back by the renderer: first table row and stack shown, and
    // how many table rows fit (for PgUp/PgDn).
    table_offset: Cell<usize>,
    stack_offset: Cell<usize>,
    table_height: Cell<usize>,
}

impl App {
    pub fn new() -> Self {
        Self::default()
    }

    // ----- what the event loop feeds in -----

    /// A new refresh; ignored while paused.
    pub fn update(&mut self, snapshot: Snapshot) {
        if self.paused {
            return;
        }
        self.snapshot = snapshot;
        self.reselect(false);
    }

    /// The detail of the open process; ignored if it is of another process,
    /// or while paused once one is shown.
    pub fn set_detail(&mut self, detail: Detail) {
        if self.open_process() != Some(detail.key) || (self.paused && self.detail.is_some()) {
            return;
        }
        self.stack_selected = self
            .stack_selected
            .min(detail.stacks.len().saturating_sub(1));
        self.detail = Some(detail);
    }

    pub fn set_status(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            kind: StatusKind::Info,
            text: text.into(),
        });
    }

    pub fn set_error(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            kind: StatusKind::Error,
            text: text.into(),
        });
    }

    pub fn clear_status(&mut self) {
        self.status = None;
    }

    // ----- what the renderer and the event loop read -----

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn screen(&self) -> Screen {
        self.screen
    }

    /// The process whose detail is wanted (open, possibly under help).
    pub fn open_process(&self) -> Option<RowKey> {
        match self.screen {
            Screen::Process(k) | Screen::Help { back: Some(k) } => Some(k),
            _ => None,
        }
    }

    /// The detail shown, if it has arrived.
    pub fn detail(&self) -> Option<&Detail> {
        self.detail.as_ref()
    }

    pub fn selected(&self) -> Option<RowKey> {
        self.selected
    }

    /// The table's row of `key`, if it is still there.
    pub fn row(&self, key: RowKey) -> Option<&Row> {
        self.snapshot.rows.iter().find(|r| r.key == key)
    }

    pub fn sort(&self) -> SortColumn {
        self.sort
    }

    /// Whether the table is in descending order (as shown by its arrow).
    pub fn descending(&self) -> bool {
        self.sort.ascending() == self.inverted
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    pub fn editing_filter(&self) -> bool {
        self.editing_filter
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    pub fn stack_selected(&self) -> usize {
        self.stack_selected
    }

    /// The rows shown: filtered, then sorted.
    pub fn visible_rows(&self) -> Vec<&Row> {
        sort::visible(
            &self.snapshot.rows,
            &self.filter,
            self.sort,
            self.descending(),
        )
    }

    pub(super) fn table_offset(&self) -> &Cell<usize> {
        &self.table_offset
    }

    pub(super) fn stack_offset(&self) -> &Cell<usize> {
        &self.stack_offset
    }

    pub(super) fn table_height(&self) -> &Cell<usize> {
        &self.table_height
    }

    // ----- user actions -----

    pub fn move_down(&mut self) {
        self.move_by(1);
    }

    pub fn move_up(&mut self) {
        self.move_by(-1);
    }

    pub fn page_down(&mut self) {
        let page = self.page();
        self.move_by(page);
    }

    pub fn page_up(&mut self) {
        let page = self.page();
        self.move_by(-page);
    }

    pub fn move_first(&mut self) {
        self.move_by(isize::MIN);
    }

    pub fn move_last(&mut self) {
        self.move_by(isize::MAX);
    }

    pub fn sort_by(&mut self, col: SortColumn) {
        self.sort = col;
        self.inverted = false;
        self.reselect(false);
    }

    /// Sort by the column to the right (stops at the last).
    pub fn sort_next(&mut self) {
        let i = self.sort_position();
        self.sort_by(SortColumn::ALL[(i + 1).min(SortColumn::ALL.len() - 1)]);
    }

    /// Sort by the column to the left (stops at the first).
    pub fn sort_prev(&mut self) {
        let i = self.sort_position();
        self.sort_by(SortColumn::ALL[i.saturating_sub(1)]);
    }

    pub fn invert_sort(&mut self) {
        self.inverted = !self.inverted;
        self.reselect(false);
    }

    /// Start typing a filter (editing the current one).
    pub fn start_filter(&mut self) {
        self.editing_filter = true;
    }

    pub fn filter_push(&mut self, c: char) {
        self.filter.push(c);
        self.reselect(true);
    }

    pub fn filter_pop(&mut self) {
        self.filter.pop();
        self.reselect(true);
    }

    /// Stop typing, keeping the filter.
    pub fn apply_filter(&mut self) {
        self.editing_filter = false;
    }

    pub fn clear_filter(&mut self) {
        self.filter.clear();
        self.editing_filter = false;
        self.reselect(false);
    }

    /// Open the process view of the selected row; its key, for the event
    /// loop to start building its detail.
    pub fn open_selected(&mut self) -> Option<RowKey> {
        let key = self.selected.filter(|_| self.screen == Screen::Table)?;
        self.screen = Screen::Process(key);
        self.detail = None;
        self.stack_selected = 0;
        self.stack_offset.set(0);
        Some(key)
    }

    /// Leave help or the process view (then: the process closed, whose
    /// detail is no longer needed); on the table, clear the filter.
    pub fn back(&mut self) -> Option<RowKey> {
        match self.screen {
            Screen::Help { .. } => {
                self.toggle_help();
                None
            }
            Screen::Process(key) => {
                self.screen = Screen::Table;
                self.detail = None;
                Some(key)
            }
            Screen::Table => {
                self.clear_filter();
                None
            }
        }
    }

    pub fn toggle_pause(&mut self) {
        self.paused = !self.paused;
    }

    pub fn toggle_help(&mut self) {
        self.screen = match self.screen {
            Screen::Help { back: Some(k) } => Screen::Process(k),
            Screen::Help { back: None } => Screen::Table,
            Screen::Process(k) => Screen::Help { back: Some(k) },
            Screen::Table => Screen::Help { back: None },
        };
    }

    // ----- internals -----

    fn page(&self) -> isize {
        match self.screen {
            Screen::Table => self.table_height.get().max(1) as isize,
            _ => STACK_PAGE as isize,
        }
    }

    fn sort_position(&self) -> usize {
        SortColumn::ALL
            .iter()
            .position(|&c| c == self.sort)
            .unwrap_or(0)
    }

    /// Move the selection of the current screen by `delta`, clamped.
    fn move_by(&mut self, delta: isize) {
        match self.screen {
            Screen::Table => {
                let rows = self.visible_rows();
                let Some(last) = rows.len().checked_sub(1) else {
                    return;
                };
                let at = self
                    .selected
                    .and_then(|k| rows.iter().position(|r| r.key == k))
                    .unwrap_or(0);
                let to = at.saturating_add_signed(delta).min(last);
                let key = rows[to].key;
                self.selected = Some(key);
                self.selected_index = to;
            }
            Screen::Process(_) => {
                let n = self.detail.as_ref().map_or(0, |d| d.stacks.len());
                self.stack_selected = self
                    .stack_selected
                    .saturating_add_signed(delta)
                    .min(n.saturating_sub(1));
            }
            Screen::Help { .. } => {}
        }
    }

    /// Keep the selected process selected; if it is gone (or filtered out),
    /// select the row now at its place, or the first row if `to_top`.
    fn reselect(&mut self, to_top: bool) {
        let rows = self.visible_rows();
        let found = self
            .selected
            .and_then(|k| rows.iter().position(|r| r.key == k));
        let (key, index) = match found {
            Some(i) => (Some(rows[i].key), i),
            None if rows.is_empty() => (None, self.selected_index),
            None => {
                let i = if to_top {
                    0
                } else {
                    self.selected_index.min(rows.len() - 1)
                };
                (Some(rows[i].key), i)
            }
        };
        self.selected = key;
        self.selected_index = index;
    }
}
