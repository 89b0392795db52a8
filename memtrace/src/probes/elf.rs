//! Finding allocator symbols in an ELF file: file offset and first bytes.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

/// A function symbol located in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FnSym {
    /// Offset of the function's first byte in the file (what uprobes take).
    pub file_offset: u64,
    pub size: u64,
}

pub struct ElfSyms {
    data: Vec<u8>,
    syms: HashMap<String, FnSym>,
}

impl ElfSyms {
    /// Read `path` and index the function symbols named in `wanted`.
    pub fn load(path: &Path, wanted: &[&str]) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file = object::File::parse(&*data)
            .with_context(|| format!("parsing ELF {}", path.display()))?;
        let mut syms = HashMap::new();
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            let Ok(name) = sym.name() else { continue };
            // Versioned names (malloc@@GLIBC_2.2.5) come without the suffix here.
            if sym.kind() != object::SymbolKind::Text || !wanted.contains(&name) {
                continue;
            }
            if syms.contains_key(name) || sym.address() == 0 {
                continue;
            }
            let vaddr = sym.address();
            let off = file.segments().find_map(|seg| {
                let (start, len) = (seg.address(), seg.size());
                let (foff, fsize) = seg.file_range();
                (vaddr >= start && vaddr < start + len.min(fsize)).then(|| vaddr - start + foff)
            });
            if let Some(file_offset) = off {
                syms.insert(
                    name.to_string(),
                    FnSym {
                        file_offset,
                        size: sym.size(),
                    },
                );
            }
        }
        Ok(Self { data, syms })
    }

    pub fn get(&self, name: &str) -> Option<FnSym> {
        self.syms.get(name).copied()
    }

    /// Up to `n` bytes of code at the symbol's start (less near the end).
    pub fn code(&self, sym: FnSym, n: usize) -> &[u8] {
        let start = (sym.file_offset as usize).min(self.data.len());
        let mut end = start.saturating_add(n).min(self.data.len());
        if sym.size > 0 {
            end = end.min(start.saturating_add(sym.size as usize));
        }
        &self.data[start..end]
    }
}
