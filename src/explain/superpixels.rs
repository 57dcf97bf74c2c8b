//! Superpixels on the windowed slice (model grid): SLIC (Achanta et al. 2012) and Felzenszwalb &
//! Huttenlocher (2004), both restricted to a mask so ROI mode segments only the ROI.
//!
//! Output: one label per pixel, -1 outside the mask, segments numbered 0..count.

#[derive(Clone, Debug)]
/// A superpixel id per pixel and how many there are.
pub struct Segments {
    /// Superpixel per pixel (model grid), -1 where none is perturbed.
    pub labels: Vec<i32>,
    /// Number of superpixels.
    pub count: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
/// The algorithm named on the command line (`--segmenter`).
pub enum SegmenterKind {
    /// SLIC.
    Slic,
    /// Felzenszwalb's graph-based segmentation.
    Felzenszwalb,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
/// Superpixel algorithm and its parameters.
pub enum Segmenter {
    /// `segments` wanted, `compactness` weighs space against intensity (intensities in [0, 1]).
    #[allow(missing_docs)] // see the variant's doc
    Slic { segments: usize, compactness: f32 },
    /// skimage's parameters: `scale` (on a 0-255 intensity scale), Gaussian `sigma`, `min_size` pixels.
    #[allow(missing_docs)] // see the variant's doc
    Felzenszwalb { scale: f32, sigma: f32, min_size: usize },
}

impl Segmenter {
    /// SLIC superpixels wanted when none are asked for.
    pub const SLIC_SEGMENTS: usize = 64;
    /// SLIC's weight of space against intensity (intensities in [0, 1]).
    pub const SLIC_COMPACTNESS: f32 = 0.1;
    /// Felzenszwalb with skimage's usual parameters (scale 100, sigma 0.5, min_size 50).
    pub const FELZENSZWALB: Segmenter = Segmenter::Felzenszwalb { scale: 100.0, sigma: 0.5, min_size: 50 };

    /// SLIC with `segments` superpixels and the default compactness.
    pub fn slic(segments: usize) -> Self {
        Segmenter::Slic { segments, compactness: Self::SLIC_COMPACTNESS }
    }

    /// Supervoxels of a (D, H, W) `image` inside `mask`: SLIC in 3-D (`segments` wanted over the mask);
    /// Felzenszwalb is for slices only.
    pub fn segment_volume(&self, image: &[f32], dims: [usize; 3], mask: &[bool]) -> anyhow::Result<Segments> {
        match *self {
            Segmenter::Slic { segments, compactness } => {
                Ok(relabel(slic(image, dims, mask, segments.max(1), compactness)))
            }
            Segmenter::Felzenszwalb { .. } => {
                anyhow::bail!("--segmenter felzenszwalb is for slices; volumes use SLIC supervoxels (--segmenter slic)")
            }
        }
    }

    /// Superpixels of `image` (size x size) inside `mask`.
    pub fn segment(&self, image: &[f32], size: usize, mask: &[bool]) -> Segments {
        let labels = match *self {
            Segmenter::Slic { segments, compactness } => {
                slic(image, [1, size, size], mask, segments.max(1), compactness)
            }
            Segmenter::Felzenszwalb { scale, sigma, min_size } => {
                felzenszwalb(image, size, mask, scale / 255.0, sigma, min_size)
            }
        };
        relabel(labels)
    }
}

/// Renumbers labels to 0..count in first-seen order (raster scan), keeping -1.
fn relabel(labels: Vec<i32>) -> Segments {
    let mut map = std::collections::HashMap::new();
    let labels: Vec<i32> = labels
        .into_iter()
        .map(|l| {
            if l < 0 {
                return -1;
            }
            let next = map.len() as i32;
            *map.entry(l).or_insert(next)
        })
        .collect();
    Segments { labels, count: map.len() }
}

/// SLIC on a (D, H, W) grid (a slice is [1, size, size]): centres on a regular grid of `step` voxels,
/// step = (mask voxels / k)^(1 / axes longer than one), then k-means in (position, intensity) within
/// 2 steps of each centre. An axis of one voxel adds exact zeros, so a slice segments as in 2-D.
fn slic(image: &[f32], dims: [usize; 3], mask: &[bool], k: usize, compactness: f32) -> Vec<i32> {
    let inside = mask.iter().filter(|&&m| m).count();
    if inside == 0 {
        return vec![-1; image.len()];
    }
    let [d, h, w] = dims;
    let volumetric = d > 1;
    let per_centre = inside as f32 / k as f32;
    let step = (if volumetric { per_centre.cbrt() } else { per_centre.sqrt() }).max(1.0);
    // Centres (z, y, x, intensity) on a regular grid, kept where the grid point lies in the mask.
    let positions = |n: usize| -> Vec<f32> {
        if n == 1 {
            return vec![0.0];
        }
        (0..).map(|i| step / 2.0 + i as f32 * step).take_while(|&p| p < n as f32).collect()
    };
    let index = |z: usize, y: usize, x: usize| (z * h + y) * w + x;
    let mut centres: Vec<[f32; 4]> = Vec::new();
    for &z in &positions(d) {
        for &y in &positions(h) {
            for &x in &positions(w) {
                let q = index(z as usize, y as usize, x as usize);
                if mask[q] {
                    centres.push([z, y, x, image[q]]);
                }
            }
        }
    }
    if centres.is_empty() {
        return mask.iter().map(|&m| if m { 0 } else { -1 }).collect();
    }
    let spatial = (compactness / step).powi(2);
    let distance2 = |c: &[f32; 4], q: usize| {
        let (z, y, x) = ((q / (h * w)) as f32, ((q / w) % h) as f32, (q % w) as f32);
        (z - c[0]).powi(2) + (y - c[1]).powi(2) + (x - c[2]).powi(2)
    };
    let reach = |c: f32, n: usize| (c - 2.0 * step).max(0.0) as usize..((c + 2.0 * step) as usize + 1).min(n);
    let mut labels = vec![-1i32; image.len()];
    let mut dist = vec![f32::INFINITY; image.len()];
    for _ in 0..10 {
        dist.fill(f32::INFINITY);
        for (c, centre) in centres.iter().enumerate() {
            for zz in reach(centre[0], d) {
                for yy in reach(centre[1], h) {
                    for xx in reach(centre[2], w) {
                        let q = index(zz, yy, xx);
                        if !mask[q] {
                            continue;
                        }
                        let dc = image[q] - centre[3];
                        let d = dc * dc + distance2(centre, q) * spatial;
                        if d < dist[q] {
                            dist[q] = d;
                            labels[q] = c as i32;
                        }
                    }
                }
            }
        }
        let mut acc = vec![[0f64; 5]; centres.len()];
        for (q, &l) in labels.iter().enumerate() {
            if l >= 0 {
                let a = &mut acc[l as usize];
                a[0] += (q / (h * w)) as f64;
                a[1] += ((q / w) % h) as f64;
                a[2] += (q % w) as f64;
                a[3] += image[q] as f64;
                a[4] += 1.0;
            }
        }
        for (centre, a) in centres.iter_mut().zip(&acc) {
            if a[4] > 0.0 {
                *centre = std::array::from_fn(|i| (a[i] / a[4]) as f32);
            }
        }
    }
    // Mask voxels no centre reached (beyond 2 steps of every centre) join the nearest centre.
    for q in 0..image.len() {
        if mask[q] && labels[q] < 0 {
            let nearest = centres.iter().enumerate().min_by(|a, b| distance2(a.1, q).total_cmp(&distance2(b.1, q)));
            labels[q] = nearest.map_or(0, |(c, _)| c as i32);
        }
    }
    let min_size = if volumetric { step * step * step / 8.0 } else { step * step / 4.0 };
    enforce_connectivity(labels, dims, min_size as usize)
}

/// Splits every label into its face-connected components, then merges components smaller than
/// `min_size` into the component of an earlier neighbour (SLIC's connectivity step).
fn enforce_connectivity(labels: Vec<i32>, dims: [usize; 3], min_size: usize) -> Vec<i32> {
    let n = labels.len();
    let mut comp = vec![-1i32; n];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..n {
        if labels[start] < 0 || comp[start] >= 0 {
            continue;
        }
        let id = sizes.len() as i32;
        let mut count = 0;
        comp[start] = id;
        stack.push(start);
        while let Some(q) = stack.pop() {
            count += 1;
            for nb in neighbours(q, dims) {
                if comp[nb] < 0 && labels[nb] == labels[start] {
                    comp[nb] = id;
                    stack.push(nb);
                }
            }
        }
        sizes.push(count);
    }
    // Merge small components into an adjacent component (first found in raster order).
    let mut target: Vec<i32> = (0..sizes.len() as i32).collect();
    for q in 0..n {
        let c = comp[q];
        if c >= 0 && sizes[c as usize] < min_size && target[c as usize] == c {
            if let Some(nb) = neighbours(q, dims).find(|&nb| comp[nb] >= 0 && comp[nb] != c) {
                target[c as usize] = comp[nb];
            }
        }
    }
    let resolve = |mut c: i32| {
        for _ in 0..sizes.len() {
            let t = target[c as usize];
            if t == c {
                break;
            }
            c = t;
        }
        c
    };
    comp.iter().map(|&c| if c < 0 { -1 } else { resolve(c) }).collect()
}

/// The face neighbours of voxel `q` on a (D, H, W) grid: rows, then columns, then slices (a slice's
/// order does not depend on its depth of one).
fn neighbours(q: usize, [d, h, w]: [usize; 3]) -> impl Iterator<Item = usize> {
    let (z, y, x) = (q / (h * w), (q / w) % h, q % w);
    [
        (y > 0).then(|| q - w),
        (y + 1 < h).then(|| q + w),
        (x > 0).then(|| q - 1),
        (x + 1 < w).then(|| q + 1),
        (z > 0).then(|| q - h * w),
        (z + 1 < d).then(|| q + h * w),
    ]
    .into_iter()
    .flatten()
}

struct DisjointSets {
    parent: Vec<usize>,
    size: Vec<usize>,
    internal: Vec<f32>,
}

impl DisjointSets {
    fn find(&mut self, mut a: usize) -> usize {
        while self.parent[a] != a {
            self.parent[a] = self.parent[self.parent[a]];
            a = self.parent[a];
        }
        a
    }

    fn union(&mut self, a: usize, b: usize, weight: f32) {
        let (a, b) = if self.size[a] < self.size[b] { (b, a) } else { (a, b) };
        self.parent[b] = a;
        self.size[a] += self.size[b];
        self.internal[a] = weight;
    }
}

fn felzenszwalb(image: &[f32], size: usize, mask: &[bool], k: f32, sigma: f32, min_size: usize) -> Vec<i32> {
    let smooth = if sigma > 0.0 { super::gaussian_blur(image, size, sigma) } else { image.to_vec() };
    // 8-connectivity: right, down, down-right, down-left.
    let mut edges: Vec<(f32, usize, usize)> = Vec::new();
    for y in 0..size {
        for x in 0..size {
            let q = y * size + x;
            if !mask[q] {
                continue;
            }
            let mut add = |nb: usize| {
                if mask[nb] {
                    edges.push(((smooth[q] - smooth[nb]).abs(), q, nb));
                }
            };
            if x + 1 < size {
                add(q + 1);
            }
            if y + 1 < size {
                add(q + size);
                if x + 1 < size {
                    add(q + size + 1);
                }
                if x > 0 {
                    add(q + size - 1);
                }
            }
        }
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = image.len();
    let mut sets = DisjointSets { parent: (0..n).collect(), size: vec![1; n], internal: vec![0.0; n] };
    for &(w, a, b) in &edges {
        let (ra, rb) = (sets.find(a), sets.find(b));
        if ra != rb
            && w <= (sets.internal[ra] + k / sets.size[ra] as f32).min(sets.internal[rb] + k / sets.size[rb] as f32)
        {
            sets.union(ra, rb, w);
        }
    }
    for &(w, a, b) in &edges {
        let (ra, rb) = (sets.find(a), sets.find(b));
        if ra != rb && (sets.size[ra] < min_size || sets.size[rb] < min_size) {
            sets.union(ra, rb, w);
        }
    }
    (0..n).map(|q| if mask[q] { sets.find(q) as i32 } else { -1 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four flat quadrants of distinct intensity: both segmenters must not mix them, and labels cover
    /// exactly the mask.
    #[test]
    fn segments_respect_edges_and_mask() {
        let size = 32;
        let image: Vec<f32> =
            (0..size * size).map(|q| 0.1 + 0.3 * (2 * (q / size / 16) + q % size / 16) as f32).collect();
        let mut mask = vec![true; size * size];
        mask[..size].fill(false);
        for seg in [
            Segmenter::Slic { segments: 16, compactness: 0.1 },
            Segmenter::Felzenszwalb { scale: 100.0, sigma: 0.0, min_size: 20 },
        ] {
            let s = seg.segment(&image, size, &mask);
            assert!(s.count >= 4, "{seg:?}: {} segments", s.count);
            for (q, (&l, &m)) in s.labels.iter().zip(&mask).enumerate() {
                assert_eq!(l < 0, !m, "{seg:?}: mask at {q}");
            }
            for l in 0..s.count as i32 {
                let values: Vec<f32> = (0..size * size).filter(|&q| s.labels[q] == l).map(|q| image[q]).collect();
                assert!(values.iter().all(|&v| v == values[0]), "{seg:?}: segment {l} mixes intensities");
            }
        }
    }

    /// Eight flat octants of distinct intensity in a 24³ volume, the first slab masked out: SLIC
    /// supervoxels cover the mask exactly, do not mix octants, are connected, and number about as asked.
    #[test]
    fn supervoxels_respect_edges_and_mask() {
        let n = 24;
        let octant = |q: usize| 4 * (q / (n * n) / 12) + 2 * ((q / n) % n / 12) + q % n / 12;
        let image: Vec<f32> = (0..n * n * n).map(|q| 0.05 + 0.12 * octant(q) as f32).collect();
        let mask: Vec<bool> = (0..n * n * n).map(|q| q / (n * n) >= 2).collect();
        let s = Segmenter::slic(48).segment_volume(&image, [n, n, n], &mask).unwrap();
        assert!((24..=96).contains(&s.count), "{} supervoxels", s.count);
        for (q, (&l, &m)) in s.labels.iter().zip(&mask).enumerate() {
            assert_eq!(l < 0, !m, "mask at {q}");
        }
        for l in 0..s.count as i32 {
            let members: Vec<usize> = (0..n * n * n).filter(|&q| s.labels[q] == l).collect();
            assert!(members.iter().all(|&q| octant(q) == octant(members[0])), "supervoxel {l} mixes octants");
            let (mut seen, mut stack) = (vec![false; n * n * n], vec![members[0]]);
            seen[members[0]] = true;
            while let Some(q) = stack.pop() {
                for nb in neighbours(q, [n, n, n]) {
                    if s.labels[nb] == l && !seen[nb] {
                        seen[nb] = true;
                        stack.push(nb);
                    }
                }
            }
            assert_eq!(seen.iter().filter(|&&b| b).count(), members.len(), "supervoxel {l} is split");
        }
        let felzenszwalb = Segmenter::FELZENSZWALB.segment_volume(&image, [n, n, n], &mask).unwrap_err();
        assert!(felzenszwalb.to_string().contains("volumes use SLIC supervoxels"));
    }
}
