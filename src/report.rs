//! What a person looks at: the figure of every method's overlay (methods in columns, ROI modes in rows),
//! the deletion/insertion curves, the case figure, and `report.html`, one self-contained file (images
//! embedded as data URIs, no script, no network) with the case, overlays, curves and tables.

use crate::explain::ScoreKind;
use crate::pipeline::{score_label, MethodRun, SliceInput};
use crate::render::{self, Colouring, Panel, Plot, Series, Sign};
use crate::roi::RoiMode;
use anyhow::Result;
use base64::Engine;
use image::RgbImage;

/// How figures colour their maps.
#[derive(Clone, Copy, Debug, Default)]
pub struct FigureOptions {
    /// The part of signed maps shown.
    pub sign: Sign,
    /// One colour range per method across ROI modes (else one per panel).
    pub shared: bool,
}

fn mode_label(mode: RoiMode, margin_mm: f64) -> String {
    match mode {
        RoiMode::Full => "Full image: perturbations anywhere on the slice".into(),
        mode => format!("ROI mode ({}, + {margin_mm} mm): perturbations inside the cyan outline only", mode.name()),
    }
}

/// Every run's labelled overlay: one column per method, one row per ROI mode (runs in
/// `bench_rows` order: each method's modes together), a legend under them.
pub fn overlays_figure(
    runs: &[MethodRun],
    input: &SliceInput,
    score: ScoreKind,
    margin_mm: f64,
    options: FigureOptions,
) -> Result<RgbImage> {
    let mut modes: Vec<RoiMode> = Vec::new();
    let mut methods = Vec::new();
    for r in runs {
        if !modes.contains(&r.roi_mode) {
            modes.push(r.roi_mode);
        }
        if !methods.contains(&r.method) {
            methods.push(r.method);
        }
    }
    let colouring = |r: &MethodRun| {
        if options.shared {
            let same: Vec<Colouring> =
                runs.iter().filter(|o| o.method == r.method).map(|o| o.colouring(options.sign)).collect();
            Colouring::union(&same)
        } else {
            r.colouring(options.sign)
        }
    };
    let mut panels = Vec::new();
    for &mode in &modes {
        for &method in &methods {
            if let Some(r) = runs.iter().find(|r| r.method == method && r.roi_mode == mode) {
                panels.push(r.panel(input, score, colouring(r)).render()?);
            }
        }
    }
    let scale = if options.shared {
        "Colour scales: one per method (column), shared by its rows; methods measure different quantities."
    } else {
        "Colour scales: each panel its own, over the region it perturbs (bar under the panel)."
    };
    let legend = [
        scale.to_string(),
        "Signed maps (both signs present) use the purple-white-orange scale centred at 0.".to_string(),
    ];
    let labels: Vec<String> = modes.iter().map(|&m| mode_label(m, margin_mm)).collect();
    render::figure(&panels, methods.len(), &labels, &legend)
}

/// Deletion and insertion curves of every method, full image solid and ROI mode dashed; `None` when
/// the runs have no curves (`--faithfulness-steps 0`).
pub fn curves_figure(runs: &[MethodRun], score: ScoreKind) -> Result<Option<RgbImage>> {
    let mut plots: Vec<Plot> = Vec::new();
    for r in runs {
        let Some(f) = &r.faithfulness else { continue };
        let name = r.method.name();
        let index = match plots.iter().position(|p| p.title == name) {
            Some(i) => i,
            None => {
                plots.push(Plot {
                    title: name.to_string(),
                    x_label: "fraction of pixels deleted / inserted".into(),
                    y_label: format!("target score ({})", score_label(score)),
                    series: Vec::new(),
                });
                plots.len() - 1
            }
        };
        let dashed = r.roi_mode != RoiMode::Full;
        let mode = if dashed { r.roi_mode.name() } else { "full" };
        for (kind, curve, colour, auc) in [
            ("insertion", &f.insertion_curve, [230, 110, 0], f.insertion_auc),
            ("deletion", &f.deletion_curve, [40, 90, 200], f.deletion_auc),
        ] {
            let n = curve.len().max(2) - 1;
            plots[index].series.push(Series {
                label: format!("{kind}, {mode} (AUC {auc:.3})"),
                colour,
                dashed,
                points: curve.iter().enumerate().map(|(i, &v)| (i as f64 / n as f64, v)).collect(),
            });
        }
    }
    // Adaptive RISE: the change per block against the tolerance that stops it.
    let mut convergence = Plot {
        title: "RISE convergence (--rise-tol)".into(),
        x_label: "masks scored".into(),
        y_label: "relative change of the map per block".into(),
        series: Vec::new(),
    };
    let masks_max = runs.iter().filter(|r| r.convergence.is_some()).map(|r| r.samples).max().unwrap_or(1);
    for r in runs {
        let Some(c) = &r.convergence else { continue };
        let dashed = r.roi_mode != RoiMode::Full;
        let mode = if dashed { r.roi_mode.name() } else { "full" };
        let points: Vec<(f64, f64)> = c.steps.iter().map(|&(n, d)| (n as f64, d)).collect();
        // One tolerance line per distinct tolerance, across the checks of every run.
        let label = format!("tolerance {}", c.tol);
        if !convergence.series.iter().any(|s| s.label == label) {
            convergence.series.push(Series {
                label,
                colour: [150, 150, 150],
                dashed: true,
                points: vec![(0.0, c.tol as f64), (masks_max as f64, c.tol as f64)],
            });
        }
        convergence.series.push(Series {
            label: format!("change, {mode} ({} masks)", r.samples),
            colour: [20, 140, 90],
            dashed,
            points,
        });
    }
    if !convergence.series.is_empty() {
        plots.push(convergence);
    }
    if plots.is_empty() {
        return Ok(None);
    }
    let columns = plots.len().min(4);
    Ok(Some(render::plots(&plots, columns)?))
}

/// The case: the windowed slice at its physical aspect, the U-Net's prediction M0 of the organ as heat,
/// the ground truth (green) and the ROI of `run` (cyan).
pub fn case_figure(run: &MethodRun, input: &SliceInput, organ: &str) -> Result<RgbImage> {
    let m0: Vec<f32> = run.m0.iter().map(|&b| b as u8 as f32).collect();
    let panel = Panel {
        image: &input.image,
        size: input.size,
        extent_mm: input.extent_mm,
        values: &m0,
        colouring: Colouring { diverging: false, lo: 0.0, hi: 1.0, sign: Sign::All },
        roi: (run.roi_mode != RoiMode::Full).then_some(&run.roi[..]),
        truth: input.truth.as_deref(),
        title: vec![format!("the case: {organ}"), "heat: the U-Net's prediction M0".into()],
        unit: "U-Net prediction of the organ (1 = organ)".into(),
        long_side: input.figure_long_side(),
    };
    render::figure(&[panel.render()?], 1, &[], &[])
}

/// The figures and report.html of a set of runs on one slice.
pub struct RunsReport {
    /// `overlays_figure`.
    pub overlays: RgbImage,
    /// `curves_figure`.
    pub curves: Option<RgbImage>,
    /// report.html.
    pub html: String,
}

/// What a report of runs on one slice says about them.
pub struct ReportContext<'a> {
    /// The page title.
    pub title: &'a str,
    /// One line about the case (image, slice, organ).
    pub case: String,
    /// The organ's name.
    pub organ: &'a str,
    /// The target score of the runs.
    pub score: ScoreKind,
    /// The ROI margin in mm (for the row labels).
    pub margin_mm: f64,
    /// Colouring of the figures.
    pub options: FigureOptions,
    /// Tables in Markdown (bench.md or a run's numbers).
    pub tables_md: String,
    /// Settings, provenance and weights, shown as JSON.
    pub metadata: serde_json::Value,
}

/// The overlays figure, the curves and report.html of `runs` (sections: case, overlays, curves, tables,
/// metadata).
pub fn runs_report(runs: &[MethodRun], input: &SliceInput, context: &ReportContext) -> Result<RunsReport> {
    let overlays = overlays_figure(runs, input, context.score, context.margin_mm, context.options)?;
    let curves = curves_figure(runs, context.score)?;
    let mut html = Html::new(context.title);
    let case_run = runs.iter().find(|r| r.roi_mode != RoiMode::Full).or(runs.first());
    let mut case = format!("<p>{}</p>\n", escape(&context.case));
    if let Some(run) = case_run {
        case += &Html::image(
            &case_figure(run, input, context.organ)?,
            "the slice with the ground truth, the U-Net prediction and the ROI",
        )?;
    }
    html.section("case", "Case", case);
    html.section(
        "overlays",
        "Saliency maps",
        Html::image(&overlays, "saliency overlays of every method and ROI mode")?,
    );
    let curves_body = match &curves {
        Some(img) => format!(
            "<p>Deletion: the target score as the most salient pixels are replaced by the baseline (lower area: \
             more faithful). Insertion: as they are restored into the baseline image (higher area: more faithful). \
             Solid: full image; dashed: ROI mode.{}</p>\n{}",
            if runs.iter().any(|r| r.convergence.is_some()) {
                " RISE convergence: the relative change of the map after each block of masks; the run stops at \
                 the first change below the tolerance."
            } else {
                ""
            },
            Html::image(img, "deletion and insertion curves")?
        ),
        None => "<p>No curves: the runs were made with --faithfulness-steps 0.</p>".to_string(),
    };
    html.section("curves", "Faithfulness curves", curves_body);
    html.section("tables", "Numbers", Html::markdown(&context.tables_md));
    let metadata = serde_json::to_string_pretty(&context.metadata)?;
    html.section("metadata", "Settings and provenance", format!("<pre>{}</pre>", escape(&metadata)));
    Ok(RunsReport { overlays, curves, html: html.finish() })
}

/// A self-contained HTML report built section by section.
pub struct Html {
    title: String,
    sections: Vec<(String, String, String)>,
}

/// `text` with HTML's special characters escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Html {
    /// An empty report titled `title`.
    pub fn new(title: &str) -> Self {
        Self { title: title.to_string(), sections: Vec::new() }
    }

    /// A section with `id` (its anchor) and heading; `body` is HTML.
    pub fn section(&mut self, id: &str, heading: &str, body: String) -> &mut Self {
        self.sections.push((id.to_string(), heading.to_string(), body));
        self
    }

    /// An embedded image (PNG data URI) with its alternative text.
    pub fn image(img: &RgbImage, alt: &str) -> Result<String> {
        let data = base64::engine::general_purpose::STANDARD.encode(render::png_bytes(img)?);
        Ok(format!(
            "<img src=\"data:image/png;base64,{data}\" alt=\"{}\" width=\"{}\" height=\"{}\">",
            escape(alt),
            img.width(),
            img.height()
        ))
    }

    /// Markdown tables (lines starting with `|`) as HTML tables, other lines as paragraphs.
    pub fn markdown(md: &str) -> String {
        let mut out = String::new();
        let mut in_table = false;
        let mut header = true;
        for line in md.lines().map(str::trim) {
            if let Some(cells) = line.strip_prefix('|').and_then(|l| l.strip_suffix('|')) {
                let cells: Vec<&str> = cells.split('|').map(str::trim).collect();
                if cells.iter().all(|c| c.chars().all(|ch| matches!(ch, '-' | ':'))) {
                    continue;
                }
                if !in_table {
                    out += "<table>\n";
                    in_table = true;
                    header = true;
                }
                let tag = if header { "th" } else { "td" };
                out += "<tr>";
                for c in cells {
                    out += &format!("<{tag}>{}</{tag}>", escape(c));
                }
                out += "</tr>\n";
                header = false;
            } else {
                if in_table {
                    out += "</table>\n";
                    in_table = false;
                }
                if !line.is_empty() {
                    out += &format!("<p>{}</p>\n", escape(line));
                }
            }
        }
        if in_table {
            out += "</table>\n";
        }
        out
    }

    /// The document.
    pub fn finish(&self) -> String {
        let nav: String = self
            .sections
            .iter()
            .map(|(id, heading, _)| format!("<a href=\"#{id}\">{}</a>", escape(heading)))
            .collect::<Vec<_>>()
            .join(" · ");
        let body: String = self
            .sections
            .iter()
            .map(|(id, heading, body)| {
                format!("<section id=\"{id}\">\n<h2>{}</h2>\n{body}\n</section>\n", escape(heading))
            })
            .collect();
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<nav>{nav}</nav>\n{body}</body>\n</html>\n",
            title = escape(&self.title)
        )
    }
}

const STYLE: &str = "body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 2400px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
nav { margin-bottom: 1em; }
p { max-width: 70em; }
";

/// The three orthogonal planes of a whole-volume run through the centre of M0 (axial, coronal,
/// sagittal; superior up), each at its physical aspect: the windowed volume, the map, the ground truth
/// (green) and the ROI (cyan, ROI modes); one colour scale for all three.
pub fn volume_figure(
    volume: &crate::io::Volume,
    run: &crate::volumes::VolumeRun,
    truth: Option<&[bool]>,
    range: (f32, f32),
    roi_mode: RoiMode,
    title: &str,
) -> Result<RgbImage> {
    use crate::preprocess::{normalise_values, resize_bilinear, resize_nearest};
    let [nx, ny, nz] = volume.dims;
    let spacing = volume.spacing();
    let count = run.m0.iter().filter(|&&m| m).count().max(1);
    let mut centre: [usize; 3] = std::array::from_fn(|a| {
        let sum: usize =
            run.m0.iter().enumerate().filter(|(_, &m)| m).map(|(v, _)| [v % nx, (v / nx) % ny, v / (nx * ny)][a]).sum();
        sum / count
    });
    // One slice explained: its own plane alone (the other two would cut it in a line).
    if let Some((axis, k)) = run.slice {
        centre[axis] = k;
    }
    let index = |i: usize, j: usize, k: usize| i + nx * (j + ny * k);
    // (rows, columns, voxel of (row, column), extent in mm, name): rows run down the figure.
    type Plane<'a> = (usize, usize, Box<dyn Fn(usize, usize) -> usize + 'a>, [f64; 2], String);
    let planes: [Plane; 3] = [
        (
            ny,
            nx,
            Box::new(|r, c| index(c, r, centre[2])),
            [ny as f64 * spacing[1], nx as f64 * spacing[0]],
            format!("axial, k = {}", centre[2]),
        ),
        (
            nz,
            nx,
            Box::new(|r, c| index(c, centre[1], nz - 1 - r)),
            [nz as f64 * spacing[2], nx as f64 * spacing[0]],
            format!("coronal, j = {}", centre[1]),
        ),
        (
            nz,
            ny,
            Box::new(|r, c| index(centre[0], c, nz - 1 - r)),
            [nz as f64 * spacing[2], ny as f64 * spacing[1]],
            format!("sagittal, i = {}", centre[0]),
        ),
    ];
    let region = (roi_mode != RoiMode::Full).then_some(&run.roi[..]);
    let colouring = Colouring::of(&run.saliency, region, Sign::All);
    let mut panels = Vec::new();
    // The planes fix file axes 2, 1 and 0 in turn.
    let shown = planes.into_iter().zip([2, 1, 0]).filter(|(_, fixed)| run.slice.is_none_or(|(axis, _)| axis == *fixed));
    for ((rows, cols, at, extent_mm, name), _) in shown {
        let grab = |values: &dyn Fn(usize) -> f32| -> Vec<f32> {
            (0..rows * cols).map(|p| values(at(p / cols, p % cols))).collect()
        };
        let size = rows.max(cols);
        let square = |plane: Vec<f32>| resize_bilinear(&plane, 1, (rows, cols), (size, size));
        let mask = |m: &[bool]| {
            let plane: Vec<bool> = (0..rows * cols).map(|p| m[at(p / cols, p % cols)]).collect();
            resize_nearest(&plane, (rows, cols), (size, size))
        };
        let image = square(normalise_values(&grab(&|v| volume.data[v]), range));
        let values = square(grab(&|v| run.saliency[v]));
        let (roi, gt) = (region.map(mask), truth.map(mask));
        let panel = Panel {
            image: &image,
            size,
            extent_mm,
            values: &values,
            colouring,
            roi: roi.as_deref(),
            truth: gt.as_deref(),
            title: vec![title.to_string(), name],
            unit: "drop of the mean organ probability over M0 when the box is occluded".into(),
            long_side: render::MIN_LONG_SIDE,
        };
        panels.push(panel.render()?);
    }
    let columns = panels.len();
    render::figure(&panels, columns, &[], &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_become_html_tables_and_text_is_escaped() {
        let html = Html::markdown("| a | b |\n|---|---:|\n| 1 | <2> |\n\nnote & more\n");
        assert_eq!(
            html,
            "<table>\n<tr><th>a</th><th>b</th></tr>\n<tr><td>1</td><td>&lt;2&gt;</td></tr>\n</table>\n<p>note &amp; more</p>\n"
        );
        let mut doc = Html::new("t");
        doc.section("x", "X", "<p>y</p>".into());
        let page = doc.finish();
        assert!(page.contains("<section id=\"x\">") && page.contains("<a href=\"#x\">X</a>"));
    }
}
