//! The bundled weights do their job: U-Net Dice on held-out real CT slices and on unseen phantoms, the
//! CLIP ROI's coverage and size on the held-out real slices (weights/unet/split.json), and the 3-D
//! U-Net's liver on unseen phantoms and the real CT it never saw (weights/unet3d).

mod common;
use common::*;
use xaiclip::backend::CpuBackend;
use xaiclip::dataset::{load_labels, LabelIds};
use xaiclip::io::{self, Volume};
use xaiclip::models::{BasicUNet, SegModel};
use xaiclip::phantom::Sequence;
use xaiclip::pipeline::SliceInput;
use xaiclip::preprocess::Intensity;
use xaiclip::roi::clip::{ClipOptions, ClipRoiFinder};
use xaiclip::roi::{region, RoiMode};
use xaiclip::segment::{segment_slices, SegmentOptions};

const TRACKED: [(u8, &str, f64); 4] =
    [(1, "liver", 0.85), (3, "spleen", 0.70), (2, "right kidney", 0.70), (13, "left kidney", 0.70)];

/// (case volume, FLARE22 labels on its grid, held-out slices) for each real case in the split.
fn held_out(shared: &std::path::Path) -> Vec<(Volume, Vec<u8>, Vec<usize>)> {
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("weights/unet/split.json")).unwrap()).unwrap();
    let label_file = |name: &str| {
        if name == "ct_dicom" {
            "ct_dicom_seg.nii.gz".to_string()
        } else {
            name.replace(".nii.gz", "_seg.nii.gz")
        }
    };
    split["cases"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, v)| {
            let volume = io::read_image(&shared.join(name)).unwrap();
            let labels = load_labels(&shared.join(label_file(name)), LabelIds::Totalseg, &volume).unwrap();
            let slices = v["validation"].as_array().unwrap().iter().map(|k| k.as_u64().unwrap() as usize).collect();
            (volume, labels, slices)
        })
        .collect()
}

fn unet() -> SegModel<CpuBackend> {
    SegModel::Basic(BasicUNet::load_dir(&CpuBackend, &repo().join("weights/unet")).unwrap())
}

/// Pooled Dice per organ over the given slices.
fn dice(pred: &[u8], truth: &[u8], organ: u8, acc: &mut (usize, usize)) {
    for (&p, &t) in pred.iter().zip(truth) {
        acc.0 += 2 * ((p == organ) && (t == organ)) as usize;
        acc.1 += (p == organ) as usize + (t == organ) as usize;
    }
}

fn slice_voxels(volume: &Volume, data: &[u8], slices: &[usize]) -> Vec<u8> {
    let layout = xaiclip::preprocess::AxialLayout::of(volume).unwrap();
    slices.iter().flat_map(|&k| layout.plane(volume.dims, k, data)).collect()
}

#[test]
fn unet_reaches_the_model_card_dice_on_held_out_real_slices() {
    let Some(shared) = shared_data() else { return };
    let model = unet();
    let mut acc = [(0usize, 0usize); 4];
    for (volume, labels, slices) in held_out(&shared) {
        let pred = segment_slices(&CpuBackend, &model, &volume, &slices, &SegmentOptions::default(), |_| {}).unwrap();
        let (p, t) = (slice_voxels(&volume, &pred, &slices), slice_voxels(&volume, &labels, &slices));
        for (i, (organ, _, _)) in TRACKED.iter().enumerate() {
            dice(&p, &t, *organ, &mut acc[i]);
        }
    }
    for (i, (_, name, bound)) in TRACKED.iter().enumerate() {
        let d = acc[i].0 as f64 / acc[i].1.max(1) as f64;
        println!("held-out real CT, {name}: Dice {d:.4} (bound {bound})");
        assert!(d >= *bound, "{name}: Dice {d:.4} < {bound}");
    }
}

#[test]
fn unet_segments_the_liver_of_unseen_phantoms() {
    let model = unet();
    for seed in [9001, 9002] {
        let p = xaiclip::phantom::generate(seed, 256, 24);
        let slices: Vec<usize> = (0..24).collect();
        let pred = segment_slices(&CpuBackend, &model, &p.image, &slices, &SegmentOptions::default(), |_| {}).unwrap();
        let mut acc = (0, 0);
        dice(&pred, &p.labels, 1, &mut acc);
        let d = acc.0 as f64 / acc.1 as f64;
        println!("phantom seed {seed}: liver Dice {d:.4}");
        assert!(d >= 0.90, "phantom {seed}: liver Dice {d:.4} < 0.90");
    }
}

/// The CLIP ROI (with the default margin) over the slices of `cases` that show each tracked organ:
/// asserts the bounds (>= 95% of the organ, <= 35% of the slice on average) and prints them.
fn assert_clip_roi_bounds(what: &str, cases: &[(Volume, Vec<u8>, Vec<usize>)], intensity: Intensity) {
    let finder = ClipRoiFinder::load(&CpuBackend, &ClipOptions::default(), intensity.modality()).unwrap();
    let size = 256;
    for (organ, name, _) in TRACKED {
        let (mut covered, mut total, mut area, mut n) = (0usize, 0usize, 0.0f64, 0usize);
        for (volume, labels, slices) in cases {
            let range = intensity.range(volume);
            for &k in slices {
                let input =
                    SliceInput::new(volume, k, range, size, Some(labels), organ as usize, Default::default()).unwrap();
                let truth = input.truth.clone().unwrap();
                if !truth.contains(&true) {
                    continue;
                }
                let clip = finder.roi(&CpuBackend, &input.image, input.size, organ as usize).unwrap();
                let roi = region(
                    RoiMode::Clip,
                    &vec![false; size * size],
                    clip.mask.as_deref(),
                    size,
                    xaiclip::pipeline::Settings::defaults(0).margin_mm / input.mm_per_pixel,
                )
                .unwrap();
                covered += truth.iter().zip(&roi).filter(|(t, r)| **t && **r).count();
                total += truth.iter().filter(|&&t| t).count();
                area += xaiclip::roi::area_fraction(&roi);
                n += 1;
            }
        }
        let (coverage, mean_area) = (covered as f64 / total.max(1) as f64, area / n.max(1) as f64);
        println!(
            "{what}, {name}: CLIP ROI covers {:.1}% of the organ, {:.1}% of the slice on average ({n} slices)",
            100.0 * coverage,
            100.0 * mean_area
        );
        assert!(n > 0, "{what}, {name}: no slice shows it");
        assert!(coverage >= 0.95, "{what}, {name}: ROI covers {:.1}% < 95% of the organ", 100.0 * coverage);
        assert!(mean_area <= 0.35, "{what}, {name}: ROI covers {:.1}% > 35% of the slice", 100.0 * mean_area);
    }
}

#[test]
fn clip_roi_covers_the_organ_and_little_else_on_held_out_real_slices() {
    let Some(shared) = shared_data() else { return };
    assert_clip_roi_bounds("held-out real CT", &held_out(&shared), Intensity::ABDOMEN);
}

/// MR phantoms of the validation seeds (never trained on) in the three CHAOS sequences, 8 mm slices.
fn mr_phantoms() -> Vec<(String, xaiclip::phantom::Phantom)> {
    let seeds = [9001, 9002];
    seeds
        .iter()
        .flat_map(|&seed| {
            [Sequence::T1InPhase, Sequence::T1OpposedPhase, Sequence::T2Spir]
                .map(|q| (format!("MR phantom {seed} {}", q.name()), xaiclip::phantom::generate_mr(seed, 256, 20, q)))
        })
        .collect()
}

#[test]
fn clip_roi_covers_the_organ_and_little_else_on_unseen_mr_phantoms() {
    for (what, p) in mr_phantoms() {
        assert_clip_roi_bounds(&what, &[(p.image, p.labels, (0..20).collect())], Intensity::MrPercentile);
    }
}

#[test]
fn unet_segments_the_organs_of_unseen_mr_phantoms() {
    let model = unet();
    let options = SegmentOptions { intensity: Intensity::MrPercentile, ..SegmentOptions::default() };
    let mut acc = [(0usize, 0usize); 4];
    for (_, p) in mr_phantoms() {
        let slices: Vec<usize> = (0..20).collect();
        let pred = segment_slices(&CpuBackend, &model, &p.image, &slices, &options, |_| {}).unwrap();
        for (i, (organ, _, _)) in TRACKED.iter().enumerate() {
            dice(&pred, &p.labels, *organ, &mut acc[i]);
        }
    }
    // The model card's bounds: liver 0.90, spleen and kidneys 0.80.
    for (i, (_, name, _)) in TRACKED.iter().enumerate() {
        let d = acc[i].0 as f64 / acc[i].1.max(1) as f64;
        let bound = if i == 0 { 0.90 } else { 0.80 };
        println!("unseen MR phantoms (3 sequences), {name}: Dice {d:.4} (bound {bound})");
        assert!(d >= bound, "{name}: Dice {d:.4} < {bound} on MR phantoms");
    }
}

fn liver_dice_3d(model_dir: &std::path::Path, volume: &Volume, labels: &[u8]) -> f64 {
    use xaiclip::explain::volume::Occlusion3d;
    use xaiclip::volumes::{explain_volume, VolumeMethod, VolumeSettings};
    let model = SegModel::load_dir(&CpuBackend, model_dir).unwrap();
    let mut settings = VolumeSettings::new(model.patch_size().unwrap());
    // One occlusion window: the run is for M0, the model's own prediction.
    settings.method = VolumeMethod::Occlusion(Occlusion3d { window: [256; 3], stride: [256; 3] });
    settings.roi = RoiMode::Seg;
    let run = explain_volume(&CpuBackend, &model, volume, None, 1, &settings, None, |_, _| {}).unwrap();
    let (both, sum) = run
        .m0
        .iter()
        .zip(labels)
        .fold((0, 0), |(b, s), (&m, &l)| (b + 2 * (m && l == 1) as usize, s + m as usize + (l == 1) as usize));
    both as f64 / sum as f64
}

#[test]
fn the_3d_unet_segments_the_liver_of_unseen_phantoms_and_the_real_ct_in_any_file_order() {
    let dir = repo().join("weights/unet3d");
    // The training script's validation Dice, by MONAI's sliding_window_inference on the same volumes:
    // xaiclip's tiles, blend and reorientation give the same prediction.
    let training: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("training.json")).unwrap()).unwrap();
    let monai = |case: &str| training["validation_dice"][case]["liver"].as_f64().unwrap();
    // Phantoms at 3 mm (128 px over 384 mm, 53 slices over 160 mm) of the validation seeds, stored LPS:
    // the model's "layout": "RAS" reorients them as it was trained.
    for seed in [9001, 9002] {
        let p = xaiclip::phantom::generate(seed, 128, 53);
        assert_eq!(p.image.orientation(), "LPS");
        let d = liver_dice_3d(&dir, &p.image, &p.labels);
        println!("3-D U-Net, phantom {seed} (LPS file): liver Dice {d:.4}");
        assert!(d >= 0.95, "phantom {seed}: liver Dice {d:.4} < 0.95");
        let reference = monai(&format!("phantom {seed}"));
        assert!((d - reference).abs() < 1e-3, "phantom {seed}: Dice {d:.4}, MONAI's {reference:.4}");
    }
    // The same model without its layout sees the LPS voxels flipped from what it learnt.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("layout");
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let p = xaiclip::phantom::generate(9001, 128, 53);
    let unoriented = liver_dice_3d(tmp.path(), &p.image, &p.labels);
    println!("3-D U-Net without its layout, phantom 9001 (LPS file): liver Dice {unoriented:.4}");
    assert!(unoriented < monai("phantom 9001") - 0.03, "without the layout: Dice {unoriented:.4}");
    // The real CT (RAS, 3 mm) was never trained on.
    let Some(shared) = shared_data() else { return };
    let ct = io::read_image(&shared.join("ct_small.nii.gz")).unwrap();
    let labels = load_labels(&shared.join("ct_small_seg.nii.gz"), LabelIds::Totalseg, &ct).unwrap();
    let d = liver_dice_3d(&dir, &ct, &labels);
    println!("3-D U-Net, ct_small (held out): liver Dice {d:.4}");
    assert!(d >= 0.75, "ct_small: liver Dice {d:.4} < 0.75");
    assert!((d - monai("ct_small")).abs() < 1e-3, "ct_small: Dice {d:.4}, MONAI's {:.4}", monai("ct_small"));
}
