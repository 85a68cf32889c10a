// The tiny scalar part of a CS-DFD step, shared by the CPU engine (host C++) and the CUDA engine
// (run by one thread of the last block of the reduction launch). It mirrors
// csdfd/ops/solver.py (the K x K part of csdfd/ops/reference.py) operation by operation, in
// double whatever the gradients' dtype (the problem is K x K; float32 could fix mu only to
// ~1e-3): solve_mu (paper eq. 16 with FISTA + backtracking and the exact finish on the
// support, or the exact K = 2 bisection), the update's weights (eq. 14, or the projection of
// g0 onto {v : g_j . v >= 0} at Pareto-stationary points), the CGR factors gamma (eq. 24) and
// the status flags of csdfd/ops/stats.py. Only the Gram matrices and the outputs are in the
// accumulation type T (float for fp32/bf16/fp16 gradients, double for fp64).
#pragma once

#include <cstdint>

#include "engine.h"
#include "kkt.h"

namespace csdfd {

// Mirrors reference.py (tests/test_ext.py checks they agree): PGD_BETA0 (first step),
// PGD_BETA_MAX (step cap), BACKTRACKS (steps tried per iteration).
constexpr double kPgdBeta0 = 1.0;
constexpr double kPgdBetaMax = 64.0;
constexpr int kBacktracks = 16;
// The smallest candidate factor 2^(1 - (kBacktracks - 1)); an iteration with no accepted step
// multiplies beta by it (reference: beta * ladder[-1]).
constexpr double kLadderLast = 1.0 / (1 << (kBacktracks - 2));
// stats.ZERO_REL: squared norms below rel * trace(G) count as zero; stats.UNIT_ROUNDOFF.
constexpr double kZeroRelF32 = 1e-6;
constexpr double kZeroRelF64 = 1e-12;
constexpr double kUnitF32 = 1.0 / (1 << 24);
constexpr double kUnitF64 = kEps64 / 2;

template <class T>
CSDFD_HD inline T max_(T a, T b) { return a > b ? a : b; }  // max(nan, b) = b like clamp_min

template <class T>
CSDFD_HD inline bool all_finite(const T* g, int n) {
  bool ok = true;
  for (int i = 0; i < n; ++i) ok = ok && CSDFD_ISFINITE(g[i]);
  return ok;
}

// psi(mu) = mu . b + r sqrt(mu^T G mu), the dual of eq. 15 (solver.psi).
CSDFD_HD inline double psi(const double* gn, const double* b, double r, const double* mu, int k) {
  double mb = 0, q = 0;
  for (int j = 0; j < k; ++j) mb += mu[j] * b[j];
  for (int j = 0; j < k; ++j) {
    double t = 0;  // (mu @ gn)_j
    for (int i = 0; i < k; ++i) t += mu[i] * gn[i * k + j];
    q += t * mu[j];
  }
  return mb + r * CSDFD_SQRT(dmax(q, 0.0));
}

// Euclidean projection onto the probability simplex (solver.project_simplex): sort
// descending, theta* = max_k (cumsum_k - 1) / k, x <- max(x - theta*, 0). In place.
CSDFD_HD inline void project_simplex(double* x, int k) {
  double u[kMaxStreams];
  for (int i = 0; i < k; ++i) u[i] = x[i];
  for (int i = 1; i < k; ++i) {  // insertion sort, descending (k <= 8)
    double v = u[i];
    int j = i - 1;
    for (; j >= 0 && u[j] < v; --j) u[j + 1] = u[j];
    u[j + 1] = v;
  }
  double cs = 0, theta = 0;
  for (int i = 0; i < k; ++i) {
    cs += u[i];
    const double t = (cs - 1.0) / double(i + 1);
    theta = (i == 0 || t > theta) ? t : theta;
  }
  for (int i = 0; i < k; ++i) x[i] = dmax(x[i] - theta, 0.0);
}

// Column sums b_j = g_j . g0 of the normalised Gram matrix; returns r = c ||g0||.
CSDFD_HD inline double column_sums(const double* gn, int k, double c, double* b) {
  double s = 0;
  for (int j = 0; j < k; ++j) {
    b[j] = 0;
    for (int i = 0; i < k; ++i) b[j] += gn[i * k + j];
  }
  for (int j = 0; j < k; ++j) s += b[j];
  return c * CSDFD_SQRT(dmax(s, 0.0));
}

// Projected gradient on the simplex, eq. 16, as solver.pgd: uniform start; each iteration
// tries the steps beta * 2^(1-i), i = 0..kBacktracks-1, largest first, and keeps the first
// candidate Proj(y - beta_i grad) that passes the sufficient-decrease test (Beck-Teboulle);
// FISTA extrapolation with a restart when psi goes up. Candidates are tried in order and the
// loop stops at the first that passes, which is the reference's argmax over all of them.
CSDFD_HD inline void solve_pgd(const double* gn, int k, double c, int iters, double* mu) {
  double b[kMaxStreams], y[kMaxStreams], gy[kMaxStreams], grad[kMaxStreams];
  double cand[kMaxStreams], nxt[kMaxStreams];
  const double r = column_sums(gn, k, c, b);
  double sum_b = 0;
  for (int j = 0; j < k; ++j) sum_b += b[j];
  const double slack = 16.0 * kEps64 * (sum_b + 1.0);
  for (int j = 0; j < k; ++j) mu[j] = y[j] = 1.0 / k;
  double f_mu = psi(gn, b, r, mu, k), t = 1.0, beta = kPgdBeta0;
  for (int it = 0; it < iters; ++it) {
    double q = 0;
    for (int i = 0; i < k; ++i) {
      gy[i] = 0;
      for (int j = 0; j < k; ++j) gy[i] += gn[i * k + j] * y[j];
    }
    for (int i = 0; i < k; ++i) q += y[i] * gy[i];
    const double nw = CSDFD_SQRT(dmax(q, 0.0));  // ||gw(y)||
    for (int j = 0; j < k; ++j) {  // g_j . gw / ||gw|| within its bound ||g_j||
      const double nj = CSDFD_SQRT(dmax(gn[j * k + j], 0.0));
      grad[j] = b[j] + r * dmin(dmax(gy[j] / dmax(nw, kTiny), -nj), nj);
    }
    const double f_y = psi(gn, b, r, y, k);
    bool moved = false;
    double f_new = f_y, ladder = 2.0;  // 2^(1-i): exact powers of two
    for (int i = 0; i < kBacktracks && !moved; ++i, ladder = ladder / 2.0) {
      const double bi = beta * ladder;
      for (int j = 0; j < k; ++j) cand[j] = y[j] - bi * grad[j];
      project_simplex(cand, k);
      double dg = 0, dd = 0;
      for (int j = 0; j < k; ++j) dg += (cand[j] - y[j]) * grad[j];
      for (int j = 0; j < k; ++j) dd += (cand[j] - y[j]) * (cand[j] - y[j]);
      const double f_c = psi(gn, b, r, cand, k);
      if (f_c <= f_y + dg + dd / (2.0 * bi) + slack * (1.0 + (f_y < 0 ? -f_y : f_y))) {
        moved = true;
        f_new = f_c;
        beta = bi;
        for (int j = 0; j < k; ++j) nxt[j] = cand[j];
      }
    }
    if (!moved) {
      beta = beta * kLadderLast;
      for (int j = 0; j < k; ++j) nxt[j] = y[j];
    }
    beta = dmin(beta, kPgdBetaMax);
    const bool worse = f_new > f_mu;  // restart the momentum
    const double t_next = (1.0 + CSDFD_SQRT(1.0 + 4.0 * t * t)) / 2.0;
    for (int j = 0; j < k; ++j) {
      y[j] = worse ? mu[j] : nxt[j] + ((t - 1.0) / t_next) * (nxt[j] - mu[j]);
    }
    t = worse ? 1.0 : t_next;
    if (!worse) {
      for (int j = 0; j < k; ++j) mu[j] = nxt[j];
    }
    f_mu = dmin(f_mu, f_new);
  }
}

// solver.inv_norm: 1 / ||gw(mu)|| from the Gram matrix; -1 (the reference's inf) where gw = 0.
CSDFD_HD inline double inv_norm(const double* gn, const double* mu, int k) {
  double q = 0;
  for (int i = 0; i < k; ++i) {
    double t = 0;
    for (int j = 0; j < k; ++j) t += gn[i * k + j] * mu[j];
    q += mu[i] * t;
  }
  return q > kTiny ? 1.0 / CSDFD_SQRT(q) : -1.0;
}

// The exact finish of solver.polish: KKT points of eq. 15 on the iterate's support, with
// active-set updates; a KKT point is taken, another valid point only where psi does not rise.
// *inv_gw: 1 / ||gw|| of the result (sum(nu) for a face point: accurate as gw -> 0).
CSDFD_HD inline void polish(const double* gn, int k, double c, double* mu, double* inv_gw) {
  double b[kMaxStreams], nu[kMaxStreams], cand[kMaxStreams];
  const double r = column_sums(gn, k, c, b);
  double f_best = psi(gn, b, r, mu, k);
  *inv_gw = inv_norm(gn, mu, k);
  const double slack = 16.0 * kEps64 * (1.0 + (f_best < 0 ? -f_best : f_best));
  unsigned s = 0;
  for (int j = 0; j < k; ++j) s |= (mu[j] > 0 ? 1u : 0u) << j;
  for (int round = 0; round < kPolishRounds * k; ++round) {
    double p;
    if (!face(gn, b, r, k, s, nu, &p)) return;
    int j_drop = -1, j_add = -1;
    double sum = 0, gain_add = 0;
    for (int j = 0; j < k; ++j) {
      if (in(s, j) && nu[j] < 0 && (j_drop < 0 || nu[j] < nu[j_drop])) j_drop = j;
      cand[j] = in(s, j) ? dmax(nu[j], 0.0) : 0.0;
      sum += cand[j];
    }
    if (j_drop >= 0) {
      s &= ~(1u << j_drop);
      continue;
    }
    for (int j = 0; j < k; ++j) cand[j] /= dmax(sum, kTiny);
    const double f = psi(gn, b, r, cand, k);
    const double tol = kKktTol * (1.0 + (p < 0 ? -p : p));
    for (int j = 0; j < k; ++j) {
      if (in(s, j)) continue;
      double gnu = 0;
      for (int i = 0; i < k; ++i) gnu += gn[j * k + i] * nu[i];
      const double gain = b[j] + r * gnu;
      if (gain < p - tol && (j_add < 0 || gain < gain_add)) {
        j_add = j;
        gain_add = gain;
      }
    }
    if (f <= f_best + slack || j_add < 0) {  // a KKT point is taken whatever psi's rounding
      f_best = f;
      *inv_gw = sum;
      for (int j = 0; j < k; ++j) mu[j] = cand[j];
    }
    if (j_add < 0) return;
    s |= 1u << j_add;
  }
}

// d psi / dt for mu = (t, 1 - t) (solver.exact2.slope); 0 curvature term at a kink.
CSDFD_HD inline double exact_slope(const double* gn, const double* b, double r, double t) {
  const double m0 = t, m1 = 1.0 - t;
  const double g0 = gn[0] * m0 + gn[1] * m1, g1 = gn[2] * m0 + gn[3] * m1;
  const double nw = CSDFD_SQRT(dmax(m0 * g0 + m1 * g1, 0.0));
  const double curv = nw > 0 ? (g0 - g1) / dmax(nw, kTiny) : 0.0;
  return (b[0] - b[1]) + r * curv;
}

// Exact K = 2 solution: psi(t) is convex on [0, 1]; bisect on the sign of its slope.
CSDFD_HD inline void solve_exact2(const double* gn, double c, int iters, double* mu) {
  double b[2];
  const double r = column_sums(gn, 2, c, b);
  double lo = 0, hi = 1;
  for (int it = 0; it < iters; ++it) {
    const double mid = (lo + hi) / 2.0;
    if (exact_slope(gn, b, r, mid) < 0) lo = mid; else hi = mid;
  }
  double t = (lo + hi) / 2.0;
  if (exact_slope(gn, b, r, 1.0) <= 0) t = 1.0;
  if (exact_slope(gn, b, r, 0.0) >= 0) t = 0.0;
  mu[0] = t;
  mu[1] = 1.0 - t;
}

// solver.normalized: a finite, trace-normalised double copy of G; returns whether G was finite.
template <class T>
CSDFD_HD bool normalized(const T* g, int k, double* gn) {
  const bool fin = all_finite(g, k * k);
  double tr = 0;
  for (int i = 0; i < k; ++i) tr += fin ? double(g[i * k + i]) : 0.0;
  tr = dmax(tr, kTiny);
  for (int i = 0; i < k * k; ++i) gn[i] = fin ? double(g[i]) / tr : 0.0;
  return fin;
}

// reference._solve: PGD + exact finish, or the exact K = 2 solver, in double on the normalised
// Gram; the uniform start for a non-finite Gram.
CSDFD_HD inline void solve_mu64(const double* gn, bool fin, int k, double c, SolverKind solver,
                                int iters, double* mu, double* inv_gw) {
  if (!fin) {
    for (int j = 0; j < k; ++j) mu[j] = 1.0 / k;
    *inv_gw = inv_norm(gn, mu, k);
    return;
  }
  if (solver == SolverKind::kExact) {
    solve_exact2(gn, c, iters, mu);
    *inv_gw = inv_norm(gn, mu, k);
  } else {
    solve_pgd(gn, k, c, iters, mu);
    polish(gn, k, c, mu, inv_gw);
  }
}

// reference.solve_mu for a Gram matrix in T: mu rounded to T.
template <class T>
CSDFD_HD void solve_mu(const T* g, int k, double c, SolverKind solver, int iters, T* mu) {
  double gn[kMaxStreams * kMaxStreams], m[kMaxStreams], inv;
  const bool fin = normalized(g, k, gn);
  solve_mu64(gn, fin, k, c, solver, iters, m, &inv);
  for (int j = 0; j < k; ++j) mu[j] = static_cast<T>(m[j]);
}

// solver.weights: eq. 14's alpha or the stationary candidate 1 + s lambda (lambda: NNLS
// projection of g0 onto {v : g_j . v >= 0}), each kept inside the ball, whichever has the
// larger worst gain after the rounding of writing it. Returns whether the stationary one won.
CSDFD_HD inline bool weights(const double* gn, const double* mu, double inv_gw, int k, double c,
                             double unit, double* alpha) {
  double b[kMaxStreams] = {}, lam[kMaxStreams], delta[kMaxStreams], alpha_b[kMaxStreams];
  const double r = column_sums(gn, k, c, b);
  double dist_sq = 0;
  nnls(gn, b, k, nnls_tol(unit), lam);
  for (int i = 0; i < k; ++i) {
    double gl = 0;
    for (int j = 0; j < k; ++j) gl += gn[i * k + j] * lam[j];
    dist_sq += lam[i] * gl;
  }
  const double dist = CSDFD_SQRT(dmax(dist_sq, 0.0));
  const double shrink = dist > r ? r / dmax(dist, kTiny) : 1.0;
  const bool valid_a = inv_gw > 0;  // gw != 0
  const double scale = valid_a ? r * inv_gw : 0.0;
  for (int j = 0; j < k; ++j) delta[j] = scale * mu[j];
  inside(gn, delta, k, r, unit, alpha);
  for (int j = 0; j < k; ++j) delta[j] = shrink * lam[j];
  inside(gn, delta, k, r, unit, alpha_b);
  const double low_b = worst_gain(gn, alpha_b, k) - write_error(gn, alpha_b, k, unit);
  const double low_a = worst_gain(gn, alpha, k) - write_error(gn, alpha, k, unit);
  const bool use_b = !valid_a || low_b > low_a + kKktTol;  // a tie (the same point): eq. 14
  if (use_b) {
    for (int j = 0; j < k; ++j) alpha[j] = alpha_b[j];
  }
  return use_b;
}

// reference.combine_weights on the normalised Gram (fin: the Gram was finite): alpha in
// double and the status flags; alpha = 1 when ||g0|| ~ 0, alpha = 0 for a non-finite Gram.
CSDFD_HD inline int combine_weights(const double* gn, bool fin, const double* mu, double inv_gw,
                                    int k, double c, bool dbl, double* alpha) {
  double g0_sq = 0;
  for (int i = 0; i < k * k; ++i) g0_sq += gn[i];
  const bool zero_g0 = fin && g0_sq <= (dbl ? kZeroRelF64 : kZeroRelF32);
  const bool stationary = weights(gn, mu, inv_gw, k, c, dbl ? kUnitF64 : kUnitF32, alpha);
  const bool zero_gw = fin && !zero_g0 && stationary;
  for (int j = 0; j < k; ++j) {
    if (zero_g0) alpha[j] = 1.0;
    if (!fin) alpha[j] = 0.0;
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
  double gn[kMaxStreams * kMaxStreams], mu64[kMaxStreams], alpha64[kMaxStreams], inv_gw;
  const bool fin_g = normalized(g, k, gn);
  solve_mu64(gn, fin_g, k, pl.c, pl.solver, pl.iters, mu64, &inv_gw);
  const int status =
      combine_weights(gn, fin_g, mu64, inv_gw, k, pl.c, sizeof(T) == 8, alpha64);
  for (int j = 0; j < k; ++j) mu[j] = static_cast<T>(mu64[j]);
  for (int j = 0; j < k; ++j) alpha[j] = static_cast<T>(alpha64[j]);
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
