//! Where tensors come from: memory-mapped safetensors (single or sharded) or a GGUF file, behind
//! one small trait, and a `Weights` path builder in the spirit of candle's `VarBuilder` that
//! checks every shape and names the file in its errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};

use super::error::{ModelError, Result};
use super::packed::PackedMatrix;

pub trait TensorSource: Send + Sync {
    /// The file (or first shard) tensors are read from, for error messages.
    fn path(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    /// The tensor as f32, or `None` when the file has no tensor of that name.
    fn load(&self, name: &str) -> Result<Option<Tensor>>;
    /// The `[rows, cols]` matrix `name` packed for the matmul kernel, or `None` when the file
    /// has no tensor of that name; another shape is an error. This loads the tensor whole and
    /// packs it; a source that can produce rows piecewise packs them as they come, so the f32
    /// matrix and its packed copy are never both in memory.
    fn load_packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<PackedMatrix>> {
        pack_whole(self.path(), name, self.load(name)?, rows, cols)
    }
    /// Elements over all tensors in the file(s): what loading progress is measured against.
    fn total_elements(&self) -> u64;
}

/// [`TensorSource::load_packed`] from a whole loaded tensor (`None`: the file has none).
pub(crate) fn pack_whole(
    path: &Path,
    name: &str,
    tensor: Option<Tensor>,
    rows: usize,
    cols: usize,
) -> Result<Option<PackedMatrix>> {
    let Some(tensor) = tensor else {
        return Ok(None);
    };
    if tensor.dims() != [rows, cols] {
        return Err(ModelError::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: vec![rows, cols],
            found: tensor.dims().to_vec(),
        });
    }
    Ok(Some(PackedMatrix::pack(&tensor)?))
}

/// How far loading has got, shared with whoever shows it (another thread polls it).
#[derive(Debug, Default)]
pub struct LoadProgress {
    total_elements: AtomicU64,
    loaded_elements: AtomicU64,
    /// Set by [`LoadProgress::cancel`]: the load stops at its next tensor.
    cancelled: std::sync::atomic::AtomicBool,
}

impl LoadProgress {
    /// Fraction of the file's elements loaded so far, in [0, 1] (0 until the file is opened).
    pub fn fraction(&self) -> f32 {
        let total = self.total_elements.load(Ordering::Relaxed);
        let loaded = self.loaded_elements.load(Ordering::Relaxed);
        if total == 0 {
            0.0
        } else {
            (loaded as f64 / total as f64).min(1.0) as f32
        }
    }

    fn start(&self, total_elements: u64) {
        self.total_elements.store(total_elements, Ordering::Relaxed);
        self.loaded_elements.store(0, Ordering::Relaxed);
    }

    /// Counts a loaded tensor, and stops the load here if it was cancelled.
    fn add(&self, elements: u64) -> Result<()> {
        self.loaded_elements.fetch_add(elements, Ordering::Relaxed);
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(ModelError::Cancelled);
        }
        Ok(())
    }

    /// Stops the load at its next tensor (it then fails with [`ModelError::Cancelled`]).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// One or more safetensors files, memory-mapped.
pub struct SafetensorsSource {
    shards: Vec<(PathBuf, MmapedSafetensors)>,
    routing: HashMap<String, usize>,
}

impl SafetensorsSource {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            if !path.exists() {
                return Err(ModelError::NotFound { path: path.clone() });
            }
            // Safety: read-only map; see `GgufFile::open`.
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
                ModelError::CorruptSafetensors {
                    path: path.clone(),
                    reason: root_cause(&e),
                }
            })?;
            for (name, _) in st.tensors() {
                routing.insert(name, index);
            }
            shards.push((path.clone(), st));
        }
        Ok(SafetensorsSource { shards, routing })
    }

    /// Shards listed by a `model.safetensors.index.json`.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(index_path).map_err(|e| ModelError::io(index_path, e))?;
        let index: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(index_path, format!("not valid JSON: {e}")))?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::config(index_path, "no \"weight_map\" object"))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        if files
            .iter()
            .any(|f| f.contains("..") || Path::new(f).is_absolute())
        {
            return Err(ModelError::config(
                index_path,
                "weight_map names a file outside the model directory",
            ));
        }
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        Self::open(&paths)
    }
}

impl SafetensorsSource {
    /// Stored dtypes, e.g. "BF16" or "F32, F16".
    pub fn dtype_summary(&self) -> String {
        let mut dtypes: Vec<String> = self
            .shards
            .iter()
            .flat_map(|(_, st)| {
                st.tensors()
                    .into_iter()
                    .map(|(_, view)| format!("{:?}", view.dtype()))
            })
            .collect();
        dtypes.sort();
        dtypes.dedup();
        dtypes.join(", ")
    }
}

fn root_cause(e: &candle_core::Error) -> String {
    // candle wraps the safetensors error with the path, which we print ourselves.
    match e {
        candle_core::Error::WithPath { inner, .. } => inner.to_string(),
        other => other.to_string(),
    }
}

impl TensorSource for SafetensorsSource {
    fn path(&self) -> &Path {
        self.shards
            .first()
            .map(|(p, _)| p.as_path())
            .unwrap_or(Path::new("?"))
    }

    fn contains(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }

    fn total_elements(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|(_, st)| st.tensors())
            .map(|(_, view)| view.shape().iter().product::<usize>() as u64)
            .sum()
    }

    fn load(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(&index) = self.routing.get(name) else {
            return Ok(None);
        };
        let (path, st) = &self.shards[index];
        let corrupt = |e: candle_core::Error| ModelError::CorruptSafetensors {
            path: path.clone(),
            reason: format!("tensor {name}: {}", root_cause(&e)),
        };
        let tensor = st.load(name, &Device::Cpu).map_err(corrupt)?;
        let tensor = match tensor.dtype() {
            DType::F32 => tensor,
            DType::F16 | DType::BF16 | DType::F64 => {
                tensor.to_dtype(DType::F32).map_err(corrupt)?
            }
            other => {
                return Err(ModelError::Unsupported {
                    path: path.clone(),
                    reason: format!("tensor {name} has dtype {other:?}; expected a float type"),
                });
            }
        };
        Ok(Some(tensor))
    }
}

/// A prefix into a tensor source, like candle's `VarBuilder`: `w.pp("model.layers.0").get(..)`.
#[derive(Clone)]
pub struct Weights {
    source: Arc<dyn TensorSource>,
    prefix: String,
    progress: Option<Arc<LoadProgress>>,
}

impl Weights {
    pub fn new(source: Arc<dyn TensorSource>) -> Self {
        Weights {
            source,
            prefix: String::new(),
            progress: None,
        }
    }

    /// Like `new`, counting every loaded tensor's elements into `progress`.
    pub fn with_progress(source: Arc<dyn TensorSource>, progress: Arc<LoadProgress>) -> Self {
        progress.start(source.total_elements());
        Weights {
            progress: Some(progress),
            ..Self::new(source)
        }
    }

    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Weights {
            source: self.source.clone(),
            prefix: self.full_name(&name.to_string()),
            progress: self.progress.clone(),
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn path(&self) -> PathBuf {
        self.source.path().to_path_buf()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.full_name(name))
    }

    /// The tensor `name` (under this prefix), which must exist and have `shape`.
    pub fn get(&self, name: &str, shape: impl Into<Shape>) -> Result<Tensor> {
        let full = self.full_name(name);
        self.get_opt(name, shape)?
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path(),
                name: full,
            })
    }

    /// The `[rows, cols]` matrix `name` (under this prefix), packed for the matmul kernel
    /// ([`TensorSource::load_packed`]).
    pub fn get_packed(&self, name: &str, (rows, cols): (usize, usize)) -> Result<PackedMatrix> {
        let full = self.full_name(name);
        let packed = self.source.load_packed(&full, rows, cols)?.ok_or_else(|| {
            ModelError::MissingTensor {
                path: self.path(),
                name: full,
            }
        })?;
        if let Some(progress) = &self.progress {
            progress.add((rows * cols) as u64)?;
        }
        Ok(packed)
    }

    /// Like `get`, but a missing tensor is `None` (optional biases, tied heads).
    pub fn get_opt(&self, name: &str, shape: impl Into<Shape>) -> Result<Option<Tensor>> {
        let full = self.full_name(name);
        let shape: Shape = shape.into();
        let Some(tensor) = self.source.load(&full)? else {
            return Ok(None);
        };
        if tensor.dims() != shape.dims() {
            return Err(ModelError::ShapeMismatch {
                path: self.path(),
                name: full,
                expected: shape.dims().to_vec(),
                found: tensor.dims().to_vec(),
            });
        }
        if let Some(progress) = &self.progress {
            progress.add(tensor.elem_count() as u64)?;
        }
        Ok(Some(tensor))
    }
}
