//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The real models fetched by `scripts/fetch_models.sh` (CI always fetches them).
pub fn real_model(file: &str) -> PathBuf {
    let dir = std::env::var_os("DENDRITE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models"));
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch_models.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A committed HF reference in `tests/fixtures/real/{name}.json`.
pub fn real_reference(name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(fixtures().join("real").join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn load_reference(path: &PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("reference file is committed")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx
}

/// The neuron-clamp case a reference JSON describes (`{"hook", "neuron", "value"}`).
pub fn clamp_spec(clamp: &serde_json::Value) -> dendrite::model::HookSpec {
    use dendrite::model::{HookSpec, Intervention, ValueOp};
    HookSpec::default().with_intervention(Intervention::neurons(
        clamp["hook"].as_str().unwrap(),
        vec![clamp["neuron"].as_u64().unwrap() as usize],
        ValueOp::Set(clamp["value"].as_f64().unwrap() as f32),
    ))
}

/// A few-second TopK training run at `blocks.0.hook_resid_post` of a small model, on the
/// committed held-out Shakespeare text, saved to `out`.
pub fn tiny_sae_training(out: PathBuf, steps: usize) -> dendrite::sae::train::TrainOptions {
    dendrite::sae::train::TrainOptions {
        hook: "blocks.0.hook_resid_post".into(),
        corpus: fixtures().join("text/cymbeline_heldout.txt"),
        out,
        k: 4,
        width: 64,
        steps,
        batch: 64,
        context: Some(32),
        eval_tokens: 128,
        ..Default::default()
    }
}

/// A running `dendrite serve` on a free port (stopped when dropped) and its API base URL.
pub struct Server {
    child: std::process::Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dendrite serve MODEL --port 0 EXTRA…` and waits for the address it prints.
pub fn serve(model: &std::path::Path, extra: &[&str]) -> Server {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dendrite"))
        .arg("serve")
        .arg(model)
        .args(["--port", "0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("starting dendrite serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("dendrite serve printed its address");
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, base }
}
