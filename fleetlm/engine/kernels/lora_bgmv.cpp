// Batched LoRA for the CPU (BGMV, as punica's kernel on GPUs): every row of the batch adds
// its own adapter's low-rank product, reading the adapter weights in place from the pool's
// stacks (no gather copy): y[t] += Bt[s_t]^T (A[s_t] x[t]) for each row t with slot s_t > 0.
//
// Shapes: x (T, in); a (S, r, in); bt (S, r, out) (B transposed, the scale folded in);
// slots (T,) int64; y (T, out) with unit column stride (it may be a column slice of a fused
// projection's output). Accumulates in fp32 and rounds once into y. Rows are split over threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

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
void bgmv_impl(const T* x, const T* a, const T* bt, const int64_t* slots, T* y, int64_t rows,
               int64_t in, int64_t r, int64_t out, int64_t y_stride) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xf(in), h(r), acc(out);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t s = slots[t];
      if (s == 0) continue;  // the base model
      const T* xr = x + t * in;
      for (int64_t k = 0; k < in; ++k) xf[k] = to_float(xr[k]);
      const T* as = a + s * r * in;
      for (int64_t j = 0; j < r; ++j) {  // shrink: h = A x
        const T* row = as + j * in;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < in; ++k) sum += to_float(row[k]) * xf[k];
        h[j] = sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      const T* bs = bt + s * r * out;
      for (int64_t j = 0; j < r; ++j) {  // expand: acc = B h, one contiguous axpy per rank
        const float hj = h[j];
        const T* row = bs + j * out;
#pragma omp simd
        for (int64_t o = 0; o < out; ++o) acc[o] += hj * to_float(row[o]);
      }
      T* yr = y + t * y_stride;
      for (int64_t o = 0; o < out; ++o) yr[o] = static_cast<T>(to_float(yr[o]) + acc[o]);
    }
  });
}

}  // namespace

void lora_bgmv(torch::Tensor x, torch::Tensor a, torch::Tensor bt, torch::Tensor slots, torch::Tensor y) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (T, in) tensor");
  TORCH_CHECK(a.dim() == 3 && a.is_contiguous() && bt.dim() == 3 && bt.is_contiguous(),
              "a (S, r, in) and bt (S, r, out) must be contiguous");
  TORCH_CHECK(slots.dtype() == torch::kInt64 && slots.is_contiguous() && slots.numel() == x.size(0),
              "slots must be (T,) int64");
  TORCH_CHECK(y.dim() == 2 && y.size(0) == x.size(0) && y.stride(1) == 1, "y must be (T, out), unit column stride");
  TORCH_CHECK(a.size(2) == x.size(1) && bt.size(2) == y.size(1) && a.size(1) == bt.size(1) &&
              a.size(0) == bt.size(0), "shape mismatch between x, a, bt and y");
  TORCH_CHECK(x.scalar_type() == a.scalar_type() && x.scalar_type() == bt.scalar_type() &&
              x.scalar_type() == y.scalar_type(), "x, a, bt and y must share a dtype");
  const int64_t rows = x.size(0), in = x.size(1), r = a.size(1), out = y.size(1);
  if (x.scalar_type() == torch::kBFloat16) {
    using T = c10::BFloat16;
    bgmv_impl<T>(x.data_ptr<T>(), a.data_ptr<T>(), bt.data_ptr<T>(), slots.data_ptr<int64_t>(),
                 y.data_ptr<T>(), rows, in, r, out, y.stride(0));
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "lora_bgmv supports float32 and bfloat16");
    bgmv_impl<float>(x.data_ptr<float>(), a.data_ptr<float>(), bt.data_ptr<float>(),
                     slots.data_ptr<int64_t>(), y.data_ptr<float>(), rows, in, r, out, y.stride(0));
  }
}
