// Leaks of a Rust program built the way cargo builds one by default:
// without frame pointers. A Vec or String that grows reaches the allocator
// through RawVec's out-of-line growth functions, which keep no frame
// pointer either: only the executable's unwind tables lead from there back
// to the function that leaked. Ground truth (bytes, blocks) per function:
//   leak_pushed        8192 1   (1000 u64 pushed: capacity 1024, by realloc)
//   leak_string         128 1   (90 bytes pushed: capacity 8, 16, 32, 64, 128)
//   leak_boxed          300 3   (three Box<[u8; 100]>)
//   leak_reserved      5000 1   (Vec::with_capacity)
//   leak_in_thread     4000 1   (a String grown on a spawned thread; 4000 bytes reserved)
use std::hint::black_box;

#[inline(never)]
fn leak_pushed() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..1000 {
        v.push(black_box(i));
    }
    std::mem::forget(black_box(v));
}

#[inline(never)]
fn leak_string() {
    let mut s = String::new();
    for i in 0..50 {
        s.push_str(&i.to_string());
    }
    std::mem::forget(black_box(s));
}

#[inline(never)]
fn leak_boxed() {
    for _ in 0..3 {
        black_box(Box::leak(Box::new(black_box([7u8; 100]))));
    }
}

#[inline(never)]
fn leak_reserved() {
    std::mem::forget(black_box(Vec::<u8>::with_capacity(black_box(5000))));
}

#[inline(never)]
fn leak_in_thread() {
    let mut s = String::new();
    s.reserve_exact(black_box(4000));
    s.push('x');
    std::mem::forget(black_box(s));
}

fn main() {
    leak_pushed();
    leak_string();
    leak_boxed();
    leak_reserved();
    std::thread::spawn(leak_in_thread)
        .join()
        .expect("the leaking thread");
}
