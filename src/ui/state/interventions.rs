//! The interventions panel: what the user set up ([`EditSpec`]), in order, each on or off,
//! with undo and redo of the whole list, and the interventions of a restored session's SAEs
//! that could not be attached, kept aside until the SAE is located.

use crate::model::{AblationMode, Intervention, PatternMode, ValueOp};
use crate::worker::{Edit, SaeId, SteerMode};

/// An intervention as the user set it up in the interventions panel: what it edits and the
/// value its slider holds (a session file stores these). [`InterventionItem::edit`] gives the
/// worker's [`Edit`], which the engine runs as [`crate::model::Intervention`]s.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EditSpec {
    /// Set (or scale) one MLP neuron at every position.
    Neuron {
        layer: usize,
        neuron: usize,
        value: f32,
        scale: bool,
    },
    HeadAblation {
        layer: usize,
        head: usize,
        mean: bool,
    },
    /// Resample ablation: the head's output replaced by its output on another prompt.
    ResampleHead {
        layer: usize,
        head: usize,
        source: String,
    },
    /// Previous-token (`induction = false`) or induction pattern clamp with strength s.
    PatternClamp {
        layer: usize,
        head: usize,
        induction: bool,
        strength: f32,
    },
    /// A neuron's output direction added to the residual stream.
    Steer {
        layer: usize,
        neuron: usize,
        scale: f32,
    },
    /// Set (or scale) one SAE latent, keeping the SAE's error, at `positions` (all: `None`).
    Latent {
        sae_id: SaeId,
        latent: usize,
        value: f32,
        scale: bool,
        positions: Option<Vec<usize>>,
    },
    /// The block weights of `scope` pruned to `sparsity` by `method` (the intervened pass runs
    /// on a pruned copy; the slider sets the sparsity).
    Prune {
        method: crate::model::prune::PruneMethod,
        scope: crate::model::prune::PruneScope,
        sparsity: f32,
    },
    /// Every MLP's activations cut by a sparsity method (calibrated on the prompt); the
    /// slider sets its parameter.
    Sparsify {
        method: crate::analysis::sparsify::SparsifyMethod,
    },
    /// Activation patching's cell: `site` of `layer` takes its value from a run of `source`
    /// at position `cell` (head `cell` at every position for `z`).
    Patch {
        site: crate::analysis::patching::Site,
        layer: usize,
        cell: usize,
        source: String,
    },
    /// Steer along an SAE latent's decoder direction at `positions` (all: `None`).
    SteerLatent {
        sae_id: SaeId,
        latent: usize,
        mode: SteerMode,
        positions: Option<Vec<usize>>,
    },
}

/// Token positions typed by the user: empty or "all" = every position (`None`); otherwise a
/// list of positions and ranges, "3, 5-7". Positions must be below `n_tokens`.
pub fn parse_positions(text: &str, n_tokens: usize) -> Result<Option<Vec<usize>>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| -> Result<usize, String> {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("\"{s}\" is not a position"))
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if a > b {
            return Err(format!("{part}: the range runs backwards"));
        }
        if b >= n_tokens {
            return Err(format!(
                "position {b} is past the prompt's {n_tokens} tokens"
            ));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(Some(out))
}

/// A source prompt in a label: its first 24 characters.
fn short(text: &str) -> String {
    let mut s: String = text.chars().take(24).collect();
    if text.chars().count() > 24 {
        s.push('…');
    }
    s
}

/// " @ 3,5,6" for an intervention restricted to positions.
fn at_positions(positions: &Option<Vec<usize>>) -> String {
    match positions {
        Some(p) => format!(
            " @ {}",
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => String::new(),
    }
}

impl EditSpec {
    /// The value a slider edits, and the same kind with another value.
    pub fn value(&self) -> Option<f32> {
        match *self {
            EditSpec::Neuron { value, .. } | EditSpec::Latent { value, .. } => Some(value),
            EditSpec::PatternClamp { strength, .. } => Some(strength),
            EditSpec::Steer { scale, .. } => Some(scale),
            // N:M removes 1 − N/M whatever the slider says: no slider.
            EditSpec::Prune {
                method: crate::model::prune::PruneMethod::NM { .. },
                ..
            } => None,
            EditSpec::Prune { sparsity, .. } => Some(sparsity),
            EditSpec::Sparsify { method } => Some(method.value() as f32),
            EditSpec::SteerLatent { mode, .. } => Some(match mode {
                SteerMode::Add { scale } => scale,
                SteerMode::SetProjection { value } => value,
                SteerMode::CapProjection { max } => max,
            }),
            EditSpec::HeadAblation { .. }
            | EditSpec::ResampleHead { .. }
            | EditSpec::Patch { .. } => None,
        }
    }

    /// Points an SAE intervention at another SAE id (others are left as they are).
    pub fn set_sae_id(&mut self, id: SaeId) {
        match self {
            EditSpec::Latent { sae_id, .. } | EditSpec::SteerLatent { sae_id, .. } => *sae_id = id,
            EditSpec::Neuron { .. }
            | EditSpec::HeadAblation { .. }
            | EditSpec::ResampleHead { .. }
            | EditSpec::PatternClamp { .. }
            | EditSpec::Patch { .. }
            | EditSpec::Prune { .. }
            | EditSpec::Sparsify { .. }
            | EditSpec::Steer { .. } => {}
        }
    }

    pub fn with_value(&self, v: f32) -> Self {
        let mut k = self.clone();
        match &mut k {
            EditSpec::Neuron { value, .. } | EditSpec::Latent { value, .. } => *value = v,
            EditSpec::PatternClamp { strength, .. } => *strength = v,
            EditSpec::Steer { scale, .. } => *scale = v,
            EditSpec::Prune { sparsity, .. } => *sparsity = v.clamp(0.0, 1.0),
            EditSpec::Sparsify { method } => *method = method.with_value(v.max(0.0) as f64),
            EditSpec::SteerLatent { mode, .. } => {
                *mode = match *mode {
                    SteerMode::Add { .. } => SteerMode::Add { scale: v },
                    SteerMode::SetProjection { .. } => SteerMode::SetProjection { value: v },
                    SteerMode::CapProjection { .. } => SteerMode::CapProjection { max: v },
                }
            }
            EditSpec::HeadAblation { .. }
            | EditSpec::ResampleHead { .. }
            | EditSpec::Patch { .. } => {}
        }
        k
    }
}

/// One line of the panel.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InterventionItem {
    pub enabled: bool,
    #[serde(rename = "kind")]
    pub spec: EditSpec,
}

impl InterventionItem {
    pub fn label(&self) -> String {
        match &self.spec {
            EditSpec::Neuron {
                layer,
                neuron,
                value,
                scale,
            } => {
                if *scale {
                    format!("L{layer} N{neuron} × {value:.2}")
                } else {
                    format!("L{layer} N{neuron} = {value:.2}")
                }
            }
            EditSpec::HeadAblation { layer, head, mean } => {
                format!(
                    "L{layer} H{head} {}-ablated",
                    if *mean { "mean" } else { "zero" }
                )
            }
            EditSpec::ResampleHead {
                layer,
                head,
                source,
            } => {
                format!("L{layer} H{head} resampled from \"{}\"", short(source))
            }
            EditSpec::Prune {
                method: method @ crate::model::prune::PruneMethod::NM { n, m },
                scope,
                ..
            } => format!(
                "prune {method} ({:.0}%) of {scope:?} weights",
                100.0 * (1.0 - *n as f64 / *m as f64)
            ),
            EditSpec::Prune {
                method,
                scope,
                sparsity,
            } => format!(
                "prune {method} {:.0}% of {scope:?} weights",
                100.0 * sparsity
            ),
            EditSpec::Sparsify { method } => format!("sparsify every MLP by {method}"),
            EditSpec::Patch {
                site,
                layer,
                cell,
                source,
            } => {
                let at = match site {
                    crate::analysis::patching::Site::Z => format!("H{cell}"),
                    _ => format!("@{cell}"),
                };
                format!(
                    "patch L{layer} {} {at} from \"{}\"",
                    site.name(),
                    short(source)
                )
            }
            EditSpec::PatternClamp {
                layer,
                head,
                induction,
                strength,
            } => format!(
                "L{layer} H{head} {} pattern s = {strength:.2}",
                if *induction {
                    "induction"
                } else {
                    "previous-token"
                }
            ),
            EditSpec::Steer {
                layer,
                neuron,
                scale,
            } => format!("steer L{layer} N{neuron} direction × {scale:.1}"),
            EditSpec::Latent {
                sae_id,
                latent,
                value,
                scale,
                positions,
            } => {
                let op = if *scale { "×" } else { "=" };
                format!(
                    "SAE#{sae_id} F{latent} {op} {value:.2}{}",
                    at_positions(positions)
                )
            }
            EditSpec::SteerLatent {
                sae_id,
                latent,
                mode,
                positions,
            } => {
                let what = match mode {
                    SteerMode::Add { scale } => format!("+ {scale:.1}·d"),
                    SteerMode::SetProjection { value } => format!("projection = {value:.1}"),
                    SteerMode::CapProjection { max } => format!("projection ≤ {max:.1}"),
                };
                format!(
                    "steer SAE#{sae_id} F{latent} {what}{}",
                    at_positions(positions)
                )
            }
        }
    }

    /// What the worker runs for this item.
    pub fn edit(&self) -> Edit {
        match self.spec.clone() {
            EditSpec::Neuron {
                layer,
                neuron,
                value,
                scale,
            } => Edit::Hook(Intervention::neurons(
                format!("blocks.{layer}.mlp.hook_post"),
                vec![neuron],
                if scale {
                    ValueOp::Scale(value)
                } else {
                    ValueOp::Set(value)
                },
            )),
            EditSpec::HeadAblation { layer, head, mean } => Edit::Hook(Intervention::ablate_head(
                layer,
                head,
                if mean {
                    AblationMode::Mean
                } else {
                    AblationMode::Zero
                },
            )),
            EditSpec::ResampleHead {
                layer,
                head,
                source,
            } => Edit::ResampleHead {
                layer,
                head,
                source,
            },
            EditSpec::PatternClamp {
                layer,
                head,
                induction,
                strength,
            } => Edit::Hook(Intervention::pattern(
                layer,
                head,
                if induction {
                    PatternMode::Induction { strength }
                } else {
                    PatternMode::PreviousToken { strength }
                },
            )),
            EditSpec::Steer {
                layer,
                neuron,
                scale,
            } => Edit::SteerNeuron {
                layer,
                neuron,
                scale,
            },
            EditSpec::Latent {
                sae_id,
                latent,
                value,
                scale,
                positions,
            } => Edit::SaeLatent {
                sae_id,
                latent,
                op: if scale {
                    ValueOp::Scale(value)
                } else {
                    ValueOp::Set(value)
                },
                positions,
            },
            EditSpec::Prune {
                method,
                scope,
                sparsity,
            } => Edit::Prune {
                method,
                scope,
                sparsity,
            },
            EditSpec::Sparsify { method } => Edit::Sparsify { method },
            EditSpec::Patch {
                site,
                layer,
                cell,
                source,
            } => Edit::Patch {
                site,
                layer,
                cell,
                source,
            },
            EditSpec::SteerLatent {
                sae_id,
                latent,
                mode,
                positions,
            } => Edit::SteerLatent {
                sae_id,
                latent,
                mode,
                positions,
            },
        }
    }

    /// The SAE this item needs, if any.
    pub fn sae_id(&self) -> Option<SaeId> {
        match self.spec {
            EditSpec::Latent { sae_id, .. } | EditSpec::SteerLatent { sae_id, .. } => Some(sae_id),
            _ => None,
        }
    }
}

/// Takes the list from the top of `from`, keeping the current one on `to` (undo: from the undo
/// stack to the redo stack; redo the other way). Whether there was a step.
fn step_back(
    items: &mut Vec<InterventionItem>,
    from: &mut Vec<Vec<InterventionItem>>,
    to: &mut Vec<Vec<InterventionItem>>,
) -> bool {
    let Some(other) = from.pop() else {
        return false;
    };
    to.push(std::mem::replace(items, other));
    true
}

/// Interventions of a saved SAE that is not attached (its file is missing, changed shape, or
/// failed to load): kept aside, shown with a way to locate the SAE, never dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct SetAside {
    pub sae: super::session::SavedSae,
    /// Why it is not attached.
    pub reason: String,
    /// The interventions as saved (their `sae_id` is the saved one).
    pub interventions: Vec<InterventionItem>,
}

/// The list the panel shows and its history. Every method that changes the list returns
/// whether it did (the app state then reruns the prompt).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interventions {
    /// In the order they apply.
    pub items: Vec<InterventionItem>,
    /// Interventions of a restored session's SAEs that are not attached, until located.
    pub set_aside: Vec<SetAside>,
    /// The set-aside entry whose SAE the user is locating (its attach is on its way).
    pub locating: Option<usize>,
    undo: Vec<Vec<InterventionItem>>,
    redo: Vec<Vec<InterventionItem>>,
    /// The intervention whose slider is being dragged (its undo step is taken).
    dragging: Option<usize>,
}

impl Interventions {
    /// The worker's edits of the enabled items, in order.
    pub fn active_edits(&self) -> Vec<Edit> {
        self.items
            .iter()
            .filter(|i| i.enabled)
            .map(InterventionItem::edit)
            .collect()
    }

    /// Whether Undo / Redo have a step to take.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    fn checkpoint(&mut self) {
        self.undo.push(self.items.clone());
        self.redo.clear();
    }

    pub fn add(&mut self, spec: EditSpec) -> bool {
        self.checkpoint();
        self.items.push(InterventionItem {
            enabled: true,
            spec,
        });
        true
    }

    /// Replaces item `i`'s spec (a value typed, a slider stepped by key): one undo step.
    pub fn edit(&mut self, i: usize, spec: EditSpec) -> bool {
        match self.items.get(i) {
            Some(item) if item.spec != spec => {
                self.checkpoint();
                self.items[i].spec = spec;
                true
            }
            _ => false,
        }
    }

    /// Replaces item `i`'s spec while its slider is dragged: the whole drag is one undo step,
    /// taken when it starts ([`Interventions::end_drag`] ends it).
    pub fn drag(&mut self, i: usize, spec: EditSpec) -> bool {
        match self.items.get(i) {
            Some(item) if item.spec != spec => {
                if self.dragging != Some(i) {
                    self.checkpoint();
                    self.dragging = Some(i);
                }
                self.items[i].spec = spec;
                true
            }
            _ => false,
        }
    }

    pub fn end_drag(&mut self) {
        self.dragging = None;
    }

    pub fn toggle(&mut self, i: usize) -> bool {
        if i >= self.items.len() {
            return false;
        }
        self.checkpoint();
        self.items[i].enabled = !self.items[i].enabled;
        true
    }

    pub fn remove(&mut self, i: usize) -> bool {
        if i >= self.items.len() {
            return false;
        }
        self.checkpoint();
        self.items.remove(i);
        true
    }

    pub fn undo(&mut self) -> bool {
        self.dragging = None;
        step_back(&mut self.items, &mut self.undo, &mut self.redo)
    }

    pub fn redo(&mut self) -> bool {
        self.dragging = None;
        step_back(&mut self.items, &mut self.redo, &mut self.undo)
    }

    /// Removes `sae_id`'s interventions from the list and from every undo and redo step
    /// (steps that then change nothing are dropped): an undo must not bring back a clamp of
    /// an SAE that is gone.
    pub fn forget_sae(&mut self, sae_id: SaeId) {
        self.items.retain(|i| i.sae_id() != Some(sae_id));
        self.dragging = None;
        for stack in [&mut self.undo, &mut self.redo] {
            for step in stack.iter_mut() {
                step.retain(|i| i.sae_id() != Some(sae_id));
            }
            stack.dedup();
        }
        let current = &self.items;
        while self.undo.last() == Some(current) {
            self.undo.pop();
        }
        while self.redo.last() == Some(current) {
            self.redo.pop();
        }
    }

    /// A new model: nothing of the old one's interventions stays.
    pub fn clear(&mut self) {
        *self = Interventions::default();
    }

    /// Takes a restored session's list (no history: it starts here).
    pub fn adopt(&mut self, items: Vec<InterventionItem>, set_aside: Vec<SetAside>) {
        *self = Interventions {
            items,
            set_aside,
            ..Interventions::default()
        };
    }

    /// Brings back the interventions set aside for entry `index` once its SAE is attached as
    /// `sae_id` (one undo step). Returns whether there were any.
    pub fn restore_set_aside(&mut self, index: usize, sae_id: SaeId) -> bool {
        if index >= self.set_aside.len() {
            return false;
        }
        let aside = self.set_aside.remove(index);
        self.checkpoint();
        for mut item in aside.interventions {
            item.spec.set_sae_id(sae_id);
            self.items.push(item);
        }
        true
    }
}
