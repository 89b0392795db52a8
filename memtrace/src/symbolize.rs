//! Symbolization of normalized addresses with blazesym, from the ELF files
//! themselves (symbol tables and DWARF), so a process that has exited still
//! gets function, file and line.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
};

use blazesym::symbolize::{
    Symbolizer,
    source::{Elf, Source},
    {Input, Symbolized},
};

use crate::procmaps::FileAddr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Symbol {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

pub struct Symbols {
    symbolizer: Symbolizer,
    cache: HashMap<FileAddr, Symbol>,
    /// Files that could not be opened or parsed, with the reason.
    pub failed_files: HashMap<Arc<str>, String>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self {
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(false)
                .enable_demangling(true)
                .build(),
            cache: HashMap::new(),
            failed_files: HashMap::new(),
        }
    }
}

impl Symbols {
    /// Symbolize every address of `addrs` not yet known.
    pub fn resolve<'a>(&mut self, addrs: impl IntoIterator<Item = &'a FileAddr>) {
        let mut by_file: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        let mut seen = HashSet::new();
        for a in addrs {
            if !self.cache.contains_key(a) && seen.insert(a) {
                by_file
                    .entry(a.path.clone())
                    .or_default()
                    .push(a.file_offset);
            }
        }
        for (path, offsets) in by_file {
            let src = Source::Elf(Elf::new(Path::new(&*path)));
            let results = match self.symbolizer.symbolize(&src, Input::FileOffset(&offsets)) {
                Ok(r) => r,
                Err(e) => {
                    self.failed_files.insert(path.clone(), format!("{e:#}"));
                    Vec::new()
                }
            };
            for (i, off) in offsets.iter().enumerate() {
                let sym = match results.get(i) {
                    Some(Symbolized::Sym(s)) => Symbol {
                        function: Some(s.name.to_string()),
                        file: s
                            .code_info
                            .as_ref()
                            .map(|c| c.file.to_string_lossy().into_owned()),
                        line: s.code_info.as_ref().and_then(|c| c.line),
                    },
                    _ => Symbol::default(),
                };
                self.cache.insert(
                    FileAddr {
                        path: path.clone(),
                        file_offset: *off,
                    },
                    sym,
                );
            }
        }
    }

    pub fn get(&self, a: &FileAddr) -> Option<&Symbol> {
        self.cache.get(a)
    }
}

/// Whether `function` belongs to the allocator rather than to its caller.
pub fn is_allocator_frame(function: &str) -> bool {
    const NAMES: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "mmap",
        "mmap64",
        "munmap",
        "mremap",
        "_mid_memalign",
        "tcache_init",
        "sysmalloc",
    ];
    NAMES.contains(&function)
        || function.starts_with("__libc_")
        || function.starts_with("__GI___libc_")
        || function.starts_with("_int_")
        || function.starts_with("__mmap")
        || function.starts_with("__munmap")
        || function.starts_with("__mremap")
        || function.starts_with("operator new")
        || function.starts_with("operator delete")
        || function.starts_with("_Znw")
        || function.starts_with("_Zna")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_frames() {
        for f in [
            "malloc",
            "__libc_malloc",
            "operator new(unsigned long)",
            "_Znwm",
            "_int_realloc",
        ] {
            assert!(is_allocator_frame(f), "{f}");
        }
        for f in ["main", "leak_a", "mallocator", "my_free_list"] {
            assert!(!is_allocator_frame(f), "{f}");
        }
    }

    #[test]
    fn symbolizes_own_binary() {
        // This test binary's own `main` is findable by file offset.
        let exe = std::env::current_exe().unwrap();
        let snap = crate::procmaps::Snapshot::read(std::process::id()).unwrap();
        let here = symbolizes_own_binary as *const () as u64;
        let fa = snap.lookup(here).expect("own code is mapped");
        assert_eq!(&*fa.path, exe.to_str().unwrap());
        let mut s = Symbols::default();
        s.resolve([&fa]);
        let sym = s.get(&fa).unwrap();
        assert!(
            sym.function
                .as_deref()
                .unwrap_or("")
                .contains("symbolizes_own_binary"),
            "{sym:?}"
        );
    }
}
