//! Batches in flat arrays, the shape that crosses a language boundary in one
//! copy: token segments back to back in one buffer in, lanes back to back in
//! one buffer out, each located by a table of offsets.

use super::{Forest, NodeId};
use crate::error::{CoreError, CoreResult};

fn invalid(message: String) -> CoreError {
    CoreError::InvalidArgument(message)
}

/// Split `tokens` into the (view, tokens) segments of `nodes` nodes that each
/// have one segment per view in `views`: segment `k` belongs to node
/// `k / views.len()` and view `views[k % views.len()]` and is
/// `tokens[offsets[k]..offsets[k + 1]]`. `offsets` must hold
/// `nodes * views.len() + 1` non-decreasing entries, the last at most
/// `tokens.len()`. The result is flat: node `i` owns the entries
/// `i * views.len()..(i + 1) * views.len()`.
pub fn split_segments<'a>(
    nodes: usize,
    views: &[u16],
    tokens: &'a [u32],
    offsets: &[u64],
) -> CoreResult<Vec<(u16, &'a [u32])>> {
    let expected = nodes
        .checked_mul(views.len())
        .and_then(|segments| segments.checked_add(1))
        .ok_or_else(|| invalid(format!("{nodes} nodes x {} views is too many", views.len())))?;
    if offsets.len() != expected {
        return Err(invalid(format!(
            "{} offsets for {nodes} nodes x {} views; expected {expected}",
            offsets.len(),
            views.len()
        )));
    }
    for (k, pair) in offsets.windows(2).enumerate() {
        if pair[0] > pair[1] {
            return Err(invalid(format!(
                "offsets decrease at segment {k}: {} > {}",
                pair[0], pair[1]
            )));
        }
    }
    let last = offsets[offsets.len() - 1];
    if last > tokens.len() as u64 {
        return Err(invalid(format!(
            "offsets end at {last} but only {} tokens were given",
            tokens.len()
        )));
    }
    // Every offset is now at most `last`, which fits usize.
    let mut bounds = offsets.iter().map(|&o| o as usize);
    let mut start = bounds.next().unwrap_or(0);
    let mut out = Vec::with_capacity(offsets.len() - 1);
    for _ in 0..nodes {
        for &view in views {
            let end = bounds.next().expect("length checked above");
            out.push((view, &tokens[start..end]));
            start = end;
        }
    }
    Ok(out)
}

impl Forest {
    /// Where the lanes of `(ids[i], views[i])` lie when laid back to back:
    /// `ids.len() + 1` offsets from 0, lane `i` spanning `offsets[i]..offsets[i + 1]`.
    pub fn lane_offsets(&self, ids: &[NodeId], views: &[u16]) -> CoreResult<Vec<u64>> {
        if ids.len() != views.len() {
            return Err(invalid(format!(
                "{} nodes for {} views",
                ids.len(),
                views.len()
            )));
        }
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        let mut total = 0u64;
        offsets.push(total);
        for (&id, &view) in ids.iter().zip(views) {
            total += self.lane_len_of(self.live_slot(id)?, view) as u64;
            offsets.push(total);
        }
        Ok(offsets)
    }

    /// Write the lanes of `(ids[i], views[i])` into `out` at the `offsets`
    /// that [`Forest::lane_offsets`] gave for them; `out` holds exactly the
    /// total. Offsets that do not match the lanes are an error (and leave
    /// `out` partly written).
    pub fn write_lanes(
        &self,
        ids: &[NodeId],
        views: &[u16],
        offsets: &[u64],
        out: &mut [u32],
    ) -> CoreResult<()> {
        let n = ids.len();
        if views.len() != n || offsets.len() != n + 1 {
            return Err(invalid(format!(
                "{n} nodes, {} views and {} offsets; expected {} offsets",
                views.len(),
                offsets.len(),
                n + 1
            )));
        }
        if offsets[0] != 0 || offsets[n] != out.len() as u64 {
            return Err(invalid(format!(
                "offsets span {}..{} but the buffer holds {} tokens",
                offsets[0],
                offsets[n],
                out.len()
            )));
        }
        for (i, (&id, &view)) in ids.iter().zip(views).enumerate() {
            let (start, end) = (offsets[i], offsets[i + 1]);
            if start > end || end > out.len() as u64 {
                return Err(invalid(format!(
                    "offsets of lane {i} ({start}..{end}) are out of order"
                )));
            }
            let slot = self.live_slot(id)?;
            if !self.fill_lane(slot, view, &mut out[start as usize..end as usize]) {
                return Err(invalid(format!(
                    "offsets give lane {i} {} tokens, it has {}",
                    end - start,
                    self.lane_len_of(slot, view)
                )));
            }
        }
        Ok(())
    }

    /// The lanes of `(ids[i], views[i])` back to back, with their offsets.
    pub fn lanes_packed(&self, ids: &[NodeId], views: &[u16]) -> CoreResult<(Vec<u32>, Vec<u64>)> {
        let offsets = self.lane_offsets(ids, views)?;
        let mut tokens = vec![0; offsets[ids.len()] as usize];
        self.write_lanes(ids, views, &offsets, &mut tokens)?;
        Ok((tokens, offsets))
    }
}
