/* Kernels for decoding on a CPU with bfloat16 models (metarewarding.backends.cpu_kernels):
 *
 * mr_decode_attention: one new token per row, grouped-query heads, keys and values read where
 * they lie (shared prefix segments, then the row's own cache). It computes what
 * metarewarding.backends.hf._shared_prefix_attention computes, with the same roundings:
 * query-key products accumulated in float32 and rounded to bfloat16, then scaled and biased in
 * float32, softmax in float32, weights rounded to bfloat16, the weighted sum of values
 * accumulated in float32 and rounded to bfloat16 once. Sums run in another order than
 * PyTorch's kernels, so results may differ from them in the last bit of a rounding.
 * mr_nucleus_candidates: each row's most likely tokens and their probabilities, for top-p.
 * mr_rms_norm: Llama's RMSNorm.
 *
 * Built at first use by metarewarding.backends.cpu_kernels with the system C compiler
 * (-O3 -march=native -fopenmp); OpenMP resolves to the runtime PyTorch has loaded. */

#include <math.h>
#include <stdint.h>
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define MR_DPBF16 1
#endif
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as PyTorch's cast */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* e^x in float32 to ~1 ulp (range reduction by ln 2, degree-6 polynomial); 0 below -87 (so a
 * masked score, -inf, weighs exactly 0). The plain C paths' exp; exp16 is the AVX-512 one. */
static inline float exp_approx(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = floorf(xc * log2e + 0.5f);
    float r = xc - n * ln2_hi - n * ln2_lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? 0.0f : p * scale;
}

#ifdef MR_DPBF16
/* lane j of the result: the sum of the 16 lanes of a[j] */
static inline __attribute__((always_inline)) __m512 sum16(const __m512 *a) {
    __m512 b[8], c[4];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 e0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 e1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* float32 lanes rounded to bfloat16 and back (round to nearest even) */
static inline __m512 round_bf16(__m512 x) {
    __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m512 load_bf16(const uint16_t *p) { /* 16 bfloat16 as float32 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* exp_approx on 16 lanes (the same reduction and polynomial; n rounded to nearest even) */
static inline __m512 exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.0f);
    __mmask16 live = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(live, p, _mm512_castsi512_ps(bits));
}

/* the products of one query head and one key (C32 chunks of 32 dims), in 16 float32 lanes */
static inline __attribute__((always_inline)) __m512 key_lanes(const int C32, const uint16_t *qg, const uint16_t *k) {
    __m512 lanes = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)_mm512_loadu_si512(qg),
                                    (__m512bh)_mm512_loadu_si512(k));
#pragma GCC unroll 4
    for (int c = 1; c < C32; c++)
        lanes = _mm512_dpbf16_ps(lanes, (__m512bh)_mm512_loadu_si512(qg + 32 * c),
                                 (__m512bh)_mm512_loadu_si512(k + 32 * c));
    return lanes;
}

/* One key/value part (a shared segment or the row's own keys) of row r, head h: scores of
 * keys [0, width) into sc[g*total + t], dims a multiple of 32 (C32 chunks, a constant after
 * inlining so that the 16 key sums stay in registers). Keys go in blocks of 16, each block
 * for every query head while it is in the first-level cache; every other cache line of the
 * block 8 ahead is prefetched. */
static inline __attribute__((always_inline)) void part_scores(const int C32, const uint16_t *qr, const uint16_t *keys,
                                                              int64_t width, int64_t group, float scale,
                                                              const float *br, float *sc, int64_t total) {
    const int64_t dim = 32 * C32;
    const __m512 vscale = _mm512_set1_ps(scale);
    int64_t t = 0;
    for (; t + 16 <= width; t += 16) {
        if (t + 144 <= width)
            for (int j = 0; j < 16 * C32; j += 2) _mm_prefetch((const char *)(keys + (t + 128) * dim + 32 * j), _MM_HINT_T0);
        for (int64_t g = 0; g < group; g++) {
            const uint16_t *qg = qr + g * dim;
            __m512 lanes[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) lanes[j] = key_lanes(C32, qg, keys + (t + j) * dim);
            __m512 score = _mm512_mul_ps(round_bf16(sum16(lanes)), vscale);
            if (br) score = _mm512_add_ps(score, _mm512_loadu_ps(br + t));
            _mm512_storeu_ps(sc + g * total + t, score);
        }
    }
    for (; t < width; t++) {
        for (int64_t g = 0; g < group; g++) {
            __m512 lanes = key_lanes(C32, qr + g * dim, keys + t * dim);
            float score = bf16_to_float(float_to_bf16(_mm512_reduce_add_ps(lanes))) * scale;
            sc[g * total + t] = br ? score + br[t] : score;
        }
    }
}

/* softmax of each query head's scores (float32), weights rounded to bfloat16 */
static void softmax16(float *sc, int64_t group, int64_t total) {
    for (int64_t g = 0; g < group; g++) {
        float *sg = sc + g * total;
        __m512 top = _mm512_set1_ps(-INFINITY);
        int64_t t = 0;
        for (; t + 16 <= total; t += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(sg + t));
        __mmask16 tail = (__mmask16)((1u << (total - t)) - 1u);
        top = _mm512_max_ps(top, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, sg + t));
        float m = _mm512_reduce_max_ps(top);
        __m512 vm = _mm512_set1_ps(m == -INFINITY ? 0.0f : m), sum = _mm512_setzero_ps();
        for (t = 0; t + 16 <= total; t += 16) {
            __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(sg + t), vm));
            _mm512_storeu_ps(sg + t, e);
            sum = _mm512_add_ps(sum, e);
        }
        __m512 e = _mm512_maskz_mov_ps(tail, exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(vm, tail, sg + t), vm)));
        _mm512_mask_storeu_ps(sg + t, tail, e);
        float s = _mm512_reduce_add_ps(_mm512_add_ps(sum, e));
        __m512 inv = _mm512_set1_ps(s > 0.0f ? 1.0f / s : 0.0f);
        for (t = 0; t + 16 <= total; t += 16)
            _mm512_storeu_ps(sg + t, round_bf16(_mm512_mul_ps(_mm512_loadu_ps(sg + t), inv)));
        _mm512_mask_storeu_ps(sg + t, tail, round_bf16(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, sg + t), inv)));
    }
}

/* acc (G query heads x C16 chunks of 16 dims) += weights . values of one part; each value row
 * is read and widened once for all G heads, and the sums stay in registers (G*C16 <= 24) */
static inline __attribute__((always_inline)) void values_tile(const int C16, const int G, const float *sc,
                                                              const uint16_t *values, int64_t width, int64_t total,
                                                              float *acc) {
    __m512 a[24];
#pragma GCC unroll 24
    for (int i = 0; i < G * C16; i++) a[i] = _mm512_loadu_ps(acc + 16 * i);
    for (int64_t t = 0; t < width; t++) {
        __m512 v[8];
#pragma GCC unroll 8
        for (int c = 0; c < C16; c++) v[c] = load_bf16(values + t * 16 * C16 + 16 * c);
#pragma GCC unroll 6
        for (int g = 0; g < G; g++) {
            __m512 w = _mm512_set1_ps(sc[g * total + t]);
#pragma GCC unroll 8
            for (int c = 0; c < C16; c++) a[g * C16 + c] = _mm512_fmadd_ps(w, v[c], a[g * C16 + c]);
        }
    }
#pragma GCC unroll 24
    for (int i = 0; i < G * C16; i++) _mm512_storeu_ps(acc + 16 * i, a[i]);
}

/* acc += weights . values of one part for every query head, in tiles of heads (6 for head dim
 * 64, 3 for 128: a tile's sums fill at most 24 registers; with dim 128, n never passes 3, and
 * cases 4-6 name 3 only so that they compile within a[24]) */
static inline __attribute__((always_inline)) void part_values(const int C16, const float *sc, const uint16_t *values,
                                                              int64_t width, int64_t group, int64_t total, float *acc) {
    const int tile = C16 == 4 ? 6 : 3;
    for (int64_t g = 0; g < group; g += tile) {
        int64_t n = group - g < tile ? group - g : tile;
        const float *s = sc + g * total;
        float *a = acc + g * 16 * C16;
        switch (n) {
            case 1: values_tile(C16, 1, s, values, width, total, a); break;
            case 2: values_tile(C16, 2, s, values, width, total, a); break;
            case 3: values_tile(C16, 3, s, values, width, total, a); break;
            case 4: values_tile(C16, C16 == 4 ? 4 : 3, s, values, width, total, a); break;
            case 5: values_tile(C16, C16 == 4 ? 5 : 3, s, values, width, total, a); break;
            default: values_tile(C16, C16 == 4 ? 6 : 3, s, values, width, total, a); break;
        }
    }
}

#endif

/* Where the keys and values of a decoding step lie: shared segments (segment s holds
 * [nodes, kv_heads, width_s, dim], row r reads node seg_node[s][r]), then each row's own cache
 * (own_k + r*own_row_stride + h*own_head_stride + t*dim for t < own_len; own_v alike). */
typedef struct {
    int64_t segments;
    const uint16_t *const *seg_k, *const *seg_v;
    const int64_t *seg_width;
    const int64_t *const *seg_node;
    const uint16_t *own_k, *own_v;
    int64_t own_row_stride, own_head_stride, own_len;
    int64_t kv_heads, group, dim, total; /* total: keys over all parts */
} kv_view;

/* part s of row r, head h (a shared segment, or the row's own keys at s == segments): its
 * keys and values, and its width */
static inline int64_t part_of(const kv_view *v, int64_t s, int64_t r, int64_t h, const uint16_t **keys,
                              const uint16_t **values) {
    int64_t at;
    if (s < v->segments) {
        at = (v->seg_node[s][r] * v->kv_heads + h) * v->seg_width[s] * v->dim;
        *keys = v->seg_k[s] + at;
        *values = v->seg_v[s] + at;
        return v->seg_width[s];
    }
    at = r * v->own_row_stride + h * v->own_head_stride;
    *keys = v->own_k + at;
    *values = v->own_v + at;
    return v->own_len;
}

#ifdef MR_DPBF16
/* the whole attention of row r, head h, for head dims 64 and 128 (C32 = dim / 32) */
static inline __attribute__((always_inline)) void attend_avx512(const int C32, const kv_view *v, int64_t r, int64_t h,
                                                                const uint16_t *qr, const float *br, float scale,
                                                                float *sc, float *acc, uint16_t *o) {
    const int64_t dim = 32 * C32, group = v->group, total = v->total;
    const uint16_t *keys, *values;
    for (int64_t s = 0, offset = 0; s <= v->segments; s++) {
        int64_t width = part_of(v, s, r, h, &keys, &values);
        part_scores(C32, qr, keys, width, group, scale, br ? br + offset : NULL, sc + offset, total);
        offset += width;
    }
    softmax16(sc, group, total);
    for (int64_t i = 0; i < group * dim; i++) acc[i] = 0.0f;
    for (int64_t s = 0, offset = 0; s <= v->segments; s++) {
        int64_t width = part_of(v, s, r, h, &keys, &values);
        part_values(2 * C32, sc + offset, values, width, group, total, acc);
        offset += width;
    }
    for (int64_t i = 0; i < group * dim; i += 16)
        _mm256_storeu_si256((__m256i *)(o + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(acc + i)));
}

static void attend64(const kv_view *v, int64_t r, int64_t h, const uint16_t *qr, const float *br, float scale,
                     float *sc, float *acc, uint16_t *o) {
    attend_avx512(2, v, r, h, qr, br, scale, sc, acc, o);
}

static void attend128(const kv_view *v, int64_t r, int64_t h, const uint16_t *qr, const float *br, float scale,
                      float *sc, float *acc, uint16_t *o) {
    attend_avx512(4, v, r, h, qr, br, scale, sc, acc, o);
}
#endif

/* The generic path (any CPU, any head dim): the same steps in plain C */
static void attend_generic(const kv_view *v, int64_t r, int64_t h, const uint16_t *qr, const float *br, float scale,
                           float *qf, float *row, float *sc, float *acc, uint16_t *o) {
    const int64_t dim = v->dim, group = v->group, total = v->total;
    const uint16_t *keys, *values;
    for (int64_t i = 0; i < group * dim; i++) qf[i] = bf16_to_float(qr[i]);
    for (int64_t s = 0, offset = 0; s <= v->segments; s++) {
        int64_t width = part_of(v, s, r, h, &keys, &values);
        for (int64_t t = 0; t < width; t++) {
            for (int64_t d = 0; d < dim; d++) row[d] = bf16_to_float(keys[t * dim + d]);
            for (int64_t g = 0; g < group; g++) {
                float dot = 0.0f;
                for (int64_t d = 0; d < dim; d++) dot += qf[g * dim + d] * row[d];
                float score = bf16_to_float(float_to_bf16(dot)) * scale;
                sc[g * total + offset + t] = br ? score + br[offset + t] : score;
            }
        }
        offset += width;
    }
    for (int64_t g = 0; g < group; g++) {
        float *sg = sc + g * total, top = -INFINITY, sum = 0.0f;
        for (int64_t t = 0; t < total; t++) top = sg[t] > top ? sg[t] : top;
        if (top == -INFINITY) top = 0.0f; /* every key masked: all weights 0 */
        for (int64_t t = 0; t < total; t++) {
            sg[t] = exp_approx(sg[t] - top);
            sum += sg[t];
        }
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int64_t t = 0; t < total; t++) sg[t] = bf16_to_float(float_to_bf16(sg[t] * inv));
    }
    for (int64_t i = 0; i < group * dim; i++) acc[i] = 0.0f;
    for (int64_t s = 0, offset = 0; s <= v->segments; s++) {
        int64_t width = part_of(v, s, r, h, &keys, &values);
        for (int64_t t = 0; t < width; t++)
            for (int64_t g = 0; g < group; g++) {
                float w = sc[g * total + offset + t];
                for (int64_t d = 0; d < dim; d++) acc[g * dim + d] += w * bf16_to_float(values[t * dim + d]);
            }
        offset += width;
    }
    for (int64_t i = 0; i < group * dim; i++) o[i] = float_to_bf16(acc[i]);
}

/* Rows and key/value heads run in parallel. For row r and key/value head h:
 *   q:      q + r*q_row_stride + (h*group + g)*dim          (g < group, the query heads of h)
 *   keys and values: as kv_view describes them
 *   bias:   bias + r*bias_row_stride + t over all keys in order (segments, then own), or NULL
 *   out:    out + ((r*kv_heads + h)*group + g)*dim
 * Returns 0, or 1 where scratch memory could not be allocated. */
int mr_decode_attention(int64_t rows, int64_t kv_heads, int64_t group, int64_t dim,
                        const uint16_t *q, int64_t q_row_stride,
                        int64_t segments, const uint16_t *const *seg_k, const uint16_t *const *seg_v,
                        const int64_t *seg_width, const int64_t *const *seg_node,
                        const uint16_t *own_k, const uint16_t *own_v, int64_t own_row_stride,
                        int64_t own_head_stride, int64_t own_len,
                        const float *bias, int64_t bias_row_stride, float scale, int threads,
                        uint16_t *out) {
    kv_view v = {segments, seg_k, seg_v, seg_width, seg_node, own_k, own_v, own_row_stride, own_head_stride,
                 own_len, kv_heads, group, dim, own_len};
    for (int64_t s = 0; s < segments; s++) v.total += seg_width[s];
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        /* per thread: scores (padded to whole 16-lane blocks), output sums, queries and one key
         * in float32 */
        size_t floats = (size_t)(group * (v.total + 16) + 3 * group * dim + dim);
        float *sc = malloc(sizeof(float) * floats);
        failed = sc == NULL;
#pragma omp for collapse(2) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t h = 0; h < kv_heads; h++) {
                if (!sc) continue;
                float *acc = sc + group * (v.total + 16), *qf = acc + group * dim, *row = qf + group * dim;
                const uint16_t *qr = q + r * q_row_stride + h * group * dim;
                const float *br = bias ? bias + r * bias_row_stride : NULL;
                uint16_t *o = out + (r * kv_heads + h) * group * dim;
#ifdef MR_DPBF16
                if (dim == 64 || dim == 128) {
                    (dim == 64 ? attend64 : attend128)(&v, r, h, qr, br, scale, sc, acc, o);
                    continue;
                }
#endif
                attend_generic(&v, r, h, qr, br, scale, qf, row, sc, acc, o);
            }
        }
        free(sc);
    }
    return failed;
}


/* ------------------------------------------------------------------------------------------ */
/* mr_nucleus_candidates: the k most likely tokens of each row of bfloat16 logits, for top-p
 * sampling at a temperature, without a probability for every token in memory.
 *
 * For row r: x = logit / temperature (float32), probabilities p = e^(x - max x) / sum, with the
 * sum over the whole vocabulary (16 float32 lanes). The k largest logits are found with a
 * heap in one scan; equal logits keep token order (a later token never displaces an equal
 * one), and the k come out in descending probability, ties in token order, as a stable full
 * sort has them. found[r] is 1 when the candidates more likely than the least likely one hold
 * more than top_p, summed in order as a cumulative sum would: then the nucleus ends among them
 * and no token left out ties with a kept one. k = vocabulary: every token, sorted. */

static inline uint16_t order_key(uint16_t b) { /* bfloat16 bits -> an integer in the floats' order */
    return (b & 0x8000u) ? (uint16_t)~b : (uint16_t)(b | 0x8000u);
}

typedef struct {
    uint16_t key; /* order_key of the logit */
    int64_t idx;  /* token */
} candidate;

/* heap of candidates with the worst at the root: the smallest key, and of equal keys the
 * latest token */
static inline int worse(candidate a, candidate b) { return a.key < b.key || (a.key == b.key && a.idx > b.idx); }

static void sift_down(candidate *heap, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, w = i;
        if (l < n && worse(heap[l], heap[w])) w = l;
        if (l + 1 < n && worse(heap[l + 1], heap[w])) w = l + 1;
        if (w == i) return;
        candidate tmp = heap[i];
        heap[i] = heap[w];
        heap[w] = tmp;
        i = w;
    }
}

/* a token replaces the heap's worst one where its key is larger (a later token never displaces
 * an equal one: the scan goes in token order) */
static inline void offer(candidate *heap, int64_t k, uint16_t key, int64_t idx) {
    if (key > heap[0].key) {
        heap[0].key = key;
        heap[0].idx = idx;
        sift_down(heap, k, 0);
    }
}

/* exp of n float32 values in place, with the same function the row sums use */
static void exp_all(float *x, int64_t n) {
#ifdef MR_DPBF16
    int64_t t = 0;
    for (; t + 16 <= n; t += 16) _mm512_storeu_ps(x + t, exp16(_mm512_loadu_ps(x + t)));
    if (t < n) {
        __mmask16 tail = (__mmask16)((1u << (n - t)) - 1u);
        _mm512_mask_storeu_ps(x + t, tail, exp16(_mm512_maskz_loadu_ps(tail, x + t)));
    }
#else
    for (int64_t t = 0; t < n; t++) x[t] = exp_approx(x[t]);
#endif
}

/* the sum over a row of e^(logit/temperature - top) */
static float row_sum(const uint16_t *row, int64_t vocab, float temperature, float top) {
#ifdef MR_DPBF16
    __m512 acc = _mm512_setzero_ps(), vt = _mm512_set1_ps(temperature), vtop = _mm512_set1_ps(top);
    int64_t t = 0;
    for (; t + 16 <= vocab; t += 16)
        acc = _mm512_add_ps(acc, exp16(_mm512_sub_ps(_mm512_div_ps(load_bf16(row + t), vt), vtop)));
    float sum = _mm512_reduce_add_ps(acc);
    for (; t < vocab; t++) {
        float e = bf16_to_float(row[t]) / temperature - top;
        exp_all(&e, 1);
        sum += e;
    }
    return sum;
#else
    float lanes[16] = {0};
    for (int64_t t = 0; t < vocab; t++) lanes[t % 16] += exp_approx(bf16_to_float(row[t]) / temperature - top);
    float sum = 0.0f;
    for (int i = 0; i < 16; i++) sum += lanes[i];
    return sum;
#endif
}

static int by_probability(const void *a, const void *b) { /* descending key, then token order */
    const candidate *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

int mr_nucleus_candidates(int64_t n_rows, const int64_t *row_ids, int64_t vocab, const uint16_t *logits,
                          int64_t row_stride, float temperature, float top_p, int64_t k, float *probs,
                          int64_t *index, uint8_t *found, int threads) {
    if (k > vocab) k = vocab;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        int whole = k == vocab; /* every token: a counting sort on the 16-bit keys (stable) */
        candidate *sorted = malloc(sizeof(candidate) * (size_t)k);
        int64_t *bins = whole ? malloc(sizeof(int64_t) * 65537) : NULL;
        failed = !sorted || (whole && !bins);
#pragma omp for schedule(dynamic, 4)
        for (int64_t n = 0; n < n_rows; n++) {
            if (failed) continue;
            const uint16_t *row = logits + row_ids[n] * row_stride;
            if (whole) {
                memset(bins, 0, sizeof(int64_t) * 65537);
                for (int64_t t = 0; t < vocab; t++) bins[65535 - order_key(row[t]) + 1]++;
                for (int i = 1; i <= 65536; i++) bins[i] += bins[i - 1]; /* start of each key, largest first */
                for (int64_t t = 0; t < vocab; t++) {
                    uint16_t kt = order_key(row[t]);
                    int64_t at = bins[65535 - kt]++;
                    sorted[at].key = kt;
                    sorted[at].idx = t;
                }
            } else { /* the k largest logits, kept in a heap in ``sorted``, then sorted */
                for (int64_t t = 0; t < k; t++) {
                    sorted[t].key = order_key(row[t]);
                    sorted[t].idx = t;
                }
                for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(sorted, k, i);
                int64_t t = k;
#ifdef MR_DPBF16
                for (; t + 32 <= vocab; t += 32) { /* 32 at a time against the worst kept one */
                    __m512i b = _mm512_loadu_si512(row + t);
                    __mmask32 neg = _mm512_movepi16_mask(b);
                    __m512i ok = _mm512_mask_mov_epi16(_mm512_or_si512(b, _mm512_set1_epi16((short)0x8000)), neg,
                                                       _mm512_xor_si512(b, _mm512_set1_epi16(-1)));
                    __mmask32 above = _mm512_cmpgt_epu16_mask(ok, _mm512_set1_epi16((short)sorted[0].key));
                    while (above) {
                        int j = __builtin_ctz(above);
                        above &= above - 1;
                        offer(sorted, k, order_key(row[t + j]), t + j);
                    }
                }
#endif
                for (; t < vocab; t++) offer(sorted, k, order_key(row[t]), t);
                qsort(sorted, (size_t)k, sizeof(candidate), by_probability);
            }
            /* probabilities: the largest logit sets the top of the exponent */
            float top = bf16_to_float(row[sorted[0].idx]) / temperature;
            float inv = 1.0f / row_sum(row, vocab, temperature, top);
            float *pr = probs + n * k;
            int64_t *ir = index + n * k;
            for (int64_t i = 0; i < k; i++) {
                ir[i] = sorted[i].idx;
                pr[i] = bf16_to_float(row[sorted[i].idx]) / temperature - top;
            }
            exp_all(pr, k);
            /* found: the first candidate that ties with the last one has more than top_p before
             * it, as _nucleus_draw's cumulative sum (float64 running sum, float32 values) says */
            for (int64_t i = 0; i < k; i++) pr[i] *= inv;
            found[n] = k == vocab;
            double running = 0.0;
            for (int64_t i = 0; i < k && !found[n]; i++) {
                running += (double)pr[i];
                if (sorted[i].key == sorted[k - 1].key) {
                    found[n] = (float)running - pr[i] > top_p;
                    break;
                }
            }
        }
        free(sorted);
        free(bins);
    }
    return failed;
}

/* ------------------------------------------------------------------------------------------ */
/* mr_rms_norm: Llama's RMSNorm of bfloat16 rows, as transformers writes it: x in float32,
 * x * 1/sqrt(mean(x^2) + eps) rounded to bfloat16, times the weight, rounded to bfloat16. The
 * mean's sum runs in 16 float32 lanes. */
int mr_rms_norm(int64_t rows, int64_t hidden, const uint16_t *x, const uint16_t *weight, float eps, uint16_t *out,
                int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * hidden;
        uint16_t *orow = out + r * hidden;
        float lanes[16] = {0};
        int64_t i = 0;
        for (; i + 16 <= hidden; i += 16)
#pragma omp simd
            for (int j = 0; j < 16; j++) {
                float v = bf16_to_float(xr[i + j]);
                lanes[j] += v * v;
            }
        for (; i < hidden; i++) {
            float v = bf16_to_float(xr[i]);
            lanes[i % 16] += v * v;
        }
        float squares = 0.0f;
        for (int j = 0; j < 16; j++) squares += lanes[j];
        float inv = 1.0f / sqrtf(squares / (float)hidden + eps);
#pragma omp simd
        for (int64_t k = 0; k < hidden; k++)
            orow[k] = float_to_bf16(bf16_to_float(weight[k]) * bf16_to_float(float_to_bf16(bf16_to_float(xr[k]) * inv)));
    }
    return 0;
}
