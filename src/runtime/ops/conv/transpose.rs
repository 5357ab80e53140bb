//! The adjoints of convolution's im2col: `ConvTranspose` (opsets 1, 11, 22) and `Col2Im`
//! (opset 18). A child of `conv` so that both share its window geometry ([`Geometry`]: the
//! image is the geometry's input, the sliding-block positions its output).
//!
//! `Col2Im`: `input [N, C·K, L]` holds, per channel and kernel tap, the values of the `L`
//! sliding blocks (`L` = product of the per-axis block counts
//! `(image + pad_begin + pad_end - ((k - 1)·d + 1)) / s + 1`); each value is added to the image
//! position `o·s + k·d - pad_begin` it came from (values in the padding are dropped). Output
//! `[N, C, image_shape...]`; `image_shape` and `block_shape` are 1-D int64 inputs.
//!
//! `ConvTranspose`: `X [N, C, in...]`, `W [C, M/group, k...]`, optional `B [M]`; per image and
//! group, `col = W_gᵀ · X_g` (one GEMM, `[M/group·K, P]`) is scattered into the output by the
//! same col2im, then the bias is added. The output's spatial size is
//! `s·(in - 1) + output_padding + (k - 1)·d + 1 - pad_begin - pad_end`, or `output_shape` when
//! given (spatial dims, or the full shape); with `auto_pad = SAME_UPPER/SAME_LOWER` it is
//! `output_shape` or `in·s`, and the total padding that makes it so is split with the odd
//! element at the end (UPPER) or the beginning (LOWER), as the ONNX reference does. Negative
//! begin padding (an `output_shape` larger than the natural size under SAME) is refused.
//! 1 to 3 spatial axes; f32 (f16, f64 computed in f32).

use ndarray::{ArrayD, ArrayView2, ArrayViewMut2, IxDyn, linalg::general_mat_mul};
use rayon::prelude::*;

use super::{AutoPad, BuildCtx, Geometry, Ident, Op, Registry, WindowAttrs, float_input, input};
use crate::error::Result;
use crate::ir::Node;
use crate::runtime::ops::util::{elem_count, ints};
use crate::runtime::value::Value;

pub fn register(r: &mut Registry) {
    r.register("", "ConvTranspose", build_conv_transpose);
    r.register("", "Col2Im", build_col2im);
}

/// Adds the block values `col [channels·K, P]` into their image positions
/// (`image [channels, in...]`); taps that fall in the padding are dropped.
fn col2im(geo: &Geometry, col: &[f32], channels: usize, image: &mut [f32]) {
    let [id_, ih_, iw_] = geo.input;
    let [od, oh, ow] = geo.output;
    let [kd, kh, kw] = geo.kernel;
    let p = od * oh * ow;
    let plane_len = id_ * ih_ * iw_;
    let mut row = 0;
    for c in 0..channels {
        let plane = &mut image[c * plane_len..][..plane_len];
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let src = &col[row * p..][..p];
                    row += 1;
                    for z in 0..od {
                        let iz = geo.coord(0, z, a);
                        if !geo.inside(0, iz) {
                            continue;
                        }
                        for y in 0..oh {
                            let iy = geo.coord(1, y, b);
                            if !geo.inside(1, iy) {
                                continue;
                            }
                            let dst = &mut plane[(iz as usize * ih_ + iy as usize) * iw_..][..iw_];
                            let s = &src[(z * oh + y) * ow..][..ow];
                            for (x, &v) in s.iter().enumerate() {
                                let ix = geo.coord(2, x, e);
                                if geo.inside(2, ix) {
                                    dst[ix as usize] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A geometry over 1 to 3 spatial axes from per-axis values (image = `input`, block positions
/// = `output`).
fn geometry(
    image: &[usize],
    blocks: &[usize],
    kernel: &[usize],
    stride: &[usize],
    dilation: &[usize],
    pad_begin: &[usize],
    id: &Ident,
) -> Result<Geometry> {
    let r = image.len();
    if r == 0 || r > 3 {
        return Err(id.error(format!("{r} spatial axes (1 to 3 are supported)")));
    }
    let mut g = Geometry {
        rank: r,
        ..Geometry::default()
    };
    let off = 3 - r;
    g.input[off..].copy_from_slice(image);
    g.output[off..].copy_from_slice(blocks);
    g.kernel[off..].copy_from_slice(kernel);
    g.stride[off..].copy_from_slice(stride);
    g.dilation[off..].copy_from_slice(dilation);
    g.pad_begin[off..].copy_from_slice(pad_begin);
    Ok(g)
}

/// Per-axis attribute values (`default` when absent), checked to have `r` (or `2r` for pads)
/// entries.
fn per_axis(
    v: &Option<Vec<usize>>,
    what: &str,
    n: usize,
    default: usize,
    id: &Ident,
) -> Result<Vec<usize>> {
    match v {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n => Ok(v.clone()),
        Some(v) => Err(id.error(format!("{what} {v:?} should have {n} values"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Col2Im

struct Col2ImOp {
    id: Ident,
    window: WindowAttrs,
}

fn build_col2im(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(Col2ImOp {
        id: Ident::of(node),
        window: WindowAttrs::parse(node)?,
    }))
}

/// A strictly positive size list from an int64 input.
fn sizes(v: &Value, what: &str, id: &Ident) -> Result<Vec<usize>> {
    ints(v, what)
        .map_err(|e| id.error(e.to_string()))?
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .ok()
                .filter(|&d| d > 0)
                .ok_or_else(|| id.error(format!("{what} has the invalid value {d}")))
        })
        .collect()
}

impl Op for Col2ImOp {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let id = &self.id;
        let xv = input(inputs, 0).ok_or_else(|| id.error("missing input"))?;
        let image = sizes(
            input(inputs, 1).ok_or_else(|| id.error("missing image_shape"))?,
            "image_shape",
            id,
        )?;
        let block = sizes(
            input(inputs, 2).ok_or_else(|| id.error("missing block_shape"))?,
            "block_shape",
            id,
        )?;
        let r = image.len();
        if block.len() != r {
            return Err(id.error(format!(
                "image_shape {image:?} and block_shape {block:?} differ in length"
            )));
        }
        let x = float_input(xv, "input", id)?;
        let xs = x.shape().to_vec();
        let k: usize = block.iter().product();
        if xs.len() != 3 || xs[1] % k != 0 {
            return Err(id.error(format!(
                "input has shape {xs:?}, expected [N, C·{k}, L] for block_shape {block:?}"
            )));
        }
        let strides = per_axis(&self.window.strides, "strides", r, 1, id)?;
        let dilations = per_axis(&self.window.dilations, "dilations", r, 1, id)?;
        let pads = per_axis(&self.window.pads, "pads", 2 * r, 0, id)?;
        let mut blocks = Vec::with_capacity(r);
        for a in 0..r {
            let eff = (block[a] - 1)
                .checked_mul(dilations[a])
                .and_then(|e| e.checked_add(1));
            let span = eff.and_then(|e| (image[a] + pads[a] + pads[r + a]).checked_sub(e));
            match span {
                Some(span) => blocks.push(span / strides[a] + 1),
                None => {
                    return Err(id.error(format!(
                        "block_shape {block:?} does not fit the padded image {image:?} on axis {a}"
                    )));
                }
            }
        }
        let l: usize = blocks.iter().product();
        if xs[2] != l {
            return Err(id.error(format!(
                "input has {} blocks, the geometry gives {l} ({blocks:?})",
                xs[2]
            )));
        }
        let (n, c) = (xs[0], xs[1] / k);
        let geo = geometry(
            &image,
            &blocks,
            &block,
            &strides,
            &dilations,
            &pads[..r],
            id,
        )?;
        let mut yshape = vec![n, c];
        yshape.extend_from_slice(&image);
        elem_count(&yshape).map_err(|e| id.error(e.to_string()))?;
        let mut y = ArrayD::<f32>::zeros(IxDyn(&yshape));
        let per_image = c * geo.in_size();
        if per_image > 0 {
            let xd = x.as_slice().unwrap_or(&[]);
            let yd = y.as_slice_mut().unwrap_or(&mut []);
            for (img, out) in yd.chunks_mut(per_image).enumerate() {
                col2im(&geo, &xd[img * xs[1] * l..][..xs[1] * l], c, out);
            }
        }
        Ok(vec![super::like(y, xv)])
    }
}

// ---------------------------------------------------------------------------------------------
// ConvTranspose

struct ConvTransposeOp {
    id: Ident,
    window: WindowAttrs,
    group: usize,
    output_padding: Option<Vec<usize>>,
    output_shape: Option<Vec<usize>>,
}

fn build_conv_transpose(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let group = node.attr_positive("group", 1)?;
    let nonneg = |name: &str| -> Result<Option<Vec<usize>>> {
        node.attr::<Vec<i64>>(name)?
            .map(|v| {
                v.iter()
                    .map(|&x| {
                        usize::try_from(x)
                            .map_err(|_| node.error(format!("{name} {v:?} has a negative value")))
                    })
                    .collect()
            })
            .transpose()
    };
    Ok(Box::new(ConvTransposeOp {
        id: Ident::of(node),
        window: WindowAttrs::parse(node)?,
        group,
        output_padding: nonneg("output_padding")?,
        output_shape: nonneg("output_shape")?,
    }))
}

impl ConvTransposeOp {
    /// Output spatial shape and begin pads for input spatial shape `inp` and `kernel`.
    fn plan(
        &self,
        inp: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dilations: &[usize],
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        let id = &self.id;
        let r = inp.len();
        let out_pad = per_axis(&self.output_padding, "output_padding", r, 0, id)?;
        let given = match &self.output_shape {
            None => None,
            Some(s) if s.len() == r => Some(s.clone()),
            Some(s) if s.len() == r + 2 => Some(s[2..].to_vec()),
            Some(s) => {
                return Err(id.error(format!("output_shape {s:?} does not fit {r} spatial axes")));
            }
        };
        let big = |what: &str| id.error(format!("{what} overflows"));
        // Extent of the full (unpadded) transposed output on axis `a`.
        let full = |a: usize| -> Result<i64> {
            let eff = (kernel[a] as i64 - 1)
                .checked_mul(dilations[a] as i64)
                .ok_or_else(|| big("kernel extent"))?
                + 1;
            (strides[a] as i64)
                .checked_mul(inp[a] as i64 - 1)
                .and_then(|v| v.checked_add(out_pad[a] as i64 + eff))
                .ok_or_else(|| big("output size"))
        };
        let mut out = Vec::with_capacity(r);
        let mut begin = Vec::with_capacity(r);
        let same = matches!(
            self.window.auto_pad,
            AutoPad::SameUpper | AutoPad::SameLower
        );
        for a in 0..r {
            let total_full = full(a)?;
            if same {
                let o = match &given {
                    Some(g) => g[a] as i64,
                    None => (inp[a] as i64)
                        .checked_mul(strides[a] as i64)
                        .ok_or_else(|| big("output size"))?,
                };
                let total = total_full - o;
                let b = if self.window.auto_pad == AutoPad::SameUpper {
                    total.div_euclid(2)
                } else {
                    total - total.div_euclid(2)
                };
                if b < 0 {
                    return Err(id.error(format!(
                        "output_shape {o} on spatial axis {a} needs negative padding"
                    )));
                }
                out.push(o as usize);
                begin.push(b as usize);
            } else {
                let pads = per_axis(&self.window.pads, "pads", 2 * r, 0, id)?;
                let o = match &given {
                    Some(g) => g[a] as i64,
                    None => total_full - pads[a] as i64 - pads[r + a] as i64,
                };
                if o < 0 {
                    return Err(id.error(format!(
                        "pads {pads:?} leave a negative output size on spatial axis {a}"
                    )));
                }
                out.push(o as usize);
                begin.push(pads[a]);
            }
        }
        Ok((out, begin))
    }
}

impl Op for ConvTransposeOp {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let id = &self.id;
        let xv = input(inputs, 0).ok_or_else(|| id.error("missing input X"))?;
        let x = float_input(xv, "X", id)?;
        let w = float_input(
            input(inputs, 1).ok_or_else(|| id.error("missing input W"))?,
            "W",
            id,
        )?;
        let bias = input(inputs, 2)
            .map(|b| float_input(b, "B", id))
            .transpose()?;
        let (xs, ws) = (x.shape().to_vec(), w.shape().to_vec());
        if xs.len() < 3 || xs.len() != ws.len() {
            return Err(id.error(format!(
                "X has shape {xs:?} and W {ws:?}, expected [N, C, in...] and [C, M/group, k...]"
            )));
        }
        let r = xs.len() - 2;
        let g = self.group;
        let (n, c, mg) = (xs[0], xs[1], ws[1]);
        if ws[0] != c || c % g != 0 {
            return Err(id.error(format!(
                "X has {c} channels, W shape {ws:?}: not compatible with group {g}"
            )));
        }
        let cg = c / g;
        let m = mg * g;
        if let Some(b) = &bias
            && b.len() != m
        {
            return Err(id.error(format!("B has {} values for {m} output channels", b.len())));
        }
        let kernel = &ws[2..];
        if let Some(ks) = &self.window.kernel_shape
            && ks.as_slice() != kernel
        {
            return Err(id.error(format!("kernel_shape {ks:?} disagrees with W shape {ws:?}")));
        }
        if xs[2..].contains(&0) || kernel.contains(&0) {
            return Err(id.error(format!("empty spatial axis (X {xs:?}, W {ws:?})")));
        }
        let strides = per_axis(&self.window.strides, "strides", r, 1, id)?;
        let dilations = per_axis(&self.window.dilations, "dilations", r, 1, id)?;
        let (out, begin) = self.plan(&xs[2..], kernel, &strides, &dilations)?;
        let geo = geometry(&out, &xs[2..], kernel, &strides, &dilations, &begin, id)?;
        let mut yshape = vec![n, m];
        yshape.extend_from_slice(&out);
        elem_count(&yshape).map_err(|e| id.error(e.to_string()))?;
        let mut y = ArrayD::<f32>::zeros(IxDyn(&yshape));
        let (p_in, p_out, k) = (geo.out_size(), geo.in_size(), geo.kernel_size());
        let rows = mg * k;
        elem_count(&[rows, p_in]).map_err(|e| id.error(e.to_string()))?;
        let xd = x.as_slice().unwrap_or(&[]);
        let wd = w.as_slice().unwrap_or(&[]);
        let chunk = mg * p_out;
        if chunk == 0 || n == 0 {
            return Ok(vec![super::like(y, xv)]);
        }
        let task = |(idx, out): (usize, &mut [f32])| {
            let (img, grp) = (idx / g, idx % g);
            let xg =
                ArrayView2::from_shape((cg, p_in), &xd[(img * c + grp * cg) * p_in..][..cg * p_in])
                    .expect("X block is cg*p_in");
            let wg = ArrayView2::from_shape((cg, rows), &wd[grp * cg * rows..][..cg * rows])
                .expect("W block is cg*rows");
            let mut col = vec![0f32; rows * p_in];
            let mut colv =
                ArrayViewMut2::from_shape((rows, p_in), &mut col).expect("col is rows*p_in");
            general_mat_mul(1.0, &wg.t(), &xg, 0.0, &mut colv);
            col2im(&geo, &col, mg, out);
            if let Some(b) = &bias {
                for (oc, plane) in out.chunks_mut(p_out).enumerate() {
                    let bv = b[grp * mg + oc];
                    plane.iter_mut().for_each(|v| *v += bv);
                }
            }
        };
        let yd = y.as_slice_mut().unwrap_or(&mut []);
        if n * g > 1 && m * p_in * k >= 1 << 16 {
            yd.par_chunks_mut(chunk).enumerate().for_each(task);
        } else {
            yd.chunks_mut(chunk).enumerate().for_each(task);
        }
        Ok(vec![super::like(y, xv)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::{attr_int, attr_ints, attr_string};
    use ndarray::Dimension;

    fn run(n: &Node, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let mut r = Registry::default();
        register(&mut r);
        let b = r.get("", n.op_type()).expect("registered");
        let ctx = BuildCtx {
            opset: 22,
            const_inputs: vec![None; inputs.len()],
        };
        b(n, &ctx)?.run(inputs)
    }

    fn f32s(shape: &[usize], seed: u32) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(shape), |i| {
            let h = i.slice().iter().fold(seed, |acc, &v| {
                acc.wrapping_mul(31).wrapping_add(v as u32 + 7)
            });
            (h % 17) as f32 / 8.0 - 1.0
        })
    }

    /// ConvTranspose by definition: every input element scatters `x · W` into the output.
    #[test]
    fn conv_transpose_matches_the_scatter_definition() {
        let (xs, ws, group, strides, dil, pads) = (
            [2usize, 4, 3, 4],
            [4usize, 3, 2, 3],
            2usize,
            [2usize, 1],
            [1usize, 2],
            [1usize, 0, 0, 2],
        );
        let x = f32s(&xs, 1);
        let w = f32s(&ws, 2);
        let node = Node::new(
            "t",
            "ConvTranspose",
            "",
            vec!["X".into(), "W".into()],
            vec!["Y".into()],
        )
        .with_attr(attr_int("group", group as i64))
        .with_attr(attr_ints(
            "strides",
            strides.iter().map(|&v| v as i64).collect(),
        ))
        .with_attr(attr_ints(
            "dilations",
            dil.iter().map(|&v| v as i64).collect(),
        ))
        .with_attr(attr_ints("pads", pads.iter().map(|&v| v as i64).collect()));
        let got = run(
            &node,
            &[Some(&Value::F32(x.clone())), Some(&Value::F32(w.clone()))],
        )
        .unwrap();
        let got = got[0].as_f32().unwrap();
        let (cg, mg) = (xs[1] / group, ws[1]);
        let out: Vec<usize> = (0..2)
            .map(|a| {
                strides[a] * (xs[2 + a] - 1) + (ws[2 + a] - 1) * dil[a] + 1 - pads[a] - pads[2 + a]
            })
            .collect();
        assert_eq!(got.shape(), &[xs[0], mg * group, out[0], out[1]]);
        let mut want = ArrayD::<f32>::zeros(IxDyn(got.shape()));
        for ni in 0..xs[0] {
            for ci in 0..xs[1] {
                let grp = ci / cg;
                for i in 0..xs[2] {
                    for j in 0..xs[3] {
                        for oc in 0..mg {
                            for ki in 0..ws[2] {
                                for kj in 0..ws[3] {
                                    let oy =
                                        (i * strides[0] + ki * dil[0]) as isize - pads[0] as isize;
                                    let ox =
                                        (j * strides[1] + kj * dil[1]) as isize - pads[1] as isize;
                                    if oy >= 0
                                        && ox >= 0
                                        && (oy as usize) < out[0]
                                        && (ox as usize) < out[1]
                                    {
                                        want[[ni, grp * mg + oc, oy as usize, ox as usize]] +=
                                            x[[ni, ci, i, j]] * w[[ci, oc, ki, kj]];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn bad_attributes_are_errors() {
        let x = Value::F32(f32s(&[1, 2, 3, 3], 1));
        let w = Value::F32(f32s(&[2, 1, 3, 3], 2));
        let base = || {
            Node::new(
                "t",
                "ConvTranspose",
                "",
                vec!["X".into(), "W".into()],
                vec!["Y".into()],
            )
        };
        // W's first axis must be X's channels.
        let w3 = Value::F32(f32s(&[3, 1, 3, 3], 2));
        assert!(run(&base(), &[Some(&x), Some(&w3)]).is_err());
        assert!(
            run(
                &base().with_attr(attr_int("group", 3)),
                &[Some(&x), Some(&w)]
            )
            .is_err()
        );
        assert!(
            run(
                &base().with_attr(attr_ints("pads", vec![9, 9, 9, 9])),
                &[Some(&x), Some(&w)]
            )
            .is_err()
        );
        assert!(
            run(
                &base().with_attr(attr_ints("strides", vec![1])),
                &[Some(&x), Some(&w)]
            )
            .is_err()
        );
        let same = base()
            .with_attr(attr_string("auto_pad", "SAME_UPPER"))
            .with_attr(attr_ints("output_shape", vec![50, 50]));
        assert!(run(&same, &[Some(&x), Some(&w)]).is_err());
        let col = Node::new(
            "c",
            "Col2Im",
            "",
            vec!["I".into(), "S".into(), "B".into()],
            vec!["Y".into()],
        );
        let input = Value::F32(f32s(&[1, 4, 5], 3));
        let shape = |v: Vec<i64>| Value::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).unwrap());
        // 2x2 blocks of a 2x3 image: 1x2 positions, not 5.
        assert!(
            run(
                &col,
                &[
                    Some(&input),
                    Some(&shape(vec![2, 3])),
                    Some(&shape(vec![2, 2]))
                ]
            )
            .is_err()
        );
        assert!(
            run(
                &col,
                &[
                    Some(&input),
                    Some(&shape(vec![2, 0])),
                    Some(&shape(vec![2, 2]))
                ]
            )
            .is_err()
        );
        let ok = run(
            &col,
            &[
                Some(&input),
                Some(&shape(vec![2, 6])),
                Some(&shape(vec![2, 2])),
            ],
        )
        .unwrap();
        assert_eq!(ok[0].shape(), &[1, 1, 2, 6]);
    }
}
