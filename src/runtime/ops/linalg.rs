//! Matrix products.
//!
//! - `MatMul` (1, 9, 13): numpy `matmul` semantics: a 1-D first operand is promoted to a row
//!   (and the dim removed after), a 1-D second operand to a column; leading batch dims
//!   broadcast. f32/f64 through the GEMM kernel (an A with batch dims times a 2-D B is one
//!   product over the folded rows); f16 and bf16 in f32 and rounded back; i32/i64/u32/u64
//!   with wrapping arithmetic.
//! - `Gemm` (7, 9, 11, 13): `Y = alpha · A' · B' + beta · C`, where `A' = A^T` when `transA`,
//!   `B' = B^T` when `transB` (transposes are strides, not copies), and C (optional since 11)
//!   broadcasts unidirectionally to `[M, N]`. Float types only (f16 and bf16 in f32).
//!
//! With a constant f32 weight (MatMul's 2-D B; Gemm's B with C absent or a constant row) the
//! op is a [`Linear`]: the weight is packed once when the op is built and f32 inputs run on
//! the packed kernels, which also apply a bias and an activation in their output loop (the
//! session fuses `MatMul/Gemm [+ Add(bias)] [+ Relu | Clip | LeakyRelu]` into one such step).
//! Other element types and shapes take the general path.

use std::sync::Arc;

use half::{bf16, f16};
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewMut2, Axis, Ix2, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;
use crate::runtime::kernels::gemm_f32::{
    Act, Epilogue, GemmElem, PackedB, gemm, gemm_packed, output_buffer,
};

use super::util::{broadcast_shape, bview, dname, err, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

/// Runs `f(a_i, b_i, out_i)` for every broadcast batch entry; returns the `[batch.., M, N]`
/// result.
fn batched<T: Copy + Default>(
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    f: impl Fn(&ArrayView2<T>, &ArrayView2<T>, &mut ArrayViewMut2<T>),
) -> Result<ArrayD<T>> {
    let (ra, rb) = (a.ndim(), b.ndim());
    if ra == 0 || rb == 0 {
        return Err(err("MatMul operands must have rank at least 1"));
    }
    let av = if ra == 1 {
        a.view().insert_axis(Axis(0))
    } else {
        a.view()
    };
    let bv = if rb == 1 {
        b.view().insert_axis(Axis(1))
    } else {
        b.view()
    };
    let (m, k) = (av.shape()[av.ndim() - 2], av.shape()[av.ndim() - 1]);
    let (k2, n) = (bv.shape()[bv.ndim() - 2], bv.shape()[bv.ndim() - 1]);
    if k != k2 {
        return Err(err(format!(
            "inner dimensions differ: {:?} x {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let batch = broadcast_shape(&av.shape()[..av.ndim() - 2], &bv.shape()[..bv.ndim() - 2])?;
    let nb: usize = batch.iter().product();
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    crate::runtime::budget::check_shape::<T>(&out_shape)?;
    let mut out = ArrayD::<T>::default(IxDyn(&out_shape));
    if bv.ndim() == 2 && av.is_standard_layout() {
        // Fold A's batch dims into its rows: one large product instead of many small ones.
        let a2 = av
            .into_shape_with_order((nb * m, k))
            .map_err(|e| err(e.to_string()))?;
        let b2 = bv
            .into_dimensionality::<Ix2>()
            .map_err(|e| err(e.to_string()))?;
        let mut o2 = out
            .view_mut()
            .into_shape_with_order((nb * m, n))
            .map_err(|e| err(e.to_string()))?;
        f(&a2, &b2, &mut o2);
    } else {
        let mut full_a = batch.clone();
        full_a.extend([m, k]);
        let mut full_b = batch.clone();
        full_b.extend([k, n]);
        let ab = av
            .broadcast(IxDyn(&full_a))
            .ok_or_else(|| err("cannot broadcast A"))?;
        let bb = bv
            .broadcast(IxDyn(&full_b))
            .ok_or_else(|| err("cannot broadcast B"))?;
        let mut o3 = out
            .view_mut()
            .into_shape_with_order((nb, m, n))
            .map_err(|e| err(e.to_string()))?;
        for (j, idx) in ndarray::indices(IxDyn(&batch)).into_iter().enumerate() {
            let mut sa = ab.view();
            let mut sb = bb.view();
            for d in 0..batch.len() {
                sa = sa.index_axis_move(Axis(0), idx[d]);
                sb = sb.index_axis_move(Axis(0), idx[d]);
            }
            let sa = sa
                .into_dimensionality::<Ix2>()
                .map_err(|e| err(e.to_string()))?;
            let sb = sb
                .into_dimensionality::<Ix2>()
                .map_err(|e| err(e.to_string()))?;
            f(&sa, &sb, &mut o3.index_axis_mut(Axis(0), j));
        }
    }
    // Drop the promoted dims of 1-D operands.
    let mut final_shape = batch;
    if ra > 1 {
        final_shape.push(m);
    }
    if rb > 1 {
        final_shape.push(n);
    }
    out.into_shape_with_order(IxDyn(&final_shape))
        .map_err(|e| err(e.to_string()))
}

fn float_mm<T: GemmElem + Default + PartialEq>(a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>> {
    batched(a, b, |x, y, o| gemm(T::one(), x, y, T::zero(), o))
}

macro_rules! int_mm {
    ($t:ty) => {
        |x: &ArrayView2<$t>, y: &ArrayView2<$t>, o: &mut ArrayViewMut2<$t>| {
            for ((i, j), v) in o.indexed_iter_mut() {
                let mut acc: $t = 0;
                for p in 0..x.ncols() {
                    acc = acc.wrapping_add(x[[i, p]].wrapping_mul(y[[p, j]]));
                }
                *v = acc;
            }
        }
    };
}

/// numpy `matmul` of two values of one type.
pub fn matmul(a: &Value, b: &Value) -> Result<Value> {
    Ok(match (a, b) {
        (Value::F32(x), Value::F32(y)) => Value::F32(float_mm(x, y)?),
        (Value::F64(x), Value::F64(y)) => Value::F64(float_mm(x, y)?),
        (Value::F16(x), Value::F16(y)) => {
            Value::F16(float_mm(&x.mapv(f16::to_f32), &y.mapv(f16::to_f32))?.mapv(f16::from_f32))
        }
        (Value::BF16(x), Value::BF16(y)) => Value::BF16(
            float_mm(&x.mapv(bf16::to_f32), &y.mapv(bf16::to_f32))?.mapv(bf16::from_f32),
        ),
        (Value::I64(x), Value::I64(y)) => Value::I64(batched(x, y, int_mm!(i64))?),
        (Value::I32(x), Value::I32(y)) => Value::I32(batched(x, y, int_mm!(i32))?),
        (Value::U64(x), Value::U64(y)) => Value::U64(batched(x, y, int_mm!(u64))?),
        (Value::U32(x), Value::U32(y)) => Value::U32(batched(x, y, int_mm!(u32))?),
        _ => {
            return Err(err(format!(
                "MatMul of {} and {} (both must be one of f32, f64, f16, bf16, i64, i32, u64, u32)",
                dname(a),
                dname(b)
            )));
        }
    })
}

fn matmul_op(_: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    // A constant f16 B (fp16 weights) is widened once here, not on every run.
    let b16: Option<ArrayD<f32>> = match ctx.const_inputs.get(1).copied().flatten() {
        Some(Value::F16(b)) => Some(b.mapv(f16::to_f32)),
        _ => None,
    };
    let linear = ctx
        .const_inputs
        .get(1)
        .copied()
        .flatten()
        .and_then(Linear::matmul);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (a, b) = (req(ins, 0)?, req(ins, 1)?);
        if let Some(out) = linear.as_ref().and_then(|l| l.run(a)) {
            return Ok(vec![out]);
        }
        if let (Value::F16(x), Some(bw)) = (a, &b16) {
            return Ok(vec![Value::F16(
                float_mm(&x.mapv(f16::to_f32), bw)?.mapv(f16::from_f32),
            )]);
        }
        Ok(vec![matmul(a, b)?])
    })))
}

fn gemm_t<T: GemmElem + Default + PartialEq + num_traits::FromPrimitive>(
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    c: Option<&ArrayD<T>>,
    (alpha, beta, ta, tb): (f32, f32, bool, bool),
) -> Result<ArrayD<T>> {
    let a2 = a
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| err(format!("A must be 2-D, got {:?}", a.shape())))?;
    let b2 = b
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| err(format!("B must be 2-D, got {:?}", b.shape())))?;
    let a2 = if ta { a2.reversed_axes() } else { a2 };
    let b2 = if tb { b2.reversed_axes() } else { b2 };
    let (m, k) = a2.dim();
    let (k2, n) = b2.dim();
    if k != k2 {
        return Err(err(format!(
            "inner dimensions differ: A' is {m}x{k}, B' is {k2}x{n}"
        )));
    }
    let conv = |v: f32| T::from_f32(v).ok_or_else(|| err("bad scalar"));
    let (alpha, beta) = (conv(alpha)?, conv(beta)?);
    let (mut out, beta) = match c {
        Some(c) if beta != T::zero() => {
            let cv = bview(c, &[m, n])?;
            (
                standard(cv)
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| err(e.to_string()))?,
                beta,
            )
        }
        _ => (Array2::<T>::default((m, n)), T::zero()),
    };
    gemm(alpha, &a2, &b2, beta, &mut out.view_mut());
    Ok(out.into_dyn())
}

/// Gemm's attributes: (alpha, beta, transA, transB).
fn gemm_attrs(node: &Node) -> Result<(f32, f32, bool, bool)> {
    Ok((
        node.attr_or::<f32>("alpha", 1.0)?,
        node.attr_or::<f32>("beta", 1.0)?,
        node.attr_or::<i64>("transA", 0)? != 0,
        node.attr_or::<i64>("transB", 0)? != 0,
    ))
}

fn gemm_op(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    gemm_op_with(node, Linear::gemm(node, ctx)?)
}

/// MatMul without a packed weight: the general path only. The session's fused Linear steps
/// keep it as their fallback, so the weight is not held packed twice.
pub fn unpacked_matmul_op() -> Box<dyn Op> {
    Box::new(FnOp(|ins: &[Option<&Value>]| {
        Ok(vec![matmul(req(ins, 0)?, req(ins, 1)?)?])
    }))
}

/// Gemm without a packed weight (see [`unpacked_matmul_op`]).
pub fn unpacked_gemm_op(node: &Node) -> Result<Box<dyn Op>> {
    gemm_op_with(node, None)
}

fn gemm_op_with(node: &Node, linear: Option<Linear>) -> Result<Box<dyn Op>> {
    let p = gemm_attrs(node)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (a, b, c) = (req(ins, 0)?, req(ins, 1)?, opt(ins, 2));
        if let Some(out) = linear.as_ref().and_then(|l| l.run(a)) {
            return Ok(vec![out]);
        }
        let mismatch = || {
            err(format!(
                "Gemm inputs must share one float type, got {} and {}",
                dname(a),
                dname(b)
            ))
        };
        Ok(vec![match (a, b) {
            (Value::F32(x), Value::F32(y)) => {
                let c = c.map(|c| c.as_f32().ok_or_else(mismatch)).transpose()?;
                Value::F32(gemm_t(x, y, c, p)?)
            }
            (Value::F64(x), Value::F64(y)) => {
                let c = c.map(|c| c.as_f64().ok_or_else(mismatch)).transpose()?;
                Value::F64(gemm_t(x, y, c, p)?)
            }
            (Value::F16(x), Value::F16(y)) => {
                let c = c
                    .map(|c| c.as_f16().ok_or_else(mismatch).map(|c| c.mapv(f16::to_f32)))
                    .transpose()?;
                let r = gemm_t(&x.mapv(f16::to_f32), &y.mapv(f16::to_f32), c.as_ref(), p)?;
                Value::F16(r.mapv(f16::from_f32))
            }
            (Value::BF16(x), Value::BF16(y)) => {
                let c = c
                    .map(|c| {
                        c.as_bf16()
                            .ok_or_else(mismatch)
                            .map(|c| c.mapv(bf16::to_f32))
                    })
                    .transpose()?;
                let r = gemm_t(&x.mapv(bf16::to_f32), &y.mapv(bf16::to_f32), c.as_ref(), p)?;
                Value::BF16(r.mapv(bf16::from_f32))
            }
            _ => return Err(mismatch()),
        }])
    })))
}

/// `act(A'·W + bias)` with a constant f32 weight `W [K, N]` packed once: MatMul with a
/// constant 2-D B, Gemm with a constant B (alpha folded into W, `beta·C` into the bias when C
/// is absent or a constant row), and the session's fused Linear steps (see
/// `runtime/session/fuse_linear.rs`). Cloning shares the packed weight.
#[derive(Clone, Debug)]
pub struct Linear {
    w: Arc<PackedB>,
    bias: Option<Arc<[f32]>>,
    act: Act,
    /// `Some(transA)` for Gemm (A must be 2-D, transposed when set); `None` for MatMul (A of
    /// any rank ≥ 1, leading dims folded into rows; a 1-D A gives a 1-D result).
    gemm_trans_a: Option<bool>,
}

impl Linear {
    /// MatMul's B when it is a 2-D f32 constant.
    pub fn matmul(b: &Value) -> Option<Linear> {
        let b = b.as_f32()?.view().into_dimensionality::<Ix2>().ok()?;
        Some(Linear {
            w: Arc::new(PackedB::new(&b)),
            bias: None,
            act: Act::None,
            gemm_trans_a: None,
        })
    }

    /// A Gemm node whose B is an f32 constant and whose C is absent, ignored (beta = 0) or a
    /// constant row (`[]`, `[1]`, `[N]`, `[1, N]`); `None` otherwise.
    pub fn gemm(node: &Node, ctx: &BuildCtx) -> Result<Option<Linear>> {
        let (alpha, beta, ta, tb) = gemm_attrs(node)?;
        let konst = |i: usize| ctx.const_inputs.get(i).copied().flatten();
        let Some(b) = konst(1).and_then(Value::as_f32) else {
            return Ok(None);
        };
        let Ok(b) = b.view().into_dimensionality::<Ix2>() else {
            return Ok(None);
        };
        let b = if tb { b.reversed_axes() } else { b };
        let n = b.ncols();
        let has_c = node.input(2).is_some();
        let bias: Option<Arc<[f32]>> = match (has_c, konst(2)) {
            (false, _) => None,
            (true, Some(_)) if beta == 0.0 => None,
            (true, Some(Value::F32(c))) => {
                let row: Vec<f32> = match c.shape() {
                    [] | [1] | [1, 1] => vec![c.iter().next().copied().unwrap_or(0.0); n],
                    [l] | [1, l] if *l == n => c.iter().copied().collect(),
                    _ => return Ok(None),
                };
                Some(row.into_iter().map(|v| beta * v).collect())
            }
            _ => return Ok(None),
        };
        let w = if alpha == 1.0 {
            PackedB::new(&b)
        } else {
            PackedB::new(&b.mapv(|v| alpha * v).view())
        };
        Ok(Some(Linear {
            w: Arc::new(w),
            bias,
            act: Act::None,
            gemm_trans_a: Some(ta),
        }))
    }

    /// Adds a constant bias (`[]`, `[1]` or `[N]`, f32) after the product: the fused form of
    /// a following `Add`. `None` when there already is one or the shape is not a row.
    pub fn with_bias(&self, bias: &Value) -> Option<Linear> {
        if self.bias.is_some() || self.act != Act::None {
            return None;
        }
        let b = bias.as_f32()?;
        let n = self.w.n();
        let row: Vec<f32> = match b.shape() {
            [] | [1] => vec![*b.iter().next()?; n],
            [l] if *l == n => b.iter().copied().collect(),
            _ => return None,
        };
        Some(Linear {
            bias: Some(row.into()),
            ..self.clone()
        })
    }

    /// Applies `act` to the output: the fused form of a following activation node.
    pub fn with_act(&self, act: Act) -> Option<Linear> {
        (self.act == Act::None).then(|| Linear {
            act,
            ..self.clone()
        })
    }

    pub fn act(&self) -> Act {
        self.act
    }

    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    /// The result for an f32 `a` of a matching shape; `None` for anything else (the caller
    /// then runs the general path, which also reports errors).
    pub fn run(&self, a: &Value) -> Option<Value> {
        let a = a.as_f32()?;
        let (k, n) = (self.w.k(), self.w.n());
        let (a2, out_shape): (ArrayView2<f32>, Vec<usize>) = match self.gemm_trans_a {
            Some(ta) => {
                let v = a.view().into_dimensionality::<Ix2>().ok()?;
                let v = if ta { v.reversed_axes() } else { v };
                let m = v.nrows();
                (v, vec![m, n])
            }
            None => {
                if a.ndim() == 0 || a.shape().last() != Some(&k) || !a.is_standard_layout() {
                    return None;
                }
                let rows = a.shape()[..a.ndim() - 1].iter().product();
                let mut shape = a.shape().to_vec();
                *shape.last_mut()? = n;
                let v = a.view().into_shape_with_order((rows, k)).ok()?;
                (v, shape)
            }
        };
        if a2.ncols() != k {
            return None;
        }
        let m = a2.nrows();
        // The kernel writes every element (the buffer may be a recycled one).
        let mut out = output_buffer(m * n);
        let epi = Epilogue {
            bias: self.bias.as_deref(),
            act: self.act,
        };
        gemm_packed(&a2, &self.w, &epi, &mut out, n);
        ArrayD::from_shape_vec(IxDyn(&out_shape), out)
            .ok()
            .map(Value::F32)
    }
}

/// Determinant of the row-major `m x m` matrix `a` (overwritten by its LU factors).
fn det_f64(a: &mut [f64], m: usize) -> f64 {
    let mut det = 1.0;
    for c in 0..m {
        let pivot = (c..m)
            .max_by(|&i, &j| a[i * m + c].abs().total_cmp(&a[j * m + c].abs()))
            .unwrap_or(c);
        if a[pivot * m + c] == 0.0 {
            return 0.0;
        }
        if pivot != c {
            for j in 0..m {
                a.swap(c * m + j, pivot * m + j);
            }
            det = -det;
        }
        let d = a[c * m + c];
        det *= d;
        for i in c + 1..m {
            let f = a[i * m + c] / d;
            for j in c..m {
                a[i * m + j] -= f * a[c * m + j];
            }
        }
    }
    det
}

fn det_op(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        if !super::util::is_float(x.dtype()) {
            return Err(err(format!("Det expects a float input, got {}", dname(x))));
        }
        let s = x.shape();
        let r = s.len();
        if r < 2 || s[r - 1] != s[r - 2] {
            return Err(err(format!(
                "Det expects square matrices [*, M, M], got {s:?}"
            )));
        }
        let m = s[r - 1];
        let xf = super::util::cast(x, crate::onnx::tensor_proto::DataType::Double)?;
        let xf = xf.as_f64().ok_or_else(|| err("internal: cast to f64"))?;
        let flat: Vec<f64> = xf.iter().copied().collect();
        let dets: Vec<f64> = if m == 0 {
            vec![1.0; s[..r - 2].iter().product()]
        } else {
            flat.chunks_exact(m * m)
                .map(|c| det_f64(&mut c.to_vec(), m))
                .collect()
        };
        let out = Value::F64(super::util::from_vec(&s[..r - 2], dets)?);
        Ok(vec![super::util::cast(&out, x.dtype())?])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "MatMul", matmul_op);
    r.register("", "Gemm", gemm_op);
    r.register("", "Det", det_op);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn det_pivots_and_handles_singular_matrices() {
        // The first pivot is 0, so rows swap (flipping the sign back).
        assert_eq!(det_f64(&mut [0.0, 2.0, 3.0, 4.0], 2), -6.0);
        assert_eq!(det_f64(&mut [1.0, 2.0, 2.0, 4.0], 2), 0.0);
        let d = det_f64(&mut [2.0, 0.0, 1.0, 1.0, 3.0, 2.0, 1.0, 1.0, 2.0], 3);
        assert!((d - 6.0).abs() < 1e-12, "{d}");
    }

    #[test]
    fn matmul_promotes_vectors_and_broadcasts_batches() {
        let a = Value::F32(array![[1.0f32, 2.0], [3.0, 4.0]].into_dyn());
        let v = Value::F32(array![1.0f32, 1.0].into_dyn());
        assert_eq!(
            matmul(&a, &v).unwrap(),
            Value::F32(array![3.0f32, 7.0].into_dyn())
        );
        assert_eq!(
            matmul(&v, &a).unwrap(),
            Value::F32(array![4.0f32, 6.0].into_dyn())
        );
        // [2,1,2,2] x [3,2,2] -> [2,3,2,2]
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 1, 2, 2]), |i| {
            (i[0] * 4 + i[2] * 2 + i[3]) as f32
        });
        let y = ArrayD::from_shape_fn(IxDyn(&[3, 2, 2]), |i| (i[0] + i[1] * 2 + i[2]) as f32);
        let r = matmul(&Value::F32(x.clone()), &Value::F32(y.clone())).unwrap();
        let r = r.as_f32().unwrap();
        assert_eq!(r.shape(), &[2, 3, 2, 2]);
        for bi in 0..2 {
            for bj in 0..3 {
                for i in 0..2 {
                    for j in 0..2 {
                        let want: f32 = (0..2).map(|p| x[[bi, 0, i, p]] * y[[bj, p, j]]).sum();
                        assert_eq!(r[[bi, bj, i, j]], want);
                    }
                }
            }
        }
    }

    #[test]
    fn integer_matmul() {
        let a = Value::I64(array![[1i64, 2], [3, 4]].into_dyn());
        let b = Value::I64(array![[5i64], [6]].into_dyn());
        assert_eq!(
            matmul(&a, &b).unwrap(),
            Value::I64(array![[17i64], [39]].into_dyn())
        );
    }

    #[test]
    fn gemm_transposes_and_bias() {
        let a = array![[1.0f32, 3.0], [2.0, 4.0]].into_dyn(); // A^T = [[1,2],[3,4]]
        let b = array![[1.0f32, 0.0], [0.0, 1.0]].into_dyn();
        let c = array![10.0f32, 20.0].into_dyn();
        let r = gemm_t(&a, &b, Some(&c), (2.0, 0.5, true, true)).unwrap();
        assert_eq!(r, array![[7.0f32, 14.0], [11.0, 18.0]].into_dyn());
        let r = gemm_t(&a, &b, None, (1.0, 1.0, false, false)).unwrap();
        assert_eq!(r, a);
    }
}
