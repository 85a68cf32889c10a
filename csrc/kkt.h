// The small pieces of the K x K solve, in double, for host and device (one thread):
// a solve on an index set, the dual's optimality conditions on a face of the simplex,
// non-negative least squares, and the worst gain, write error and ball guard of a candidate
// update. They mirror csdfd/ops/solver.py (solve_on, face, nnls, _write_error, _inside)
// operation by operation; index sets are bit masks (K <= kMaxStreams).
#pragma once

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

// Mirrors csdfd/ops/solver.py (tests/test_ext.py checks they agree).
constexpr double kTiny = 1e-30;
constexpr double kRidge = 1e-14;
constexpr double kKktTol = 1e-13;
constexpr int kPolishRounds = 2;
constexpr int kNnlsRounds = 3;
constexpr int kNnlsRefine = 2;
constexpr double kEps64 = 2.220446049250313e-16;

CSDFD_HD inline double dmax(double a, double b) { return a > b ? a : b; }  // dmax(nan, b) = b
CSDFD_HD inline double dmin(double a, double b) { return a < b ? a : b; }
CSDFD_HD inline bool in(unsigned s, int j) { return (s >> j) & 1u; }

// x with (H_SS + ridge I) x_S = rhs_S for the m right-hand sides rhs[j * m + i] and x = 0 off
// the index set s (solver.solve_on). Gauss-Jordan without pivoting: the system is symmetric
// positive definite on S (identity off S).
CSDFD_HD inline void solve_on(const double* h, int k, unsigned s, const double* rhs, int m,
                              double ridge, double* x) {
  double a[kMaxStreams * kMaxStreams];
  for (int i = 0; i < k; ++i) {
    for (int j = 0; j < k; ++j) {
      a[i * k + j] = (in(s, i) && in(s, j)) ? h[i * k + j] : (i == j ? 1.0 : 0.0);
    }
    if (in(s, i)) a[i * k + i] += ridge;
    for (int q = 0; q < m; ++q) x[i * m + q] = in(s, i) ? rhs[i * m + q] : 0.0;
  }
  for (int p = 0; p < k; ++p) {
    const double piv = a[p * k + p];
    for (int j = 0; j < k; ++j) a[p * k + j] /= piv;
    for (int q = 0; q < m; ++q) x[p * m + q] /= piv;
    for (int i = 0; i < k; ++i) {
      if (i == p) continue;
      const double f = a[i * k + p];
      for (int j = 0; j < k; ++j) a[i * k + j] -= f * a[p * k + j];
      for (int q = 0; q < m; ++q) x[i * m + q] -= f * x[p * m + q];
    }
  }
  for (int i = 0; i < k; ++i) {
    for (int q = 0; q < m; ++q) x[i * m + q] = in(s, i) ? x[i * m + q] : 0.0;
  }
}

// The dual's optimality conditions on the face s (solver.face): equal gains p on s,
// nu = (p x - y) / r with x = G_SS^-1 1, y = G_SS^-1 b; p the larger root of
// (1.x) p^2 - 2 (1.y) p + b.y - r^2 = 0. Returns whether the face has such a point (and G_SS is
// not singular to working precision: kRidge 1.x < 1e-3).
CSDFD_HD inline bool face(const double* gn, const double* b, double r, int k, unsigned s,
                          double* nu, double* p_out) {
  double rhs[2 * kMaxStreams], xy[2 * kMaxStreams];
  for (int j = 0; j < k; ++j) {
    rhs[2 * j] = 1.0;
    rhs[2 * j + 1] = b[j];
  }
  solve_on(gn, k, s, rhs, 2, kRidge, xy);
  double qa = 0, qb = 0, qc = 0;
  for (int j = 0; j < k; ++j) qa += xy[2 * j];
  for (int j = 0; j < k; ++j) qb += xy[2 * j + 1];
  for (int j = 0; j < k; ++j) qc += b[j] * xy[2 * j + 1];
  qc -= r * r;
  const double disc = qb * qb - qa * qc;
  const double root = CSDFD_SQRT(dmax(disc, 0.0));
  const double big = qb + (qb >= 0 ? root : -root);  // larger root without cancellation
  const double p = qb >= 0 ? big / qa : qc / (big == 0 ? 1.0 : big);
  const double rr = r > 0 ? r : 1.0;
  double sum = 0;
  bool fin = CSDFD_ISFINITE(p);
  for (int j = 0; j < k; ++j) {
    nu[j] = (p * xy[2 * j] - xy[2 * j + 1]) / rr;
    sum += nu[j];
    fin = fin && CSDFD_ISFINITE(nu[j]);
  }
  *p_out = p;
  return r > 0 && disc >= 0 && qa > 0 && qa * kRidge < 1e-3 && sum > 0 && fin;
}

// nnls's working precision: its gradient threshold and ridge (solver.nnls_tol).
CSDFD_HD inline double nnls_tol(double unit) { return dmax(kKktTol, 16.0 * unit); }

// min_{x >= 0} 1/2 x^T H x + q^T x, Lawson-Hanson in kNnlsRounds * k steps of one solve each
// (solver.nnls): the same steps, returning once nothing is left to free.
CSDFD_HD inline void nnls(const double* h, const double* q, int k, double tol, double* x) {
  double z[kMaxStreams], negq[kMaxStreams];
  unsigned s = 0;
  bool pending = false;  // inside LH's inner loop: the last solve left S's orthant
  for (int j = 0; j < k; ++j) {
    x[j] = 0;
    negq[j] = -q[j];
  }
  for (int step = 0; step < kNnlsRounds * k; ++step) {
    if (!pending) {
      int jmax = -1;
      double wmax = 0;
      for (int i = 0; i < k; ++i) {
        double hx = 0;
        for (int j = 0; j < k; ++j) hx += h[i * k + j] * x[j];
        const double w = -(hx + q[i]);
        if (!in(s, i) && w > tol && (jmax < 0 || w > wmax)) {
          jmax = i;
          wmax = w;
        }
      }
      if (jmax < 0) return;
      s |= 1u << jmax;
    }
    solve_on(h, k, s, negq, 1, tol, z);
    for (int it = 0; it < kNnlsRefine; ++it) {  // iterated Tikhonov (solver.NNLS_REFINE)
      double res[kMaxStreams], dz[kMaxStreams];
      for (int i = 0; i < k; ++i) {
        double hz = 0;
        for (int j = 0; j < k; ++j) hz += h[i * k + j] * z[j];
        res[i] = -q[i] - hz;
      }
      solve_on(h, k, s, res, 1, tol, dz);
      for (int i = 0; i < k; ++i) z[i] += dz[i];
    }
    bool fits = true;
    double t = 1.0;
    for (int j = 0; j < k; ++j) {
      if (!in(s, j) || z[j] > 0) continue;
      fits = false;
      const double gap = x[j] - z[j];
      t = dmin(t, gap > 0 ? x[j] / gap : 0.0);
    }
    t = dmax(t, 0.0);
    for (int j = 0; j < k; ++j) {
      if (fits) {
        x[j] = z[j];
        continue;
      }
      const double stepped = x[j] + t * (z[j] - x[j]);
      if (in(s, j) && !(stepped > kKktTol)) s &= ~(1u << j);
      x[j] = in(s, j) ? dmax(stepped, 0.0) : 0.0;
    }
    pending = !fits;
  }
}

// solver._write_error: how much writing sum_j alpha_j g_j with unit roundoff `unit` can move a
// gain, K unit sum_j |alpha_j| ||g_j|| max_i ||g_i||.
CSDFD_HD inline double write_error(const double* gn, const double* alpha, int k, double unit) {
  double s = 0, top = 0;
  for (int j = 0; j < k; ++j) {
    const double nj = CSDFD_SQRT(dmax(gn[j * k + j], 0.0));
    s += (alpha[j] < 0 ? -alpha[j] : alpha[j]) * nj;
    top = dmax(top, nj);
  }
  return k * unit * s * top;
}

CSDFD_HD inline double worst_gain(const double* gn, const double* alpha, int k) {
  double w = 0;
  for (int i = 0; i < k; ++i) {
    double g = 0;
    for (int j = 0; j < k; ++j) g += gn[i * k + j] * alpha[j];
    w = i == 0 ? g : dmin(w, g);
  }
  return w;
}

// solver._inside: alpha = 1 + delta / (1 + rho), rho = K u (sum_j |delta_j| ||g_j||)^2 / r^2,
// the relative uncertainty of the computed ||v - g0||^2, so that v stays in the ball.
CSDFD_HD inline void inside(const double* gn, const double* delta, int k, double r, double unit,
                            double* alpha) {
  double s = 0;
  for (int j = 0; j < k; ++j) {
    s += (delta[j] < 0 ? -delta[j] : delta[j]) * CSDFD_SQRT(dmax(gn[j * k + j], 0.0));
  }
  const double rho = k * unit * s * s / dmax(r * r, kTiny);
  for (int j = 0; j < k; ++j) alpha[j] = 1.0 + delta[j] / (1.0 + rho);
}

}  // namespace csdfd
