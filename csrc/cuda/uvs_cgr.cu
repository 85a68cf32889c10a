// CUDA engine of the fused CS-DFD step: two kernel launches, no host synchronisation.
//
// Launch 1, reduce_kernel: each thread reads its columns of all K rows once (128-bit loads when
// every row has the same 16-byte alignment phase, scalar head/tail), accumulating the Gram
// entries of theta and theta_p in registers (fp32; fp64 for fp64 rows). Warp shuffles and a
// fixed-order pass over the warps give one partial per block, stored in the workspace. Each
// block then takes a ticket (atomicAdd after __threadfence); the block that draws the last
// ticket reads all partials from L2 (__ldcg), sums them in double in block order (lane-strided,
// then a fixed shuffle tree: deterministic for a given grid), and one thread runs finish()
// (solver.h: the mu solve, eq. 14 weights, eq. 24 gammas, status, diag) and writes the
// coefficients into the workspace.
// Launch 2, combine_kernel: reads the coefficients and the K rows again and writes
// sum_j alpha_j g_j over theta and eq. 24 over theta_p into `out` (may be row 0).
// Traffic for K = 2 fp32 in place: 8 + 8 bytes read, 4 written per parameter (20 B/param).
// The workspace comes from torch's caching allocator (ops.cpp) and its ticket is zeroed by a
// cudaMemsetAsync on the same stream, so the step can be captured in a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "engine.h"
#include "solver.h"

#define CSDFD_CUDA_CHECK(expr)                                                              \
  do {                                                                                      \
    const cudaError_t err_ = (expr);                                                        \
    if (err_ != cudaSuccess)                                                                \
      throw std::runtime_error(std::string("csdfd CUDA error: ") + cudaGetErrorString(err_) + \
                               " (" #expr ")");                                             \
  } while (0)

namespace csdfd {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBlocksPerSm = 8;          // grid cap: enough resident blocks to cover latency
constexpr size_t kCoefOffset = 256;      // workspace: [ticket | coefficients | partials]
constexpr size_t kPartialsOffset = 1024;
static_assert(sizeof(Coef<double>) <= kPartialsOffset - kCoefOffset, "workspace layout");

// Element access in the accumulation type A; V elements per 16-byte vector.
template <class S> struct Elem;
template <> struct Elem<double> {
  using A = double;
  static constexpr int V = 2;
  __device__ static A ld(const double& x) { return x; }
  __device__ static double st(A x) { return x; }
};
template <> struct Elem<float> {
  using A = float;
  static constexpr int V = 4;
  __device__ static A ld(const float& x) { return x; }
  __device__ static float st(A x) { return x; }
};
template <> struct Elem<__nv_bfloat16> {
  using A = float;
  static constexpr int V = 8;
  __device__ static A ld(const __nv_bfloat16& x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 st(A x) { return __float2bfloat16_rn(x); }
};
template <> struct Elem<__half> {
  using A = float;
  static constexpr int V = 8;
  __device__ static A ld(const __half& x) { return __half2float(x); }
  __device__ static __half st(A x) { return __float2half_rn(x); }
};

// N columns of the K (<= KM) rows starting at `col`: one 16-byte load per row when N = V
// (col aligned), else one element. Rows k..KM-1 read as zeros so the maths needs no guards.
template <class S, int KM, int N>
__device__ __forceinline__ void load_cols(const StepPlan& pl, int k, int64_t col,
                                          typename Elem<S>::A (&x)[KM][Elem<S>::V]) {
  constexpr int V = Elem<S>::V;
#pragma unroll
  for (int r = 0; r < KM; ++r) {
    const S* src = static_cast<const S*>(pl.rows[r]) + col;
    if (r < k && N == V) {
      union { uint4 raw; S e[V]; } u;
      u.raw = *reinterpret_cast<const uint4*>(src);
#pragma unroll
      for (int e = 0; e < V; ++e) x[r][e] = Elem<S>::ld(u.e[e]);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) x[r][e] = (r < k && e == 0) ? Elem<S>::ld(*src) : 0;
    }
  }
}

template <class S, int N>
__device__ __forceinline__ void store_cols(const StepPlan& pl, int64_t col,
                                           const typename Elem<S>::A (&v)[Elem<S>::V]) {
  constexpr int V = Elem<S>::V;
  S* dst = static_cast<S*>(pl.out) + col;
  if (N == V) {
    union { uint4 raw; S e[V]; } u;
#pragma unroll
    for (int e = 0; e < V; ++e) u.e[e] = Elem<S>::st(v[e]);
    *reinterpret_cast<uint4*>(dst) = u.raw;
  } else {
    *dst = Elem<S>::st(v[0]);
  }
}

template <int N>
using Cols = std::integral_constant<int, N>;

// Visits columns [lo, hi), grid-stride: a scalar head up to the first 16-byte boundary, vector
// groups two at a time (both groups' loads in flight together), a scalar tail.
// Calls f(Cols<1>, col), f(Cols<V>, col_a, col_b) or f(Cols<V>, col).
template <int V, class F>
__device__ __forceinline__ void for_columns(const void* row0, size_t esize, int64_t lo,
                                            int64_t hi, bool vec, F&& f) {
  const int64_t n = hi - lo;
  if (n <= 0) return;
  const int64_t gtid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t gsz = gridDim.x * int64_t(blockDim.x);
  int64_t head = n, nvec = 0;
  if (vec) {
    const int64_t phase = int64_t(reinterpret_cast<uintptr_t>(row0) / esize + lo) % V;
    head = (V - phase) % V < n ? (V - phase) % V : n;
    nvec = (n - head) / V;
  }
  const int64_t body = lo + head, tail = body + nvec * V, nscalar = head + (hi - tail);
  for (int64_t i = gtid; i < nscalar; i += gsz) f(Cols<1>{}, i < head ? lo + i : tail + (i - head));
  int64_t v = gtid;
  for (; v + gsz < nvec; v += 2 * gsz) f(Cols<V>{}, body + v * V, body + (v + gsz) * V);
  if (v < nvec) f(Cols<V>{}, body + v * V);
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // in lane 0
}

// One out-of-line copy of the solver per accumulation type keeps the kernels small. `tot` holds
// the reduced pairs (i <= j < km, row-major) of theta, then of theta_p; km >= k is the kernel's
// compiled row count (pairs with a padding row are zero and dropped here).
template <class T>
__device__ __noinline__ void finish_device(const double* tot, int km, bool entries_finite,
                                           const StepPlan& pl, Coef<T>* coef,
                                           const StepOuts& outs) {
  const int k = pl.k, np = km * (km + 1) / 2;
  T g[kMaxStreams * kMaxStreams], gp[kMaxStreams * kMaxStreams];
  for (int i = 0, q = 0; i < km; ++i) {
    for (int j = i; j < km; ++j, ++q) {
      if (j >= k) continue;
      g[i * k + j] = g[j * k + i] = static_cast<T>(tot[q]);
      gp[i * k + j] = gp[j * k + i] = static_cast<T>(tot[np + q]);
    }
  }
  finish(g, gp, entries_finite, pl, coef, outs);
}

// Pass 1 (+ the last block's reduction and solve). PROBE (standalone CGR only) also counts
// non-finite entries, because reference.cgr_rows zeroes on non-finite entries, not Gram.
// K = 2 streams in 48 registers (5 resident blocks per SM); the double-precision solve in
// finish_device alone would raise that to 64, so the bound caps it: ptxas spills inside the
// solve, which one thread runs once per step, not in the streaming loop.
template <class S, int KM, bool PROBE>
__global__ void __launch_bounds__(kThreads, KM == 2 ? 5 : 1)
    reduce_kernel(StepPlan pl, StepOuts outs, char* ws, bool vec) {
  using A = typename Elem<S>::A;
  constexpr int V = Elem<S>::V, NP = KM * (KM + 1) / 2, NS = 2 * NP + (PROBE ? 1 : 0);
  const int k = KM == 2 ? 2 : pl.k;
  A acc[NS];
#pragma unroll
  for (int s = 0; s < NS; ++s) acc[s] = 0;
#pragma unroll
  for (int seg = 0; seg < 2; ++seg) {  // unrolled: acc indices stay compile-time (registers)
    const int64_t lo = seg == 0 ? 0 : pl.split, hi = seg == 0 ? pl.split : pl.p;
    for_columns<V>(pl.rows[0], sizeof(S), lo, hi, vec, [&](auto n, auto... cols) {
      constexpr int U = sizeof...(cols);
      const int64_t at[U] = {cols...};
      A x[U][KM][V];
#pragma unroll
      for (int u = 0; u < U; ++u) load_cols<S, KM, decltype(n)::value>(pl, k, at[u], x[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int e = 0; e < decltype(n)::value; ++e) {
#pragma unroll
          for (int i = 0, q = 0; i < KM; ++i) {
#pragma unroll
            for (int j = i; j < KM; ++j, ++q) acc[seg * NP + q] += x[u][i][e] * x[u][j][e];
          }
          if constexpr (PROBE) {
#pragma unroll
            for (int i = 0; i < KM; ++i) acc[NS - 1] += isfinite(x[u][i][e]) ? A(0) : A(1);
          }
        }
      }
    });
  }

  __shared__ A warp_part[kWarps][NS];
  __shared__ double tot[NS];
  __shared__ bool last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    const A v = warp_sum(acc[s]);
    if (lane == 0) warp_part[warp][s] = v;
  }
  __syncthreads();
  A* partials = reinterpret_cast<A*>(ws + kPartialsOffset);
  if (threadIdx.x < NS) {
    A t = 0;
    for (int w = 0; w < kWarps; ++w) t += warp_part[w][threadIdx.x];
    partials[blockIdx.x * NS + threadIdx.x] = t;
  }
  __threadfence();  // release: this block's partials are visible device-wide before its ticket
  __syncthreads();
  unsigned* ticket = reinterpret_cast<unsigned*>(ws);
  if (threadIdx.x == 0) last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();  // acquire: every other block's partials are visible from here on
  for (int s = warp; s < NS; s += kWarps) {
    double t = 0;
    for (int b = lane; b < gridDim.x; b += 32) {
      t += static_cast<double>(__ldcg(partials + b * NS + s));
    }
    t = warp_sum(t);
    if (lane == 0) tot[s] = t;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const bool entries_finite = !PROBE || tot[NS - 1] == 0.0;
    auto* coef = reinterpret_cast<Coef<A>*>(ws + kCoefOffset);
    finish_device<A>(tot, KM, entries_finite, pl, coef, outs);
    *ticket = 0;
  }
}

// Pass 2: v = sum_j alpha_j g_j over theta (eq. 14), eq. 24 over theta_p; zeros when flagged.
template <class S, int KM>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(StepPlan pl, const char* ws, bool vec) {
  using A = typename Elem<S>::A;
  constexpr int V = Elem<S>::V;
  const int k = KM == 2 ? 2 : pl.k;
  const Coef<A>* cf = reinterpret_cast<const Coef<A>*>(ws + kCoefOffset);
  const bool zero = cf->zero != A(0);
  A alpha[KM], gamma[KM][KM];
#pragma unroll
  for (int i = 0; i < KM; ++i) {
    alpha[i] = i < k ? cf->alpha[i] : A(0);
#pragma unroll
    for (int j = 0; j < KM; ++j) gamma[i][j] = (i < j && j < k) ? cf->gamma[i * k + j] : A(0);
  }
#pragma unroll
  for (int seg = 0; seg < 2; ++seg) {
    const int64_t lo = seg == 0 ? 0 : pl.split, hi = seg == 0 ? pl.split : pl.p;
    for_columns<V>(pl.rows[0], sizeof(S), lo, hi, vec, [&](auto n, auto... cols) {
      constexpr int U = sizeof...(cols), N = decltype(n)::value;
      const int64_t at[U] = {cols...};
      A x[U][KM][V], v[U][V];
#pragma unroll
      for (int u = 0; u < U; ++u) load_cols<S, KM, N>(pl, k, at[u], x[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int e = 0; e < N; ++e) {
          A r;
          if (seg == 0) {
            r = alpha[0] * x[u][0][e];
#pragma unroll
            for (int j = 1; j < KM; ++j) r += alpha[j] * x[u][j][e];
          } else {
            r = x[u][0][e];
#pragma unroll
            for (int j = 1; j < KM; ++j) r += x[u][j][e];
#pragma unroll
            for (int i = 0; i < KM; ++i) {
#pragma unroll
              for (int j = i + 1; j < KM; ++j)
                r -= gamma[i][j] * x[u][i][e] * x[u][j][e] * (x[u][i][e] + x[u][j][e]);
            }
          }
          v[u][e] = zero ? A(0) : r;
        }
        store_cols<S, N>(pl, at[u], v[u]);
      }
    });
  }
}

template <class T>
__global__ void solve_mu_kernel(const T* gram, int k, double c, SolverKind solver, int iters,
                                T* mu) {
  solve_mu(gram, k, c, solver, iters, mu);
}

int sm_count(int device) {
  static int cache[64] = {};
  if (device < 0 || device >= 64) return 1;
  if (cache[device] == 0) {
    CSDFD_CUDA_CHECK(
        cudaDeviceGetAttribute(&cache[device], cudaDevAttrMultiProcessorCount, device));
  }
  return cache[device];
}

int vec_width(DType d) { return d == DType::kF64 ? 2 : d == DType::kF32 ? 4 : 8; }
size_t elem_size(DType d) { return d == DType::kF64 ? 8 : d == DType::kF32 ? 4 : 2; }

// Grid size: a deterministic function of P and the device (so is the summation order).
int grid_for(const StepPlan& pl, int device) {
  const int64_t groups = (pl.p + vec_width(pl.dtype) - 1) / vec_width(pl.dtype);
  const int64_t want = (groups + kThreads - 1) / kThreads;
  const int64_t cap = int64_t(sm_count(device)) * kBlocksPerSm;
  return static_cast<int>(want < 1 ? 1 : want < cap ? want : cap);
}

int slots(const StepPlan& pl) {
  const int km = pl.k == 2 ? 2 : pl.k <= 4 ? 4 : 8;
  return km * (km + 1) + (pl.mode == Mode::kCgr ? 1 : 0);
}

// 128-bit access needs every pointer at the same offset from a 16-byte boundary.
bool same_phase(const StepPlan& pl, bool with_out) {
  const size_t es = elem_size(pl.dtype), v = vec_width(pl.dtype);
  const auto phase = [&](const void* p) { return (reinterpret_cast<uintptr_t>(p) / es) % v; };
  bool ok = true;
  for (int r = 0; r < pl.k; ++r) ok = ok && phase(pl.rows[r]) == phase(pl.rows[0]);
  return ok && (!with_out || phase(pl.out) == phase(pl.rows[0]));
}

template <class S, int KM>
void launch_typed(const StepPlan& pl, const StepOuts& outs, char* ws, int grid,
                  cudaStream_t stream) {
  if (pl.mode == Mode::kCgr) {
    if constexpr (KM == 2) {
      reduce_kernel<S, 2, true><<<grid, kThreads, 0, stream>>>(pl, outs, ws, same_phase(pl, false));
    }
  } else {
    reduce_kernel<S, KM, false><<<grid, kThreads, 0, stream>>>(pl, outs, ws, same_phase(pl, false));
  }
  CSDFD_CUDA_CHECK(cudaGetLastError());
  if (pl.mode == Mode::kGram) return;
  combine_kernel<S, KM><<<grid, kThreads, 0, stream>>>(pl, ws, same_phase(pl, true));
  CSDFD_CUDA_CHECK(cudaGetLastError());
}

template <class S>
void launch_k(const StepPlan& pl, const StepOuts& outs, char* ws, int grid, cudaStream_t s) {
  if (pl.k == 2) return launch_typed<S, 2>(pl, outs, ws, grid, s);
  if (pl.k <= 4) return launch_typed<S, 4>(pl, outs, ws, grid, s);
  launch_typed<S, 8>(pl, outs, ws, grid, s);
}

}  // namespace

size_t cuda_workspace_bytes(const StepPlan& pl, int device) {
  return kPartialsOffset + size_t(grid_for(pl, device)) * slots(pl) * (is_double(pl.dtype) ? 8 : 4);
}

void run_cuda(const StepPlan& pl, const StepOuts& outs, void* workspace, int device,
              void* stream_ptr) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  char* ws = static_cast<char*>(workspace);
  CSDFD_CUDA_CHECK(cudaMemsetAsync(ws, 0, sizeof(unsigned), stream));
  const int grid = grid_for(pl, device);
  switch (pl.dtype) {
    case DType::kF64: return launch_k<double>(pl, outs, ws, grid, stream);
    case DType::kF32: return launch_k<float>(pl, outs, ws, grid, stream);
    case DType::kBF16: return launch_k<__nv_bfloat16>(pl, outs, ws, grid, stream);
    case DType::kF16: return launch_k<__half>(pl, outs, ws, grid, stream);
  }
}

void solve_mu_cuda(const void* gram, bool dbl, int k, double c, SolverKind solver, int iters,
                   void* mu, void* stream_ptr) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (dbl) {
    solve_mu_kernel<double><<<1, 1, 0, stream>>>(static_cast<const double*>(gram), k, c,
                                                        solver, iters, static_cast<double*>(mu));
  } else {
    solve_mu_kernel<float><<<1, 1, 0, stream>>>(static_cast<const float*>(gram), k, c, solver,
                                                      iters, static_cast<float*>(mu));
  }
  CSDFD_CUDA_CHECK(cudaGetLastError());
}

#define CSDFD_STR2(x) #x
#define CSDFD_STR(x) CSDFD_STR2(x)
const char* cuda_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return CSDFD_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

}  // namespace csdfd
