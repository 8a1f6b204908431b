//! The runs of the prompt as the views see them: the current run's baseline and intervened
//! passes filling in layer by layer as the worker streams them, the logit lens, and each
//! layer's histogram bins. Late events of older runs are ignored.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::analysis::histogram::{Bins, Histogram};
use crate::worker::{Event, LayerSummary, RunFinished, RunId, SaeId, TokenPrediction, Variant};

use super::Show;
use super::saes::SaeEntry;
use crate::sae::apply::SaeSummary;

/// One pass as the views see it: its tokens and whatever layers have arrived.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassView {
    pub run_id: RunId,
    pub tokens: Vec<String>,
    pub token_ids: Vec<u32>,
    /// One slot per layer; `None` until the layer streams in.
    pub layers: Vec<Option<Arc<LayerSummary>>>,
    pub finished: Option<RunFinished>,
    pub lens: Option<Vec<Vec<Vec<TokenPrediction>>>>,
    /// Each attached SAE's view of this pass, as it streams in.
    pub saes: BTreeMap<SaeId, Arc<SaeSummary>>,
}

impl PassView {
    /// Whether the logit lens has a row for every layer (it streams in layer by layer).
    pub fn lens_complete(&self) -> bool {
        self.lens
            .as_ref()
            .is_some_and(|l| !self.layers.is_empty() && l.len() == self.layers.len())
    }

    pub fn layers_done(&self) -> usize {
        self.layers.iter().filter(|l| l.is_some()).count()
    }

    pub fn layer(&self, l: usize) -> Option<&LayerSummary> {
        self.layers.get(l)?.as_deref()
    }

    pub fn sae(&self, id: SaeId) -> Option<&SaeSummary> {
        self.saes.get(&id).map(|s| s.as_ref())
    }
}

/// Histogram bins per layer, fixed by the first baseline that reached the layer so that later
/// passes (and the intervened pass) bin identically and overlay bar for bar.
pub const HISTOGRAM_BINS: usize = 60;

/// The current run and what has arrived of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Runs {
    /// The run whose events the views show (older runs' late events are ignored).
    pub current: Option<RunId>,
    pub baseline: PassView,
    pub intervened: Option<PassView>,
    /// Each layer's bins (see [`HISTOGRAM_BINS`]).
    pub histogram_bins: Vec<Option<Bins>>,
    /// The run whose logit lens has been asked for (with the run or afterwards).
    pub(super) lens_requested: Option<RunId>,
    /// Whether the current run captures attention patterns.
    pub(super) patterns_requested: bool,
}

impl Runs {
    /// A new model: no pass of the old one stays.
    pub fn model_changed(&mut self, n_layers: usize) {
        *self = Runs {
            histogram_bins: vec![None; n_layers],
            ..Runs::default()
        };
    }

    /// Makes `run_id` current; it computes the lens and captures patterns as asked.
    pub fn start(&mut self, run_id: RunId, lens: bool, patterns: bool) {
        self.current = Some(run_id);
        self.patterns_requested = patterns;
        if lens {
            self.lens_requested = Some(run_id);
        }
    }

    /// The run whose complete baseline can stand for a new run with the same tokens.
    pub fn complete_baseline(&self) -> Option<RunId> {
        let b = &self.baseline;
        (b.finished.is_some() && b.layers_done() == b.layers.len()).then_some(b.run_id)
    }

    /// Whether every pass of the current run has arrived in full (with every attached SAE's
    /// feature map; an intervened pass only when edits are active).
    pub fn is_complete(&self, saes: &[SaeEntry], edits_active: bool) -> bool {
        let Some(run) = self.current else {
            return false;
        };
        let done = |p: &PassView| {
            p.run_id == run
                && p.finished.is_some()
                && p.layers_done() == p.layers.len()
                && saes.iter().all(|s| p.saes.contains_key(&s.id))
        };
        done(&self.baseline)
            && match &self.intervened {
                Some(p) => done(p),
                None => !edits_active,
            }
    }

    /// The pass a view should draw (`Show::Difference` draws the intervened pass; views that
    /// can show a difference ask for both).
    pub fn shown(&self, show: Show) -> &PassView {
        match (&self.intervened, show) {
            (Some(p), Show::Intervened | Show::Difference) => p,
            _ => &self.baseline,
        }
    }

    /// Whether the lens of the current run must be asked for now that its view is open (runs
    /// compute the lens only while its tab is open); if so, it counts as asked.
    pub fn lens_needed(&mut self, edits_active: bool) -> Option<RunId> {
        let run_id = self.current?;
        if self.lens_requested == Some(run_id) {
            return None;
        }
        let has_lens = |p: &PassView| p.run_id == run_id && p.lens.is_some();
        let needed = !has_lens(&self.baseline)
            || (edits_active && !self.intervened.as_ref().is_some_and(has_lens));
        needed.then(|| {
            self.lens_requested = Some(run_id);
            run_id
        })
    }

    /// Whether the current run captures attention patterns.
    pub fn captures_patterns(&self) -> bool {
        self.patterns_requested
    }

    /// Histogram of layer `l`'s MLP activations in `pass`, on the layer's fixed bins.
    pub fn histogram(&self, pass: &PassView, l: usize) -> Option<Histogram> {
        let bins = (*self.histogram_bins.get(l)?)?;
        Some(Histogram::new(bins, &pass.layer(l)?.mlp_post))
    }

    fn pass_mut(&mut self, variant: Variant, run_id: RunId) -> Option<&mut PassView> {
        if self.current != Some(run_id) {
            return None;
        }
        match variant {
            Variant::Baseline => Some(&mut self.baseline),
            Variant::Intervened => self.intervened.as_mut(),
        }
    }

    /// A run failed: it is over, no progress bar waits for it.
    pub fn failed(&mut self, run_id: RunId) {
        if self.current == Some(run_id) {
            self.current = None;
        }
    }

    /// An SAE was detached: its feature maps go.
    pub fn forget_sae(&mut self, sae_id: SaeId) {
        self.baseline.saes.remove(&sae_id);
        if let Some(p) = &mut self.intervened {
            p.saes.remove(&sae_id);
        }
    }

    /// Applies the events of runs (others are left alone). `edits_active`: whether the current
    /// interventions change anything (else the intervened pass is dropped).
    pub fn apply(&mut self, event: Event, edits_active: bool) {
        match event {
            Event::RunStarted(s) => {
                if self.current != Some(s.run_id) {
                    return;
                }
                let view = PassView {
                    run_id: s.run_id,
                    tokens: s.tokens,
                    token_ids: s.token_ids,
                    layers: vec![None; s.n_layers],
                    finished: None,
                    lens: None,
                    saes: BTreeMap::new(),
                };
                match s.variant {
                    Variant::Baseline => {
                        self.baseline = view;
                        if !edits_active {
                            self.intervened = None;
                        }
                    }
                    Variant::Intervened => self.intervened = Some(view),
                }
            }
            Event::LayerReady(l) => {
                let layer = l.summary.layer;
                if l.variant == Variant::Baseline
                    && self.current == Some(l.run_id)
                    && self.histogram_bins.get(layer).is_some_and(Option::is_none)
                {
                    self.histogram_bins[layer] =
                        Some(Bins::covering(&l.summary.mlp_post, HISTOGRAM_BINS));
                }
                if let Some(pass) = self.pass_mut(l.variant, l.run_id)
                    && let Some(slot) = pass.layers.get_mut(layer)
                {
                    *slot = Some(l.summary);
                }
            }
            Event::LayersFromBaseline(r) => {
                let through = r.through.min(self.baseline.layers.len());
                let copied = self.baseline.layers[..through].to_vec();
                if let Some(pass) = self.pass_mut(Variant::Intervened, r.run_id) {
                    for (slot, layer) in pass.layers.iter_mut().zip(copied) {
                        *slot = layer;
                    }
                }
            }
            Event::SaeReady(r) => {
                if let Some(pass) = self.pass_mut(r.variant, r.run_id) {
                    pass.saes.insert(r.sae_id, r.summary);
                }
            }
            Event::BaselineReused(r) => {
                if self.current != Some(r.run_id) || self.baseline.run_id != r.from_run {
                    return;
                }
                self.baseline.run_id = r.run_id;
                if let Some(f) = &mut self.baseline.finished {
                    f.run_id = r.run_id;
                }
                if !edits_active {
                    self.intervened = None;
                }
            }
            Event::RunFinished(f) => {
                if let Some(pass) = self.pass_mut(f.variant, f.run_id) {
                    pass.finished = Some(f);
                }
            }
            Event::LensRows(r) => {
                if let Some(pass) = self.pass_mut(r.variant, r.run_id) {
                    let lens = pass.lens.get_or_insert_with(Vec::new);
                    // Rows come in order; anything else belongs to a lens already replaced.
                    if r.first_layer == lens.len() {
                        lens.extend(r.rows);
                    }
                }
            }
            Event::LensReady(l) => {
                if let Some(pass) = self.pass_mut(l.variant, l.run_id) {
                    pass.lens = Some(l.lens);
                }
            }
            _ => {}
        }
    }
}
