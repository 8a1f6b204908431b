//! One file per view. Each is `fn x_ui(ui, &AppState) -> Option<Action>`: it draws from the
//! state and reports what the user did; the app applies the action.

pub mod features;
pub mod generate;
pub mod heads;
pub mod histograms;
pub mod inspector;
pub mod interventions;
pub mod layers;
pub mod lens;
pub mod neurons;
pub mod patching;
pub mod prompt;
pub mod sae_jobs;
pub mod search;
pub mod session;
pub mod sweeps;
pub mod top_bar;
pub mod unit_panel;

/// Bars of `counts` over the bins between consecutive `edges` (empty bins left out).
pub fn bin_bars(edges: &[f64], counts: &[u64]) -> Vec<egui_plot::Bar> {
    counts
        .iter()
        .zip(edges.windows(2))
        .filter(|(c, _)| **c > 0)
        .map(|(&c, e)| egui_plot::Bar::new((e[0] + e[1]) / 2.0, c as f64).width(e[1] - e[0]))
        .collect()
}

/// Text colour readable on a chip filled with `fill`.
pub fn text_colour_on(fill: egui::Color32) -> egui::Color32 {
    let luminance =
        (0.299 * fill.r() as f32 + 0.587 * fill.g() as f32 + 0.114 * fill.b() as f32) / 255.0;
    if luminance < 0.5 {
        egui::Color32::WHITE
    } else {
        egui::Color32::BLACK
    }
}

/// Token text with visible whitespace (`·` for a space, `\n` for a newline, `\t` for a tab).
pub fn visible(token: &str) -> String {
    token
        .replace(' ', "·")
        .replace('\n', "\\n")
        .replace('\t', "\\t")
}

#[cfg(test)]
mod tests {
    #[test]
    fn whitespace_is_visible() {
        assert_eq!(super::visible(" a\nb\t"), "·a\\nb\\t");
    }
}
