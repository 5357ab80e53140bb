//! `TfIdfVectorizer` (9): counts the n-grams of a pool in each row of integer token ids and
//! weighs the counts.
//!
//! Semantics (the ONNX spec and its reference implementation, which onnxruntime follows):
//! - `pool_int64s` holds the n-grams, grouped by length: `ngram_counts[i]` is where the
//!   n-grams of length `i + 1` start. Only lengths within `[min_gram_length,
//!   max_gram_length]` are looked for. The k-th n-gram of the pool (in pool order, counting
//!   every length) maps to output column `ngram_indexes[k]`; the output has
//!   `max(ngram_indexes) + 1` columns.
//! - In each row, an n-gram is matched at every start position with every skip distance
//!   `d` in `1..=max_skip_count + 1` (its items `d` apart). Unigrams are counted once, not
//!   once per skip distance.
//! - `mode`: `TF` gives the counts, `IDF` gives `weights[col]` (or 1) where the count is
//!   positive, `TFIDF` gives `weights[col] * count` (or the count).
//! - Input `[C]` gives output `[cols]`, input `[B, C]` gives `[B, cols]`; f32 output.
//!
//! Token ids are int32 or int64; the string form (`pool_strings`) is not supported because
//! the runtime does not store strings.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{dname, err, req};
use super::{BuildCtx, FnOp, Op, Registry};

/// One trie level: the next token's entry. `id` is the 1-based pool index of the n-gram that
/// ends here (0: none ends here, only longer ones pass through).
#[derive(Default)]
struct Gram {
    id: usize,
    next: HashMap<i64, Gram>,
}

#[derive(Clone, Copy, PartialEq)]
enum Weighting {
    Tf,
    Idf,
    TfIdf,
}

struct TfIdf {
    trie: Gram,
    min_len: usize,
    max_len: usize,
    max_skip: usize,
    /// Output column of each pool n-gram, by 0-based pool index.
    columns: Vec<usize>,
    width: usize,
    weights: Vec<f32>,
    mode: Weighting,
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let mode = match node.attr_req::<String>("mode")?.as_str() {
        "TF" => Weighting::Tf,
        "IDF" => Weighting::Idf,
        "TFIDF" => Weighting::TfIdf,
        m => return Err(node.error(format!("mode '{m}' is not TF, IDF or TFIDF"))),
    };
    let min_len = node.attr_req::<i64>("min_gram_length")?;
    let max_len = node.attr_req::<i64>("max_gram_length")?;
    let max_skip = node.attr_req::<i64>("max_skip_count")?;
    if min_len < 1 || max_len < min_len || max_skip < 0 {
        return Err(node.error(format!(
            "gram lengths {min_len}..{max_len} and max_skip_count {max_skip} are not valid"
        )));
    }
    let pool = node.attr::<Vec<i64>>("pool_int64s")?.unwrap_or_default();
    if pool.is_empty()
        && !node
            .attr_or::<Vec<String>>("pool_strings", vec![])?
            .is_empty()
    {
        return Err(
            node.error("string n-gram pools are not supported (the runtime has no strings)")
        );
    }
    let counts = node.attr_req::<Vec<i64>>("ngram_counts")?;
    let indexes = node.attr_req::<Vec<i64>>("ngram_indexes")?;
    let weights = node.attr_or::<Vec<f32>>("weights", vec![])?;
    let columns = indexes
        .iter()
        .map(|&i| usize::try_from(i).map_err(|_| node.error(format!("ngram_indexes has {i}"))))
        .collect::<Result<Vec<_>>>()?;
    let width = columns.iter().max().map_or(0, |m| m + 1);
    if !weights.is_empty() && weights.len() < width {
        return Err(node.error(format!(
            "{} weights for {width} output columns",
            weights.len()
        )));
    }
    let (min_len, max_len, max_skip) = (min_len as usize, max_len as usize, max_skip as usize);

    // The pool, as a trie of the n-gram lengths searched for; the others only advance the id.
    let mut trie = Gram::default();
    let mut id = 1usize;
    for (i, &start) in counts.iter().enumerate() {
        let len = i + 1;
        let end = counts.get(i + 1).copied().unwrap_or(pool.len() as i64);
        if start < 0 || end < start || end as usize > pool.len() {
            return Err(node.error(format!(
                "ngram_counts {counts:?} do not fit a pool of {}",
                pool.len()
            )));
        }
        let grams = (end - start) as usize / len;
        if !(min_len..=max_len).contains(&len) {
            id += grams;
            continue;
        }
        for g in 0..grams {
            let items = &pool[start as usize + g * len..start as usize + (g + 1) * len];
            let mut at = &mut trie;
            for &t in items {
                at = at.next.entry(t).or_default();
            }
            at.id = id;
            id += 1;
        }
    }
    if id - 1 > columns.len() {
        return Err(node.error(format!(
            "the pool holds {} n-grams but ngram_indexes has {}",
            id - 1,
            columns.len()
        )));
    }
    let op = TfIdf {
        trie,
        min_len,
        max_len,
        max_skip,
        columns,
        width,
        weights,
        mode,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        op.run(req(ins, 0)?)
    })))
}

impl TfIdf {
    fn run(&self, x: &Value) -> Result<Vec<Value>> {
        let ids: Vec<i64> = match x {
            Value::I64(a) => a.iter().copied().collect(),
            Value::I32(a) => a.iter().map(|&v| v as i64).collect(),
            other => {
                return Err(err(format!(
                    "expects int32 or int64 token ids, got {}",
                    dname(other)
                )));
            }
        };
        let (rows, cols, out_shape) = match x.shape() {
            [] => (1, 1, vec![self.width]),
            [c] => (1, *c, vec![self.width]),
            [b, c] => (*b, *c, vec![*b, self.width]),
            s => return Err(err(format!("expects [C] or [B, C] input, got {s:?}"))),
        };
        let total = rows
            .checked_mul(self.width)
            .ok_or_else(|| err("output size overflows"))?;
        let mut freq = vec![0u32; total];
        for r in 0..rows {
            self.count_row(
                &ids[r * cols..(r + 1) * cols],
                &mut freq[r * self.width..(r + 1) * self.width],
            );
        }
        let y: Vec<f32> = freq
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let w = self.weights.get(i % self.width.max(1)).copied();
                match self.mode {
                    Weighting::Tf => f as f32,
                    Weighting::Idf => match (f > 0, w) {
                        (false, _) => 0.0,
                        (true, Some(w)) => w,
                        (true, None) => 1.0,
                    },
                    Weighting::TfIdf => w.unwrap_or(1.0) * f as f32,
                }
            })
            .collect();
        Ok(vec![Value::F32(
            ArrayD::from_shape_vec(IxDyn(&out_shape), y).map_err(|e| err(e.to_string()))?,
        )])
    }

    fn count_row(&self, row: &[i64], freq: &mut [u32]) {
        let mut start_len = self.min_len;
        for skip in 1..=self.max_skip + 1 {
            for start in 0..row.len() {
                if start + skip * (start_len - 1) >= row.len() {
                    break;
                }
                let mut at = &self.trie;
                let mut len = 1;
                let mut item = start;
                while len <= self.max_len && item < row.len() {
                    let Some(next) = at.next.get(&row[item]) else {
                        break;
                    };
                    if len >= start_len && next.id != 0 {
                        freq[self.columns[next.id - 1]] += 1;
                    }
                    at = next;
                    len += 1;
                    item += skip;
                }
            }
            // Unigrams do not depend on the skip distance: count them on the first pass only.
            if start_len == 1 {
                start_len = 2;
                if start_len > self.max_len {
                    break;
                }
            }
        }
    }
}

pub fn register(r: &mut Registry) {
    r.register("", "TfIdfVectorizer", build);
}
