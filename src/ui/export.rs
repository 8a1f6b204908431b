//! Exporting a view: its data as CSV and a PNG of what it shows, drawn again offscreen at
//! 2 pixels per point (not a screenshot scaled up), with descriptive default names.

use std::path::{Path, PathBuf};

use super::state::{AppState, Tab, View};
use crate::export::csv::Table;

/// `smollm2-135m_L15_neurons_2026-11-28T1702` (no extension).
pub fn default_name(state: &AppState, view: View, now: std::time::SystemTime) -> String {
    let model = state
        .model
        .as_ref()
        .map(|m| {
            m.name
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
        })
        .unwrap_or_else(|| "no-model".into());
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{model}_L{}_{}_{}",
        state.selection.layer,
        view.slug(),
        timestamp(secs)
    )
}

/// `YYYY-MM-DDTHHMM` (UTC) from Unix seconds.
fn timestamp(secs: u64) -> String {
    let (y, mo, d, h, m, _) = crate::export::utc_parts(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}{m:02}")
}

/// Layer `l`'s `mlp.hook_post` as the views show it: `(tokens, d_mlp, values)` of the shown
/// pass, or intervened − baseline in the difference mode.
pub fn shown_activations(state: &AppState, l: usize) -> Option<(usize, usize, Vec<f32>)> {
    let layer = state.shown().layer(l)?;
    let values = match (&state.runs.intervened, state.show) {
        (Some(after), super::state::Show::Difference) => {
            let before = state.runs.baseline.layer(l)?;
            let after = after.layer(l)?;
            if before.mlp_post.len() != after.mlp_post.len() {
                return None;
            }
            after
                .mlp_post
                .iter()
                .zip(before.mlp_post.iter())
                .map(|(a, b)| a - b)
                .collect()
        }
        _ => layer.mlp_post.to_vec(),
    };
    Some((layer.n_tokens, layer.d_mlp, values))
}

/// The activations behind a view as arrays: the selected layer's `[tokens, d_mlp]` (`.npy`)
/// and every layer's `mlp.hook_post`, with the attention patterns when they were captured
/// (`.safetensors`, named by hook). As shown: the difference mode gives the differences.
pub fn activations(state: &AppState, view: View) -> Option<Activations> {
    if !matches!(
        view,
        View::Tab(Tab::Neurons | Tab::Histograms) | View::Layers
    ) {
        return None;
    }
    let hook = |l: usize| format!("blocks.{l}.mlp.hook_post");
    let l = state.selection.layer;
    let (t, d, values) = shown_activations(state, l)?;
    let mut all = Vec::new();
    for layer in 0..state.n_layers() {
        if let Some((t, d, values)) = shown_activations(state, layer) {
            all.push((hook(layer), vec![t, d], values));
        }
        if let Some(s) = state.shown().layer(layer)
            && !s.patterns.is_empty()
            && s.patterns.len() == s.n_heads * s.n_tokens * s.n_tokens
        {
            all.push((
                format!("blocks.{layer}.attn.hook_pattern"),
                vec![s.n_heads, s.n_tokens, s.n_tokens],
                s.patterns.to_vec(),
            ));
        }
    }
    Some(Activations {
        selected: (hook(l), vec![t, d], values),
        all,
    })
}

/// See [`activations`]: `(hook, shape, values)` each.
pub struct Activations {
    pub selected: (String, Vec<usize>, Vec<f32>),
    pub all: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Activations {
    /// Writes `{stem}.npy` (the selected layer) and `{stem}.safetensors` (every layer).
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<[PathBuf; 2]> {
        let npy = dir.join(format!("{stem}.npy"));
        let (_, shape, values) = &self.selected;
        crate::export::arrays::write_npy(&npy, shape, values)?;
        let st = dir.join(format!("{stem}.safetensors"));
        let tensors: Vec<(String, Vec<usize>, &[f32])> = self
            .all
            .iter()
            .map(|(name, shape, values)| (name.clone(), shape.clone(), values.as_slice()))
            .collect();
        crate::export::arrays::write_safetensors(&st, &tensors)?;
        Ok([npy, st])
    }
}

/// The data behind a view, as a table.
pub fn table(state: &AppState, view: View) -> Option<Table> {
    let pass = state.shown();
    let l = state.selection.layer;
    match view {
        View::Unit => {
            let unit = state.inspected_units().into_iter().next()?;
            let report = state.stores.report(&unit)?.report.clone()?;
            let mut t = Table::new([
                "source", "unit", "kind", "rank", "window", "max_act", "position", "token_id",
                "token", "act",
            ]);
            let quantiles = report.quantiles.iter().flat_map(|q| {
                q.examples
                    .iter()
                    .map(move |e| (format!("quantile {}", q.index), e))
            });
            let top = report.examples.iter().map(|e| ("top".to_string(), e));
            for (rank, (kind, e)) in top.chain(quantiles).enumerate() {
                for (p, ((id, token), act)) in
                    e.token_ids.iter().zip(&e.tokens).zip(&e.acts).enumerate()
                {
                    t.push([
                        unit.source.clone(),
                        unit.unit.to_string(),
                        kind.clone(),
                        rank.to_string(),
                        e.window.to_string(),
                        e.max_act.to_string(),
                        p.to_string(),
                        id.to_string(),
                        token.clone(),
                        act.to_string(),
                    ]);
                }
            }
            Some(t)
        }
        View::Tab(Tab::Features) => {
            let summary = pass.sae(state.selected_sae?)?;
            let mut t = Table::new([
                "position",
                "token",
                "l0",
                "squared_error",
                "squared_norm",
                "features",
            ]);
            for p in 0..summary.n_tokens {
                t.push([
                    p.to_string(),
                    pass.tokens.get(p).cloned().unwrap_or_default(),
                    summary.l0[p].to_string(),
                    summary.squared_error[p].to_string(),
                    summary.squared_norm[p].to_string(),
                    // Every active latent as index:activation, highest first.
                    summary.features[p]
                        .iter()
                        .map(|(j, a)| format!("{j}:{a}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]);
            }
            Some(t)
        }
        View::Layers => {
            let mut t = Table::new([
                "layer",
                "method",
                "frac_active_baseline",
                "frac_active_intervened",
            ]);
            for layer in 0..state.n_layers() {
                let frac = |p: Option<&super::state::PassView>| {
                    p.and_then(|p| p.layer(layer))
                        .map(|s| s.sparsity.frac_active.to_string())
                        .unwrap_or_default()
                };
                t.push([
                    layer.to_string(),
                    state.sparsity.to_string(),
                    frac(Some(&state.runs.baseline)),
                    frac(state.runs.intervened.as_ref()),
                ]);
            }
            Some(t)
        }
        View::Tab(Tab::Neurons) => {
            let (n_tokens, d_mlp, values) = shown_activations(state, l)?;
            let mut header = vec!["position".to_string(), "token".to_string()];
            header.extend((0..d_mlp).map(|i| format!("n{i}")));
            let mut t = Table::new(header);
            for p in 0..n_tokens {
                let mut row = vec![
                    p.to_string(),
                    pass.tokens.get(p).cloned().unwrap_or_default(),
                ];
                row.extend(
                    values[p * d_mlp..(p + 1) * d_mlp]
                        .iter()
                        .map(|v| v.to_string()),
                );
                t.push(row);
            }
            Some(t)
        }
        View::Tab(Tab::Heads) => {
            let s = state.probe.as_ref()?;
            let mut t = Table::new([
                "layer",
                "head",
                "induction",
                "previous_token",
                "duplicate_token",
                "prefix_matching",
            ]);
            for (layer, row) in s.induction_score.iter().enumerate() {
                for head in 0..row.len() {
                    let get = |v: &Vec<Vec<f64>>| v[layer][head].to_string();
                    t.push([
                        layer.to_string(),
                        head.to_string(),
                        get(&s.induction_score),
                        get(&s.prev_token_score),
                        get(&s.duplicate_token_score),
                        get(&s.prefix_matching_score),
                    ]);
                }
            }
            Some(t)
        }
        View::Tab(Tab::Histograms) => {
            let base = state.histogram(&state.runs.baseline, l)?;
            let edited = state
                .runs
                .intervened
                .as_ref()
                .and_then(|p| state.histogram(p, l));
            let edges = base.bins.edges();
            let mut t = Table::new(["bin_low", "bin_high", "count_baseline", "count_intervened"]);
            for i in 0..base.counts.len() {
                t.push([
                    edges[i].to_string(),
                    edges[i + 1].to_string(),
                    base.counts[i].to_string(),
                    edited
                        .as_ref()
                        .map(|h| h.counts[i].to_string())
                        .unwrap_or_default(),
                ]);
            }
            Some(t)
        }
        View::Tab(Tab::Patching) => {
            let report = state.patching.report.as_ref()?;
            let z = report.result.site == crate::analysis::patching::Site::Z;
            let mut t = Table::new([
                "site",
                "direction",
                "layer",
                if z { "head" } else { "position" },
                "clean_token",
                "corrupt_token",
                "value",
            ]);
            for (l, row) in report.result.values.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    let token = |tokens: &[String]| {
                        if z {
                            String::new()
                        } else {
                            tokens.get(c).cloned().unwrap_or_default()
                        }
                    };
                    t.push([
                        report.result.site.name().to_string(),
                        format!("{:?}", report.result.direction).to_lowercase(),
                        l.to_string(),
                        c.to_string(),
                        token(&report.clean_tokens),
                        token(&report.corrupt_tokens),
                        v.to_string(),
                    ]);
                }
            }
            Some(t)
        }
        View::Tab(Tab::Sweeps) => {
            let sweeps = &state.sweeps;
            if sweeps.prune.is_none() && sweeps.sparsify.is_none() {
                return None;
            }
            let mut t = Table::new([
                "sweep",
                "method",
                "parameter",
                "sparsity",
                "mean_loss",
                "dense_mean_loss",
                "marked",
            ]);
            if let Some(p) = &sweeps.prune {
                for point in &p.points {
                    t.push([
                        format!("prune {}", p.scope.name()),
                        p.method.to_string(),
                        point.parameter.to_string(),
                        point.sparsity.to_string(),
                        point.mean_loss.to_string(),
                        p.dense_mean_loss.to_string(),
                        if p.knee == Some(point.parameter) {
                            "knee"
                        } else {
                            ""
                        }
                        .into(),
                    ]);
                }
            }
            if let Some(s) = &sweeps.sparsify {
                let found = s.found.iter().map(|f| (&s.searched, f, "ppl_p"));
                let curves = s
                    .curves
                    .iter()
                    .flat_map(|c| c.points.iter().map(move |p| (&c.method, p, "")));
                for (method, point, marked) in curves.chain(found) {
                    t.push([
                        "sparsify".to_string(),
                        method.clone(),
                        point.parameter.to_string(),
                        point.sparsity.to_string(),
                        point.mean_loss.to_string(),
                        s.dense_mean_loss.to_string(),
                        marked.into(),
                    ]);
                }
            }
            Some(t)
        }
        View::Tab(Tab::Generate) => {
            let g = state.generation.as_ref()?;
            let watched = g.watch.as_ref().map_or("", |(_, label)| label.as_str());
            let mut t = Table::new([
                "continuation",
                "index",
                "position",
                "token_id",
                "token",
                "prob",
                "watched_unit",
                "activation",
            ]);
            for (name, c) in [
                ("baseline", Some(&g.baseline)),
                ("intervened", g.intervened.as_ref()),
            ] {
                let Some(c) = c else { continue };
                let prompt_len = c.finished.as_ref().map(|f| f.prompt_ids.len());
                for (i, tok) in c.tokens.iter().enumerate() {
                    t.push([
                        name.to_string(),
                        i.to_string(),
                        prompt_len.map(|p| (p + i).to_string()).unwrap_or_default(),
                        tok.id.to_string(),
                        tok.text.clone(),
                        tok.prob.to_string(),
                        watched.to_string(),
                        tok.activation.map(|a| a.to_string()).unwrap_or_default(),
                    ]);
                }
            }
            Some(t)
        }
        View::Tab(Tab::Lens) => {
            let lens = pass.lens.as_ref()?;
            let mut t = Table::new([
                "layer",
                "position",
                "input_token",
                "rank",
                "predicted_token",
                "prob",
            ]);
            for (layer, row) in lens.iter().enumerate() {
                for (p, top) in row.iter().enumerate() {
                    for (rank, pred) in top.iter().enumerate() {
                        t.push([
                            layer.to_string(),
                            p.to_string(),
                            pass.tokens.get(p).cloned().unwrap_or_default(),
                            (rank + 1).to_string(),
                            pred.token.clone(),
                            pred.prob.to_string(),
                        ]);
                    }
                }
            }
            Some(t)
        }
    }
}

/// A view's text export, for views that are text (the Generate tab's continuations).
pub fn text(state: &AppState, view: View) -> Option<String> {
    if view != View::Tab(Tab::Generate) {
        return None;
    }
    let g = state.generation.as_ref()?;
    let s = &g.settings;
    let mut out = format!(
        "model: {}\nsampling: temperature {}, top-k {}, top-p {}, seed {}, max new tokens {}\n",
        state.model.as_ref().map_or("", |m| m.name.as_str()),
        s.temperature,
        s.top_k,
        s.top_p,
        s.seed,
        s.max_new_tokens
    );
    out += &format!("\n=== prompt ===\n{}\n", g.prompt);
    let mut section = |title: String, c: &super::state::generation::Continuation| {
        let stop = c.stop().map_or("running", |s| s.as_str());
        out += &format!("\n=== {title} (stopped: {stop}) ===\n{}\n", c.text());
    };
    section("baseline".into(), &g.baseline);
    if let Some(c) = &g.intervened {
        section(format!("intervened: {}", g.interventions.join(", ")), c);
    }
    if let Some(p) = g.first_difference() {
        out += &format!("\nThe continuations part at generated token {p}.\n");
    }
    Some(out)
}

/// Where exports go: `$DENDRITE_EXPORT_DIR`, else `dendrite-exports/` in the working directory.
pub fn export_dir() -> PathBuf {
    std::env::var_os("DENDRITE_EXPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("dendrite-exports"))
}

/// Pixels per point of exported figures (whatever the screen's density).
pub const FIGURE_PIXELS_PER_POINT: f32 = 2.0;

/// The largest figure drawn: twice a 4K screen's area at 2× (~0.8 GB while drawing and
/// encoding); beyond that the export says so instead of exhausting memory.
const MAX_FIGURE_PIXELS: usize = 67_000_000;

/// Space around an exported view (points).
const FIGURE_MARGIN: f32 = 8.0;

/// Where a view was drawn this frame: its content area (points) and the id its widgets keep
/// their state under (zoom, pan, scroll, selected kinds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub scope_id: egui::Id,
    pub rect: egui::Rect,
}

/// A view drawn offscreen and tessellated, ready to be rasterized on any thread.
pub struct Figure {
    primitives: Vec<egui::ClippedPrimitive>,
    /// The same frame before tessellation, for the SVG.
    shapes: Vec<egui::epaint::ClippedShape>,
    rasterizer: super::raster::Rasterizer,
    pixels_per_point: f32,
    size_px: [usize; 2],
    background: egui::Color32,
}

/// Draws a view again in an offscreen egui context at `pixels_per_point`, at the size it has on
/// screen and with the app's widget memory, so the figure shows what the user sees (the same
/// zoom, pan and scroll) with every line and glyph laid out at the figure's density.
pub fn draw_offscreen(
    app: &egui::Context,
    placement: Placement,
    pixels_per_point: f32,
    mut draw: impl FnMut(&mut egui::Ui),
) -> Figure {
    let offscreen = egui::Context::default();
    let mut memory = app.memory(|m| m.clone());
    memory.options.zoom_factor = 1.0;
    // Textures cached in memory belong to the app's renderer; the views build their own here.
    super::heatmap::forget_textures(&mut memory.data);
    offscreen.memory_mut(|m| *m = memory);
    offscreen.set_missing_glyph_policy(egui::MissingGlyphPolicy::Tofu);
    offscreen.set_fonts(super::app::font_definitions());

    let size = placement.rect.size() + egui::Vec2::splat(2.0 * FIGURE_MARGIN);
    let content = egui::Rect::from_min_size(
        egui::pos2(FIGURE_MARGIN, FIGURE_MARGIN),
        placement.rect.size(),
    );
    let mut raw = egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(egui::Pos2::ZERO, size)),
        system_theme: app.input(|i| i.raw.system_theme),
        ..Default::default()
    };
    raw.viewports
        .entry(egui::ViewportId::ROOT)
        .or_default()
        .native_pixels_per_point = Some(pixels_per_point);
    let mut rasterizer = super::raster::Rasterizer::default();
    let mut shapes = Vec::new();
    // The second frame lays out with what the first measured (grids, wrapped rows).
    for _ in 0..2 {
        let output = offscreen.run_ui(raw.clone(), |root| {
            let mut ui = root.new_child(
                egui::UiBuilder::new()
                    .scope_id(placement.scope_id)
                    .max_rect(content),
            );
            ui.set_clip_rect(content);
            draw(&mut ui);
        });
        rasterizer.update_textures(output.textures_delta);
        shapes = output.shapes;
    }
    let primitives = offscreen.tessellate(shapes.clone(), pixels_per_point);
    let size_px = [
        (size.x * pixels_per_point).round() as usize,
        (size.y * pixels_per_point).round() as usize,
    ];
    Figure {
        primitives,
        shapes,
        rasterizer,
        pixels_per_point,
        size_px,
        background: app.global_style().visuals.panel_fill,
    }
}

impl Figure {
    /// Width and height in pixels.
    pub fn size_px(&self) -> [usize; 2] {
        self.size_px
    }

    pub fn render(&self) -> egui::ColorImage {
        self.rasterizer.render(
            &self.primitives,
            self.pixels_per_point,
            self.size_px,
            self.background,
        )
    }

    /// Writes the figure as SVG (text as text, lines and bars as paths, heatmaps as embedded
    /// images at their native cell resolution).
    pub fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        let size = egui::vec2(
            self.size_px[0] as f32 / self.pixels_per_point,
            self.size_px[1] as f32 / self.pixels_per_point,
        );
        let svg = super::svg::svg(&self.shapes, size, self.background, &self.rasterizer);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, svg).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }

    /// Rasterizes and writes the figure as PNG.
    pub fn write_png(&self, path: &Path) -> anyhow::Result<()> {
        let [w, h] = self.size_px;
        if w == 0 || h == 0 {
            anyhow::bail!("the view is not on screen");
        }
        if w * h > MAX_FIGURE_PIXELS {
            anyhow::bail!(
                "a {w} × {h}-pixel figure is larger than the {} Mpx this export draws",
                MAX_FIGURE_PIXELS / 1_000_000
            );
        }
        let image = self.render();
        let [w, h] = image.size;
        let rgba: Vec<u8> = image
            .pixels
            .iter()
            .flat_map(|c| c.to_srgba_unmultiplied())
            .collect();
        let out = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
            .ok_or_else(|| anyhow::anyhow!("the figure is empty"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        out.save(path)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        // 2026-11-28 17:02 UTC.
        assert_eq!(timestamp(1_795_885_320), "2026-11-28T1702");
        assert_eq!(timestamp(0), "1970-01-01T0000");
    }

    #[test]
    fn figures_are_drawn_again_at_two_pixels_per_point_with_the_views_memory() {
        let app = egui::Context::default();
        let scope_id = egui::Id::unique("some view");
        // Widget state the on-screen view left in memory (a zoom, say): the figure sees it.
        app.data_mut(|d| d.insert_temp(scope_id.with("width"), 10.0f32));
        let placement = Placement {
            scope_id,
            rect: egui::Rect::from_min_size(egui::pos2(300.0, 40.0), egui::vec2(30.0, 20.0)),
        };
        let figure = draw_offscreen(&app, placement, FIGURE_PIXELS_PER_POINT, |ui| {
            let width: f32 = ui
                .data(|d| d.get_temp(ui.make_persistent_id("width")))
                .unwrap_or(1.0);
            let at = ui.max_rect().min;
            ui.painter().rect_filled(
                egui::Rect::from_min_size(at, egui::vec2(width, 5.0)),
                0.0,
                egui::Color32::RED,
            );
        });
        // (30 + 2·8) × (20 + 2·8) points at 2 px each.
        assert_eq!(figure.size_px(), [92, 72]);
        let image = figure.render();
        let at = |x: usize, y: usize| image.pixels[y * 92 + x];
        // The margin is 16 px; the rectangle 20 × 10 px from there.
        assert_eq!(at(16, 16), egui::Color32::RED);
        assert_eq!(at(35, 25), egui::Color32::RED);
        assert_ne!(at(36, 16), egui::Color32::RED);
        assert_ne!(at(16, 26), egui::Color32::RED);
        assert_ne!(at(15, 16), egui::Color32::RED);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/view.png");
        figure.write_png(&path).unwrap();
        // A view with no area (a collapsed panel) is an error, not an empty file.
        let collapsed = Placement {
            scope_id,
            rect: egui::Rect::from_min_size(egui::pos2(0.0, 0.0), egui::vec2(-16.0, 10.0)),
        };
        let e = draw_offscreen(&app, collapsed, 2.0, |_| {})
            .write_png(&dir.path().join("b.png"))
            .unwrap_err();
        assert!(e.to_string().contains("not on screen"), "{e}");
        let png = image::open(&path).unwrap().to_rgba8();
        assert_eq!(png.dimensions(), (92, 72));
        assert_eq!(png.get_pixel(20, 20).0, [255, 0, 0, 255]);
    }
}
