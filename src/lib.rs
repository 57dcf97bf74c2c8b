//! xaiclip: ROI-guided perturbation explanations for medical image segmentation (XAI-CLIP).

pub mod backend;
pub mod cli;
pub mod dataset;
pub mod explain;
pub mod io;
pub mod metrics;
pub mod models;
pub mod phantom;
pub mod pipeline;
pub mod preprocess;
pub mod render;
pub mod rng;
pub mod roi;
pub mod segment;
pub mod selftest;
pub mod tensor;
pub mod weights;
