//! Activation patching (definitions §16, TransformerLens' `patching.py`): run one prompt with
//! one site's activation taken from another prompt's run, for every layer × position (or layer
//! × head), and read how much of the logit difference between an answer and a wrong token comes
//! back. Each patch reruns only from its layer and position on the cached base pass.

use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use crate::model::hooks::{RowEdit, RowEditFn};
use crate::model::transformer::{ResidCache, Unembed};
use crate::model::{HookSpec, Intervention, InterventionKind, ModelError, NoObserver, Transformer};

/// What is patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// `blocks.ℓ.hook_resid_pre` at one position: `[layer][position]`.
    ResidPre,
    /// `blocks.ℓ.hook_attn_out` at one position: `[layer][position]`.
    AttnOut,
    /// `blocks.ℓ.hook_mlp_out` at one position: `[layer][position]`.
    MlpOut,
    /// Head h's `blocks.ℓ.attn.hook_z` at every position: `[layer][head]`.
    Z,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::ResidPre, Site::AttnOut, Site::MlpOut, Site::Z];

    pub fn name(self) -> &'static str {
        match self {
            Site::ResidPre => "resid_pre",
            Site::AttnOut => "attn_out",
            Site::MlpOut => "mlp_out",
            Site::Z => "z",
        }
    }

    /// The hook patched at `layer`.
    pub fn hook(self, layer: usize) -> String {
        match self {
            Site::ResidPre => format!("blocks.{layer}.hook_resid_pre"),
            Site::AttnOut => format!("blocks.{layer}.hook_attn_out"),
            Site::MlpOut => format!("blocks.{layer}.hook_mlp_out"),
            Site::Z => format!("blocks.{layer}.attn.hook_z"),
        }
    }
}

impl std::str::FromStr for Site {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Site::ALL
            .into_iter()
            .find(|site| site.name() == s)
            .ok_or_else(|| format!("unknown site {s:?} (resid_pre, attn_out, mlp_out, z)"))
    }
}

/// Which run receives the patch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Clean activations into the corrupted run: do they suffice to restore the behaviour?
    #[default]
    Denoise,
    /// Corrupted activations into the clean run: are they necessary for it?
    Noise,
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "denoise" => Ok(Direction::Denoise),
            "noise" => Ok(Direction::Noise),
            _ => Err(format!("unknown direction {s:?} (denoise, noise)")),
        }
    }
}

/// A patching experiment: two prompts of equal length and the two tokens whose logit
/// difference at the last position is the metric.
#[derive(Clone, Debug)]
pub struct PatchRequest {
    pub clean: Vec<u32>,
    pub corrupt: Vec<u32>,
    pub answer: u32,
    pub wrong: u32,
    pub site: Site,
    pub direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PatchResult {
    pub site: Site,
    pub direction: Direction,
    /// Logit difference (answer − wrong) at the last position of the clean run.
    pub metric_clean: f64,
    /// The same on the corrupted run.
    pub metric_corrupt: f64,
    /// `(LD_patched − LD_corrupt) / (LD_clean − LD_corrupt)`: `[layer][position]`, or
    /// `[layer][head]` for [`Site::Z`].
    pub values: Vec<Vec<f64>>,
}

/// The normalised metric of definitions §16: clean = 1, corrupted = 0.
pub fn normalised(ld: f64, clean: f64, corrupt: f64) -> f64 {
    // `+ 0.0` turns the −0 of an unchanged cell (0 / a negative span) into 0.
    (ld - corrupt) / (clean - corrupt) + 0.0
}

/// The patch of one cell: `site` of `layer` takes `source` (that hook's `[positions, width]`
/// values on the source run) at position `cell`, or head `cell`'s slice at every position for
/// [`Site::Z`] (heads `d_head` wide).
pub fn intervention(
    site: Site,
    layer: usize,
    cell: usize,
    source: Arc<[f32]>,
    d_head: usize,
) -> Intervention {
    let (positions, edit): (Option<Vec<usize>>, Arc<RowEditFn>) = match site {
        // One position's whole vector (the rows given are that position's).
        Site::ResidPre | Site::AttnOut | Site::MlpOut => (
            Some(vec![cell]),
            Arc::new(move |rows: &mut [f32], width: usize| {
                let from = source
                    .get(cell * width..(cell + 1) * width)
                    .ok_or("the source prompt has no such position")?;
                rows.copy_from_slice(from);
                Ok(())
            }),
        ),
        // One head's slice at every position.
        Site::Z => (
            None,
            Arc::new(move |rows: &mut [f32], width: usize| {
                if rows.len() != source.len() {
                    return Err("the source prompt has another number of tokens".into());
                }
                let span = cell * d_head..(cell + 1) * d_head;
                if span.end > width {
                    return Err(format!("no head {cell} in rows of width {width}"));
                }
                for (row, from) in rows.chunks_exact_mut(width).zip(source.chunks_exact(width)) {
                    row[span.clone()].copy_from_slice(&from[span.clone()]);
                }
                Ok(())
            }),
        ),
    };
    Intervention {
        hook: site.hook(layer),
        positions,
        kind: InterventionKind::Rows(RowEdit {
            key: format!("patch {} {layer} {cell}", site.name()),
            edit,
        }),
    }
}

/// Runs every patch of `request`. `progress(done, total)` is called as patches finish, and
/// returning `false` from it stops the sweep (a cancelled sweep is [`ModelError::Cancelled`]).
pub fn patch(
    model: &Transformer,
    request: &PatchRequest,
    progress: &(dyn Fn(usize, usize) -> bool + Sync),
) -> Result<PatchResult, ModelError> {
    let (clean, corrupt) = (&request.clean, &request.corrupt);
    if clean.len() != corrupt.len() {
        return Err(ModelError::InvalidInput(format!(
            "the clean and corrupted prompts must have the same number of tokens (patching \
             indexes both at the same positions): {} and {}",
            clean.len(),
            corrupt.len()
        )));
    }
    if clean.is_empty() {
        return Err(ModelError::InvalidInput("the prompts are empty".into()));
    }
    if request.answer == request.wrong {
        return Err(ModelError::InvalidInput(
            "the answer and the wrong token are the same token".into(),
        ));
    }
    let n_layers = model.n_layers();
    let hooks: Vec<String> = (0..n_layers).map(|l| request.site.hook(l)).collect();
    if let Some(missing) = hooks.iter().find(|h| model.hook_width(h).is_none()) {
        return Err(ModelError::InvalidInput(format!(
            "this model has no {missing} to patch"
        )));
    }
    // The run that gives the patched values, and the run that receives them.
    let (source, base) = match request.direction {
        Direction::Denoise => (clean, corrupt),
        Direction::Noise => (corrupt, clean),
    };
    // Both runs' metrics are read as every patched one is (two logits of the final-norm
    // output), so a patch that changes nothing scores exactly 0 or 1.
    let mut source_spec = HookSpec::capture(hooks.iter().cloned());
    source_spec.capture.push("ln_final.hook_normalized".into());
    let source_out = model.forward(std::slice::from_ref(source), &source_spec, &mut NoObserver)?;
    let (answer, wrong) = (request.answer, request.wrong);
    let ld = |normed: &[f32]| -> Result<f64, ModelError> {
        let logits = model.logits_of(normed, &[answer, wrong])?;
        Ok(logits[0] as f64 - logits[1] as f64)
    };
    let source_normed = source_out
        .captures
        .get("ln_final.hook_normalized")
        .ok_or_else(|| ModelError::InvalidInput("the final norm was not captured".into()))?
        .get(0)?
        .get(clean.len() - 1)?
        .to_vec1::<f32>()?;
    let source_ld = ld(&source_normed)?;
    let mut base_cache: Option<ResidCache> = None;
    let mut base_normed = None;
    model.forward_cached_with(
        std::slice::from_ref(base),
        &HookSpec::default(),
        &mut base_cache,
        &mut NoObserver,
        &mut Unembed::LastNormalized(&mut base_normed),
    )?;
    let base_ld = ld(base_normed.as_deref().ok_or_else(|| {
        ModelError::InvalidInput("the base pass gave no final-norm output".into())
    })?)?;
    let (metric_clean, metric_corrupt) = match request.direction {
        Direction::Denoise => (source_ld, base_ld),
        Direction::Noise => (base_ld, source_ld),
    };
    if metric_clean == metric_corrupt {
        return Err(ModelError::InvalidInput(format!(
            "the logit difference is {metric_clean} on both prompts: nothing to restore \
             (choose an answer and a wrong token the prompts disagree on)"
        )));
    }
    let base_cache = base_cache.ok_or_else(|| {
        ModelError::InvalidInput("the base pass kept no cache to rerun from".into())
    })?;

    // Each layer's source values, row-major `[positions, width]`.
    let mut source_rows = Vec::with_capacity(n_layers);
    for hook in &hooks {
        let t = source_out
            .captures
            .get(hook)
            .ok_or_else(|| ModelError::InvalidInput(format!("{hook} was not captured")))?
            .get(0)?
            .flatten_all()?;
        source_rows.push(Arc::<[f32]>::from(t.to_vec1::<f32>()?));
    }
    let t = clean.len();
    let dims = &model.dims;
    let (cells_per_layer, d_head) = match request.site {
        Site::Z => (dims.n_heads, dims.d_head),
        _ => (t, 0),
    };
    let cells: Vec<(usize, usize)> = (0..n_layers)
        .flat_map(|l| (0..cells_per_layer).map(move |c| (l, c)))
        .collect();
    let total = cells.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let site = request.site;
    let run_cell = |&(layer, cell): &(usize, usize)| -> Result<f64, ModelError> {
        let spec = HookSpec::default().with_intervention(intervention(
            site,
            layer,
            cell,
            source_rows[layer].clone(),
            d_head,
        ));
        let mut cache = Some(base_cache.clone());
        // Two logits of the last position are all the metric reads: no unembedding.
        let mut last_normed = None;
        model.forward_cached_with(
            std::slice::from_ref(base),
            &spec,
            &mut cache,
            &mut NoObserver,
            &mut Unembed::LastNormalized(&mut last_normed),
        )?;
        let last = last_normed.as_deref().map(ld).transpose()?;
        let finished = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if !progress(finished, total) {
            return Err(ModelError::Cancelled);
        }
        // A patch that changes nothing reruns nothing: the base pass's difference stands.
        Ok(normalised(
            last.unwrap_or(base_ld),
            metric_clean,
            metric_corrupt,
        ))
    };
    // Small passes use the cores better side by side than each split over both.
    let flat: Vec<f64> = cells
        .par_iter()
        .with_min_len(1)
        .map(run_cell)
        .collect::<Result<_, _>>()?;
    Ok(PatchResult {
        site,
        direction: request.direction,
        metric_clean,
        metric_corrupt,
        values: flat
            .chunks(cells_per_layer.max(1))
            .map(<[f64]>::to_vec)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worked_example_normalises_both_directions() {
        // Definitions §16: LD_clean = 3, LD_corrupt = −1.
        assert_eq!(normalised(2.0, 3.0, -1.0), 0.75);
        assert!((normalised(0.2, 3.0, -1.0) - 0.30).abs() < 1e-12);
        assert_eq!(normalised(3.0, 3.0, -1.0), 1.0);
        assert_eq!(normalised(-1.0, 3.0, -1.0), 0.0);
    }

    #[test]
    fn sites_and_directions_parse_by_name() {
        for site in Site::ALL {
            assert_eq!(site.name().parse::<Site>(), Ok(site));
        }
        assert!("resid_post".parse::<Site>().is_err());
        assert_eq!("noise".parse::<Direction>(), Ok(Direction::Noise));
        assert!("both".parse::<Direction>().is_err());
    }
}
