/* One-pass CPU kernels for wdlab's elementwise optimizers (loaded by wdlab/optim/native.py).
 *
 * Why C: a chain of torch ops reads and writes every tensor once per op, so an update that
 * is five ops long moves five times the bytes it must. Each kernel here reads and writes
 * each tensor once. The file is compiled twice, with REAL=float/SUFFIX=f32 and
 * REAL=double/SUFFIX=f64. Kernels take a list of tensors (pointer arrays plus sizes) and a
 * half-open range [begin, end) of elements counted over their concatenation, so a caller
 * splits one step across threads with one call per thread. Reductions write to an output
 * array owned by the calling thread; the caller adds the threads' parts.
 * Scalars arrive as double and are rounded to REAL once, as torch does with Python floats.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifndef REAL
#error "compile with -DREAL=float -DSUFFIX=f32 (or double/f64)"
#endif
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define NAME(x) CAT(x, SUFFIX)

typedef REAL real;
/* Single-precision math for float: sqrt(float) would round-trip through double. */
#define SQRT(x) (sizeof(real) == 4 ? (real)sqrtf((float)(x)) : (real)sqrt((double)(x)))
#define POW(x, y) (sizeof(real) == 4 ? (real)powf((float)(x), (float)(y)) : (real)pow((x), (y)))

/* The part [lo, hi) of tensor t (elements [off, off + n) of the concatenation) in [begin, end). */
#define FOR_EACH_SPAN(count, sizes, begin, end, body)                          \
    do {                                                                     \
        int64_t off_ = 0;                                                    \
        for (int64_t t = 0; t < (count); ++t) {                              \
            int64_t n_ = (sizes)[t];                                         \
            if (off_ + n_ > (begin) && off_ < (end)) {                       \
                int64_t lo = (begin) > off_ ? (begin) - off_ : 0;            \
                int64_t hi = (end) < off_ + n_ ? (end) - off_ : n_;          \
                body;                                                        \
            }                                                                \
            off_ += n_;                                                      \
        }                                                                    \
    } while (0)

static inline real sign_of(real x) {
    /* torch.sign: -1, 0 or 1, and 0 for NaN, so every mode of Lion gives the same result. */
    return x > 0 ? (real)1 : (x < 0 ? (real)-1 : (real)0);
}

/* SGD with momentum: u = g + l2*w; buf = fresh ? u : momentum*buf + (1 - dampening)*u;
 * d = nesterov ? u + momentum*buf : buf (u without momentum); w = keep*w - lr*d. */
static void sgdw_span(real *restrict w, const real *restrict g, real *restrict buf, int64_t n,
                      real lr, real momentum, real damp, int nesterov, real keep, real l2,
                      int fresh) {
    if (buf == NULL) {
        for (int64_t i = 0; i < n; ++i) w[i] = keep * w[i] - lr * (g[i] + l2 * w[i]);
    } else if (fresh) {
        for (int64_t i = 0; i < n; ++i) {
            real u = g[i] + l2 * w[i];
            buf[i] = u;
            real d = nesterov ? u + momentum * u : u;
            w[i] = keep * w[i] - lr * d;
        }
    } else if (nesterov) {
        for (int64_t i = 0; i < n; ++i) {
            real u = g[i] + l2 * w[i];
            real b = momentum * buf[i] + damp * u;
            buf[i] = b;
            w[i] = keep * w[i] - lr * (u + momentum * b);
        }
    } else {
        for (int64_t i = 0; i < n; ++i) {
            real u = g[i] + l2 * w[i];
            real b = momentum * buf[i] + damp * u;
            buf[i] = b;
            w[i] = keep * w[i] - lr * b;
        }
    }
}

void NAME(wd_sgdw)(real **w, real **g, real **buf, const int64_t *sizes, int64_t count,
                   int64_t begin, int64_t end, double lr, double momentum, double dampening,
                   int nesterov, double keep, double l2, int fresh) {
    FOR_EACH_SPAN(count, sizes, begin, end,
                  sgdw_span(w[t] + lo, g[t] + lo, buf ? buf[t] + lo : NULL, hi - lo, (real)lr,
                            (real)momentum, (real)(1 - dampening), nesterov, (real)keep,
                            (real)l2, fresh));
}

/* Lion: u = g + l2*w; c = m + (1 - b1)*(u - m); w = keep*w - lr*sign(c); m = m + (1 - b2)*(u - m). */
static void lion_span(real *restrict w, const real *restrict g, real *restrict m, int64_t n,
                      real lr, real t1, real t2, real keep, real l2) {
    for (int64_t i = 0; i < n; ++i) {
        real u = g[i] + l2 * w[i];
        real mi = m[i];
        real c = mi + t1 * (u - mi);
        w[i] = keep * w[i] - lr * sign_of(c);
        m[i] = mi + t2 * (u - mi);
    }
}

void NAME(wd_lion)(real **w, real **g, real **m, const int64_t *sizes, int64_t count,
                   int64_t begin, int64_t end, double lr, double beta1, double beta2,
                   double keep, double l2) {
    FOR_EACH_SPAN(count, sizes, begin, end,
                  lion_span(w[t] + lo, g[t] + lo, m[t] + lo, hi - lo, (real)lr,
                            (real)(1 - beta1), (real)(1 - beta2), (real)keep, (real)l2));
}

/* w = keep*w - f*d with one factor per row (by_row) or per column of a (rows, cols) matrix:
 * SCALE's step, f = lr/RMS of the row or column. One tensor; [begin, end) in elements. */
void NAME(wd_scaled_step)(real *restrict w, const real *restrict d, const real *restrict f,
                          int64_t cols, int by_row, int64_t begin, int64_t end, double keep) {
    real k = (real)keep;
    int64_t i = begin;
    while (i < end) {
        int64_t row = i / cols;
        int64_t first = row * cols;
        int64_t stop = first + cols < end ? first + cols : end;
        if (by_row) {
            real fr = f[row];
            for (int64_t j = i; j < stop; ++j) w[j] = k * w[j] - fr * d[j];
        } else {
            for (int64_t j = i; j < stop; ++j) w[j] = k * w[j] - f[j - first] * d[j];
        }
        i = stop;
    }
}

/* Per row of a (rows, cols) view, accumulate sum(g*w), sum(w*w), sum(g*g) into
 * out[3*row .. 3*row + 2] (double, zeroed by the caller): the cosine test of AdamP/SGDP in
 * one read of w and g. */
void NAME(wd_row_dots)(const real *restrict w, const real *restrict g, int64_t cols,
                       int64_t begin, int64_t end, double *restrict out) {
    int64_t i = begin;
    while (i < end) {
        int64_t row = i / cols;
        int64_t stop = (row + 1) * cols < end ? (row + 1) * cols : end;
        double gw = 0, ww = 0, gg = 0;
        for (int64_t j = i; j < stop; ++j) {
            double wj = w[j], gj = g[j];
            gw += gj * wj;
            ww += wj * wj;
            gg += gj * gj;
        }
        out[3 * row] += gw;
        out[3 * row + 1] += ww;
        out[3 * row + 2] += gg;
        i = stop;
    }
}

static inline real fisher_denom(real f, real eps, real power, int use_sqrt) {
    return (use_sqrt ? SQRT(f) : POW(f, power)) + eps;
}

/* FAdam's first pass over one tensor: f = b2*f + (1 - b2)*g^2, and accumulate
 * sum((g/den)^2) into out[0] and, with decay, sum((w/den)^2) into out[1]. */
void NAME(wd_fadam_fisher)(const real *restrict g, real *restrict f, const real *restrict w,
                           int64_t begin, int64_t end, double beta2, double eps, double power,
                           int use_sqrt, int with_decay, double *restrict out) {
    real b2 = (real)beta2, t2 = (real)(1 - beta2), e = (real)eps, pw = (real)power;
    double sg = 0, sw = 0;
    for (int64_t i = begin; i < end; ++i) {
        real gi = g[i];
        real fi = b2 * f[i] + t2 * gi * gi;
        f[i] = fi;
        real den = fisher_denom(fi, e, pw, use_sqrt);
        double rg = gi / den;
        sg += rg * rg;
        if (with_decay) {
            double rw = w[i] / den;
            sw += rw * rw;
        }
    }
    out[0] += sg;
    out[1] += sw;
}

/* FAdam's second pass: m = b1*m + gain*g/den; w = w - decay*w/den - lr*m. */
void NAME(wd_fadam_update)(real *restrict w, const real *restrict g, const real *restrict f,
                           real *restrict m, int64_t begin, int64_t end, double lr,
                           double beta1, double eps, double power, int use_sqrt, double gain,
                           double decay) {
    real b1 = (real)beta1, e = (real)eps, pw = (real)power, gn = (real)gain, dc = (real)decay;
    real step = (real)lr;
    for (int64_t i = begin; i < end; ++i) {
        real den = fisher_denom(f[i], e, pw, use_sqrt);
        real mi = b1 * m[i] + gn * (g[i] / den);
        m[i] = mi;
        real wi = w[i];
        w[i] = wi - dc * (wi / den) - step * mi;
    }
}
