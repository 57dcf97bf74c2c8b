//! The bench table: each method in full-image and ROI mode side by side, with the paper's comparison
//! rows (runtime reduction, faithfulness and Dice/IoU, full against ROI), as Markdown for people and
//! JSON for programs; the same for whole volumes with 3-D models (tiles, and how much of the full-volume
//! map the ROI run keeps).

use crate::metrics::{pearson, Agreement};
use crate::pipeline::{MethodRun, RunFigures};
use crate::volumes::{VolumeRun, VolumeSettings};
use serde_json::{json, Value};

/// How often the facade's `Explainer::bench` runs each row: `warmup` untimed runs, then `repeat` timed ones
/// whose median is the row's seconds (hyperfine's `--warmup`, `--runs`). The first run, timed or not,
/// computes the row's maps, metrics and curves; the others only time the explanation. A warm-up makes
/// the seconds those of a process that has run the model before (the first run also faults in the
/// activations' fresh memory: at 128², occlusion's 50 forwards took 0.29-0.32 s cold against 0.13 s
/// warm on a Zen 4 VM), as a peer's time in a Python session that has already run it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runs {
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs (at least 1).
    pub repeat: usize,
}

impl Default for Runs {
    fn default() -> Self {
        Self { warmup: 0, repeat: 1 }
    }
}

fn pct(new: f64, old: f64) -> f64 {
    if old.abs() < 1e-12 {
        f64::NAN
    } else {
        100.0 * (new - old) / old
    }
}

/// What the columns of the two tables mean, printed under them.
const LEGEND: &str = "
seconds: wall time of the explanation (the CLIP ROI included; the curves, metrics and loading not). in \
forward: share of it in U-Net forwards. ROI area: share of the slice that may be perturbed. Dice, IoU: \
the map above half its maximum against the ground truth; Dice top-k: its |ground truth| highest pixels; \
AUROC: the map as a classifier of ground-truth pixels. Deletion / insertion AUC: area under the target \
score as the most salient pixels are replaced by the baseline (deletion: lower is better) or restored \
into the baseline image (insertion: higher is better), over the whole image in every mode.

Reductions are relative: 100 x (1 - ROI / full). The AUC, Dice and IoU columns give the full-image value, \
the ROI value and their absolute difference. A map confined to an organ-shaped ROI gains Dice and IoU \
almost by construction; read them beside the faithfulness columns.
";

/// The bench table as Markdown and JSON. Dice/IoU use the paper's likely protocol (min-max, >= 0.5);
/// top-|GT| and Otsu binarisations are in the JSON too.
pub fn bench_tables(rows: &[MethodRun], context: serde_json::Value) -> (String, serde_json::Value) {
    let mut md = String::from("| method | roi | seconds | forward passes | in forward | ROI area | Dice | IoU | Dice top-k | AUROC | deletion AUC | insertion AUC |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut json_rows = Vec::new();
    let metric = |r: &MethodRun, f: &dyn Fn(&Agreement) -> f64| r.agreement.as_ref().map_or(f64::NAN, f);
    for r in rows {
        let (del, ins) = r.faithfulness.as_ref().map_or((f64::NAN, f64::NAN), |f| (f.deletion_auc, f.insertion_auc));
        md += &format!(
            "| {} | {} | {:.2} | {} | {:.0}% | {:.1}% | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            r.method.name(),
            r.roi_mode.name(),
            r.seconds,
            r.forward_passes,
            100.0 * r.forward_fraction,
            100.0 * r.roi_fraction(),
            metric(r, &|a| a.half.dice),
            metric(r, &|a| a.half.iou),
            metric(r, &|a| a.top_k.dice),
            metric(r, &|a| a.auroc),
            del,
            ins
        );
        json_rows.push(r.summary());
    }
    md += "\n| method | runtime reduction | forward-pass reduction | insertion AUC, full -> ROI | deletion AUC, full -> ROI | Dice, full -> ROI | IoU, full -> ROI |\n|---|---:|---:|---:|---:|---:|---:|\n";
    let mut comparisons = Vec::new();
    for pair in rows.chunks(2) {
        if let [full, roi] = pair {
            let d = |r: &MethodRun| metric(r, &|a| a.half.dice);
            let i = |r: &MethodRun| metric(r, &|a| a.half.iou);
            let curve = |r: &MethodRun, f: fn(&crate::metrics::Faithfulness) -> f64| {
                r.faithfulness.as_ref().map_or(f64::NAN, f)
            };
            let (ins, del) =
                (|f: &crate::metrics::Faithfulness| f.insertion_auc, |f: &crate::metrics::Faithfulness| f.deletion_auc);
            let c = json!({
                "method": full.method.name(), "roi": roi.roi_mode.name(),
                "runtime_reduction_pct": -pct(roi.seconds, full.seconds),
                "forward_pass_reduction_pct": -pct(roi.forward_passes as f64, full.forward_passes as f64),
                "insertion_auc_change": curve(roi, ins) - curve(full, ins),
                "deletion_auc_change": curve(roi, del) - curve(full, del),
                "dice_change": d(roi) - d(full), "iou_change": i(roi) - i(full),
                "dice_change_pct": pct(d(roi), d(full)), "iou_change_pct": pct(i(roi), i(full)),
            });
            let pair = |a: f64, b: f64| format!("{a:.3} -> {b:.3} ({:+.3})", b - a);
            md += &format!(
                "| {} | {:.1}% | {:.1}% | {} | {} | {} | {} |\n",
                full.method.name(),
                -pct(roi.seconds, full.seconds),
                -pct(roi.forward_passes as f64, full.forward_passes as f64),
                pair(curve(full, ins), curve(roi, ins)),
                pair(curve(full, del), curve(roi, del)),
                pair(d(full), d(roi)),
                pair(i(full), i(roi)),
            );
            comparisons.push(c);
        }
    }
    md += LEGEND;
    (md, json!({"context": context, "rows": json_rows, "comparison": comparisons}))
}

/// The figures of a whole-volume run as result lines and summaries record them (shares of voxels).
pub fn volume_figures(run: &VolumeRun) -> RunFigures {
    RunFigures {
        seconds: run.seconds,
        forward_passes: run.forward_passes,
        forward_fraction: None,
        samples: run.samples,
        roi_fraction: run.roi_fraction(),
        roi_coverage: Some(run.roi_coverage),
        roi_fallback: run.roi_fallback,
        ..RunFigures::of_map(&run.saliency, run.agreement.as_ref(), run.faithfulness.as_ref())
    }
}

/// How far the ROI run's map is from the full-volume run's inside the ROI: max |difference| over the
/// ROI's voxels as a share of the full map's max |value|, and Pearson r over the ROI's voxels.
pub fn in_roi_agreement(full: &VolumeRun, roi: &VolumeRun) -> (f64, f64) {
    let inside: Vec<usize> = (0..roi.roi.len()).filter(|&v| roi.roi[v]).collect();
    let scale = full.saliency.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let diff = inside.iter().fold(0f32, |m, &v| m.max((full.saliency[v] - roi.saliency[v]).abs())) as f64;
    let pick = |s: &[f32]| inside.iter().map(|&v| s[v]).collect::<Vec<_>>();
    (diff / scale, pearson(&pick(&full.saliency), &pick(&roi.saliency)))
}

const VOLUME_LEGEND: &str = "
seconds: wall time of the explanation (the CLIP ROI included; the curves, metrics and loading not). \
tiles: sliding-window tiles run through the model, the unperturbed pass included; without reuse: what \
recomputing every tile for every sample would need. ROI volume: share of the voxels explained (the \
volume, or its one slice) that may be perturbed; M0 covered: share of the model's own prediction of the organ inside the ROI asked for (a \
fallback, named in the roi column, then covers it). Dice, IoU: the \
map above half its maximum against the ground truth; AUROC: the map as a classifier of ground-truth \
voxels. Deletion / insertion AUC: the target score as the most salient voxels go to the baseline or are \
restored into it, over all the voxels explained in every mode.

In the second table, reductions are 100 x (1 - ROI / full); in-ROI max diff is the largest difference \
of the two maps inside the ROI as a share of the full map's maximum, r their Pearson correlation there \
(what the ROI run keeps of the full-volume map).
";

/// The whole-volume bench table (pairs of full-volume and ROI runs of each method) as Markdown and JSON.
pub fn volume_bench_tables(rows: &[(&VolumeSettings, &VolumeRun)], context: Value) -> (String, Value) {
    let mut md = String::from("| method | roi | seconds | samples | tiles | without reuse | forward passes | ROI volume | M0 covered | Dice | IoU | AUROC | deletion AUC | insertion AUC |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut json_rows = Vec::new();
    let or_nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    for &(settings, run) in rows {
        let f = volume_figures(run);
        let roi = match run.roi_fallback {
            Some(used) => format!("{} (fell back to {})", settings.roi.name(), used.name()),
            None => settings.roi.name().to_string(),
        };
        md += &format!(
            "| {} | {roi} | {:.2} | {} | {} | {} | {} | {:.1}% | {:.1}% | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            settings.method.name(),
            f.seconds,
            f.samples,
            run.tiles_evaluated,
            run.tiles_naive,
            f.forward_passes,
            100.0 * f.roi_fraction,
            100.0 * run.roi_coverage,
            or_nan(f.dice),
            or_nan(f.iou),
            or_nan(f.auroc),
            or_nan(f.deletion_auc),
            or_nan(f.insertion_auc),
        );
        let mut row = json!({"method": settings.method.name(), "roi": settings.roi.name(), "tiles_evaluated": run.tiles_evaluated, "tiles_naive": run.tiles_naive, "tiles_per_pass": run.tiles});
        if let (Value::Object(row), Value::Object(figures)) = (&mut row, serde_json::to_value(&f).unwrap_or_default()) {
            row.extend(figures);
        }
        json_rows.push(row);
    }
    md += "\n| method | runtime reduction | tile reduction | in-ROI max diff / max | in-ROI r | Dice, full -> ROI | deletion AUC, full -> ROI | insertion AUC, full -> ROI |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
    let mut comparisons = Vec::new();
    for pair in rows.chunks(2) {
        if let [(settings, full), (_, roi)] = pair {
            let (ff, fr) = (volume_figures(full), volume_figures(roi));
            let (diff, r) = in_roi_agreement(full, roi);
            let change = |a: Option<f64>, b: Option<f64>| {
                let (a, b) = (or_nan(a), or_nan(b));
                format!("{a:.3} -> {b:.3} ({:+.3})", b - a)
            };
            md += &format!(
                "| {} | {:.1}% | {:.1}% | {diff:.1e} | {r:.6} | {} | {} | {} |\n",
                settings.method.name(),
                -pct(fr.seconds, ff.seconds),
                -pct(roi.tiles_evaluated as f64, full.tiles_evaluated as f64),
                change(ff.dice, fr.dice),
                change(ff.deletion_auc, fr.deletion_auc),
                change(ff.insertion_auc, fr.insertion_auc),
            );
            comparisons.push(json!({
                "method": settings.method.name(), "roi": pair[1].0.roi.name(),
                "runtime_reduction_pct": -pct(fr.seconds, ff.seconds),
                "tile_reduction_pct": -pct(roi.tiles_evaluated as f64, full.tiles_evaluated as f64),
                "speedup": ff.seconds / fr.seconds,
                "in_roi_max_diff_of_max": diff, "in_roi_pearson_r": r,
                "dice_change": or_nan(fr.dice) - or_nan(ff.dice),
                "deletion_auc_change": or_nan(fr.deletion_auc) - or_nan(ff.deletion_auc),
                "insertion_auc_change": or_nan(fr.insertion_auc) - or_nan(ff.insertion_auc),
            }));
        }
    }
    md += VOLUME_LEGEND;
    (md, json!({"context": context, "rows": json_rows, "comparison": comparisons}))
}

/// One forward configuration of `xaiclip profile`: the model on `batch` random inputs of `size`².
#[derive(Clone, Debug, serde::Serialize)]
pub struct ForwardProfile {
    /// Side of the square input.
    pub size: usize,
    /// Images per forward.
    pub batch: usize,
    /// Wall seconds of each timed forward (after one untimed warm-up).
    pub seconds: Vec<f64>,
    /// Their median.
    pub median_seconds: f64,
    /// Floating-point operations of one forward (convolutions and linear layers).
    pub flops: f64,
    /// Per operation and shapes: calls and FLOPs of one forward, and the median over the timed forwards
    /// of its seconds in each.
    pub ops: Vec<crate::backend::profile::OpTime>,
}

/// The middle of `times` once sorted (the upper middle of an even count): the seconds a bench row or a
/// profiled forward reports.
pub(crate) fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Each operation's time in the forwards' median: the calls of every forward are the same (one model,
/// one input shape), so each (operation, shapes) takes the median over the forwards of its seconds in
/// each. A mean let one slow forward speak for all: the bundled U-Net's two 16-channel convolutions at
/// 128², batch 16, averaged 20.7 ms over 5 forwards on a Zen 4 VM, where most forwards spent ~10 ms in
/// them and one call took 60 ms.
fn median_ops(mut forwards: Vec<Vec<crate::backend::profile::OpTime>>) -> Vec<crate::backend::profile::OpTime> {
    let mut ops = forwards.pop().unwrap_or_default();
    for op in &mut ops {
        let mut seconds: Vec<f64> = forwards
            .iter()
            .filter_map(|f| f.iter().find(|o| (o.op, &o.shapes) == (op.op, &op.shapes)))
            .map(|o| o.seconds)
            .chain([op.seconds])
            .collect();
        op.seconds = median(&mut seconds);
    }
    ops
}

/// Times the 2-D model in `dir` (`None`: the bundled U-Net) on `device`, layer by layer
/// ([`crate::backend::profile::Profiled`]): for every size and batch, one warm-up forward and `repeat`
/// timed ones on seeded random inputs in [0, 1]. `progress(done, total)` counts forwards.
pub fn profile_forward(
    device: crate::backend::Device,
    precision: crate::backend::Precision,
    dir: Option<&std::path::Path>,
    sizes: &[usize],
    batches: &[usize],
    repeat: usize,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<(String, Vec<ForwardProfile>)> {
    use crate::backend::profile::Profiled;
    use crate::backend::{Backend, Compute};
    fn on<B: Backend>(
        b: B,
        dir: &std::path::Path,
        configs: &[(usize, usize)],
        repeat: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<(String, Vec<ForwardProfile>)> {
        let b = Profiled::new(b);
        let model = crate::models::SegModel::load_dir(&b, dir)?;
        if model.spatial_dims() != 2 {
            crate::fail!(InvalidInput, "{}: profile times 2-D models (slices); this one is 3-D", dir.display());
        }
        let rng = crate::rng::Philox::new(0);
        let (total, mut done) = (configs.len() * (repeat + 1), 0);
        let mut out = Vec::new();
        for &(size, batch) in configs {
            let shape = [batch, model.in_channels(), size, size];
            let values = (0..shape.iter().product::<usize>() as u64).map(|i| rng.uniform(i)).collect();
            let x = b.upload(&crate::tensor::Tensor::new(&shape, values)?)?;
            let (mut seconds, mut forwards) = (Vec::with_capacity(repeat), Vec::with_capacity(repeat));
            for timed in std::iter::once(false).chain(std::iter::repeat_n(true, repeat)) {
                let started = std::time::Instant::now();
                b.download(&model.forward_logits(&b, &x)?)?;
                let elapsed = started.elapsed().as_secs_f64();
                let ops = b.take();
                if timed {
                    seconds.push(elapsed);
                    forwards.push(ops);
                }
                done += 1;
                progress(done, total);
            }
            let ops = median_ops(forwards);
            out.push(ForwardProfile {
                size,
                batch,
                median_seconds: median(&mut seconds.clone()),
                seconds,
                flops: ops.iter().map(|o| o.flops).sum(),
                ops,
            });
        }
        Ok((model.describe(), out))
    }
    anyhow::ensure!(repeat >= 1, "--repeat must be at least 1");
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => crate::models::bundled("unet")?,
    };
    let configs: Vec<(usize, usize)> = sizes.iter().flat_map(|&s| batches.iter().map(move |&n| (s, n))).collect();
    match device.select(precision)? {
        Compute::Cpu(b) => on(b, &dir, &configs, repeat, &mut progress),
        Compute::Cuda(b) => on(*b, &dir, &configs, repeat, &mut progress),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::profile::OpTime;

    #[test]
    fn each_operation_takes_its_median_over_the_forwards() {
        let op = |op, seconds| OpTime { op, shapes: "2x3".into(), calls: 2, seconds, flops: 4.0 };
        let forwards = vec![
            vec![op("conv", 1.0), op("pool", 9.0)],
            vec![op("conv", 60.0), op("pool", 8.0)],
            vec![op("conv", 2.0), op("pool", 7.0)],
        ];
        let ops = super::median_ops(forwards);
        let got: Vec<_> = ops.iter().map(|o| (o.op, o.seconds, o.calls, o.flops)).collect();
        assert_eq!(got, [("conv", 2.0, 2, 4.0), ("pool", 8.0, 2, 4.0)]);
    }
}
