//! The terminal while the dashboard runs: raw mode and the alternate screen,
//! restored on every way out (return, error, panic) by a drop guard.

use std::io::{self, Stdout};

use anyhow::{Context as _, Result};
use crossterm::{
    event::{self, Event, KeyEvent, KeyEventKind},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Frame, backend::CrosstermBackend};

pub struct Terminal {
    inner: ratatui::Terminal<CrosstermBackend<Stdout>>,
    resized: bool,
}

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

impl Terminal {
    pub fn start() -> Result<Self> {
        enable_raw_mode()
            .context("the dashboard needs a terminal (try --headless, or memtrace report)")?;
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        if let Err(e) = execute!(io::stdout(), EnterAlternateScreen, crossterm::cursor::Hide) {
            restore();
            return Err(e).context("setting up the terminal");
        }
        let inner = ratatui::Terminal::new(CrosstermBackend::new(io::stdout()))
            .inspect_err(|_| restore())
            .context("setting up the terminal")?;
        Ok(Self {
            inner,
            resized: true,
        })
    }

    /// Key presses waiting, without blocking.
    pub fn keys(&mut self) -> Result<Vec<KeyEvent>> {
        let mut keys = Vec::new();
        while event::poll(std::time::Duration::ZERO).context("reading the terminal")? {
            match event::read().context("reading the terminal")? {
                Event::Key(k) if k.kind != KeyEventKind::Release => keys.push(k),
                Event::Resize(..) => self.resized = true,
                _ => {}
            }
        }
        Ok(keys)
    }

    /// Whether the terminal was resized since the last call.
    pub fn resized(&mut self) -> bool {
        std::mem::take(&mut self.resized)
    }

    pub fn draw(&mut self, f: impl FnOnce(&mut Frame)) -> Result<()> {
        self.inner.draw(f).context("drawing the dashboard")?;
        Ok(())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        restore();
    }
}
