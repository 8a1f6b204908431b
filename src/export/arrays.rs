//! Activations as arrays other tools read: NumPy's `.npy` (format 1.0, little-endian f32, C
//! order; `numpy.load` reads it) and safetensors (tensor names = hook names).

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};

/// Writes `data` (row-major, `shape`) as a `.npy` file.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    ensure!(
        shape.iter().product::<usize>() == data.len(),
        "shape {shape:?} does not hold {} values",
        data.len()
    );
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    file.write_all(&npy_header(shape))?;
    for v in data {
        file.write_all(&v.to_le_bytes())?;
    }
    file.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// The `.npy` 1.0 header: magic, version, length, and the dict padded with spaces so the data
/// starts on a 64-byte boundary (as NumPy writes it).
fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes named f32 tensors (row-major, with their shapes) as one safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, data)| data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .with_context(|| format!("tensor {name} of shape {shape:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_are_numpys() {
        let h = npy_header(&[2, 3]);
        assert_eq!(h.len() % 64, 0);
        assert!(h.starts_with(b"\x93NUMPY\x01\x00"));
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(text.ends_with(" \n"));
        assert!(String::from_utf8_lossy(&npy_header(&[5])).contains("'shape': (5,)"));
        let dir = tempfile::tempdir().unwrap();
        assert!(write_npy(&dir.path().join("x.npy"), &[2, 2], &[1.0]).is_err());
    }
}
