//! The bench table: each method in full-image and ROI mode side by side, with the paper's comparison
//! rows (runtime reduction, Dice and IoU change), as Markdown for people and JSON for programs.

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
    md += "\n| method | runtime reduction | forward-pass reduction | Dice change | IoU change |\n|---|---:|---:|---:|---:|\n";
    let mut comparisons = Vec::new();
    for pair in rows.chunks(2) {
        if let [full, roi] = pair {
            let d = |r: &MethodRun| metric(r, &|a| a.half.dice);
            let i = |r: &MethodRun| metric(r, &|a| a.half.iou);
            let c = json!({
                "method": full.method.name(), "roi": roi.roi_mode.name(),
                "runtime_reduction_pct": -pct(roi.seconds, full.seconds),
                "forward_pass_reduction_pct": -pct(roi.forward_passes as f64, full.forward_passes as f64),
                "dice_change_pct": pct(d(roi), d(full)), "iou_change_pct": pct(i(roi), i(full)),
            });
            md += &format!(
                "| {} | {:.1}% | {:.1}% | {:+.1}% | {:+.1}% |\n",
                full.method.name(),
                -pct(roi.seconds, full.seconds),
                -pct(roi.forward_passes as f64, full.forward_passes as f64),
                pct(d(roi), d(full)),
                pct(i(roi), i(full))
            );
            comparisons.push(c);
        }
    }
    (md, json!({"context": context, "rows": json_rows, "comparison": comparisons}))
}
