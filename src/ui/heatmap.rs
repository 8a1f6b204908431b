//! Heatmaps drawn as one texture (not thousands of shapes), with zoom and pan along columns,
//! hover and click reporting, and colour maps with a numeric legend.

use egui::{
    Color32, ColorImage, Id, Rect, Response, Sense, TextureHandle, TextureOptions, Ui, Vec2, pos2,
    vec2,
};

/// How values become colours.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Colormap {
    /// Blue–white–red, symmetric about zero, clipped at `±max`.
    Diverging { max: f32 },
    /// Viridis-like from `min` to `max` (attention, probabilities).
    Sequential { min: f32, max: f32 },
}

/// Viridis anchors (matplotlib's), interpolated linearly.
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];

fn lerp(a: [u8; 3], b: [u8; 3], t: f32) -> Color32 {
    let c = |i: usize| (a[i] as f32 + (b[i] as f32 - a[i] as f32) * t).round() as u8;
    Color32::from_rgb(c(0), c(1), c(2))
}

impl Colormap {
    pub fn color(&self, v: f32) -> Color32 {
        if !v.is_finite() {
            return Color32::from_gray(128);
        }
        match *self {
            Colormap::Diverging { max } => {
                let t = (v / max.max(1e-12)).clamp(-1.0, 1.0);
                // Blue (33, 102, 172) ← white → red (178, 24, 43), as ColorBrewer RdBu.
                if t >= 0.0 {
                    lerp([247, 247, 247], [178, 24, 43], t)
                } else {
                    lerp([247, 247, 247], [33, 102, 172], -t)
                }
            }
            Colormap::Sequential { min, max } => {
                let t = ((v - min) / (max - min).max(1e-12)).clamp(0.0, 1.0);
                let x = t * (VIRIDIS.len() - 1) as f32;
                let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
                lerp(VIRIDIS[i], VIRIDIS[i + 1], x - i as f32)
            }
        }
    }

    /// A diverging map clipped at the 99.5th percentile of `|values|` (robust to outliers).
    pub fn robust_diverging(values: &[f32]) -> Colormap {
        Colormap::Diverging {
            max: robust_max(values.iter().map(|v| v.abs()), 0.995),
        }
    }

    /// 0 to the 97th percentile of the nonzero values: sparse codes have few nonzeros, and
    /// one outlier token (e.g. the first position's huge residual norm) would otherwise darken
    /// everything else.
    pub fn robust_sequential(values: &[f32]) -> Colormap {
        Colormap::Sequential {
            min: 0.0,
            max: robust_max(values.iter().copied().filter(|v| *v != 0.0), 0.97),
        }
    }
}

/// The `q` quantile of finite `values` (1 when there are none or it is not positive).
fn robust_max(values: impl Iterator<Item = f32>, q: f64) -> f32 {
    let mut v: Vec<f32> = values.filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return 1.0;
    }
    let k = ((v.len() as f64 * q) as usize).min(v.len() - 1);
    let (_, x, _) = v.select_nth_unstable_by(k, f32::total_cmp);
    if *x > 0.0 { *x } else { 1.0 }
}

/// A `rows × cols` grid of values.
pub struct Grid<'a> {
    pub rows: usize,
    pub cols: usize,
    /// Row-major values; `None` cells (not computed yet) draw as a faint placeholder.
    pub value: &'a dyn Fn(usize, usize) -> Option<f32>,
}

/// What happened to a heatmap this frame.
pub struct HeatmapResponse {
    pub response: Response,
    pub hovered: Option<(usize, usize)>,
    pub clicked: Option<(usize, usize)>,
}

/// Visible column window (zoom and pan), kept in egui memory per heatmap.
#[derive(Clone, Copy, Debug)]
struct View {
    first_col: f32,
    visible_cols: f32,
}

/// The heatmaps whose zoom and pan a session keeps, by the name of their [`Id::unique`] (the
/// others show per-SAE or per-head maps whose ids do not survive a restart).
pub const SAVED_ZOOMS: [&str; 5] = ["neurons", "token_layer", "head_grid", "lens", "patching"];

/// The zoom and pan of the [`SAVED_ZOOMS`] drawn so far: `(name, [first visible column,
/// visible columns])`.
pub fn zooms(ctx: &egui::Context) -> std::collections::BTreeMap<String, [f32; 2]> {
    SAVED_ZOOMS
        .iter()
        .filter_map(|&name| {
            let view: View = ctx.data(|d| d.get_temp(Id::unique(name).with("view")))?;
            Some((name.to_string(), [view.first_col, view.visible_cols]))
        })
        .collect()
}

/// Sets the zoom and pan of heatmaps by name (a restored session's); unknown names and
/// impossible windows are ignored (the heatmap clamps what it draws anyway).
pub fn set_zooms(ctx: &egui::Context, zooms: &std::collections::BTreeMap<String, [f32; 2]>) {
    for (name, &[first_col, visible_cols]) in zooms {
        let usable = SAVED_ZOOMS.contains(&name.as_str())
            && first_col.is_finite()
            && visible_cols.is_finite()
            && visible_cols > 0.0;
        if !usable {
            continue;
        }
        ctx.data_mut(|d| {
            d.insert_temp(
                Id::unique(name.as_str()).with("view"),
                View {
                    first_col: first_col.max(0.0),
                    visible_cols,
                },
            )
        });
    }
}

#[derive(Clone)]
struct Cached {
    key: u64,
    texture: TextureHandle,
}

/// Drops the cached heatmap textures from a copy of egui memory (they belong to the renderer
/// of the context they were made in; an offscreen copy makes its own).
pub fn forget_textures(data: &mut egui::util::IdTypeMap) {
    data.remove_by_type::<Cached>();
}

/// The grid's colours as an image no side of which exceeds `max_side` (the GPU's largest
/// texture). A larger grid is pooled: each texel shows the cell of its block with the largest
/// |value|, so one strong activation among thousands stays visible.
pub fn texels(
    grid: &Grid<'_>,
    colormap: Colormap,
    placeholder: Color32,
    max_side: usize,
) -> ColorImage {
    let max_side = max_side.max(1);
    let (width, height) = (grid.cols.min(max_side), grid.rows.min(max_side));
    // Texel i covers cells [i·n/w, (i+1)·n/w).
    let span =
        |i: usize, texels: usize, cells: usize| (i * cells / texels)..((i + 1) * cells / texels);
    let mut pixels = Vec::with_capacity(width * height);
    for ty in 0..height {
        let rows = span(ty, height, grid.rows);
        for tx in 0..width {
            let cols = span(tx, width, grid.cols);
            let strongest = rows
                .clone()
                .flat_map(|r| cols.clone().map(move |c| (r, c)))
                .filter_map(|(r, c)| (grid.value)(r, c))
                .max_by(|a, b| a.abs().total_cmp(&b.abs()));
            pixels.push(strongest.map_or(placeholder, |v| colormap.color(v)));
        }
    }
    ColorImage::new([width, height], pixels)
}

/// Draws `grid` filling `size`. `key` identifies the content: the texture is rebuilt only when
/// it changes. Scroll (or pinch) zooms columns around the pointer, drag pans.
pub fn heatmap_ui(
    ui: &mut Ui,
    id: Id,
    key: u64,
    grid: &Grid<'_>,
    colormap: Colormap,
    size: Vec2,
) -> HeatmapResponse {
    let (rect, response) = ui.allocate_exact_size(size, Sense::click_and_drag());
    if grid.rows == 0 || grid.cols == 0 {
        return HeatmapResponse {
            response,
            hovered: None,
            clicked: None,
        };
    }
    let ctx = ui.ctx().clone();
    let texture = {
        let cached: Option<Cached> = ctx.data(|d| d.get_temp(id));
        match cached {
            Some(c) if c.key == key => c.texture,
            _ => {
                let placeholder = if ui.visuals().dark_mode {
                    Color32::from_gray(45)
                } else {
                    Color32::from_gray(225)
                };
                let max_side = ctx.input(|i| i.max_texture_side);
                let image = texels(grid, colormap, placeholder, max_side);
                let texture = ctx.load_texture(format!("{id:?}"), image, TextureOptions::NEAREST);
                ctx.data_mut(|d| {
                    d.insert_temp(
                        id,
                        Cached {
                            key,
                            texture: texture.clone(),
                        },
                    )
                });
                texture
            }
        }
    };

    let mut view: View = ctx.data(|d| d.get_temp(id.with("view"))).unwrap_or(View {
        first_col: 0.0,
        visible_cols: grid.cols as f32,
    });
    let cols = grid.cols as f32;
    if response.hovered() {
        let zoom = ui.input(|i| i.zoom_delta() * (1.0 + i.smooth_scroll_delta.y * 0.002));
        if (zoom - 1.0).abs() > 1e-4
            && let Some(p) = response.hover_pos()
        {
            let anchor = view.first_col + (p.x - rect.left()) / rect.width() * view.visible_cols;
            let visible = (view.visible_cols / zoom).clamp(cols.min(8.0), cols);
            view.first_col = anchor - (anchor - view.first_col) * visible / view.visible_cols;
            view.visible_cols = visible;
        }
    }
    if response.dragged() {
        view.first_col -= response.drag_delta().x / rect.width() * view.visible_cols;
    }
    if response.double_clicked() {
        view = View {
            first_col: 0.0,
            visible_cols: cols,
        };
    }
    view.visible_cols = view.visible_cols.clamp(1.0, cols);
    view.first_col = view.first_col.clamp(0.0, cols - view.visible_cols);
    ctx.data_mut(|d| d.insert_temp(id.with("view"), view));

    let uv = Rect::from_min_max(
        pos2(view.first_col / cols, 0.0),
        pos2((view.first_col + view.visible_cols) / cols, 1.0),
    );
    ui.painter().image(texture.id(), rect, uv, Color32::WHITE);

    let cell = |pos: egui::Pos2| -> Option<(usize, usize)> {
        if !rect.contains(pos) {
            return None;
        }
        let c = view.first_col + (pos.x - rect.left()) / rect.width() * view.visible_cols;
        let r = (pos.y - rect.top()) / rect.height() * grid.rows as f32;
        Some((
            (r as usize).min(grid.rows - 1),
            (c as usize).min(grid.cols - 1),
        ))
    };
    let hovered = response.hover_pos().and_then(cell);
    let clicked = if response.clicked() {
        response.interact_pointer_pos().and_then(cell)
    } else {
        None
    };
    HeatmapResponse {
        response,
        hovered,
        clicked,
    }
}

/// What a heatmap's axes say: the names of its rows and columns and each one's tick label.
pub struct Axes<'a> {
    pub rows: &'a str,
    pub cols: &'a str,
    pub row_tick: &'a dyn Fn(usize) -> String,
    pub col_tick: &'a dyn Fn(usize) -> String,
}

/// Left and bottom margins that [`heatmap_with_axes_ui`] keeps for its tick labels.
const AXIS_MARGIN: Vec2 = vec2(44.0, 30.0);

/// [`heatmap_ui`] with labelled axes: row ticks on the left, column ticks below (following
/// zoom and pan, thinned so they never overlap), and the axes' names. `size` includes the
/// margins.
pub fn heatmap_with_axes_ui(
    ui: &mut Ui,
    id: Id,
    key: u64,
    grid: &Grid<'_>,
    colormap: Colormap,
    size: Vec2,
    axes: &Axes<'_>,
) -> HeatmapResponse {
    let (outer, _) = ui.allocate_exact_size(size, Sense::hover());
    let inner = Rect::from_min_max(
        outer.min + vec2(AXIS_MARGIN.x, 0.0),
        outer.max - vec2(0.0, AXIS_MARGIN.y),
    );
    // A child that does not move this ui's cursor: `outer` is what this ui allocated.
    let mut child = ui.new_child(egui::UiBuilder::new().max_rect(inner));
    let response = heatmap_ui(&mut child, id, key, grid, colormap, inner.size());
    let painter = ui.painter();
    let font = egui::FontId::proportional(11.0);
    let colour = ui.visuals().weak_text_color();
    if grid.rows > 0 {
        let row_h = inner.height() / grid.rows as f32;
        let step = (14.0 / row_h).ceil().max(1.0) as usize;
        for r in (0..grid.rows).step_by(step) {
            let y = inner.top() + (r as f32 + 0.5) * row_h;
            painter.text(
                egui::pos2(inner.left() - 4.0, y),
                egui::Align2::RIGHT_CENTER,
                (axes.row_tick)(r),
                font.clone(),
                colour,
            );
        }
    }
    if grid.cols > 0 {
        let view: View = ui
            .ctx()
            .data(|d| d.get_temp(id.with("view")))
            .unwrap_or(View {
                first_col: 0.0,
                visible_cols: grid.cols as f32,
            });
        let col_w = inner.width() / view.visible_cols.max(1.0);
        // Ticks at least as far apart as the widest label.
        let widest = (0..grid.cols)
            .step_by((grid.cols / 64).max(1))
            .map(|c| (axes.col_tick)(c).chars().count())
            .max()
            .unwrap_or(1) as f32
            * 6.5
            + 8.0;
        let step = (widest / col_w).ceil().max(1.0) as usize;
        let first = (view.first_col.floor() as usize).div_ceil(step) * step;
        for c in (first..grid.cols).step_by(step) {
            let x = inner.left() + (c as f32 + 0.5 - view.first_col) * col_w;
            if x > inner.right() {
                break;
            }
            painter.text(
                egui::pos2(x, inner.bottom() + 2.0),
                egui::Align2::CENTER_TOP,
                (axes.col_tick)(c),
                font.clone(),
                colour,
            );
        }
    }
    painter.text(
        egui::pos2(inner.center().x, outer.bottom()),
        egui::Align2::CENTER_BOTTOM,
        axes.cols,
        font.clone(),
        colour,
    );
    painter.text(
        egui::pos2(outer.left(), outer.bottom()),
        egui::Align2::LEFT_BOTTOM,
        axes.rows,
        font,
        colour,
    );
    response
}

/// A horizontal colour bar with its end values, so every heatmap states its scale.
pub fn legend_ui(ui: &mut Ui, colormap: Colormap, label: &str) {
    ui.horizontal(|ui| {
        let (lo, hi) = match colormap {
            Colormap::Diverging { max } => (-max, max),
            Colormap::Sequential { min, max } => (min, max),
        };
        ui.label(format!("{lo:.3}"));
        let (rect, _) = ui.allocate_exact_size(vec2(120.0, 12.0), Sense::hover());
        let steps = 40;
        for i in 0..steps {
            let t = i as f32 / (steps - 1) as f32;
            let x0 = rect.left() + rect.width() * i as f32 / steps as f32;
            let x1 = rect.left() + rect.width() * (i + 1) as f32 / steps as f32;
            ui.painter().rect_filled(
                Rect::from_min_max(pos2(x0, rect.top()), pos2(x1, rect.bottom())),
                0.0,
                colormap.color(lo + (hi - lo) * t),
            );
        }
        ui.label(format!("{hi:.3}"));
        ui.weak(label);
    });
}

/// A content fingerprint for texture caching.
pub fn fingerprint(parts: &[u64]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverging_is_white_at_zero_and_saturates() {
        let m = Colormap::Diverging { max: 2.0 };
        assert_eq!(m.color(0.0), Color32::from_rgb(247, 247, 247));
        assert_eq!(m.color(5.0), Color32::from_rgb(178, 24, 43));
        assert_eq!(m.color(-2.0), Color32::from_rgb(33, 102, 172));
    }

    #[test]
    fn sequential_spans_viridis() {
        let m = Colormap::Sequential { min: 0.0, max: 1.0 };
        assert_eq!(m.color(0.0), Color32::from_rgb(68, 1, 84));
        assert_eq!(m.color(1.0), Color32::from_rgb(253, 231, 37));
    }

    #[test]
    fn grids_beyond_the_largest_texture_are_pooled_to_fit() {
        let cmap = Colormap::Diverging { max: 1.0 };
        let grey = Color32::from_gray(45);
        // 3 × 10 001 cells, one of them strong, on a GPU whose textures stop at 2 048.
        let value = |r: usize, c: usize| Some(if (r, c) == (1, 7_777) { -1.0 } else { 0.01 });
        let grid = Grid {
            rows: 3,
            cols: 10_001,
            value: &value,
        };
        let image = texels(&grid, cmap, grey, 2048);
        assert_eq!(image.size, [2048, 3]);
        let strong = cmap.color(-1.0);
        let texel = 7_777 * 2048 / 10_001;
        assert_eq!(image.pixels[2048 + texel], strong);
        assert_eq!(image.pixels.iter().filter(|&&p| p == strong).count(), 1);
        // Small grids map cell for cell; cells not computed yet are the placeholder.
        let value = |r: usize, c: usize| (r == 0).then_some(c as f32 / 4.0);
        let grid = Grid {
            rows: 2,
            cols: 5,
            value: &value,
        };
        let image = texels(&grid, cmap, grey, 2048);
        assert_eq!(image.size, [5, 2]);
        assert_eq!(image.pixels[4], cmap.color(1.0));
        assert_eq!(image.pixels[5], grey);
    }

    #[test]
    fn robust_max_ignores_outliers() {
        let mut v: Vec<f32> = (0..1000).map(|i| (i % 10) as f32 / 10.0).collect();
        v.push(1e6);
        let Colormap::Diverging { max } = Colormap::robust_diverging(&v) else {
            panic!()
        };
        assert!(max < 1.0, "{max}");
    }
}
