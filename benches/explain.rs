//! Explainers end to end on the bundled models and demo phantom (fixed seeds), mask generation alone,
//! and the CLIP image tower. Run: cargo bench --bench explain

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::path::Path;
use std::time::Duration;
use xaiclip::backend::CpuBackend;
use xaiclip::explain::rise::Rise;
use xaiclip::models::clip::ClipModel;
use xaiclip::models::{BasicUNet, SegModel};
use xaiclip::pipeline::{run_method, Method, Settings, SliceInput};
use xaiclip::preprocess::Intensity;
use xaiclip::roi::clip::ClipRoi;
use xaiclip::roi::RoiMode;
use xaiclip::tensor::Tensor;

// What the binary runs with (aligned activations).
#[global_allocator]
static ALLOC: xaiclip::backend::cpu::CacheAligned = xaiclip::backend::cpu::CacheAligned;

fn weights(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join(name)
}

fn masks(c: &mut Criterion) {
    let mut group = c.benchmark_group("rise_mask_256");
    let rise = Rise { masks: 1, grid: 8, p1: 0.5, seed: 0, tol: None };
    let mut out = vec![0f32; 256 * 256];
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_mask", |b| b.iter(|| rise.mask_set().mask(7, 256, &mut out)));
    group.finish();
}

fn clip_tower(c: &mut Criterion) {
    let model = ClipModel::load_dir(&CpuBackend, &weights("clip")).unwrap();
    let s = model.config().image_size;
    let x = Tensor::zeros(&[1, 3, s, s]);
    let mut group = c.benchmark_group("clip_vision");
    group.bench_function("dense_features_224", |b| b.iter(|| model.dense_image_features(&CpuBackend, &x).unwrap()));
    group.finish();
}

fn explainers(c: &mut Criterion) {
    let model = SegModel::Basic(BasicUNet::load_dir(&CpuBackend, &weights("unet")).unwrap());
    let p = xaiclip::phantom::generate(7, 256, 32);
    let range = Intensity::ABDOMEN.range(&p.image);
    let input = SliceInput::new(&p.image, 20, range, 256, Some(&p.labels), 1, Default::default()).unwrap();
    let mut settings = Settings::defaults(0);
    settings.faithfulness_steps = 0;
    settings.rise.masks = 200;
    settings.lime.samples = 100;
    settings.shap.samples = 100;
    let mut group = c.benchmark_group("explain_phantom_liver");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    for method in Method::ALL {
        group.bench_function(BenchmarkId::from_parameter(format!("{}_full", method.name())), |b| {
            b.iter(|| {
                run_method(
                    &CpuBackend,
                    &model,
                    &input,
                    &ClipRoi::default(),
                    1,
                    method,
                    RoiMode::Full,
                    &settings,
                    |_, _| {},
                    &Default::default(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn setup(_: &mut Criterion) {
    xaiclip::backend::cpu::reuse_freed_memory();
}

criterion_group!(benches, setup, masks, clip_tower, explainers);
criterion_main!(benches);
