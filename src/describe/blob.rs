//! The store's binary columns, all little-endian: token ids (`u32` each), fine histograms
//! (LEB128 varints, one per bucket: most counts are small or zero), and a unit's examples (one
//! blob per unit, so a commit writes one row per unit however many examples it keeps).
//!
//! An examples blob is `varint n_top, varint n_candidates`, then that many examples, top
//! first: `varint window, f32 max_act, varint max_pos, varint key, varint n_positions,
//! u8 encoding` and the activations: encoding 0 is `n_positions × f16`; encoding 1 (sparse,
//! when it is shorter) is `varint n_nonzero` and that many `(u16 position, f16 value)` pairs,
//! every other position 0. Varints are LEB128 (7 bits a byte, low first).
//! Decoding checks every length against the blob, so a corrupt row is an error, not a panic.

use anyhow::{Result, bail};
use half::f16;

use super::stats::Example;

pub fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn u32_from_bytes(bytes: &[u8]) -> Result<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
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

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Histogram counts as varints, a run of zeros as `0, varint (run − 1)` (most of a unit's
/// fine buckets are empty).
pub fn encode_counts(values: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 2);
    let mut i = 0;
    while i < values.len() {
        if values[i] == 0 {
            let run = values[i..].iter().take_while(|&&v| v == 0).count();
            out.push(0);
            put_varint(&mut out, run as u64 - 1);
            i += run;
        } else {
            put_varint(&mut out, values[i] as u64);
            i += 1;
        }
    }
    out
}

/// Decodes [`encode_counts`]'s bytes, which must hold exactly `len` counts.
pub fn decode_counts(bytes: &[u8], len: usize) -> Result<Vec<u32>> {
    let mut r = Reader { bytes };
    let mut out = Vec::with_capacity(len);
    while !r.bytes.is_empty() {
        let v = r.varint()?;
        if v == 0 {
            let run = usize::try_from(r.varint()?)?.saturating_add(1);
            if out.len().saturating_add(run) > len {
                bail!("corrupt histogram (more than {len} buckets)");
            }
            out.resize(out.len() + run, 0);
        } else {
            if out.len() >= len {
                bail!("corrupt histogram (more than {len} buckets)");
            }
            out.push(u32::try_from(v)?);
        }
    }
    if out.len() != len {
        bail!("corrupt histogram ({} buckets, expected {len})", out.len());
    }
    Ok(out)
}

const DENSE: u8 = 0;
const SPARSE: u8 = 1;

fn put_example(out: &mut Vec<u8>, e: &Example) {
    put_varint(out, e.window);
    out.extend_from_slice(&e.max_act.to_le_bytes());
    put_varint(out, e.max_pos as u64);
    put_varint(out, e.key);
    put_varint(out, e.acts.len() as u64);
    let nonzero = e.acts.iter().filter(|a| a.to_bits() & 0x7fff != 0).count();
    if e.acts.len() <= 1 << 16 && 2 + nonzero * 4 < e.acts.len() * 2 {
        out.push(SPARSE);
        put_varint(out, nonzero as u64);
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
    put_varint(&mut out, top.len() as u64);
    put_varint(&mut out, candidates.clone().count() as u64);
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
    fn varint(&mut self) -> Result<u64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            value |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("corrupt examples blob (varint too long)")
    }
}

fn get_example(r: &mut Reader<'_>) -> Result<Example> {
    let window = r.varint()?;
    let max_act = f32::from_bits(r.u32()?);
    let max_pos = u32::try_from(r.varint()?)?;
    let key = r.varint()?;
    let n = usize::try_from(r.varint()?)?;
    let encoding = r.take(1)?[0];
    let acts: Box<[f16]> = match encoding {
        DENSE => {
            let b = r.take(n.saturating_mul(2))?;
            b.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect()
        }
        SPARSE => {
            let nonzero = usize::try_from(r.varint()?)?;
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
    let n_top = usize::try_from(r.varint()?)?;
    let n_candidates = usize::try_from(r.varint()?)?;
    // Every example takes at least 9 bytes: counts beyond that are corrupt, not allocations.
    if n_top.saturating_add(n_candidates).saturating_mul(9) > bytes.len() {
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
        // Header: window, max, peak, key, length (varints but the f32) and the encoding; the
        // sparse one's activations cost 1 + 4 bytes instead of 20.
        assert_eq!(
            blob.len(),
            2 + (1 + 4 + 1 + 1 + 1 + 1 + 8) + (1 + 4 + 1 + 2 + 1 + 1 + 1 + 4)
        );
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
        let mut huge = vec![0xff, 0xff, 0xff, 0x7f];
        huge.extend_from_slice(&blob[1..]);
        assert!(decode_examples(&huge).is_err());
        assert!(u32_from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn counts_round_trip_with_zero_runs() {
        let v = vec![0, 0, 0, 1, 127, 128, 300, u32::MAX, 0];
        let b = encode_counts(&v);
        assert_eq!(b.len(), 2 + 1 + 1 + 2 + 2 + 5 + 2);
        assert_eq!(decode_counts(&b, v.len()).unwrap(), v);
        assert!(decode_counts(&b[..b.len() - 1], v.len()).is_err());
        assert!(decode_counts(&b, v.len() - 1).is_err());
        // A lying run length is an error, not an allocation.
        assert!(decode_counts(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f], 384).is_err());
    }
}
