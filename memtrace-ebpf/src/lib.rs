//! Empty library target: lets memtrace's build script depend on this crate
//! so cargo rebuilds it when the eBPF sources change.
#![no_std]
