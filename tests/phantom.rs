//! The phantom generator: reproducible bytes, plausible densities, every required organ present.

mod common;
use common::*;

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let o = xaiclip(&["phantom", "--seed", seed, "--out", out.to_str().unwrap(), "--size", "96", "--slices", "12"]);
        assert!(o.status.success(), "{}", stderr(&o));
        (std::fs::read(out.join("ct.nii.gz")).unwrap(), std::fs::read(out.join("labels.nii.gz")).unwrap())
    };
    let (a, b, c) = (run("a", "7"), run("b", "7"), run("c", "8"));
    assert_eq!(a, b, "seed 7 twice must give identical files");
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, c.1);
}

#[test]
fn organs_have_their_densities_and_are_all_present() {
    let (n, slices) = (128, 24);
    let p = xaiclip::phantom::generate(11, n, slices);
    let mean = interior_means(&p, n, slices);
    let mean = |l: usize| mean[l];
    for (id, name) in xaiclip::organs::FLARE22_ORGANS {
        assert!(p.labels.contains(&id), "{name} (label {id}) missing");
    }
    // Expected mean HU per organ (portal-venous contrast CT), with room for blur and noise.
    for (id, lo, hi) in [
        (1, 90.0, 130.0),
        (3, 100.0, 140.0),
        (2, 135.0, 180.0),
        (13, 135.0, 180.0),
        (5, 150.0, 200.0),
        (6, 115.0, 160.0),
        (9, -10.0, 40.0),
        (4, 75.0, 115.0),
    ] {
        let m = mean(id);
        assert!((lo..hi).contains(&m), "label {id}: mean {m:.1} HU outside [{lo}, {hi}]");
    }
    // Stomach holds gas; the background holds fat, bone and outside air.
    let has = |l: u8, pred: &dyn Fn(f32) -> bool| p.image.data.iter().zip(&p.labels).any(|(&v, &x)| x == l && pred(v));
    assert!(has(11, &|v| v < -700.0), "stomach gas");
    assert!(has(0, &|v| v > 400.0), "bone");
    assert!(has(0, &|v| (-130.0..-70.0).contains(&v)), "fat");
    assert!(has(0, &|v| v < -900.0), "air around the body");
}

/// Mean value per label over interior voxels (all 8 in-plane neighbours share the label): the blur mixes
/// organ edges with their surroundings, as partial volume does on a scanner.
fn interior_means(p: &xaiclip::phantom::Phantom, n: usize, slices: usize) -> [f64; 14] {
    let mut sums = [(0.0f64, 0usize); 14];
    for k in 0..slices {
        for r in 1..n - 1 {
            for c in 1..n - 1 {
                let i = c + n * (r + n * k);
                let l = p.labels[i];
                if (-1isize..=1)
                    .all(|dr| (-1isize..=1).all(|dc| p.labels[(i as isize + dc + dr * n as isize) as usize] == l))
                {
                    sums[l as usize].0 += p.image.data[i] as f64;
                    sums[l as usize].1 += 1;
                }
            }
        }
    }
    sums.map(|(s, c)| s / c.max(1) as f64)
}

#[test]
fn mr_phantoms_have_the_contrast_of_their_sequence() {
    use xaiclip::phantom::{generate, generate_mr, Sequence};
    let (n, slices, seed) = (128, 20, 11);
    let ct = generate(seed, n, slices);
    let [t1, opposed, t2] =
        [Sequence::T1InPhase, Sequence::T1OpposedPhase, Sequence::T2Spir].map(|s| generate_mr(seed, n, slices, s));
    let (m1, mo, m2) =
        (interior_means(&t1, n, slices), interior_means(&opposed, n, slices), interior_means(&t2, n, slices));
    for p in [&t1, &opposed, &t2] {
        assert_eq!(p.labels, ct.labels, "an MR phantom must have the anatomy of the CT of its seed");
        assert_eq!(p.image.affine, ct.image.affine);
        assert!(p.image.data.iter().all(|v| (0.0..=4095.0).contains(v)), "12-bit unsigned magnitudes");
    }
    let (liver, spleen, kidney, gallbladder) = (1, 3, 2, 9);
    // T1: liver brighter than spleen, fluid dark; T2: spleen and kidney brighter than liver, bile brightest.
    assert!(m1[liver] > 1.2 * m1[spleen], "T1 liver {:.0} vs spleen {:.0}", m1[liver], m1[spleen]);
    assert!(m1[gallbladder] < 0.6 * m1[liver], "T1 bile {:.0} vs liver {:.0}", m1[gallbladder], m1[liver]);
    assert!(m2[spleen] > 1.5 * m2[liver] && m2[kidney] > 1.5 * m2[liver], "T2 {m2:?}");
    assert!(m2[gallbladder] > m2[spleen], "T2 bile {:.0} vs spleen {:.0}", m2[gallbladder], m2[spleen]);
    // Fat (found on the CT of the same seed): brightest on T1, suppressed on T2-SPIR.
    let fat: Vec<usize> =
        (0..ct.labels.len()).filter(|&i| ct.labels[i] == 0 && (-130.0..-70.0).contains(&ct.image.data[i])).collect();
    let mean_at = |p: &xaiclip::phantom::Phantom, idx: &[usize]| {
        idx.iter().map(|&i| p.image.data[i] as f64).sum::<f64>() / idx.len() as f64
    };
    assert!(fat.len() > 1000);
    assert!(mean_at(&t1, &fat) > m1[liver], "T1 fat {:.0} vs liver {:.0}", mean_at(&t1, &fat), m1[liver]);
    assert!(mean_at(&t2, &fat) < 0.5 * m2[liver], "T2-SPIR fat {:.0} vs liver {:.0}", mean_at(&t2, &fat), m2[liver]);
    // Opposed phase: water-only liver keeps its signal; half-fat vertebral marrow cancels.
    assert!(mo[liver] > 0.85 * m1[liver] && mo[liver] < m1[liver]);
    let marrow: Vec<usize> = (0..slices).map(|k| n / 2 + n * (74 * n / 100 + n * k)).collect();
    assert!(
        mean_at(&opposed, &marrow) < 0.3 * mean_at(&t1, &marrow),
        "marrow: opposed {:.0} vs in phase {:.0}",
        mean_at(&opposed, &marrow),
        mean_at(&t1, &marrow)
    );
    // Rician noise: the air around the body is a positive magnitude, not zero-mean.
    let air: Vec<usize> = (0..n * slices).map(|i| i * n).collect(); // first column of every row
    let air_mean = mean_at(&t1, &air);
    assert!(air_mean > 2.0 && air_mean < 0.1 * m1[liver], "air {air_mean:.1}");
}
