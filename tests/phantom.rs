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
    let mut sums = [(0.0f64, 0usize); 14];
    // Interior voxels only (all 8 in-plane neighbours share the label): the blur mixes organ edges with
    // their surroundings, as partial volume does on a scanner.
    for k in 0..slices {
        for r in 1..n - 1 {
            for c in 1..n - 1 {
                let i = c + n * (r + n * k);
                let l = p.labels[i];
                if (-1isize..=1)
                    .all(|dr| (-1isize..=1).all(|dc| p.labels[(i as isize + dc + dr * n as isize) as usize] == l))
                {
                    sums[l as usize].0 += p.ct.data[i] as f64;
                    sums[l as usize].1 += 1;
                }
            }
        }
    }
    let mean = |l: usize| sums[l].0 / sums[l].1.max(1) as f64;
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
    let has = |l: u8, pred: &dyn Fn(f32) -> bool| p.ct.data.iter().zip(&p.labels).any(|(&v, &x)| x == l && pred(v));
    assert!(has(11, &|v| v < -700.0), "stomach gas");
    assert!(has(0, &|v| v > 400.0), "bone");
    assert!(has(0, &|v| (-130.0..-70.0).contains(&v)), "fat");
    assert!(has(0, &|v| v < -900.0), "air around the body");
}
