//! A small dense f32 tensor: row-major (C-contiguous), shape-checked at construction.
//!
//! Images travel as NCHW; token sequences as (N, L, D). Nothing here is clever on purpose: the backends
//! own the fast paths, this type only guarantees that `data.len()` matches `shape`.

use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
/// A dense f32 tensor in row-major order with its shape: the host form every backend uploads from.
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` holding `data`; refuses a length that does not match.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            bail!("tensor of shape {shape:?} needs {expected} values, got {}", data.len());
        }
        Ok(Self { shape: shape.to_vec(), data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    /// The shape, outermost axis first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The values, consuming the tensor.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// (N, C, H, W) of a rank-4 tensor; an error names the actual shape otherwise.
    pub fn nchw(&self) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => bail!("expected an NCHW tensor, got shape {:?}", self.shape),
        }
    }

    /// Same data, new shape with the same number of elements.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        Self::new(shape, self.data)
    }

    /// The largest absolute value (0 when empty).
    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    /// Largest |a - b| / max(|b|, floor) over all elements; NaN anywhere gives infinity so that a NaN never
    /// passes a tolerance check.
    pub fn max_rel_error(&self, reference: &Tensor, floor: f32) -> f32 {
        if self.shape != reference.shape {
            return f32::INFINITY;
        }
        let mut worst = 0.0f32;
        for (&a, &b) in self.data.iter().zip(&reference.data) {
            let err = (a - b).abs() / b.abs().max(floor);
            if err.is_nan() {
                return f32::INFINITY;
            }
            worst = worst.max(err);
        }
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_wrong_length() {
        assert!(Tensor::new(&[2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::new(&[2, 3], vec![0.0; 6]).is_ok());
    }

    #[test]
    fn rel_error_never_passes_nan() {
        let a = Tensor::new(&[2], vec![1.0, f32::NAN]).unwrap();
        let b = Tensor::new(&[2], vec![1.0, 1.0]).unwrap();
        assert_eq!(a.max_rel_error(&b, 1e-6), f32::INFINITY);
        let c = Tensor::new(&[2], vec![1.0, 1.1]).unwrap();
        assert!((c.max_rel_error(&b, 1e-6) - 0.1).abs() < 1e-6);
    }
}
