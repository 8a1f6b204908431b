//! A CPU rasterizer for egui's tessellated output. Figure export draws a view offscreen at
//! 2 pixels per point whatever the window's density and whichever renderer the window uses
//! (glow in the app, wgpu or none in tests). The crates that rasterize egui on the CPU target
//! egui 0.34, hence this small one.
//!
//! It follows egui's own renderers: vertex colours and textures are premultiplied sRGBA and
//! are multiplied and blended in gamma space (`src + dst·(1 − src.a)`), anti-aliasing comes
//! from the tessellator's feathered edges, and clip rectangles are rounded to whole pixels.

use std::collections::HashMap;

use egui::epaint::{ClippedPrimitive, Primitive, Vertex};
use egui::{Color32, ColorImage, TextureFilter, TextureId, TextureOptions, TextureWrapMode};

struct Texture {
    size: [usize; 2],
    pixels: Vec<Color32>,
    options: TextureOptions,
}

impl Texture {
    fn texel(&self, x: isize, y: isize) -> [f32; 4] {
        let [w, h] = self.size;
        let wrap = |v: isize, n: usize| -> usize {
            let n = n as isize;
            let v = match self.options.wrap_mode {
                TextureWrapMode::ClampToEdge => v.clamp(0, n - 1),
                TextureWrapMode::Repeat => v.rem_euclid(n),
                TextureWrapMode::MirroredRepeat => {
                    let m = v.rem_euclid(2 * n);
                    if m < n { m } else { 2 * n - 1 - m }
                }
            };
            v as usize
        };
        let c = self.pixels[wrap(y, h) * w + wrap(x, w)];
        [c.r() as f32, c.g() as f32, c.b() as f32, c.a() as f32]
    }

    /// The texel colour (0–255 per channel, premultiplied) at texture coordinate `uv`.
    fn sample(&self, u: f32, v: f32, filter: TextureFilter) -> [f32; 4] {
        let (x, y) = (u * self.size[0] as f32, v * self.size[1] as f32);
        match filter {
            TextureFilter::Nearest => self.texel(x.floor() as isize, y.floor() as isize),
            TextureFilter::Linear => {
                let (x, y) = (x - 0.5, y - 0.5);
                let (x0, y0) = (x.floor(), y.floor());
                let (fx, fy) = (x - x0, y - y0);
                let (x0, y0) = (x0 as isize, y0 as isize);
                let (a, b) = (self.texel(x0, y0), self.texel(x0 + 1, y0));
                let (c, d) = (self.texel(x0, y0 + 1), self.texel(x0 + 1, y0 + 1));
                std::array::from_fn(|i| {
                    let top = a[i] + (b[i] - a[i]) * fx;
                    let bottom = c[i] + (d[i] - c[i]) * fx;
                    top + (bottom - top) * fy
                })
            }
        }
    }
}

impl super::svg::Textures for Rasterizer {
    fn texels(&self, id: TextureId) -> Option<([usize; 2], &[Color32])> {
        self.textures
            .get(&id)
            .map(|t| (t.size, t.pixels.as_slice()))
    }
}

/// The textures egui asked for (font atlas, images), kept in step with its texture deltas.
#[derive(Default)]
pub struct Rasterizer {
    textures: HashMap<TextureId, Texture>,
    /// Freed by the last frame: egui frees textures after that frame is painted.
    freed: Vec<TextureId>,
}

impl Rasterizer {
    /// Applies one frame's texture changes (new textures, partial updates; frees once the
    /// next frame's changes come).
    pub fn update_textures(&mut self, mut delta: egui::TexturesDelta) {
        for id in self.freed.drain(..) {
            self.textures.remove(&id);
        }
        for (id, d) in delta
            .set
            .iter()
            .flat_map(|(id, ds)| ds.iter().map(move |d| (id, d)))
        {
            let egui::ImageData::Color(image) = &d.image;
            match d.pos {
                None => {
                    self.textures.insert(
                        *id,
                        Texture {
                            size: image.size,
                            pixels: image.pixels.clone(),
                            options: d.options,
                        },
                    );
                }
                Some([x0, y0]) => {
                    let Some(t) = self.textures.get_mut(id) else {
                        continue;
                    };
                    t.options = d.options;
                    let [w, h] = image.size;
                    for y in 0..h.min(t.size[1].saturating_sub(y0)) {
                        for x in 0..w.min(t.size[0].saturating_sub(x0)) {
                            t.pixels[(y0 + y) * t.size[0] + x0 + x] = image.pixels[y * w + x];
                        }
                    }
                }
            }
        }
        self.freed.extend(delta.free.iter().copied());
        // Applied (egui checks that no frame's texture changes are dropped unapplied).
        delta.clear();
    }

    /// Draws `primitives` (tessellated at `pixels_per_point`) over a `size` canvas filled with
    /// `background`.
    pub fn render(
        &self,
        primitives: &[ClippedPrimitive],
        pixels_per_point: f32,
        size: [usize; 2],
        background: Color32,
    ) -> ColorImage {
        let mut canvas = Canvas {
            width: size[0],
            height: size[1],
            pixels: vec![background.to_array(); size[0] * size[1]],
        };
        for p in primitives {
            let Primitive::Mesh(mesh) = &p.primitive else {
                continue; // Paint callbacks draw with a GPU; no view of ours uses them.
            };
            let Some(texture) = self.textures.get(&mesh.texture_id) else {
                continue;
            };
            // As egui's renderers do: the clip rectangle in whole pixels.
            let clip = [
                (p.clip_rect.min.x * pixels_per_point).round().max(0.0) as usize,
                (p.clip_rect.min.y * pixels_per_point).round().max(0.0) as usize,
                ((p.clip_rect.max.x * pixels_per_point).round().max(0.0) as usize).min(size[0]),
                ((p.clip_rect.max.y * pixels_per_point).round().max(0.0) as usize).min(size[1]),
            ];
            for tri in mesh.indices.chunks_exact(3) {
                let vertex = |i: u32| mesh.vertices.get(i as usize);
                if let (Some(a), Some(b), Some(c)) =
                    (vertex(tri[0]), vertex(tri[1]), vertex(tri[2]))
                {
                    canvas.triangle([a, b, c], pixels_per_point, clip, texture);
                }
            }
        }
        ColorImage::new(
            size,
            canvas
                .pixels
                .iter()
                .map(|&[r, g, b, a]| Color32::from_rgba_premultiplied(r, g, b, a))
                .collect(),
        )
    }
}

struct Canvas {
    width: usize,
    height: usize,
    /// Premultiplied gamma-space RGBA, 8 bits a channel as in a GPU's framebuffer (each
    /// blend rounds, as there).
    pixels: Vec<[u8; 4]>,
}

/// Twice the signed area of (a, b, p): positive when p is left of a→b (y down).
fn edge(a: [f32; 2], b: [f32; 2], p: [f32; 2]) -> f32 {
    (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
}

impl Canvas {
    fn triangle(
        &mut self,
        v: [&Vertex; 3],
        pixels_per_point: f32,
        clip: [usize; 4],
        texture: &Texture,
    ) {
        let pos = v.map(|v| [v.pos.x * pixels_per_point, v.pos.y * pixels_per_point]);
        let mut area = edge(pos[0], pos[1], pos[2]);
        if area.abs() < 1e-12 || !area.is_finite() {
            return;
        }
        // Wind every triangle the same way so "inside" is all edge functions ≥ 0.
        let (pos, v) = if area < 0.0 {
            area = -area;
            ([pos[0], pos[2], pos[1]], [v[0], v[2], v[1]])
        } else {
            (pos, v)
        };
        let edges = [(1, 2), (2, 0), (0, 1)];
        // Top-left rule: a pixel centre exactly on a shared edge is drawn by one triangle only.
        let owns_boundary = edges.map(|(i, j)| {
            let (a, b) = (pos[i], pos[j]);
            let dy = b[1] - a[1];
            dy < 0.0 || (dy == 0.0 && b[0] > a[0])
        });
        let min = |k: usize| pos.iter().map(|p| p[k]).fold(f32::INFINITY, f32::min);
        let max = |k: usize| pos.iter().map(|p| p[k]).fold(f32::NEG_INFINITY, f32::max);
        let x0 = (min(0).floor().max(0.0) as usize).max(clip[0]);
        let y0 = (min(1).floor().max(0.0) as usize).max(clip[1]);
        let x1 = ((max(0).ceil().max(0.0)) as usize)
            .min(clip[2])
            .min(self.width);
        let y1 = ((max(1).ceil().max(0.0)) as usize)
            .min(clip[3])
            .min(self.height);
        let colour = v.map(|v| v.color.to_array().map(f32::from));
        let uv = v.map(|v| [v.uv.x, v.uv.y]);
        // Minifying or magnifying: texels per pixel along x, from the triangle's uv gradient.
        let filter = {
            let du_dx = ((uv[1][0] - uv[0][0]) * (pos[2][1] - pos[0][1])
                - (uv[2][0] - uv[0][0]) * (pos[1][1] - pos[0][1]))
                / area;
            if (du_dx * texture.size[0] as f32).abs() > 1.0 {
                texture.options.minification
            } else {
                texture.options.magnification
            }
        };
        for y in y0..y1 {
            for x in x0..x1 {
                let p = [x as f32 + 0.5, y as f32 + 0.5];
                let mut w = [0.0f32; 3];
                let mut inside = true;
                for (k, &(i, j)) in edges.iter().enumerate() {
                    w[k] = edge(pos[i], pos[j], p);
                    if w[k] < 0.0 || (w[k] == 0.0 && !owns_boundary[k]) {
                        inside = false;
                        break;
                    }
                }
                if !inside {
                    continue;
                }
                let b = w.map(|w| w / area);
                let mix = |v: [f32; 3]| b[0] * v[0] + b[1] * v[1] + b[2] * v[2];
                let texel = texture.sample(mix(uv.map(|t| t[0])), mix(uv.map(|t| t[1])), filter);
                let dst = &mut self.pixels[y * self.width + x];
                let src: [f32; 4] =
                    std::array::from_fn(|c| mix(colour.map(|k| k[c])) * texel[c] / 255.0);
                let keep = 1.0 - src[3] / 255.0;
                for c in 0..4 {
                    dst[c] = (src[c] + dst[c] as f32 * keep).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui::epaint::{Mesh, Shape, TextureId};
    use egui::{Pos2, Rect, pos2};

    fn white_texture() -> Rasterizer {
        let mut r = Rasterizer::default();
        let mut delta = egui::TexturesDelta::default();
        delta.push(
            TextureId::default(),
            egui::epaint::ImageDelta::full(
                ColorImage::new([1, 1], vec![Color32::WHITE]),
                TextureOptions::LINEAR,
            ),
        );
        r.update_textures(delta);
        r
    }

    fn rect_mesh(rect: Rect, colour: Color32) -> ClippedPrimitive {
        let mut mesh = Mesh::default();
        mesh.add_colored_rect(rect, colour);
        ClippedPrimitive {
            clip_rect: Rect::EVERYTHING,
            primitive: Primitive::Mesh(mesh),
        }
    }

    #[test]
    fn a_rectangle_covers_exactly_its_pixels_at_two_pixels_per_point() {
        let r = white_texture();
        let rect = Rect::from_min_max(pos2(1.0, 1.0), pos2(3.0, 2.0));
        let img = r.render(
            &[rect_mesh(rect, Color32::RED)],
            2.0,
            [8, 6],
            Color32::BLACK,
        );
        for y in 0..6 {
            for x in 0..8 {
                let inside = (2..6).contains(&x) && (2..4).contains(&y);
                let want = if inside { Color32::RED } else { Color32::BLACK };
                assert_eq!(img.pixels[y * 8 + x], want, "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn translucent_colour_blends_over_what_is_below_and_shared_edges_blend_once() {
        let r = white_texture();
        // Two triangles of one rectangle share a diagonal: no pixel may be blended twice.
        let half = Color32::from_rgba_premultiplied(0, 0, 128, 128);
        let rect = Rect::from_min_max(Pos2::ZERO, pos2(4.0, 4.0));
        let img = r.render(&[rect_mesh(rect, half)], 1.0, [4, 4], Color32::WHITE);
        for p in &img.pixels {
            // 128 + 255·(1 − 128/255) = 255 blue; red and green 255·127/255 = 127.
            assert_eq!(p.to_array(), [127, 127, 255, 255]);
        }
    }

    #[test]
    fn clip_rectangles_cut_drawing() {
        let r = white_texture();
        let mut p = rect_mesh(
            Rect::from_min_max(Pos2::ZERO, pos2(4.0, 4.0)),
            Color32::GREEN,
        );
        p.clip_rect = Rect::from_min_max(Pos2::ZERO, pos2(2.0, 4.0));
        let img = r.render(&[p], 1.0, [4, 4], Color32::BLACK);
        assert_eq!(img.pixels[0], Color32::GREEN);
        assert_eq!(img.pixels[3], Color32::BLACK);
    }

    #[test]
    fn textures_are_sampled_nearest_or_linear_and_partial_updates_apply() {
        let mut r = Rasterizer::default();
        let id = TextureId::Managed(7);
        let image = ColorImage::new([2, 1], vec![Color32::BLACK, Color32::WHITE]);
        let mut delta = egui::TexturesDelta::default();
        delta.push(
            id,
            egui::epaint::ImageDelta::full(image, TextureOptions::NEAREST),
        );
        r.update_textures(delta);
        let draw = |r: &Rasterizer| {
            let shape = Shape::image(
                id,
                Rect::from_min_max(Pos2::ZERO, pos2(4.0, 1.0)),
                Rect::from_min_max(Pos2::ZERO, pos2(1.0, 1.0)),
                Color32::WHITE,
            );
            let Shape::Mesh(mesh) = shape else {
                unreachable!()
            };
            let p = ClippedPrimitive {
                clip_rect: Rect::EVERYTHING,
                primitive: Primitive::Mesh(std::sync::Arc::unwrap_or_clone(mesh)),
            };
            r.render(&[p], 1.0, [4, 1], Color32::TRANSPARENT)
        };
        let nearest: Vec<u8> = draw(&r).pixels.iter().map(|c| c.r()).collect();
        assert_eq!(nearest, [0, 0, 255, 255]);

        let mut delta = egui::TexturesDelta::default();
        delta.push(
            id,
            egui::epaint::ImageDelta::partial(
                [1, 0],
                ColorImage::new([1, 1], vec![Color32::from_gray(100)]),
                TextureOptions::LINEAR,
            ),
        );
        r.update_textures(delta);
        let linear: Vec<u8> = draw(&r).pixels.iter().map(|c| c.r()).collect();
        // Texel centres at x = 1 and 3 (0 and 100); clamped outside, interpolated between.
        assert_eq!(linear, [0, 25, 75, 100]);
    }
}
