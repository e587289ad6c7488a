// Paged decode attention for the CPU: one query token per sequence, keys and values read in
// place from the block-paged KV cache (no gather copy, no padding to the longest sequence).
//
// Shapes: q (B, Hkv, G, D) with G query heads per KV head; k_cache, v_cache
// (num_blocks, block_size, Hkv, D); block_tables (B, max_blocks) int64; ctx_lens (B,) int64.
// `window` > 0 limits each query to its last `window` keys (sliding-window layers).
// Returns (B, Hkv, G, D) in q's dtype. Work is split over (sequence, KV head) pairs.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;  // bf16 is the top half of an fp32
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
void decode_impl(const T* q, const T* k, const T* v, const int64_t* tables, const int64_t* lens,
                 T* out, int64_t B, int64_t H, int64_t G, int64_t D, int64_t block_size,
                 int64_t max_blocks, int64_t window, float scale) {
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), acc(G * D), kv_row(D), scores;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / H, h = idx % H;
      const int64_t len = lens[b];
      const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t n = len - first;
      scores.assign(G * n, 0.f);
      for (int64_t i = 0; i < G * D; ++i) qf[i] = to_float(q[(idx * G) * D + i]) * scale;
      const int64_t* table = tables + b * max_blocks;
      // scores[g, t] = q[g] . k[t]
      for (int64_t t = 0; t < n; ++t) {
        const int64_t pos = first + t;
        const T* kp = k + ((table[pos / block_size] * block_size + pos % block_size) * H + h) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) kv_row[d] = to_float(kp[d]);
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qf.data() + g * D;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < D; ++d) s += qg[d] * kv_row[d];
          scores[g * n + t] = s;
        }
      }
      // softmax over t, in fp32
      for (int64_t g = 0; g < G; ++g) {
        float* sg = scores.data() + g * n;
        float m = -INFINITY;
        for (int64_t t = 0; t < n; ++t) m = std::max(m, sg[t]);
        float sum = 0.f;
        for (int64_t t = 0; t < n; ++t) { sg[t] = std::exp(sg[t] - m); sum += sg[t]; }
        const float inv = 1.f / sum;
        for (int64_t t = 0; t < n; ++t) sg[t] *= inv;
      }
      // out[g] = sum_t p[g, t] v[t]
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < n; ++t) {
        const int64_t pos = first + t;
        const T* vp = v + ((table[pos / block_size] * block_size + pos % block_size) * H + h) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) kv_row[d] = to_float(vp[d]);
        for (int64_t g = 0; g < G; ++g) {
          const float p = scores[g * n + t];
          float* ag = acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) ag[d] += p * kv_row[d];
        }
      }
      for (int64_t i = 0; i < G * D; ++i) out[(idx * G) * D + i] = static_cast<T>(acc[i]);
    }
  });
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>

// exp(x) for x <= 0 (softmax after subtracting the max), 16 lanes: x = k ln2 + r,
// exp(r) by a degree-6 polynomial on |r| <= ln2/2 (relative error ~2e-7), times 2^k.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}

// Softmax of one row of n scores in place (fp32).
inline void softmax_row(float* s, int64_t n) {
  __m512 mv = _mm512_set1_ps(-INFINITY);
  int64_t t = 0;
  for (; t + 16 <= n; t += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(s + t));
  float m = _mm512_reduce_max_ps(mv);
  for (; t < n; ++t) m = std::max(m, s[t]);
  __m512 sum = _mm512_setzero_ps();
  const __m512 mm = _mm512_set1_ps(m);
  t = 0;
  for (; t + 16 <= n; t += 16) {
    __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + t), mm));
    _mm512_storeu_ps(s + t, e);
    sum = _mm512_add_ps(sum, e);
  }
  float total = _mm512_reduce_add_ps(sum);
  if (t < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - t)) - 1);
    __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + t), mm));
    e = _mm512_maskz_mov_ps(tail, e);
    _mm512_mask_storeu_ps(s + t, tail, e);
    total += _mm512_reduce_add_ps(e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / total);
  t = 0;
  for (; t + 16 <= n; t += 16) _mm512_storeu_ps(s + t, _mm512_mul_ps(_mm512_loadu_ps(s + t), inv));
  for (; t < n; ++t) s[t] *= 1.0f / total;
}

// bf16 fast path (AVX-512 BF16), GT query heads per KV head known at compile time so the
// accumulators stay in registers: q.k with vdpbf16ps (exact products, fp32 sums), one K row
// load shared by the GT heads; p.v with fp32 FMAs over 16-lane chunks.
template <int GT>
void decode_bf16_avx512(const c10::BFloat16* q, const c10::BFloat16* k, const c10::BFloat16* v,
                        const int64_t* tables, const int64_t* lens, c10::BFloat16* out, int64_t B,
                        int64_t H, int64_t D, int64_t block_size, int64_t max_blocks, int64_t window,
                        float scale) {
  // Sequences differ in length, so rows are handed out dynamically (static halves would leave
  // one core idle while the other finishes the long ones).
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<float> scores;
    std::vector<const uint16_t*> vrows;
#pragma omp for schedule(dynamic, 1)
    for (int64_t idx = 0; idx < B * H; ++idx) {
      const int64_t b = idx / H, h = idx % H;
      const int64_t len = lens[b];
      const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t n = len - first;
      scores.resize(GT * n);
      vrows.resize(n);
      const uint16_t* qb = reinterpret_cast<const uint16_t*>(q) + idx * GT * D;
      const int64_t* table = tables + b * max_blocks;
      for (int64_t t = 0; t < n; ++t) {
        const int64_t pos = first + t;
        const int64_t row = ((table[pos / block_size] * block_size + pos % block_size) * H + h) * D;
        const uint16_t* kp = reinterpret_cast<const uint16_t*>(k) + row;
        vrows[t] = reinterpret_cast<const uint16_t*>(v) + row;
        __m512 acc[GT];
        for (int g = 0; g < GT; ++g) acc[g] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 32) {
          const __m512bh ka = (__m512bh)_mm512_loadu_si512(kp + d);
          for (int g = 0; g < GT; ++g)
            acc[g] = _mm512_dpbf16_ps(acc[g], (__m512bh)_mm512_loadu_si512(qb + g * D + d), ka);
        }
        for (int g = 0; g < GT; ++g) scores[g * n + t] = _mm512_reduce_add_ps(acc[g]) * scale;
      }
      for (int g = 0; g < GT; ++g) softmax_row(scores.data() + g * n, n);
      uint16_t* ob = reinterpret_cast<uint16_t*>(out) + idx * GT * D;
      for (int64_t d = 0; d < D; d += 16) {
        __m512 acc[GT];
        for (int g = 0; g < GT; ++g) acc[g] = _mm512_setzero_ps();
        for (int64_t t = 0; t < n; ++t) {
          __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vrows[t] + d));
          __m512 vf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
          for (int g = 0; g < GT; ++g)
            acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * n + t]), vf, acc[g]);
        }
        for (int g = 0; g < GT; ++g) {
          // round to nearest even, as a float -> bf16 cast does
          __m512i bits = _mm512_castps_si512(acc[g]);
          __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
          bits = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(ob + g * D + d),
                              _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
        }
      }
    }
  }
}
#define FLEETLM_HAS_AVX512BF16 1
#endif

}  // namespace

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor ctx_lens,
                                     int64_t window, double scale) {
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 4, "q must be (B, Hkv, G, D), caches (N, bs, Hkv, D)");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && k_cache.scalar_type() == v_cache.scalar_type(),
              "q and caches must share a dtype");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt64 && ctx_lens.scalar_type() == torch::kInt64,
              "block_tables and ctx_lens must be int64");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  ctx_lens = ctx_lens.contiguous();
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3);
  auto out = torch::empty_like(q);
  const float s = static_cast<float>(scale);
  if (q.scalar_type() == torch::kBFloat16) {
#ifdef FLEETLM_HAS_AVX512BF16
    if (D % 32 == 0 && G >= 1 && G <= 8) {
      auto* qp = q.data_ptr<c10::BFloat16>();
      auto* kp = k_cache.data_ptr<c10::BFloat16>();
      auto* vp = v_cache.data_ptr<c10::BFloat16>();
      auto* op = out.data_ptr<c10::BFloat16>();
      const int64_t* bt = block_tables.data_ptr<int64_t>();
      const int64_t* cl = ctx_lens.data_ptr<int64_t>();
      const int64_t bs = k_cache.size(1), mb = block_tables.size(1);
      switch (G) {
#define FLEETLM_CASE(n) \
  case n: decode_bf16_avx512<n>(qp, kp, vp, bt, cl, op, B, H, D, bs, mb, window, s); return out;
        FLEETLM_CASE(1) FLEETLM_CASE(2) FLEETLM_CASE(3) FLEETLM_CASE(4)
        FLEETLM_CASE(5) FLEETLM_CASE(6) FLEETLM_CASE(7) FLEETLM_CASE(8)
#undef FLEETLM_CASE
      }
    }
#endif
    decode_impl<c10::BFloat16>(q.data_ptr<c10::BFloat16>(), k_cache.data_ptr<c10::BFloat16>(),
                               v_cache.data_ptr<c10::BFloat16>(), block_tables.data_ptr<int64_t>(),
                               ctx_lens.data_ptr<int64_t>(), out.data_ptr<c10::BFloat16>(), B, H, G, D,
                               k_cache.size(1), block_tables.size(1), window, s);
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kFloat32, "only float32 and bfloat16 are supported");
    decode_impl<float>(q.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
                       block_tables.data_ptr<int64_t>(), ctx_lens.data_ptr<int64_t>(), out.data_ptr<float>(),
                       B, H, G, D, k_cache.size(1), block_tables.size(1), window, s);
  }
  return out;
}
