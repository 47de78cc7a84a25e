//! The model binaries' memory allocator.
//!
//! A forward pass or training step allocates and frees tensors of tens of megabytes by the
//! hundred. glibc's allocator returns each to the system when it is freed and faults the pages in
//! again, zeroed, on the next allocation; on 2 cores that was 20–40 % of the time. The binaries
//! (`retrain-inception`, `retrain-train`, `retrain-eval`, `retrain-predict`, `retrain-train-bench`)
//! use mimalloc instead:
//!
//! ```text
//! #[global_allocator]
//! static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
//! ```
//!
//! and call [`keep_freed_memory`] first thing, so freed blocks are kept for reuse rather than
//! handed back after mimalloc's default delay of a second (shorter than one training step).
//! Libraries never choose the allocator: that is the binary's call.

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, v3 as bundled by
/// `libmimalloc-sys` 0.1.49; a test pins it by its documented default of 1000 ms).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the system: the process's resident memory
/// stays at its high-water mark (the peak a step needs), and every later allocation reuses it.
/// Harmless where mimalloc is linked but not the global allocator.
pub fn keep_freed_memory() {
    // SAFETY: setting an option is a plain store into mimalloc's option table, safe from any
    // thread at any time; the value −1 ("never purge") is one the option documents.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_index_is_mimallocs_purge_delay() {
        // SAFETY: reading an option is a plain load from mimalloc's option table.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(
            default, 1000,
            "mi_option_purge_delay moved: check mimalloc.h"
        );
    }
}
