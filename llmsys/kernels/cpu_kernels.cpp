// Decode kernels for x86-64 CPUs with AVX2 + FMA, compiled on first use by
// llmsys/kernels/cpu.py (torch.utils.cpp_extension). Three functions:
//
//   linear(x (M, K), w (N, K)) -> (M, N) in w's dtype, for a few rows (M <= 8): each weight
//     row is read from memory once and dotted with every row of x. Weights may be float32,
//     bfloat16 or float16 (widened to float32 in registers); sums are float32, rounded once.
//   paged_decode(q (S, Hq, D), k_cache, v_cache (Hkv, blocks, bs, D), tables (S, W),
//     context_lens (S,), window) -> (S, Hq, D) float32: one query per sequence attends over
//     its blocks in place (no gather), block by block with an online softmax.
//   write_kv(k_cache, v_cache, k, v (N, Hkv, D), blocks (N,), offsets (N,)): stores the
//     keys and values of N tokens at their cache slots.
//   rms_norm(x (M, D), w (D,), eps) -> (M, D): RMSNorm in one pass, rounded as the reference
//     does it (normalise in float32, round to x's dtype, multiply by w, round).
//   rotary(q (M, Hq, D), k (M, Hkv, D), cos, sin (M, D)) -> (q, k) rotated: q * cos +
//     roll(q, D/2) * sin (the first half of sin stored negated), each product and the sum
//     rounded to the dtype as the PyTorch expression does (the file is built without
//     floating-point contraction, so float32 is bit for bit too).
//   silu_mul(gate_up (M, 2I)) -> (M, I): silu(gate) * up of SwiGLU, rounded as F.silu(gate) *
//     up is (silu in float32, rounded, times up, rounded).
//
// Decoding is bound by memory bandwidth: what matters is streaming each weight exactly
// once with enough independent loads in flight, which a plain dot-product loop with
// several accumulators does better than the general GEMM/GEMV paths for these shapes.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// 1. Loads of 8 values as float32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {  // bfloat16 is the top half of a float32
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// e^x of 8 values x <= 0 (scores minus their maximum): x = n ln2 + r with |r| <= ln2 / 2,
// e^r by its Taylor polynomial to degree 7 (remainder < 6e-9 relative), 2^n written into
// the exponent bits. Below -87 the result is e^-87 (~1e-38) instead of less.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln2, high part
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-6f), r);     // ln2, low part
  __m256 p = _mm256_set1_ps(1.f / 5040);
  for (float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  const __m256i two_n = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

// 2. y[m, n] = sum_k x[m, k] * w[n, k] for rows n0..n1 of w; K is a multiple of 8.
// One x row: four accumulators keep four FMA chains in flight.
template <typename W>
void linear_rows_1(const float* x, const W* w, W* y, int64_t K, int64_t N, int64_t n0,
                   int64_t n1) {
  (void)N;
  for (int64_t n = n0; n < n1; ++n) {
    const W* r = w + n * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      a0 = _mm256_fmadd_ps(load8(r + k), load8(x + k), a0);
      a1 = _mm256_fmadd_ps(load8(r + k + 8), load8(x + k + 8), a1);
      a2 = _mm256_fmadd_ps(load8(r + k + 16), load8(x + k + 16), a2);
      a3 = _mm256_fmadd_ps(load8(r + k + 24), load8(x + k + 24), a3);
    }
    for (; k < K; k += 8) a0 = _mm256_fmadd_ps(load8(r + k), load8(x + k), a0);
    y[n] = W(hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))));
  }
}

// M x rows: each loaded weight vector feeds M accumulators (two per row, even/odd k).
template <int M, typename W>
void linear_rows(const float* x, const W* w, W* y, int64_t K, int64_t N, int64_t n0,
                 int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const W* r = w + n * K;
    __m256 acc[M][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      __m256 w0 = load8(r + k), w1 = load8(r + k + 8);
      for (int m = 0; m < M; ++m) {
        acc[m][0] = _mm256_fmadd_ps(w0, load8(x + m * K + k), acc[m][0]);
        acc[m][1] = _mm256_fmadd_ps(w1, load8(x + m * K + k + 8), acc[m][1]);
      }
    }
    for (; k < K; k += 8) {
      __m256 w0 = load8(r + k);
      for (int m = 0; m < M; ++m) acc[m][0] = _mm256_fmadd_ps(w0, load8(x + m * K + k), acc[m][0]);
    }
    for (int m = 0; m < M; ++m) y[m * N + n] = W(hsum(_mm256_add_ps(acc[m][0], acc[m][1])));
  }
}

template <typename W>
void linear_dispatch(int64_t M, const float* x, const W* w, W* y, int64_t K, int64_t N,
                     int64_t n0, int64_t n1) {
  switch (M) {
    case 1: return linear_rows_1(x, w, y, K, N, n0, n1);
    case 2: return linear_rows<2>(x, w, y, K, N, n0, n1);
    case 3: return linear_rows<3>(x, w, y, K, N, n0, n1);
    case 4: return linear_rows<4>(x, w, y, K, N, n0, n1);
    case 5: return linear_rows<5>(x, w, y, K, N, n0, n1);
    case 6: return linear_rows<6>(x, w, y, K, N, n0, n1);
    case 7: return linear_rows<7>(x, w, y, K, N, n0, n1);
    default: return linear_rows<8>(x, w, y, K, N, n0, n1);
  }
}

// 3. Attention of one query group (the G query heads sharing a kv head) of one sequence.
// q: (G, D) float32, multiplied by `scale` here; k/v: this kv head's (blocks, bs, D) cache.
template <typename T>
void decode_group(const float* q_in, float scale, const T* k, const T* v, const int64_t* table,
                  int64_t lo, int64_t ctx, int64_t bs, int64_t D, int64_t G, float* out) {
  std::vector<float> q(q_in, q_in + G * D);
  for (float& x : q) x *= scale;
  std::vector<float> m(G, -std::numeric_limits<float>::infinity()), l(G, 0.f);
  std::vector<float> acc(G * D, 0.f), s(G * bs);
  for (int64_t c = lo / bs; c * bs < ctx; ++c) {
    const int64_t t0 = std::max(lo, c * bs), t1 = std::min(ctx, (c + 1) * bs);
    const T* kb = k + table[c] * bs * D;
    const T* vb = v + table[c] * bs * D;
    // Scores of the block's visible tokens: each key row is read once for all G heads.
    for (int64_t t = t0; t < t1; ++t) {
      const T* kr = kb + (t - c * bs) * D;
      for (int64_t g = 0; g < G; ++g) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(load8(kr + d), load8(q.data() + g * D + d), a);
        s[g * bs + (t - t0)] = hsum(a);
      }
    }
    // Online softmax: raise the running max, rescale what was summed so far.
    for (int64_t g = 0; g < G; ++g) {
      float mx = m[g];
      for (int64_t t = 0; t < t1 - t0; ++t) mx = std::max(mx, s[g * bs + t]);
      const float shrink = std::exp(m[g] - mx);  // 0 on the first block (m = -inf)
      l[g] *= shrink;
      for (int64_t d = 0; d < D; ++d) acc[g * D + d] *= shrink;
      float* sg = s.data() + g * bs;
      int64_t t = 0;
      __m256 sum = _mm256_setzero_ps();
      for (; t + 8 <= t1 - t0; t += 8) {
        const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(sg + t), _mm256_set1_ps(mx)));
        _mm256_storeu_ps(sg + t, p);
        sum = _mm256_add_ps(sum, p);
      }
      l[g] += hsum(sum);
      for (; t < t1 - t0; ++t) {
        sg[t] = std::exp(sg[t] - mx);
        l[g] += sg[t];
      }
      m[g] = mx;
    }
    // acc += p @ v, each value row read once for all G heads.
    for (int64_t t = t0; t < t1; ++t) {
      const T* vr = vb + (t - c * bs) * D;
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 vv = load8(vr + d);
        for (int64_t g = 0; g < G; ++g) {
          float* a = acc.data() + g * D + d;
          _mm256_storeu_ps(a, _mm256_fmadd_ps(_mm256_set1_ps(s[g * bs + (t - t0)]), vv,
                                              _mm256_loadu_ps(a)));
        }
      }
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) out[g * D + d] = acc[g * D + d] / l[g];
}

template <typename T>
void paged_decode_impl(const torch::Tensor& q, const torch::Tensor& k_cache,
                       const torch::Tensor& v_cache, const torch::Tensor& tables,
                       const torch::Tensor& context_lens, int64_t window, float scale,
                       torch::Tensor& out) {
  const int64_t S = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t Hkv = k_cache.size(0), blocks = k_cache.size(1), bs = k_cache.size(2);
  const int64_t G = Hq / Hkv, W = tables.size(1);
  const float* qp = q.data_ptr<float>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* cp = context_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, S * Hkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i / Hkv, h = i % Hkv, ctx = cp[s];
      const int64_t lo = window > 0 ? std::max<int64_t>(0, ctx - window) : 0;
      decode_group(qp + (s * Hq + h * G) * D, scale, kp + h * blocks * bs * D,
                   vp + h * blocks * bs * D, tp + s * W, lo, ctx, bs, D, G,
                   op + (s * Hq + h * G) * D);
    }
  });
}

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t D, float eps, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * D;
    T* yr = y + r * D;
    float ss = 0.f;
    for (int64_t d = 0; d < D; ++d) ss += static_cast<float>(xr[d]) * static_cast<float>(xr[d]);
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
    for (int64_t d = 0; d < D; ++d)  // T(...) rounds to nearest even, as torch's casts do
      yr[d] = T(static_cast<float>(w[d]) * static_cast<float>(T(static_cast<float>(xr[d]) * inv)));
  }
}

template <typename T>
void rotary_rows(const T* x, int64_t row_stride, int64_t H, int64_t D, const T* cos,
                 const T* sin, T* y, int64_t M) {
  const int64_t half = D / 2;
  for (int64_t r = 0; r < M; ++r) {
    const T* c = cos + r * D;
    const T* s = sin + r * D;
    for (int64_t h = 0; h < H; ++h) {
      const T* xh = x + r * row_stride + h * D;
      T* yh = y + (r * H + h) * D;
      for (int64_t d = 0; d < D; ++d) {
        const float xd = static_cast<float>(xh[d]);
        const float xr = static_cast<float>(xh[d < half ? d + half : d - half]);
        const T a = T(xd * static_cast<float>(c[d])), b = T(xr * static_cast<float>(s[d]));
        yh[d] = T(static_cast<float>(a) + static_cast<float>(b));
      }
    }
  }
}

template <typename T>
void silu_mul_rows(const T* gu, T* y, int64_t I, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* g = gu + r * 2 * I;
    const T* u = g + I;
    T* yr = y + r * I;
    for (int64_t i = 0; i < I; ++i) {
      const float x = static_cast<float>(g[i]);
      const T silu = T(x / (1.f + std::exp(-x)));
      yr[i] = T(static_cast<float>(silu) * static_cast<float>(u[i]));
    }
  }
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && x.size(1) == w.size(0), "rms_norm: bad shapes");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "rms_norm: x and w dtypes differ");
  auto xc = x.contiguous();
  auto wc = w.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t M = xc.size(0), D = xc.size(1);
  at::parallel_for(0, M, 8, [&](int64_t r0, int64_t r1) {
    switch (xc.scalar_type()) {
      case torch::kFloat:
        return rms_norm_rows(xc.data_ptr<float>(), wc.data_ptr<float>(), y.data_ptr<float>(), D,
                             static_cast<float>(eps), r0, r1);
      case torch::kBFloat16:
        return rms_norm_rows(xc.data_ptr<at::BFloat16>(), wc.data_ptr<at::BFloat16>(),
                             y.data_ptr<at::BFloat16>(), D, static_cast<float>(eps), r0, r1);
      case torch::kHalf:
        return rms_norm_rows(xc.data_ptr<at::Half>(), wc.data_ptr<at::Half>(),
                             y.data_ptr<at::Half>(), D, static_cast<float>(eps), r0, r1);
      default: TORCH_CHECK(false, "rms_norm: unsupported dtype");
    }
  });
  return y;
}

void write_kv(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor k, torch::Tensor v,
              torch::Tensor blocks, torch::Tensor offsets) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type(),
              "write_kv: dtypes differ");
  TORCH_CHECK(blocks.scalar_type() == torch::kLong && offsets.scalar_type() == torch::kLong,
              "write_kv: blocks and offsets must be int64");
  auto kc = k.contiguous(), vc = v.contiguous();
  auto bc = blocks.contiguous(), oc = offsets.contiguous();
  const int64_t N = kc.size(0), Hkv = k_cache.size(0), nb = k_cache.size(1), bs = k_cache.size(2);
  const int64_t D = k_cache.size(3), row = D * k_cache.element_size();
  const int64_t* bp = bc.data_ptr<int64_t>();
  const int64_t* op = oc.data_ptr<int64_t>();
  auto* kd = static_cast<char*>(k_cache.data_ptr());
  auto* vd = static_cast<char*>(v_cache.data_ptr());
  const auto* ks = static_cast<const char*>(kc.data_ptr());
  const auto* vs = static_cast<const char*>(vc.data_ptr());
  for (int64_t n = 0; n < N; ++n) {
    TORCH_CHECK(bp[n] >= 0 && bp[n] < nb && op[n] >= 0 && op[n] < bs, "write_kv: bad slot");
    for (int64_t h = 0; h < Hkv; ++h) {
      const int64_t dst = ((h * nb + bp[n]) * bs + op[n]) * row, src = (n * Hkv + h) * row;
      std::memcpy(kd + dst, ks + src, row);
      std::memcpy(vd + dst, vs + src, row);
    }
  }
}

torch::Tensor linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear: bad shapes");
  TORCH_CHECK(x.size(0) <= 8 && w.size(1) % 8 == 0, "linear: needs M <= 8 and K % 8 == 0");
  TORCH_CHECK(w.is_contiguous(), "linear: weight must be contiguous");
  auto xf = x.to(torch::kFloat).contiguous();
  const int64_t M = xf.size(0), K = xf.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, w.options());
  const float* xp = xf.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    switch (w.scalar_type()) {
      case torch::kFloat:
        return linear_dispatch(M, xp, w.data_ptr<float>(), y.data_ptr<float>(), K, N, n0, n1);
      case torch::kBFloat16:
        return linear_dispatch(M, xp, w.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), K, N,
                               n0, n1);
      case torch::kHalf:
        return linear_dispatch(M, xp, w.data_ptr<at::Half>(), y.data_ptr<at::Half>(), K, N, n0, n1);
      default: TORCH_CHECK(false, "linear: unsupported weight dtype");
    }
  });
  return y;
}

torch::Tensor paged_decode(torch::Tensor q_in, torch::Tensor k_cache, torch::Tensor v_cache,
                           torch::Tensor tables, torch::Tensor context_lens, int64_t window,
                           double scale) {
  auto q = q_in.to(torch::kFloat).contiguous();
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(q.size(2) % 8 == 0 && q.size(1) % k_cache.size(0) == 0, "paged_decode: shapes");
  TORCH_CHECK(tables.scalar_type() == torch::kLong && context_lens.scalar_type() == torch::kLong,
              "tables and context_lens: int64");
  auto out = torch::empty_like(q);
  auto t = tables.contiguous();
  auto c = context_lens.contiguous();
  switch (k_cache.scalar_type()) {
    case torch::kFloat: paged_decode_impl<float>(q, k_cache, v_cache, t, c, window, scale, out); break;
    case torch::kBFloat16:
      paged_decode_impl<at::BFloat16>(q, k_cache, v_cache, t, c, window, scale, out);
      break;
    case torch::kHalf: paged_decode_impl<at::Half>(q, k_cache, v_cache, t, c, window, scale, out); break;
    default: TORCH_CHECK(false, "paged_decode: unsupported cache dtype");
  }
  return out;
}

torch::Tensor rotary_one(torch::Tensor x, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2),
              "rotary: x must be (M, H, D) with contiguous heads");
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == x.size(0) && cos.size(1) == x.size(2) &&
                  x.size(2) % 2 == 0, "rotary: cos/sin must be (M, D), D even");
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "rotary: cos/sin must have x's dtype");
  auto c = cos.contiguous(), s = sin.contiguous();
  auto y = torch::empty({x.size(0), x.size(1), x.size(2)}, x.options());
  const int64_t M = x.size(0), H = x.size(1), D = x.size(2), stride = x.stride(0);
  switch (x.scalar_type()) {
    case torch::kFloat:
      rotary_rows(x.data_ptr<float>(), stride, H, D, c.data_ptr<float>(), s.data_ptr<float>(),
                  y.data_ptr<float>(), M);
      break;
    case torch::kBFloat16:
      rotary_rows(x.data_ptr<at::BFloat16>(), stride, H, D, c.data_ptr<at::BFloat16>(),
                  s.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), M);
      break;
    case torch::kHalf:
      rotary_rows(x.data_ptr<at::Half>(), stride, H, D, c.data_ptr<at::Half>(),
                  s.data_ptr<at::Half>(), y.data_ptr<at::Half>(), M);
      break;
    default: TORCH_CHECK(false, "rotary: unsupported dtype");
  }
  return y;
}

std::vector<torch::Tensor> rotary(torch::Tensor q, torch::Tensor k, torch::Tensor cos,
                                  torch::Tensor sin) {
  return {rotary_one(q, cos, sin), rotary_one(k, cos, sin)};
}

torch::Tensor silu_mul(torch::Tensor gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, "silu_mul: needs (M, 2I)");
  auto gu = gate_up.contiguous();
  const int64_t M = gu.size(0), I = gu.size(1) / 2;
  auto y = torch::empty({M, I}, gu.options());
  at::parallel_for(0, M, 1, [&](int64_t r0, int64_t r1) {
    switch (gu.scalar_type()) {
      case torch::kFloat:
        return silu_mul_rows(gu.data_ptr<float>(), y.data_ptr<float>(), I, r0, r1);
      case torch::kBFloat16:
        return silu_mul_rows(gu.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), I, r0, r1);
      case torch::kHalf:
        return silu_mul_rows(gu.data_ptr<at::Half>(), y.data_ptr<at::Half>(), I, r0, r1);
      default: TORCH_CHECK(false, "silu_mul: unsupported dtype");
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "y = x @ w.T for a few rows of x (in w's dtype)");
  m.def("paged_decode", &paged_decode, "one-query-per-sequence attention over a paged cache");
  m.def("write_kv", &write_kv, "store keys and values at their paged-cache slots");
  m.def("rms_norm", &rms_norm, "RMSNorm of each row, rounded as the float32-then-cast reference");
  m.def("rotary", &rotary, "rotary embedding of q and k, rounded as the PyTorch reference");
  m.def("silu_mul", &silu_mul, "silu(gate) * up of a (M, 2I) gate_up row block");
}
