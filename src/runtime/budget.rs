//! The runtime's memory budget: a run refuses, with an error naming the node, to allocate
//! tensors whose size comes from input data beyond [`Options::max_memory`] bytes, instead of
//! letting the allocator abort the process (a ConstantOfShape of [2^20, 2^20] asks for 4 TiB).
//!
//! Two checks share one budget:
//! - before allocating, an op whose output size follows from data (a shape operand, repeats,
//!   a Range count, broadcasting) asks [`check_shape`] / [`check_alloc`]; an overflowing
//!   element count is refused there too;
//! - after every step, the session adds the bytes of the step's outputs to the bytes of the
//!   values still alive and fails the run when the total passes the budget (so a chain of
//!   individually modest tensors cannot exhaust memory either).
//!
//! The budget is per thread, set by the running session ([`enter`]); a subgraph session run
//! by an If/Loop/Scan op inherits the enclosing one with the enclosing values counted as in
//! use. Outside any session (plan-time constant folding sets one too) [`default_budget`]
//! applies. Initializers are not counted: they are the model, mapped or loaded before the run.
//!
//! [`Options::max_memory`]: super::Options::max_memory

use std::cell::Cell;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::onnx::tensor_proto::DataType;

use super::value::Value;

/// The budget when physical memory cannot be read: 16 GiB, what a typical workstation or a
/// large cloud instance can give one process without swapping.
pub const FALLBACK_BUDGET: u64 = 16 << 30;

/// The default budget: three quarters of physical memory (or [`FALLBACK_BUDGET`] when it
/// cannot be read). A run that needs more than the machine has is killed by the OOM killer or
/// swaps to a halt, so refusing it early loses nothing; the quarter left over is for the model
/// itself (its weights are mapped or loaded outside the budget), the second session of a
/// `verify`, and the rest of the system.
pub fn default_budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| physical_memory().map_or(FALLBACK_BUDGET, |m| m / 4 * 3))
}

fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads system configuration values.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && page > 0 {
            return (pages as u64).checked_mul(page as u64);
        }
    }
    None
}

#[derive(Clone, Copy, Debug)]
struct State {
    limit: u64,
    used: u64,
}

thread_local! {
    static STATE: Cell<Option<State>> = const { Cell::new(None) };
}

/// Restores the enclosing budget when dropped (see [`enter`]).
pub struct Scope {
    prev: Option<State>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        STATE.with(|s| s.set(self.prev));
    }
}

/// Makes `limit` bytes the budget of this thread, `used` of them already taken, until the
/// returned guard is dropped.
pub fn enter(limit: u64, used: u64) -> Scope {
    let prev = STATE.with(|s| s.replace(Some(State { limit, used })));
    Scope { prev }
}

/// The budget of this thread and the bytes in use, when a session has set one.
pub fn active() -> Option<(u64, u64)> {
    STATE.with(|s| s.get()).map(|st| (st.limit, st.used))
}

/// Records the bytes in use under the budget this thread entered (no-op outside one).
pub fn set_used(used: u64) {
    STATE.with(|s| {
        if let Some(st) = s.get() {
            s.set(Some(State { used, ..st }));
        }
    });
}

fn limit_and_used() -> (u64, u64) {
    active().unwrap_or((default_budget(), 0))
}

/// Refuses an allocation of `bytes` that does not fit in what is left of the budget.
pub fn check_bytes(bytes: u64) -> Result<()> {
    let (limit, used) = limit_and_used();
    if used.saturating_add(bytes) <= limit {
        return Ok(());
    }
    Err(over_budget(
        &format!("output of {} exceeds", format_bytes(bytes)),
        bytes,
        used,
        limit,
    ))
}

/// `what` with its verb ("output of 4 TiB exceeds").
fn over_budget(what: &str, bytes: u64, used: u64, limit: u64) -> Error {
    let in_use = if used > 0 && bytes <= limit {
        format!(" with {} already in use", format_bytes(used))
    } else {
        String::new()
    };
    Error::Other(format!(
        "{what} the memory budget of {}{in_use}; raise --max-memory",
        format_bytes(limit)
    ))
}

/// The error of a step whose outputs brought the bytes in use to `used` over `limit`.
pub fn outputs_over_budget(bytes: u64, used: u64, limit: u64) -> Error {
    over_budget(
        &format!("outputs of {} exceed", format_bytes(bytes)),
        bytes,
        used - bytes.min(used),
        limit,
    )
}

/// The element count of an output of `shape` with `elem_bytes`-byte elements, checked: an
/// overflowing count and a size beyond what is left of the budget are errors.
pub fn check_alloc(shape: &[usize], elem_bytes: usize) -> Result<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::Other(format!(
                "output shape {shape:?} has more elements than memory can address"
            ))
        })?;
    let bytes = (n as u128) * (elem_bytes as u128);
    check_bytes(u64::try_from(bytes).unwrap_or(u64::MAX))?;
    Ok(n)
}

/// [`check_alloc`] for elements of type `T`.
pub fn check_shape<T>(shape: &[usize]) -> Result<usize> {
    check_alloc(shape, size_of::<T>())
}

/// [`check_alloc`] for an output of `shape` with the element type of `like`.
pub fn check_like(like: &Value, shape: &[usize]) -> Result<usize> {
    check_alloc(shape, elem_bytes(like.dtype()))
}

/// Bytes per element of a runtime element type (1 for sub-byte types).
pub fn elem_bytes(dt: DataType) -> usize {
    crate::ir::tensor::elem_size(dt).unwrap_or(1)
}

/// The bytes a value's elements take.
pub fn value_bytes(v: &Value) -> u64 {
    (v.len() as u64).saturating_mul(elem_bytes(v.dtype()) as u64)
}

/// A byte count for people: "16 GiB", "4.0 TiB", "512 B".
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && b >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if b.is_multiple_of(scale) {
        format!("{} {}", b / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", b as f64 / scale as f64, UNITS[unit])
    }
}

/// Parses a size such as `512M`, `8G`, `16GiB`, `1.5g` or `1000000` (bytes); the suffixes are
/// binary (K = 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{s}' is not a size (e.g. 512M, 8G, 1000000)")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512M, 8G, 1000000)"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("size '{s}' is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999T").is_err());
        assert_eq!(format_bytes(16 << 30), "16 GiB");
        assert_eq!(format_bytes(4 << 40), "4 TiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(100), "100 B");
    }

    #[test]
    fn checks_follow_the_entered_budget() {
        let _outer = enter(1 << 20, 0);
        assert_eq!(check_shape::<f32>(&[256, 1024]).unwrap(), 1 << 18);
        let e = check_shape::<f32>(&[256, 1025]).unwrap_err().to_string();
        assert!(e.contains("exceeds the memory budget of 1 MiB"), "{e}");
        {
            let _inner = enter(1 << 20, 1 << 19);
            assert!(check_shape::<u8>(&[1 << 19]).is_ok());
            let e = check_shape::<u8>(&[(1 << 19) + 1]).unwrap_err().to_string();
            assert!(e.contains("512 KiB already in use"), "{e}");
        }
        assert!(check_shape::<u8>(&[1 << 20]).is_ok());
        let e = check_shape::<u8>(&[1 << 40, 1 << 40])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more elements than memory can address"), "{e}");
    }
}
