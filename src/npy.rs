//! numpy `.npy` and `.npz` files as runtime [`Value`]s.
//!
//! A small reader/writer of the `.npy` format (versions 1-3): little-endian or byte-sized
//! element types `<f4 <f8 <f2 <i8 <i4 <i2 |i1 <u8 <u4 <u2 |u1 |b1` (the runtime's types;
//! `ndarray-npy` has no float16, which the fp16 fixtures need), C or Fortran order. numpy has no
//! bfloat16 (ml_dtypes saves it as an opaque `<V2`), so bfloat16 values are written widened to
//! `<f4`, which is exact. `.npz` is a zip of `.npy`
//! members (stored or deflated, as `np.savez` / `np.savez_compressed` write them); member
//! names are returned without the `.npy` suffix.

use std::io::{Read, Write};
use std::path::Path;

use half::f16;
use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::runtime::Value;

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(what: &str, why: impl std::fmt::Display) -> Error {
    Error::Other(format!("{what}: {why}"))
}

/// The value of `'key':` in a numpy header dict (the text up to the next top-level comma).
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

fn decode<T: Copy>(data: &[u8], size: usize, f: impl Fn(&[u8]) -> T) -> Vec<T> {
    data.chunks_exact(size).map(f).collect()
}

/// Parses a `.npy` file's bytes. `what` names it in errors.
pub fn parse_npy(bytes: &[u8], what: &str) -> Result<Value> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(what, "not a .npy file (bad magic)"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(what, format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .ok_or_else(|| bad(what, "truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|e| bad(what, e))?;
    let descr = header_field(header, "descr")
        .ok_or_else(|| bad(what, "header has no descr"))?
        .trim_matches(|c| c == '\'' || c == '"');
    let fortran = header_field(header, "fortran_order") == Some("True");
    let shape_s = header_field(header, "shape").ok_or_else(|| bad(what, "header has no shape"))?;
    let shape: Vec<usize> = shape_s
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|e| bad(what, format!("shape {shape_s}: {e}")))
        })
        .collect::<Result<_>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(what, "shape overflows"))?;
    let data = &bytes[hstart + hlen..];
    let size = match descr {
        "<f8" | "<i8" | "<u8" => 8,
        "<f4" | "<i4" | "<u4" => 4,
        "<f2" | "<i2" | "<u2" => 2,
        "|i1" | "|u1" | "|b1" | "<i1" | "<u1" => 1,
        d => {
            return Err(bad(
                what,
                format!(
                    "element type '{d}' is not one the runtime stores (little-endian f4 f8 f2 i8 i4 i2 i1 u8 u4 u2 u1 b1)"
                ),
            ));
        }
    };
    let need = numel
        .checked_mul(size)
        .ok_or_else(|| bad(what, "size overflows"))?;
    if data.len() < need {
        return Err(bad(
            what,
            format!(
                "holds {} data bytes, shape {shape:?} needs {need}",
                data.len()
            ),
        ));
    }
    let data = &data[..need];
    // Fortran order: the data is the transpose's C-order data.
    let dims: Vec<usize> = if fortran {
        shape.iter().rev().copied().collect()
    } else {
        shape.clone()
    };
    fn arr<T: Clone>(dims: &[usize], v: Vec<T>, fortran: bool, what: &str) -> Result<ArrayD<T>> {
        let a = ArrayD::from_shape_vec(IxDyn(dims), v).map_err(|e| bad(what, e))?;
        Ok(if fortran {
            a.reversed_axes().as_standard_layout().into_owned()
        } else {
            a
        })
    }
    Ok(match descr {
        "<f4" => Value::F32(arr(
            &dims,
            decode(data, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            fortran,
            what,
        )?),
        "<f8" => Value::F64(arr(
            &dims,
            decode(data, 8, |b| {
                f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
            }),
            fortran,
            what,
        )?),
        "<f2" => Value::F16(arr(
            &dims,
            decode(data, 2, |b| f16::from_le_bytes([b[0], b[1]])),
            fortran,
            what,
        )?),
        "<i8" => Value::I64(arr(
            &dims,
            decode(data, 8, |b| {
                i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
            }),
            fortran,
            what,
        )?),
        "<i4" => Value::I32(arr(
            &dims,
            decode(data, 4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            fortran,
            what,
        )?),
        "<i2" => Value::I16(arr(
            &dims,
            decode(data, 2, |b| i16::from_le_bytes([b[0], b[1]])),
            fortran,
            what,
        )?),
        "<u8" => Value::U64(arr(
            &dims,
            decode(data, 8, |b| {
                u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
            }),
            fortran,
            what,
        )?),
        "<u4" => Value::U32(arr(
            &dims,
            decode(data, 4, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            fortran,
            what,
        )?),
        "<u2" => Value::U16(arr(
            &dims,
            decode(data, 2, |b| u16::from_le_bytes([b[0], b[1]])),
            fortran,
            what,
        )?),
        "|i1" | "<i1" => Value::I8(arr(&dims, decode(data, 1, |b| b[0] as i8), fortran, what)?),
        "|u1" | "<u1" => Value::U8(arr(&dims, data.to_vec(), fortran, what)?),
        _ => Value::Bool(arr(&dims, decode(data, 1, |b| b[0] != 0), fortran, what)?),
    })
}

/// Serializes a value as a version-1 `.npy` file.
pub fn to_npy(v: &Value) -> Vec<u8> {
    let (descr, body): (&str, Vec<u8>) = match v {
        Value::F32(a) => ("<f4", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::F64(a) => ("<f8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::F16(a) => ("<f2", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::I64(a) => ("<i8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::I32(a) => ("<i4", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::I8(a) => ("|i1", a.iter().map(|&x| x as u8).collect()),
        Value::U8(a) => ("|u1", a.iter().copied().collect()),
        Value::Bool(a) => ("|b1", a.iter().map(|&x| x as u8).collect()),
        Value::I16(a) => ("<i2", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::U16(a) => ("<u2", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::U32(a) => ("<u4", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::U64(a) => ("<u8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::BF16(a) => (
            "<f4",
            a.iter().flat_map(|x| x.to_f32().to_le_bytes()).collect(),
        ),
    };
    let shape = match v.shape() {
        [d] => format!("({d},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary; the header ends with a newline.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn read_npy(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes, &path.display().to_string())
}

/// Every member of an `.npz`, in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Value)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let what = path.display().to_string();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(&what, e))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| bad(&what, e))?;
        let name = f.name().trim_end_matches(".npy").to_string();
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf).map_err(|e| bad(&what, e))?;
        let v = parse_npy(&buf, &format!("{what}:{name}"))?;
        out.push((name, v));
    }
    Ok(out)
}

/// Writes values as an uncompressed `.npz` (like `np.savez`).
pub fn write_npz(path: &Path, values: &[(String, Value)]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let what = path.display().to_string();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, v) in values {
        zip.start_file(format!("{name}.npy"), opts)
            .map_err(|e| bad(&what, e))?;
        zip.write_all(&to_npy(v)).map_err(|e| Error::io(path, e))?;
    }
    zip.finish().map_err(|e| bad(&what, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn round_trips_every_type() {
        let vals = vec![
            Value::F32(array![[1.5f32, -2.0], [0.0, 3.25]].into_dyn()),
            Value::F64(array![1e300f64].into_dyn()),
            Value::F16(array![f16::from_f32(0.5), f16::from_f32(-1.0)].into_dyn()),
            Value::I64(ndarray::arr0(-7i64).into_dyn()),
            Value::I32(array![1i32, 2, 3].into_dyn()),
            Value::I8(array![-128i8, 127].into_dyn()),
            Value::U8(array![0u8, 255].into_dyn()),
            Value::Bool(array![[true], [false]].into_dyn()),
            Value::I16(array![i16::MIN, 7].into_dyn()),
            Value::U16(array![u16::MAX, 0].into_dyn()),
            Value::U32(array![u32::MAX, 1].into_dyn()),
            Value::U64(array![u64::MAX, 2].into_dyn()),
        ];
        for v in &vals {
            let b = to_npy(v);
            assert_eq!(
                (MAGIC.len() + 4 + u16::from_le_bytes([b[8], b[9]]) as usize) % 64,
                0
            );
            assert_eq!(&parse_npy(&b, "t").unwrap(), v);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npz");
        let named: Vec<(String, Value)> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("v{i}"), v.clone()))
            .collect();
        write_npz(&p, &named).unwrap();
        assert_eq!(read_npz(&p).unwrap(), named);
    }

    #[test]
    fn reads_fortran_order_and_rejects_big_endian() {
        let mut b = to_npy(&Value::I32(array![[1i32, 3], [2, 4]].into_dyn()));
        let h = String::from_utf8_lossy(&b[10..]).replace("False", "True ");
        let n = b.len();
        b.splice(10..n, h.into_bytes());
        let v = parse_npy(&b, "f").unwrap();
        assert_eq!(v, Value::I32(array![[1i32, 2], [3, 4]].into_dyn()));
        let mut be = to_npy(&Value::F32(array![1.0f32].into_dyn()));
        let at = be.windows(3).position(|w| w == b"<f4").unwrap();
        be[at] = b'>';
        assert!(parse_npy(&be, "b").unwrap_err().to_string().contains(">f4"));
    }
}
