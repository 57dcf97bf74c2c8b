//! NIfTI geometry read as nibabel reads it: sform/qform precedence, qfac, negative pixdims, the base
//! affine of files without codes; and refusal where nibabel yields NaN, a singular matrix or raises.
//! Fixtures: tests/fixtures/make_nifti_geometry.py (nibabel 5.4.2) writes the files and nibabel's affines.

mod common;

#[test]
fn affines_match_nibabel_or_the_file_is_refused() {
    let dir = common::repo().join("tests/fixtures/nifti_geometry");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected.as_object().unwrap();
    assert!(cases.len() >= 10);
    for (name, want) in cases {
        let path = dir.join(format!("{name}.nii"));
        let got = xaiclip::io::read_image(&path);
        if let Some(reason) = want["refused"].as_str() {
            let e = format!("{:#}", got.err().unwrap_or_else(|| panic!("{name}: read although nibabel cannot")));
            assert!(e.contains(reason) && e.contains(&format!("{name}.nii")), "{name}: {e}");
            continue;
        }
        let v = got.unwrap_or_else(|e| panic!("{name}: {e:#}"));
        for (r, row) in want["affine"].as_array().unwrap().iter().enumerate() {
            for (c, x) in row.as_array().unwrap().iter().enumerate() {
                let x = x.as_f64().unwrap();
                assert!(
                    (v.affine[r][c] - x).abs() < 1e-5,
                    "{name}: affine[{r}][{c}] = {} vs nibabel {x}",
                    v.affine[r][c]
                );
            }
        }
    }
}
