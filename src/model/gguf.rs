//! GGUF (llama.cpp) files: metadata helpers, the HF-equivalent config of a GGUF model, and a
//! tensor source that dequantizes every tensor to f32 under its HF name.
//!
//! Two llama.cpp conversions are undone so tensors equal the HF checkpoint's:
//! - `llama`: Q/K projection rows are permuted for llama.cpp's interleaved RoPE; we restore HF's
//!   half-split layout.
//! - `gemma*`: RMSNorm weights are stored as `1 + w`; we store `w` again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};

use super::error::{ModelError, Result};
use super::packed::PackedMatrix;
use super::weights::{TensorSource, pack_whole};

/// Rows dequantized at a time when a matrix is packed piecewise (≈ 1 MB of f32 per piece at a
/// width of 576).
const PIECE_FLOATS: usize = 1 << 18;

pub fn metadata_str(md: &HashMap<String, Value>, key: &str) -> Option<String> {
    md.get(key).and_then(|v| v.to_string().ok()).cloned()
}

pub fn metadata_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    let v = md.get(key)?;
    v.to_u32()
        .ok()
        .or_else(|| v.to_u64().ok().and_then(|x| u32::try_from(x).ok()))
        .or_else(|| v.to_i32().ok().and_then(|x| u32::try_from(x).ok()))
}

pub fn metadata_f32(md: &HashMap<String, Value>, key: &str) -> Option<f32> {
    let v = md.get(key)?;
    v.to_f32()
        .ok()
        .or_else(|| v.to_f64().ok().map(|x| x as f32))
}

pub fn metadata_string_array(md: &HashMap<String, Value>, key: &str) -> Option<Vec<String>> {
    match md.get(key)? {
        Value::Array(values) => values.iter().map(|v| v.to_string().ok().cloned()).collect(),
        _ => None,
    }
}

/// Walks a GGUF header's metadata to its `general.alignment` and refuses one that is not a
/// power of two (llama.cpp's rule; zero would divide by zero in the parser). Anything it cannot
/// walk (a short or damaged header) is left for the full parser to report.
fn check_alignment(bytes: &[u8]) -> std::result::Result<(), String> {
    struct Cursor<'a> {
        bytes: &'a [u8],
        at: usize,
    }
    impl Cursor<'_> {
        fn take(&mut self, n: u64) -> Option<&[u8]> {
            let end = self.at.checked_add(usize::try_from(n).ok()?)?;
            let out = self.bytes.get(self.at..end)?;
            self.at = end;
            Some(out)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
    }
    let mut c = Cursor { bytes, at: 0 };
    let walk = |c: &mut Cursor| -> Option<Option<u64>> {
        if c.take(4)? != b"GGUF" {
            return None;
        }
        let version = c.u32()?;
        // Version 1 counts and string lengths are u32; later ones u64.
        let length = |c: &mut Cursor| {
            if version == 1 {
                c.u32().map(u64::from)
            } else {
                c.u64()
            }
        };
        let _tensors = length(c)?;
        let kvs = length(c)?;
        // Fixed sizes of the scalar value types (GGUF type ids 0–12; 8 string, 9 array).
        let size = |ty: u32| -> Option<u64> {
            Some(match ty {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                _ => return None,
            })
        };
        for _ in 0..kvs {
            let key_len = length(c)?;
            let key = c.take(key_len)?.to_vec();
            let ty = c.u32()?;
            if key == b"general.alignment" {
                let n = size(ty)?;
                let raw = c.take(n)?;
                let mut le = [0u8; 8];
                le[..raw.len()].copy_from_slice(raw);
                return Some(Some(u64::from_le_bytes(le)));
            }
            match ty {
                8 => {
                    let n = length(c)?;
                    c.take(n)?;
                }
                9 => {
                    let item = c.u32()?;
                    let count = length(c)?;
                    if item == 8 {
                        for _ in 0..count {
                            let n = length(c)?;
                            c.take(n)?;
                        }
                    } else {
                        c.take(count.checked_mul(size(item)?)?)?;
                    }
                }
                ty => {
                    c.take(size(ty)?)?;
                }
            }
        }
        Some(None)
    };
    match walk(&mut c) {
        Some(Some(alignment)) if !alignment.is_power_of_two() => Err(format!(
            "general.alignment is {alignment}: it must be a power of two (32 by default)"
        )),
        _ => Ok(()),
    }
}

/// An opened GGUF file: its parsed header and the memory map holding the tensor data.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    mmap: memmap2::Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // Safety: the map is read-only; a file truncated underneath us is the documented
        // hazard of memory maps, the same one candle and llama.cpp accept.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        // candle divides by the alignment the header declares: a zero must be refused first.
        check_alignment(&mmap).map_err(|reason| ModelError::CorruptGguf {
            path: path.to_path_buf(),
            reason,
        })?;
        let mut cursor = std::io::Cursor::new(&mmap[..]);
        let content =
            gguf_file::Content::read(&mut cursor).map_err(|e| ModelError::CorruptGguf {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            mmap,
        })
    }

    /// Lets the OS drop the mapped pages of a tensor that has been read (they would otherwise
    /// count toward the process's memory until the file is closed, ~100 MB for SmolLM2).
    fn release(&self, info: &gguf_file::TensorInfo) {
        if let Some(data) = self.tensor_bytes(info).filter(|d| !d.is_empty()) {
            let start = data.as_ptr() as usize - self.mmap.as_ptr() as usize;
            // Safety: the map is read-only and private, so dropping its pages loses nothing:
            // a later read faults them in again from the file. Only a hint: errors are moot.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    data.len(),
                )
            };
        }
    }

    /// The mapped bytes of a tensor's data; `None` when its header puts them (partly) beyond
    /// the file or its size overflows.
    fn tensor_bytes(&self, info: &gguf_file::TensorInfo) -> Option<&[u8]> {
        let dtype = info.ggml_dtype;
        let len =
            (info.shape.elem_count() / dtype.block_size().max(1)).checked_mul(dtype.type_size())?;
        let start =
            usize::try_from(self.content.tensor_data_offset.checked_add(info.offset)?).ok()?;
        self.mmap.get(start..start.checked_add(len)?)
    }

    pub fn architecture(&self) -> Option<String> {
        metadata_str(&self.content.metadata, "general.architecture")
    }

    /// Tensor-type histogram, e.g. "Q4_1×210, F32×61, Q8_0×1", for `ModelInfo`.
    pub fn quantization_summary(&self) -> String {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for info in self.content.tensor_infos.values() {
            *counts.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn u32_key(&self, arch: &str, key: &str) -> Result<usize> {
        let full = format!("{arch}.{key}");
        metadata_u32(&self.content.metadata, &full)
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::config(&self.path, format!("metadata {full} is missing")))
    }

    /// The HF `config.json` equivalent of this file, as transformers derives it.
    pub fn hf_config(&self) -> Result<serde_json::Value> {
        let md = &self.content.metadata;
        let arch = self.architecture().ok_or_else(|| {
            ModelError::config(&self.path, "metadata general.architecture is missing")
        })?;
        let f = |key: &str| metadata_f32(md, &format!("{arch}.{key}"));
        let n_heads = self.u32_key(&arch, "attention.head_count")?;
        let vocab_size = match metadata_u32(md, &format!("{arch}.vocab_size")) {
            Some(v) => v as usize,
            None => match md.get("tokenizer.ggml.tokens") {
                Some(Value::Array(tokens)) => tokens.len(),
                _ => self
                    .content
                    .tensor_infos
                    .get("token_embd.weight")
                    .map(|t| t.shape.dims()[0])
                    .unwrap_or(0),
            },
        };
        let tied = !self.content.tensor_infos.contains_key("output.weight");
        let mut config = serde_json::json!({
            "model_type": arch,
            "num_hidden_layers": self.u32_key(&arch, "block_count")?,
            "hidden_size": self.u32_key(&arch, "embedding_length")?,
            "intermediate_size": self.u32_key(&arch, "feed_forward_length")?,
            "num_attention_heads": n_heads,
            "num_key_value_heads": metadata_u32(md, &format!("{arch}.attention.head_count_kv")).map(|v| v as usize).unwrap_or(n_heads),
            "max_position_embeddings": metadata_u32(md, &format!("{arch}.context_length")).unwrap_or(2048),
            "vocab_size": vocab_size,
            "tie_word_embeddings": tied,
        });
        let obj = config
            .as_object_mut()
            .ok_or_else(|| ModelError::config(&self.path, "internal: config is not an object"))?;
        if let Some(eps) = f("attention.layer_norm_rms_epsilon") {
            obj.insert("rms_norm_eps".into(), eps.into());
        }
        if let Some(theta) = f("rope.freq_base") {
            obj.insert("rope_theta".into(), theta.into());
        }
        if let Some(head_dim) = metadata_u32(md, &format!("{arch}.attention.key_length")) {
            obj.insert("head_dim".into(), head_dim.into());
        }
        match arch.as_str() {
            "llama" => {
                obj.insert("hidden_act".into(), "silu".into());
            }
            "gemma3" => {
                let head_dim = obj.get("head_dim").and_then(|v| v.as_u64()).unwrap_or(256);
                if let Some(window) = metadata_u32(md, "gemma3.attention.sliding_window") {
                    obj.insert("sliding_window".into(), window.into());
                }
                // As HF's Gemma3TextConfig defaults, which transformers keeps for GGUF files:
                // every sixth layer is global, local layers use rope base 10 000.
                obj.insert("query_pre_attn_scalar".into(), head_dim.into());
                obj.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
            }
            _ => {}
        }
        Ok(config)
    }

    /// HF tensor name → GGUF tensor name, for the architectures we open from GGUF.
    fn gguf_name(hf: &str) -> Option<String> {
        let rest = hf.strip_prefix("model.").unwrap_or(hf);
        let fixed = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(name) = fixed {
            return Some(name.to_string());
        }
        let rest = rest.strip_prefix("layers.")?;
        let (layer, module) = rest.split_once('.')?;
        let gguf_module = match module {
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "input_layernorm.weight" => "attn_norm.weight",
            // Llama's second norm; Gemma's pre-MLP norm (its post-attention norm is separate).
            "post_attention_layernorm.weight" => "post_attention_norm.weight",
            "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
            "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
            _ => return None,
        };
        Some(format!("blk.{layer}.{gguf_module}"))
    }
}

/// Reads tensors out of a GGUF file by their HF names, dequantized to f32.
pub struct GgufSource {
    file: GgufFile,
    arch: String,
    n_heads: usize,
    n_kv_heads: usize,
}

impl GgufSource {
    pub fn new(file: GgufFile, n_heads: usize, n_kv_heads: usize) -> Self {
        let arch = file.architecture().unwrap_or_default();
        GgufSource {
            file,
            arch,
            n_heads,
            n_kv_heads,
        }
    }

    fn resolve(&self, hf_name: &str) -> Option<String> {
        let name = GgufFile::gguf_name(hf_name)?;
        // In Llama GGUFs the norm before the MLP is `ffn_norm`.
        if self.arch == "llama" && hf_name.ends_with("post_attention_layernorm.weight") {
            return Some(name.replace("post_attention_norm", "ffn_norm"));
        }
        Some(name)
    }
}

/// Undo llama.cpp's `permute(w, n_head)`: rows were reordered from HF's [half0; half1] per head
/// into interleaved pairs.
fn unpermute_rope_rows(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let head_dim = rows / n_head;
    w.reshape((n_head, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

impl TensorSource for GgufSource {
    fn path(&self) -> &Path {
        &self.file.path
    }

    fn contains(&self, name: &str) -> bool {
        self.resolve(name)
            .is_some_and(|n| self.file.content.tensor_infos.contains_key(&n))
    }

    fn total_elements(&self) -> u64 {
        self.file
            .content
            .tensor_infos
            .values()
            .map(|info| info.shape.elem_count() as u64)
            .sum()
    }

    fn load(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(gguf_name) = self.resolve(name) else {
            return Ok(None);
        };
        let Some(info) = self.file.content.tensor_infos.get(&gguf_name) else {
            return Ok(None);
        };
        let corrupt = |e: candle_core::Error| ModelError::CorruptGguf {
            path: self.file.path.clone(),
            reason: format!("tensor {gguf_name}: {e}"),
        };
        let mut cursor = std::io::Cursor::new(&self.file.mmap[..]);
        let qtensor = info
            .read(
                &mut cursor,
                self.file.content.tensor_data_offset,
                &Device::Cpu,
            )
            .map_err(corrupt)?;
        self.file.release(info);
        let mut tensor = qtensor.dequantize(&Device::Cpu).map_err(corrupt)?;
        if self.arch == "llama" {
            if name.ends_with("q_proj.weight") {
                tensor = unpermute_rope_rows(&tensor, self.n_heads)?;
            } else if name.ends_with("k_proj.weight") {
                tensor = unpermute_rope_rows(&tensor, self.n_kv_heads)?;
            }
        }
        if self.arch.starts_with("gemma") && name.ends_with("norm.weight") {
            tensor = (tensor - 1.0)?;
        }
        Ok(Some(tensor))
    }

    /// Dequantizes a few hundred rows at a time straight into the packed matrix (Llama's Q/K
    /// rows, which must be permuted back first, go through [`GgufSource::load`]).
    fn load_packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<PackedMatrix>> {
        let Some(gguf_name) = self.resolve(name) else {
            return Ok(None);
        };
        let Some(info) = self.file.content.tensor_infos.get(&gguf_name) else {
            return Ok(None);
        };
        let permuted = self.arch == "llama"
            && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight"));
        let dtype = info.ggml_dtype;
        let block = dtype.block_size();
        if permuted
            || info.shape.dims() != [rows, cols]
            || block == 0
            || !cols.is_multiple_of(block)
        {
            return pack_whole(self.path(), name, self.load(name)?, rows, cols);
        }
        let corrupt = |reason: String| ModelError::CorruptGguf {
            path: self.file.path.clone(),
            reason: format!("tensor {gguf_name}: {reason}"),
        };
        let row_bytes = cols / block * dtype.type_size();
        let data = self.file.tensor_bytes(info).ok_or_else(|| {
            corrupt(format!(
                "its {rows} × {cols} values lie beyond the end of the file ({} bytes)",
                self.file.mmap.len()
            ))
        })?;
        let piece_rows = (PIECE_FLOATS / cols.max(1)).max(1);
        let packed = PackedMatrix::from_row_pieces(rows, cols, piece_rows, |first, count| {
            let raw = &data[first * row_bytes..(first + count) * row_bytes];
            // candle reads the blocks in place as their struct type: give it an 8-aligned
            // copy (mapped tensor data need not be aligned).
            let mut aligned = vec![0u64; raw.len().div_ceil(8)];
            // Safety: a u64 buffer viewed as its bytes (any alignment is fine for u8).
            let view = unsafe {
                std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), raw.len())
            };
            view.copy_from_slice(raw);
            let values = qtensor_from_ggml(dtype, view, vec![count, cols], &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| corrupt(e.to_string()))?;
            if values.len() != count * cols {
                return Err(corrupt(format!(
                    "rows {first}..{} dequantized to {} values",
                    first + count,
                    values.len()
                )));
            }
            Ok(values)
        })?;
        self.file.release(info);
        Ok(Some(packed))
    }
}
