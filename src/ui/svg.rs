//! A view as SVG, from the shapes egui painted for it (before they become triangles): text as
//! `<text>` (selectable, searchable, in the app's fonts where the reader has them), lines, bars
//! and outlines as paths and rectangles, and images (heatmaps) embedded as PNG at their native
//! cell resolution, drawn pixelated. Clip rectangles become clip paths.

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use egui::epaint::{ClippedShape, ColorMode, Galley, Mesh, Shape};
use egui::{Color32, Pos2, Rect, TextureId, Vec2};

/// An image a mesh shows: its texels, `size[0] × size[1]`.
pub trait Textures {
    fn texels(&self, id: TextureId) -> Option<([usize; 2], &[Color32])>;
}

/// `shapes` on a `size`-point canvas filled with `background`, as an SVG document (one user
/// unit per point).
pub fn svg(
    shapes: &[ClippedShape],
    size: Vec2,
    background: Color32,
    textures: &dyn Textures,
) -> String {
    let mut out = Svg {
        body: String::new(),
        clips: HashMap::new(),
        defs: String::new(),
        textures,
    };
    for clipped in shapes {
        let clip = out.clip(clipped.clip_rect, size);
        let mut inner = String::new();
        out.shape(&mut inner, &clipped.shape);
        if !inner.is_empty() {
            let _ = writeln!(out.body, "<g clip-path=\"url(#c{clip})\">{inner}</g>");
        }
    }
    let mut doc = String::new();
    let _ = write!(
        doc,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" \
         xmlns:xlink=\"http://www.w3.org/1999/xlink\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\">\n<defs>\n{defs}</defs>\n<rect width=\"{w}\" height=\"{h}\" \
         {bg}/>\n{body}</svg>\n",
        w = num(size.x),
        h = num(size.y),
        defs = out.defs,
        bg = fill(background),
        body = out.body,
    );
    doc
}

struct Svg<'a> {
    body: String,
    /// Clip rectangles seen, by their corners in hundredths of a point.
    clips: HashMap<[i64; 4], usize>,
    defs: String,
    textures: &'a dyn Textures,
}

impl Svg<'_> {
    /// The id of a clip path for `rect` (clamped to the canvas), defined once.
    fn clip(&mut self, rect: Rect, size: Vec2) -> usize {
        let rect = rect.intersect(Rect::from_min_size(Pos2::ZERO, size));
        let key = [rect.min.x, rect.min.y, rect.max.x, rect.max.y].map(|v| (v * 100.0) as i64);
        let next = self.clips.len();
        *self.clips.entry(key).or_insert_with(|| {
            let _ = writeln!(
                self.defs,
                "<clipPath id=\"c{next}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath>",
                num(rect.min.x),
                num(rect.min.y),
                num(rect.width().max(0.0)),
                num(rect.height().max(0.0))
            );
            next
        })
    }

    fn shape(&mut self, out: &mut String, shape: &Shape) {
        match shape {
            Shape::Noop | Shape::Callback(_) => {}
            Shape::Vec(shapes) => {
                for s in shapes {
                    self.shape(out, s);
                }
            }
            Shape::Circle(c) => {
                let _ = write!(
                    out,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" {} {}/>",
                    num(c.center.x),
                    num(c.center.y),
                    num(c.radius),
                    fill(c.fill),
                    stroke(c.stroke.width, c.stroke.color)
                );
            }
            Shape::Ellipse(e) => {
                let _ = write!(
                    out,
                    "<ellipse cx=\"{}\" cy=\"{}\" rx=\"{}\" ry=\"{}\" {} {}/>",
                    num(e.center.x),
                    num(e.center.y),
                    num(e.radius.x),
                    num(e.radius.y),
                    fill(e.fill),
                    stroke(e.stroke.width, e.stroke.color)
                );
            }
            Shape::LineSegment { points, stroke: s } => {
                let _ = write!(
                    out,
                    "<path d=\"M{}L{}\" fill=\"none\" {}/>",
                    point(points[0]),
                    point(points[1]),
                    stroke(s.width, s.color)
                );
            }
            Shape::Path(p) => {
                if p.points.is_empty() {
                    return;
                }
                let mut d = String::new();
                for (i, &pt) in p.points.iter().enumerate() {
                    let _ = write!(d, "{}{}", if i == 0 { "M" } else { "L" }, point(pt));
                }
                if p.closed {
                    d.push('Z');
                }
                let colour = match p.stroke.color {
                    ColorMode::Solid(c) => c,
                    ColorMode::UV(_) => Color32::GRAY,
                };
                let _ = write!(
                    out,
                    "<path d=\"{d}\" {} {} stroke-linejoin=\"round\"/>",
                    if p.closed {
                        fill(p.fill)
                    } else {
                        "fill=\"none\"".into()
                    },
                    stroke(p.stroke.width, colour)
                );
            }
            Shape::Rect(r) => {
                let radius = r.corner_radius.nw as f32;
                let _ = write!(
                    out,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"{} {} {}/>",
                    num(r.rect.min.x),
                    num(r.rect.min.y),
                    num(r.rect.width()),
                    num(r.rect.height()),
                    if radius > 0.0 {
                        format!(" rx=\"{}\"", num(radius))
                    } else {
                        String::new()
                    },
                    fill(r.fill),
                    stroke(r.stroke.width, r.stroke.color)
                );
            }
            Shape::Text(t) => text(
                out,
                t.pos,
                &t.galley,
                t.override_text_color,
                t.fallback_color,
            ),
            Shape::Mesh(mesh) => self.mesh(out, mesh),
            Shape::QuadraticBezier(b) => {
                let [p0, p1, p2] = b.points.map(point);
                let d = format!("M{p0}Q{p1} {p2}");
                bezier(
                    out,
                    &d,
                    b.closed,
                    b.fill,
                    b.stroke.width,
                    solid(&b.stroke.color),
                );
            }
            Shape::CubicBezier(b) => {
                let [p0, p1, p2, p3] = b.points.map(point);
                let d = format!("M{p0}C{p1} {p2} {p3}");
                bezier(
                    out,
                    &d,
                    b.closed,
                    b.fill,
                    b.stroke.width,
                    solid(&b.stroke.color),
                );
            }
            // Anything newer is drawn by the PNG export; the SVG leaves it out.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// A textured mesh (an image: a heatmap) as an embedded PNG of the texels it shows; a
    /// plain one as coloured triangles.
    fn mesh(&mut self, out: &mut String, mesh: &Mesh) {
        if mesh.vertices.is_empty() {
            return;
        }
        if mesh.texture_id != TextureId::default()
            && let Some((size, texels)) = self.textures.texels(mesh.texture_id)
        {
            let bounds = |f: &dyn Fn(&egui::epaint::Vertex) -> Pos2| {
                mesh.vertices.iter().fold(Rect::NOTHING, |r, v| {
                    r.union(Rect::from_min_max(f(v), f(v)))
                })
            };
            let rect = bounds(&|v| v.pos);
            let uv = bounds(&|v| v.uv);
            let x0 = ((uv.min.x * size[0] as f32).floor().max(0.0) as usize).min(size[0]);
            let y0 = ((uv.min.y * size[1] as f32).floor().max(0.0) as usize).min(size[1]);
            let x1 = ((uv.max.x * size[0] as f32).ceil() as usize).clamp(x0, size[0]);
            let y1 = ((uv.max.y * size[1] as f32).ceil() as usize).clamp(y0, size[1]);
            if x1 == x0 || y1 == y0 {
                return;
            }
            let mut png = Vec::new();
            let image = image::RgbaImage::from_fn((x1 - x0) as u32, (y1 - y0) as u32, |x, y| {
                let c = texels[(y0 + y as usize) * size[0] + x0 + x as usize];
                image::Rgba(c.to_srgba_unmultiplied())
            });
            if image::DynamicImage::ImageRgba8(image)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .is_err()
            {
                return;
            }
            let _ = write!(
                out,
                "<image x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" preserveAspectRatio=\"none\" \
                 image-rendering=\"optimizeSpeed\" style=\"image-rendering:pixelated\" \
                 xlink:href=\"data:image/png;base64,{data}\" href=\"data:image/png;base64,{data}\"/>",
                num(rect.min.x),
                num(rect.min.y),
                num(rect.width()),
                num(rect.height()),
                data = base64::engine::general_purpose::STANDARD.encode(&png)
            );
            return;
        }
        for tri in mesh.indices.chunks_exact(3) {
            let v: Vec<&egui::epaint::Vertex> = tri
                .iter()
                .filter_map(|&i| mesh.vertices.get(i as usize))
                .collect();
            if let [a, b, c] = v.as_slice() {
                let _ = write!(
                    out,
                    "<path d=\"M{}L{}L{}Z\" {}/>",
                    point(a.pos),
                    point(b.pos),
                    point(c.pos),
                    fill(a.color)
                );
            }
        }
    }
}

/// A galley's rows as `<text>` runs, one per stretch of glyphs in one format, each stretched
/// (`textLength`) to the width egui laid it out at.
fn text(
    out: &mut String,
    pos: Pos2,
    galley: &Galley,
    override_colour: Option<Color32>,
    fallback: Color32,
) {
    let job = &galley.job;
    // Glyphs follow the job's characters in order; a row that ends a paragraph drops its '\n'.
    let mut chars = job.text.char_indices();
    for row in &galley.rows {
        let mut run: Option<(usize, Pos2, f32, String)> = None;
        let flush = |out: &mut String, run: Option<(usize, Pos2, f32, String)>| {
            let Some((section, at, width, text)) = run else {
                return;
            };
            if text.trim().is_empty() {
                return;
            }
            let Some(s) = job.sections.get(section) else {
                return;
            };
            // A format that leaves its colour to the widget (the style's text colour) has the
            // placeholder; the shape carries the colour it was painted with.
            let colour = override_colour.unwrap_or(if s.format.color == Color32::PLACEHOLDER {
                fallback
            } else {
                s.format.color
            });
            let family = match s.format.font_id.family {
                egui::FontFamily::Monospace => "Hack, 'DejaVu Sans Mono', monospace",
                _ => "Ubuntu, 'Liberation Sans', Arial, sans-serif",
            };
            let _ = write!(
                out,
                "<text x=\"{}\" y=\"{}\" font-family=\"{family}\" font-size=\"{}\" {} \
                 textLength=\"{}\" lengthAdjust=\"spacingAndGlyphs\" xml:space=\"preserve\">{}</text>",
                num(at.x),
                num(at.y),
                num(s.format.font_id.size),
                fill(colour),
                num(width.max(0.01)),
                escape(&text)
            );
        };
        for glyph in &row.row.glyphs {
            let Some((byte, chr)) = chars.next() else {
                break;
            };
            let section = job
                .sections
                .iter()
                .position(|s| (s.byte_range.start.0..s.byte_range.end.0).contains(&byte))
                .unwrap_or(0);
            let at = pos + row.pos.to_vec2() + glyph.pos.to_vec2();
            match &mut run {
                Some((s, _, width, text)) if *s == section => {
                    text.push(chr);
                    *width += glyph.advance_width;
                }
                _ => {
                    flush(out, run.take());
                    run = Some((section, at, glyph.advance_width, chr.to_string()));
                }
            }
        }
        flush(out, run.take());
        if row.ends_with_newline {
            chars.next();
        }
    }
}

/// `x y` of a point.
fn point(p: Pos2) -> String {
    format!("{} {}", num(p.x), num(p.y))
}

/// A curve's path: filled when closed.
fn bezier(
    out: &mut String,
    d: &str,
    closed: bool,
    fill_colour: Color32,
    width: f32,
    colour: Color32,
) {
    let _ = write!(
        out,
        "<path d=\"{d}\" {} {}/>",
        if closed {
            fill(fill_colour)
        } else {
            "fill=\"none\"".into()
        },
        stroke(width, colour)
    );
}

fn solid(c: &ColorMode) -> Color32 {
    match c {
        ColorMode::Solid(c) => *c,
        ColorMode::UV(_) => Color32::GRAY,
    }
}

/// `fill="rgb(…)"` with its opacity, or `fill="none"`.
fn fill(c: Color32) -> String {
    if c.a() == 0 {
        return "fill=\"none\"".into();
    }
    let [r, g, b, a] = c.to_srgba_unmultiplied();
    if a == 255 {
        format!("fill=\"rgb({r},{g},{b})\"")
    } else {
        format!(
            "fill=\"rgb({r},{g},{b})\" fill-opacity=\"{}\"",
            num(a as f32 / 255.0)
        )
    }
}

fn stroke(width: f32, c: Color32) -> String {
    if width <= 0.0 || c.a() == 0 {
        return String::new();
    }
    let [r, g, b, a] = c.to_srgba_unmultiplied();
    let mut s = format!(
        "stroke=\"rgb({r},{g},{b})\" stroke-width=\"{}\"",
        num(width)
    );
    if a < 255 {
        let _ = write!(s, " stroke-opacity=\"{}\"", num(a as f32 / 255.0));
    }
    s
}

/// A coordinate to two decimals, without trailing zeros.
fn num(v: f32) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    let s = format!("{:.2}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_text_are_written_as_svg_expects() {
        assert_eq!(num(1.0), "1");
        assert_eq!(num(1.256), "1.26");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(f32::NAN), "0");
        assert_eq!(
            escape("a<b & \"c\"\u{1}"),
            "a&lt;b &amp; &quot;c&quot;\u{FFFD}"
        );
        assert_eq!(fill(Color32::TRANSPARENT), "fill=\"none\"");
        assert_eq!(fill(Color32::from_rgb(1, 2, 3)), "fill=\"rgb(1,2,3)\"");
    }
}
