//! The layer order written in src/lib.rs, checked on the source: every `crate::` path a library module
//! names must be of a layer below its own (or its own module), `backend` names nothing above it, and
//! no library module names the command line (which lives in the binary, src/cli/).

use std::path::Path;

/// Top to bottom, as src/lib.rs lists them; modules on one line are one layer.
const LAYERS: &[&[&str]] = &[
    &["eval"],
    &["explainer"],
    &["selftest", "bench", "report"],
    &["pipeline", "volumes"],
    &["dataset", "metrics"],
    &["explain", "roi", "segment"],
    &["models"],
    &["backend"],
    &["preprocess", "resample", "phantom", "render"],
    &["io", "weights"],
    &["tensor", "rng", "organs", "threshold", "error"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Library source files with the top-level module each belongs to.
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(&src).unwrap().to_string_lossy().to_string();
            if rel == "cli" || rel == "main.rs" || rel == "lib.rs" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if rel.ends_with(".rs") {
                let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
                out.push((module, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out
}

/// The top-level modules a file names through `crate::` (in `use` lines and inline paths).
fn named(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for piece in text.split("crate::").skip(1) {
        let name: String = piece.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && name != "fail" {
            out.push(name);
        }
    }
    out
}

#[test]
fn every_module_names_only_modules_below_it() {
    let files = sources();
    assert!(files.len() > 30, "found only {} source files", files.len());
    let mut violations = Vec::new();
    for (module, text) in &files {
        let own = layer(module).unwrap_or_else(|| panic!("module {module} is not in the layer list"));
        for other in named(text) {
            if other == *module {
                continue;
            }
            match layer(&other) {
                Some(l) if l > own => {}
                Some(_) => violations.push(format!("{module} names {other}")),
                None => violations.push(format!("{module} names {other}, which is not a library layer")),
            }
        }
    }
    assert!(violations.is_empty(), "layer violations: {violations:#?}");
}

#[test]
fn the_layer_list_matches_lib_rs() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let declared: Vec<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';')).collect();
    let mut listed: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    let mut declared_sorted = declared.clone();
    listed.sort();
    declared_sorted.sort();
    assert_eq!(listed, declared_sorted, "tests/layers.rs and src/lib.rs list different modules");
    assert!(!declared.contains(&"cli"), "the command line belongs to the binary");
}

#[test]
fn the_checker_catches_an_upward_import() {
    // A backend file that named the explainers would be a violation.
    let names = named("use crate::explain::MaskBatch;\nlet x = crate::tensor::Tensor::zeros(&[1]);");
    assert_eq!(names, ["explain", "tensor"]);
    assert!(layer("explain").unwrap() < layer("backend").unwrap());
}
