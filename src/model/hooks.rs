//! Hook points (TransformerLens names), captures and interventions.
//!
//! Every activation the forward pass computes goes through [`HookState::site`] under its TL name
//! (`blocks.3.mlp.hook_post`, `blocks.0.attn.hook_pattern`, ...). There it is recorded when a
//! capture pattern matches and edited when an intervention names it.
//!
//! Shapes at the sites (batch `b`, positions `t`):
//! - residual-width and MLP sites: `[b, t, d]`
//! - `attn.hook_q/k/v/z`: `[b, t, heads, d_head]` (k and v have the KV-head count)
//! - `attn.hook_attn_scores`, `attn.hook_pattern`: `[b, heads, query, key]`
//!
//! `ln*.hook_normalized` is the full output of the norm (weights applied), i.e. TL's value with
//! `fold_ln`: exactly what the next module consumes.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

/// What to record and what to change in one forward pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HookSpec {
    /// Exact hook names or globs (`blocks.*.mlp.hook_post`).
    pub capture: Vec<String>,
    pub interventions: Vec<Intervention>,
}

impl HookSpec {
    pub fn capture(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        HookSpec {
            capture: patterns.into_iter().map(Into::into).collect(),
            interventions: Vec::new(),
        }
    }

    pub fn with_intervention(mut self, intervention: Intervention) -> Self {
        self.interventions.push(intervention);
        self
    }
}

/// One edit of one hook point, optionally restricted to some sequence positions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intervention {
    pub hook: String,
    /// Sequence positions to edit; `None` = every position. Applies to every batch row.
    #[serde(default)]
    pub positions: Option<Vec<usize>>,
    pub kind: InterventionKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionKind {
    /// Set, scale or shift the given neurons (flat index into one position's activation; for
    /// `[t, heads, d_head]` sites that is `head * d_head + k`). Empty `indices` = all of them.
    Neurons { indices: Vec<usize>, op: ValueOp },
    /// Add `scale * vector` (a steering vector; length = the site's width).
    AddVector { vector: Arc<[f32]>, scale: f32 },
    /// Edit each position's component along `direction` (normalised to unit length here).
    Project {
        direction: Arc<[f32]>,
        mode: ProjectionMode,
    },
    /// An edit computed by code the caller supplies (e.g. an SAE latent clamp: encode, set,
    /// decode, add back the error). Not serialisable.
    #[serde(skip)]
    Rows(RowEdit),
    /// Ablate one head's output on `attn.hook_z`.
    HeadAblation { head: usize, mode: AblationMode },
    /// Override one head's attention pattern on `attn.hook_pattern`.
    Pattern { head: usize, mode: PatternMode },
}

/// What [`InterventionKind::Project`] does with the component `p = x·d̂` along a unit
/// direction `d̂`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionMode {
    /// Orthogonal decomposition: keep `x − p d̂`, set the component to `value`:
    /// `x' = x + (value − p) d̂`.
    Set { value: f32 },
    /// Projection cap: `x' = x + (min(p, max) − p) d̂` (components above `max` are cut to it).
    Cap { max: f32 },
}

/// Rows of one hook edited by caller-supplied code: gets the selected positions' rows
/// (`[n, width]` row-major) and edits them in place. Two edits are the same edit when their
/// keys are equal (the incremental rerun compares interventions), so the key must name
/// everything the function depends on.
#[derive(Clone)]
pub struct RowEdit {
    pub key: String,
    pub edit: Arc<RowEditFn>,
}

/// Edits `[n, width]` rows in place (given the width); an error is a message.
pub type RowEditFn = dyn Fn(&mut [f32], usize) -> std::result::Result<(), String> + Send + Sync;

impl PartialEq for RowEdit {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl std::fmt::Debug for RowEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RowEdit({})", self.key)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueOp {
    Set(f32),
    Scale(f32),
    Add(f32),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AblationMode {
    Zero,
    /// Replace by the head's mean over this prompt's (selected) positions.
    Mean,
    /// Replace by the head's `z` from another prompt's run: `values` is `[positions, d_head]`.
    Resample {
        values: Arc<[f32]>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternMode {
    /// Singh et al.'s previous-token clamp: `strength` on `i−1`, `1−strength` on `i`
    /// (position 0 keeps all its attention on itself).
    PreviousToken { strength: f32 },
    /// Induction clamp: `strength` spread evenly over the induction targets of query `i`
    /// (keys `j` with `tok[j−1] = tok[i]`, `j ≤ i`), `1−strength` kept on the head's own pattern.
    /// Queries without an earlier occurrence of their token are left unchanged.
    Induction { strength: f32 },
    /// Remove attention to these key positions and renormalise (= −∞ scores before softmax).
    KnockOut { sources: Vec<usize> },
}

impl Intervention {
    pub fn neurons(hook: impl Into<String>, indices: Vec<usize>, op: ValueOp) -> Self {
        Intervention {
            hook: hook.into(),
            positions: None,
            kind: InterventionKind::Neurons { indices, op },
        }
    }

    pub fn ablate_head(layer: usize, head: usize, mode: AblationMode) -> Self {
        Intervention {
            hook: format!("blocks.{layer}.attn.hook_z"),
            positions: None,
            kind: InterventionKind::HeadAblation { head, mode },
        }
    }

    pub fn pattern(layer: usize, head: usize, mode: PatternMode) -> Self {
        Intervention {
            hook: format!("blocks.{layer}.attn.hook_pattern"),
            positions: None,
            kind: InterventionKind::Pattern { head, mode },
        }
    }

    pub fn steer(hook: impl Into<String>, vector: Arc<[f32]>, scale: f32) -> Self {
        Intervention {
            hook: hook.into(),
            positions: None,
            kind: InterventionKind::AddVector { vector, scale },
        }
    }

    pub fn at_positions(mut self, positions: Vec<usize>) -> Self {
        self.positions = Some(positions);
        self
    }
}

/// The stage a hook belongs to: `-1` for embeddings, `l` for `blocks.l.*`, `n_layers` for
/// `ln_final.*`. Changing an intervention at stage `s` invalidates stages `≥ s` only.
pub fn hook_stage(name: &str, n_layers: usize) -> Option<isize> {
    if let Some(rest) = name.strip_prefix("blocks.") {
        let (layer, _) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        return (layer < n_layers).then_some(layer as isize);
    }
    if name.starts_with("ln_final.") {
        return Some(n_layers as isize);
    }
    if name == "hook_embed" || name == "hook_pos_embed" {
        return Some(-1);
    }
    None
}

pub fn glob_matches(pattern: &str, name: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(name)
}

/// Which hook names a list of capture patterns selects: names without wildcards by lookup,
/// globs compiled once. (A pass asks at every site, and the worker names each layer's hooks
/// one by one: compiling or scanning every pattern per question showed up in profiles.)
pub(crate) struct CaptureMatcher<'a> {
    names: std::collections::HashSet<&'a str>,
    globs: Vec<wildmatch::WildMatch>,
}

/// Whether a capture pattern has wildcards (else it is one hook's name).
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Whether capture `pattern` names at least one of `names` (`known`: the same names, as a set).
pub(crate) fn matches_any(
    pattern: &str,
    known: &std::collections::HashSet<&str>,
    names: &[String],
) -> bool {
    if is_glob(pattern) {
        let glob = wildmatch::WildMatch::new(pattern);
        names.iter().any(|n| glob.matches(n))
    } else {
        known.contains(pattern)
    }
}

impl<'a> CaptureMatcher<'a> {
    pub(crate) fn new(patterns: &'a [String]) -> Self {
        CaptureMatcher {
            names: patterns
                .iter()
                .map(String::as_str)
                .filter(|p| !is_glob(p))
                .collect(),
            globs: patterns
                .iter()
                .filter(|p| is_glob(p))
                .map(|p| wildmatch::WildMatch::new(p))
                .collect(),
        }
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        self.names.contains(name) || self.globs.iter().any(|g| g.matches(name))
    }
}

/// Captured activations by hook name.
pub type Captures = BTreeMap<String, Tensor>;

/// Per-pass hook state: which names to record, the interventions by hook, and the tokens
/// (pattern clamps need them).
pub(crate) struct HookState<'a> {
    capture: CaptureMatcher<'a>,
    interventions: BTreeMap<&'a str, Vec<&'a Intervention>>,
    /// Every position's token, the cached ones of a step included.
    tokens: &'a [Vec<u32>],
    /// The positions this pass computes: `first..first + t` (0 in a full pass; a step over a
    /// KV cache starts after the cached positions).
    window: Window,
    pub captures: Captures,
}

/// Where a pass's rows sit in the sequence, and how positions outside them are treated.
#[derive(Clone, Copy, Debug)]
struct Window {
    first: usize,
    /// A step of generation: an intervention's positions outside this pass's rows belong to
    /// other steps (checked once, when generation starts), not errors.
    step: bool,
}

impl Window {
    /// A full pass: every position, from 0.
    const FULL: Window = Window {
        first: 0,
        step: false,
    };
}

impl<'a> HookState<'a> {
    /// A full pass over `tokens`.
    pub fn new(spec: &'a HookSpec, tokens: &'a [Vec<u32>]) -> Self {
        Self::with_window(spec, tokens, Window::FULL)
    }

    /// A step that computes positions `first..` of `tokens` (earlier ones are cached).
    pub fn step(spec: &'a HookSpec, tokens: &'a [Vec<u32>], first: usize) -> Self {
        Self::with_window(spec, tokens, Window { first, step: true })
    }

    fn with_window(spec: &'a HookSpec, tokens: &'a [Vec<u32>], window: Window) -> Self {
        let mut interventions: BTreeMap<&str, Vec<&Intervention>> = BTreeMap::new();
        for i in &spec.interventions {
            interventions.entry(i.hook.as_str()).or_default().push(i);
        }
        HookState {
            capture: CaptureMatcher::new(&spec.capture),
            interventions,
            tokens,
            window,
            captures: Captures::new(),
        }
    }

    pub fn wants(&self, name: &str) -> bool {
        self.interventions.contains_key(name) || self.captured(name)
    }

    /// Whether an intervention edits the activation at `name`.
    pub fn edits(&self, name: &str) -> bool {
        self.interventions.contains_key(name)
    }

    fn captured(&self, name: &str) -> bool {
        self.capture.matches(name)
    }

    /// Pass an activation through the hook point `name`: apply its interventions, then record
    /// it if captured (so captures show what the model actually used).
    pub fn site(&mut self, name: &str, mut x: Tensor) -> Result<Tensor> {
        if let Some(list) = self.interventions.get(name) {
            for intervention in list {
                x = apply(intervention, &x, self.tokens, self.window)?;
            }
        }
        if self.captured(name) {
            self.captures.insert(name.to_string(), x.clone());
        }
        Ok(x)
    }
}

fn invalid(intervention: &Intervention, reason: impl std::fmt::Display) -> ModelError {
    ModelError::InvalidInput(format!("intervention on {}: {reason}", intervention.hook))
}

/// Apply one intervention to the activation at its site. Edits are done on a host copy: the
/// copy is one activation tensor, small next to the layer's matmuls, and keeps every edit an
/// obvious loop.
fn apply(
    intervention: &Intervention,
    x: &Tensor,
    tokens: &[Vec<u32>],
    window: Window,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let mut data: Vec<f32> = x.flatten_all()?.to_vec1()?;
    match &intervention.kind {
        InterventionKind::Pattern { head, mode } => {
            let [b, h, q, k] = dims[..] else {
                return Err(invalid(
                    intervention,
                    "pattern clamps apply to attn.hook_pattern",
                ));
            };
            if *head >= h {
                return Err(invalid(
                    intervention,
                    format!("head {head} out of range (model has {h})"),
                ));
            }
            for batch in 0..b {
                let toks = tokens.get(batch).map(Vec::as_slice).unwrap_or(&[]);
                for i in select_positions(intervention, q, window)? {
                    let row = &mut data[((batch * h + head) * q + i - window.first) * k..][..k];
                    clamp_pattern_row(row, i, mode, toks);
                }
            }
        }
        _ => {
            if dims.len() < 3 {
                return Err(invalid(
                    intervention,
                    format!("unexpected activation shape {dims:?}"),
                ));
            }
            let (b, t) = (dims[0], dims[1]);
            let width: usize = dims[2..].iter().product();
            let positions = select_positions(intervention, t, window)?;
            if window.step
                && matches!(
                    intervention.kind,
                    InterventionKind::HeadAblation {
                        mode: AblationMode::Mean,
                        ..
                    }
                )
            {
                return Err(invalid(
                    intervention,
                    "mean ablation averages over the whole sequence, which a generation step \
                     does not see (use zero or resample ablation)",
                ));
            }
            let rows = Rows {
                b,
                t,
                first: window.first,
                width,
            };
            edit_rows(intervention, &mut data, rows, &dims, &positions)?;
        }
    }
    Ok(Tensor::from_vec(data, dims, x.device())?)
}

/// The positions (in the whole sequence) an intervention edits among a pass's `t` rows.
fn select_positions(intervention: &Intervention, t: usize, window: Window) -> Result<Vec<usize>> {
    let rows = window.first..window.first + t;
    match &intervention.positions {
        None => Ok(rows.collect()),
        Some(p) if window.step => Ok(p.iter().copied().filter(|p| rows.contains(p)).collect()),
        Some(p) => {
            if let Some(bad) = p.iter().find(|&&p| p >= t) {
                return Err(invalid(
                    intervention,
                    format!("position {bad} out of range (prompt has {t} tokens)"),
                ));
            }
            Ok(p.clone())
        }
    }
}

/// The layout of a site's activation: `b × t` rows of `width` for positions `first..first + t`.
#[derive(Clone, Copy)]
struct Rows {
    b: usize,
    t: usize,
    first: usize,
    width: usize,
}

/// Edits the rows at `positions` (in the whole sequence, all inside `rows`).
fn edit_rows(
    intervention: &Intervention,
    data: &mut [f32],
    rows: Rows,
    dims: &[usize],
    positions: &[usize],
) -> Result<()> {
    let Rows { b, t, first, width } = rows;
    let row = |batch: usize, pos: usize| (batch * t + pos - first) * width;
    match &intervention.kind {
        InterventionKind::Neurons { indices, op } => {
            if let Some(bad) = indices.iter().find(|&&i| i >= width) {
                return Err(invalid(
                    intervention,
                    format!("neuron {bad} out of range (width {width})"),
                ));
            }
            for batch in 0..b {
                for &pos in positions {
                    let start = row(batch, pos);
                    let slice = &mut data[start..start + width];
                    let mut edit = |v: &mut f32| {
                        *v = match op {
                            ValueOp::Set(x) => *x,
                            ValueOp::Scale(x) => *v * x,
                            ValueOp::Add(x) => *v + x,
                        }
                    };
                    if indices.is_empty() {
                        slice.iter_mut().for_each(&mut edit);
                    } else {
                        indices.iter().for_each(|&i| edit(&mut slice[i]));
                    }
                }
            }
        }
        InterventionKind::AddVector { vector, scale } => {
            if vector.len() != width {
                return Err(invalid(
                    intervention,
                    format!("vector has length {}, site width is {width}", vector.len()),
                ));
            }
            for batch in 0..b {
                for &pos in positions {
                    let start = row(batch, pos);
                    for (v, s) in data[start..start + width].iter_mut().zip(vector.iter()) {
                        *v += scale * s;
                    }
                }
            }
        }
        InterventionKind::Project { direction, mode } => {
            if direction.len() != width {
                return Err(invalid(
                    intervention,
                    format!(
                        "direction has length {}, site width is {width}",
                        direction.len()
                    ),
                ));
            }
            let norm = direction
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            if norm == 0.0 {
                return Err(invalid(intervention, "the direction is the zero vector"));
            }
            let unit: Vec<f64> = direction.iter().map(|v| *v as f64 / norm).collect();
            for batch in 0..b {
                for &pos in positions {
                    let start = row(batch, pos);
                    let x = &mut data[start..start + width];
                    let p: f64 = x.iter().zip(&unit).map(|(x, u)| *x as f64 * u).sum();
                    let target = match mode {
                        ProjectionMode::Set { value } => *value as f64,
                        ProjectionMode::Cap { max } => p.min(*max as f64),
                    };
                    for (x, u) in x.iter_mut().zip(&unit) {
                        *x = (*x as f64 + (target - p) * u) as f32;
                    }
                }
            }
        }
        InterventionKind::Rows(edit) => {
            for batch in 0..b {
                let mut rows: Vec<f32> = positions
                    .iter()
                    .flat_map(|&pos| data[row(batch, pos)..row(batch, pos) + width].to_vec())
                    .collect();
                (edit.edit)(&mut rows, width).map_err(|e| invalid(intervention, e))?;
                for (i, &pos) in positions.iter().enumerate() {
                    data[row(batch, pos)..row(batch, pos) + width]
                        .copy_from_slice(&rows[i * width..(i + 1) * width]);
                }
            }
        }
        InterventionKind::HeadAblation { head, mode } => {
            let [_, _, heads, d_head] = dims[..] else {
                return Err(invalid(
                    intervention,
                    "head ablation applies to attn.hook_z",
                ));
            };
            if *head >= heads {
                return Err(invalid(
                    intervention,
                    format!("head {head} out of range (model has {heads})"),
                ));
            }
            let offset = head * d_head;
            for batch in 0..b {
                let replacement: Vec<f32> = match mode {
                    AblationMode::Zero => vec![0.0; d_head],
                    AblationMode::Mean => {
                        let mut mean = vec![0f64; d_head];
                        for &pos in positions {
                            let start = row(batch, pos) + offset;
                            for (m, v) in mean.iter_mut().zip(&data[start..start + d_head]) {
                                *m += *v as f64;
                            }
                        }
                        let n = positions.len().max(1) as f64;
                        mean.iter().map(|m| (m / n) as f32).collect()
                    }
                    AblationMode::Resample { values } => {
                        let available = values.len() / d_head.max(1);
                        if let Some(&bad) = positions.iter().find(|&&p| p >= available) {
                            return Err(invalid(
                                intervention,
                                format!(
                                    "resample source has {available} positions, position {bad} requested"
                                ),
                            ));
                        }
                        Vec::new()
                    }
                };
                for &pos in positions {
                    let start = row(batch, pos) + offset;
                    let target = &mut data[start..start + d_head];
                    match mode {
                        AblationMode::Resample { values } => {
                            target.copy_from_slice(&values[pos * d_head..(pos + 1) * d_head])
                        }
                        _ => target.copy_from_slice(&replacement),
                    }
                }
            }
        }
        InterventionKind::Pattern { .. } => unreachable!("handled by the caller"),
    }
    Ok(())
}

fn clamp_pattern_row(row: &mut [f32], i: usize, mode: &PatternMode, tokens: &[u32]) {
    match mode {
        PatternMode::PreviousToken { strength } => {
            row.fill(0.0);
            if i == 0 {
                row[0] = 1.0;
            } else {
                row[i - 1] = *strength;
                row[i] += 1.0 - strength;
            }
        }
        PatternMode::Induction { strength } => {
            let Some(&current) = tokens.get(i) else {
                return;
            };
            let targets: Vec<usize> = (1..=i)
                .filter(|&j| tokens[j - 1] == current && j - 1 != i)
                .collect();
            if targets.is_empty() {
                return;
            }
            let share = strength / targets.len() as f32;
            for v in row.iter_mut() {
                *v *= 1.0 - strength;
            }
            for j in targets {
                row[j] += share;
            }
        }
        PatternMode::KnockOut { sources } => {
            for &s in sources {
                if s < row.len() {
                    row[s] = 0.0;
                }
            }
            let total: f32 = row.iter().sum();
            if total > 0.0 {
                row.iter_mut().for_each(|v| *v /= total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stages() {
        assert_eq!(hook_stage("blocks.3.mlp.hook_post", 4), Some(3));
        assert_eq!(hook_stage("blocks.4.mlp.hook_post", 4), None);
        assert_eq!(hook_stage("ln_final.hook_normalized", 4), Some(4));
        assert_eq!(hook_stage("hook_embed", 4), Some(-1));
        assert_eq!(hook_stage("nonsense", 4), None);
    }

    #[test]
    fn previous_token_clamp_puts_strength_on_previous() {
        let mut row = vec![0.25; 4];
        clamp_pattern_row(
            &mut row,
            2,
            &PatternMode::PreviousToken { strength: 0.8 },
            &[],
        );
        let expect = [0.0, 0.8, 0.2, 0.0];
        for (a, b) in row.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{row:?}");
        }
    }

    #[test]
    fn induction_clamp_targets_token_after_earlier_copy() {
        // [BOS, a, b, c, a, b, c]: query 4 ('a') → key 2 (after the earlier 'a').
        let toks = [0, 1, 2, 3, 1, 2, 3];
        let mut row = vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        clamp_pattern_row(
            &mut row,
            4,
            &PatternMode::Induction { strength: 1.0 },
            &toks,
        );
        assert_eq!(row, vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn knockout_renormalises() {
        let mut row = vec![0.5, 0.25, 0.25];
        clamp_pattern_row(
            &mut row,
            2,
            &PatternMode::KnockOut { sources: vec![0] },
            &[],
        );
        assert_eq!(row, vec![0.0, 0.5, 0.5]);
    }

    #[test]
    fn neuron_set_touches_only_selected_positions() -> Result<()> {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((1, 3, 4))?;
        let i = Intervention::neurons("blocks.0.mlp.hook_post", vec![1], ValueOp::Set(-5.0))
            .at_positions(vec![2]);
        let y: Vec<f32> = apply(&i, &x, &[], Window::FULL)?.flatten_all()?.to_vec1()?;
        assert_eq!(y, vec![0., 1., 2., 3., 4., 5., 6., 7., 8., -5., 10., 11.]);
        Ok(())
    }

    #[test]
    fn mean_ablation_uses_this_prompts_mean() -> Result<()> {
        // [b=1, t=2, heads=2, d_head=1]
        let x = Tensor::new(&[[[[1f32], [10.]], [[3.], [20.]]]], &Device::Cpu)?;
        let i = Intervention::ablate_head(0, 0, AblationMode::Mean);
        let y: Vec<f32> = apply(&i, &x, &[], Window::FULL)?.flatten_all()?.to_vec1()?;
        assert_eq!(y, vec![2., 10., 2., 20.]);
        Ok(())
    }

    #[test]
    fn scale_add_and_steer_edit_the_right_entries() -> Result<()> {
        let x = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((1, 2, 3))?;
        let scale = Intervention::neurons("h", vec![0, 2], ValueOp::Scale(10.0));
        let y: Vec<f32> = apply(&scale, &x, &[], Window::FULL)?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(y, vec![0., 1., 20., 30., 4., 50.]);
        let add = Intervention::neurons("h", vec![], ValueOp::Add(1.0)).at_positions(vec![0]);
        let y: Vec<f32> = apply(&add, &x, &[], Window::FULL)?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(y, vec![1., 2., 3., 3., 4., 5.]);
        let steer =
            Intervention::steer("h", vec![1.0, 0.0, -1.0].into(), 2.0).at_positions(vec![1]);
        let y: Vec<f32> = apply(&steer, &x, &[], Window::FULL)?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(y, vec![0., 1., 2., 5., 4., 3.]);
        let wrong = Intervention::steer("h", vec![1.0].into(), 1.0);
        assert!(apply(&wrong, &x, &[], Window::FULL).is_err());
        Ok(())
    }

    #[test]
    fn resample_copies_the_other_runs_head() -> Result<()> {
        // [b=1, t=2, heads=2, d_head=2]; head 1 takes the source's values.
        let x = Tensor::arange(0f32, 8.0, &Device::Cpu)?.reshape((1, 2, 2, 2))?;
        let source: Arc<[f32]> = vec![-1.0, -2.0, -3.0, -4.0].into();
        let i = Intervention::ablate_head(
            0,
            1,
            AblationMode::Resample {
                values: source.clone(),
            },
        );
        let y: Vec<f32> = apply(&i, &x, &[], Window::FULL)?.flatten_all()?.to_vec1()?;
        assert_eq!(y, vec![0., 1., -1., -2., 4., 5., -3., -4.]);
        let short = Intervention::ablate_head(
            0,
            1,
            AblationMode::Resample {
                values: source[..2].into(),
            },
        );
        assert!(
            apply(&short, &x, &[], Window::FULL).is_err(),
            "a source shorter than the prompt is an error"
        );
        Ok(())
    }

    #[test]
    fn bad_neuron_index_is_an_error() {
        let x = Tensor::zeros((1, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let i = Intervention::neurons("h", vec![7], ValueOp::Set(1.0));
        assert!(matches!(
            apply(&i, &x, &[], Window::FULL),
            Err(ModelError::InvalidInput(_))
        ));
    }

    #[test]
    fn projection_set_and_cap_move_only_the_component_along_the_direction() {
        use candle_core::{Device, Tensor};
        // One position, x = (3, 4), direction (2, 0) → unit (1, 0), component p = 3.
        let x = Tensor::from_vec(vec![3f32, 4.0], (1, 1, 2), &Device::Cpu).unwrap();
        let run = |mode: ProjectionMode| -> Vec<f32> {
            let i = Intervention {
                hook: "blocks.0.hook_resid_post".into(),
                positions: None,
                kind: InterventionKind::Project {
                    direction: vec![2.0f32, 0.0].into(),
                    mode,
                },
            };
            apply(&i, &x, &[vec![0]], Window::FULL)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(run(ProjectionMode::Set { value: -1.0 }), vec![-1.0, 4.0]);
        assert_eq!(run(ProjectionMode::Cap { max: 2.0 }), vec![2.0, 4.0]);
        // Below the cap nothing changes.
        assert_eq!(run(ProjectionMode::Cap { max: 5.0 }), vec![3.0, 4.0]);
    }

    #[test]
    fn row_edits_see_only_the_selected_positions() {
        use candle_core::{Device, Tensor};
        let x =
            Tensor::from_vec(vec![1f32, 2.0, 3.0, 4.0, 5.0, 6.0], (1, 3, 2), &Device::Cpu).unwrap();
        let edit = RowEdit {
            key: "double".into(),
            edit: Arc::new(|rows: &mut [f32], width: usize| {
                assert_eq!((rows.len(), width), (4, 2));
                rows.iter_mut().for_each(|v| *v *= 2.0);
                Ok(())
            }),
        };
        let i = Intervention {
            hook: "blocks.0.hook_resid_post".into(),
            positions: Some(vec![0, 2]),
            kind: InterventionKind::Rows(edit),
        };
        let out: Vec<f32> = apply(&i, &x, &[vec![0, 0, 0]], Window::FULL)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(out, vec![2.0, 4.0, 3.0, 4.0, 10.0, 12.0]);
    }
}
