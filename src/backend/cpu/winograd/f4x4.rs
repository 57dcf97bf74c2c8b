//! Winograd F(4x4, 3x3) on wide planes (rows of 64 outputs and more) in f32, the CPU's `--precision
//! tf32`: each 4 x 4 output tile is `A^T [sum over input channels of (G w G^T) . (B^T d B)] A` over 6 x 6
//! input patches (points 0, ±1, ±2, Lavin & Gray 2016), 36 products per 16 outputs, input and output
//! channel, where F(2x2, 3x3) makes 64: the 16-channel layers of the U-Nets at 128² and up spent half
//! their time in those GEMMs. Not the f32 default: its rounding error, ~8x F(2x2)'s, took the MONAI
//! bundle parity fixture's logits (tests/bundle_parity.rs) from 5.6e-5 to 1.5e-4 relative (the bar is
//! 1e-4; the points 0, ±1, 2, -1/2 gave 1.0e-4, with transforms 30% dearer).
//! A chunk is 32 tiles of one tile row (128 output columns), two vectors of 16 tiles; a tile's six
//! patch columns are picked from the row with permutes after the transform along y, which needs none.
//! The GEMMs and the chunk's scheduling are F(2x2, 3x3)'s ([`super::run`]).
//!
//! Rounding: the input transform sums up to 4 values weighted by up to 5, the output transform up to
//! 6 products weighted by up to 8, the weights' transform is computed in f64; against the direct sums
//! that is an error of ~1e-6 of the outputs' magnitude (the tests bound it). Every output is computed
//! alike on any number of threads.

use super::{block_gemms, Job, BLOCK, CHUNK, F32, LANES};
use crate::backend::volume::Conv3d;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Transform positions (6 x 6) of one tile.
const XI: usize = 36;
/// Output columns of a tile.
const TILE: usize = 4;
/// One input channel's transformed chunk: its 36 positions, then a vector of padding (as in F(2x2,
/// 3x3), so that the channels the GEMMs read at once fall into different cache sets).
const V_CHANNEL: usize = XI * CHUNK + LANES;

/// Whether F(4x4, 3x3) takes a convolution `super::applies` accepts: rows of 64 outputs or more (a
/// vector of 16 tiles), transformed weights up to 128 x 64 channels (1.2 MiB, read by every chunk).
pub(super) fn applies(g: &Conv3d) -> bool {
    g.output[2] >= LANES * TILE && g.cin * g.cout <= 128 * 64 && !super::small_planes(g)
}

/// `G w G^T` of each (output, input) channel's 3x3 kernel, in f64, as [block][position][input
/// channel][block output channels], zero beyond `cout`; one task per block.
pub(super) fn transform_weights(weight: &[f32], g: &Conv3d) -> Vec<f32> {
    const G: [[f64; 3]; 6] = [
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    let cin = g.cin;
    let mut u = vec![0f32; g.cout.div_ceil(BLOCK) * XI * cin * BLOCK];
    u.par_chunks_mut(XI * cin * BLOCK).enumerate().for_each(|(block, u)| {
        for j in 0..BLOCK.min(g.cout - block * BLOCK) {
            for ci in 0..cin {
                let w = &weight[((block * BLOCK + j) * cin + ci) * 9..][..9];
                // G w along y (kernel rows), then (G w) G^T along x.
                let gw: [[f64; 3]; 6] = std::array::from_fn(|a| {
                    std::array::from_fn(|kx| (0..3).map(|ky| G[a][ky] * w[ky * 3 + kx] as f64).sum())
                });
                for (a, gw) in gw.iter().enumerate() {
                    for (b, gb) in G.iter().enumerate() {
                        let value: f64 = (0..3).map(|kx| gw[kx] * gb[kx]).sum();
                        u[((a * 6 + b) * cin + ci) * BLOCK + j] = value as f32;
                    }
                }
            }
        }
    });
    u
}

/// Chunks of the image: tile rows of 4 output rows x runs of 32 tiles, per slice.
pub(super) fn chunks(job: &Job) -> usize {
    let [od, oh, ow] = job.g.output;
    od * oh.div_ceil(TILE) * ow.div_ceil(TILE * CHUNK)
}

/// Chunk k of every output channel: the inputs' transform, the 36 GEMMs and the outputs' transform back
/// to back on data in L1/L2.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn chunk(job: &Job, k: usize, scratch: &mut Vec<f32>, out: *mut f32) {
    let g = job.g;
    let [od, oh, ow] = g.output;
    let w = g.input[2];
    let cin = g.cin;
    let (per_row, rows) = (ow.div_ceil(TILE * CHUNK), oh.div_ceil(TILE));
    let (z, ty, x0) = (k / (per_row * rows), k / per_row % rows, TILE * CHUNK * (k % per_row));
    let halves = (ow - x0).div_ceil(TILE * LANES).min(CHUNK / LANES);
    let need = cin * V_CHANNEL + XI * BLOCK * CHUNK;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (v, m) = scratch.split_at_mut(cin * V_CHANNEL);
    let (v, m) = (v.as_mut_ptr(), m.as_mut_ptr());
    // The six input rows of the tile row's patches (None: padding above or below the image).
    let lines = job.rows::<6>(z, TILE * ty);
    // The four input rows the next tile row adds, fetched into L2 a tile row ahead: the loads of the
    // rows stalled on L3 and memory (16 channels' rows, 64 KiB apart, defeat the hardware prefetcher).
    let [_, _, ahead @ ..] = job.rows::<6>(z, TILE * (ty + 1));
    let (first, last) = (x0.saturating_sub(1), (x0 + TILE * CHUNK + 4).min(w));
    for (ci, channel) in job.channels.iter().enumerate() {
        for &at in ahead.iter().flatten() {
            for x in (first..last).step_by(LANES) {
                _mm_prefetch::<_MM_HINT_T1>(channel.as_ptr().add(at + x).cast());
            }
        }
        let rows = lines.map(|at| at.map_or(job.zeros.as_ptr(), |at| channel.as_ptr().add(at)));
        for half in 0..halves {
            let x = (x0 + TILE * LANES * half) as isize - 1;
            transform_input(rows, x, w, v.add(ci * V_CHANNEL + half * LANES));
        }
    }
    for block in 0..g.cout.div_ceil(BLOCK) {
        block_gemms::<F32>(job.u.as_ptr().add(block * XI * cin * BLOCK), v, m, XI, cin, V_CHANNEL, halves);
        for j in 0..BLOCK.min(g.cout - block * BLOCK) {
            let co = block * BLOCK + j;
            let bias = _mm512_set1_ps(job.bias.map_or(0.0, |b| b[co]));
            let channel = out.add(co * od * oh * ow);
            for half in 0..halves {
                let x = x0 + TILE * LANES * half;
                let y = transform_output(m.add(j * CHUNK + half * LANES), bias);
                for (r, row) in y.iter().enumerate().filter(|(r, _)| TILE * ty + r < oh) {
                    let at = channel.add((z * oh + TILE * ty + r) * ow + x);
                    for (q, &values) in row.iter().enumerate().filter(|(q, _)| x + LANES * q < ow) {
                        super::store(at.add(LANES * q), values, ow - x - LANES * q);
                    }
                }
            }
        }
    }
}

/// B^T d B of 16 tiles of one input channel: `rows` are the six input rows of their patches (a row of
/// zeros for the padding), `x` the column the first patch starts at (one left of its first output);
/// columns outside the row read as zeros. Position (a, b) goes to `v + (6 a + b) * CHUNK`.
#[inline(always)]
unsafe fn transform_input(rows: [*const f32; 6], x: isize, w: usize, v: *mut f32) {
    // Along y, on whole vectors of the rows: the 16 tiles' 4 * 16 + 2 columns are five vectors.
    // (Loops, not closures: a closure's intrinsics are not inlined into the AVX-512 caller.)
    let mut t = [[_mm512_setzero_ps(); 5]; 6];
    // Vector i of every transformed row (a transpose, so not an iterator over one row).
    #[allow(clippy::needless_range_loop)]
    for i in 0..5 {
        let mut d = [_mm512_setzero_ps(); 6];
        for (d, &row) in d.iter_mut().zip(&rows) {
            *d = super::load(row, x + (LANES * i) as isize, w);
        }
        for (a, value) in bt(d).into_iter().enumerate() {
            t[a][i] = value;
        }
    }
    // Along x: patch column c of tile l is column 4 l + c of the five vectors.
    for (a, t) in t.iter().enumerate() {
        for (b, value) in bt(columns(t)).into_iter().enumerate() {
            _mm512_storeu_ps(v.add((6 * a + b) * CHUNK), value);
        }
    }
}

/// The six patch columns of 16 tiles from five vectors of a row (tile l: values 4 l .. 4 l + 5).
#[inline(always)]
unsafe fn columns(row: &[__m512; 5]) -> [__m512; 6] {
    // Columns 0-3: tiles 0-7 from the first two vectors, tiles 8-15 from the next two.
    let mut p = [_mm512_setzero_ps(); 6];
    let mut idx = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    for p in &mut p[..4] {
        let (low, high) = (_mm512_permutex2var_ps(row[0], idx, row[1]), _mm512_permutex2var_ps(row[2], idx, row[3]));
        *p = _mm512_mask_blend_ps(0xff00, low, high);
        idx = _mm512_add_epi32(idx, _mm512_set1_epi32(1));
    }
    // Columns 4 and 5 are columns 0 and 1 of the next tile; the last tile's come from the fifth vector.
    let next = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
    p[4] = _mm512_permutex2var_ps(p[0], next, row[4]);
    p[5] = _mm512_permutex2var_ps(p[1], _mm512_mask_add_epi32(next, 0x8000, next, _mm512_set1_epi32(1)), row[4]);
    p
}

/// B^T d of one column (or row) of a 6 x 6 patch.
#[inline(always)]
unsafe fn bt([d0, d1, d2, d3, d4, d5]: [__m512; 6]) -> [__m512; 6] {
    let (two, four, five) = (_mm512_set1_ps(2.0), _mm512_set1_ps(4.0), _mm512_set1_ps(5.0));
    let a = _mm512_fnmadd_ps(four, d2, d4);
    let b = _mm512_fnmadd_ps(four, d1, d3);
    let c = _mm512_sub_ps(d4, d2);
    let e = _mm512_mul_ps(two, _mm512_sub_ps(d3, d1));
    [
        _mm512_fmadd_ps(four, d0, _mm512_fnmadd_ps(five, d2, d4)),
        _mm512_add_ps(a, b),
        _mm512_sub_ps(a, b),
        _mm512_add_ps(c, e),
        _mm512_sub_ps(c, e),
        _mm512_fmadd_ps(four, d1, _mm512_fnmadd_ps(five, d3, d5)),
    ]
}

/// A^T s of one column (or row) of a 6 x 6 product.
#[inline(always)]
unsafe fn at([s0, s1, s2, s3, s4, s5]: [__m512; 6]) -> [__m512; 4] {
    let (a1, b1) = (_mm512_add_ps(s1, s2), _mm512_sub_ps(s1, s2));
    let (a2, b2) = (_mm512_add_ps(s3, s4), _mm512_sub_ps(s3, s4));
    [
        _mm512_add_ps(_mm512_add_ps(s0, a1), a2),
        _mm512_fmadd_ps(_mm512_set1_ps(2.0), b2, b1),
        _mm512_fmadd_ps(_mm512_set1_ps(4.0), a2, a1),
        _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), b2, b1), s5),
    ]
}

/// A^T m A + bias of 16 tiles of one output channel (`m`: position p at `m + p * BLOCK * CHUNK`), as
/// the four output rows of the tiles, each 64 columns in four vectors.
#[inline(always)]
unsafe fn transform_output(m: *const f32, bias: __m512) -> [[__m512; 4]; 4] {
    let mut o = [[_mm512_setzero_ps(); 6]; 4];
    // Column b of every row (a transpose, so not an iterator over one row).
    #[allow(clippy::needless_range_loop)]
    for b in 0..6 {
        let mut s = [_mm512_setzero_ps(); 6];
        for (a, s) in s.iter_mut().enumerate() {
            *s = _mm512_loadu_ps(m.add((6 * a + b) * BLOCK * CHUNK));
        }
        for (r, value) in at(s).into_iter().enumerate() {
            o[r][b] = value;
        }
    }
    // Columns c of the tiles (lanes: tiles) interleaved into rows: pairs (c0, c1) and (c2, c3) of each
    // tile first, then the two pairs of four tiles per vector.
    let pairs_low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let pairs_high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let quads_low = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
    let quads_high = _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
    let mut y = [[_mm512_setzero_ps(); 4]; 4];
    for (y, row) in y.iter_mut().zip(o) {
        let [c0, c1, c2, c3] = at(row);
        let (c0, c1, c2, c3) =
            (_mm512_add_ps(c0, bias), _mm512_add_ps(c1, bias), _mm512_add_ps(c2, bias), _mm512_add_ps(c3, bias));
        let (first, second) = (_mm512_permutex2var_ps(c0, pairs_low, c1), _mm512_permutex2var_ps(c2, pairs_low, c3));
        let (third, fourth) = (_mm512_permutex2var_ps(c0, pairs_high, c1), _mm512_permutex2var_ps(c2, pairs_high, c3));
        *y = [
            _mm512_permutex2var_ps(first, quads_low, second),
            _mm512_permutex2var_ps(first, quads_high, second),
            _mm512_permutex2var_ps(third, quads_low, fourth),
            _mm512_permutex2var_ps(third, quads_high, fourth),
        ];
    }
    y
}
