//! Background work of the dashboard: symbolization (blazesym parses DWARF,
//! which can take a while for a large library) and report dumps. The UI
//! thread never waits for either.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::mpsc::{self, Receiver, Sender},
    thread,
};

use crate::{
    output::Output,
    procmaps::FileAddr,
    report::{self, Format, Input, Losses, Meta},
    symbolize::{Symbol, Symbols},
};

pub enum Request {
    Resolve(Vec<FileAddr>),
    Dump {
        input: Box<Input>,
        meta: Meta,
        losses: Losses,
        format: Format,
        path: PathBuf,
    },
}

pub enum Response {
    Resolved(Vec<(FileAddr, Symbol)>),
    /// The dump's path, or why it failed.
    Dumped(Result<PathBuf, String>),
}

pub struct Worker {
    tx: Sender<Request>,
    rx: Receiver<Response>,
    /// Symbols known on the UI side.
    pub cache: HashMap<FileAddr, Symbol>,
    /// Addresses asked for and not answered yet.
    pending: std::collections::HashSet<FileAddr>,
}

impl Worker {
    pub fn start() -> std::io::Result<Self> {
        let (tx, req_rx) = mpsc::channel::<Request>();
        let (resp_tx, rx) = mpsc::channel::<Response>();
        thread::Builder::new()
            .name("memtrace-symbols".into())
            .spawn(move || serve(req_rx, resp_tx))?;
        Ok(Self {
            tx,
            rx,
            cache: HashMap::new(),
            pending: Default::default(),
        })
    }

    /// Ask for the symbols of `addrs` not known or pending yet.
    pub fn want<'a>(&mut self, addrs: impl IntoIterator<Item = &'a FileAddr>) {
        let new: Vec<FileAddr> = addrs
            .into_iter()
            .filter(|a| !self.cache.contains_key(*a) && !self.pending.contains(*a))
            .cloned()
            .collect();
        if new.is_empty() {
            return;
        }
        self.pending.extend(new.iter().cloned());
        let _ = self.tx.send(Request::Resolve(new));
    }

    pub fn is_pending(&self, a: &FileAddr) -> bool {
        self.pending.contains(a)
    }

    pub fn dump(&self, req: Request) {
        let _ = self.tx.send(req);
    }

    /// Take the answers that arrived; returns finished dumps.
    pub fn poll(&mut self) -> Vec<Result<PathBuf, String>> {
        let mut dumps = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            match r {
                Response::Resolved(v) => {
                    for (a, s) in v {
                        self.pending.remove(&a);
                        self.cache.insert(a, s);
                    }
                }
                Response::Dumped(d) => dumps.push(d),
            }
        }
        dumps
    }
}

fn serve(rx: Receiver<Request>, tx: Sender<Response>) {
    let mut symbols = Symbols::default();
    while let Ok(req) = rx.recv() {
        let resp = match req {
            Request::Resolve(addrs) => {
                symbols.resolve(addrs.iter());
                Response::Resolved(
                    addrs
                        .into_iter()
                        .map(|a| {
                            let s = symbols.get(&a).cloned().unwrap_or_default();
                            (a, s)
                        })
                        .collect(),
                )
            }
            Request::Dump {
                input,
                meta,
                losses,
                format,
                path,
            } => Response::Dumped(dump(&input, meta, losses, format, path, &mut symbols)),
        };
        if tx.send(resp).is_err() {
            return;
        }
    }
}

fn dump(
    input: &Input,
    meta: Meta,
    losses: Losses,
    format: Format,
    path: PathBuf,
    symbols: &mut Symbols,
) -> Result<PathBuf, String> {
    let out = Output::reserve(&path).map_err(|e| format!("{e:#}"))?;
    let r = report::build(input, symbols, meta, losses);
    let text = report::render(&r, format).map_err(|e| format!("{e:#}"))?;
    out.commit(&text).map_err(|e| format!("{e:#}"))?;
    Ok(path)
}
