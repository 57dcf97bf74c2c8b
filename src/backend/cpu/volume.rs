//! The CPU twins of kernels/volume.cu: 3-D convolution (im2col over tiles of output rows + GEMM, as the
//! 2-D path), transposed convolution (GEMM + col2im), max pooling, trilinear resizing and replicate
//! padding, NCDHW. Shapes are checked in `backend::volume`.

use super::{gather_line, gemm_into_planes, matmul, vector_arg, SharedMut, TILE_COLUMNS};
use crate::backend::volume::{self, Conv3d};
use crate::tensor::Tensor;
use anyhow::Result;
use gemm::Parallelism;
use rayon::prelude::*;

/// Columns of output rows [r0, r1) (a row is one (z, y) line of W voxels) of one image: row k of `col`
/// is input channel ci at kernel tap (kz, ky, kx), zero where the tap falls in the padding.
fn im2col3d(img: &[f32], g: &Conv3d, (r0, r1): (usize, usize), col: &mut [f32]) {
    let [d, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [pd, ph, pw] = g.pad;
    let [_, oh, ow] = g.output;
    let ncols = (r1 - r0) * ow;
    for ci in 0..g.cin {
        let src = &img[ci * d * h * w..(ci + 1) * d * h * w];
        for kz in 0..kd {
            for ky in 0..kh {
                for kx in 0..kw {
                    let k = ((ci * kd + kz) * kh + ky) * kw + kx;
                    let row = &mut col[k * ncols..(k + 1) * ncols];
                    for (r, dst) in (r0..r1).zip(row.chunks_exact_mut(ow)) {
                        let (iz, iy) =
                            (((r / oh) * sd + kz) as isize - pd as isize, ((r % oh) * sh + ky) as isize - ph as isize);
                        if iz < 0 || iz >= d as isize || iy < 0 || iy >= h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        gather_line(dst, &src[(iz as usize * h + iy as usize) * w..][..w], sw, kx, pw);
                    }
                }
            }
        }
    }
}

pub(super) fn conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 3],
    pad: [usize; 3],
) -> Result<Tensor> {
    let g = Conv3d::new(x.shape(), weight.shape(), stride, pad)?;
    let bias = vector_arg(bias, g.cout, "conv3d bias")?;
    #[cfg(target_arch = "x86_64")]
    if super::direct::applies(&g) {
        return Tensor::new(
            &g.output_shape(),
            super::direct::conv3d(x.data().into(), weight.data(), bias, &g, super::elementwise::Epilogue::None),
        );
    }
    let mut out = Tensor::zeros(&g.output_shape());
    im2col_conv3d(x.data(), weight.data(), bias, &g, out.data_mut());
    Ok(out)
}

/// The reference path: im2col over tiles of output rows, then GEMM.
pub(super) fn im2col_conv3d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Conv3d, out: &mut [f32]) {
    let [od, oh, ow] = g.output;
    let (plane, kdim, in_len) = (od * oh * ow, g.kdim(), g.cin * g.input.iter().product::<usize>());
    // Tasks own (image, run of output rows) pairs whose column buffer stays near TILE_COLUMNS voxels.
    let rows = od * oh;
    let rows_per_tile = (TILE_COLUMNS / ow).clamp(1, rows);
    let tiles = rows.div_ceil(rows_per_tile);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let inner = super::gemm_parallelism(g.n * tiles);
    (0..g.n * tiles).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(col, tile_out): &mut (Vec<f32>, Vec<f32>), task| {
            let (img, tile) = (task / tiles, task % tiles);
            let (r0, r1) = (tile * rows_per_tile, ((tile + 1) * rows_per_tile).min(rows));
            let ncols = (r1 - r0) * ow;
            col.resize(kdim * ncols, 0.0);
            im2col3d(&x[img * in_len..(img + 1) * in_len], g, (r0, r1), col);
            // SAFETY: this task writes voxels [r0 ow, r1 ow) of every output channel of image `img` only;
            // col holds kdim x ncols.
            unsafe {
                gemm_into_planes(
                    (g.cout, kdim, ncols),
                    weight,
                    (col.as_ptr(), ncols as isize),
                    (out_ptr.ptr().add(img * g.cout * plane + r0 * ow), plane),
                    bias,
                    tile_out,
                    inner,
                )
            };
        },
    );
}

pub(super) fn conv_transpose3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    at: volume::Transposed,
) -> Result<Tensor> {
    let g = volume::ConvTranspose3d::new(x.shape(), weight.shape(), at)?;
    let bias = vector_arg(bias, g.cout, "conv_transpose3d bias")?;
    Ok(conv_transpose(x.data(), weight.data(), bias, &g))
}

/// Input indices [lo, hi) of one axis whose tap `t` lands inside the output: 0 <= i s - p + t < out.
fn tap_range(t: usize, stride: usize, pad: usize, input: usize, out: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(t).div_ceil(stride);
    let hi = (out + pad).saturating_sub(t).div_ceil(stride).min(input);
    (lo, hi.max(lo))
}

/// The transposed convolution of checked geometry `g` (NCDHW data; the 2-D one runs here with D = 1):
/// one GEMM per image, then each (channel, tap) plane added onto the output at its offset (col2im).
/// Images run in parallel; with fewer images than threads (batch 1), each image's GEMM and channels do.
pub(super) fn conv_transpose(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &volume::ConvTranspose3d) -> Tensor {
    let (cin, cout, [d, h, w], taps) = (g.cin, g.cout, g.input, g.kernel.iter().product::<usize>());
    let vox = d * h * w;
    let [_, _, od, oh, ow] = g.output_shape();
    let rows = cout * taps;
    let mut out = Tensor::zeros(&g.output_shape());
    let inner = g.n < rayon::current_num_threads();
    let image = |buf: &mut Vec<f32>, i: usize, dst: &mut [f32]| {
        // buf[(co, tap), voxel] = sum_ci w[ci, (co, tap)] x[ci, voxel].
        buf.resize(rows * vox, 0.0);
        let img = &x[i * cin * vox..(i + 1) * cin * vox];
        let parallelism = if inner { super::threads() } else { Parallelism::None };
        // SAFETY: buf holds rows x vox, the weight cin x rows, img cin x vox, all contiguous.
        unsafe {
            matmul(
                rows,
                vox,
                cin,
                buf.as_mut_ptr(),
                vox as isize,
                1,
                weight.as_ptr(),
                1,
                rows as isize,
                img.as_ptr(),
                vox as isize,
                1,
                parallelism,
            );
        }
        let buf = &buf[..];
        let channel = |(co, plane): (usize, &mut [f32])| {
            scatter_taps(&buf[co * taps * vox..(co + 1) * taps * vox], bias.map_or(0.0, |b| b[co]), g, plane)
        };
        if inner {
            dst.par_chunks_mut(od * oh * ow).enumerate().for_each(channel);
        } else {
            dst.chunks_mut(od * oh * ow).enumerate().for_each(channel);
        }
    };
    let per_image = cout * od * oh * ow;
    if inner {
        let mut buf = Vec::new();
        out.data_mut().chunks_mut(per_image).enumerate().for_each(|(i, dst)| image(&mut buf, i, dst));
    } else {
        out.data_mut()
            .par_chunks_mut(per_image)
            .enumerate()
            .for_each_init(Vec::new, |buf, (i, dst)| image(buf, i, dst));
    }
    out
}

/// One output channel of a transposed convolution: its bias plus every tap's plane `src` (taps x input
/// voxels) at the tap's offset.
fn scatter_taps(src: &[f32], bias: f32, g: &volume::ConvTranspose3d, plane: &mut [f32]) {
    let ([d, h, w], [kd, kh, kw]) = (g.input, g.kernel);
    let volume::Transposed { stride: [sd, sh, sw], pad: [pd, ph, pw], .. } = g.at;
    let [_, _, od, oh, ow] = g.output_shape();
    let vox = d * h * w;
    // Kernel = stride, no padding (the U-Nets' 2x upsampling): every output voxel has exactly one tap,
    // so each is written once, in order, instead of zero-filled then scattered with strides.
    if g.at.pad == [0; 3] && g.at.stride == g.kernel && [od, oh, ow] == [d * kd, h * kh, w * kw] {
        for (r, row) in plane.chunks_exact_mut(ow).enumerate() {
            let (oz, oy) = (r / oh, r % oh);
            let (line, tap_row) = ((oz / kd * h + oy / kh) * w, (oz % kd * kh + oy % kh) * kw);
            for (x, out) in row.chunks_exact_mut(kw).enumerate() {
                for (tx, v) in out.iter_mut().enumerate() {
                    *v = bias + src[(tap_row + tx) * vox + line + x];
                }
            }
        }
        return;
    }
    plane.fill(bias);
    // Taps in order, so overlapping ones add up in the same order everywhere.
    for (tap, src) in src.chunks_exact(vox).enumerate() {
        let (tz, ty, tx) = (tap / (kh * kw), (tap / kw) % kh, tap % kw);
        let (z0, z1) = tap_range(tz, sd, pd, d, od);
        let (y0, y1) = tap_range(ty, sh, ph, h, oh);
        let (x0, x1) = tap_range(tx, sw, pw, w, ow);
        for z in z0..z1 {
            for y in y0..y1 {
                let row = &mut plane[((z * sd + tz - pd) * oh + y * sh + ty - ph) * ow..][..ow];
                for (xx, &v) in src[(z * h + y) * w..][x0..x1].iter().enumerate() {
                    row[(x0 + xx) * sw + tx - pw] += v;
                }
            }
        }
    }
}

pub(super) fn max_pool3d(x: &Tensor, k: [usize; 3]) -> Result<Tensor> {
    let (n, c, [d, h, w], [od, oh, ow]) = volume::max_pool3d(x.shape(), k)?;
    let mut out = Tensor::zeros(&[n, c, od, oh, ow]);
    out.data_mut().par_chunks_mut(od * oh * ow).enumerate().for_each(|(i, dst)| {
        let src = &x.data()[i * d * h * w..(i + 1) * d * h * w];
        for (o, v) in dst.iter_mut().enumerate() {
            let (oz, oy, ox) = (o / (oh * ow), (o / ow) % oh, o % ow);
            let mut m = f32::NEG_INFINITY;
            for dz in 0..k[0] {
                for dy in 0..k[1] {
                    let line = &src[((oz * k[0] + dz) * h + oy * k[1] + dy) * w + ox * k[2]..][..k[2]];
                    m = line.iter().fold(m, |a, &b| a.max(b));
                }
            }
            *v = m;
        }
    });
    Ok(out)
}

pub(super) fn upsample_trilinear(x: &Tensor, size: [usize; 3], align_corners: bool) -> Result<Tensor> {
    let (n, c, [d, h, w]) = volume::resize3d(x.shape(), size, "upsample_trilinear")?;
    let [od, oh, ow] = size;
    let (tz, ty, tx) = (
        volume::linear_taps(d, od, align_corners),
        volume::linear_taps(h, oh, align_corners),
        volume::linear_taps(w, ow, align_corners),
    );
    let mut out = Tensor::zeros(&[n, c, od, oh, ow]);
    out.data_mut().par_chunks_mut(od * oh * ow).enumerate().for_each(|(i, dst)| {
        let src = &x.data()[i * d * h * w..(i + 1) * d * h * w];
        let at = |z: usize, y: usize, xx: usize| src[(z * h + y) * w + xx];
        for (o, v) in dst.iter_mut().enumerate() {
            let ((z0, z1, fz), (y0, y1, fy), (x0, x1, fx)) = (tz[o / (oh * ow)], ty[(o / ow) % oh], tx[o % ow]);
            // Along W, then H, then D: PyTorch's order of the three lerps.
            let line = |z, y| at(z, y, x0) * (1.0 - fx) + at(z, y, x1) * fx;
            let face = |z| line(z, y0) * (1.0 - fy) + line(z, y1) * fy;
            *v = face(z0) * (1.0 - fz) + face(z1) * fz;
        }
    });
    Ok(out)
}

pub(super) fn pad_replicate_end3d(x: &Tensor, size: [usize; 3]) -> Result<Tensor> {
    let (n, c, [d, h, w]) = volume::ncdhw(x.shape(), "pad_replicate_end3d")?;
    let [od, oh, ow] = size;
    anyhow::ensure!(
        od >= d && oh >= h && ow >= w && d * h * w > 0,
        "pad_replicate_end3d: cannot pad {:?} to {size:?}",
        [d, h, w]
    );
    let mut out = Tensor::zeros(&[n, c, od, oh, ow]);
    out.data_mut().par_chunks_mut(od * oh * ow).enumerate().for_each(|(i, dst)| {
        let src = &x.data()[i * d * h * w..(i + 1) * d * h * w];
        for (r, row) in dst.chunks_exact_mut(ow).enumerate() {
            let (z, y) = ((r / oh).min(d - 1), (r % oh).min(h - 1));
            let line = &src[(z * h + y) * w..][..w];
            row[..w].copy_from_slice(line);
            row[w..].fill(line[w - 1]);
        }
    });
    Ok(out)
}

/// Twin of the `flip3d` kernel: each (image, channel) volume reversed along the marked axes.
pub(super) fn flip3d(x: &Tensor, [fd, fh, fw]: [bool; 3]) -> Result<Tensor> {
    let (n, c, [d, h, w]) = volume::ncdhw(x.shape(), "flip3d")?;
    let mut out = Tensor::zeros(&[n, c, d, h, w]);
    if out.is_empty() {
        return Ok(out);
    }
    let at = |i: usize, len: usize, flip: bool| if flip { len - 1 - i } else { i };
    out.data_mut().par_chunks_mut(d * h * w).enumerate().for_each(|(v, dst)| {
        let src = &x.data()[v * d * h * w..(v + 1) * d * h * w];
        for (r, row) in dst.chunks_exact_mut(w).enumerate() {
            let (z, y) = (at(r / h, d, fd), at(r % h, h, fh));
            let line = &src[(z * h + y) * w..][..w];
            row.copy_from_slice(line);
            if fw {
                row.reverse();
            }
        }
    });
    Ok(out)
}
