//! Whole-slice segmentation: window, resample to the model grid, batch through the U-Net, and map the
//! class probabilities back onto each slice's own pixels.

use crate::backend::Backend;
use crate::fail;
use crate::io::Volume;
use crate::models::SegModel;
use crate::preprocess::{argmax_on_grid, normalise, resize_bilinear, AxialLayout, Intensity};
use crate::tensor::Tensor;
use anyhow::{ensure, Result};

#[derive(Clone, Copy, Debug)]
/// How slices are segmented.
pub struct SegmentOptions {
    /// Normalisation to [0, 1].
    pub intensity: Intensity,
    /// Side of the square model input; slices are resampled to it and back.
    pub input_size: usize,
    /// Slices per forward pass.
    pub batch: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self { intensity: Intensity::ABDOMEN, input_size: 256, batch: 16 }
    }
}

/// Model input for slice `k`: normalised to [0, 1] by `range`, resampled to size x size.
pub fn model_input(
    volume: &Volume,
    layout: &AxialLayout,
    k: usize,
    range: (f32, f32),
    size: usize,
) -> Result<Vec<f32>> {
    let slice = normalise(&layout.extract(volume, k)?, range);
    Ok(resize_bilinear(&slice.data, 1, (slice.height, slice.width), (size, size)))
}

/// Label volume (same grid as `volume`) with the predicted class of every voxel in `slices`; other
/// slices stay 0. `progress` is called with the number of slices finished after each batch.
pub fn segment_slices<B: Backend>(
    backend: &B,
    model: &SegModel<B>,
    volume: &Volume,
    slices: &[usize],
    options: &SegmentOptions,
    mut progress: impl FnMut(usize),
) -> Result<Vec<u8>> {
    let (in_channels, classes) = (model.in_channels(), model.out_channels());
    ensure!(in_channels == 1, "segment needs a single-channel U-Net (in_channels = 1), this one has {}", in_channels);
    ensure!(classes <= 256, "segment writes uint8 labels: at most 256 classes, the model has {}", classes);
    if !(1..=1024).contains(&options.batch) || options.input_size < 16 {
        fail!(InvalidInput, "--batch {}: must be 1 to 1024 (and the model grid at least 16)", options.batch);
    }
    let layout = model.orientation().layout(volume)?;
    for &k in slices {
        layout.check_slice(volume, k)?;
    }
    let range = options.intensity.range(volume);
    let view = model.view(backend, volume)?;
    let model = view.as_ref().unwrap_or(model);
    let size = options.input_size;
    let slice_shape = layout.slice_shape(volume);
    let mut labels = vec![0u8; volume.voxel_count()];
    let mut done = 0;
    for chunk in slices.chunks(options.batch) {
        let mut input = Vec::with_capacity(chunk.len() * size * size);
        for &k in chunk {
            input.extend(model_input(volume, &layout, k, range, size)?);
        }
        let x = backend.upload(&Tensor::new(&[chunk.len(), 1, size, size], input)?)?;
        let probs = backend.download(&model.forward(backend, &x)?)?;
        crate::models::check_finite_outputs(probs.data())?;
        let per_item = classes * size * size;
        for (i, &k) in chunk.iter().enumerate() {
            let item = &probs.data()[i * per_item..(i + 1) * per_item];
            let slice_labels = argmax_on_grid(item, classes, (size, size), slice_shape);
            layout.insert(volume.dims, k, &slice_labels, &mut labels);
        }
        done += chunk.len();
        progress(done);
    }
    Ok(labels)
}
