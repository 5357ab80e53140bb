//! Typed attribute access on nodes, with errors that name the node.
//!
//! `node.attr::<i64>("axis")?` returns `Some(v)` when the attribute is present with the right
//! type, `None` when absent, and an error naming the node when it has another type.

use crate::error::{Error, Result};
use crate::onnx::{AttributeProto, TensorProto, attribute_proto::AttributeType};

use super::graph::Node;
use super::tensor::Tensor;

/// A Rust type an attribute can be read as.
pub trait AttrType: Sized {
    const TYPE: AttributeType;
    fn read(a: &AttributeProto) -> Option<Self>;
}

impl AttrType for i64 {
    const TYPE: AttributeType = AttributeType::Int;
    fn read(a: &AttributeProto) -> Option<Self> {
        a.i
    }
}
impl AttrType for f32 {
    const TYPE: AttributeType = AttributeType::Float;
    fn read(a: &AttributeProto) -> Option<Self> {
        a.f
    }
}
impl AttrType for String {
    const TYPE: AttributeType = AttributeType::String;
    fn read(a: &AttributeProto) -> Option<Self> {
        a.s.as_ref()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }
}
impl AttrType for Vec<i64> {
    const TYPE: AttributeType = AttributeType::Ints;
    fn read(a: &AttributeProto) -> Option<Self> {
        Some(a.ints.clone())
    }
}
impl AttrType for Vec<f32> {
    const TYPE: AttributeType = AttributeType::Floats;
    fn read(a: &AttributeProto) -> Option<Self> {
        Some(a.floats.clone())
    }
}
impl AttrType for Vec<String> {
    const TYPE: AttributeType = AttributeType::Strings;
    fn read(a: &AttributeProto) -> Option<Self> {
        Some(
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
        )
    }
}
impl AttrType for TensorProto {
    const TYPE: AttributeType = AttributeType::Tensor;
    fn read(a: &AttributeProto) -> Option<Self> {
        a.t.clone()
    }
}

/// The attribute's declared type, falling back to the populated field for old producers that
/// leave `type` unset.
pub fn attr_type(a: &AttributeProto) -> AttributeType {
    if a.r#type() != AttributeType::Undefined {
        return a.r#type();
    }
    if a.f.is_some() {
        AttributeType::Float
    } else if a.i.is_some() {
        AttributeType::Int
    } else if a.s.is_some() {
        AttributeType::String
    } else if a.t.is_some() {
        AttributeType::Tensor
    } else if a.g.is_some() {
        AttributeType::Graph
    } else if !a.floats.is_empty() {
        AttributeType::Floats
    } else if !a.ints.is_empty() {
        AttributeType::Ints
    } else if !a.strings.is_empty() {
        AttributeType::Strings
    } else if !a.tensors.is_empty() {
        AttributeType::Tensors
    } else if !a.graphs.is_empty() {
        AttributeType::Graphs
    } else {
        AttributeType::Undefined
    }
}

impl Node {
    /// The axis permutation of a Transpose node over a rank-`rank` input: its `perm`, or
    /// the axes reversed when it has none; `None` when `perm` is not a permutation of
    /// `0..rank`.
    pub fn transpose_perm(&self, rank: usize) -> Option<Vec<usize>> {
        let perm: Vec<usize> = match self.attr::<Vec<i64>>("perm").ok()? {
            Some(p) => p
                .iter()
                .map(|&a| usize::try_from(a).ok())
                .collect::<Option<_>>()?,
            None => (0..rank).rev().collect(),
        };
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        (sorted == (0..rank).collect::<Vec<_>>()).then_some(perm)
    }

    pub fn attribute(&self, name: &str) -> Option<&AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name() == name)
    }

    /// Reads an optional attribute as `T`.
    pub fn attr<T: AttrType>(&self, name: &str) -> Result<Option<T>> {
        let Some(a) = self.attribute(name) else {
            return Ok(None);
        };
        let ty = attr_type(a);
        if ty != T::TYPE {
            return Err(self.error(format!(
                "attribute '{name}' is {}, expected {}",
                ty.as_str_name(),
                T::TYPE.as_str_name()
            )));
        }
        Ok(T::read(a))
    }

    /// Reads an attribute with a default for when it is absent.
    pub fn attr_or<T: AttrType>(&self, name: &str, default: T) -> Result<T> {
        Ok(self.attr(name)?.unwrap_or(default))
    }

    /// Reads an attribute the op requires.
    pub fn attr_req<T: AttrType>(&self, name: &str) -> Result<T> {
        self.attr(name)?
            .ok_or_else(|| self.error(format!("missing required attribute '{name}'")))
    }

    /// Reads an integer attribute that must be positive (a group count, an output size),
    /// `default` when absent.
    pub fn attr_positive(&self, name: &str, default: i64) -> Result<usize> {
        let v = self.attr_or::<i64>(name, default)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| self.error(format!("{name} {v} must be positive")))
    }

    /// Reads a tensor attribute (e.g. Constant's `value`) as a checked [`Tensor`].
    pub fn attr_tensor(&self, name: &str) -> Result<Option<Tensor>> {
        match self.attr::<TensorProto>(name)? {
            Some(t) => Tensor::new(t)
                .map(Some)
                .map_err(|e| self.error(e.to_string())),
            None => Ok(None),
        }
    }

    /// An error about this node.
    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::Node {
            node: self.display_name().to_string(),
            op: self.op_type().to_string(),
            reason: reason.into(),
        }
    }
}

/// Builders for attributes of new nodes.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v,
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        s: Some(v.as_bytes().to_vec()),
        r#type: Some(AttributeType::String as i32),
        ..Default::default()
    }
}

pub fn attr_strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        r#type: Some(AttributeType::Strings as i32),
        ..Default::default()
    }
}

pub fn attr_floats(name: &str, v: Vec<f32>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        floats: v,
        r#type: Some(AttributeType::Floats as i32),
        ..Default::default()
    }
}

pub fn attr_tensor(name: &str, t: Tensor) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        t: Some(t.proto),
        r#type: Some(AttributeType::Tensor as i32),
        ..Default::default()
    }
}
