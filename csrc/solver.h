// The tiny scalar part of a CS-DFD step, shared by the CPU engine (host C++) and the CUDA engine
// (run by one thread of the last block of the reduction launch). It mirrors
// csdfd/ops/reference.py operation by operation, in the accumulation type T (float for
// fp32/bf16/fp16 gradients, double for fp64), so every backend solves the same problem the same
// way: solve_mu (paper eq. 16 with FISTA + backtracking, or the exact K = 2 bisection),
// combine_weights (eq. 14), the CGR factors gamma (eq. 24) and the status flags of
// csdfd/ops/stats.py.
#pragma once

#include <cstdint>

#include "engine.h"

#ifdef __CUDA_ARCH__
#define CSDFD_ISFINITE(x) isfinite(x)
#define CSDFD_SQRT(x) sqrt(x)
#else
#include <cmath>
#define CSDFD_ISFINITE(x) std::isfinite(x)
#define CSDFD_SQRT(x) std::sqrt(x)
#endif

namespace csdfd {

// Mirrors reference.py (tests/test_ext.py checks they agree): _TINY (floor of divisors),
// PGD_BETA0 (first step), PGD_BETA_MAX (step cap), BACKTRACKS (steps tried per iteration).
constexpr double kTiny = 1e-30;
constexpr double kPgdBeta0 = 1.0;
constexpr double kPgdBetaMax = 64.0;
constexpr int kBacktracks = 16;
// The smallest candidate factor 2^(1 - (kBacktracks - 1)); an iteration with no accepted step
// multiplies beta by it (reference: beta * ladder[-1]).
constexpr double kLadderLast = 1.0 / (1 << (kBacktracks - 2));
// stats.ZERO_REL: squared norms below rel * trace(G) count as zero.
constexpr double kZeroRelF32 = 1e-6;
constexpr double kZeroRelF64 = 1e-12;

template <class T>
CSDFD_HD inline T max_(T a, T b) { return a > b ? a : b; }  // max(nan, b) = b like clamp_min
template <class T>
CSDFD_HD inline T min_(T a, T b) { return a < b ? a : b; }

template <class T>
CSDFD_HD inline bool all_finite(const T* g, int n) {
  bool ok = true;
  for (int i = 0; i < n; ++i) ok = ok && CSDFD_ISFINITE(g[i]);
  return ok;
}

// psi(mu) = mu . b + c ||g0|| sqrt(mu^T G mu), the dual of eq. 15 (reference._psi).
template <class T>
CSDFD_HD T psi(const T* gn, const T* b, T cs0, const T* mu, int k) {
  T mb = 0, q = 0;
  for (int j = 0; j < k; ++j) mb += mu[j] * b[j];
  for (int j = 0; j < k; ++j) {
    T r = 0;  // (mu @ gn)_j
    for (int i = 0; i < k; ++i) r += mu[i] * gn[i * k + j];
    q += r * mu[j];
  }
  return mb + cs0 * CSDFD_SQRT(max_(q, T(0)));
}

// Euclidean projection onto the probability simplex (reference.project_simplex): sort
// descending, theta* = max_k (cumsum_k - 1) / k, x <- max(x - theta*, 0). In place.
template <class T>
CSDFD_HD void project_simplex(T* x, int k) {
  T u[kMaxStreams];
  for (int i = 0; i < k; ++i) u[i] = x[i];
  for (int i = 1; i < k; ++i) {  // insertion sort, descending (k <= 8)
    T v = u[i];
    int j = i - 1;
    for (; j >= 0 && u[j] < v; --j) u[j + 1] = u[j];
    u[j + 1] = v;
  }
  T cs = 0, theta = 0;
  for (int i = 0; i < k; ++i) {
    cs += u[i];
    T t = (cs - T(1)) / T(i + 1);
    theta = (i == 0 || t > theta) ? t : theta;
  }
  for (int i = 0; i < k; ++i) x[i] = max_(x[i] - theta, T(0));
}

// Column sums b_j = g_j . g0 of a (normalised) Gram matrix; returns their sum.
template <class T>
CSDFD_HD T column_sums(const T* gn, int k, T* b) {
  T s = 0;
  for (int j = 0; j < k; ++j) {
    b[j] = 0;
    for (int i = 0; i < k; ++i) b[j] += gn[i * k + j];
  }
  for (int j = 0; j < k; ++j) s += b[j];
  return s;
}

// Projected gradient on the simplex, eq. 16, as reference._pgd: uniform start; each iteration
// tries the steps beta * 2^(1-i), i = 0..kBacktracks-1, largest first, and keeps the first
// candidate Proj(y - beta_i grad) that passes the sufficient-decrease test (Beck-Teboulle);
// FISTA extrapolation with a restart when psi goes up. Candidates are tried in order and the
// loop stops at the first that passes, which is the reference's argmax over all of them.
template <class T>
CSDFD_HD void solve_pgd(const T* gn, int k, T c, int iters, T* mu) {
  T b[kMaxStreams], y[kMaxStreams], gy[kMaxStreams], grad[kMaxStreams], cand[kMaxStreams];
  T nxt[kMaxStreams];
  const T sum_b = column_sums(gn, k, b);
  const T cs0 = c * CSDFD_SQRT(max_(sum_b, T(0))), tiny = T(kTiny);
  const T eps = T(sizeof(T) == 8 ? 2.220446049250313e-16 : 1.1920928955078125e-07);
  const T slack = T(16) * eps * (sum_b + T(1));
  for (int j = 0; j < k; ++j) mu[j] = y[j] = T(1.0 / k);
  T f_mu = psi(gn, b, cs0, mu, k), t = T(1), beta = T(kPgdBeta0);
  for (int it = 0; it < iters; ++it) {
    T q = 0;
    for (int i = 0; i < k; ++i) {
      gy[i] = 0;
      for (int j = 0; j < k; ++j) gy[i] += gn[i * k + j] * y[j];
    }
    for (int i = 0; i < k; ++i) q += y[i] * gy[i];
    const T nw = CSDFD_SQRT(max_(q, T(0)));  // ||gw(y)||
    for (int j = 0; j < k; ++j) grad[j] = b[j] + cs0 * gy[j] / max_(nw, tiny);
    const T f_y = psi(gn, b, cs0, y, k);
    bool moved = false;
    T f_new = f_y, ladder = T(2);  // 2^(1-i): exact powers of two
    for (int i = 0; i < kBacktracks && !moved; ++i, ladder = ladder / T(2)) {
      const T bi = beta * ladder;
      for (int j = 0; j < k; ++j) cand[j] = y[j] - bi * grad[j];
      project_simplex(cand, k);
      T dg = 0, dd = 0;
      for (int j = 0; j < k; ++j) dg += (cand[j] - y[j]) * grad[j];
      for (int j = 0; j < k; ++j) dd += (cand[j] - y[j]) * (cand[j] - y[j]);
      const T f_c = psi(gn, b, cs0, cand, k);
      if (f_c <= f_y + dg + dd / (T(2) * bi) + slack * (T(1) + (f_y < T(0) ? -f_y : f_y))) {
        moved = true;
        f_new = f_c;
        beta = bi;
        for (int j = 0; j < k; ++j) nxt[j] = cand[j];
      }
    }
    if (!moved) {
      beta = beta * T(kLadderLast);
      for (int j = 0; j < k; ++j) nxt[j] = y[j];
    }
    beta = min_(beta, T(kPgdBetaMax));
    const bool worse = f_new > f_mu;  // restart the momentum
    const T t_next = (T(1) + CSDFD_SQRT(T(1) + T(4) * t * t)) / T(2);
    for (int j = 0; j < k; ++j) {
      y[j] = worse ? mu[j] : nxt[j] + ((t - T(1)) / t_next) * (nxt[j] - mu[j]);
    }
    t = worse ? T(1) : t_next;
    if (!worse) {
      for (int j = 0; j < k; ++j) mu[j] = nxt[j];
    }
    f_mu = min_(f_mu, f_new);
  }
}

// d psi / dt for mu = (t, 1 - t) (reference._exact2.slope); 0 curvature term at a kink.
template <class T>
CSDFD_HD T exact_slope(const T* gn, const T* b, T cs0, T t) {
  const T m0 = t, m1 = T(1) - t;
  const T g0 = gn[0] * m0 + gn[1] * m1, g1 = gn[2] * m0 + gn[3] * m1;
  const T nw = CSDFD_SQRT(max_(m0 * g0 + m1 * g1, T(0)));
  const T curv = nw > T(0) ? (g0 - g1) / max_(nw, T(kTiny)) : T(0);
  return (b[0] - b[1]) + cs0 * curv;
}

// Exact K = 2 solution: psi(t) is convex on [0, 1]; bisect on the sign of its slope.
template <class T>
CSDFD_HD void solve_exact2(const T* gn, T c, int iters, T* mu) {
  T b[2];
  const T cs0 = c * CSDFD_SQRT(max_(column_sums(gn, 2, b), T(0)));
  T lo = 0, hi = 1;
  for (int it = 0; it < iters; ++it) {
    const T mid = (lo + hi) / T(2);
    if (exact_slope(gn, b, cs0, mid) < T(0)) lo = mid; else hi = mid;
  }
  T t = (lo + hi) / T(2);
  if (exact_slope(gn, b, cs0, T(1)) <= T(0)) t = T(1);
  if (exact_slope(gn, b, cs0, T(0)) >= T(0)) t = T(0);
  mu[0] = t;
  mu[1] = T(1) - t;
}

// reference.solve_mu: trace-normalised finite Gram, then PGD or the exact K = 2 solver;
// a non-finite Gram gives the uniform start.
template <class T>
CSDFD_HD void solve_mu(const T* g, int k, T c, SolverKind solver, int iters, T* mu) {
  if (!all_finite(g, k * k)) {
    for (int j = 0; j < k; ++j) mu[j] = T(1.0 / k);
    return;
  }
  T tr = 0, gn[kMaxStreams * kMaxStreams];
  for (int i = 0; i < k; ++i) tr += g[i * k + i];
  tr = max_(tr, T(kTiny));
  for (int i = 0; i < k * k; ++i) gn[i] = g[i] / tr;
  if (solver == SolverKind::kExact) solve_exact2(gn, c, iters, mu);
  else solve_pgd(gn, k, c, iters, mu);
}

// reference.combine_weights: alpha_j = 1 + (c ||g0|| / ||gw||) mu_j (eq. 14) and the status
// flags; alpha = 1 when ||g0|| or ||gw|| is ~0, alpha = 0 for a non-finite Gram.
template <class T>
CSDFD_HD int combine_weights(const T* g, const T* mu, int k, T c, T* alpha) {
  const bool fin = all_finite(g, k * k);
  const T rel = T(sizeof(T) == 8 ? kZeroRelF64 : kZeroRelF32);
  T tr = 0, g0_sq = 0, gw_sq = 0;
  for (int i = 0; i < k; ++i) tr += fin ? g[i * k + i] : T(0);
  for (int i = 0; i < k * k; ++i) g0_sq += fin ? g[i] : T(0);
  for (int j = 0; j < k; ++j) {
    T r = 0;
    for (int i = 0; i < k; ++i) r += mu[i] * (fin ? g[i * k + j] : T(0));
    gw_sq += r * mu[j];
  }
  const bool zero_g0 = fin && g0_sq <= rel * tr;
  const bool zero_gw = fin && !zero_g0 && gw_sq <= rel * tr;
  const T scale = c * CSDFD_SQRT(max_(g0_sq, T(0))) / CSDFD_SQRT(max_(gw_sq, T(kTiny)));
  for (int j = 0; j < k; ++j) {
    alpha[j] = (zero_g0 || zero_gw) ? T(1) : T(1) + scale * mu[j];
    if (!fin) alpha[j] = T(0);
  }
  return (fin ? 0 : kNonfinite) + (zero_g0 ? kZeroG0 : 0) + (zero_gw ? kZeroGw : 0);
}

// CGR factors gamma_ij = tau / (||g_i|| ||g_j||) for i < j (eq. 24; reference.cgr_rows),
// 0 when a norm is 0. Stored at gamma[i * k + j].
template <class T>
CSDFD_HD void cgr_gamma(const T* gp, int k, T tau, T* gamma) {
  for (int i = 0; i < k; ++i) {
    for (int j = i + 1; j < k; ++j) {
      const T prod = CSDFD_SQRT(gp[i * k + i]) * CSDFD_SQRT(gp[j * k + j]);
      gamma[i * k + j] = prod > T(0) ? tau / max_(prod, T(kTiny)) : T(0);
    }
  }
}

// Everything between the two passes: from the reduced Gram matrices g (theta) and gp (theta_p)
// to the pass-2 coefficients and the requested outputs (reference.gram / uvs / cgr_rows /
// uvs_cgr). entries_finite matters only for Mode::kCgr (reference.cgr_rows tests the entries).
template <class T>
CSDFD_HD void finish(const T* g, const T* gp, bool entries_finite, const StepPlan& pl,
                     Coef<T>* coef, const StepOuts& outs) {
  const int k = pl.k, kk = k * k;
  T mu[kMaxStreams], alpha[kMaxStreams];
  coef->zero = T(0);
  if (pl.mode == Mode::kGram) {
    for (int i = 0; i < kk; ++i) static_cast<T*>(outs.gram)[i] = g[i];
    return;
  }
  if (pl.mode == Mode::kCgr) {
    cgr_gamma(gp, k, T(pl.tau), coef->gamma);
    coef->zero = entries_finite ? T(0) : T(1);
    return;
  }
  solve_mu(g, k, T(pl.c), pl.solver, pl.iters, mu);
  const int status = combine_weights(g, mu, k, T(pl.c), alpha);
  for (int j = 0; j < k; ++j) coef->alpha[j] = alpha[j];
  if (pl.mode == Mode::kUvs) {
    coef->zero = (status & kNonfinite) ? T(1) : T(0);
    for (int i = 0; i < kk; ++i) static_cast<T*>(outs.gram)[i] = g[i];
    for (int j = 0; j < k; ++j) static_cast<T*>(outs.mu)[j] = mu[j];
    for (int j = 0; j < k; ++j) static_cast<T*>(outs.alpha)[j] = alpha[j];
    *static_cast<T*>(outs.status) = T(status);
    return;
  }
  // Mode::kStep: one non-finite segment zeroes the whole step (reference.uvs_cgr).
  const bool fin = all_finite(g, kk) && all_finite(gp, kk);
  cgr_gamma(gp, k, T(pl.tau), coef->gamma);
  coef->zero = fin ? T(0) : T(1);
  bool zero_gp = false;
  for (int i = 0; i < k; ++i) zero_gp = zero_gp || gp[i * k + i] <= T(0);
  zero_gp = zero_gp && fin && pl.split < pl.p;
  float* d = outs.diag;
  for (int i = 0; i < kk; ++i) d[i] = static_cast<float>(g[i]);
  for (int i = 0; i < kk; ++i) d[kk + i] = static_cast<float>(gp[i]);
  for (int j = 0; j < k; ++j) d[2 * kk + j] = static_cast<float>(fin ? mu[j] : T(1.0 / k));
  for (int j = 0; j < k; ++j) d[2 * kk + k + j] = static_cast<float>(fin ? alpha[j] : T(0));
  d[2 * kk + 2 * k] = static_cast<float>((fin ? status : kNonfinite) + (zero_gp ? kZeroGp : 0));
}

}  // namespace csdfd
