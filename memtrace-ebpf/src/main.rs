//! memtrace's eBPF programs, in the order the data flows:
//!
//! - [`entry`]: the entry probes of the allocator functions record each
//!   call's arguments per thread ([`calls`]), or emit a release at once;
//!   with sampling on, they decide which calls are traced ([`sampling`]);
//! - [`ret`]: one shared return probe (`alloc_ret`) turns the outermost
//!   call's return into an event, with the user stack walked by frame
//!   pointers ([`stack`]);
//! - [`ring`]: events go to userspace through one ring buffer;
//! - [`process`]: exec and exit tracepoints, and the dynamic loader's hook;
//! - [`maps`]: the maps and the globals the loader sets.
#![no_std]
#![no_main]
// For `atomic_xadd`: core's atomics have no read-modify-write on BPF.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod calls;
mod entry;
mod maps;
mod process;
mod ret;
mod ring;
mod sampling;
mod stack;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
