//! The `dpgw` binary's global allocator: the system allocator, except that
//! every allocation of 2 MiB or more gets a mapping of its own, aligned to
//! 2 MiB and advised `MADV_HUGEPAGE`, so that the kernel backs it with
//! transparent huge pages (with `/sys/kernel/mm/transparent_hugepage/enabled`
//! at `madvise`, Debian's default, or `always`; with `never` nothing changes).
//!
//! Why: the per-worker flow table, the conntrack table, the Maglev tables and
//! the ACL structures are large and looked up at random. Over 4 KiB pages
//! each lookup of a table bigger than the TLB's reach can cost a page walk;
//! glibc's `malloc` maps large blocks at 4 KiB alignment, so at most the
//! whole 2 MiB ranges inside a block could be huge, and only under `always`.
//!
//! The cost: a large allocation's size is rounded up to 2 MiB (a 2.1 MiB
//! block takes 4 MiB), and growing one copies it (no `mremap`). Large blocks
//! are few and allocated at start or at a configuration change, never per
//! packet. A failed `madvise` (THP not built in) leaves the mapping on
//! small pages; a failed `mmap` returns null, as `malloc` would.

use std::alloc::{GlobalAlloc, Layout, System};

/// Size from which allocations get their own huge-page mapping.
pub const HUGE: usize = 2 << 20;

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct HugeAlloc;

#[inline]
fn is_huge(l: &Layout) -> bool {
    l.size() >= HUGE && l.align() <= HUGE
}

#[inline]
fn mapped_len(size: usize) -> usize {
    size.div_ceil(HUGE) * HUGE
}

/// A fresh, zeroed mapping of `mapped_len(size)` bytes at a 2 MiB boundary,
/// advised `MADV_HUGEPAGE`; null on failure.
fn map(size: usize) -> *mut u8 {
    let len = mapped_len(size);
    let Some(over) = len.checked_add(HUGE) else {
        return std::ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let raw = raw as usize;
    let start = raw.div_ceil(HUGE) * HUGE;
    let end = start + len;
    // SAFETY: both ranges lie inside the mapping just made, outside
    // [start, end), and are page-aligned (the mapping is, and so are `start`
    // and `end`).
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut libc::c_void, start - raw);
        }
        if raw + over > end {
            libc::munmap(end as *mut libc::c_void, raw + over - end);
        }
        // Advice only: on failure the mapping stays on small pages.
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    start as *mut u8
}

// SAFETY: small layouts go to `System` unchanged; a huge layout gets a
// mapping of at least its size at a 2 MiB boundary (which satisfies any
// alignment up to 2 MiB), released by `dealloc` with the same layout, as
// `GlobalAlloc` guarantees. `is_huge` depends only on the layout, so
// `dealloc` and `realloc` know where a block came from.
unsafe impl GlobalAlloc for HugeAlloc {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if is_huge(&l) {
            map(l.size())
        } else {
            // SAFETY: the caller's contract is passed on.
            unsafe { System.alloc(l) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if is_huge(&l) {
            // Anonymous mappings are zero-filled.
            map(l.size())
        } else {
            // SAFETY: the caller's contract is passed on.
            unsafe { System.alloc_zeroed(l) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if is_huge(&l) {
            // SAFETY: `p` came from `map(l.size())`, which mapped exactly
            // `mapped_len(l.size())` bytes there.
            unsafe {
                libc::munmap(p.cast(), mapped_len(l.size()));
            }
        } else {
            // SAFETY: the caller's contract is passed on.
            unsafe { System.dealloc(p, l) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for `new_size`.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, l.align()) };
        if !is_huge(&l) && !is_huge(&new) {
            // SAFETY: the caller's contract is passed on.
            return unsafe { System.realloc(p, l, new_size) };
        }
        if is_huge(&l) && is_huge(&new) && mapped_len(l.size()) == mapped_len(new_size) {
            return p; // the mapping already has room
        }
        // SAFETY: `new` is a valid non-zero layout (the caller's contract).
        let q = unsafe { self.alloc(new) };
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct and at least this long;
            // the old one is freed with its own layout.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                self.dealloc(p, l);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_large_blocks_are_aligned_zeroed_and_keep_their_contents() {
        let a = HugeAlloc;
        let l = Layout::from_size_align(3 << 20, 64).unwrap();
        // SAFETY: a valid non-zero layout; every access is inside the block,
        // which is freed once with the layout it has.
        unsafe {
            let p = a.alloc_zeroed(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE, 0, "2 MiB aligned");
            let s = std::slice::from_raw_parts_mut(p, l.size());
            assert!(s.iter().all(|&b| b == 0));
            for (i, b) in s.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            // Within the same mapping: stays in place.
            let q = a.realloc(p, l, 4 << 20);
            assert_eq!(q, p);
            let l4 = Layout::from_size_align(4 << 20, 64).unwrap();
            // Larger: moves, keeps the bytes.
            let r = a.realloc(q, l4, 9 << 20);
            assert_eq!(r as usize % HUGE, 0);
            let l9 = Layout::from_size_align(9 << 20, 64).unwrap();
            let s = std::slice::from_raw_parts(r, 3 << 20);
            assert!(s.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            // Down to a small block: back to the system allocator, bytes kept.
            let t = a.realloc(r, l9, 1000);
            let s = std::slice::from_raw_parts(t, 1000);
            assert!(s.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            let l1k = Layout::from_size_align(1000, 64).unwrap();
            // And up again.
            let u = a.realloc(t, l1k, HUGE);
            assert_eq!(u as usize % HUGE, 0);
            let s = std::slice::from_raw_parts(u, 1000);
            assert!(s.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            a.dealloc(u, Layout::from_size_align(HUGE, 64).unwrap());
        }
    }

    #[test]
    fn test_small_blocks_and_large_alignments_use_the_system_allocator() {
        let a = HugeAlloc;
        let l = Layout::from_size_align(4096, 16).unwrap();
        assert!(!is_huge(&l));
        assert!(!is_huge(&Layout::from_size_align(HUGE, 2 * HUGE).unwrap()));
        assert!(is_huge(&Layout::from_size_align(HUGE, 8).unwrap()));
        // SAFETY: a valid non-zero layout, freed once with it.
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null());
            p.write_bytes(7, 4096);
            a.dealloc(p, l);
        }
        assert_eq!(mapped_len(1), HUGE);
        assert_eq!(mapped_len(HUGE), HUGE);
        assert_eq!(mapped_len(HUGE + 1), 2 * HUGE);
    }
}
