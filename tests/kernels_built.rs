//! The CUDA kernels as built here: every kernel the backend launches was compiled, none is dead, and
//! ptxas reports no register spills (and no stack frame in the convolution and attention kernels, where
//! a spilled accumulator would cost most). Runs wherever build.rs found nvcc; CI installs it and fails
//! this test if the kernels were not built.

use xaiclip::backend::cuda::{ptxas_resources, BUILD_STATUS, MODULES, PTXAS_REPORT};
use xaiclip::backend::kernels::Kernel;

/// The kernels the backend launches: its typed table (every launch site names a `Kernel`).
fn launched_kernels() -> Vec<String> {
    Kernel::ALL.iter().map(|k| k.name().to_string()).collect()
}

#[test]
fn every_launched_kernel_is_built_without_spills() {
    if MODULES.is_empty() {
        assert!(std::env::var("CI").is_err(), "CI must build the kernels (.ci/run installs nvcc): {BUILD_STATUS}");
        eprintln!("SKIP: {BUILD_STATUS}");
        return;
    }
    let built = ptxas_resources(PTXAS_REPORT);
    let launched = launched_kernels();
    assert!(launched.len() >= 20, "the kernel table lists only {launched:?}");
    for k in Kernel::ALL {
        assert!(
            MODULES.iter().any(|(stem, _)| *stem == k.module()),
            "{} names module {} which was not built",
            k.name(),
            k.module()
        );
    }
    for name in &launched {
        assert!(built.iter().any(|k| &k.name == name), "{name} is launched but not in the ptxas report");
    }
    for k in &built {
        assert!(launched.contains(&k.name), "{} is built but never launched", k.name);
        assert_eq!((k.spill_stores, k.spill_loads), (0, 0), "{} spills registers: {k:?}", k.name);
        if k.name.starts_with("conv") || k.name.starts_with("attention") {
            assert_eq!(k.stack_bytes, 0, "{} uses a stack frame: {k:?}", k.name);
        }
        assert!(k.registers > 0, "{} has no register count: {k:?}", k.name);
    }
}
