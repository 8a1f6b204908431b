//! The store's binary columns, all little-endian: token ids (`u32` each), fine histograms
//! (LEB128 varints, one per bucket: most counts are small or zero), and a unit's examples (one
//! blob per unit, so a commit writes one row per unit however many examples it keeps).
//!
//! An examples blob is `u32 n_top, u32 n_candidates`, then that many examples, top first:
//! `u64 window, f32 max_act, u32 max_pos, u64 key, u32 n_positions, u8 encoding` and the
//! activations: encoding 0 is `n_positions × f16`; encoding 1 (sparse, when it is shorter) is
//! `u32 n_nonzero` and that many `(u16 position, f16 value)` pairs, every other position 0.
//! Decoding checks every length against the blob, so a corrupt row is an error, not a panic.

use anyhow::{Result, bail};
use half::f16;

use super::stats::Example;

pub fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn u32_from_bytes(bytes: &[u8]) -> Result<Vec<u32>> {
    if bytes.len() % 4 != 0 {
        bail!(
            "corrupt token ids ({} bytes, not a multiple of 4)",
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub fn varints(values: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len());
    for &v in values {
        let mut v = v;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

pub fn from_varints(bytes: &[u8]) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut value: u64 = 0;
    let mut shift = 0;
    for &b in bytes {
        value |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            out.push(u32::try_from(value).map_err(|_| anyhow::anyhow!("corrupt varint"))?);
            value = 0;
            shift = 0;
        } else {
            shift += 7;
            if shift > 28 {
                bail!("corrupt varint (too long)");
            }
        }
    }
    if shift != 0 {
        bail!("corrupt varints (truncated)");
    }
    Ok(out)
}

const DENSE: u8 = 0;
const SPARSE: u8 = 1;

fn put_example(out: &mut Vec<u8>, e: &Example) {
    out.extend_from_slice(&e.window.to_le_bytes());
    out.extend_from_slice(&e.max_act.to_le_bytes());
    out.extend_from_slice(&e.max_pos.to_le_bytes());
    out.extend_from_slice(&e.key.to_le_bytes());
    out.extend_from_slice(&(e.acts.len() as u32).to_le_bytes());
    let nonzero = e.acts.iter().filter(|a| a.to_bits() & 0x7fff != 0).count();
    if e.acts.len() <= 1 << 16 && 4 + nonzero * 4 < e.acts.len() * 2 {
        out.push(SPARSE);
        out.extend_from_slice(&(nonzero as u32).to_le_bytes());
        for (p, a) in e.acts.iter().enumerate() {
            if a.to_bits() & 0x7fff != 0 {
                out.extend_from_slice(&(p as u16).to_le_bytes());
                out.extend_from_slice(&a.to_le_bytes());
            }
        }
    } else {
        out.push(DENSE);
        for a in e.acts.iter() {
            out.extend_from_slice(&a.to_le_bytes());
        }
    }
}

/// Encodes a unit's top examples and quantile candidates.
pub fn encode_examples<'a>(
    top: &'a [Example],
    candidates: impl Iterator<Item = &'a Example> + Clone,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(top.len() as u32).to_le_bytes());
    out.extend_from_slice(&(candidates.clone().count() as u32).to_le_bytes());
    for e in top.iter().chain(candidates) {
        put_example(&mut out, e);
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            bail!("corrupt examples blob (truncated)");
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

fn get_example(r: &mut Reader<'_>) -> Result<Example> {
    let window = r.u64()?;
    let max_act = f32::from_bits(r.u32()?);
    let max_pos = r.u32()?;
    let key = r.u64()?;
    let n = r.u32()? as usize;
    let encoding = r.take(1)?[0];
    let acts: Box<[f16]> = match encoding {
        DENSE => {
            let b = r.take(n.checked_mul(2).unwrap_or(usize::MAX))?;
            b.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect()
        }
        SPARSE => {
            let nonzero = r.u32()? as usize;
            if nonzero > n || r.bytes.len() < nonzero * 4 {
                bail!("corrupt examples blob (sparse count {nonzero} of {n})");
            }
            let mut acts = vec![f16::ZERO; n];
            for _ in 0..nonzero {
                let p = r.u16()? as usize;
                let v = f16::from_bits(r.u16()?);
                *acts
                    .get_mut(p)
                    .ok_or_else(|| anyhow::anyhow!("corrupt examples blob (position {p})"))? = v;
            }
            acts.into_boxed_slice()
        }
        other => bail!("corrupt examples blob (encoding {other})"),
    };
    if max_pos as usize >= n.max(1) {
        bail!("corrupt examples blob (peak at {max_pos} of {n} positions)");
    }
    Ok(Example {
        window,
        max_act,
        max_pos,
        key,
        acts,
    })
}

/// Decodes a unit's examples: (top, quantile candidates).
pub fn decode_examples(bytes: &[u8]) -> Result<(Vec<Example>, Vec<Example>)> {
    let mut r = Reader { bytes };
    let n_top = r.u32()? as usize;
    let n_candidates = r.u32()? as usize;
    // Every example takes at least 29 bytes: counts beyond that are corrupt, not allocations.
    if (n_top + n_candidates).saturating_mul(29) > bytes.len() {
        bail!(
            "corrupt examples blob ({n_top} + {n_candidates} examples in {} bytes)",
            bytes.len()
        );
    }
    let top = (0..n_top)
        .map(|_| get_example(&mut r))
        .collect::<Result<Vec<_>>>()?;
    let candidates = (0..n_candidates)
        .map(|_| get_example(&mut r))
        .collect::<Result<Vec<_>>>()?;
    if !r.bytes.is_empty() {
        bail!("corrupt examples blob ({} trailing bytes)", r.bytes.len());
    }
    Ok((top, candidates))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(window: u64, acts: &[f32]) -> Example {
        Example {
            window,
            max_act: acts.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            max_pos: 1,
            key: window * 31,
            acts: acts.iter().map(|&a| f16::from_f32(a)).collect(),
        }
    }

    #[test]
    fn examples_round_trip_dense_and_sparse() {
        let dense = example(3, &[0.5, 1.5, -0.25, 2.0]);
        let sparse = example(9, &[0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0, 0.0, 0.0]);
        let blob = encode_examples(std::slice::from_ref(&dense), [&sparse].into_iter());
        // The sparse one costs 4 + 4 bytes of activations instead of 20.
        assert_eq!(blob.len(), 8 + (29 + 8) + (29 + 4 + 4));
        let (top, cands) = decode_examples(&blob).unwrap();
        assert_eq!(top, vec![dense]);
        // -0.0 reads back as 0.0: only its sign is lost.
        assert_eq!(
            cands[0].acts_f32(),
            sparse
                .acts_f32()
                .iter()
                .map(|a| a + 0.0)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn corrupt_blobs_are_errors() {
        let blob = encode_examples(&[example(1, &[1.0, 2.0])], std::iter::empty());
        for cut in 0..blob.len() {
            assert!(decode_examples(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = blob.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_examples(&huge).is_err());
        assert!(u32_from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn varints_round_trip() {
        let v = vec![0, 1, 127, 128, 300, u32::MAX];
        let b = varints(&v);
        assert_eq!(b.len(), 1 + 1 + 1 + 2 + 2 + 5);
        assert_eq!(from_varints(&b).unwrap(), v);
        assert!(from_varints(&b[..b.len() - 1]).is_err());
    }
}
