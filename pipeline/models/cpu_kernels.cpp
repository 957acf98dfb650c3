// Fused float32 CPU kernels of the baseline CNN's training step, on channels-last data: the Gaussian
// readout's sampled products (torch's arithmetic, bit for bit) and its backward pass (per-image
// gathers, no (B, C, N) intermediate, no scatter across threads), BatchNorm + ELU's backward pass,
// and the depthwise convolution's weight gradient. Built on first use by
// pipeline/models/cpu_kernels.py (with -ffp-contract=off); parallel with ATen's thread pool.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

void check_float(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

// grid_sample's bilinear taps (align_corners=True, zero padding): nw, ne, sw, se.
struct Taps {
  int64_t row[4];  // pixel index y * W + x, or -1 outside the image
  float weight[4];
  float e, w, s, n;  // 1 - dx, dx, 1 - dy, dy
};

inline Taps taps(float gx, float gy, int64_t H, int64_t W) {
  Taps t;
  const float ix = (gx + 1.f) * (static_cast<float>(W - 1) / 2.f);
  const float iy = (gy + 1.f) * (static_cast<float>(H - 1) / 2.f);
  if (!std::isfinite(ix) || !std::isfinite(iy) || std::fabs(ix) > 1e9f || std::fabs(iy) > 1e9f) {
    for (int k = 0; k < 4; ++k) t.row[k] = -1, t.weight[k] = 0.f;
    t.e = t.w = t.s = t.n = 0.f;
    return t;
  }
  const float x0 = std::floor(ix), y0 = std::floor(iy);
  t.w = ix - x0, t.e = 1.f - t.w, t.n = iy - y0, t.s = 1.f - t.n;
  t.weight[0] = t.s * t.e, t.weight[1] = t.s * t.w, t.weight[2] = t.n * t.e, t.weight[3] = t.n * t.w;
  const int64_t xi = static_cast<int64_t>(x0), yi = static_cast<int64_t>(y0);
  for (int k = 0; k < 4; ++k) {
    const int64_t x = xi + (k & 1), y = yi + (k >> 1);
    t.row[k] = (x >= 0 && x < W && y >= 0 && y < H) ? y * W + x : -1;
  }
  return t;
}

// products[b, c, n] = grid_sample(x, grid)[b, c, n] * features[n, c] with torch's arithmetic (the same
// operations in the same order, fused multiply-adds where torch's build has them), so that torch's
// sum over c gives the readout's output bit for bit (fused.py checks this once per process).
// x (B, H, W, C), grid (B, N, 2), features (N, C); returns (B, C, N).
Tensor readout_products(const Tensor& x, const Tensor& grid, const Tensor& features) {
  check_float(x, "x"), check_float(grid, "grid"), check_float(features, "features");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3), N = grid.size(1);
  TORCH_CHECK(grid.size(0) == B && grid.size(2) == 2 && features.size(0) == N && features.size(1) == C,
              "readout_products: shapes do not match");
  constexpr int64_t block = 64;  // neurons per task: a (block, C) tile, stored transposed
  const int64_t pitch = C + 16;  // tile row stride, off the cache's set stride
  const int64_t blocks = (N + block - 1) / block;
  Tensor out = at::empty({B, C, N}, x.options());
  const std::vector<float> zeros(C, 0.f);
  const float *xp = x.data_ptr<float>(), *gp = grid.data_ptr<float>(), *fp = features.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * blocks, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(block * pitch);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, n0 = (task % blocks) * block, count = std::min(block, N - n0);
      const float* image = xp + b * H * W * C;
      for (int64_t j = 0; j < count; ++j) {
        const int64_t p = b * N + n0 + j;
        const Taps t = taps(gp[2 * p], gp[2 * p + 1], H, W);
        const float *r0 = t.row[0] < 0 ? zeros.data() : image + t.row[0] * C,
                    *r1 = t.row[1] < 0 ? zeros.data() : image + t.row[1] * C,
                    *r2 = t.row[2] < 0 ? zeros.data() : image + t.row[2] * C,
                    *r3 = t.row[3] < 0 ? zeros.data() : image + t.row[3] * C;
        const float w0 = t.weight[0], w1 = t.weight[1], w2 = t.weight[2], w3 = t.weight[3];
        const float* f = fp + (n0 + j) * C;
        float* v = tile.data() + j * pitch;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          // torch's grid sampler: nw + ne + sw + se, each product fused into the running sum
          const float sampled = std::fma(r3[c], w3, std::fma(r2[c], w2, std::fma(r1[c], w1, r0[c] * w0)));
          v[c] = sampled * f[c];
        }
      }
      float* o = op + b * C * N + n0;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t j = 0; j < count; ++j) o[c * N + j] = tile[j * pitch + c];
    }
  });
  return out;
}

// Gradients of y[b, n] = sum_c features[n, c] * grid_sample(x, grid)[b, c, n] (align_corners=True, zero
// padding): (grad_x (B, H, W, C), grad_grid (B, N, 2), grad_features (N, C)); x (B, H, W, C), grid (B, N, 2).
// Each image's grad_x is written by one thread (parallel over images); grad_features is summed
// from per-thread partials.
std::tuple<Tensor, Tensor, Tensor> readout_backward(const Tensor& grad, const Tensor& x, const Tensor& grid,
                                                    const Tensor& features) {
  check_float(grad, "grad"), check_float(x, "x"), check_float(grid, "grid"), check_float(features, "features");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3), N = grid.size(1);
  Tensor grad_x = at::zeros_like(x), grad_grid = at::empty_like(grid);
  const int64_t threads = at::get_num_threads();
  Tensor partial = at::zeros({threads, N, C}, x.options());
  std::vector<float> zeros(C, 0.f), scratch(threads * C, 0.f);
  const float *xp = x.data_ptr<float>(), *gp = grid.data_ptr<float>(), *fp = features.data_ptr<float>();
  const float* dy = grad.data_ptr<float>();
  float *gxp = grad_x.data_ptr<float>(), *ggp = grad_grid.data_ptr<float>(), *pp = partial.data_ptr<float>();
  const float scale_x = static_cast<float>(W - 1) / 2.f, scale_y = static_cast<float>(H - 1) / 2.f;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    const int64_t thread = at::get_thread_num();
    float* sink = scratch.data() + thread * C;  // taps outside the image write here
    float* gf_all = pp + thread * N * C;
    for (int64_t b = begin; b < end; ++b) {
      const float* image = xp + b * H * W * C;
      float* grad_image = gxp + b * H * W * C;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t p = b * N + n;
        const Taps t = taps(gp[2 * p], gp[2 * p + 1], H, W);
        const float g = dy[p];
        const float* r[4];
        float* o[4];
        for (int k = 0; k < 4; ++k) {
          r[k] = t.row[k] < 0 ? zeros.data() : image + t.row[k] * C;
          o[k] = t.row[k] < 0 ? sink : grad_image + t.row[k] * C;
        }
        const float w0 = t.weight[0], w1 = t.weight[1], w2 = t.weight[2], w3 = t.weight[3];
        const float a0 = w0 * g, a1 = w1 * g, a2 = w2 * g, a3 = w3 * g;
        const float* f = fp + n * C;
        float* gf = gf_all + n * C;
        float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
        for (int64_t c = 0; c < C; ++c) {
          const float fc = f[c], v0 = r[0][c], v1 = r[1][c], v2 = r[2][c], v3 = r[3][c];
          gf[c] += g * (v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3);
          o[0][c] += a0 * fc, o[1][c] += a1 * fc, o[2][c] += a2 * fc, o[3][c] += a3 * fc;
          d0 += fc * v0, d1 += fc * v1, d2 += fc * v2, d3 += fc * v3;
        }
        ggp[2 * p] = ((d1 - d0) * t.s + (d3 - d2) * t.n) * g * scale_x;
        ggp[2 * p + 1] = ((d2 - d0) * t.e + (d3 - d1) * t.w) * g * scale_y;
      }
    }
  });
  return {grad_x, grad_grid, partial.sum(0)};
}

// With dz = dy * ELU'(z) taken from the output y = ELU(z): per-channel sums of dz and of dz * (x - mean), in double.
std::tuple<Tensor, Tensor> bn_elu_backward_sums(const Tensor& dy, const Tensor& y, const Tensor& x,
                                                const Tensor& mean) {
  check_float(dy, "dy"), check_float(y, "y"), check_float(x, "x"), check_float(mean, "mean");
  const int64_t M = x.size(0), C = x.size(1), threads = at::get_num_threads();
  std::vector<double> sums(threads * 2 * C, 0.0);
  const float *gp = dy.data_ptr<float>(), *yp = y.data_ptr<float>(), *xp = x.data_ptr<float>();
  const float* mu = mean.data_ptr<float>();
  at::parallel_for(0, M, 2048, [&](int64_t begin, int64_t end) {
    double* s = sums.data() + at::get_thread_num() * 2 * C;
    std::vector<float> s1(C), s2(C);
    for (int64_t start = begin; start < end; start += 64) {
      std::fill(s1.begin(), s1.end(), 0.f), std::fill(s2.begin(), s2.end(), 0.f);
      for (int64_t m = start; m < std::min(end, start + 64); ++m) {
        const int64_t o = m * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float v = yp[o + c], dz = v > 0.f ? gp[o + c] : gp[o + c] * (v + 1.f);
          s1[c] += dz, s2[c] += dz * (xp[o + c] - mu[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c) s[c] += s1[c], s[C + c] += s2[c];
    }
  });
  Tensor sum_dz = at::empty({C}, x.options()), sum_dz_xc = at::empty({C}, x.options());
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t t = 0; t < threads; ++t) s1 += sums[t * 2 * C + c], s2 += sums[t * 2 * C + C + c];
    sum_dz.data_ptr<float>()[c] = static_cast<float>(s1);
    sum_dz_xc.data_ptr<float>()[c] = static_cast<float>(s2);
  }
  return {sum_dz, sum_dz_xc};
}

// dx = scale * (dz - mean_dz) + slope * (x - mean), per channel.
Tensor bn_elu_backward_input(const Tensor& dy, const Tensor& y, const Tensor& x, const Tensor& mean,
                             const Tensor& scale, const Tensor& mean_dz, const Tensor& slope) {
  for (const Tensor* t : {&dy, &y, &x, &mean, &scale, &mean_dz, &slope})
    check_float(*t, "bn_elu_backward_input argument");
  const int64_t M = x.size(0), C = x.size(1);
  Tensor dx = at::empty_like(x);
  const float *gp = dy.data_ptr<float>(), *yp = y.data_ptr<float>(), *xp = x.data_ptr<float>();
  const float *mu = mean.data_ptr<float>(), *a = scale.data_ptr<float>(), *md = mean_dz.data_ptr<float>(),
              *k = slope.data_ptr<float>();
  float* out = dx.data_ptr<float>();
  at::parallel_for(0, M, 256, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const int64_t o = m * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float v = yp[o + c], dz = v > 0.f ? gp[o + c] : gp[o + c] * (v + 1.f);
        out[o + c] = a[c] * (dz - md[c]) + k[c] * (xp[o + c] - mu[c]);
      }
    }
  });
  return dx;
}

// acc[j, c] += sum_ow g_row[ow, c] * x_pad[ow + j * dw, c] over the kw taps of one kernel row. With the
// tap count fixed at compile time (KW > 0) and C a multiple of 16, the accumulators stay in registers.
template <int64_t KW>
void tap_row(const float* g_row, const float* x_pad, int64_t Wo, int64_t C, int64_t kw, int64_t dw, float* acc) {
  if constexpr (KW > 0) {
    constexpr int64_t L = 16;
    for (int64_t c0 = 0; c0 < C; c0 += L) {
      float a[KW][L] = {};
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const float* gv = g_row + ow * C + c0;
        for (int64_t j = 0; j < KW; ++j) {
          const float* xv = x_pad + (ow + j * dw) * C + c0;
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) a[j][l] += gv[l] * xv[l];
        }
      }
      for (int64_t j = 0; j < KW; ++j)
        for (int64_t l = 0; l < L; ++l) acc[j * C + c0 + l] += a[j][l];
    }
  } else {
    for (int64_t ow = 0; ow < Wo; ++ow)
      for (int64_t j = 0; j < kw; ++j) {
        const float *gv = g_row + ow * C, *xv = x_pad + (ow + j * dw) * C;
        float* aj = acc + j * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) aj[c] += gv[c] * xv[c];
      }
  }
}

// Weight gradient (kh, kw, C) of a stride-1 depthwise convolution; grad (B, Ho, Wo, C), x (B, H, W, C).
// Parallel over input rows: each is zero-padded once, then correlated with every output row it feeds.
Tensor depthwise_weight_grad(const Tensor& grad, const Tensor& x, int64_t kh, int64_t kw, int64_t ph, int64_t pw,
                             int64_t dh, int64_t dw) {
  check_float(grad, "grad"), check_float(x, "x");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3), Ho = grad.size(1), Wo = grad.size(2);
  TORCH_CHECK(grad.size(0) == B && grad.size(3) == C, "depthwise_weight_grad: shapes do not match");
  const int64_t Wp = Wo + (kw - 1) * dw;  // padded row: input column iw sits at iw + pw
  auto row_taps = C % 16 ? tap_row<0> : kw == 3 ? tap_row<3> : kw == 5 ? tap_row<5> : kw == 7 ? tap_row<7>
                : kw == 9 ? tap_row<9> : tap_row<0>;
  const int64_t taps = kh * kw, threads = at::get_num_threads();
  std::vector<double> totals(threads * taps * C, 0.0);
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    double* total = totals.data() + at::get_thread_num() * taps * C;
    std::vector<float> acc(taps * C), x_pad(Wp * C, 0.f);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, ih = row % H;
      const int64_t copied = std::min(W, Wp - pw);
      std::copy_n(xp + row * W * C, copied * C, x_pad.data() + pw * C);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t oh = ih + ph - i * dh;  // the output row that reads this input row through kernel row i
        if (oh >= 0 && oh < Ho)
          row_taps(gp + (b * Ho + oh) * Wo * C, x_pad.data(), Wo, C, kw, dw, acc.data() + i * kw * C);
      }
      for (int64_t q = 0; q < taps * C; ++q) total[q] += acc[q];
    }
  });
  Tensor out = at::empty({kh, kw, C}, x.options());
  float* op = out.data_ptr<float>();
  for (int64_t q = 0; q < taps * C; ++q) {
    double s = 0.0;
    for (int64_t t = 0; t < threads; ++t) s += totals[t * taps * C + q];
    op[q] = static_cast<float>(s);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(v1fabrik, m) {
  m.def("readout_products", &readout_products);
  m.def("readout_backward", &readout_backward);
  m.def("bn_elu_backward_sums", &bn_elu_backward_sums);
  m.def("bn_elu_backward_input", &bn_elu_backward_input);
  m.def("depthwise_weight_grad", &depthwise_weight_grad);
}
