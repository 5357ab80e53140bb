//! Elementwise building blocks of transformer layers: rotary position embeddings and the
//! SwiGLU gate.
//!
//! - `RotaryEmbedding` (23): rotates pairs of each head's first `rotary_embedding_dim`
//!   features (0 = the whole head) by the angle of the token's position:
//!   `(x1, x2) → (cos·x1 - sin·x2, sin·x1 + cos·x2)`. The pairs are the two halves of the
//!   rotated part, or with `interleaved` = 1 the features `2i` and `2i+1`; features past
//!   `rotary_embedding_dim` pass through. X is `[B, H, S, D]`, or `[B, S, H·D]` with the
//!   `num_heads` attribute. With `position_ids` `[B, S]` the caches are tables
//!   `[max_position, rotary_embedding_dim/2]` indexed by position; without it they are
//!   `[B, S, rotary_embedding_dim/2]` already gathered.
//! - `SwiGLU` (28): `Y = A · sigmoid(alpha · A) · B` (`alpha` default 1) for A and B of one
//!   shape (no broadcasting).
//!
//! Types: float16, float and double (bfloat16 is not stored by the runtime); float16 is
//! computed in f32 and rounded back. Position ids are int64.

use half::f16;
use ndarray::ArrayD;
use num_traits::Float;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{dname, err, from_vec, ints, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

/// RotaryEmbedding's attributes.
#[derive(Clone, Copy, Debug)]
struct Rope {
    interleaved: bool,
    rotary_dim: usize,
    num_heads: Option<usize>,
}

/// How the rows of X (one head of one token each, `D` features) map to batch and position.
#[derive(Clone, Copy, Debug)]
struct RowLayout {
    batch: usize,
    heads: usize,
    seq: usize,
    head_size: usize,
    /// `[B, H, S, D]` rather than `[B, S, H·D]`.
    heads_first: bool,
}

impl RowLayout {
    fn of(shape: &[usize], num_heads: Option<usize>) -> Result<RowLayout> {
        match *shape {
            [batch, heads, seq, head_size] => Ok(RowLayout {
                batch,
                heads,
                seq,
                head_size,
                heads_first: true,
            }),
            [batch, seq, hidden] => {
                let heads = num_heads.ok_or_else(|| err("3-D X needs the num_heads attribute"))?;
                if hidden % heads != 0 {
                    return Err(err(format!(
                        "X hidden size {hidden} is not a multiple of {heads} heads"
                    )));
                }
                Ok(RowLayout {
                    batch,
                    heads,
                    seq,
                    head_size: hidden / heads,
                    heads_first: false,
                })
            }
            _ => Err(err(format!("X must be 3-D or 4-D, got {shape:?}"))),
        }
    }

    /// `(batch, position in sequence)` of row `r`.
    fn token(&self, r: usize) -> (usize, usize) {
        if self.heads_first {
            (r / (self.heads * self.seq), r % self.seq)
        } else {
            (r / (self.seq * self.heads), (r / self.heads) % self.seq)
        }
    }
}

/// Rotates every row of `x` (row-major, `layout` rows) in place; `cos` / `sin` are row-major
/// caches whose row for a token is `cache_row(batch, position)`.
fn rotate<T: Float>(
    x: &mut [T],
    layout: RowLayout,
    rope: Rope,
    cos: &[T],
    sin: &[T],
    cache_row: impl Fn(usize, usize) -> Result<usize>,
) -> Result<()> {
    let half = rope.rotary_dim / 2;
    if layout.head_size == 0 {
        return Ok(());
    }
    for (r, row) in x.chunks_exact_mut(layout.head_size).enumerate() {
        let (b, s) = layout.token(r);
        let base = cache_row(b, s)? * half;
        let (c, sn) = (&cos[base..base + half], &sin[base..base + half]);
        for i in 0..half {
            let (i1, i2) = if rope.interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (x1, x2) = (row[i1], row[i2]);
            row[i1] = c[i] * x1 - sn[i] * x2;
            row[i2] = sn[i] * x1 + c[i] * x2;
        }
    }
    Ok(())
}

/// RotaryEmbedding on one element type.
fn rope_t<T: Float>(
    x: &ArrayD<T>,
    cos: &ArrayD<T>,
    sin: &ArrayD<T>,
    position_ids: Option<&[i64]>,
    rope: Rope,
) -> Result<ArrayD<T>> {
    let layout = RowLayout::of(x.shape(), rope.num_heads)?;
    let rope = Rope {
        rotary_dim: match rope.rotary_dim {
            0 => layout.head_size,
            d => d,
        },
        ..rope
    };
    if rope.rotary_dim > layout.head_size || !rope.rotary_dim.is_multiple_of(2) {
        return Err(err(format!(
            "rotary_embedding_dim {} must be even and at most the head size {}",
            rope.rotary_dim, layout.head_size
        )));
    }
    let half = rope.rotary_dim / 2;
    if cos.shape() != sin.shape() {
        return Err(err(format!(
            "cos_cache {:?} and sin_cache {:?} differ in shape",
            cos.shape(),
            sin.shape()
        )));
    }
    let (b, s) = (layout.batch, layout.seq);
    let cache_ok = match position_ids {
        Some(_) => cos.ndim() == 2 && cos.shape()[1] == half,
        None => cos.shape() == [b, s, half],
    };
    if !cache_ok {
        return Err(err(format!(
            "cos_cache / sin_cache {:?} must be {} with half the rotary dim ({half}) last",
            cos.shape(),
            if position_ids.is_some() {
                "[max_position, rotary_dim / 2] with position_ids".to_string()
            } else {
                format!("[{b}, {s}, rotary_dim / 2] without position_ids")
            }
        )));
    }
    let max_pos = cos.shape()[0];
    if let Some(p) = position_ids
        && p.len() != b * s
    {
        return Err(err(format!(
            "position_ids has {} entries, expected [{b}, {s}]",
            p.len()
        )));
    }
    let cache_row = |bi: usize, si: usize| -> Result<usize> {
        match position_ids {
            Some(p) => {
                let pos = p[bi * s + si];
                usize::try_from(pos)
                    .ok()
                    .filter(|&q| q < max_pos)
                    .ok_or_else(|| {
                        err(format!(
                            "position id {pos} is outside the caches' {max_pos} positions"
                        ))
                    })
            }
            None => Ok(bi * s + si),
        }
    };
    let (cos, sin) = (standard(cos.view()), standard(sin.view()));
    let (cos, sin) = (cos.as_slice().unwrap_or(&[]), sin.as_slice().unwrap_or(&[]));
    let mut y = standard(x.view()).into_raw_vec_and_offset().0;
    rotate(&mut y, layout, rope, cos, sin, cache_row)?;
    from_vec(x.shape(), y)
}

fn rotary_embedding(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let nonneg = |name: &str| -> Result<Option<usize>> {
        match node.attr::<i64>(name)? {
            None => Ok(None),
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| node.error(format!("{name} must be nonnegative, got {v}"))),
        }
    };
    let rope = Rope {
        interleaved: node.attr_or::<i64>("interleaved", 0)? != 0,
        rotary_dim: nonneg("rotary_embedding_dim")?.unwrap_or(0),
        num_heads: nonneg("num_heads")?.filter(|&h| h > 0),
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (x, cos, sin) = (req(ins, 0)?, req(ins, 1)?, req(ins, 2)?);
        let pos = opt(ins, 3).map(|p| ints(p, "position_ids")).transpose()?;
        let pos = pos.as_deref();
        let y = match (x, cos, sin) {
            (Value::F32(x), Value::F32(c), Value::F32(s)) => {
                Value::F32(rope_t(x, c, s, pos, rope)?)
            }
            (Value::F64(x), Value::F64(c), Value::F64(s)) => {
                Value::F64(rope_t(x, c, s, pos, rope)?)
            }
            (Value::F16(x), Value::F16(c), Value::F16(s)) => {
                let f = |a: &ArrayD<f16>| a.mapv(f16::to_f32);
                Value::F16(rope_t(&f(x), &f(c), &f(s), pos, rope)?.mapv(f16::from_f32))
            }
            _ => {
                return Err(err(format!(
                    "X, cos_cache and sin_cache must share one float type, got {}, {}, {}",
                    dname(x),
                    dname(cos),
                    dname(sin)
                )));
            }
        };
        Ok(vec![y])
    })))
}

/// `a · sigmoid(alpha · a) · b`, the sigmoid split by sign so exp never overflows.
fn swiglu_t<T: Float>(a: &ArrayD<T>, b: &ArrayD<T>, alpha: T) -> Result<ArrayD<T>> {
    if a.shape() != b.shape() {
        return Err(err(format!(
            "A {:?} and B {:?} must have the same shape (SwiGLU does not broadcast)",
            a.shape(),
            b.shape()
        )));
    }
    let one = T::one();
    Ok(ndarray::Zip::from(a).and(b).map_collect(|&x, &y| {
        let z = alpha * x;
        let sig = if z >= T::zero() {
            one / (one + (-z).exp())
        } else {
            let e = z.exp();
            e / (one + e)
        };
        x * sig * y
    }))
}

fn swiglu(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let alpha = node.attr_or::<f32>("alpha", 1.0)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (a, b) = (req(ins, 0)?, req(ins, 1)?);
        let y = match (a, b) {
            (Value::F32(a), Value::F32(b)) => Value::F32(swiglu_t(a, b, alpha)?),
            (Value::F64(a), Value::F64(b)) => Value::F64(swiglu_t(a, b, alpha as f64)?),
            (Value::F16(a), Value::F16(b)) => Value::F16(
                swiglu_t(&a.mapv(f16::to_f32), &b.mapv(f16::to_f32), alpha)?.mapv(f16::from_f32),
            ),
            _ => {
                return Err(err(format!(
                    "A and B must share one float type, got {} and {}",
                    dname(a),
                    dname(b)
                )));
            }
        };
        Ok(vec![y])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "RotaryEmbedding", rotary_embedding);
    r.register("", "SwiGLU", swiglu);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn interleaved_rotation_by_a_quarter_turn() {
        // One token, one head of 4 features, rotary dim 2 (the pair 0, 1), 90 degrees.
        let x = array![[[1.0f32, 2.0, 3.0, 4.0]]].into_dyn(); // [B=1, S=1, H·D=4]
        let cos = array![[1.0f32], [0.0]].into_dyn();
        let sin = array![[0.0f32], [1.0]].into_dyn();
        let rope = Rope {
            interleaved: true,
            rotary_dim: 2,
            num_heads: Some(1),
        };
        let y = rope_t(&x, &cos, &sin, Some(&[1]), rope).unwrap();
        assert_eq!(y, array![[[-2.0f32, 1.0, 3.0, 4.0]]].into_dyn());
        // A position past the caches is an error, not a panic.
        assert!(rope_t(&x, &cos, &sin, Some(&[2]), rope).is_err());
    }

    #[test]
    fn swiglu_refuses_broadcasting() {
        let a = array![1.0f32, 2.0].into_dyn();
        let b = array![1.0f32].into_dyn();
        assert!(swiglu_t(&a, &b, 1.0).is_err());
        let y = swiglu_t(&a, &a, 1.0).unwrap();
        let want = 2.0 * 2.0 / (1.0 + (-2.0f32).exp());
        assert!((y[1] - want).abs() < 1e-6);
    }
}
