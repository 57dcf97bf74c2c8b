//! CPU throughput: the machine's SGEMM peak through the backend's GEMM, the U-Net's conv shapes, and
//! a whole BasicUNet forward. Throughput is reported in FLOP/s (criterion's "elem/s" = FLOP/s here).
//!
//! Run: cargo bench --bench unet

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use xaiclip::backend::{cpu::sgemm, Backend, CpuBackend};
use xaiclip::models::{BasicUNet, UNetConfig};
use xaiclip::rng::Philox;
use xaiclip::tensor::Tensor;

// What the binary runs with (aligned activations).
#[global_allocator]
static ALLOC: xaiclip::backend::cpu::CacheAligned = xaiclip::backend::cpu::CacheAligned;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let rng = Philox::new(seed);
    Tensor::new(shape, (0..n as u64).map(|i| rng.uniform(i) - 0.5).collect()).unwrap()
}

fn sgemm_peak(c: &mut Criterion) {
    let mut group = c.benchmark_group("sgemm");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    // Square: the machine's peak. Thin: the im2col product of a 32->32 3x3 conv over one 2048-pixel tile.
    for &(m, n, k) in &[(2048usize, 2048usize, 2048usize), (32, 2048, 288)] {
        let (a, b) = (random(&[m, k], 1), random(&[k, n], 2));
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{m}x{n}x{k}")), |bench| {
            bench.iter(|| sgemm(m, n, k, a.data(), b.data(), &mut out))
        });
    }
    group.finish();
}

fn paper_unet_config() -> UNetConfig {
    UNetConfig::from_json(
        r#"{"spatial_dims": 2, "in_channels": 1, "out_channels": 14, "features": [32, 32, 64, 128, 256, 32]}"#,
    )
    .unwrap()
}

fn conv_layers(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv3x3_batch16");
    group.sample_size(10).measurement_time(Duration::from_secs(6));
    // Conv shapes by level, (cin, cout, side): the bundled U-Net's full-resolution layers (1->16, 16->16,
    // decoder 32->16), then the paper-sized model's.
    for &(cin, cout, side) in &[
        (1usize, 16usize, 256usize),
        (16, 16, 256),
        (32, 16, 256),
        (32, 32, 256),
        (64, 32, 256),
        (32, 64, 64),
        (256, 256, 16),
    ] {
        let x = random(&[16, cin, side, side], 3);
        let w = random(&[cout, cin, 3, 3], 4);
        let b = random(&[cout], 5);
        group.throughput(Throughput::Elements((2 * 9 * cin * cout * side * side * 16) as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{cin}to{cout}@{side}")), |bench| {
            bench.iter(|| CpuBackend.conv2d(&x, &w, Some(&b), 1, 1).unwrap())
        });
        if let Some(bf16) = CpuBackend::bf16().filter(|_| side == 256) {
            group.bench_function(BenchmarkId::from_parameter(format!("{cin}to{cout}@{side}_bf16")), |bench| {
                bench.iter(|| bf16.conv2d(&x, &w, Some(&b), 1, 1).unwrap())
            });
        }
    }
    group.finish();
}

/// 3-D convolutions of a volumetric BasicUNet (features 16,16,32,64,128,16) on a 96 x 96 x 96 patch, one
/// patch at a time as sliding-window inference runs them, and nnU-Net's anisotropic (1, 3, 3) kernel.
/// Throughput in FLOP, to read against the sgemm group's peak.
fn conv3d_layers(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv3d_patch96");
    group.sample_size(10).measurement_time(Duration::from_secs(6));
    for &(cin, cout, side, k) in &[
        (1usize, 16usize, 96usize, [3usize, 3, 3]),
        (16, 16, 96, [3, 3, 3]),
        (32, 32, 48, [3, 3, 3]),
        (64, 64, 24, [3, 3, 3]),
        (32, 32, 48, [1, 3, 3]),
    ] {
        let x = random(&[1, cin, side, side, side], 3);
        let w = random(&[cout, cin, k[0], k[1], k[2]], 4);
        let b = random(&[cout], 5);
        let taps = k.iter().product::<usize>();
        group.throughput(Throughput::Elements((2 * taps * cin * cout * side * side * side) as u64));
        let pad = k.map(|v| v / 2);
        group.bench_function(
            BenchmarkId::from_parameter(format!("{cin}to{cout}@{side}_k{}{}{}", k[0], k[1], k[2])),
            |bench| bench.iter(|| CpuBackend.conv3d(&x, &w, Some(&b), [1; 3], pad).unwrap()),
        );
    }
    group.finish();
}

/// The bundled U-Net (features 16,16,32,64,128,16: what the explainers run) at batch 1, 16 and 64, and
/// the wider paper-sized BasicUNet (32,32,64,128,256,32) at batch 1 and 16; both at batch 16 with bf16
/// convolutions where the CPU has AVX512-BF16.
fn unet_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("unet_forward_256");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    let bundled =
        BasicUNet::load_dir(&CpuBackend, &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/unet"))
            .unwrap();
    let paper = BasicUNet::random(&CpuBackend, paper_unet_config(), 9).unwrap();
    for (name, model, batches) in [("bundled", &bundled, &[1usize, 16, 64][..]), ("paper", &paper, &[1, 16][..])] {
        for &batch in batches {
            let x = random(&[batch, 1, 256, 256], 10);
            group.throughput(Throughput::Elements((model.flops(&[256, 256]) * batch as f64) as u64));
            group.bench_function(BenchmarkId::from_parameter(format!("{name}_batch{batch}")), |bench| {
                bench.iter(|| model.forward(&CpuBackend, &x).unwrap())
            });
            match CpuBackend::bf16() {
                Some(bf16) if batch == 16 => {
                    group.bench_function(BenchmarkId::from_parameter(format!("{name}_batch{batch}_bf16")), |bench| {
                        bench.iter(|| model.forward(&bf16, &x).unwrap())
                    });
                }
                None if batch == 16 => println!("SKIP: {name} bf16: this CPU has no AVX512-BF16"),
                _ => {}
            }
        }
    }
    group.finish();
}

fn setup(_: &mut Criterion) {
    xaiclip::backend::cpu::reuse_freed_memory();
}

criterion_group!(benches, setup, sgemm_peak, conv_layers, conv3d_layers, unet_forward);
criterion_main!(benches);
