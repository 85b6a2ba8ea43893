/*
 * The bf16 pass's element-wise work, each piece one loop over the frames (see fused_passes.py for why).
 *
 * Frames are bf16 bits (uint16_t), rows of `channels` values `stride` apart; the arithmetic is fp32, the
 * inner loops run over channels (contiguous) and are vectorised by the compiler, and the functions are
 * built for three instruction sets and picked when the library loads (GCC's target_clones), so one build
 * runs on any x86-64 CPU at its vector width. Sums are taken per block of frames, each block's added into
 * the totals, so that the error does not grow with the frames in a row.
 *
 * Called through ctypes, which releases the GIL: the service's concurrent passes run these side by side.
 * The module object is only there so that setuptools builds and installs this file like any extension.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Raised with any change to a kernel's arguments or meaning (fused_passes.py's KERNELS_VERSION must match). */
#define KERNELS_VERSION 1
#define ROW_BLOCK 64
/* Frames of a block of the moments: its frames and weights (3072 channels: 192 + 384 KB) stay in cache between
 * the block's two passes. */
#define STAT_BLOCK 32

/* GCC 12 and later take arch= levels in target_clones; the clones dispatch through glibc's ifunc (not musl's). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__GLIBC__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline float widen(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, as torch's fp32 -> bf16 conversion does; a NaN stays a (quiet) NaN. */
static inline uint16_t narrow(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t rounded = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)((u >> 16) | 0x0040u) : rounded;
}

/* Which kernels and signatures this library has: fused_passes.py refuses a library built from another version. */
int bf16_kernels_version(void) { return KERNELS_VERSION; }

/*
 * exp() as Cephes' expf (the form SLEEF's and Inductor's vectorised exp take): libm's expf is a call per
 * element, which the compiler cannot vectorise. Relative error within 2 ulp over [-87, 88]; the input is
 * clamped to that range (a softmax's weights underflow to 0 below it, as in fp32 anyway).
 */
static inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float rounder = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    float n = (x * 1.44269504088896341f + rounder) - rounder;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}

static inline void add_and_clear(float *restrict total, float *restrict block, int64_t channels) {
    for (int64_t c = 0; c < channels; c++) {
        total[c] += block[c];
        block[c] = 0.0f;
    }
}

static inline int block_ends(int64_t done, int64_t frames) { return done % ROW_BLOCK == 0 || done == frames; }

/*
 * Adds a block's statistics (`block_n` frames' weight, mean and sum of squared deviations about that mean)
 * into the running ones: Chan, Golub and LeVeque's pairwise update, exact in exact arithmetic and as stable
 * as two passes over all the frames, with each block's two passes over frames still in cache.
 */
static inline void combine(float *restrict n, float *restrict mean, float *restrict squares,
                           const float *restrict block_n, const float *restrict block_mean,
                           const float *restrict block_squares, int64_t channels) {
    for (int64_t c = 0; c < channels; c++) {
        float total = n[c] + block_n[c];
        float delta = block_mean[c] - mean[c];
        float share = block_n[c] / total;
        mean[c] += delta * share;
        squares[c] += block_squares[c] + delta * delta * n[c] * share;
        n[c] = total;
    }
}

/*
 * The first block's mean becomes the origin the statistics are taken about (its own block mean then 0): the
 * running mean then holds deviations of the order of a standard deviation, not the channel's level, so its
 * rounding (which the pairwise update carries into the sum of squares) is that much smaller.
 */
static inline void move_origin(float *restrict origin, float *restrict block_mean, int64_t channels) {
    for (int64_t c = 0; c < channels; c++) {
        origin[c] = block_mean[c];
        block_mean[c] = 0.0f;
    }
}

/*
 * Mean and (biased) variance over `frames` rows, weighted by softmax(logits over frames) where `logits` is not
 * NULL, by blocks of STAT_BLOCK frames combined as above: SpeechBrain's two passes over each block while it is
 * in cache, its weights kept for the second. `shift`: subtract each channel's largest logit first (the softmax's
 * guard against overflow; it cancels in the weights). exp() is clamped below at e^-87, so every weight is
 * positive and no block's total is zero. Inlined into its two callers, each compiled for its case.
 */
static inline __attribute__((always_inline)) int blocked_moments(const uint16_t *z, int64_t z_stride,
                                                                 const uint16_t *logits, int64_t l_stride,
                                                                 int64_t frames, int64_t channels, int shift,
                                                                 float *restrict mean, float *restrict variance) {
    float *scratch = calloc((size_t)channels * (6 + (logits != NULL ? STAT_BLOCK : 0)), sizeof(float));
    if (scratch == NULL) return -1;
    float *restrict peak = scratch, *restrict total = scratch + channels;
    float *restrict block_total = scratch + 2 * channels, *restrict block_mean = scratch + 3 * channels;
    float *restrict block_squares = scratch + 4 * channels, *restrict origin = scratch + 5 * channels;
    float *restrict weights = scratch + 6 * channels; /* only where there are logits */
    if (logits != NULL && shift) {
        for (int64_t c = 0; c < channels; c++) peak[c] = widen(logits[c]);
        for (int64_t t = 1; t < frames; t++) {
            const uint16_t *row = logits + t * l_stride;
            for (int64_t c = 0; c < channels; c++) {
                float a = widen(row[c]);
                peak[c] = a > peak[c] ? a : peak[c];
            }
        }
    }
    memset(mean, 0, (size_t)channels * sizeof(float));
    memset(variance, 0, (size_t)channels * sizeof(float));
    for (int64_t start = 0; start < frames; start += STAT_BLOCK) {
        int64_t rows = frames - start < STAT_BLOCK ? frames - start : STAT_BLOCK;
        memset(block_total, 0, (size_t)channels * sizeof(float));
        memset(block_mean, 0, (size_t)channels * sizeof(float));
        memset(block_squares, 0, (size_t)channels * sizeof(float));
        for (int64_t t = 0; t < rows; t++) {
            const uint16_t *x = z + (start + t) * z_stride;
            if (logits == NULL) {
                for (int64_t c = 0; c < channels; c++) block_mean[c] += widen(x[c]) - origin[c];
                continue;
            }
            const uint16_t *a = logits + (start + t) * l_stride;
            float *restrict w = weights + t * channels;
            for (int64_t c = 0; c < channels; c++) {
                w[c] = fast_exp(widen(a[c]) - peak[c]);
                block_total[c] += w[c];
                block_mean[c] += w[c] * (widen(x[c]) - origin[c]);
            }
        }
        if (logits == NULL)
            for (int64_t c = 0; c < channels; c++) block_total[c] = (float)rows;
        for (int64_t c = 0; c < channels; c++) block_mean[c] /= block_total[c];
        if (start == 0) move_origin(origin, block_mean, channels);
        for (int64_t t = 0; t < rows; t++) {
            const uint16_t *x = z + (start + t) * z_stride;
            if (logits == NULL) {
                for (int64_t c = 0; c < channels; c++) {
                    float d = (widen(x[c]) - origin[c]) - block_mean[c];
                    block_squares[c] += d * d;
                }
                continue;
            }
            const float *restrict w = weights + t * channels;
            for (int64_t c = 0; c < channels; c++) {
                float d = (widen(x[c]) - origin[c]) - block_mean[c];
                block_squares[c] += w[c] * (d * d);
            }
        }
        combine(total, mean, variance, block_total, block_mean, block_squares, channels);
    }
    for (int64_t c = 0; c < channels; c++) {
        mean[c] += origin[c];
        variance[c] /= total[c];
    }
    free(scratch);
    return 0;
}

/* Mean and (biased) variance over `frames` rows. Returns 0, or -1 out of memory. */
CLONES int bf16_moments(const uint16_t *z, int64_t stride, int64_t frames, int64_t channels, float *restrict mean,
                        float *restrict variance) {
    return blocked_moments(z, stride, NULL, 0, frames, channels, 0, mean, variance);
}

/* Softmax(logits over frames)-weighted mean and variance. Returns 0, or -1 out of memory. */
CLONES int bf16_weighted_moments(const uint16_t *z, int64_t z_stride, const uint16_t *logits, int64_t l_stride,
                                 int64_t frames, int64_t channels, int shift, float *restrict mean,
                                 float *restrict variance) {
    return blocked_moments(z, z_stride, logits, l_stride, frames, channels, shift, mean, variance);
}

/* Each segment's sum over its frames (`starts`, `ends`), per channel: `totals` is [segments, channels]. */
CLONES int bf16_segment_sums(const uint16_t *z, int64_t stride, const int64_t *starts, const int64_t *ends,
                             int64_t segments, int64_t channels, float *restrict totals) {
    float *block = calloc((size_t)channels, sizeof(float));
    if (block == NULL) return -1;
    for (int64_t i = 0; i < segments; i++) {
        float *restrict total = totals + i * channels;
        int64_t frames = ends[i] - starts[i];
        memset(total, 0, (size_t)channels * sizeof(float));
        for (int64_t t = 0; t < frames; t++) {
            const uint16_t *row = z + (starts[i] + t) * stride;
            for (int64_t c = 0; c < channels; c++) block[c] += widen(row[c]);
            if (block_ends(t + 1, frames)) add_and_clear(total, block, channels);
        }
    }
    free(block);
    return 0;
}

/*
 * out = x * x_factor + constant + z * z_factor per channel over each segment's frames, its own `constant` and
 * `z_factor` rows ([segments, channels]); fp32, rounded to bf16 once.
 */
CLONES int bf16_scaled_sums(const uint16_t *x, int64_t x_stride, const float *restrict x_factor,
                            const float *restrict constants, const uint16_t *z, int64_t z_stride,
                            const float *restrict z_factors, const int64_t *starts, const int64_t *ends,
                            int64_t segments, int64_t channels, uint16_t *out, int64_t out_stride) {
    for (int64_t i = 0; i < segments; i++) {
        const float *restrict constant = constants + i * channels, *restrict z_factor = z_factors + i * channels;
        for (int64_t t = starts[i]; t < ends[i]; t++) {
            const uint16_t *xr = x + t * x_stride, *zr = z + t * z_stride;
            uint16_t *o = out + t * out_stride;
            for (int64_t c = 0; c < channels; c++)
                o[c] = narrow(widen(xr[c]) * x_factor[c] + constant[c] + widen(zr[c]) * z_factor[c]);
        }
    }
    return 0;
}

/*
 * A layer's reflect-padded input, [pad + width + pad, channels] contiguous: the middle frames are `x` (bf16, copied),
 * or `x * x_factor + addend * factor` (fp32 per-channel factors, `x_factor` NULL for 1; rounded to bf16 once); then
 * torch's reflect padding at both ends, and each segment's own reflections into the gaps between segments
 * (`starts`, `ends`: the segments' frames, in order), as biometrics.voice.model.packing.reflect_into_padding.
 * Returns 0, or -2 when a reflection would read outside the frames.
 */
CLONES int bf16_padded_sum(const uint16_t *x, int64_t x_stride, const float *x_factor, const uint16_t *addend,
                           int64_t a_stride, const float *factor, int64_t width, int64_t channels, int64_t pad,
                           const int64_t *starts, const int64_t *ends, int64_t segments, uint16_t *out) {
    if (width <= pad) return -2;
    uint16_t *middle = out + pad * channels;
    size_t row_bytes = (size_t)channels * sizeof(uint16_t);
    for (int64_t t = 0; t < width; t++) {
        const uint16_t *xr = x + t * x_stride;
        uint16_t *o = middle + t * channels;
        if (addend == NULL) {
            memcpy(o, xr, row_bytes);
        } else if (x_factor == NULL) {
            const uint16_t *ar = addend + t * a_stride;
            for (int64_t c = 0; c < channels; c++) o[c] = narrow(widen(xr[c]) + widen(ar[c]) * factor[c]);
        } else {
            const uint16_t *ar = addend + t * a_stride;
            for (int64_t c = 0; c < channels; c++)
                o[c] = narrow(widen(xr[c]) * x_factor[c] + widen(ar[c]) * factor[c]);
        }
    }
    for (int64_t j = 0; j < pad; j++) {
        memcpy(out + j * channels, middle + (pad - j) * channels, row_bytes);                   /* frames pad..1 */
        memcpy(out + (pad + width + j) * channels, middle + (width - 2 - j) * channels, row_bytes); /* n-2.. */
    }
    for (int64_t i = 0; i < segments; i++) {
        for (int64_t k = 1; k <= pad; k++) {
            if (starts[i] > 0) {
                int64_t source = starts[i] + k;
                if (source >= width) return -2;
                memcpy(out + (pad + starts[i] - k) * channels, middle + source * channels, row_bytes);
            }
            if (ends[i] < width) {
                int64_t source = ends[i] - 1 - k;
                if (source < 0) return -2;
                memcpy(out + (pad + ends[i] - 1 + k) * channels, middle + source * channels, row_bytes);
            }
        }
    }
    return 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused_passes",
                                    "The bf16 pass's element-wise kernels, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__fused_passes(void) { return PyModule_Create(&module); }
