//! The SDK's global allocator: a cache of small blocks in front of the system allocator.
//!
//! Compiled to Wasm, wasi-libc's dlmalloc and the layers above it cost about 400 instructions
//! for one allocation and its free, and a small request makes about ten. Here a freed block of
//! up to 512 bytes goes on the free list of its size class, and the next allocation of that
//! class takes it back: a few instructions each way. Cached blocks never return to dlmalloc,
//! so an instance keeps the most small-block memory it ever used; the memory cap bounds it
//! like any other. An app with an allocator of its own turns the `fast-alloc` feature off.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes of 16, 32, ... 512 bytes.
const CLASSES: usize = 6;
const SMALLEST_LOG2: u32 = 4;
const LARGEST: usize = 16 << (CLASSES - 1);
/// dlmalloc's own alignment on wasm32: blocks asking for more go to it directly, which
/// would otherwise take its slower aligned path.
const BLOCK_ALIGN: usize = 8;

pub struct SmallBlockCache {
    /// The head of each class's free list; each free block holds the address of the next.
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

// A Wasm instance without the threads proposal runs one thread: nothing shares the lists.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl Sync for SmallBlockCache {}

impl SmallBlockCache {
    pub const fn new() -> SmallBlockCache {
        SmallBlockCache {
            free: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }
}

/// The size class of `layout`, if its blocks are cached.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > LARGEST || layout.align() > BLOCK_ALIGN {
        return None;
    }
    let size = layout.size().max(1 << SMALLEST_LOG2);
    Some((usize::BITS - (size - 1).leading_zeros() - SMALLEST_LOG2) as usize)
}

fn block_layout(class: usize) -> Layout {
    Layout::from_size_align(16 << class, BLOCK_ALIGN).expect("a valid block layout")
}

unsafe impl GlobalAlloc for SmallBlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: one thread, and no reference to the lists outlives this call.
        let free = unsafe { &mut *self.free.get() };
        let block = free[class];
        if block.is_null() {
            return unsafe { System.alloc(block_layout(class)) };
        }
        // SAFETY: a block on a free list holds the address of the next one.
        free[class] = unsafe { block.cast::<*mut u8>().read() };
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class(layout).is_none() {
            // dlmalloc knows when fresh memory is zero already.
            return unsafe { System.alloc_zeroed(layout) };
        }
        let block = unsafe { self.alloc(layout) };
        if !block.is_null() {
            unsafe { block.write_bytes(0, layout.size()) };
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            return unsafe { System.dealloc(block, layout) };
        };
        let free = unsafe { &mut *self.free.get() };
        // SAFETY: every cached block is at least 16 bytes and 8-aligned: room for an address.
        unsafe { block.cast::<*mut u8>().write(free[class]) };
        free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that the new size, at this alignment, is a layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            (Some(old), Some(new)) if old == new => block,
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes() {
        let class_of = |size| class(Layout::from_size_align(size, 1).unwrap());
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(16), Some(0));
        assert_eq!(class_of(17), Some(1));
        assert_eq!(class_of(64), Some(2));
        assert_eq!(class_of(65), Some(3));
        assert_eq!(class_of(512), Some(5));
        assert_eq!(class_of(513), None);
        assert_eq!(class(Layout::from_size_align(8, 16).unwrap()), None);
        for size in 1..=LARGEST {
            let class = class_of(size).unwrap();
            assert!(block_layout(class).size() >= size);
        }
    }

    #[test]
    fn blocks_are_reused_and_keep_their_bytes() {
        let cache = SmallBlockCache::new();
        let small = Layout::from_size_align(24, 8).unwrap();
        unsafe {
            let first = cache.alloc(small);
            first.write_bytes(7, 24);
            cache.dealloc(first, small);
            let again = cache.alloc(small);
            assert_eq!(again, first, "a freed block is taken back");
            // Growing within the class keeps the block; past it, the bytes move.
            let grown = cache.realloc(again, small, 30);
            assert_eq!(grown, again);
            grown.write_bytes(9, 30);
            let moved = cache.realloc(grown, Layout::from_size_align(30, 8).unwrap(), 4096);
            assert_ne!(moved, grown);
            assert!((0..30).all(|i| *moved.add(i) == 9));
            cache.dealloc(moved, Layout::from_size_align(4096, 8).unwrap());
            let zeroed = cache.alloc_zeroed(small);
            assert!((0..24).all(|i| *zeroed.add(i) == 0));
            cache.dealloc(zeroed, small);
        }
    }
}
