//! A counting allocator: the peak of live heap bytes allocated by the
//! current thread since [`reset_peak`], so that a target can bound the
//! memory one decode takes (a length field read as an allocation size, a
//! quadratic copy). Per thread, because the test harness runs targets in
//! parallel threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    // try_with: the thread-locals may be gone while a thread exits.
    let _ = LIVE.try_with(|l| {
        let v = l.get() + n;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping only touches const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        // SAFETY: ptr was allocated by System with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts a measurement on this thread.
pub fn reset_peak() {
    let live = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(live));
}

/// Bytes allocated on top of what was live at [`reset_peak`], at the peak.
pub fn peak_since_reset(base: isize) -> usize {
    (PEAK.with(|p| p.get()) - base).max(0) as usize
}

pub fn live() -> isize {
    LIVE.with(|l| l.get())
}
