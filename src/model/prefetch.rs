//! Writing deferred payloads ([`crate::ir::deferred`]) while the next ones are computed.
//!
//! The save knows, before it writes anything, which deferred payloads it will meet and in
//! what order (the order of its own traversal of the model). A producer thread computes
//! them in that order, a few MB at a time on rayon's pool, and hands the pieces over a short
//! queue; the writer copies each piece into the file as it comes. Computing, the copy into
//! the page cache and the disk writes overlap, and only a few pieces are in memory at once
//! (their buffers go back to the producer to be reused, so they are not faulted in again).
//!
//! A payload the producer was not told about, or met out of order, is computed by the writer
//! itself, piece by piece: slower, same bytes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::ir::deferred::{self, Fill, Lookup};

/// Bytes of one piece: small enough that a few in flight cost little memory, large enough
/// to split well across threads and to amortize the write calls.
const PIECE: usize = 2 << 20;
/// Pieces computed ahead of the writer.
const AHEAD: usize = 3;
/// Bytes of a plain (already computed or memory-mapped) payload written per call.
const PLAIN_PIECE: usize = 16 << 20;

/// One computed piece: payload index (in the announced order), offset, bytes.
type Piece = (usize, usize, Vec<u8>);

/// The writer's side.
pub struct Payloads {
    /// Payload base address -> index in the announced order.
    index: HashMap<usize, usize>,
    pieces: Option<Receiver<Piece>>,
    recycle: Option<SyncSender<Vec<u8>>>,
    /// A piece received for a later payload than the one being written.
    pending: Option<Piece>,
    scratch: Vec<u8>,
}

/// The producer's side: run [`Producer::run`] on its own thread.
pub struct Producer {
    fills: Vec<Arc<dyn Fill>>,
    pieces: SyncSender<Piece>,
    recycle: Receiver<Vec<u8>>,
}

/// A writer and its producer for the deferred payloads among `payloads`, in the order
/// they will be written (other byte slices are ignored). `None` for the producer when
/// there is nothing to compute.
pub fn pipeline<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> (Payloads, Option<Producer>) {
    let mut index = HashMap::new();
    let mut fills = Vec::new();
    for raw in payloads {
        if raw.len() < deferred::MIN_DEFERRED {
            continue;
        }
        if let Lookup::Whole(fill) = deferred::lookup(raw)
            && let Entry::Vacant(e) = index.entry(raw.as_ptr() as usize)
        {
            e.insert(fills.len());
            fills.push(fill);
        }
    }
    if fills.is_empty() {
        return (Payloads::inline(), None);
    }
    let (piece_tx, piece_rx) = sync_channel(AHEAD);
    let (recycle_tx, recycle_rx) = sync_channel(AHEAD + 2);
    (
        Payloads {
            index,
            pieces: Some(piece_rx),
            recycle: Some(recycle_tx),
            pending: None,
            scratch: Vec::new(),
        },
        Some(Producer {
            fills,
            pieces: piece_tx,
            recycle: recycle_rx,
        }),
    )
}

impl Producer {
    /// Computes every announced payload in order; stops early when the writer is gone.
    pub fn run(self) {
        for (i, fill) in self.fills.iter().enumerate() {
            for (start, end) in deferred::pieces(&**fill, PIECE) {
                let mut buf = self.recycle.try_recv().unwrap_or_default();
                buf.resize(end - start, 0);
                fill.fill(start, &mut buf);
                if self.pieces.send((i, start, buf)).is_err() {
                    return;
                }
            }
        }
    }
}

impl Payloads {
    /// A writer without a producer: deferred payloads are computed when met.
    pub fn inline() -> Self {
        Payloads {
            index: HashMap::new(),
            pieces: None,
            recycle: None,
            pending: None,
            scratch: Vec::new(),
        }
    }

    /// Writes `raw` through `out`; a deferred payload is written as its values.
    pub fn write(
        &mut self,
        raw: &[u8],
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if raw.len() < deferred::MIN_DEFERRED {
            return out(raw);
        }
        match deferred::lookup(raw) {
            Lookup::Plain => {
                // Writing from a file map faults its pages into this process: release them
                // piece by piece so that copying a large float tensor through keeps the
                // resident size near a piece (a no-op for heap memory).
                for piece in raw.chunks(PLAIN_PIECE) {
                    out(piece)?;
                    crate::model::release_pages(piece);
                }
                Ok(())
            }
            Lookup::Partial => Err(io::Error::other(
                "part of a deferred tensor payload cannot be written on its own",
            )),
            Lookup::Whole(fill) => {
                let i = self.index.remove(&(raw.as_ptr() as usize));
                match i {
                    Some(i) => self.write_prefetched(i, &*fill, out),
                    None => self.write_range(&*fill, 0, out),
                }
            }
        }
    }

    /// Takes payload `i`'s pieces from the producer, dropping pieces of payloads written
    /// before (out of order); falls back to computing what the producer cannot give.
    fn write_prefetched(
        &mut self,
        i: usize,
        fill: &dyn Fill,
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let len = fill.len();
        let mut written = 0;
        while written < len {
            let piece = match self.pending.take() {
                Some(p) => Some(p),
                None => self.pieces.as_ref().and_then(|rx| rx.recv().ok()),
            };
            let Some((j, start, buf)) = piece else {
                // The producer stopped: compute the rest here.
                return self.write_range(fill, written, out);
            };
            if j < i {
                self.give_back(buf);
                continue;
            }
            if j > i || start != written {
                // Payload `i` was met after the producer moved on.
                self.pending = Some((j, start, buf));
                return self.write_range(fill, written, out);
            }
            let r = out(&buf);
            written += buf.len();
            self.give_back(buf);
            r?;
        }
        Ok(())
    }

    /// Computes and writes the payload from byte `from` (a piece boundary) on.
    fn write_range(
        &mut self,
        fill: &dyn Fill,
        from: usize,
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        for (start, end) in deferred::pieces(fill, PIECE) {
            if start < from {
                continue;
            }
            self.scratch.resize(end - start, 0);
            fill.fill(start, &mut self.scratch);
            out(&self.scratch)?;
        }
        Ok(())
    }

    fn give_back(&self, buf: Vec<u8>) {
        if let Some(tx) = &self.recycle {
            let _ = tx.try_send(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::deferred::{Ramp, deferred};

    fn ramp(len: usize, seed: u8) -> Arc<Ramp> {
        Arc::new(Ramp {
            len,
            seed,
            granule: 1000,
        })
    }

    /// Writes `order` (indices into `payloads`) through a pipeline that was announced
    /// `announced`; returns what was written.
    fn write_through(payloads: &[bytes::Bytes], announced: &[usize], order: &[usize]) -> Vec<u8> {
        let (mut w, producer) = pipeline(announced.iter().map(|&i| &payloads[i][..]));
        let mut file = Vec::new();
        std::thread::scope(|s| {
            if let Some(p) = producer {
                s.spawn(move || p.run());
            }
            for &i in order {
                w.write(&payloads[i], &mut |b| {
                    file.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            }
            drop(w);
        });
        file
    }

    #[test]
    fn pieces_arrive_in_order_whatever_the_announced_order() {
        // Several pieces each (PIECE is 2 MB), plus a plain payload in between.
        let lens = [5 * PIECE / 2 + 1000, 3 * PIECE + 7, PIECE / 3];
        let mut payloads: Vec<bytes::Bytes> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| deferred(ramp(len, i as u8)))
            .collect();
        payloads.push(bytes::Bytes::from(vec![9u8; 100_000]));
        let want = |order: &[usize]| -> Vec<u8> {
            order
                .iter()
                .flat_map(|&i| match i {
                    3 => vec![9u8; 100_000],
                    _ => ramp(lens[i], i as u8).expected(),
                })
                .collect()
        };
        for (announced, order) in [
            (vec![0, 3, 1, 2], vec![0, 3, 1, 2]),
            (vec![0, 1, 2], vec![2, 1, 0]),
            (vec![1, 0], vec![0, 1, 2]),
            (vec![], vec![1, 2]),
            (vec![0, 1, 2], vec![0]),
            (vec![0, 0, 1], vec![0, 0, 1]),
        ] {
            assert_eq!(
                write_through(&payloads, &announced, &order),
                want(&order),
                "announced {announced:?}, written {order:?}"
            );
        }
    }

    #[test]
    fn slices_of_deferred_payloads_are_refused() {
        let b = deferred(ramp(200_000, 1));
        let mut w = Payloads::inline();
        let err = w.write(&b[1000..], &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("deferred"), "{err}");
    }

    #[test]
    fn a_failing_writer_stops_the_producer() {
        let payloads: Vec<bytes::Bytes> = (0..3).map(|i| deferred(ramp(3 * PIECE, i))).collect();
        let (mut w, producer) = pipeline(payloads.iter().map(|b| &b[..]));
        std::thread::scope(|s| {
            s.spawn(move || producer.unwrap().run());
            let r = w.write(&payloads[0], &mut |_| Err(io::Error::other("disk full")));
            assert!(r.is_err());
            // Dropping the writer ends the producer (the scope joins it).
            drop(w);
        });
    }
}
