//! A small graph builder for the rewriters: nodes and initializers under fresh names, with
//! opset-aware helpers for the ops whose signature changed (Unsqueeze axes and Split sizes
//! became inputs at opset 13), and the quantized-product idiom
//! `DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`.

use crate::ir::attrs::{attr_float, attr_int, attr_ints, attr_tensor};
use crate::ir::{NameGen, Node, Tensor};
use crate::onnx::tensor_proto::DataType;
use crate::onnx::{
    AttributeProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};

pub struct Builder<'n> {
    pub names: &'n mut NameGen,
    pub opset: i64,
    pub nodes: Vec<Node>,
    pub inits: Vec<Tensor>,
    prefix: String,
}

impl<'n> Builder<'n> {
    pub fn new(names: &'n mut NameGen, opset: i64, prefix: &str) -> Self {
        Builder {
            names,
            opset,
            nodes: Vec::new(),
            inits: Vec::new(),
            prefix: prefix.to_string(),
        }
    }

    /// A builder for a subgraph (e.g. a Scan body) drawing from the same name pool.
    pub fn sub(&mut self, prefix: &str) -> Builder<'_> {
        Builder::new(self.names, self.opset, prefix)
    }

    /// A fresh value name `<prefix>/<what>`.
    pub fn fresh(&mut self, what: &str) -> String {
        self.names.fresh(&format!("{}/{what}", self.prefix))
    }

    /// Appends a default-domain node; returns its output names.
    pub fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        self.op_in("", op, inputs, n_out, attrs)
    }

    /// Appends a node of `domain`; returns its output names.
    pub fn op_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n_out).map(|_| self.fresh(op)).collect();
        self.node_with_outputs(domain, op, inputs, outs.clone(), attrs);
        outs
    }

    /// Appends a node with the given output names ("" for unused optional outputs).
    pub fn node_with_outputs(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        outputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) {
        let name = self.names.fresh(&format!("{}/{op}", self.prefix));
        let mut n = Node::new(
            name,
            op,
            domain,
            inputs.iter().map(|s| s.to_string()).collect(),
            outputs,
        );
        n.proto.attribute = attrs;
        self.nodes.push(n);
    }

    pub fn op1(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op(op, inputs, 1, attrs).remove(0)
    }

    /// A new initializer named `<prefix>/<what>`.
    pub fn init_with(&mut self, what: &str, make: impl FnOnce(&str) -> Tensor) -> String {
        let name = self.fresh(what);
        self.inits.push(make(&name));
        name
    }

    pub fn init_f32(&mut self, what: &str, dims: &[usize], values: Vec<f32>) -> String {
        self.init_with(what, |n| Tensor::from_vec(n, dims, values))
    }

    pub fn init_i64(&mut self, what: &str, dims: &[usize], values: Vec<i64>) -> String {
        self.init_with(what, |n| Tensor::from_vec(n, dims, values))
    }

    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let a = self.init_i64("axes", &[axes.len()], axes.to_vec());
            self.op1("Unsqueeze", &[x, &a], vec![])
        } else {
            self.op1("Unsqueeze", &[x], vec![attr_ints("axes", axes.to_vec())])
        }
    }

    pub fn split(&mut self, x: &str, axis: i64, sizes: &[i64]) -> Vec<String> {
        if self.opset >= 13 {
            let s = self.init_i64("split", &[sizes.len()], sizes.to_vec());
            self.op("Split", &[x, &s], sizes.len(), vec![attr_int("axis", axis)])
        } else {
            self.op(
                "Split",
                &[x],
                sizes.len(),
                vec![attr_int("axis", axis), attr_ints("split", sizes.to_vec())],
            )
        }
    }

    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        if xs.len() == 1 {
            return xs[0].to_string();
        }
        self.op1("Concat", xs, vec![attr_int("axis", axis)])
    }

    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op1("Transpose", &[x], vec![attr_ints("perm", perm.to_vec())])
    }

    pub fn cast(&mut self, x: &str, to: DataType) -> String {
        self.op1("Cast", &[x], vec![attr_int("to", to as i64)])
    }

    /// `f(x)` for a gate activation, with the input first clipped to `[-clip, clip]` when the
    /// recurrent op has a `clip` attribute (ONNX: "applied to the input of activations").
    pub fn activation(&mut self, f: &Activation, x: &str, clip: Option<f32>) -> String {
        let x = match clip {
            None => x.to_string(),
            Some(c) => {
                let lo = self.init_f32("clip_min", &[], vec![-c]);
                let hi = self.init_f32("clip_max", &[], vec![c]);
                self.op1("Clip", &[x, &lo, &hi], vec![])
            }
        };
        let (alpha, beta) = (f.alpha, f.beta);
        match f.name.as_str() {
            "sigmoid" => self.op1("Sigmoid", &[&x], vec![]),
            "tanh" => self.op1("Tanh", &[&x], vec![]),
            "relu" => self.op1("Relu", &[&x], vec![]),
            "softsign" => self.op1("Softsign", &[&x], vec![]),
            "softplus" => self.op1("Softplus", &[&x], vec![]),
            "leakyrelu" => self.op1("LeakyRelu", &[&x], vec![attr_float("alpha", alpha)]),
            "thresholdedrelu" => {
                self.op1("ThresholdedRelu", &[&x], vec![attr_float("alpha", alpha)])
            }
            "elu" => self.op1("Elu", &[&x], vec![attr_float("alpha", alpha)]),
            "hardsigmoid" => self.op1(
                "HardSigmoid",
                &[&x],
                vec![attr_float("alpha", alpha), attr_float("beta", beta)],
            ),
            "affine" => {
                let a = self.init_f32("alpha", &[], vec![alpha]);
                let b = self.init_f32("beta", &[], vec![beta]);
                let ax = self.op1("Mul", &[&x, &a], vec![]);
                self.op1("Add", &[&ax, &b], vec![])
            }
            // scaledtanh (the only other name Activation::parse accepts)
            _ => {
                let a = self.init_f32("alpha", &[], vec![alpha]);
                let b = self.init_f32("beta", &[], vec![beta]);
                let bx = self.op1("Mul", &[&x, &b], vec![]);
                let t = self.op1("Tanh", &[&bx], vec![]);
                self.op1("Mul", &[&t, &a], vec![])
            }
        }
    }

    /// `x[index]` along `axis`, dropping that axis (Gather with a scalar index).
    pub fn take(&mut self, x: &str, index: i64, axis: i64) -> String {
        let i = self.init_i64("index", &[], vec![index]);
        self.op1("Gather", &[x, &i], vec![attr_int("axis", axis)])
    }

    /// Float zeros of shape `[x.shape[axis], n]` (for absent initial states; the batch size
    /// may be symbolic, so the shape is taken at run time).
    pub fn zeros_like_rows(&mut self, x: &str, axis: i64, n: usize) -> String {
        let shape = self.op1("Shape", &[x], vec![]);
        let idx = self.init_i64("batch_axis", &[1], vec![axis]);
        let batch = self.op1("Gather", &[&shape, &idx], vec![attr_int("axis", 0)]);
        let hidden = self.init_i64("hidden", &[1], vec![n as i64]);
        let dims = self.op1("Concat", &[&batch, &hidden], vec![attr_int("axis", 0)]);
        let zero = Tensor::from_vec("value", &[1], vec![0f32]);
        self.op1(
            "ConstantOfShape",
            &[&dims],
            vec![attr_tensor("value", zero)],
        )
    }

    /// `DynamicQuantizeLinear(x)` -> (uint8 values, scale, zero point).
    pub fn dynamic_quantize(&mut self, x: &str) -> [String; 3] {
        let o = self.op("DynamicQuantizeLinear", &[x], 3, vec![]);
        [o[0].clone(), o[1].clone(), o[2].clone()]
    }

    /// `Cast(MatMulInteger(xq, w, xzp, wzp), float) * (xs * ws)`: a quantized product in float.
    pub fn int_matmul(&mut self, xq: &[String; 3], w: &DirWeight) -> String {
        let mm = self.op1(
            "MatMulInteger",
            &[&xq[0], &w.values, &xq[2], &w.zero_point],
            vec![],
        );
        let f = self.cast(&mm, DataType::Float);
        let s = self.op1("Mul", &[&xq[1], &w.scale], vec![]);
        self.op1("Mul", &[&f, &s], vec![])
    }

    /// Renames the value `from` (a node output of this builder) to `to` everywhere.
    pub fn rename(&mut self, from: &str, to: &str) {
        for n in &mut self.nodes {
            for v in n.proto.input.iter_mut().chain(n.proto.output.iter_mut()) {
                if v == from {
                    *v = to.to_string();
                }
            }
        }
    }
}

/// One direction's quantized weight as initializers: values `[K, N]` (transposed for
/// `x @ w`), scale scalar or `[N]`, zero point scalar or `[N]`.
pub struct DirWeight {
    pub values: String,
    pub scale: String,
    pub zero_point: String,
}

/// A float `[?, n]` value info (batch left unknown).
pub fn float_info(name: &str, n: usize) -> ValueInfoProto {
    let dims = vec![
        tensor_shape_proto::Dimension::default(),
        tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(n as i64)),
            ..Default::default()
        },
    ];
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A recurrent op's activation function (`activations` attribute), with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    /// Lower-case name: sigmoid, tanh, relu, softsign, softplus, leakyrelu, thresholdedrelu,
    /// elu, hardsigmoid, affine or scaledtanh.
    pub name: String,
    pub alpha: f32,
    pub beta: f32,
}

impl Activation {
    /// Parses `names` with `activation_alpha` / `activation_beta`. As in onnxruntime, each
    /// function that takes an alpha (beta) consumes the next one from the list, in order, or
    /// gets its default: LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1.0, ThresholdedRelu 1.0
    /// (the ONNX operator's; onnxruntime uses 0), others 0.
    pub fn parse(names: &[String], alphas: &[f32], betas: &[f32]) -> Result<Vec<Self>, String> {
        let (mut ai, mut bi) = (alphas.iter(), betas.iter());
        names
            .iter()
            .map(|n| {
                let name = n.to_ascii_lowercase();
                let (uses_a, uses_b, da, db) = match name.as_str() {
                    "sigmoid" | "tanh" | "relu" | "softsign" | "softplus" => {
                        (false, false, 0.0, 0.0)
                    }
                    "leakyrelu" => (true, false, 0.01, 0.0),
                    "thresholdedrelu" => (true, false, 1.0, 0.0),
                    "elu" => (true, false, 1.0, 0.0),
                    "hardsigmoid" => (true, true, 0.2, 0.5),
                    "affine" | "scaledtanh" => (true, true, 0.0, 0.0),
                    _ => return Err(format!("unknown activation '{n}'")),
                };
                let alpha = if uses_a {
                    ai.next().copied().unwrap_or(da)
                } else {
                    da
                };
                let beta = if uses_b {
                    bi.next().copied().unwrap_or(db)
                } else {
                    db
                };
                Ok(Activation { name, alpha, beta })
            })
            .collect()
    }
}
