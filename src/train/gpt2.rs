//! A differentiable GPT-2 for training, with HF's tensor names and `Conv1D` layouts
//! (`[in, out]`), so `VarMap::save` writes a checkpoint HF transformers and Dendrite both load.

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;

use crate::rng::Rng;

pub use crate::model::arch::gpt2::Config;

pub struct Gpt2 {
    pub cfg: Config,
    pub varmap: VarMap,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: (Tensor, Tensor),
}

struct Block {
    ln_1: (Tensor, Tensor),
    c_attn: (Tensor, Tensor),
    c_proj: (Tensor, Tensor),
    ln_2: (Tensor, Tensor),
    c_fc: (Tensor, Tensor),
    mlp_proj: (Tensor, Tensor),
}

/// Registers a variable under `name` in the var map (so it is trained and saved).
fn var(varmap: &VarMap, name: &str, t: Tensor) -> Result<Tensor> {
    let v = Var::from_tensor(&t)?;
    let tensor = v.as_tensor().clone();
    varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("var map poisoned".into()))?
        .insert(name.to_string(), v);
    Ok(tensor)
}

fn normal(rng: &mut Rng, shape: &[usize], std: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

impl Gpt2 {
    /// GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2·layers).
    ///
    /// With `sinusoidal_positions`, position embeddings start as the Transformer paper's
    /// sinusoids at the same scale instead of noise.
    pub fn new(cfg: Config, seed: u64, sinusoidal_positions: bool) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let varmap = VarMap::new();
        let d = cfg.n_embd;
        let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu);
        let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu);
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        let wte = var(
            &varmap,
            "transformer.wte.weight",
            normal(&mut rng, &[cfg.vocab_size, d], 0.02)?,
        )?;
        let wpe = var(
            &varmap,
            "transformer.wpe.weight",
            if sinusoidal_positions {
                sinusoids(cfg.n_positions, d, 0.01)?
            } else {
                normal(&mut rng, &[cfg.n_positions, d], 0.01)?
            },
        )?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let p = |s: &str| format!("transformer.h.{l}.{s}");
            let pair = |rng: &mut Rng,
                        name: &str,
                        shape: [usize; 2],
                        std: f64|
             -> Result<(Tensor, Tensor)> {
                Ok((
                    var(
                        &varmap,
                        &p(&format!("{name}.weight")),
                        normal(rng, &shape, std)?,
                    )?,
                    var(&varmap, &p(&format!("{name}.bias")), zeros(shape[1])?)?,
                ))
            };
            let ln = |name: &str| -> Result<(Tensor, Tensor)> {
                Ok((
                    var(&varmap, &p(&format!("{name}.weight")), ones(d)?)?,
                    var(&varmap, &p(&format!("{name}.bias")), zeros(d)?)?,
                ))
            };
            blocks.push(Block {
                ln_1: ln("ln_1")?,
                c_attn: pair(&mut rng, "attn.c_attn", [d, 3 * d], 0.02)?,
                c_proj: pair(&mut rng, "attn.c_proj", [d, d], proj_std)?,
                ln_2: ln("ln_2")?,
                c_fc: pair(&mut rng, "mlp.c_fc", [d, cfg.d_mlp()], 0.02)?,
                mlp_proj: pair(&mut rng, "mlp.c_proj", [cfg.d_mlp(), d], proj_std)?,
            });
        }
        let ln_f = (
            var(&varmap, "transformer.ln_f.weight", ones(d)?)?,
            var(&varmap, "transformer.ln_f.bias", zeros(d)?)?,
        );
        Ok(Gpt2 {
            cfg,
            varmap,
            wte,
            wpe,
            blocks,
            ln_f,
        })
    }

    /// Logits `[b, t, vocab]` for token ids `[b, t]` (u32).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_with_patterns(ids, None)
    }

    /// [`Self::forward`], also pushing each layer's attention pattern `[b, heads, t, t]` to
    /// `patterns` (to watch induction heads form during training).
    pub fn forward_with_patterns(
        &self,
        ids: &Tensor,
        mut patterns: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.cfg.n_embd;
        let nh = self.cfg.n_head;
        let dh = d / nh;
        let tok = self
            .wte
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let pos = self.wpe.narrow(0, 0, t)?.unsqueeze(0)?;
        let mut x = tok.broadcast_add(&pos)?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu)?;
        let scale = (dh as f64).powf(-0.5);
        for block in &self.blocks {
            let h = layer_norm(&x, &block.ln_1, self.cfg.layer_norm_epsilon as f64)?;
            let qkv = conv1d(&h, &block.c_attn)?;
            let heads = |i: usize| -> Result<Tensor> {
                qkv.narrow(D::Minus1, i * d, d)?
                    .reshape((b, t, nh, dh))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let pattern = candle_nn::ops::softmax(&scores, D::Minus1)?;
            if let Some(p) = patterns.as_deref_mut() {
                p.push(pattern.detach());
            }
            let z = pattern.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
            x = (x + conv1d(&z, &block.c_proj)?)?;
            let h = layer_norm(&x, &block.ln_2, self.cfg.layer_norm_epsilon as f64)?;
            let h = conv1d(&h, &block.c_fc)?.relu()?;
            x = (x + conv1d(&h, &block.mlp_proj)?)?;
        }
        let x = layer_norm(&x, &self.ln_f, self.cfg.layer_norm_epsilon as f64)?;
        x.reshape((b * t, d))?
            .matmul(&self.wte.t()?)?
            .reshape((b, t, self.cfg.vocab_size))
    }
}

/// `[n, d]` sinusoidal position table (sin on even, cos on odd channels) with RMS `std`.
fn sinusoids(n: usize, d: usize, std: f64) -> Result<Tensor> {
    let data: Vec<f32> = (0..n)
        .flat_map(|pos| {
            (0..d).map(move |c| {
                let freq = 10_000f64.powf(-((c / 2 * 2) as f64) / d as f64);
                let angle = pos as f64 * freq;
                let v = if c % 2 == 0 { angle.sin() } else { angle.cos() };
                (v * std * std::f64::consts::SQRT_2) as f32
            })
        })
        .collect();
    Tensor::from_vec(data, (n, d), &Device::Cpu)
}

/// `x W + b` with `W: [in, out]`.
fn conv1d(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (in_dim, out_dim) = w.dims2()?;
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, in_dim))?.matmul(w)?.broadcast_add(b)?;
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = out_dim;
    }
    y.reshape(shape)
}

/// LayerNorm from differentiable ops (candle's fused kernel has no backward pass).
fn layer_norm(x: &Tensor, (w, b): &(Tensor, Tensor), eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Autograd gradients of the loss agree with central finite differences, for a weight in
    /// the attention and position paths. (Finite differences across a ReLU kink are unreliable,
    /// so MLP weights are left out.)
    #[test]
    fn gradients_match_finite_differences() -> anyhow::Result<()> {
        let cfg = Config::new(50, 8, 16, 2, 2, 32, "relu");
        let model = Gpt2::new(cfg, 3, false)?;
        let ids = Tensor::new(&[[1u32, 7, 3, 1, 7, 3, 9, 2]], &Device::Cpu)?;
        let targets = Tensor::new(&[7u32, 3, 1, 7, 3, 9, 2, 4], &Device::Cpu)?;
        let loss = |m: &Gpt2| -> anyhow::Result<f64> {
            let logits = m.forward(&ids)?.reshape((8, 50))?;
            let l = candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F64)?, &targets)?;
            Ok(l.to_scalar::<f64>()?)
        };
        let logits = model.forward(&ids)?.reshape((8, 50))?;
        let grads = candle_nn::loss::cross_entropy(&logits, &targets)?.backward()?;
        let vars = model
            .varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        for name in [
            "transformer.h.0.attn.c_attn.weight",
            "transformer.wpe.weight",
            "transformer.h.1.attn.c_attn.weight",
        ] {
            let var = &vars[name];
            let grad: Vec<f32> = grads
                .get(var.as_tensor())
                .ok_or_else(|| anyhow::anyhow!("no grad for {name}"))?
                .flatten_all()?
                .to_vec1()?;
            let original: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let shape = var.as_tensor().shape().clone();
            for &i in &[0usize, 5, 17, 40] {
                let eps = 2e-3f32;
                let mut plus = original.clone();
                plus[i] += eps;
                var.set(&Tensor::from_vec(plus, shape.clone(), &Device::Cpu)?)?;
                let lp = loss(&model)?;
                let mut minus = original.clone();
                minus[i] -= eps;
                var.set(&Tensor::from_vec(minus, shape.clone(), &Device::Cpu)?)?;
                let lm = loss(&model)?;
                var.set(&Tensor::from_vec(
                    original.clone(),
                    shape.clone(),
                    &Device::Cpu,
                )?)?;
                let numeric = (lp - lm) / (2.0 * eps as f64);
                let analytic = grad[i] as f64;
                assert!(
                    (numeric - analytic).abs() <= 2e-3 + 0.05 * numeric.abs(),
                    "{name}[{i}]: autograd {analytic:.6}, finite difference {numeric:.6}"
                );
            }
        }
        Ok(())
    }

    /// The training model and the inference engine compute the same function from the same
    /// checkpoint, through the ordinary HF-directory loader.
    #[test]
    fn saved_checkpoint_runs_identically_in_the_engine() -> anyhow::Result<()> {
        let cfg = Config::new(256, 16, 24, 2, 3, 48, "relu");
        let model = Gpt2::new(cfg.clone(), 7, true)?;
        let dir = tempfile::tempdir()?;
        model.varmap.save(dir.path().join("model.safetensors"))?;
        std::fs::write(dir.path().join("config.json"), cfg.hf_json(0).to_string())?;
        let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny/gpt2/tokenizer.json");
        std::fs::copy(tokenizer, dir.path().join("tokenizer.json"))?;

        let ids: Vec<u32> = vec![3, 14, 15, 92, 65, 35, 89, 79, 32, 38];
        let ours = model.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?)?;
        let engine = crate::model::open(dir.path())?;
        let out = engine.transformer.forward(
            &[ids],
            &crate::model::HookSpec::default(),
            &mut crate::model::NoObserver,
        )?;
        let diff = (ours - &out.logits)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "training and engine logits differ by {diff}");
        Ok(())
    }
}
