//! PNG overlays: a heat map of the saliency over the windowed slice, ROI and ground-truth outlines, and a
//! colour bar (bottom = map minimum, top = maximum; report.json gives the values).

use crate::io::Staging;
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

const ROI_COLOUR: [u8; 3] = [0, 220, 255];
const TRUTH_COLOUR: [u8; 3] = [60, 255, 60];
const BAR_WIDTH: u32 = 14;

/// A perceptually ordered blue-cyan-yellow-red ramp (a compact "turbo"-like map) for t in [0, 1].
pub fn colormap(t: f32) -> [u8; 3] {
    const STOPS: [(f32, [f32; 3]); 5] = [
        (0.0, [48.0, 18.0, 59.0]),
        (0.25, [40.0, 130.0, 240.0]),
        (0.5, [60.0, 230.0, 120.0]),
        (0.75, [250.0, 190.0, 40.0]),
        (1.0, [180.0, 20.0, 10.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    let i = STOPS.iter().rposition(|s| s.0 <= t).unwrap_or(0).min(STOPS.len() - 2);
    let (t0, c0) = STOPS[i];
    let (t1, c1) = STOPS[i + 1];
    let f = (t - t0) / (t1 - t0);
    std::array::from_fn(|k| (c0[k] + (c1[k] - c0[k]) * f).round() as u8)
}

fn outline(mask: &[bool], size: usize) -> Vec<bool> {
    (0..mask.len())
        .map(|q| {
            let (y, x) = (q / size, q % size);
            mask[q]
                && (y == 0
                    || x == 0
                    || y + 1 == size
                    || x + 1 == size
                    || !mask[q - 1]
                    || !mask[q + 1]
                    || !mask[q - size]
                    || !mask[q + size])
        })
        .collect()
}

/// The overlay image: `slice` (values in [0, 1]) and `saliency` on a size x size grid.
pub fn overlay(slice: &[f32], saliency: &[f32], size: usize, roi: Option<&[bool]>, truth: Option<&[bool]>) -> RgbImage {
    let norm = crate::threshold::min_max(saliency);
    let mut img = RgbImage::new(size as u32 + BAR_WIDTH + 4, size as u32);
    for q in 0..size * size {
        let g = slice[q].clamp(0.0, 1.0) * 255.0;
        let c = colormap(norm[q]);
        // Opacity grows with saliency so the anatomy stays visible where the map is low.
        let a = 0.15 + 0.6 * norm[q];
        let px: [u8; 3] = std::array::from_fn(|k| (g * (1.0 - a) + c[k] as f32 * a).round() as u8);
        img.put_pixel((q % size) as u32, (q / size) as u32, Rgb(px));
    }
    for (mask, colour) in [(roi, ROI_COLOUR), (truth, TRUTH_COLOUR)] {
        if let Some(mask) = mask {
            for (q, edge) in outline(mask, size).into_iter().enumerate() {
                if edge {
                    img.put_pixel((q % size) as u32, (q / size) as u32, Rgb(colour));
                }
            }
        }
    }
    for y in 0..size as u32 {
        let c = colormap(1.0 - y as f32 / (size as f32 - 1.0).max(1.0));
        for x in 0..BAR_WIDTH {
            img.put_pixel(size as u32 + 4 + x, y, Rgb(c));
        }
    }
    img
}

/// Tiles equally sized images into rows of `columns`, with a 4-pixel gap.
pub fn grid(images: &[RgbImage], columns: usize) -> RgbImage {
    let (w, h) = images.first().map_or((1, 1), |i| i.dimensions());
    let rows = images.len().div_ceil(columns.max(1)) as u32;
    let cols = columns.min(images.len()).max(1) as u32;
    let mut out = RgbImage::new(cols * (w + 4), rows * (h + 4));
    for (i, img) in images.iter().enumerate() {
        let (ox, oy) = ((i as u32 % cols) * (w + 4), (i as u32 / cols) * (h + 4));
        image::imageops::replace(&mut out, img, ox as i64, oy as i64);
    }
    out
}

/// Writes `img` as a PNG file, atomically.
pub fn save_png<P: image::PixelWithColorType<Subpixel = u8>>(
    path: &Path,
    img: &image::ImageBuffer<P, Vec<u8>>,
) -> Result<()> {
    let mut staging = Staging::new();
    stage_png(&mut staging, path, img)?;
    staging.commit()
}

/// Stages `img` as the PNG file `path` (see `io::Staging`).
pub fn stage_png<P: image::PixelWithColorType<Subpixel = u8>>(
    staging: &mut Staging,
    path: &Path,
    img: &image::ImageBuffer<P, Vec<u8>>,
) -> Result<()> {
    staging.stage(path, ".png", |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .with_context(|| format!("{}: cannot write PNG", path.display()))
    })
}
