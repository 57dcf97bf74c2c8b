//! The bench table: each method in full-image and ROI mode side by side, with the paper's comparison
//! rows (runtime reduction, faithfulness and Dice/IoU, full against ROI), as Markdown for people and
//! JSON for programs.

use crate::metrics::Agreement;
use crate::pipeline::MethodRun;
use serde_json::json;

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
