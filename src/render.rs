//! Figures: labelled saliency panels (title, colour bar with ticks and unit, ground-truth and ROI outlines,
//! the slice's physical aspect), figures of panels with row labels and a legend, and line plots of the
//! deletion/insertion curves. Text is drawn with DejaVu Sans embedded in the binary, so every machine
//! writes the same bytes.

use crate::io::Staging;
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};
use std::path::Path;

const ROI_COLOUR: [u8; 3] = [0, 220, 255];
const TRUTH_COLOUR: [u8; 3] = [60, 255, 60];
const WHITE: [u8; 3] = [255, 255, 255];
/// Panels are drawn with their longer side at least this many pixels (more for finer slices).
pub const MIN_LONG_SIDE: usize = 512;
const FONT: &str = "sans-serif";

fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // DejaVu is a valid font; failure here would be a broken crate, not bad input.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Which part of a signed map is shown (the choices of Captum's `visualize_image_attr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sign {
    /// Both signs: a diverging map centred at 0 when the map has both (default).
    #[default]
    All,
    /// Positive values only (negative ones drawn as 0).
    Positive,
    /// Negative values only, by magnitude.
    Negative,
    /// Magnitudes.
    #[value(name = "absolute_value")]
    AbsoluteValue,
}

impl Sign {
    fn apply(self, v: f32) -> f32 {
        match self {
            Sign::All => v,
            Sign::Positive => v.max(0.0),
            Sign::Negative => (-v).max(0.0),
            Sign::AbsoluteValue => v.abs(),
        }
    }
}

/// How values become colours: a sequential ramp from `lo` to `hi`, or a diverging one over [-hi, hi].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Colouring {
    /// Centred at 0 (the map has both signs and `Sign::All`).
    pub diverging: bool,
    /// Value of the ramp's low end.
    pub lo: f32,
    /// Value of the ramp's high end.
    pub hi: f32,
    /// The part of the map shown.
    pub sign: Sign,
}

impl Colouring {
    /// The colouring of `values` over `region` (where the map is defined: the ROI in ROI modes, so a map
    /// that is nearly constant there is not drawn as a flat fill; `None`: everywhere).
    pub fn of(values: &[f32], region: Option<&[bool]>, sign: Sign) -> Self {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let inside = |q: usize| region.is_none_or(|r| r[q]);
        for (_, &v) in values.iter().enumerate().filter(|&(q, v)| v.is_finite() && inside(q)) {
            let v = sign.apply(v);
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            (lo, hi) = (0.0, 0.0);
        }
        let diverging = sign == Sign::All && lo < 0.0 && hi > 0.0;
        if diverging {
            let m = lo.abs().max(hi);
            return Self { diverging, lo: -m, hi: m, sign };
        }
        Self { diverging, lo, hi, sign }
    }

    /// One colouring for several maps (a shared scale): the union of their ranges.
    pub fn union(items: &[Colouring]) -> Self {
        let lo = items.iter().map(|c| c.lo).fold(f32::INFINITY, f32::min);
        let hi = items.iter().map(|c| c.hi).fold(f32::NEG_INFINITY, f32::max);
        let diverging = items.iter().any(|c| c.diverging);
        let sign = items.first().map_or(Sign::All, |c| c.sign);
        if diverging {
            let m = lo.abs().max(hi.abs());
            return Self { diverging, lo: -m, hi: m, sign };
        }
        Self { diverging, lo, hi, sign }
    }

    /// Position of `v` on the ramp: [0, 1] sequential, [-1, 1] diverging.
    fn position(&self, v: f32) -> f32 {
        let v = self.sign.apply(v);
        if self.diverging {
            return if self.hi > 0.0 { (v / self.hi).clamp(-1.0, 1.0) } else { 0.0 };
        }
        let span = self.hi - self.lo;
        if span > 0.0 {
            ((v - self.lo) / span).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Colour and opacity of `v`: the low end (sequential) or zero (diverging) is transparent, so the
    /// anatomy shows where the map says nothing.
    fn colour(&self, v: f32) -> ([u8; 3], f32) {
        let t = self.position(v);
        if self.diverging {
            (ramp(&DIVERGING, (t + 1.0) / 2.0), 0.85 * t.abs())
        } else {
            (ramp(&SEQUENTIAL, t), 0.85 * t)
        }
    }

    fn bar_colour(&self, t: f32) -> [u8; 3] {
        ramp(if self.diverging { &DIVERGING } else { &SEQUENTIAL }, t)
    }
}

/// An inferno-like ramp (black, purple, red, orange, pale yellow): no green or cyan, the outlines' colours.
const SEQUENTIAL: [(f32, [f32; 3]); 5] = [
    (0.0, [0.0, 0.0, 4.0]),
    (0.25, [87.0, 16.0, 110.0]),
    (0.5, [188.0, 55.0, 84.0]),
    (0.75, [249.0, 142.0, 9.0]),
    (1.0, [252.0, 255.0, 164.0]),
];
/// Purple-white-orange (ColorBrewer PuOr), centred at 0; no green or cyan either.
const DIVERGING: [(f32, [f32; 3]); 5] = [
    (0.0, [45.0, 0.0, 75.0]),
    (0.25, [128.0, 115.0, 172.0]),
    (0.5, [247.0, 247.0, 247.0]),
    (0.75, [224.0, 130.0, 20.0]),
    (1.0, [127.0, 59.0, 8.0]),
];

fn ramp(stops: &[(f32, [f32; 3])], t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    let i = stops.iter().rposition(|s| s.0 <= t).unwrap_or(0).min(stops.len() - 2);
    let (t0, c0) = stops[i];
    let (t1, c1) = stops[i + 1];
    let f = (t - t0) / (t1 - t0);
    std::array::from_fn(|k| (c0[k] + (c1[k] - c0[k]) * f).round() as u8)
}

/// One map over one slice, as a figure panel.
pub struct Panel<'a> {
    /// The windowed slice in [0, 1] on the size x size model grid.
    pub image: &'a [f32],
    /// Side of the model grid.
    pub size: usize,
    /// Physical extent of the slice in mm: [rows, columns] (the panel keeps this aspect).
    pub extent_mm: [f64; 2],
    /// The map on the model grid.
    pub values: &'a [f32],
    /// Its colouring (`Colouring::of`).
    pub colouring: Colouring,
    /// Outline drawn dashed in cyan (the ROI), if any.
    pub roi: Option<&'a [bool]>,
    /// Outline drawn in green (the ground truth), if any.
    pub truth: Option<&'a [bool]>,
    /// Title lines above the image.
    pub title: Vec<String>,
    /// What the colour bar's values are.
    pub unit: String,
    /// Pixels of the panel's longer side.
    pub long_side: usize,
}

fn text_style(px: u32, bold: bool) -> TextStyle<'static> {
    let style = if bold { FontStyle::Bold } else { FontStyle::Normal };
    TextStyle::from((FONT, px as f64, style).into_font()).color(&BLACK)
}

/// Draws `lines` of text at (x, y) downward, `px` high.
fn draw_text(img: &mut RgbImage, x: i32, y: i32, px: u32, bold: bool, lines: &[String]) -> Result<()> {
    register_fonts();
    let (w, h) = img.dimensions();
    let area = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
    for (i, line) in lines.iter().enumerate() {
        area.draw_text(line, &text_style(px, bold), (x, y + i as i32 * (px as i32 + 4)))
            .map_err(|e| anyhow::anyhow!("cannot draw text: {e}"))?;
    }
    area.present().map_err(|e| anyhow::anyhow!("cannot draw text: {e}"))?;
    Ok(())
}

fn text_width(px: u32, text: &str) -> u32 {
    register_fonts();
    (FONT, px as f64).into_font().box_size(text).map_or(0, |(w, _)| w)
}

/// A tick label with three significant digits.
fn tick(v: f32) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    }
}

/// Panel pixel size (width, height) for a slice of `extent_mm` drawn with its longer side `long`.
fn panel_size(extent_mm: [f64; 2], long: usize) -> (u32, u32) {
    let [rows, cols] = extent_mm;
    let (rows, cols) = if rows > 0.0 && cols > 0.0 { (rows, cols) } else { (1.0, 1.0) };
    let scale = long as f64 / rows.max(cols);
    ((cols * scale).round().max(1.0) as u32, (rows * scale).round().max(1.0) as u32)
}

const TITLE_PX: u32 = 16;
const TICK_PX: u32 = 13;
const BAR_HEIGHT: u32 = 12;
const PAD: u32 = 8;

impl Panel<'_> {
    /// The panel: title, image with outlines, colour bar with ticks and unit.
    pub fn render(&self) -> Result<RgbImage> {
        let (w, h) = panel_size(self.extent_mm, self.long_side);
        let title_h = self.title.len() as u32 * (TITLE_PX + 4);
        let top = PAD + title_h + 4;
        let bar_top = top + h + 6;
        let total_h = bar_top + BAR_HEIGHT + 4 + 2 * (TICK_PX + 6) + PAD;
        let mut img = RgbImage::from_pixel(w + 2 * PAD, total_h, Rgb(WHITE));
        let n = self.size;
        // Output pixel -> model grid coordinate (pixel centres aligned, as the resampling in preprocess).
        let to_grid = |p: u32, len: u32| ((p as f64 + 0.5) * n as f64 / len as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let sample = |a: &[f32], gy: f64, gx: f64| {
            let (y0, x0) = (gy.floor() as usize, gx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(n - 1), (x0 + 1).min(n - 1));
            let (fy, fx) = ((gy - y0 as f64) as f32, (gx - x0 as f64) as f32);
            let top = a[y0 * n + x0] * (1.0 - fx) + a[y0 * n + x1] * fx;
            let bottom = a[y1 * n + x0] * (1.0 - fx) + a[y1 * n + x1] * fx;
            top * (1.0 - fy) + bottom * fy
        };
        let nearest = |m: &[bool], x: u32, y: u32| {
            let gy = ((y as f64 + 0.5) * n as f64 / h as f64) as usize;
            let gx = ((x as f64 + 0.5) * n as f64 / w as f64) as usize;
            m[gy.min(n - 1) * n + gx.min(n - 1)]
        };
        for y in 0..h {
            let gy = to_grid(y, h);
            for x in 0..w {
                let gx = to_grid(x, w);
                let g = sample(self.image, gy, gx).clamp(0.0, 1.0) * 255.0;
                let (c, a) = self.colouring.colour(sample(self.values, gy, gx));
                let px = std::array::from_fn(|k| (g * (1.0 - a) + c[k] as f32 * a).round() as u8);
                img.put_pixel(PAD + x, top + y, Rgb(px));
            }
        }
        // Outlines at the output resolution, two pixels wide; the ROI's dashed.
        for (mask, colour, dashed) in [(self.roi, ROI_COLOUR, true), (self.truth, TRUTH_COLOUR, false)] {
            let Some(mask) = mask else { continue };
            for y in 0..h {
                for x in 0..w {
                    if !nearest(mask, x, y) {
                        continue;
                    }
                    let edge = [(-1i64, 0i64), (1, 0), (0, -1), (0, 1), (-2, 0), (2, 0), (0, -2), (0, 2)]
                        .iter()
                        .take(4 + 4 * (self.long_side >= 512) as usize)
                        .any(|&(dy, dx)| {
                            let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                            yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 || !nearest(mask, xx as u32, yy as u32)
                        });
                    if edge && (!dashed || ((x + y) / 8).is_multiple_of(2)) {
                        img.put_pixel(PAD + x, top + y, Rgb(colour));
                    }
                }
            }
        }
        for x in 0..w {
            let c = self.colouring.bar_colour(x as f32 / (w - 1).max(1) as f32);
            for y in 0..BAR_HEIGHT {
                img.put_pixel(PAD + x, bar_top + y, Rgb(c));
            }
        }
        let c = self.colouring;
        let ticks: Vec<(f32, f32)> = (0..5)
            .map(|i| {
                let t = i as f32 / 4.0;
                (t, c.lo + (c.hi - c.lo) * t)
            })
            .collect();
        for &(t, _) in &ticks {
            let x = PAD + ((w - 1) as f32 * t) as u32;
            for y in bar_top + BAR_HEIGHT..bar_top + BAR_HEIGHT + 4 {
                img.put_pixel(x, y, Rgb([0, 0, 0]));
            }
        }
        draw_text(&mut img, PAD as i32, PAD as i32, TITLE_PX, false, &self.title)?;
        let label_y = (bar_top + BAR_HEIGHT + 5) as i32;
        for &(t, v) in &ticks {
            let label = tick(v);
            let lw = text_width(TICK_PX, &label) as f32;
            let x = (PAD as f32 + (w - 1) as f32 * t - lw * t).round() as i32;
            draw_text(&mut img, x, label_y, TICK_PX, false, &[label])?;
        }
        draw_text(
            &mut img,
            PAD as i32,
            label_y + TICK_PX as i32 + 6,
            TICK_PX,
            false,
            std::slice::from_ref(&self.unit),
        )?;
        Ok(img)
    }
}

/// Panels in rows of `columns`, each row under its label, and the outline legend at the bottom.
pub fn figure(panels: &[RgbImage], columns: usize, row_labels: &[String], legend: &[String]) -> Result<RgbImage> {
    let (w, h) = panels.iter().fold((1, 1), |(w, h), p| (p.width().max(w), p.height().max(h)));
    let cols = columns.clamp(1, panels.len().max(1)) as u32;
    let rows = panels.len().div_ceil(cols as usize) as u32;
    let label_h = if row_labels.is_empty() { 0 } else { 26 };
    let legend_h = 30 + 20 * legend.len() as u32;
    // Wide enough for the longest label or legend line (bold text is about a tenth wider).
    let text_w =
        row_labels.iter().map(|l| text_width(18, l) * 11 / 10).chain(legend.iter().map(|l| text_width(14, l))).max();
    let width = (cols * w).max(text_w.unwrap_or(0) + 2 * PAD).max(540);
    let mut out = RgbImage::from_pixel(width, rows * (h + label_h) + legend_h, Rgb(WHITE));
    for (i, p) in panels.iter().enumerate() {
        let (c, r) = (i as u32 % cols, i as u32 / cols);
        image::imageops::replace(&mut out, p, (c * w) as i64, (r * (h + label_h) + label_h) as i64);
    }
    for (r, label) in row_labels.iter().enumerate().take(rows as usize) {
        draw_text(&mut out, PAD as i32, (r as u32 * (h + label_h) + 4) as i32, 18, true, std::slice::from_ref(label))?;
    }
    let y0 = rows * (h + label_h) + 8;
    for (k, (colour, dashed, text)) in
        [(TRUTH_COLOUR, false, "ground truth"), (ROI_COLOUR, true, "ROI: the region perturbed")].iter().enumerate()
    {
        let x0 = PAD + k as u32 * 260;
        for x in x0..x0 + 36 {
            if !dashed || ((x - x0) / 8).is_multiple_of(2) {
                for y in y0 + 7..y0 + 10 {
                    out.put_pixel(x, y, Rgb(*colour));
                }
            }
        }
        draw_text(&mut out, (x0 + 44) as i32, y0 as i32, 15, false, &[text.to_string()])?;
    }
    draw_text(&mut out, PAD as i32, (y0 + 24) as i32, 14, false, legend)?;
    Ok(out)
}

/// One line of a plot: its label, colour, whether dashed, and its points.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// RGB colour.
    pub colour: [u8; 3],
    /// Drawn dashed.
    pub dashed: bool,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// One plot of a row of plots: a title, axis labels and its lines.
pub struct Plot {
    /// Title above the plot.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

/// Plots side by side, `columns` per row, each 420 x 320 pixels, white background.
pub fn plots(plots: &[Plot], columns: usize) -> Result<RgbImage> {
    register_fonts();
    let (pw, ph) = (420u32, 320u32);
    let cols = columns.clamp(1, plots.len().max(1)) as u32;
    let rows = plots.len().div_ceil(cols as usize).max(1) as u32;
    let (w, h) = (cols * pw, rows * ph);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("cannot draw plot: {e}");
        for (area, plot) in root.split_evenly((rows as usize, cols as usize)).iter().zip(plots) {
            let (lo, hi) = plot
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
            // Headroom above the curves for the legend.
            let (lo, hi) = if lo <= hi { (lo.min(0.0), hi.max(lo + 1e-6) * 1.6) } else { (0.0, 1.0) };
            let x_hi = plot.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1e-6f64, f64::max);
            let mut chart = ChartBuilder::on(area)
                .caption(&plot.title, text_style(16, true))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(52)
                .build_cartesian_2d(0.0..x_hi, lo..hi)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(&plot.x_label)
                // Counts (masks) read as integers, fractions with one decimal.
                .x_label_formatter(&|x| if x_hi > 10.0 { format!("{x:.0}") } else { format!("{x:.1}") })
                .y_desc(&plot.y_label)
                .label_style(text_style(12, false))
                .axis_desc_style(text_style(13, false))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(err)?;
            for s in &plot.series {
                let colour = RGBColor(s.colour[0], s.colour[1], s.colour[2]);
                let style = colour.stroke_width(2);
                let anno = if s.dashed {
                    chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style)).map_err(err)?
                } else {
                    chart.draw_series(LineSeries::new(s.points.iter().copied(), style)).map_err(err)?
                };
                let gap = if s.dashed { 4 } else { 0 };
                anno.label(&s.label).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new([(0, 0), (9 - gap / 2, 0)], colour.stroke_width(2))
                        + PathElement::new([(9 + gap / 2, 0), (18, 0)], colour.stroke_width(2))
                });
            }
            chart
                .configure_series_labels()
                .label_font(text_style(12, false))
                .background_style(WHITE_RGB.mix(0.8))
                .border_style(RGBColor(180, 180, 180))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    RgbImage::from_raw(w, h, buf).context("plot buffer size")
}

const WHITE_RGB: RGBColor = RGBColor(255, 255, 255);

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
        let file = std::fs::File::create(tmp).with_context(|| format!("{}: cannot write PNG", path.display()))?;
        encode_png(std::io::BufWriter::new(file), img).with_context(|| format!("{}: cannot write PNG", path.display()))
    })
}

/// Encodes with the strongest compression: figures of noisy CT slices are large otherwise.
fn encode_png<P: image::PixelWithColorType<Subpixel = u8>>(
    out: impl std::io::Write,
    img: &image::ImageBuffer<P, Vec<u8>>,
) -> Result<()> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let encoder = PngEncoder::new_with_quality(out, CompressionType::Best, FilterType::Adaptive);
    encoder.write_image(img.as_raw(), img.width(), img.height(), P::COLOR_TYPE)?;
    Ok(())
}

/// PNG bytes of `img` (for embedding in report.html).
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_png(&mut out, img).context("cannot encode PNG")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_maps_diverge_around_zero_and_unsigned_ones_span_their_region() {
        let c = Colouring::of(&[-1.0, 0.5, 2.0, 0.0], None, Sign::All);
        assert!(c.diverging && c.lo == -2.0 && c.hi == 2.0);
        assert_eq!(c.colour(0.0).1, 0.0, "zero is transparent in a diverging map");
        let c = Colouring::of(&[-1.0, 0.5, 2.0, 0.0], None, Sign::AbsoluteValue);
        assert!(!c.diverging && c.lo == 0.0 && c.hi == 2.0);
        // A map nearly constant inside its region (ROI-mode RISE) uses the region's range, not [0, max].
        let c = Colouring::of(&[0.0, 0.8, 0.9, 0.0], Some(&[false, true, true, false]), Sign::All);
        assert_eq!((c.lo, c.hi), (0.8, 0.9));
        assert!((c.position(0.85) - 0.5).abs() < 1e-5);
        let u = Colouring::union(&[c, Colouring::of(&[0.1, 0.5], None, Sign::All)]);
        assert_eq!((u.lo, u.hi), (0.1, 0.9));
    }

    #[test]
    fn ramps_avoid_the_outline_colours() {
        for i in 0..=100 {
            for stops in [&SEQUENTIAL, &DIVERGING] {
                let [r, g, b] = ramp(stops, i as f32 / 100.0).map(|v| v as i32);
                // Green and cyan outlines: a ramp colour whose green dominates both others would collide.
                assert!(!(g > r + 40 && g > b - 20), "ramp colour {r},{g},{b} is close to an outline colour");
            }
        }
    }

    #[test]
    fn panels_keep_the_physical_aspect() {
        assert_eq!(panel_size([303.0, 366.0], 512), (512, 424));
        assert_eq!(panel_size([384.0, 384.0], 512), (512, 512));
        assert_eq!(tick(0.1234), "0.123");
        assert_eq!(tick(-12.5), "-12.5");
        assert_eq!(tick(0.0), "0");
    }
}
