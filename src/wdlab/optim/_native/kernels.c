/* One-pass CPU kernels for wdlab's elementwise optimizers (loaded by
 * wdlab/optim/_native/__init__.py).
 *
 * Why C: a chain of torch ops reads and writes every tensor once per op, so an update that
 * is five ops long moves five times the bytes it must. Each kernel here reads and writes
 * each tensor once. The file is compiled twice, with REAL=float/SUFFIX=f32 and
 * REAL=double/SUFFIX=f64. Kernels take a list of tensors (pointer arrays plus sizes) or one
 * tensor, and split its elements evenly over `nthreads` OpenMP threads: the loader links the
 * OpenMP runtime torch itself loaded, so these threads are torch's own pool (a second pool
 * would fight torch's spinning threads for the cores). Reductions write one slot per thread;
 * the caller adds the slots. Scalars arrive as double and are rounded to REAL once, as torch
 * does with Python floats.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef REAL
#error "compile with -DREAL=float -DSUFFIX=f32 (or double/f64)"
#endif
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define NAME(x) CAT(x, SUFFIX)

typedef REAL real;
/* Single-precision math for float: sqrt(float) would round-trip through double. */
#define SQRT(x) (sizeof(real) == 4 ? (real)sqrtf((float)(x)) : (real)sqrt((double)(x)))
/* One rounding of a*b + c (an instruction with -march=native on FMA CPUs). */
#define FMA(a, b, c) \
    (sizeof(real) == 4 ? (real)fmaf((float)(a), (float)(b), (float)(c)) : (real)fma((a), (b), (c)))
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

/* This thread's share [*begin, *end) of `total` elements (all of them without OpenMP). */
static inline int thread_range(int64_t total, int64_t *begin, int64_t *end) {
#ifdef _OPENMP
    int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
    int t = 0, n = 1;
#endif
    *begin = total * t / n;
    *end = total * (t + 1) / n;
    return t;
}

static inline int64_t sum_sizes(const int64_t *sizes, int64_t count) {
    int64_t total = 0;
    for (int64_t t = 0; t < count; ++t) total += sizes[t];
    return total;
}

static inline real sign_of(real x) {
    /* torch.sign: -1, 0 or 1, and 0 for NaN, so every mode of Lion gives the same result.
     * Written without a branch: the nested ?: compiled to a jump per element on some
     * compilers (random signs mispredict: Lion ran at 12% of the bandwidth probe). */
    return (real)(x > 0) - (real)(x < 0);
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
                   int nthreads, double lr, double momentum, double dampening, int nesterov,
                   double keep, double l2, int fresh) {
    int64_t total = sum_sizes(sizes, count);
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        thread_range(total, &begin, &end);
        FOR_EACH_SPAN(count, sizes, begin, end,
                      sgdw_span(w[t] + lo, g[t] + lo, buf ? buf[t] + lo : NULL, hi - lo,
                                (real)lr, (real)momentum, (real)(1 - dampening), nesterov,
                                (real)keep, (real)l2, fresh));
    }
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
                   int nthreads, double lr, double beta1, double beta2, double keep, double l2) {
    int64_t total = sum_sizes(sizes, count);
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        thread_range(total, &begin, &end);
        FOR_EACH_SPAN(count, sizes, begin, end,
                      lion_span(w[t] + lo, g[t] + lo, m[t] + lo, hi - lo, (real)lr,
                                (real)(1 - beta1), (real)(1 - beta2), (real)keep, (real)l2));
    }
}

/* w = keep*w - f*d with one factor per row (by_row) or per column of a (rows, cols) matrix:
 * SCALE's step, f = lr/RMS of the row or column. */
void NAME(wd_scaled_step)(real *restrict w, const real *restrict d, const real *restrict f,
                          int64_t rows, int64_t cols, int by_row, int nthreads, double keep) {
    real k = (real)keep;
#pragma omp parallel num_threads(nthreads)
    {
        int64_t i, end;
        thread_range(rows * cols, &i, &end);
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
}

/* <g, w>, |w|^2, |g|^2 of n elements in float64, added to out[0..3). A plain double
 * accumulator is one dependent add chain (a third of the bandwidth); `omp simd reduction`
 * gives the compiler lanes of partial sums: about 3 instructions per element, faster than
 * memory. (Eight hand-written lanes per statistic compiled to scalar code with the sums in
 * memory, 13 instructions per element.) */
static void dot3(const real *restrict w, const real *restrict g, int64_t n, double *out) {
    double gw = 0, ww = 0, gg = 0;
#pragma omp simd reduction(+ : gw, ww, gg)
    for (int64_t j = 0; j < n; ++j) {
        double wj = w[j], gj = g[j];
        gw += gj * wj;
        ww += wj * wj;
        gg += gj * gj;
    }
    out[0] += gw;
    out[1] += ww;
    out[2] += gg;
}

/* AdamP/SGDP's scale-invariance test (REFERENCE §3) in one read of w and g, viewed as
 * (rows, cols). Per row, float64 sums <g, w>, |w|^2, |g|^2; the "channel" view passes when
 * every row has |cos(g, w)| < delta/sqrt(cols), else the "layer" view (the whole tensor as one
 * row) when |cos| < delta/sqrt(rows*cols). Returns 1 (channel), 2 (layer) or 0 (neither) and
 * writes the winning view's norms of w to norms[0..rows) or norms[0]. Each factor of the
 * cosine is max(norm, eps), as F.cosine_similarity. scratch: nthreads*rows*3 doubles. */
int NAME(wd_invariant_view)(const real *restrict w, const real *restrict g, int64_t rows,
                            int64_t cols, int nthreads, double delta, double eps,
                            double *restrict scratch, double *restrict norms) {
    int used = 1;
#pragma omp parallel num_threads(nthreads)
    {
        int64_t i, end;
        int t = thread_range(rows * cols, &i, &end);
        double *mine = scratch + (int64_t)t * rows * 3;
        for (int64_t k = 0; k < rows * 3; ++k) mine[k] = 0;
#ifdef _OPENMP
        if (t == 0) used = omp_get_num_threads();
#endif
        while (i < end) {
            int64_t row = i / cols;
            int64_t stop = (row + 1) * cols < end ? (row + 1) * cols : end;
            dot3(w + i, g + i, stop - i, mine + 3 * row);
            i = stop;
        }
    }
    double limit = delta / sqrt((double)cols), total[3] = {0, 0, 0};
    int channel = 1;
    for (int64_t row = 0; row < rows; ++row) {
        double s[3] = {0, 0, 0};
        for (int t = 0; t < used; ++t)
            for (int k = 0; k < 3; ++k) s[k] += scratch[(int64_t)t * rows * 3 + 3 * row + k];
        for (int k = 0; k < 3; ++k) total[k] += s[k];
        double wn = sqrt(s[1]), gn = sqrt(s[2]);
        norms[row] = wn;
        if (!(fabs(s[0]) / (fmax(gn, eps) * fmax(wn, eps)) < limit)) channel = 0;
    }
    if (channel) return 1;
    double wn = sqrt(total[1]), gn = sqrt(total[2]);
    norms[0] = wn;
    return fabs(total[0]) / (fmax(gn, eps) * fmax(wn, eps)) < delta / sqrt((double)(rows * cols))
               ? 2 : 0;
}

static inline real fisher_denom(real f, real eps, real power, int use_sqrt) {
    return (use_sqrt ? SQRT(f) : POW(f, power)) + eps;
}

/* FAdam's first pass over one tensor: f = b2*f + (1 - b2)*g^2; thread t writes
 * sum((g/den)^2) to out[2t] and, with decay, sum((w/den)^2) to out[2t + 1]. */
void NAME(wd_fadam_fisher)(const real *restrict g, real *restrict f, const real *restrict w,
                           int64_t n, int nthreads, double beta2, double eps, double power,
                           int use_sqrt, int with_decay, double *restrict out) {
    real b2 = (real)beta2, t2 = (real)(1 - beta2), e = (real)eps, pw = (real)power;
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        int t = thread_range(n, &begin, &end);
        double sg = 0, sw = 0;
#pragma omp simd reduction(+ : sg, sw)
        for (int64_t i = begin; i < end; ++i) {
            real gi = g[i];
            real fi = b2 * f[i] + t2 * gi * gi;
            f[i] = fi;
            real inv = 1 / fisher_denom(fi, e, pw, use_sqrt);  /* one divide, two products */
            double rg = gi * inv;
            sg += rg * rg;
            if (with_decay) {
                double rw = w[i] * inv;
                sw += rw * rw;
            }
        }
        out[2 * t] = sg;
        out[2 * t + 1] = sw;
    }
}

/* FAdam's second pass: m = b1*m + gain*g/den; w = w - decay*w/den - lr*m. */
void NAME(wd_fadam_update)(real *restrict w, const real *restrict g, const real *restrict f,
                           real *restrict m, int64_t n, int nthreads, double lr, double beta1,
                           double eps, double power, int use_sqrt, double gain, double decay) {
    real b1 = (real)beta1, e = (real)eps, pw = (real)power, gn = (real)gain, dc = (real)decay;
    real step = (real)lr;
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        thread_range(n, &begin, &end);
        for (int64_t i = begin; i < end; ++i) {
            real inv = 1 / fisher_denom(f[i], e, pw, use_sqrt);
            real mi = b1 * m[i] + gn * (g[i] * inv);
            m[i] = mi;
            real wi = w[i];
            w[i] = wi - dc * (wi * inv) - step * mi;
        }
    }
}

/* sum(x^2) in float64; thread t writes its part to out[t] (the caller adds them). */
void NAME(wd_sumsq)(const real *restrict x, int64_t n, int nthreads, double *restrict out) {
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        int t = thread_range(n, &begin, &end);
        double acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = begin; i < end; ++i) acc += (double)x[i] * x[i];
        out[t] = acc;
    }
}

/* Schedule-Free AdamW/SGD (Defazio et al. 2024) in train mode, where w holds y: u = g + l2*y;
 * AdamW form (v != NULL): v = b2*v + (1 - b2)*u*u, d = u/(sqrt(v/bc2) + eps); SGD form: d = u;
 * then d += wdl*y (decoupled decay at y, per unit lr), y = y + c*(z - y) + lrc*d, z = z - lr*d.
 * c = the new iterate's weight in the average x, lrc = lr*(beta1*(1 - c) - 1). */
static void sf_span(real *restrict y, const real *restrict g, real *restrict z, real *restrict v,
                    int64_t n, real lr, real b2, real ob2, real bc2, real eps, real l2,
                    real wdl, real c, real lrc) {
    for (int64_t i = 0; i < n; ++i) {
        real yi = y[i], zi = z[i];
        real u = g[i] + l2 * yi;
        real d = u;
        if (v != NULL) {
            real vi = b2 * v[i] + ob2 * (u * u);
            v[i] = vi;
            d = u / (SQRT(vi / bc2) + eps);
        }
        d = d + wdl * yi;
        y[i] = yi + c * (zi - yi) + lrc * d;
        z[i] = zi - lr * d;
    }
}

void NAME(wd_schedule_free)(real **y, real **g, real **z, real **v, const int64_t *sizes,
                            int64_t count, int nthreads, double lr, double beta2, double bc2,
                            double eps, double l2, double wdl, double c, double lrc) {
    int64_t total = sum_sizes(sizes, count);
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        thread_range(total, &begin, &end);
        FOR_EACH_SPAN(count, sizes, begin, end,
                      sf_span(y[t] + lo, g[t] + lo, z[t] + lo, v ? v[t] + lo : NULL, hi - lo,
                              (real)lr, (real)beta2, (real)(1 - beta2), (real)bc2, (real)eps, (real)l2, (real)wdl,
                              (real)c, (real)lrc));
    }
}

/* Adam/AdamW as torch._fused_adam_/_fused_adamw_ compute it on CPU: the same operations in
 * the same order and the same fused multiply-adds (those the compiler of torch's AVX2/AVX-512
 * kernels formed), so the same bits, but over all tensors of a group in one parallel region
 * and one call (torch runs one parallel region per tensor). torch's vector loop covers each
 * tensor but its last numel % vec elements, which its scalar loop computes; `vec` says how
 * many, and the loader (run_adam) checks once per process that these bits are torch's on
 * this machine (else AdamW keeps torch's kernel). Per tensor, the float32 step counter
 * (torch's layout) is incremented here and sets the bias corrections, in double as torch.
 * decoupled: w *= 1 - lr*wd (AdamW); else g += wd*w (Adam's L2). */
static inline __attribute__((always_inline)) void adam_loop(
    real *restrict w, const real *restrict g, real *restrict m, real *restrict v, int64_t n,
    const int l2, const int small, const int tail, real keep, real wd, real coeff, real b2,
    real t2, real bc2, real eps, real neg_step) {
    for (int64_t i = 0; i < n; ++i) {
        real wi = w[i], gi = g[i];
        if (l2) gi = FMA(wi, wd, gi);
        real mi = m[i];
        mi = FMA(coeff, gi - mi, small ? mi : gi);
        /* torch's vector loop: fma(t2*g, g, v*b2); its scalar loop: fma(v, b2, t2*g*g) */
        real vi = tail ? FMA(v[i], b2, t2 * gi * gi) : FMA(t2 * gi, gi, v[i] * b2);
        m[i] = mi;
        v[i] = vi;
        real denom = SQRT(vi) / bc2 + eps;
        w[i] = wi * keep + neg_step * mi / denom;
    }
}

/* adam_loop with its flags as constants, so each variant compiles to a branch-free vector loop
 * (a run-time flag inside the loop kept GCC from vectorizing it). */
#define ADAM_LOOP(l2, small, tail) \
    adam_loop(w, g, m, v, n, l2, small, tail, keep, wd, coeff, b2, t2, bc2, eps, neg_step)
static void adam_span(real *restrict w, const real *restrict g, real *restrict m,
                      real *restrict v, int64_t n, int tail, real keep, real wd, real t1,
                      real b2, real t2, real bc2, real eps, real neg_step) {
    /* torch's lerp(m, g, t1): m + t1*(g - m) for |t1| < 0.5, else g - (1 - t1)*(g - m). */
    int small = fabs((double)t1) < 0.5;
    real coeff = small ? t1 : t1 - 1;
    if (tail) {  /* at most vec - 1 elements: no need to specialize */
        if (wd != 0) ADAM_LOOP(1, small, 1);
        else ADAM_LOOP(0, small, 1);
    } else if (wd != 0) {
        if (small) ADAM_LOOP(1, 1, 0);
        else ADAM_LOOP(1, 0, 0);
    } else {
        if (small) ADAM_LOOP(0, 1, 0);
        else ADAM_LOOP(0, 0, 0);
    }
}

/* Elements [lo, hi) of one tensor of n elements whose step counter reads `step`. */
static void adam_tensor(real *w, const real *g, real *m, real *v, int64_t lo, int64_t hi,
                        int64_t n, int64_t vec, double step, real keep, real wd, double lr,
                        double beta1, double beta2, double eps) {
    double bc1 = 1 - pow(beta1, step), bc2 = sqrt(1 - pow(beta2, step));
    real t1 = (real)(1 - beta1), b2 = (real)beta2, t2 = (real)(1 - beta2);
    real c2 = (real)bc2, e = (real)eps, ns = (real)(-(lr / bc1));
    int64_t body = n - n % vec, mid = hi < body ? hi : body;
    if (lo < mid)
        adam_span(w + lo, g + lo, m + lo, v + lo, mid - lo, 0, keep, wd, t1, b2, t2, c2, e, ns);
    int64_t from = lo > body ? lo : body;
    if (from < hi)
        adam_span(w + from, g + from, m + from, v + from, hi - from, 1, keep, wd, t1, b2, t2,
                  c2, e, ns);
}

void NAME(wd_adam)(real **w, real **g, real **m, real **v, const int64_t *sizes, int64_t count,
                   int nthreads, float **steps, int64_t vec, double lr, double beta1,
                   double beta2, double eps, double weight_decay, int decoupled) {
    int64_t total = sum_sizes(sizes, count);
    for (int64_t t = 0; t < count; ++t) *steps[t] += 1;
    real keep = (real)(decoupled && weight_decay != 0 ? 1 - lr * weight_decay : 1);
    real wd = (real)(decoupled ? 0 : weight_decay);
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        thread_range(total, &begin, &end);
        FOR_EACH_SPAN(count, sizes, begin, end,
                      adam_tensor(w[t], g[t], m[t], v[t], lo, hi, sizes[t], vec, *steps[t],
                                  keep, wd, lr, beta1, beta2, eps));
    }
}

/* ---- AdamP / SGDP: each matrix tested, then at once updated when the projection leaves it
 * alone. The test reads w and g; the update, right after it, finds them still in cache (a
 * 1024x1024 float32 matrix: 8 MB of w and g against a 32 MB L3), so an unprojected matrix
 * moves about the update's own bytes instead of the update's plus the test's. Matrix t is
 * (rows[t], sizes[t]/rows[t]); views[t] gets wd_invariant_view's answer, and a projected
 * matrix (view 1 or 2) is left untouched, its norms in norms[sum of earlier rows...] for the
 * caller's projected step. scratch: nthreads*max(rows)*3 doubles. */

static int this_thread(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Offsets of each matrix's norms in `norms` (sum of earlier rows) and the largest rows. */
static int64_t norm_offsets(const int64_t *rows, int64_t count, int64_t *offsets) {
    int64_t offset = 0, most = 0;
    for (int64_t t = 0; t < count; ++t) {
        offsets[t] = offset;
        offset += rows[t];
        if (rows[t] > most) most = rows[t];
    }
    return most;
}

/* The loop wd_adamp and wd_sgdp share. Matrices are shared out whole among the threads
 * (dynamic, one at a time): each thread tests and then runs `update` (a statement on matrix t
 * of n elements) on its own matrix where no view passed, with no barrier between, so a thread
 * the OS deschedules holds up no other (one parallel region per matrix ran at a tenth of the
 * bandwidth under load). Without memory for the offsets every views[t] is -1 and nothing
 * runs. Uses w, g, sizes, rows, count, nthreads, delta, test_eps, scratch, norms and views
 * of the kernel it stands in. */
#define TEST_THEN_UPDATE(update)                                                        \
    do {                                                                                \
        int64_t *offsets = malloc((size_t)count * sizeof(int64_t));                     \
        if (offsets == NULL) {                                                          \
            for (int64_t t = 0; t < count; ++t) views[t] = -1;                          \
            break;                                                                      \
        }                                                                               \
        int64_t most = norm_offsets(rows, count, offsets);                              \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nthreads)")          \
        for (int64_t t = 0; t < count; ++t) {                                           \
            int64_t n = sizes[t];                                                       \
            double *mine = scratch + (int64_t)this_thread() * most * 3;                 \
            views[t] = NAME(wd_invariant_view)(w[t], g[t], rows[t], n / rows[t], 1,    \
                                               delta, test_eps, mine, norms + offsets[t]); \
            if (views[t] != 0) continue;                                                \
            update;                                                                     \
        }                                                                               \
        free(offsets);                                                                  \
    } while (0)

void NAME(wd_adamp)(real **w, real **g, real **m, real **v, const int64_t *sizes,
                    const int64_t *rows, int64_t count, int nthreads, int64_t min_per_thread,
                    float **steps, int64_t vec, double lr, double beta1, double beta2,
                    double eps, double weight_decay, int decoupled, double delta,
                    double test_eps, double *scratch, double *norms, int *views) {
    (void)min_per_thread;
    real keep = (real)(decoupled && weight_decay != 0 ? 1 - lr * weight_decay : 1);
    real wd = (real)(decoupled ? 0 : weight_decay);
    TEST_THEN_UPDATE(adam_tensor(w[t], g[t], m[t], v[t], 0, n, n, vec, (*steps[t] += 1), keep,
                                 wd, lr, beta1, beta2, eps));
}

void NAME(wd_sgdp)(real **w, real **g, real **buf, const int64_t *sizes, const int64_t *rows,
                   int64_t count, int nthreads, int64_t min_per_thread, double lr,
                   double momentum, double dampening, int nesterov, double keep, double l2,
                   double delta, double test_eps, double *scratch, double *norms, int *views) {
    (void)min_per_thread;
    TEST_THEN_UPDATE(sgdw_span(w[t], g[t], buf ? buf[t] : NULL, n, (real)lr, (real)momentum,
                               (real)(1 - dampening), nesterov, (real)keep, (real)l2, 0));
}
