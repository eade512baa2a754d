//! The heap the role-mapping set holds as the bot keeps it in memory
//! (`Vec<RoleMapping>`), counted by a counting allocator: bytes asked for
//! and blocks (glibc adds 8–16 bytes a block). The set is the one `startup`
//! seeds (a glob, a resource group or one VM each, one role, SSH), so its
//! share of the idle RSS at 10,000 mappings can be told from the rest
//! (issue 17 item 5).
//!
//! ```text
//! cargo bench --bench mapping_bytes -- 10000
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

#[path = "shared/mod.rs"]
#[allow(unused_imports)] // the `/proc` readers are for the child-process benches
mod shared;

use shared::{FirstMapping, mappings};

/// The system allocator, counting what is live.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: a block this allocator gave out, with its layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (isize, isize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    )
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let first = FirstMapping {
        name: "sre-web",
        role: 100,
        vms: "web-*",
    };
    let (bytes, blocks) = live();
    let set = mappings(first, n);
    let (bytes_after, blocks_after) = live();
    let heap = bytes_after - bytes;
    let each = std::mem::size_of_val(&set[0]);
    println!(
        "{n} mappings: {heap} heap bytes in {} blocks, the vector of {each}-byte RoleMappings included: {} B a mapping",
        blocks_after - blocks,
        heap / n.max(1) as isize
    );
}
