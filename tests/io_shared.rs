//! Readers and writers on the real abdominal CT in ../shared (skipped when it is absent).

mod common;
use common::*;
use xaiclip::io::{self, Volume};
use xaiclip::preprocess::AxialLayout;

/// Mean HU over the voxels of `image` whose world position is labelled `id`, and their count.
fn mean_hu_of_label(image: &Volume, labels: &Volume, id: u8) -> (f64, usize) {
    let (on_grid, _) = labels.labels_on_grid_of(image);
    let (sum, n) = image
        .data
        .iter()
        .zip(&on_grid)
        .filter(|(_, &l)| l == id)
        .fold((0.0, 0), |(s, n), (&v, _)| (s + v as f64, n + 1));
    (sum / n.max(1) as f64, n)
}

#[test]
fn nifti_ct_reads_with_geometry_and_hu() {
    let Some(dir) = shared_data() else { return };
    let ct = io::read_image(&dir.join("ct_small.nii.gz")).unwrap();
    assert_eq!(ct.dims, [122, 101, 30]);
    assert_eq!(ct.spacing().map(|s| (s * 1000.0).round() / 1000.0), [3.0, 3.0, 3.0]);
    assert_eq!(ct.orientation(), "RAS");
    let seg = io::read_image(&dir.join("ct_small_seg.nii.gz")).unwrap();
    seg.check_labels().unwrap();
    // Liver (TotalSegmentator 5) is contrast-enhanced soft tissue; a wrong slope or axis order would
    // land these voxels in fat or air.
    let (liver, n) = mean_hu_of_label(&ct, &seg, 5);
    println!("ct_small liver: {n} voxels, mean {liver:.1} HU");
    assert!(n > 100 && (20.0..200.0).contains(&liver), "liver mean {liver} HU over {n} voxels");
}

#[test]
fn dicom_series_matches_its_nifti_labels_in_world_space() {
    let Some(dir) = shared_data() else { return };
    let ct = io::read_image(&dir.join("ct_dicom")).unwrap();
    assert_eq!(ct.dims, [512, 512, 20]);
    assert_eq!(ct.orientation(), "LPS");
    let s = ct.spacing();
    assert!((s[0] - 0.9765625).abs() < 1e-6 && (s[2] - 2.0).abs() < 1e-6, "spacing {s:?}");
    let seg = io::read_image(&dir.join("ct_dicom_seg.nii.gz")).unwrap();
    // The label file stores rows flipped (LAS) relative to the DICOM (LPS): only a correct affine on
    // both sides puts liver labels on liver-density voxels and vertebra labels on bone.
    let (liver, n) = mean_hu_of_label(&ct, &seg, 5);
    println!("ct_dicom liver: {n} voxels, mean {liver:.1} HU");
    assert!(n > 1000 && (20.0..200.0).contains(&liver), "liver mean {liver} HU over {n} voxels");
    let present = seg.labels_present();
    let bone =
        present.iter().copied().find(|&l| (26..=50).contains(&l)).expect("a vertebra label (TotalSegmentator 26-50)");
    let (hu, _) = mean_hu_of_label(&ct, &seg, bone as u8);
    assert!(hu > 200.0, "vertebra {bone} mean {hu} HU");
}

#[test]
fn axial_slices_of_both_formats_show_the_same_anatomy_layout() {
    let Some(dir) = shared_data() else { return };
    for path in [dir.join("ct_small.nii.gz"), dir.join("ct_dicom")] {
        let v = io::read_image(&path).unwrap();
        let layout = AxialLayout::of(&v).unwrap();
        let slice = layout.extract(&v, layout.slices(&v) / 2).unwrap();
        // Radiological view: the spine (bright, > 300 HU) sits in the posterior (bottom) half, centred.
        let (mut row_sum, mut col_sum, mut n) = (0.0, 0.0, 0.0);
        for r in 0..slice.height {
            for c in 0..slice.width {
                if slice.data[r * slice.width + c] > 300.0 {
                    row_sum += r as f64;
                    col_sum += c as f64;
                    n += 1.0;
                }
            }
        }
        let (row, col) = (row_sum / n / slice.height as f64, col_sum / n / slice.width as f64);
        println!("{}: bone centroid at row {row:.2}, col {col:.2} (fractions)", path.display());
        assert!(row > 0.5 && (0.3..0.7).contains(&col), "{}: bone centroid row {row} col {col}", path.display());
    }
}

#[test]
fn segment_writes_labels_with_the_input_affine() {
    let Some(dir) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let unet = repo().join("tests/fixtures/unet_instance_deconv");
    for (input, slice) in [(dir.join("ct_small.nii.gz"), "all"), (dir.join("ct_dicom"), "3,10")] {
        let out = tmp.path().join("seg.nii.gz");
        let o = xaiclip(&[
            "segment",
            "--image",
            input.to_str().unwrap(),
            "--slice",
            slice,
            "--unet",
            unet.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--size",
            "64",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let image = io::read_image(&input).unwrap();
        let labels = io::read_image(&out).unwrap();
        assert_eq!(labels.dims, image.dims);
        for r in 0..4 {
            for c in 0..4 {
                assert!(
                    (labels.affine[r][c] - image.affine[r][c]).abs() < 1e-4,
                    "affine differs at ({r},{c}): {:?} vs {:?}",
                    labels.affine,
                    image.affine
                );
            }
        }
        labels.check_labels().unwrap();
        assert!(labels.labels_present().iter().all(|&l| l < 3), "fixture U-Net has 3 classes");
        if input.is_file() {
            // NIfTI in, NIfTI out: the header's own geometry codes are carried over.
            let (h_in, h_out) = (image.nifti_header.unwrap(), labels.nifti_header.unwrap());
            assert_eq!(
                (h_in.sform_code, h_in.qform_code, h_in.srow_x, h_in.pixdim[1..4].to_vec()),
                (h_out.sform_code, h_out.qform_code, h_out.srow_x, h_out.pixdim[1..4].to_vec())
            );
        }
        std::fs::remove_file(&out).unwrap();
    }
}
