// CPU engine of the fused CS-DFD step: two passes over the [K, P] gradient rows.
//
// Pass 1 reads every row once and reduces, per fixed chunk of kChunk columns, the K(K+1)/2 Gram
// entries of theta and of theta_p (both segments in the same read). Inside a chunk each dot
// product runs in 64 bytes of independent accumulators (SIMD lanes, accumulation type: float for
// fp32/bf16/fp16, double for fp64); chunk partials are then summed in chunk order in double.
// Chunks, not threads, define the summation order, so the result is bitwise the same for any
// thread count. finish() (solver.h) solves for mu on the reduced Gram matrix; pass 2 reads the
// rows again and writes sum_j alpha_j g_j (theta) and eq. 24 (theta_p) into `out`, which may be
// row 0 itself (K = 2: one fused loop per segment; other K: tile by tile via stack buffers).
// Traffic for K = 2 fp32, in place: 8 + 8 bytes read, 4 written per parameter (20 B/param).
// Needs GCC or Clang (vector extensions, `#pragma GCC ivdep`).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/convert.h"
#include "engine.h"
#include "solver.h"

namespace csdfd {
namespace {

constexpr int64_t kChunk = 1 << 14;  // columns per pass-1 partial (fixes the summation order)
// Chunks per thread at least: below 4 * kChunk columns (about torch's own GRAIN_SIZE) waking a
// second thread costs more than it saves.
constexpr int64_t kGrainChunks = 4;
constexpr int kTile = 512;           // columns staged in accumulation type (fits in L1)
constexpr int kMaxPairs = kMaxStreams * (kMaxStreams + 1) / 2;

using cpu::acc_t;

// Row r, columns [x, x + n), in the accumulation type: the row itself when no conversion is
// needed, else converted into buf.
template <class S, class A>
inline const A* stage(const StepPlan& pl, int r, int64_t x, int n, A* buf) {
  const S* src = static_cast<const S*>(pl.rows[r]) + x;
  if constexpr (std::is_same_v<S, A>) {
    return src;
  } else {
    for (int i = 0; i < n; ++i) buf[i] = cpu::to_acc(src[i]);
    return buf;
  }
}

// SIMD lanes: four independent 16-byte vectors (GCC/Clang vector extension; SSE2 on any
// x86-64), i.e. 16 float or 8 double lanes. Four registers hide the add latency.
template <class A>
struct Lanes {
  typedef A vec __attribute__((vector_size(16)));
  static constexpr int per_vec = 16 / sizeof(A);
  static constexpr int n = 4 * per_vec;
};

// lanes[l] += sum of a[i] * b[i] over i = l (mod n). Each lane is its own sequential sum, so
// the SIMD loop needs no reassociation of floating-point sums and stays deterministic.
template <class A>
inline void dot_lanes(const A* a, const A* b, int n, A* lanes) {
  using V = typename Lanes<A>::vec;
  constexpr int E = Lanes<A>::per_vec, W = Lanes<A>::n;
  V t[4], x, y;
  std::memcpy(t, lanes, sizeof(t));
  int i = 0;
  for (; i + W <= n; i += W) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      std::memcpy(&x, a + i + u * E, sizeof(V));
      std::memcpy(&y, b + i + u * E, sizeof(V));
      t[u] += x * y;
    }
  }
  std::memcpy(lanes, t, sizeof(t));
  for (int l = 0; i < n; ++i, ++l) lanes[l] += a[i] * b[i];
}

// Gram entries (i <= j, row-major pairs) of columns [lo, hi) into part[pair], in double.
template <class S>
void segment_gram(const StepPlan& pl, int64_t lo, int64_t hi, double* part) {
  using A = acc_t<S>;
  constexpr int W = Lanes<A>::n;
  const int k = pl.k, np = k * (k + 1) / 2;
  alignas(64) A lanes[kMaxPairs][W] = {};
  alignas(64) A buf[kMaxStreams][kTile];
  const A* x[kMaxStreams];
  for (int64_t t = lo; t < hi; t += kTile) {
    const int n = static_cast<int>(std::min<int64_t>(kTile, hi - t));
    for (int r = 0; r < k; ++r) x[r] = stage<S, A>(pl, r, t, n, buf[r]);
    for (int i = 0, q = 0; i < k; ++i) {
      for (int j = i; j < k; ++j, ++q) dot_lanes(x[i], x[j], n, lanes[q]);
    }
  }
  for (int q = 0; q < np; ++q) {
    double s = 0;
    for (int l = 0; l < W; ++l) s += static_cast<double>(lanes[q][l]);
    part[q] = s;
  }
}

// Pass 2 for K = 2 (the paper's case): one fused loop per segment, loads, maths and store.
// `out` may be row 0 (or 1) itself: a same-index dependence, not a loop-carried one, which
// `#pragma GCC ivdep` tells the vectoriser (its runtime overlap check would fall back to scalar).
template <class S>
void segment_write2(const StepPlan& pl, const Coef<acc_t<S>>& cf, bool cgr, int64_t lo,
                    int64_t hi) {
  using A = acc_t<S>;
  const S* x0 = static_cast<const S*>(pl.rows[0]);
  const S* x1 = static_cast<const S*>(pl.rows[1]);
  S* out = static_cast<S*>(pl.out);
  if (!cgr) {
    const A a0 = cf.alpha[0], a1 = cf.alpha[1];
#pragma GCC ivdep
    for (int64_t e = lo; e < hi; ++e) {
      out[e] = cpu::from_acc<S>(a0 * cpu::to_acc(x0[e]) + a1 * cpu::to_acc(x1[e]));
    }
  } else {
    const A gm = cf.gamma[1];
#pragma GCC ivdep
    for (int64_t e = lo; e < hi; ++e) {
      const A u = cpu::to_acc(x0[e]), w = cpu::to_acc(x1[e]), s = u + w;
      out[e] = cpu::from_acc<S>(s - gm * u * w * s);
    }
  }
}

// Pass 2 over columns [lo, hi) of one segment: v = sum_j alpha_j g_j (theta, eq. 14) or
// sum_k g_k - sum_{i<j} gamma_ij g_i g_j (g_i + g_j) (theta_p, eq. 24). Any K: tile by tile
// through stack buffers, so `out` may be a row.
template <class S>
void segment_write(const StepPlan& pl, const Coef<acc_t<S>>& cf, bool cgr, int64_t lo,
                   int64_t hi) {
  using A = acc_t<S>;
  const int k = pl.k;
  S* out = static_cast<S*>(pl.out);
  if (cf.zero != A(0)) {
    std::fill(out + lo, out + hi, S(0));
    return;
  }
  if (k == 2) return segment_write2<S>(pl, cf, cgr, lo, hi);
  alignas(64) A buf[kMaxStreams][kTile];
  alignas(64) A res[kTile];
  const A* x[kMaxStreams];
  for (int64_t t = lo; t < hi; t += kTile) {
    const int n = static_cast<int>(std::min<int64_t>(kTile, hi - t));
    for (int r = 0; r < k; ++r) x[r] = stage<S, A>(pl, r, t, n, buf[r]);
    if (!cgr) {
      const A a0 = cf.alpha[0];
      for (int e = 0; e < n; ++e) res[e] = a0 * x[0][e];
      for (int j = 1; j < k; ++j) {
        const A aj = cf.alpha[j];
        const A* xj = x[j];
        for (int e = 0; e < n; ++e) res[e] += aj * xj[e];
      }
    } else {
      for (int e = 0; e < n; ++e) res[e] = x[0][e];
      for (int j = 1; j < k; ++j) {
        for (int e = 0; e < n; ++e) res[e] += x[j][e];
      }
      for (int i = 0; i < k; ++i) {
        for (int j = i + 1; j < k; ++j) {
          const A gm = cf.gamma[i * k + j];
          const A *xi = x[i], *xj = x[j];
          for (int e = 0; e < n; ++e) res[e] -= gm * xi[e] * xj[e] * (xi[e] + xj[e]);
        }
      }
    }
    S* o = out + t;
    for (int e = 0; e < n; ++e) o[e] = cpu::from_acc<S>(res[e]);
  }
}

// Whether every entry of columns [lo, hi) is finite (only asked on the rare path where
// standalone CGR sees a non-finite Gram: reference.cgr_rows tests the entries themselves).
template <class S>
bool entries_finite(const StepPlan& pl, int64_t lo, int64_t hi) {
  std::atomic<bool> ok{true};
  at::parallel_for(lo, hi, kChunk, [&](int64_t b, int64_t e) {
    for (int r = 0; r < pl.k; ++r) {
      const S* row = static_cast<const S*>(pl.rows[r]);
      for (int64_t x = b; x < e; ++x) {
        if (!std::isfinite(cpu::to_acc(row[x]))) {
          ok = false;
          return;
        }
      }
    }
  });
  return ok;
}

template <class S>
void run(const StepPlan& pl, const StepOuts& outs) {
  using A = acc_t<S>;
  const int k = pl.k, np = k * (k + 1) / 2;
  const int64_t chunks = (pl.p + kChunk - 1) / kChunk;
  // Per-chunk partials: 2 * np doubles per kChunk columns (about 0.1% of the gradient bytes).
  std::vector<double> part(static_cast<size_t>(chunks) * 2 * np, 0.0);
  at::parallel_for(0, chunks, kGrainChunks, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t lo = ch * kChunk, hi = std::min(lo + kChunk, pl.p);
      double* dst = part.data() + ch * 2 * np;
      if (lo < pl.split) segment_gram<S>(pl, lo, std::min(hi, pl.split), dst);
      if (hi > pl.split) segment_gram<S>(pl, std::max(lo, pl.split), hi, dst + np);
    }
  });
  double red[2 * kMaxPairs] = {};
  for (int64_t ch = 0; ch < chunks; ++ch) {
    for (int q = 0; q < 2 * np; ++q) red[q] += part[ch * 2 * np + q];
  }
  A g[kMaxStreams * kMaxStreams], gp[kMaxStreams * kMaxStreams];
  for (int i = 0, q = 0; i < k; ++i) {
    for (int j = i; j < k; ++j, ++q) {
      g[i * k + j] = g[j * k + i] = static_cast<A>(red[q]);
      gp[i * k + j] = gp[j * k + i] = static_cast<A>(red[np + q]);
    }
  }
  bool fin = true;
  if (pl.mode == Mode::kCgr && !all_finite(gp, k * k)) fin = entries_finite<S>(pl, 0, pl.p);
  Coef<A> coef;
  finish(g, gp, fin, pl, &coef, outs);
  if (pl.mode == Mode::kGram) return;
  // Pass 2 streams forward like pass 1. (Walking it backwards to re-read pass 1's last bytes
  // from cache measured 1.3-2.5x slower here: it defeats the hardware prefetchers.)
  at::parallel_for(0, chunks, kGrainChunks, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t lo = ch * kChunk, hi = std::min(lo + kChunk, pl.p);
      if (lo < pl.split) segment_write<S>(pl, coef, false, lo, std::min(hi, pl.split));
      if (hi > pl.split) segment_write<S>(pl, coef, true, std::max(lo, pl.split), hi);
    }
  });
}

}  // namespace

void run_cpu(const StepPlan& plan, const StepOuts& outs) {
  switch (plan.dtype) {
    case DType::kF64: return run<double>(plan, outs);
    case DType::kF32: return run<float>(plan, outs);
    case DType::kBF16: return run<c10::BFloat16>(plan, outs);
    case DType::kF16: return run<c10::Half>(plan, outs);
  }
}

void solve_mu_cpu(const void* gram, bool dbl, int k, double c, SolverKind solver, int iters,
                  void* mu) {
  if (dbl) {
    solve_mu(static_cast<const double*>(gram), k, c, solver, iters, static_cast<double*>(mu));
  } else {
    solve_mu(static_cast<const float*>(gram), k, c, solver, iters, static_cast<float*>(mu));
  }
}

}  // namespace csdfd
