// csdfd._C: the CS-DFD gradient ops as torch ops (namespace csdfd), one schema per op.
//
// This file owns the schemas, the argument checks shared by both devices, and the bindings
// that turn tensors into a StepPlan (engine.h). The engines that run a plan live in
// cpu/uvs_cgr.cpp and cuda/uvs_cgr.cu; the CUDA one is registered here too, so the .cu file
// needs no torch headers (faster nvcc builds). Python wrappers, register_fake and the backend
// names "cpp" / "cuda" are in csdfd/ops/ext_backend.py. Semantics: csdfd/ops/reference.py.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#ifdef CSDFD_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "engine.h"
#include "solver.h"

namespace csdfd {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return DType::kF64;
    case at::kFloat: return DType::kF32;
    case at::kBFloat16: return DType::kBF16;
    case at::kHalf: return DType::kF16;
    default:
      TORCH_CHECK_TYPE(false, "csdfd: gradients must be float64, float32, bfloat16 or float16, "
                       "got ", t.scalar_type());
  }
}

at::ScalarType acc_of(at::ScalarType s) { return s == at::kDouble ? at::kDouble : at::kFloat; }

// Validates a [K, P] stream-gradient tensor; returns it with unit stride along P.
at::Tensor check_rows(const at::Tensor& g, const char* name) {
  TORCH_CHECK(g.dim() == 2, name, " must be 2-D [K streams, P parameters], got shape ",
              g.sizes(), "; flatten each stream's gradient into one row (see csdfd.FlatGrads)");
  TORCH_CHECK(g.size(0) >= 2 && g.size(0) <= kMaxStreams, name, " must have 2 <= K <= ",
              kMaxStreams, " rows for the cpp/cuda backends, got K=", g.size(0),
              "; use backend='reference' for more streams");
  dtype_of(g);
  return (g.size(1) <= 1 || g.stride(1) == 1) ? g : g.contiguous();
}

SolverKind check_solver(int64_t k, double c, c10::string_view solver, int64_t iters) {
  TORCH_CHECK(c >= 0, "c must be non-negative, but got ", c);
  TORCH_CHECK(solver == "pgd" || solver == "exact", "solver must be 'pgd' or 'exact', got '",
              std::string(solver.data(), solver.size()), "'");
  TORCH_CHECK(solver == "pgd" || k == 2, "solver='exact' solves K=2 only, got K=", k,
              "; use solver='pgd' for K > 2");
  TORCH_CHECK(iters <= (1 << 30), "iters must be at most 2^30, got ", iters);
  return solver == "exact" ? SolverKind::kExact : SolverKind::kPgd;
}

// The K rows of a [K, P] tensor as 1-D views (no copy).
std::vector<at::Tensor> rows_of(const at::Tensor& g) {
  std::vector<at::Tensor> rows;
  for (int64_t r = 0; r < g.size(0); ++r) rows.push_back(g.select(0, r));
  return rows;
}

// `out` receives a [P] result: same dtype and device as the rows, unit stride, and either one
// of the rows itself or not overlapping them (pass 2 reads and writes column by column).
void check_out(const at::Tensor& out, const std::vector<at::Tensor>& rows) {
  const at::Tensor& r0 = rows[0];
  const int64_t p = r0.numel();
  TORCH_CHECK(out.dim() == 1 && out.size(0) == p && out.scalar_type() == r0.scalar_type() &&
                  out.device() == r0.device(),
              "out must be a [", p, "] ", r0.scalar_type(), " tensor on ", r0.device(),
              ", got ", out.sizes(), " ", out.scalar_type(), " on ", out.device());
  TORCH_CHECK(p <= 1 || out.stride(0) == 1, "out must have unit stride, got stride ",
              out.stride(0), "; pass a contiguous tensor");
  for (size_t r = 0; r < rows.size(); ++r) {
    TORCH_CHECK(at::get_overlap_status(out, rows[r]) != at::MemOverlapStatus::Partial,
                "out partially overlaps gradient row ", r,
                "; pass that row itself (in place) or a separate tensor");
  }
}

// A plan over 1-D rows of equal length and unit stride; columns [0, split) are theta.
StepPlan make_plan(const std::vector<at::Tensor>& rows, Mode mode, int64_t split) {
  StepPlan pl{};
  pl.k = static_cast<int>(rows.size());
  pl.p = rows[0].numel();
  pl.split = split;
  pl.dtype = dtype_of(rows[0]);
  pl.mode = mode;
  for (int r = 0; r < pl.k; ++r) pl.rows[r] = rows[r].data_ptr();
  return pl;
}

// Runs a plan on the device of `like`: the CPU engine, or the CUDA engine on the current stream
// with a scratch buffer from the caching allocator (no host sync, CUDA-graph capturable).
void launch(const StepPlan& pl, const StepOuts& outs, const at::Tensor& like) {
  if (!like.is_cuda()) return run_cpu(pl, outs);
#ifdef CSDFD_WITH_CUDA
  const c10::cuda::CUDAGuard guard(like.device());
  const int dev = like.get_device();
  const auto bytes = static_cast<int64_t>(cuda_workspace_bytes(pl, dev));
  at::Tensor ws = at::empty({bytes}, like.options().dtype(at::kByte));
  run_cuda(pl, outs, ws.data_ptr(), dev, c10::cuda::getCurrentCUDAStream(dev).stream());
#else
  TORCH_CHECK(false, "csdfd._C was built without CUDA; rebuild it with nvcc available");
#endif
}

at::Tensor gram_op(const at::Tensor& grads_in) {
  const at::Tensor grads = check_rows(grads_in, "grads");
  const int64_t k = grads.size(0);
  at::Tensor g = at::empty({k, k}, grads.options().dtype(acc_of(grads.scalar_type())));
  StepPlan pl = make_plan(rows_of(grads), Mode::kGram, grads.size(1));
  launch(pl, StepOuts{g.data_ptr(), nullptr, nullptr, nullptr, nullptr}, grads);
  return g;
}

at::Tensor solve_mu_op(const at::Tensor& gram_in, double c, c10::string_view solver,
                       int64_t iters) {
  TORCH_CHECK(gram_in.dim() == 2 && gram_in.size(0) == gram_in.size(1) && gram_in.size(0) >= 2 &&
                  gram_in.size(0) <= kMaxStreams,
              "gram must be a square [K, K] matrix with 2 <= K <= ", kMaxStreams, ", got ",
              gram_in.sizes());
  TORCH_CHECK_TYPE(gram_in.scalar_type() == at::kFloat || gram_in.scalar_type() == at::kDouble,
                   "gram must be float32 or float64, got ", gram_in.scalar_type());
  const int k = static_cast<int>(gram_in.size(0));
  const SolverKind kind = check_solver(k, c, solver, iters);
  const at::Tensor g = gram_in.contiguous();
  at::Tensor mu = at::empty({k}, g.options());
  const bool dbl = g.scalar_type() == at::kDouble;
  const int it = static_cast<int>(std::max<int64_t>(iters, 0));
  if (!g.is_cuda()) {
    solve_mu_cpu(g.data_ptr(), dbl, k, c, kind, it, mu.data_ptr());
    return mu;
  }
#ifdef CSDFD_WITH_CUDA
  const c10::cuda::CUDAGuard guard(g.device());
  solve_mu_cuda(g.data_ptr(), dbl, k, c, kind, it, mu.data_ptr(),
                c10::cuda::getCurrentCUDAStream(g.get_device()).stream());
#endif
  return mu;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> uvs_op(
    const at::Tensor& grads_in, double c, c10::string_view solver, int64_t iters,
    at::Tensor& out) {
  const at::Tensor grads = check_rows(grads_in, "grads");
  const int64_t k = grads.size(0);
  const std::vector<at::Tensor> rows = rows_of(grads);
  check_out(out, rows);
  StepPlan pl = make_plan(rows, Mode::kUvs, grads.size(1));
  pl.solver = check_solver(k, c, solver, iters);
  pl.iters = static_cast<int>(std::max<int64_t>(iters, 0));
  pl.c = c;
  pl.out = out.data_ptr();
  const auto opts = grads.options().dtype(acc_of(grads.scalar_type()));
  at::Tensor mu = at::empty({k}, opts), alpha = at::empty({k}, opts);
  at::Tensor g = at::empty({k, k}, opts), status = at::empty({}, opts);
  launch(pl, StepOuts{g.data_ptr(), mu.data_ptr(), alpha.data_ptr(), status.data_ptr(), nullptr},
         grads);
  return {mu, alpha, g, status};
}

void cgr_op(const at::Tensor& g1, const at::Tensor& g2, double tau, at::Tensor& out) {
  TORCH_CHECK(g1.sizes() == g2.sizes() && g1.scalar_type() == g2.scalar_type() &&
                  g1.device() == g2.device(),
              "g1 and g2 must share shape, dtype and device, got ", g1.sizes(), "/",
              g1.scalar_type(), "/", g1.device(), " and ", g2.sizes(), "/", g2.scalar_type(),
              "/", g2.device());
  TORCH_CHECK(out.numel() == g1.numel() && out.is_contiguous(), "out must be a contiguous "
              "tensor of ", g1.numel(), " elements, got ", out.sizes(), " (contiguous: ",
              out.is_contiguous(), ")");
  dtype_of(g1);
  // Views when g1, g2 are contiguous (copies otherwise); rows need unit stride only.
  const std::vector<at::Tensor> rows = {g1.reshape(-1).contiguous(), g2.reshape(-1).contiguous()};
  const at::Tensor flat = out.view({-1});
  check_out(flat, rows);
  StepPlan pl = make_plan(rows, Mode::kCgr, 0);
  pl.tau = tau;
  pl.out = flat.data_ptr();
  launch(pl, StepOuts{}, g1);
}

void uvs_cgr_op(const at::Tensor& buf_in, int64_t split, double c, double tau,
                c10::string_view solver, int64_t iters, at::Tensor& out, at::Tensor& diag) {
  const at::Tensor buf = check_rows(buf_in, "buf");
  const int64_t k = buf.size(0), p = buf.size(1);
  TORCH_CHECK(split >= 0 && split <= p, "split must lie in [0, P=", p,
              "] (theta is [0, split)), got ", split);
  const std::vector<at::Tensor> rows = rows_of(buf);
  check_out(out, rows);
  TORCH_CHECK(diag.scalar_type() == at::kFloat && diag.numel() == 2 * k * k + 2 * k + 1 &&
                  diag.is_contiguous() && diag.device() == buf.device(),
              "diag must be a contiguous float32 tensor of ", 2 * k * k + 2 * k + 1,
              " elements on ", buf.device(), " for K=", k, ", got ", diag.sizes(), " ",
              diag.scalar_type(), " on ", diag.device());
  StepPlan pl = make_plan(rows, Mode::kStep, split);
  pl.solver = check_solver(k, c, solver, iters);
  pl.iters = static_cast<int>(std::max<int64_t>(iters, 0));
  pl.c = c;
  pl.tau = tau;
  pl.out = out.data_ptr();
  launch(pl, StepOuts{nullptr, nullptr, nullptr, nullptr, diag.data_ptr<float>()}, buf);
}

}  // namespace

TORCH_LIBRARY(csdfd, m) {
  m.def("gram(Tensor grads) -> Tensor");
  m.def("solve_mu(Tensor gram, float c, str solver, int iters) -> Tensor");
  m.def("uvs(Tensor grads, float c, str solver, int iters, Tensor(a!) out) "
        "-> (Tensor mu, Tensor alpha, Tensor gram, Tensor status)");
  m.def("cgr(Tensor g1, Tensor g2, float tau, Tensor(a!) out) -> ()");
  m.def("uvs_cgr(Tensor buf, int split, float c, float tau, str solver, int iters, "
        "Tensor(a!) out, Tensor(b!) diag) -> ()");
}

TORCH_LIBRARY_IMPL(csdfd, CPU, m) {
  m.impl("gram", &gram_op);
  m.impl("solve_mu", &solve_mu_op);
  m.impl("uvs", &uvs_op);
  m.impl("cgr", &cgr_op);
  m.impl("uvs_cgr", &uvs_cgr_op);
}

#ifdef CSDFD_WITH_CUDA
TORCH_LIBRARY_IMPL(csdfd, CUDA, m) {
  m.impl("gram", &gram_op);
  m.impl("solve_mu", &solve_mu_op);
  m.impl("uvs", &uvs_op);
  m.impl("cgr", &cgr_op);
  m.impl("uvs_cgr", &uvs_cgr_op);
}
#endif

}  // namespace csdfd

// How setup.py built this library (define CSDFD_BUILD_MODE): see ext_backend.unavailable_reason.
#ifndef CSDFD_BUILD_MODE
#define CSDFD_BUILD_MODE 0
#endif
static const char* build_mode() {
  switch (CSDFD_BUILD_MODE) {
    case 1: return "cuda";
    case 2: return "cpu-only requested (CSDFD_CPU_ONLY=1)";
    case 3: return "cpu-only: this torch has no CUDA";
    case 4: return "cpu-only: no CUDA toolkit (nvcc) found at build time";
    default: return "cpu-only";
  }
}

// `import csdfd._C` loads this library (running the registrations above) and exposes how it
// was built, so csdfd.ops.ext_backend can say why a backend is unavailable.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "csdfd torch ops (csdfd::*)", -1,
                            nullptr};
  PyObject* mod = PyModule_Create(&def);
  if (mod == nullptr) return nullptr;
#ifdef CSDFD_WITH_CUDA
  PyModule_AddIntConstant(mod, "WITH_CUDA", 1);
  PyModule_AddStringConstant(mod, "CUDA_ARCHS", csdfd::cuda_arch_list());
#else
  PyModule_AddIntConstant(mod, "WITH_CUDA", 0);
  PyModule_AddStringConstant(mod, "CUDA_ARCHS", "");
#endif
  PyModule_AddStringConstant(mod, "BUILD_MODE", build_mode());
  PyModule_AddIntConstant(mod, "MAX_STREAMS", csdfd::kMaxStreams);
  // The solver settings compiled in (solver.h), so tests can check them against reference.py.
  PyModule_AddIntConstant(mod, "BACKTRACKS", csdfd::kBacktracks);
  PyModule_AddObject(mod, "PGD_BETA0", PyFloat_FromDouble(csdfd::kPgdBeta0));
  PyModule_AddObject(mod, "PGD_BETA_MAX", PyFloat_FromDouble(csdfd::kPgdBetaMax));
  PyModule_AddObject(mod, "TINY", PyFloat_FromDouble(csdfd::kTiny));
  PyModule_AddObject(mod, "ZERO_REL_F32", PyFloat_FromDouble(csdfd::kZeroRelF32));
  PyModule_AddObject(mod, "ZERO_REL_F64", PyFloat_FromDouble(csdfd::kZeroRelF64));
  PyModule_AddObject(mod, "RIDGE", PyFloat_FromDouble(csdfd::kRidge));
  PyModule_AddObject(mod, "KKT_TOL", PyFloat_FromDouble(csdfd::kKktTol));
  PyModule_AddIntConstant(mod, "POLISH_ROUNDS", csdfd::kPolishRounds);
  PyModule_AddIntConstant(mod, "NNLS_ROUNDS", csdfd::kNnlsRounds);
  PyModule_AddIntConstant(mod, "NNLS_REFINE", csdfd::kNnlsRefine);
  return mod;
}
