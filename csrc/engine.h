// The two-pass engine behind every op, as plain data shared by the bindings (ops.cpp), the CPU
// engine (cpu/uvs_cgr.cpp) and the CUDA engine (cuda/uvs_cgr.cu). No torch types here, so the
// CUDA translation unit stays light and this header compiles for host and device.
//
// A step reads K gradient rows of P columns. Columns [0, split) are theta (UVS, eq. 14),
// columns [split, P) are theta_p (CGR, eq. 24). Pass 1 reduces both segments' K x K Gram
// matrices in one read; finish() (solver.h) turns them into coefficients; pass 2 writes
// sum_j alpha_j g_j over theta and eq. 24 over theta_p into `out` (which may be row 0).
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define CSDFD_HD __host__ __device__
#else
#define CSDFD_HD
#endif

namespace csdfd {

// Streams supported by the compiled engines (the solver keeps K-sized arrays on the stack).
constexpr int kMaxStreams = 8;

// Status bit flags; must equal csdfd/ops/stats.py.
constexpr int kNonfinite = 1, kZeroG0 = 2, kZeroGw = 4, kZeroGp = 8;

enum class DType : int { kF64 = 0, kF32 = 1, kBF16 = 2, kF16 = 3 };

// What a launch computes: kGram (pass 1 on theta only, writes the Gram matrix), kUvs (theta
// only: v, mu, alpha, gram, status), kCgr (theta_p only: eq. 24), kStep (both, and diag).
enum class Mode : int { kGram = 0, kUvs = 1, kCgr = 2, kStep = 3 };

enum class SolverKind : int { kPgd = 0, kExact = 1 };

struct StepPlan {
  const void* rows[kMaxStreams];  // row r starts at rows[r]; unit stride along P
  void* out;                      // [P] output (unit stride); null for kGram
  int64_t p;
  int64_t split;
  int k;
  DType dtype;
  Mode mode;
  SolverKind solver;
  int iters;
  double c;    // trust-region size of eq. 11
  double tau;  // Fisher scale of eq. 24
};

// Outputs written between the passes; typed in the accumulation type (float or double),
// except diag (float32, layout of csdfd/ops/stats.py). Unused ones are null.
struct StepOuts {
  void* gram;
  void* mu;
  void* alpha;
  void* status;
  float* diag;
};

// Pass-2 coefficients in the accumulation type.
template <class T>
struct Coef {
  T alpha[kMaxStreams];
  T gamma[kMaxStreams * kMaxStreams];  // gamma[i * k + j], i < j
  T zero;                              // 1: write zeros (non-finite input)
};

inline bool is_double(DType d) { return d == DType::kF64; }

void run_cpu(const StepPlan& plan, const StepOuts& outs);
void solve_mu_cpu(const void* gram, bool dbl, int k, double c, SolverKind solver, int iters,
                  void* mu);

#ifdef CSDFD_WITH_CUDA
// Bytes of device scratch (ticket, coefficients, per-block partials) a CUDA step needs.
size_t cuda_workspace_bytes(const StepPlan& plan, int device);
// Launches the step on `stream` (a cudaStream_t); `workspace` holds cuda_workspace_bytes.
void run_cuda(const StepPlan& plan, const StepOuts& outs, void* workspace, int device,
              void* stream);
void solve_mu_cuda(const void* gram, bool dbl, int k, double c, SolverKind solver, int iters,
                   void* mu, void* stream);
// Architectures the CUDA sources were compiled for (nvcc's __CUDA_ARCH_LIST__).
const char* cuda_arch_list();
#endif

}  // namespace csdfd
