// An experimental CPU LoRA kernel: the delta of one projection group for a whole step, in
// one operation (measured by `benchmarks/bench_lora_kernel.py`; not used by the server, see
// benchmarks/README.md, "A LoRA kernel").
//
// `gateway_lora::sgmv_(x, y, a, b, col, width, rows, adapter, scale)` adds, for every
// entry m (a row of the step and one adapter of its set, sorted by adapter),
//
//     y[rows[m], col[k][r] + c] += scale[m] * (x[rows[m]] . A[k][r]) * b[k][r][c]
//
// with k = adapter[m], for each rank row r of adapter k and c < width[k][r].
//
// - `a[k]` is adapter k's A transposed (`[R, in]`), stored in tiles of 4 rank rows
//   interleaved by 16 columns (`[ceil(R / 4), ceil(in / 16), 4, 16]`, zero-padded), so a
//   tile is one sequential stream;
// - `b[k]` holds its B rows apart (`[R, W]`): rank row r writes only `width[k][r]` columns
//   of the output from `col[k][r]`, so a fused q/k/v or gate/up group reads no
//   block-diagonal zeros.
//
// Weights are float32 or bfloat16 (widened to float32, accumulated in float32). Punica's
// SGMV for a CPU: the shrink runs over (adapter, tile) pairs, reading each tile once for all
// of that adapter's rows; the expand runs over column ranges of the output, so no two
// threads write one element, streaming each B row once per adapter. AVX-512 where the
// compiler targets it (`-march=native`), plain loops otherwise.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int kRows = 4;   // entries (rows) one tile works on at once
constexpr int kRanks = 4;  // rank rows one shrink tile works on at once
constexpr int64_t kColumns = 16;  // one vector of float32
constexpr int64_t kAhead = 2;  // tiles of A prefetched ahead of the one computed

inline float widen(float v) { return v; }

inline float widen(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

#if defined(__AVX512F__)
inline __m512 load(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }

inline __m512 load(const uint16_t* p, __mmask16 mask) {
  __m256i half = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

inline __mmask16 tail(int64_t left) {
  return left >= kColumns ? static_cast<__mmask16>(0xFFFF)
                          : static_cast<__mmask16>((1u << left) - 1u);
}

// out[i][q] = x_i . w_q for `rows` rows x_i of length n and the `kRanks` rank rows of one
// tile of A, stored interleaved: 16 columns of each of its 4 rows, then the next 16
// columns (one sequential stream; rows past the adapter's rank and columns past n are 0).
template <typename W>
void shrink_tile(const float* const* x, int rows, const W* tile, int64_t n,
                 float out[kRows][kRanks]) {
  __m512 acc[kRows][kRanks];
  for (int i = 0; i < kRows; ++i)
    for (int q = 0; q < kRanks; ++q) acc[i][q] = _mm512_setzero_ps();
  const W* w = tile;
  for (int64_t j = 0; j < n; j += kColumns, w += kRanks * kColumns) {
    const __mmask16 mask = tail(n - j);
    _mm_prefetch(reinterpret_cast<const char*>(w + kAhead * kRanks * kColumns), _MM_HINT_T0);
    __m512 wv[kRanks];
    for (int q = 0; q < kRanks; ++q) wv[q] = load(w + q * kColumns, static_cast<__mmask16>(0xFFFF));
    for (int i = 0; i < kRows; ++i) {
      if (i >= rows) break;
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x[i] + j);
      for (int q = 0; q < kRanks; ++q) acc[i][q] = _mm512_fmadd_ps(xv, wv[q], acc[i][q]);
    }
  }
  for (int i = 0; i < rows; ++i)
    for (int q = 0; q < kRanks; ++q) out[i][q] = _mm512_reduce_add_ps(acc[i][q]);
}

// y_i[0:n] += sum over q of h[i][q] * w_q[0:n], w_q = w + q * ws, for `rows` rows and
// `ranks` rank rows: row by row of w, so that w streams from memory in order while y stays in L1.
template <typename W>
void expand_tile(float* const* y, int rows, const float* h, int64_t hs, const W* w,
                 int64_t ws, int64_t ranks, int64_t n) {
  for (int64_t q = 0; q < ranks; ++q) {
    __m512 f[kRows];
    for (int i = 0; i < rows; ++i) f[i] = _mm512_set1_ps(h[i * hs + q]);
    const W* wq = w + q * ws;
    const W* next = q + 1 < ranks ? wq + ws : wq;
    for (int64_t j = 0; j < n; j += kColumns) {
      const __mmask16 mask = tail(n - j);
      _mm_prefetch(reinterpret_cast<const char*>(next + j), _MM_HINT_T0);
      const __m512 wv = load(wq + j, mask);
      for (int i = 0; i < kRows; ++i) {
        if (i >= rows) break;
        _mm512_mask_storeu_ps(y[i] + j, mask,
                              _mm512_fmadd_ps(f[i], wv, _mm512_maskz_loadu_ps(mask, y[i] + j)));
      }
    }
  }
}
#else
template <typename W>
void shrink_tile(const float* const* x, int rows, const W* tile, int64_t n,
                 float out[kRows][kRanks]) {
  for (int i = 0; i < rows; ++i)
    for (int q = 0; q < kRanks; ++q) {
      float acc = 0.f;
      for (int64_t j = 0; j < n; ++j)
        acc += x[i][j] * widen(tile[(j / kColumns) * kRanks * kColumns + q * kColumns + j % kColumns]);
      out[i][q] = acc;
    }
}

template <typename W>
void expand_tile(float* const* y, int rows, const float* h, int64_t hs, const W* w,
                 int64_t ws, int64_t ranks, int64_t n) {
  for (int i = 0; i < rows; ++i)
    for (int64_t q = 0; q < ranks; ++q) {
      const float f = h[i * hs + q];
      const W* wq = w + q * ws;
      float* yi = y[i];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) yi[j] += f * widen(wq[j]);
    }
}
#endif

struct Segment {
  int64_t adapter, first, last;  // entries [first, last) use `adapter`
};

struct Run {
  int64_t first, last, col, width;  // rank rows [first, last) write columns [col, col + width)
};

template <typename W>
void run(const at::Tensor& x, at::Tensor& y, at::TensorList a, at::TensorList b,
         at::TensorList col, at::TensorList width, const int64_t* rows,
         const int64_t* adapter, const float* scale, int64_t entries) {
  const int64_t in = x.size(1);
  const int64_t out = y.size(1);
  const int64_t xs = x.stride(0), ys = y.stride(0);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();

  std::vector<Segment> segments;
  for (int64_t m = 0; m < entries; ++m) {
    if (segments.empty() || segments.back().adapter != adapter[m])
      segments.push_back({adapter[m], m, m + 1});
    else
      segments.back().last = m + 1;
  }
  // Each adapter's rank rows, as runs that write one column range (one member of the group).
  std::vector<std::vector<Run>> runs(a.size());
  for (size_t k = 0; k < a.size(); ++k) {
    const int32_t* cp = col[k].data_ptr<int32_t>();
    const int32_t* wp = width[k].data_ptr<int32_t>();
    for (int64_t r = 0; r < col[k].numel(); ++r) {
      if (wp[r] == 0) continue;
      auto& mine = runs[k];
      if (!mine.empty() && mine.back().last == r && mine.back().col == cp[r] &&
          mine.back().width == wp[r])
        mine.back().last = r + 1;
      else
        mine.push_back({r, r + 1, cp[r], wp[r]});
    }
  }
  int64_t ranks = 0;
  for (const auto& t : col) ranks = std::max(ranks, t.numel());
  std::vector<float> h(entries * ranks, 0.f);

  // Shrink: h[m][r] = scale[m] * x[rows[m]] . a[k][r], one tile of kRanks rank rows at once.
  const int64_t blocks = (ranks + kRanks - 1) / kRanks;
  const int64_t pairs = static_cast<int64_t>(segments.size()) * blocks;
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const Segment& s = segments[p / blocks];
      const int64_t block = p % blocks;
      const at::Tensor& ak = a[s.adapter];
      if (block >= ak.size(0)) continue;
      const int64_t r0 = block * kRanks;
      const int nr = static_cast<int>(std::min<int64_t>(kRanks, col[s.adapter].numel() - r0));
      const W* tile = reinterpret_cast<const W*>(ak.data_ptr()) + block * ak.stride(0);
      for (int64_t m0 = s.first; m0 < s.last; m0 += kRows) {
        const int nm = static_cast<int>(std::min<int64_t>(kRows, s.last - m0));
        const float* xr[kRows];
        for (int i = 0; i < nm; ++i) xr[i] = xp + rows[m0 + i] * xs;
        float dots[kRows][kRanks];
        shrink_tile(xr, nm, tile, in, dots);
        for (int i = 0; i < nm; ++i)
          for (int q = 0; q < nr; ++q) h[(m0 + i) * ranks + r0 + q] = scale[m0 + i] * dots[i][q];
      }
    }
  });

  // Expand: each thread owns a range of output columns (in whole vectors).
  const int64_t vectors = (out + kColumns - 1) / kColumns;
  at::parallel_for(0, vectors, 4, [&](int64_t begin, int64_t end) {
    const int64_t lo = begin * kColumns, hi = std::min(end * kColumns, out);
    for (const Segment& s : segments) {
      const at::Tensor& bk = b[s.adapter];
      const int64_t stride = bk.size(1);
      const W* bp = reinterpret_cast<const W*>(bk.data_ptr());
      for (const Run& run : runs[s.adapter]) {
        const int64_t start = std::max(lo, run.col);
        const int64_t stop = std::min(hi, run.col + run.width);
        if (start >= stop) continue;
        const W* w = bp + run.first * stride + (start - run.col);
        for (int64_t m0 = s.first; m0 < s.last; m0 += kRows) {
          const int nm = static_cast<int>(std::min<int64_t>(kRows, s.last - m0));
          float* yr[kRows];
          for (int i = 0; i < nm; ++i) yr[i] = yp + rows[m0 + i] * ys + start;
          expand_tile(yr, nm, h.data() + m0 * ranks + run.first, ranks, w, stride,
                      run.last - run.first, stop - start);
        }
      }
    }
  });
}

void sgmv_(const at::Tensor& x, at::Tensor y, at::TensorList a, at::TensorList b,
           at::TensorList col, at::TensorList width, const at::Tensor& rows,
           const at::Tensor& adapter, const at::Tensor& scale) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0), "x and y: [rows, n]");
  TORCH_CHECK(x.scalar_type() == at::kFloat && y.scalar_type() == at::kFloat,
              "x and y must be float32");
  TORCH_CHECK(x.stride(1) == 1 && y.stride(1) == 1, "x and y rows must be contiguous");
  TORCH_CHECK(!a.empty() && a.size() == b.size() && a.size() == col.size() &&
                  a.size() == width.size(),
              "one a, b, col and width per adapter");
  const auto dtype = a[0].scalar_type();
  for (size_t k = 0; k < a.size(); ++k) {
    TORCH_CHECK(a[k].scalar_type() == dtype && b[k].scalar_type() == dtype,
                "all weights of one dtype");
    TORCH_CHECK(a[k].is_contiguous() && b[k].is_contiguous(), "weights must be contiguous");
    TORCH_CHECK(a[k].dim() == 4 && a[k].size(2) == kRanks && a[k].size(3) == kColumns &&
                    a[k].size(1) * kColumns >= x.size(1) && a[k].size(0) * kRanks >= col[k].numel(),
                "a[k]: [ceil(R / 4), ceil(in / 16), 4, 16]");
    TORCH_CHECK(b[k].dim() == 2 && b[k].size(0) == col[k].numel(), "b[k]: [R, W]");
    TORCH_CHECK(col[k].scalar_type() == at::kInt && width[k].scalar_type() == at::kInt &&
                    width[k].numel() == col[k].numel(),
                "col[k] and width[k]: int32 [R]");
  }
  TORCH_CHECK(rows.scalar_type() == at::kLong && adapter.scalar_type() == at::kLong &&
                  scale.scalar_type() == at::kFloat,
              "rows, adapter: int64; scale: float32");
  const int64_t entries = rows.numel();
  TORCH_CHECK(adapter.numel() == entries && scale.numel() == entries, "one per entry");
  auto rows_c = rows.contiguous(), adapter_c = adapter.contiguous(), scale_c = scale.contiguous();
  const int64_t* rp = rows_c.data_ptr<int64_t>();
  const int64_t* ap = adapter_c.data_ptr<int64_t>();
  for (int64_t m = 0; m < entries; ++m) {
    TORCH_CHECK(rp[m] >= 0 && rp[m] < x.size(0), "row out of range");
    TORCH_CHECK(ap[m] >= 0 && ap[m] < static_cast<int64_t>(a.size()), "adapter out of range");
  }
  for (size_t k = 0; k < col.size(); ++k) {
    const int32_t* cp = col[k].data_ptr<int32_t>();
    const int32_t* wp = width[k].data_ptr<int32_t>();
    for (int64_t r = 0; r < col[k].numel(); ++r)
      TORCH_CHECK(cp[r] >= 0 && wp[r] >= 0 && cp[r] + wp[r] <= y.size(1) &&
                      wp[r] <= b[k].size(1),
                  "column range out of the output");
  }
  if (dtype == at::kFloat)
    run<float>(x, y, a, b, col, width, rp, ap, scale_c.data_ptr<float>(), entries);
  else if (dtype == at::kBFloat16)
    run<uint16_t>(x, y, a, b, col, width, rp, ap, scale_c.data_ptr<float>(), entries);
  else
    TORCH_CHECK(false, "weights must be float32 or bfloat16");
}

}  // namespace

TORCH_LIBRARY(gateway_lora, m) {
  m.def(
      "sgmv_(Tensor x, Tensor(a!) y, Tensor[] a, Tensor[] b, Tensor[] col, Tensor[] width, "
      "Tensor rows, Tensor adapter, Tensor scale) -> ()");
}

TORCH_LIBRARY_IMPL(gateway_lora, CPU, m) { m.impl("sgmv_", sgmv_); }
