//! NumPy `.npz` archives (a zip of `.npy` arrays, as `np.savez` writes them), read array by
//! array with every header checked before anything is allocated: the dtype is a float we read,
//! the shape's element count times the item size neither overflows nor differs from the bytes
//! the zip entry holds, and those bytes lie within the file. Only the arrays asked for are
//! read. (candle's reader allocates whatever a header claims.)

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

/// Longest `.npy` header we accept (NumPy writes under 200 bytes; version 2 allows 4 GiB).
const MAX_HEADER_BYTES: usize = 1 << 16;

/// The arrays of `path` named in `names` (each without its `.npy`) that it has, as f32
/// tensors. A name it lacks is simply absent from the map.
pub fn read(path: &Path, names: &[&str]) -> Result<HashMap<String, Tensor>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a zip archive: {e}"))?;
    let mut out = HashMap::new();
    for &name in names {
        let entry_name = format!("{name}.npy");
        let entry = match zip.by_name(&entry_name) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => continue,
            Err(e) => return Err(format!("{entry_name}: {e}")),
        };
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(format!(
                "{entry_name} is compressed ({}): save it with np.savez, not np.savez_compressed",
                entry.compression()
            ));
        }
        let size = entry.size();
        if size > file_len {
            return Err(format!(
                "{entry_name} claims {size} bytes in a file of {file_len}"
            ));
        }
        let tensor = read_npy(entry, size).map_err(|e| format!("{entry_name}: {e}"))?;
        out.insert(name.to_string(), tensor);
    }
    Ok(out)
}

/// One `.npy` array of `size` bytes in all (header included).
fn read_npy(mut r: impl Read, size: u64) -> Result<Tensor, String> {
    let io = |e: std::io::Error| format!("cut short ({e})");
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io)?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let header_len = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(io)?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(io)?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(format!(".npy format version {v} (1 to 3 are read)")),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!("a header of {header_len} bytes"));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).map_err(io)?;
    let header = String::from_utf8_lossy(&header);
    let (descr, fortran, shape) = parse_header(&header)?;
    let (item, read_item): (usize, fn(&[u8]) -> f32) = match descr.as_str() {
        "<f4" | "=f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "<f8" | "=f8" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        "<f2" | "=f2" => (2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => {
            return Err(format!(
                "dtype {other} (float32, float64 and float16 are read)"
            ));
        }
    };
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} has more elements than can exist"))?;
    let data_bytes = count
        .checked_mul(item)
        .ok_or_else(|| format!("shape {shape:?} has more bytes than can exist"))?;
    let prefix = magic.len() + if magic[6] == 1 { 2 } else { 4 } + header_len;
    let expected = (prefix as u64).checked_add(data_bytes as u64);
    if expected != Some(size) {
        return Err(format!(
            "its header says shape {shape:?} of {descr} ({data_bytes} bytes), but the entry holds \
             {} bytes of data",
            size.saturating_sub(prefix as u64)
        ));
    }
    let mut raw = vec![0u8; data_bytes];
    r.read_exact(&mut raw).map_err(io)?;
    let mut values: Vec<f32> = raw.chunks_exact(item).map(read_item).collect();
    if fortran && shape.len() > 1 {
        values = c_order(&values, &shape);
    }
    Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| e.to_string())
}

/// Column-major (`fortran_order`) values in row-major order.
fn c_order(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = shape.len();
    let mut out = vec![0f32; values.len()];
    let mut index = vec![0usize; n];
    for v in out.iter_mut() {
        // Position of `index` in column-major order.
        let (mut at, mut stride) = (0, 1);
        for (i, &d) in index.iter().zip(shape) {
            at += i * stride;
            stride *= d;
        }
        *v = values[at];
        // Next row-major index.
        for k in (0..n).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// `{'descr': '<f4', 'fortran_order': False, 'shape': (32, 64), }` → its three fields.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), String> {
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("the header has no '{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        let rest = rest
            .trim_start()
            .strip_prefix(':')
            .unwrap_or(rest)
            .trim_start();
        Ok(rest)
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| "the header's descr is not a string".to_string())?
        .to_string();
    let fortran = field("fortran_order")?.starts_with("True");
    let shape = field("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| "the header's shape is not a tuple".to_string())?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| {
            d.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("the header's shape has {d:?}, not a length"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_lies_are_caught() {
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (32, 64), }").unwrap(),
            ("<f4".into(), false, vec![32, 64])
        );
        assert_eq!(
            parse_header("{'descr': '<f8', 'fortran_order': True, 'shape': (7,), }").unwrap(),
            ("<f8".into(), true, vec![7])
        );
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (), }")
                .unwrap()
                .2,
            Vec::<usize>::new()
        );
        assert!(parse_header("{'descr': '<f4', 'shape': (x, 2), }").is_err());
        assert!(parse_header("{}").is_err());
    }

    #[test]
    fn fortran_order_is_transposed() {
        // [[1, 2, 3], [4, 5, 6]] stored column by column.
        assert_eq!(
            c_order(&[1., 4., 2., 5., 3., 6.], &[2, 3]),
            [1., 2., 3., 4., 5., 6.]
        );
    }
}
