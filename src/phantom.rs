//! Synthetic abdominal CT and MR phantoms: a volume (HU, or MR signal of one sequence) and its FLARE22
//! label map, reproducible per seed; a seed gives the same anatomy in every modality.
//!
//! Organs are smooth blobs (ellipses with a few random boundary harmonics) whose size follows a taper
//! over their superior-inferior extent, placed where abdominal anatomy puts them in the radiological
//! view (image left = patient right, top = anterior). Densities follow contrast-enhanced portal-venous
//! CT: fat about -100 HU, muscle 50, liver 110, spleen 120, kidneys 160, aorta 180, bone 400-700, bowel
//! air -900. A Gaussian blur (the scanner's point spread) and noise finish the image. All randomness comes
//! from Philox under the seed, so a seed always gives the same bytes.
//!
//! MR phantoms paint the same anatomy with the signal equations of the CHAOS sequences (1.5 T; Kavur et
//! al., Med. Image Anal. 69:101950, 2021): T1-weighted spoiled gradient echo in phase and opposed phase,
//! and fat-suppressed (SPIR) T2-weighted turbo spin echo. Water and fat signals are blurred separately
//! and then added (in phase) or subtracted (opposed phase), so partial-volume voxels at fat-water
//! interfaces cancel as on a scanner (the "India ink" rim). A smooth multiplicative coil bias field and
//! Rician noise (the magnitude of complex Gaussian noise) finish the image.

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

    /// A standard normal (Box-Muller, cosine branch).
    fn gauss(&mut self) -> f64 {
        let (u1, u2) = ((self.sym() + 1.0) / 2.0, (self.sym() + 1.0) / 2.0);
        (-2.0 * (u1.max(1e-12)).ln()).sqrt() * (2.0 * PI * u2).cos()
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

/// A synthetic image and its labels.
pub struct Phantom {
    /// HU (CT) or MR signal (arbitrary units, as scanners store it) on a 1.5 mm grid (at 256 px), RAS
    /// affine.
    pub image: Volume,
    /// FLARE22 labels on the same grid.
    pub labels: Vec<u8>,
}

/// An MR sequence of the CHAOS data set, at 1.5 T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sequence {
    /// T1-weighted spoiled gradient echo, TE 4.6 ms: water and fat signals add.
    T1InPhase,
    /// The same acquisition's TE 2.3 ms echo: water and fat signals subtract.
    T1OpposedPhase,
    /// T2-weighted turbo spin echo with spectral fat suppression (SPIR).
    T2Spir,
}

impl Sequence {
    /// The name in file names and reports (`t1_in_phase`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Sequence::T1InPhase => "t1_in_phase",
            Sequence::T1OpposedPhase => "t1_opposed_phase",
            Sequence::T2Spir => "t2_spir",
        }
    }
}

/// Field of view across a slice and the volume's height, whatever the voxel counts.
const FOV_MM: f64 = 384.0;
const HEIGHT_MM: f64 = 160.0;

/// The painted (noise-free, unblurred) anatomy of one seed.
struct Painted {
    hu: Vec<f32>,
    tissue: Vec<Tissue>,
    labels: Vec<u8>,
}

fn paint_volume(root: Philox, size: usize, slices: usize) -> Painted {
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
    let n = size * size * slices;
    let mut out = Painted { hu: vec![0.0; n], tissue: vec![Tissue::Air; n], labels: vec![0; n] };
    for k in 0..slices {
        let t = (k as f64 + 0.5) / slices as f64;
        for row in 0..size {
            let y = (row as f64 + 0.5) / size as f64;
            for col in 0..size {
                let x = (col as f64 + 0.5) / size as f64;
                let idx = col + size * (row + size * k);
                (out.hu[idx], out.tissue[idx], out.labels[idx]) =
                    paint(x, y, t, body, fat_layer, &shapes, &loop_shapes);
            }
        }
    }
    out
}

/// The volume on the phantom grid: LPS voxel axes (column -> patient left, row -> posterior) expressed
/// in RAS+.
fn volume(seed: u64, size: usize, slices: usize, data: Vec<f32>) -> Volume {
    let (sp, dz) = (FOV_MM / size as f64, HEIGHT_MM / slices as f64);
    let origin = (FOV_MM / 2.0, FOV_MM / 2.0, -HEIGHT_MM / 2.0);
    let affine = [[-sp, 0.0, 0.0, origin.0], [0.0, -sp, 0.0, origin.1], [0.0, 0.0, dz, origin.2], [0.0, 0.0, 0.0, 1.0]];
    Volume {
        dims: [size, size, slices],
        data,
        affine,
        source: PathBuf::from(format!("phantom-seed{seed}")),
        nifti_header: None,
        modality: None,
    }
}

/// A CT phantom of `slices` axial slices of `size` x `size` pixels (field of view 384 mm, 160 mm tall),
/// stored in DICOM order (LPS voxel axes) with an RAS+ affine.
pub fn generate(seed: u64, size: usize, slices: usize) -> Phantom {
    let root = Philox::new(seed);
    let Painted { mut hu, labels, .. } = paint_volume(root, size, slices);
    blur(&mut hu, size, slices, 0.9);
    let mut noise = Draws { rng: root.stream(2), next: 0 };
    for v in hu.iter_mut() {
        *v += (noise.gauss() * 12.0) as f32;
    }
    let hu: Vec<f32> = hu.iter().map(|v| v.round().clamp(-1024.0, 3071.0)).collect();
    Phantom { image: volume(seed, size, slices, hu), labels }
}

/// An MR phantom of the same anatomy as `generate(seed, size, slices)` (same labels), in `sequence`'s
/// contrast: unsigned 12-bit values as scanners store them, with a per-seed gain and bias field.
/// CHAOS's MR series are about 256 x 256 pixels of 1.4-1.9 mm and 5.5-9 mm slices: `size` 256 and
/// `slices` 20 (8 mm) resemble them.
pub fn generate_mr(seed: u64, size: usize, slices: usize, sequence: Sequence) -> Phantom {
    let (mut images, labels) = generate_mr_series(seed, size, slices, &[sequence]);
    Phantom { image: images.remove(0), labels }
}

/// The MR phantoms of several sequences of one seed (as `generate_mr` gives each), the anatomy painted
/// once: one image per sequence, and the labels they share.
pub fn generate_mr_series(seed: u64, size: usize, slices: usize, sequences: &[Sequence]) -> (Vec<Volume>, Vec<u8>) {
    let root = Philox::new(seed);
    let Painted { tissue, labels, .. } = paint_volume(root, size, slices);
    let images =
        sequences.iter().map(|&q| volume(seed, size, slices, mr_signal(root, &tissue, size, slices, q))).collect();
    (images, labels)
}

/// One sequence's stored values of a painted anatomy: signal, blur, bias field, Rician noise.
fn mr_signal(root: Philox, tissue: &[Tissue], size: usize, slices: usize, sequence: Sequence) -> Vec<f32> {
    let (mut water, mut fat): (Vec<f32>, Vec<f32>) = tissue
        .iter()
        .map(|&t| {
            let r = relaxation(t);
            let s = (r.pd * signal(sequence, r)) as f32;
            (s * (1.0 - r.fat), s * r.fat)
        })
        .unzip();
    // Blurred apart and combined after, as the scanner's point spread acts on the complex signal.
    blur(&mut water, size, slices, 0.9);
    blur(&mut fat, size, slices, 0.9);
    let mut d = Draws { rng: root.stream(3), next: 0 };
    // A smooth multiplicative receive-coil field, the model N3/N4 correct (Sled et al., IEEE TMI 17:87,
    // 1998): exp of a random quadratic in the normalised coordinates, about +-20% across the body.
    let bias: [f64; 6] = std::array::from_fn(|_| 0.08 * d.sym());
    let gain = 2500.0 * (1.0 + 0.2 * d.sym());
    let sigma = 0.008; // Rician noise: liver SNR about 25 on T1, 15 on T2
    let mut data = Vec::with_capacity(water.len());
    for k in 0..slices {
        let z = (2.0 * k as f64 + 1.0) / slices as f64 - 1.0;
        for row in 0..size {
            let y = (2.0 * row as f64 + 1.0) / size as f64 - 1.0;
            for col in 0..size {
                let x = (2.0 * col as f64 + 1.0) / size as f64 - 1.0;
                let i = col + size * (row + size * k);
                let s = match sequence {
                    Sequence::T1OpposedPhase => (water[i] - fat[i]).abs(),
                    Sequence::T1InPhase => water[i] + fat[i],
                    Sequence::T2Spir => water[i] + FAT_SUPPRESSION * fat[i],
                } as f64;
                let b = (bias[0] * x + bias[1] * y + bias[2] * z + bias[3] * x * y + bias[4] * x * x + bias[5] * y * y)
                    .exp();
                let (re, im) = (s * b + sigma * d.gauss(), sigma * d.gauss());
                data.push(((re * re + im * im).sqrt() * gain).round().clamp(0.0, 4095.0) as f32);
            }
        }
    }
    data
}

/// SPIR leaves a few per cent of the fat signal (spectral saturation is never complete).
const FAT_SUPPRESSION: f32 = 0.05;

/// Relative proton density, fat signal fraction and relaxation times (ms, 1.5 T) of a tissue, plus
/// whether it flows (a flow void on spin echo).
#[derive(Clone, Copy)]
struct Relaxation {
    pd: f64,
    fat: f32,
    t1: f64,
    t2: f64,
    flows: bool,
}

/// T1 and T2 at 1.5 T: liver, spleen, pancreas, renal cortex, paravertebral muscle, subcutaneous fat and
/// vertebral marrow from de Bazelaire et al., Radiology 230:652-659 (2004), table 1; blood from
/// Stanisz et al., Magn. Reson. Med. 54:507-512 (2005). Free fluid (bile, bowel contents, CSF) takes
/// the textbook long T1/T2 of water-like fluid, and tissues neither paper measured (adrenal, bowel and
/// gastric wall) values between liver and muscle: chosen, not measured. Proton densities are relative
/// and approximate. Fat fractions: adipose tissue about 0.9, adult vertebral marrow about 0.5, normal
/// liver below 0.05 (Reeder et al., J. Magn. Reson. Imaging 34:729-749, 2011).
fn relaxation(t: Tissue) -> Relaxation {
    let r = |pd, fat, t1, t2| Relaxation { pd, fat, t1, t2, flows: false };
    match t {
        Tissue::Air | Tissue::Gas => r(0.0, 0.0, 1000.0, 1.0),
        Tissue::Fat => r(0.9, 0.9, 343.0, 58.0),
        Tissue::Muscle => r(0.7, 0.0, 856.0, 27.0),
        Tissue::BowelFluid => r(0.95, 0.0, 2500.0, 400.0),
        Tissue::CorticalBone => r(0.05, 0.0, 1000.0, 1.0),
        Tissue::Marrow => r(0.8, 0.5, 549.0, 49.0),
        Tissue::Csf => r(1.0, 0.0, 4000.0, 2000.0),
        Tissue::Organ(label) => match label {
            1 => r(0.7, 0.03, 586.0, 46.0),                                    // liver
            3 => r(0.8, 0.0, 1057.0, 79.0),                                    // spleen
            4 => r(0.7, 0.0, 584.0, 46.0),                                     // pancreas
            2 | 13 => r(0.8, 0.0, 966.0, 87.0),                                // kidneys (cortex)
            5 | 6 => Relaxation { flows: true, ..r(0.9, 0.0, 1441.0, 290.0) }, // aorta, IVC: blood
            9 => r(0.95, 0.0, 3000.0, 700.0),                                  // gallbladder: bile
            11 => r(0.9, 0.0, 2000.0, 300.0),                                  // stomach: contents and wall
            7 | 8 => r(0.75, 0.0, 750.0, 60.0),                                // adrenal glands
            _ => r(0.75, 0.0, 900.0, 50.0),                                    // duodenum, esophagus: bowel wall
        },
    }
}

/// Signal per unit proton density: spoiled gradient echo (TR 150 ms, flip 70 deg; T2 stands in for
/// T2*, the echo times being short) or turbo spin echo (TR 1800 ms, TE 80 ms; flowing blood leaves
/// the slice between excitation and refocusing, a flow void).
fn signal(sequence: Sequence, r: Relaxation) -> f64 {
    match sequence {
        Sequence::T1InPhase | Sequence::T1OpposedPhase => {
            let te = if sequence == Sequence::T1InPhase { 4.6 } else { 2.3 };
            let (e1, flip) = ((-150.0 / r.t1).exp(), 70f64.to_radians());
            flip.sin() * (1.0 - e1) / (1.0 - flip.cos() * e1) * (-te / r.t2).exp()
        }
        Sequence::T2Spir => {
            let s = (1.0 - (-1800.0 / r.t1).exp()) * (-80.0 / r.t2).exp();
            if r.flows {
                0.1 * s
            } else {
                s
            }
        }
    }
}

/// What a point is made of: decides its CT number and its MR relaxation.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tissue {
    Air,
    Fat,
    Muscle,
    BowelFluid,
    Gas,
    /// An organ's parenchyma, by FLARE22 id.
    Organ(u8),
    CorticalBone,
    Marrow,
    Csf,
}

/// HU, tissue and label of one point.
fn paint(
    x: f64,
    y: f64,
    t: f64,
    body: (f64, f64),
    fat_layer: f64,
    shapes: &[Shape],
    loops: &[(Shape, bool)],
) -> (f32, Tissue, u8) {
    let (bx, by) = ((x - 0.5) / body.0, (y - 0.5) / body.1);
    let r_body = (bx * bx + by * by).sqrt();
    if r_body > 1.0 {
        return (-1000.0, Tissue::Air, 0); // air around the patient
    }
    let (mut hu, mut tissue) = if r_body > 1.0 - fat_layer / body.1 {
        (-100.0, Tissue::Fat) // subcutaneous fat
    } else if r_body > 1.0 - (fat_layer + 0.025) / body.1 {
        (50.0, Tissue::Muscle) // abdominal wall muscle
    } else {
        (-90.0, Tissue::Fat) // visceral fat
    };
    let mut label = 0;
    // Spine: vertebral body with cortical rim, spinal canal behind it, paraspinal muscles beside.
    let spine = (0.5, 0.74);
    let dist = |c: (f64, f64), sx: f64, sy: f64| (((x - c.0) / sx).powi(2) + ((y - c.1) / sy).powi(2)).sqrt();
    for side in [-1.0, 1.0] {
        if dist((0.5 + side * 0.075, 0.8), 0.05, 0.055) < 1.0 {
            (hu, tissue) = (50.0, Tissue::Muscle);
        }
    }
    for (shape, air) in loops {
        if shape.contains(x, y, t) {
            (hu, tissue) = if *air { (-900.0, Tissue::Gas) } else { (25.0, Tissue::BowelFluid) };
        }
    }
    for s in shapes {
        if s.contains(x, y, t) {
            (hu, tissue) = (s.blob.hu, Tissue::Organ(s.blob.label));
            label = s.blob.label;
        }
    }
    // Stomach gas rises to the anterior wall.
    if label == 11 && y < 0.34 {
        (hu, tissue) = (-900.0, Tissue::Gas);
    }
    let v = dist(spine, 0.045, 0.04);
    if v < 1.0 {
        (hu, tissue) = if v > 0.8 { (700.0, Tissue::CorticalBone) } else { (300.0, Tissue::Marrow) };
        label = 0;
    } else if dist((0.5, 0.815), 0.018, 0.02) < 1.0 {
        (hu, tissue) = (15.0, Tissue::Csf); // spinal canal
    } else if dist((0.5, 0.86), 0.03, 0.025) < 1.0 {
        (hu, tissue) = (500.0, Tissue::Marrow); // posterior elements
    }
    // Ribs: small bone sections along the lateral chest wall on both sides, more of them towards the top.
    if t > 0.45 {
        for i in 0..5 {
            // From posterolateral (-0.3 pi) to anterolateral (0.25 pi), measured from the lateral point.
            let a = PI * (-0.3 + 0.55 * i as f64 / 4.0);
            for side in [-1.0, 1.0] {
                let rc = (0.5 + side * 0.88 * body.0 * a.cos(), 0.5 - 0.86 * body.1 * a.sin());
                if dist(rc, 0.012, 0.016) < 1.0 && (t * 6.0 + i as f64 * 0.37).fract() < 0.6 {
                    (hu, tissue) = (600.0, Tissue::CorticalBone);
                    label = 0;
                }
            }
        }
    }
    (hu, tissue, label)
}

/// Separable in-plane Gaussian blur (sigma in pixels): the scanner's point spread.
fn blur(values: &mut [f32], size: usize, slices: usize, sigma: f64) {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let norm: f32 = kernel.iter().sum();
    let mut tmp = vec![0f32; size * size];
    for k in 0..slices {
        let plane = &mut values[k * size * size..(k + 1) * size * size];
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
}
