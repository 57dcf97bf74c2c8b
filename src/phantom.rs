//! Synthetic abdominal CT phantoms: a volume in HU and its FLARE22 label map, reproducible per seed.
//!
//! Organs are smooth blobs (ellipses with a few random boundary harmonics) whose size follows a taper
//! over their superior-inferior extent, placed where abdominal anatomy puts them in the radiological
//! view (image left = patient right, top = anterior). Densities follow contrast-enhanced portal-venous
//! CT: fat about -100 HU, muscle 50, liver 110, spleen 120, kidneys 160, aorta 180, bone 400-700, bowel
//! air -900. A Gaussian blur (the scanner's point spread) and noise finish the image. All randomness comes
//! from Philox under the seed, so a seed always gives the same bytes.

use crate::io::Volume;
use crate::rng::Philox;
use std::f64::consts::PI;
use std::path::PathBuf;

/// One blob: centre and semi-axes as fractions of the field of view, present for t (0 = inferior end
/// of the volume, 1 = superior end) in [t0, t1].
#[derive(Clone, Copy)]
struct Blob {
    label: u8,
    hu: f32,
    centre: (f64, f64),
    semi: (f64, f64),
    angle: f64,
    t: (f64, f64),
}

/// A blob with its per-seed variation drawn.
struct Shape {
    blob: Blob,
    centre: (f64, f64),
    scale: f64,
    harmonics: [(f64, f64); 3],
    drift: (f64, f64),
}

/// Draws uniforms in [-1, 1) from consecutive counters of one stream.
struct Draws {
    rng: Philox,
    next: u64,
}

impl Draws {
    fn sym(&mut self) -> f64 {
        self.next += 1;
        self.rng.uniform(self.next - 1) as f64 * 2.0 - 1.0
    }
}

impl Shape {
    fn new(blob: Blob, d: &mut Draws) -> Self {
        Shape {
            blob,
            centre: (blob.centre.0 + 0.012 * d.sym(), blob.centre.1 + 0.012 * d.sym()),
            scale: 1.0 + 0.1 * d.sym(),
            harmonics: std::array::from_fn(|_| (0.05 * d.sym(), PI * d.sym())),
            drift: (0.015 * d.sym(), 0.015 * d.sym()),
        }
    }

    /// Inside test at image point (x, y) on the slice at height t.
    fn contains(&self, x: f64, y: f64, t: f64) -> bool {
        let (t0, t1) = self.blob.t;
        if t < t0 || t > t1 {
            return false;
        }
        // Organs taper towards their ends rather than stopping flat.
        let taper = (PI * (t - t0) / (t1 - t0)).sin().max(0.0).powf(0.4);
        let s = self.scale * taper;
        if s < 0.05 {
            return false;
        }
        let (cx, cy) = (self.centre.0 + self.drift.0 * (t * PI).sin(), self.centre.1 + self.drift.1 * (t * PI).cos());
        let (dx, dy) = (x - cx, y - cy);
        let (c, sn) = (self.blob.angle.cos(), self.blob.angle.sin());
        let (u, v) = ((dx * c + dy * sn) / (self.blob.semi.0 * s), (-dx * sn + dy * c) / (self.blob.semi.1 * s));
        let theta = v.atan2(u);
        let bound = 1.0
            + self
                .harmonics
                .iter()
                .enumerate()
                .map(|(m, (a, phase))| a * ((m + 2) as f64 * theta + phase).sin())
                .sum::<f64>();
        u * u + v * v < bound * bound
    }
}

fn blob(label: u8, hu: f32, centre: (f64, f64), semi: (f64, f64), angle: f64, t: (f64, f64)) -> Blob {
    Blob { label, hu, centre, semi, angle, t }
}

/// Painting order matters: later blobs overwrite earlier ones.
fn anatomy() -> Vec<Blob> {
    vec![
        blob(1, 110.0, (0.33, 0.46), (0.19, 0.21), 0.3, (0.25, 1.05)), // liver
        blob(9, 12.0, (0.37, 0.36), (0.035, 0.05), 0.4, (0.28, 0.55)), // gallbladder
        blob(3, 120.0, (0.74, 0.60), (0.065, 0.11), -0.5, (0.5, 1.0)), // spleen
        blob(11, 35.0, (0.64, 0.38), (0.11, 0.08), 0.3, (0.5, 1.0)),   // stomach
        blob(4, 100.0, (0.58, 0.54), (0.13, 0.025), -0.2, (0.33, 0.58)), // pancreas
        blob(12, 40.0, (0.42, 0.52), (0.035, 0.03), 0.0, (0.25, 0.52)), // duodenum
        blob(2, 160.0, (0.35, 0.68), (0.05, 0.075), -0.35, (-0.05, 0.55)), // right kidney
        blob(13, 160.0, (0.65, 0.67), (0.05, 0.075), 0.35, (0.02, 0.6)), // left kidney
        blob(7, 30.0, (0.41, 0.615), (0.02, 0.012), 0.6, (0.55, 0.72)), // right adrenal
        blob(8, 30.0, (0.60, 0.62), (0.02, 0.012), -0.6, (0.58, 0.75)), // left adrenal
        blob(5, 180.0, (0.53, 0.645), (0.025, 0.025), 0.0, (-0.1, 1.1)), // aorta
        blob(6, 140.0, (0.45, 0.62), (0.03, 0.022), 0.0, (-0.1, 0.92)), // inferior vena cava
        blob(10, 40.0, (0.52, 0.62), (0.016, 0.014), 0.0, (0.85, 1.2)), // esophagus
    ]
}

/// A synthetic CT and its labels.
pub struct Phantom {
    /// HU values on a 1.5 mm grid (at 256 px), RAS affine.
    pub ct: Volume,
    /// FLARE22 labels on the same grid.
    pub labels: Vec<u8>,
}

/// A phantom of `slices` axial slices of `size` x `size` pixels (field of view 384 mm, 160 mm tall),
/// stored in DICOM order (LPS voxel axes) with an RAS+ affine.
pub fn generate(seed: u64, size: usize, slices: usize) -> Phantom {
    let root = Philox::new(seed);
    let mut d = Draws { rng: root.stream(1), next: 0 };
    let shapes: Vec<Shape> = anatomy().into_iter().map(|b| Shape::new(b, &mut d)).collect();
    let body = (0.42 + 0.03 * d.sym(), 0.31 + 0.02 * d.sym());
    let fat_layer = 0.035 + 0.015 * d.sym();
    // Bowel loops (label 0) filling the anterior and inferior abdomen; some hold air.
    let loops: Vec<(Blob, bool)> = (0..14)
        .map(|_| {
            let centre = (0.5 + 0.25 * d.sym(), 0.38 + 0.12 * d.sym());
            let r = 0.03 + 0.012 * d.sym();
            let t0 = 0.3 * (d.sym() + 1.0) - 0.1;
            (blob(0, 25.0, centre, (r, r * 0.9), 0.0, (t0, t0 + 0.35)), d.sym() > 0.2)
        })
        .collect();
    let loop_shapes: Vec<(Shape, bool)> = loops.into_iter().map(|(b, air)| (Shape::new(b, &mut d), air)).collect();

    let fov_mm = 384.0;
    let height_mm = 160.0;
    let (sp, dz) = (fov_mm / size as f64, height_mm / slices as f64);
    let mut hu = vec![0f32; size * size * slices];
    let mut labels = vec![0u8; size * size * slices];
    for k in 0..slices {
        let t = (k as f64 + 0.5) / slices as f64;
        for row in 0..size {
            let y = (row as f64 + 0.5) / size as f64;
            for col in 0..size {
                let x = (col as f64 + 0.5) / size as f64;
                let idx = col + size * (row + size * k);
                let (value, label) = paint(x, y, t, body, fat_layer, &shapes, &loop_shapes);
                hu[idx] = value;
                labels[idx] = label;
            }
        }
    }
    let mut noise = Draws { rng: root.stream(2), next: 0 };
    blur_and_noise(&mut hu, size, slices, 0.9, 12.0, &mut noise);
    let hu: Vec<f32> = hu.iter().map(|v| v.round().clamp(-1024.0, 3071.0)).collect();
    // LPS voxel axes (column -> patient left, row -> posterior) expressed in RAS+.
    let origin = (fov_mm / 2.0, fov_mm / 2.0, -height_mm / 2.0);
    let affine = [[-sp, 0.0, 0.0, origin.0], [0.0, -sp, 0.0, origin.1], [0.0, 0.0, dz, origin.2], [0.0, 0.0, 0.0, 1.0]];
    let ct = Volume {
        dims: [size, size, slices],
        data: hu,
        affine,
        source: PathBuf::from(format!("phantom-seed{seed}")),
        nifti_header: None,
    };
    Phantom { ct, labels }
}

/// HU and label of one point.
fn paint(
    x: f64,
    y: f64,
    t: f64,
    body: (f64, f64),
    fat_layer: f64,
    shapes: &[Shape],
    loops: &[(Shape, bool)],
) -> (f32, u8) {
    let (bx, by) = ((x - 0.5) / body.0, (y - 0.5) / body.1);
    let r_body = (bx * bx + by * by).sqrt();
    if r_body > 1.0 {
        return (-1000.0, 0); // air around the patient
    }
    let mut hu = if r_body > 1.0 - fat_layer / body.1 {
        -100.0 // subcutaneous fat
    } else if r_body > 1.0 - (fat_layer + 0.025) / body.1 {
        50.0 // abdominal wall muscle
    } else {
        -90.0 // visceral fat
    };
    let mut label = 0;
    // Spine: vertebral body with cortical rim, spinal canal behind it, paraspinal muscles beside.
    let spine = (0.5, 0.74);
    let dist = |c: (f64, f64), sx: f64, sy: f64| (((x - c.0) / sx).powi(2) + ((y - c.1) / sy).powi(2)).sqrt();
    for side in [-1.0, 1.0] {
        if dist((0.5 + side * 0.075, 0.8), 0.05, 0.055) < 1.0 {
            hu = 50.0;
        }
    }
    for (shape, air) in loops {
        if shape.contains(x, y, t) {
            hu = if *air { -900.0 } else { 25.0 };
        }
    }
    for s in shapes {
        if s.contains(x, y, t) {
            hu = s.blob.hu;
            label = s.blob.label;
        }
    }
    // Stomach gas rises to the anterior wall.
    if label == 11 && y < 0.34 {
        hu = -900.0;
    }
    let v = dist(spine, 0.045, 0.04);
    if v < 1.0 {
        hu = if v > 0.8 { 700.0 } else { 300.0 };
        label = 0;
    } else if dist((0.5, 0.815), 0.018, 0.02) < 1.0 {
        hu = 15.0; // spinal canal
    } else if dist((0.5, 0.86), 0.03, 0.025) < 1.0 {
        hu = 500.0; // posterior elements
    }
    // Ribs: small bone sections along the lateral chest wall on both sides, more of them towards the top.
    if t > 0.45 {
        for i in 0..5 {
            // From posterolateral (-0.3 pi) to anterolateral (0.25 pi), measured from the lateral point.
            let a = PI * (-0.3 + 0.55 * i as f64 / 4.0);
            for side in [-1.0, 1.0] {
                let rc = (0.5 + side * 0.88 * body.0 * a.cos(), 0.5 - 0.86 * body.1 * a.sin());
                if dist(rc, 0.012, 0.016) < 1.0 && (t * 6.0 + i as f64 * 0.37).fract() < 0.6 {
                    hu = 600.0;
                    label = 0;
                }
            }
        }
    }
    (hu, label)
}

/// Separable in-plane Gaussian blur (sigma in pixels) then additive Gaussian noise (Box-Muller).
fn blur_and_noise(hu: &mut [f32], size: usize, slices: usize, sigma: f64, noise_hu: f64, d: &mut Draws) {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let norm: f32 = kernel.iter().sum();
    let mut tmp = vec![0f32; size * size];
    for k in 0..slices {
        let plane = &mut hu[k * size * size..(k + 1) * size * size];
        for pass in 0..2 {
            for a in 0..size {
                for b in 0..size {
                    let mut acc = 0.0;
                    for (o, w) in (-radius..=radius).zip(&kernel) {
                        let c = (b as isize + o).clamp(0, size as isize - 1) as usize;
                        acc += w * if pass == 0 { plane[a * size + c] } else { tmp[c * size + a] };
                    }
                    if pass == 0 {
                        tmp[a * size + b] = acc / norm;
                    } else {
                        plane[b * size + a] = acc / norm;
                    }
                }
            }
        }
    }
    for v in hu.iter_mut() {
        let (u1, u2) = ((d.sym() + 1.0) / 2.0, (d.sym() + 1.0) / 2.0);
        let g = (-2.0 * (u1.max(1e-12)).ln()).sqrt() * (2.0 * PI * u2).cos();
        *v += (g * noise_hu) as f32;
    }
}
