//! Exporting a view: its data as CSV (written at once) and its screen area as PNG at 2× pixels
//! (from the next frame's screenshot), with descriptive default names.

use std::path::{Path, PathBuf};

use super::state::{AppState, Tab};
use crate::export::csv::Table;

/// A view that can be exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Layers,
    Tab(Tab),
}

impl View {
    fn slug(self) -> &'static str {
        match self {
            View::Layers => "layers",
            View::Tab(Tab::Neurons) => "neurons",
            View::Tab(Tab::Heads) => "heads",
            View::Tab(Tab::Histograms) => "histogram",
            View::Tab(Tab::Lens) => "logit-lens",
            View::Tab(Tab::Features) => "sae-features",
        }
    }
}

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
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}{m:02}")
}

/// The data behind a view, as a table.
pub fn table(state: &AppState, view: View) -> Option<Table> {
    let pass = state.shown();
    let l = state.selection.layer;
    match view {
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
                    frac(Some(&state.baseline)),
                    frac(state.intervened.as_ref()),
                ]);
            }
            Some(t)
        }
        View::Tab(Tab::Neurons) => {
            let layer = pass.layer(l)?;
            let mut header = vec!["position".to_string(), "token".to_string()];
            header.extend((0..layer.d_mlp).map(|i| format!("n{i}")));
            let mut t = Table::new(header);
            for p in 0..layer.n_tokens {
                let mut row = vec![
                    p.to_string(),
                    pass.tokens.get(p).cloned().unwrap_or_default(),
                ];
                row.extend(
                    layer.mlp_post[p * layer.d_mlp..(p + 1) * layer.d_mlp]
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
            let base = state.histogram(&state.baseline, l)?;
            let edited = state
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

/// Where exports go: `$DENDRITE_EXPORT_DIR`, else `dendrite-exports/` in the working directory.
pub fn export_dir() -> PathBuf {
    std::env::var_os("DENDRITE_EXPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("dendrite-exports"))
}

/// Crops `image` (the whole window, `pixels_per_point` pixels per point) to `rect` (points),
/// scales it to 2 pixels per point and writes it as PNG.
pub fn write_png(
    image: &egui::ColorImage,
    rect: egui::Rect,
    pixels_per_point: f32,
    path: &Path,
) -> anyhow::Result<()> {
    let [w, h] = image.size;
    let px = |v: f32, max: usize| ((v * pixels_per_point).round().max(0.0) as usize).min(max);
    let (x0, y0, x1, y1) = (
        px(rect.left(), w),
        px(rect.top(), h),
        px(rect.right(), w),
        px(rect.bottom(), h),
    );
    if x1 <= x0 || y1 <= y0 {
        anyhow::bail!("the view is not on screen");
    }
    let mut crop = image::RgbaImage::new((x1 - x0) as u32, (y1 - y0) as u32);
    for y in y0..y1 {
        for x in x0..x1 {
            let c = image.pixels[y * w + x];
            crop.put_pixel(
                (x - x0) as u32,
                (y - y0) as u32,
                image::Rgba([c.r(), c.g(), c.b(), c.a()]),
            );
        }
    }
    let scale = 2.0 / pixels_per_point;
    let out = if (scale - 1.0).abs() > 1e-3 {
        let (tw, th) = (
            (crop.width() as f32 * scale).round() as u32,
            (crop.height() as f32 * scale).round() as u32,
        );
        image::imageops::resize(
            &crop,
            tw.max(1),
            th.max(1),
            image::imageops::FilterType::Lanczos3,
        )
    } else {
        crop
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    out.save(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
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
    fn png_is_the_cropped_area_at_two_pixels_per_point() {
        let mut img = egui::ColorImage::filled([10, 8], egui::Color32::WHITE);
        img.pixels[3 * 10 + 2] = egui::Color32::RED;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/view.png");
        let rect = egui::Rect::from_min_max(egui::pos2(2.0, 3.0), egui::pos2(6.0, 5.0));
        write_png(&img, rect, 1.0, &path).unwrap();
        let out = image::open(&path).unwrap().to_rgba8();
        assert_eq!(out.dimensions(), (8, 4));
        assert!(
            out.get_pixel(0, 0)[1] < 128,
            "the red pixel is at the crop's corner"
        );
        let off = egui::Rect::from_min_max(egui::pos2(20.0, 20.0), egui::pos2(30.0, 30.0));
        assert!(write_png(&img, off, 1.0, &path).is_err());
    }
}
