//! Compiles kernels/*.cu with nvcc into fat binaries (sm_90 machine code + compute_90 PTX, which a CUDA
//! 13.0 driver accepts) and embeds them through OUT_DIR/kernels.rs, one constant per file, as candle's
//! kernel crates do. ptxas's resource report (registers, shared memory, spills) goes to
//! OUT_DIR/ptxas.txt and is embedded too, so `xaiclip selftest` and a test can read it.
//!
//! nvcc is looked up in NVCC, CUDA_HOME/CUDA_PATH, PATH, then a pip install of nvidia-cuda-nvcc
//! (site-packages/nvidia/cu13/bin). Without nvcc the crate still builds, CPU only, and says so at run
//! time; XAICLIP_REQUIRE_NVCC=1 (CI) turns a missing nvcc into a build error.

use std::path::{Path, PathBuf};
use std::process::Command;

const ARCH_FLAGS: [&str; 4] = ["-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_90,code=compute_90"];

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let p = Path::new(&root).join("bin/nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.is_file()) {
            return Some(p);
        }
    }
    // pip install nvidia-cuda-nvcc: ask each Python where its site-packages are.
    let pythons = std::env::var("XAICLIP_PYTHON").into_iter().chain(["python3".to_string()]);
    for python in pythons {
        let script = "import site, sysconfig; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages(), sysconfig.get_paths()['purelib']]))";
        let Ok(out) = Command::new(&python).args(["-c", script]).output() else { continue };
        for dir in String::from_utf8_lossy(&out.stdout).lines() {
            let p = Path::new(dir).join("nvidia/cu13/bin/nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The commit the crate is built from (reports record it), or "unknown" outside a git checkout. Rebuilt
/// when HEAD moves; uncommitted edits are not tracked (that would rebuild on every `git add`).
fn git_commit() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        // A branch's ref is a file, or a line of packed-refs (a path that does not exist would rerun this
        // script, and nvcc, on every build).
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let loose = Path::new(&dir).join(&reference);
            let file = if loose.is_file() { loose } else { Path::new(&dir).join("packed-refs") };
            if file.is_file() {
                println!("cargo:rerun-if-changed={}", file.display());
            }
        }
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=XAICLIP_GIT_COMMIT={commit}");
}

fn main() {
    git_commit();
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH", "XAICLIP_PYTHON", "XAICLIP_REQUIRE_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ is part of the crate")
        .map(|e| e.expect("readable kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    let nvcc = find_nvcc();
    let require = std::env::var("XAICLIP_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let mut modules = Vec::new();
    let mut report = String::new();
    let status = match &nvcc {
        None if require => panic!("XAICLIP_REQUIRE_NVCC=1 but no nvcc was found (NVCC, CUDA_HOME, CUDA_PATH, PATH, pip nvidia/cu13/bin)"),
        None => "built without nvcc: the CUDA backend is unavailable. Install nvcc (e.g. `pip install nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85`, or a CUDA toolkit) and rebuild; NVCC=/path/to/nvcc selects one".to_string(),
        Some(nvcc) => {
            for src in &sources {
                let name = src.file_stem().expect("file name").to_string_lossy().to_string();
                let fatbin = out_dir.join(format!("{name}.fatbin"));
                let output = Command::new(nvcc)
                    .args(["-O3", "--fatbin", "-std=c++17", "-Xptxas", "-v", "-Ikernels"])
                    .args(ARCH_FLAGS)
                    .arg(src)
                    .arg("-o")
                    .arg(&fatbin)
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
                let stderr = String::from_utf8_lossy(&output.stderr);
                if !output.status.success() {
                    panic!("nvcc failed on {}:\n{stderr}", src.display());
                }
                report.push_str(&format!("# {}\n{stderr}", src.display()));
                modules.push((name, fatbin));
            }
            format!("kernels compiled by {} for sm_90 (+ compute_90 PTX)", nvcc.display())
        }
    };
    std::fs::write(out_dir.join("ptxas.txt"), &report).expect("write ptxas.txt");
    let entries: String = modules
        .iter()
        .map(|(name, path)| format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()))
        .collect();
    let code = format!(
        "/// (file stem, fat binary) for each kernels/*.cu; empty when built without nvcc.\npub const MODULES: &[(&str, &[u8])] = &[\n{entries}];\n/// How the kernels were built, or why they were not.\npub const BUILD_STATUS: &str = {status:?};\n/// nvcc -Xptxas -v output for every kernel file.\npub const PTXAS_REPORT: &str = include_str!({:?});\n",
        out_dir.join("ptxas.txt").display().to_string()
    );
    std::fs::write(out_dir.join("kernels.rs"), code).expect("write kernels.rs");
}
