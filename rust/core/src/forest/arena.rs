//! Growth and compaction of the forest's flat arenas (slots, segment table,
//! tokens, bytes).

/// Smallest capacity an arena grows to, so tiny forests do not reallocate per push.
const MIN_CAPACITY: usize = 64;

/// Make room for `additional` more items, growing by a quarter rather than
/// doubling: append stays amortised O(1) while unused capacity stays below
/// 25%, which keeps memory close to what the live nodes need.
pub(super) fn grow<T>(v: &mut Vec<T>, additional: usize) {
    let need = v.len() + additional;
    if need > v.capacity() {
        let target = need.max(v.capacity() + v.capacity() / 4).max(MIN_CAPACITY);
        v.reserve_exact(target - v.len());
        populate_spare(v);
    }
}

/// Spare capacity below this is left to fault in page by page.
const POPULATE_MIN_BYTES: usize = 1 << 20;

/// Map in a large arena's new spare capacity with one call instead of one
/// page fault per 4 KiB as it fills: appending tokens to fresh memory is
/// otherwise dominated by those faults. At most the quarter of growth is
/// mapped ahead of use. Needs Linux 5.14 (MADV_POPULATE_WRITE); elsewhere
/// the arena simply faults in as before.
#[cfg(target_os = "linux")]
fn populate_spare<T>(v: &Vec<T>) {
    use std::ffi::{c_int, c_void};
    extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    }
    const MADV_POPULATE_WRITE: c_int = 23;
    const PAGE: usize = 4096;
    let base = v.as_ptr() as usize;
    let size = std::mem::size_of::<T>();
    // Whole pages of the spare capacity only.
    let first = (base + v.len() * size).next_multiple_of(PAGE);
    let last = (base + v.capacity() * size) & !(PAGE - 1);
    if last >= first + POPULATE_MIN_BYTES {
        // SAFETY: the range lies inside the vector's own allocation, past its
        // initialised items; populating maps pages in and never writes data.
        // The result is ignored: failure only means the pages fault in later.
        unsafe { madvise(first as *mut c_void, last - first, MADV_POPULATE_WRITE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn populate_spare<T>(_: &Vec<T>) {}

/// A live run `[off, off + len)` of an arena, owned by `owner` (a slot or a
/// segment-table index) whose stored offset must follow the move.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    pub off: u32,
    pub len: u32,
    pub owner: u32,
}

/// Slide the live runs to the front of `data`, keeping their order, drop the
/// garbage behind them and give back spare capacity. On return each run's `off`
/// is its new offset. Runs must not overlap.
pub(super) fn compact<T: Copy>(data: &mut Vec<T>, runs: &mut [Run]) {
    // Ascending order means every move goes left, onto bytes already copied out.
    runs.sort_unstable_by_key(|run| run.off);
    let mut cursor = 0usize;
    for run in runs.iter_mut() {
        let (off, len) = (run.off as usize, run.len as usize);
        if off != cursor {
            data.copy_within(off..off + len, cursor);
        }
        run.off = cursor as u32;
        cursor += len;
    }
    data.truncate(cursor);
    data.shrink_to(cursor + cursor / 4);
}

/// Whether an arena's garbage is worth a compaction: at least `floor` items and
/// at least half the arena, so each compaction is paid for by the frees before it.
pub(super) fn worth_compacting(garbage: usize, len: usize, floor: usize) -> bool {
    garbage > 0 && garbage >= floor && garbage * 2 >= len
}
