//! The optional-type ops over tensors: `Optional` (15), `OptionalHasElement` (15, 18) and
//! `OptionalGetElement` (15, 18).
//!
//! The runtime has no optional or sequence values: an optional that holds a tensor is that
//! tensor, and an empty optional is an omitted input (`None`). So:
//! - `OptionalHasElement(x)` is a bool scalar, true when `x` is given (from 18 the input
//!   itself may be omitted, meaning an empty optional);
//! - `OptionalGetElement(x)` is `x` (from 18 a plain tensor is accepted too and returned
//!   as is); an empty optional is an error, as the spec says;
//! - `Optional(x)` with an input is `x`; `Optional` without one (an empty optional of a
//!   declared type) has no tensor to stand for it and is refused at run time.

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{err, opt};
use super::{BuildCtx, FnOp, Op, Registry};

fn has_element(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let present = opt(ins, 0).is_some();
        Ok(vec![Value::Bool(ArrayD::from_elem(IxDyn(&[]), present))])
    })))
}

fn get_element(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| match opt(ins, 0) {
        Some(v) => Ok(vec![v.clone()]),
        None => Err(err("the optional input is empty")),
    })))
}

fn optional(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| match opt(ins, 0) {
        Some(v) => Ok(vec![v.clone()]),
        None => Err(err(
            "an empty optional has no tensor value (the runtime stores optionals as tensors)",
        )),
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "Optional", optional);
    r.register("", "OptionalHasElement", has_element);
    r.register("", "OptionalGetElement", get_element);
}
