//! How the window looks at the work: the open tab, which pass views draw, what colours the
//! tokens, the selection, and the views that export.

use crate::worker::SaeId;

/// The main view's tabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tab {
    Neurons,
    Heads,
    Histograms,
    Lens,
    /// The selected SAE's feature map.
    Features,
    /// Baseline and intervened continuations side by side.
    Generate,
    /// Activation patching between the prompt and a corrupted one.
    Patching,
    /// Loss against sparsity: weight pruning and activation sparsification sweeps.
    Sweeps,
}

/// What colours the Generate tab's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerateColour {
    Probability,
    /// The unit watched while generating (the selected neuron or latent).
    WatchedUnit,
}

/// Which pass a view draws when interventions are active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Show {
    Baseline,
    Intervened,
    /// Intervened minus baseline.
    Difference,
}

/// What colours the token strip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenColour {
    Loss,
    SelectedNeuron,
    /// The selected SAE latent's activation.
    SelectedLatent,
    Sparsity,
}

/// The selected layer and units (an SAE latent by its SAE).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    pub layer: usize,
    pub neuron: Option<usize>,
    pub head: Option<usize>,
    /// An SAE latent: `(sae, latent)`.
    pub latent: Option<(SaeId, usize)>,
}

/// A view that can be exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Layers,
    Tab(Tab),
    /// The inspected unit's corpus panel (its examples as CSV).
    Unit,
}

impl View {
    /// Its part of an export's file name.
    pub fn slug(self) -> &'static str {
        match self {
            View::Layers => "layers",
            View::Unit => "unit-examples",
            View::Tab(Tab::Neurons) => "neurons",
            View::Tab(Tab::Heads) => "heads",
            View::Tab(Tab::Histograms) => "histogram",
            View::Tab(Tab::Lens) => "logit-lens",
            View::Tab(Tab::Features) => "sae-features",
            View::Tab(Tab::Generate) => "generation",
            View::Tab(Tab::Patching) => "patching",
            View::Tab(Tab::Sweeps) => "sweeps",
        }
    }
}

/// Which figure files an export writes beside its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FigureFormat {
    /// A bitmap at 2× (slides, chat).
    Png,
    /// Vector: text as text, any size (papers).
    Svg,
    #[default]
    Both,
}

impl FigureFormat {
    pub const ALL: [FigureFormat; 3] = [FigureFormat::Both, FigureFormat::Png, FigureFormat::Svg];

    pub fn label(self) -> &'static str {
        match self {
            FigureFormat::Png => "PNG",
            FigureFormat::Svg => "SVG",
            FigureFormat::Both => "PNG + SVG",
        }
    }

    pub fn png(self) -> bool {
        self != FigureFormat::Svg
    }

    pub fn svg(self) -> bool {
        self != FigureFormat::Png
    }
}
