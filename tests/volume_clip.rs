//! The CLIP ROI of whole volumes (axial CLIP maps stacked and thresholded once, grown in 3-D): it must
//! hold the true organ while leaving most of the volume out, on held-out phantoms and on the real CT.

mod common;
use xaiclip::backend::CpuBackend;
use xaiclip::dataset::LabelIds;
use xaiclip::io::Volume;
use xaiclip::preprocess::Intensity;
use xaiclip::roi::clip::{ClipOptions, ClipRoiFinder};
use xaiclip::roi::volume::{clip_slice, clip_volume, dilate};

/// (coverage of the organ, share of the volume) of the CLIP mask and of the ROI grown by 15 mm, per
/// FLARE22 organ id; printed for the record.
fn coverage(name: &str, ct: &Volume, labels: &[u8], organs: &[(usize, &str)], intensity: Intensity) -> Vec<[f64; 4]> {
    let finder = ClipRoiFinder::load(&CpuBackend, &ClipOptions::default(), intensity.modality()).unwrap();
    let [nx, ny, nz] = ct.dims;
    let spacing = ct.spacing();
    let mut out = Vec::new();
    for &(id, organ) in organs {
        let clip = clip_volume(&CpuBackend, &finder, ct, intensity.range(ct), id, |_, _| {}).unwrap();
        assert_eq!(clip.slices, nz);
        assert!(clip.probability.iter().all(|p| (0.0..=1.0).contains(p)));
        let roi = dilate(&clip.mask, [nz, ny, nx], [spacing[2], spacing[1], spacing[0]], 15.0);
        let truth: Vec<usize> = (0..labels.len()).filter(|&v| labels[v] as usize == id).collect();
        let share = |m: &[bool]| m.iter().filter(|&&b| b).count() as f64 / m.len() as f64;
        let covered = |m: &[bool]| truth.iter().filter(|&&v| m[v]).count() as f64 / truth.len() as f64;
        let row = [covered(&clip.mask), share(&clip.mask), covered(&roi), share(&roi)];
        println!(
            "{name} {organ}: CLIP mask covers {:.3} of the organ with {:.3} of the volume; with 15 mm, {:.3} with {:.3} ({:.2}s, {} slices)",
            row[0], row[1], row[2], row[3], clip.seconds, clip.slices
        );
        out.push(row);
    }
    out
}

const ORGANS: [(usize, &str); 4] = [(1, "liver"), (2, "right kidney"), (3, "spleen"), (13, "left kidney")];

#[test]
fn the_volume_clip_roi_holds_the_organs_of_held_out_phantoms() {
    // Seeds 9001 and 9002 are weights/unet/split.json's phantom validation seeds (never trained on).
    for seed in [9001, 9002] {
        let p = xaiclip::phantom::generate(seed, 256, 40);
        for (row, (_, organ)) in
            coverage(&format!("phantom {seed}"), &p.image, &p.labels, &ORGANS, Intensity::ABDOMEN).iter().zip(ORGANS)
        {
            assert!(row[2] >= 0.95 && row[3] <= 0.35, "phantom {seed} {organ}: {row:?}");
        }
    }
}

#[test]
fn the_volume_clip_roi_holds_the_organs_of_the_real_ct() {
    let Some(dir) = common::shared_data() else { return };
    let ct = xaiclip::read_volume(dir.join("ct_small.nii.gz")).unwrap();
    let labels = xaiclip::read_labels(dir.join("ct_small_seg.nii.gz"), LabelIds::Totalseg, &ct).unwrap();
    for (row, (_, organ)) in coverage("ct_small", &ct, &labels, &ORGANS, Intensity::ABDOMEN).iter().zip(ORGANS) {
        assert!(row[2] >= 0.95 && row[3] <= 0.35, "ct_small {organ}: {row:?}");
    }
}

#[test]
fn the_volume_clip_roi_holds_the_organs_of_held_out_mr_phantoms() {
    use xaiclip::phantom::Sequence;
    for seed in [9001, 9002] {
        for sequence in [Sequence::T1InPhase, Sequence::T1OpposedPhase, Sequence::T2Spir] {
            let p = xaiclip::phantom::generate_mr(seed, 256, 20, sequence);
            let name = format!("MR phantom {seed} {}", sequence.name());
            for (row, (_, organ)) in
                coverage(&name, &p.image, &p.labels, &ORGANS, Intensity::MrPercentile).iter().zip(ORGANS)
            {
                assert!(row[2] >= 0.95 && row[3] <= 0.35, "{name} {organ}: {row:?}");
            }
        }
    }
}

#[test]
fn one_slice_gets_its_own_map_thresholded_on_its_own() {
    // The ROI of a run that perturbs one axial slice: that slice's map, as in the whole-volume run, and a
    // threshold of its own (as a slice's CLIP ROI has), nothing on the other slices.
    let p = xaiclip::phantom::generate(9001, 128, 12);
    let finder = ClipRoiFinder::load(&CpuBackend, &ClipOptions::default(), Intensity::ABDOMEN.modality()).unwrap();
    let range = Intensity::ABDOMEN.range(&p.image);
    let whole = clip_volume(&CpuBackend, &finder, &p.image, range, 1, |_, _| {}).unwrap();
    let plane = p.image.dims[0] * p.image.dims[1];
    let k = 6;
    let one = clip_slice(&CpuBackend, &finder, &p.image, range, 1, k).unwrap();
    assert_eq!(one.slices, 1);
    let on = k * plane..(k + 1) * plane;
    assert_eq!(one.probability[on.clone()], whole.probability[on.clone()]);
    assert!(one.probability.iter().enumerate().all(|(v, &x)| on.contains(&v) || x == 0.0));
    assert!(one.mask.iter().enumerate().all(|(v, &m)| on.contains(&v) || !m));
    let liver = p.labels[on.clone()].iter().zip(&one.mask[on]).filter(|(&l, &m)| l == 1 && m).count();
    println!("slice {k}: {liver} liver voxels in its CLIP mask");
    assert!(liver > 0, "the slice's mask holds liver");
}
