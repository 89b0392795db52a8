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
    /// The loaded segment holding the function: its file offset and size.
    pub segment: (u64, u64),
}

/// Bytes of each function's start kept for prologue decoding.
const CODE_BYTES: usize = 64;

pub struct ElfSyms {
    /// The first bytes of each indexed function, by file offset.
    code: HashMap<u64, Vec<u8>>,
    syms: HashMap<String, FnSym>,
    /// Whether the file has a dynamic symbol table (every shared object and
    /// dynamically linked executable does; a static executable does not).
    pub has_dynsym: bool,
    /// Whether the file has a (non-dynamic) symbol table.
    pub has_symtab: bool,
}

impl ElfSyms {
    /// Read `path` and index the function symbols named in `wanted`.
    pub fn load(path: &Path, wanted: &[&str]) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&data, wanted, &path.display().to_string())
    }

    /// Index the function symbols named in `wanted` of the ELF file `data`
    /// (`label` names it in errors).
    pub fn parse(data: &[u8], wanted: &[&str], label: &str) -> Result<Self> {
        let file = object::File::parse(data).with_context(|| format!("parsing ELF {label}"))?;
        let has_dynsym = file.dynamic_symbols().next().is_some();
        let has_symtab = file.symbols().next().is_some();
        let mut syms = HashMap::new();
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            let Ok(name) = sym.name() else { continue };
            // Versioned names (malloc@@GLIBC_2.2.5) come without the suffix here.
            // An undefined symbol with an address is a non-PIE executable's
            // canonical PLT entry (malloc whose address the program takes):
            // the real function is elsewhere, and the PLT's indirect jump
            // would be single-stepped on every call.
            if sym.kind() != object::SymbolKind::Text
                || sym.is_undefined()
                || !wanted.contains(&name)
            {
                continue;
            }
            if syms.contains_key(name) || sym.address() == 0 {
                continue;
            }
            let vaddr = sym.address();
            let off = file.segments().find_map(|seg| {
                let (start, len) = (seg.address(), seg.size());
                let (foff, fsize) = seg.file_range();
                (vaddr >= start && vaddr < start + len.min(fsize))
                    .then(|| (vaddr - start + foff, (foff, fsize)))
            });
            if let Some((file_offset, segment)) = off {
                syms.insert(
                    name.to_string(),
                    FnSym {
                        file_offset,
                        size: sym.size(),
                        segment,
                    },
                );
            }
        }
        let code = syms
            .values()
            .map(|s| {
                let start = (s.file_offset as usize).min(data.len());
                let mut end = start.saturating_add(CODE_BYTES).min(data.len());
                if s.size > 0 {
                    end = end.min(start.saturating_add(s.size as usize));
                }
                (s.file_offset, data[start..end].to_vec())
            })
            .collect();
        Ok(Self {
            code,
            syms,
            has_dynsym,
            has_symtab,
        })
    }

    pub fn get(&self, name: &str) -> Option<FnSym> {
        self.syms.get(name).copied()
    }

    /// Up to `n` (at most 64) bytes of code at the symbol's start (less
    /// near the end of the function or file).
    pub fn code(&self, sym: FnSym, n: usize) -> &[u8] {
        let c = self
            .code
            .get(&sym.file_offset)
            .map_or(&[][..], Vec::as_slice);
        &c[..n.min(c.len())]
    }
}
