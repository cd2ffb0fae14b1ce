/*
 * Fused word split / merge for se2 (the "swap" order of docs/FORMAT.md section 2.2).
 *
 * The numpy kernels in split.py need five passes over each chunk (copy in, gather,
 * scatter, pack, index arithmetic); this does one, reading each 32-byte unit once
 * and writing its 28 public bytes and 4 private bytes. Pure: buffers in, buffers
 * out, no allocation; the GIL is released while it runs. Optional: if it is not
 * built, split.py's numpy kernels are used and give the same bytes.
 *
 * In the swap order a unit's split is one lane permutation: exchange words j and 7;
 * then lanes 0..6 are the public words and lane 7 is the private word. Merge is the
 * same exchange after putting the private word into lane 7. So the vector kernels
 * are a table lookup (the permutation for j) and one vpermd per unit (AVX2) or per
 * two units (AVX-512). Which kernel runs is chosen once, at import, from what the
 * CPU supports; every kernel gives the same bytes (tests/test_codec.py compares
 * them), and the portable scalar one is used on other CPUs and compilers.
 *
 * Whole-file encodes and decodes write their output with non-temporal stores
 * (split(flush=...), merge(stream=True), stream_copy): an output far larger than the
 * caches is then written without first being read into them. The writes are
 * interleaved with the reads of the next chunk (its split, or prefetches of its
 * input), which a single core otherwise does one after the other.
 *
 * Define SE2_PORTABLE to build only the portable code (as on other CPUs).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SE2_PORTABLE)
#define SE2_X86 1
#include <immintrin.h>
#endif

#define MAX_PF 4 /* buffers a streaming store can prefetch */

typedef void (*split_fn)(const uint8_t *s, const uint8_t *k, uint8_t *p, uint8_t *q,
                         Py_ssize_t n);
typedef void (*merge_fn)(const uint8_t *p, const uint8_t *q, const uint8_t *k, uint8_t *o,
                         Py_ssize_t n);

/* ------------------------------------------------------------------ scalar */

/* split: s 32n bytes, k n keystream bytes; p gets 28 bytes per unit plus 4 scratch
 * bytes after the last (each unit is stored as one 32-byte move whose last 4 bytes
 * the next unit overwrites), q 4 bytes per unit. */
static void split_scalar(const uint8_t *s, const uint8_t *k, uint8_t *p, uint8_t *q,
                         Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *u = s + 32 * i;
        uint8_t *o = p + 28 * i;
        unsigned j = k[i] & 7u;
        uint32_t w7, wj;
        memcpy(&wj, u + 4 * j, 4);
        memcpy(&w7, u + 28, 4);
        memcpy(q + 4 * i, &wj, 4);
        memcpy(o, u, 32);
        /* word 7 into slot j; for j == 7 rewrite slot 6 with itself (no branch) */
        unsigned last = j >> 2 & j >> 1 & j & 1u;  /* 1 iff j == 7 */
        unsigned slot = j - last;
        uint32_t keep;
        memcpy(&keep, u + 24, 4);
        uint32_t val = last ? keep : w7;
        memcpy(o + 4 * slot, &val, 4);
    }
}

/* merge: the inverse; reads p as 28n + 4 bytes (the last 4 unused), writes o 32n bytes. */
static void merge_scalar(const uint8_t *p, const uint8_t *q, const uint8_t *k, uint8_t *o,
                         Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *pi = p + 28 * i;
        uint8_t *u = o + 32 * i;
        unsigned j = k[i] & 7u;
        unsigned last = j >> 2 & j >> 1 & j & 1u;
        uint32_t w7;
        memcpy(&w7, pi + 4 * (j - last), 4);   /* slot j held word 7 (unless j == 7) */
        memcpy(u, pi, 28);
        memcpy(u + 28, &w7, 4);
        memcpy(u + 4 * j, q + 4 * i, 4);      /* for j == 7 this overwrites word 7 */
    }
}

#ifdef SE2_X86
/* ------------------------------------------------------------------ tables */

/* SWAP[j]: the lane permutation exchanging lanes j and 7 (identity for j == 7). */
static int32_t SWAP[8][8] __attribute__((aligned(32)));
/* SPLIT2[j0 | j1 << 3]: two units in one 16-lane vector -> public words of unit 0 in
 * lanes 0..6, of unit 1 in lanes 7..13, private words in lanes 14 and 15. */
static int32_t SPLIT2[64][16] __attribute__((aligned(64)));
/* MERGE2[j0 | j1 << 3]: the inverse, as a two-source permutation: lanes 0..13 of the
 * first source hold the 14 public words, lanes 0 and 1 of the second (index 16, 17)
 * the two private words; out = the two units. */
static int32_t MERGE2[64][16] __attribute__((aligned(64)));
/* CAT[m]: 16 units make 7 whole 64-byte lines of public words; line m is the public
 * words of pair m from word 2m on, then the first words of pair m + 1. */
static int32_t CAT[7][16] __attribute__((aligned(64)));

static void init_tables(void) {
    for (int j = 0; j < 8; j++) {
        for (int l = 0; l < 8; l++)
            SWAP[j][l] = l;
        SWAP[j][j] = 7;
        SWAP[j][7] = j;
    }
    for (int t = 0; t < 64; t++) {
        int j0 = t & 7, j1 = t >> 3;
        for (int l = 0; l < 7; l++) {
            SPLIT2[t][l] = SWAP[j0][l];
            SPLIT2[t][7 + l] = 8 + SWAP[j1][l];
        }
        SPLIT2[t][14] = j0;
        SPLIT2[t][15] = 8 + j1;
        /* unit u's public word l sits in lane 7u + l, its private word in lane 16 + u */
        for (int u = 0; u < 2; u++) {
            int j = u ? j1 : j0;
            for (int l = 0; l < 8; l++) {
                int lane = SWAP[j][l];  /* the split put original word l in this lane */
                MERGE2[t][8 * u + l] = lane == 7 ? 16 + u : 7 * u + lane;
            }
        }
    }
    for (int m = 0; m < 7; m++)
        for (int l = 0; l < 16; l++)
            CAT[m][l] = l < 14 - 2 * m ? 2 * m + l : 16 + l - (14 - 2 * m);
}

/* ------------------------------------------------------------------ AVX2 */

__attribute__((target("avx2"))) static void split_avx2(const uint8_t *s, const uint8_t *k,
                                                      uint8_t *p, uint8_t *q,
                                                      Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned j = k[i] & 7u;
        __m256i v = _mm256_loadu_si256((const __m256i *)(s + 32 * i));
        __m256i idx = _mm256_load_si256((const __m256i *)SWAP[j]);
        /* 32-byte store: lanes 0..6 public, lane 7 (the private word) is overwritten
         * by the next unit, or lands in the 4 scratch bytes after the last */
        _mm256_storeu_si256((__m256i *)(p + 28 * i), _mm256_permutevar8x32_epi32(v, idx));
        memcpy(q + 4 * i, s + 32 * i + 4 * j, 4);
    }
}

__attribute__((target("avx2"))) static void merge_avx2(const uint8_t *p, const uint8_t *q,
                                                      const uint8_t *k, uint8_t *o,
                                                      Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned j = k[i] & 7u;
        /* reads 4 bytes past the unit's public words (the next unit's, or scratch) */
        __m256i v = _mm256_loadu_si256((const __m256i *)(p + 28 * i));
        int32_t pw;
        memcpy(&pw, q + 4 * i, 4);
        v = _mm256_blend_epi32(v, _mm256_set1_epi32(pw), 0x80);
        __m256i idx = _mm256_load_si256((const __m256i *)SWAP[j]);
        _mm256_storeu_si256((__m256i *)(o + 32 * i), _mm256_permutevar8x32_epi32(v, idx));
    }
}

/* ------------------------------------------------------------------ AVX-512 */

#define T512 "avx512f,avx2"

/* One pair of units (h-th): 64 bytes in, 56 public bytes and 8 private bytes out. */
__attribute__((target(T512))) static inline void split_pair(const uint8_t *s,
                                                            const uint8_t *k, uint8_t *p,
                                                            uint8_t *q, Py_ssize_t h) {
    unsigned j0 = k[2 * h] & 7u, j1 = k[2 * h + 1] & 7u;
    __m512i v = _mm512_loadu_si512((const void *)(s + 64 * h));
    __m512i idx = _mm512_load_si512((const void *)SPLIT2[j0 | j1 << 3]);
    _mm512_mask_storeu_epi32(p + 56 * h, 0x3fff, _mm512_permutexvar_epi32(idx, v));
    memcpy(q + 8 * h, s + 64 * h + 4 * j0, 4);
    memcpy(q + 8 * h + 4, s + 64 * h + 32 + 4 * j1, 4);
}

__attribute__((target(T512))) static void split_avx512(const uint8_t *s, const uint8_t *k,
                                                        uint8_t *p, uint8_t *q,
                                                        Py_ssize_t n) {
    Py_ssize_t pairs = n / 2, h = 0;
    const __m512i c0 = _mm512_load_si512(CAT[0]), c1 = _mm512_load_si512(CAT[1]),
                  c2 = _mm512_load_si512(CAT[2]), c3 = _mm512_load_si512(CAT[3]),
                  c4 = _mm512_load_si512(CAT[4]), c5 = _mm512_load_si512(CAT[5]),
                  c6 = _mm512_load_si512(CAT[6]);
    /* 16 units at a time, so that the public words leave as 7 whole 64-byte stores
     * (line-crossing 56-byte stores cost twice as much once they miss L1) */
    for (; h + 8 <= pairs; h += 8) {
        const uint8_t *b = s + 64 * h;
        const uint8_t *kb = k + 2 * h;
        __m512i P[8];
        for (int m = 0; m < 8; m++) {
            unsigned t = (kb[2 * m] & 7u) | (kb[2 * m + 1] & 7u) << 3;
            P[m] = _mm512_permutexvar_epi32(_mm512_load_si512((const void *)SPLIT2[t]),
                                            _mm512_loadu_si512((const void *)(b + 64 * m)));
        }
        uint8_t *o = p + 56 * h;
        _mm512_storeu_si512(o, _mm512_permutex2var_epi32(P[0], c0, P[1]));
        _mm512_storeu_si512(o + 64, _mm512_permutex2var_epi32(P[1], c1, P[2]));
        _mm512_storeu_si512(o + 128, _mm512_permutex2var_epi32(P[2], c2, P[3]));
        _mm512_storeu_si512(o + 192, _mm512_permutex2var_epi32(P[3], c3, P[4]));
        _mm512_storeu_si512(o + 256, _mm512_permutex2var_epi32(P[4], c4, P[5]));
        _mm512_storeu_si512(o + 320, _mm512_permutex2var_epi32(P[5], c5, P[6]));
        _mm512_storeu_si512(o + 384, _mm512_permutex2var_epi32(P[6], c6, P[7]));
        /* private words: plain loads of the (now cached) source */
        for (int u = 0; u < 16; u++)
            memcpy(q + 8 * h + 4 * u, b + 32 * u + 4 * (kb[u] & 7u), 4);
    }
    for (; h < pairs; h++)
        split_pair(s, k, p, q, h);
    if (n & 1)
        split_scalar(s + 64 * pairs, k + 2 * pairs, p + 56 * pairs, q + 8 * pairs, 1);
}

__attribute__((target(T512))) static void merge_avx512(const uint8_t *p, const uint8_t *q,
                                                        const uint8_t *k, uint8_t *o,
                                                        Py_ssize_t n) {
    Py_ssize_t pairs = n / 2;
    for (Py_ssize_t h = 0; h < pairs; h++) {
        unsigned j0 = k[2 * h] & 7u, j1 = k[2 * h + 1] & 7u;
        __m512i v = _mm512_maskz_loadu_epi32(0x3fff, p + 56 * h);
        int64_t ab;
        memcpy(&ab, q + 8 * h, 8);
        __m512i idx = _mm512_load_si512((const void *)MERGE2[j0 | j1 << 3]);
        _mm512_storeu_si512((void *)(o + 64 * h),
                            _mm512_permutex2var_epi32(v, idx, _mm512_set1_epi64(ab)));
    }
    if (n & 1)
        merge_scalar(p + 56 * pairs, q + 8 * pairs, k + 2 * pairs, o + 64 * pairs, 1);
}

/* ------------------------------------------------------------------ streaming stores */

/* Buffers to prefetch into the cache (whole lines), spread over a streaming copy: a
 * decode writes one chunk out while the next chunk's piece and segment come in, and
 * its GCM then reads them from cache instead of waiting on memory. */
typedef struct {
    const uint8_t *p[MAX_PF];
    size_t n[MAX_PF];
    int i, count;
    size_t per_step; /* bytes to prefetch per 256 bytes copied */
} pf_t;

static void pf_plan(pf_t *f, size_t copy_len) {
    size_t total = 0;
    for (int i = 0; i < f->count; i++) {
        size_t mis = (uintptr_t)f->p[i] & 63u;  /* start at the line holding p */
        f->p[i] = (const uint8_t *)((uintptr_t)f->p[i] - mis);
        f->n[i] += mis;
        total += f->n[i];
    }
    size_t steps = copy_len / 256 + 1;
    f->per_step = ((total + steps - 1) / steps + 63) & ~(size_t)63;
    f->i = 0;
}

static inline void pf_step(pf_t *f, size_t bytes) {
    while (bytes > 0 && f->i < f->count) {
        int i = f->i;
        size_t m = bytes < f->n[i] ? bytes : f->n[i];
        for (size_t o = 0; o < m; o += 64)
            _mm_prefetch((const char *)f->p[i] + o, _MM_HINT_T1);
        f->p[i] += m;
        f->n[i] -= m;
        bytes -= m;
        if (f->n[i] == 0)
            f->i++;
    }
}

typedef void (*ntcopy_fn)(uint8_t *d, const uint8_t *s, size_t n, pf_t *f);

/* Copy n bytes to a 64-byte aligned d with non-temporal stores (n a multiple of 64). */
__attribute__((target(T512))) static void ntcopy_avx512(uint8_t *d, const uint8_t *s,
                                                         size_t n, pf_t *f) {
    size_t i = 0;
    for (; i + 256 <= n; i += 256) {
        __m512i a = _mm512_loadu_si512((const void *)(s + i));
        __m512i b = _mm512_loadu_si512((const void *)(s + i + 64));
        __m512i c = _mm512_loadu_si512((const void *)(s + i + 128));
        __m512i e = _mm512_loadu_si512((const void *)(s + i + 192));
        _mm512_stream_si512((void *)(d + i), a);
        _mm512_stream_si512((void *)(d + i + 64), b);
        _mm512_stream_si512((void *)(d + i + 128), c);
        _mm512_stream_si512((void *)(d + i + 192), e);
        pf_step(f, f->per_step);
    }
    for (; i < n; i += 64)
        _mm512_stream_si512((void *)(d + i), _mm512_loadu_si512((const void *)(s + i)));
}

static void ntcopy_sse2(uint8_t *d, const uint8_t *s, size_t n, pf_t *f) {
    for (size_t i = 0; i < n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
        _mm_stream_si128((__m128i *)(d + i), a);
        _mm_stream_si128((__m128i *)(d + i + 16), b);
        _mm_stream_si128((__m128i *)(d + i + 32), c);
        _mm_stream_si128((__m128i *)(d + i + 48), e);
        if ((i & 255) == 192)
            pf_step(f, f->per_step);
    }
}

static ntcopy_fn NTCOPY = ntcopy_sse2; /* SSE2 is part of x86-64 */

/* Any alignment: partial lines at either end take plain stores. No fence (the caller's). */
static void stream_bytes(uint8_t *d, const uint8_t *s, size_t n, pf_t *f) {
    size_t head = (size_t)(-(uintptr_t)d & 63u);
    if (n < 256 || head >= n) {
        memcpy(d, s, n);
        return;
    }
    memcpy(d, s, head);
    size_t body = (n - head) & ~(size_t)63;
    NTCOPY(d + head, s + head, body, f);
    memcpy(d + head + body, s + head + body, n - head - body);
}

/* Copies spread over a split ("flush"): while one chunk is split, the previous
 * chunk's sealed pieces go to their destinations with non-temporal stores. The split
 * waits on reads and the copy on writes, and interleaved they overlap. */
typedef struct {
    uint8_t *d[MAX_PF];
    const uint8_t *s[MAX_PF];
    size_t n[MAX_PF];
    int i, count;
    size_t per_step; /* bytes to copy per step of the split */
} flush_t;

/* Partial lines at either end of each copy go now, with plain stores; the whole
 * lines between are left for flush_step, spread evenly over `steps` calls. */
static void flush_plan(flush_t *f, size_t steps) {
    size_t total = 0;
    for (int i = 0; i < f->count; i++) {
        size_t head = (size_t)(-(uintptr_t)f->d[i] & 63u);
        if (head >= f->n[i])
            head = f->n[i];
        memcpy(f->d[i], f->s[i], head);
        f->d[i] += head;
        f->s[i] += head;
        f->n[i] -= head;
        size_t tail = f->n[i] & 63u;
        f->n[i] -= tail;
        memcpy(f->d[i] + f->n[i], f->s[i] + f->n[i], tail);
        total += f->n[i];
    }
    if (steps == 0)
        steps = 1;
    f->per_step = ((total + steps - 1) / steps + 63) & ~(size_t)63;
    f->i = 0;
}

static void flush_step(flush_t *f, size_t bytes) {
    pf_t none = {.count = 0};
    while (bytes > 0 && f->i < f->count) {
        int i = f->i;
        size_t m = bytes < f->n[i] ? bytes : f->n[i];
        NTCOPY(f->d[i], f->s[i], m, &none);
        f->d[i] += m;
        f->s[i] += m;
        f->n[i] -= m;
        bytes -= m;
        if (f->n[i] == 0)
            f->i++;
    }
}
#endif /* SE2_X86 */

/* ------------------------------------------------------------------ dispatch */

typedef struct {
    const char *name;
    split_fn split;
    merge_fn merge;
    int ok; /* usable on this CPU (set at import) */
} kernel_t;

static kernel_t KERNELS[] = {
    {"scalar", split_scalar, merge_scalar, 1},
#ifdef SE2_X86
    {"avx2", split_avx2, merge_avx2, 0},
    {"avx512", split_avx512, merge_avx512, 0},
#endif
};
#define NKERNELS ((int)(sizeof(KERNELS) / sizeof(KERNELS[0])))
static int BEST = 0;

static void detect(void) {
#ifdef SE2_X86
    init_tables();
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f");
    for (int i = 1; i < NKERNELS; i++) {
        const char *name = KERNELS[i].name;
        KERNELS[i].ok = !strcmp(name, "avx2") ? avx2 : !strcmp(name, "avx512") ? avx512 : 0;
        if (KERNELS[i].ok)
            BEST = i;
    }
    if (avx512)
        NTCOPY = ntcopy_avx512;
#endif
}

/* The kernel named `name` (NULL: the best this CPU runs); -1 with an exception set. */
static int pick(const char *name) {
    if (name == NULL)
        return BEST;
    for (int i = 0; i < NKERNELS; i++)
        if (!strcmp(name, KERNELS[i].name)) {
            if (KERNELS[i].ok)
                return i;
            PyErr_Format(PyExc_ValueError, "kernel %s is not supported on this CPU", name);
            return -1;
        }
    PyErr_Format(PyExc_ValueError, "unknown kernel %s", name);
    return -1;
}

/* Buffers of a `prefetch` argument (None or a sequence of up to MAX_PF buffers). */
typedef struct {
    Py_buffer b[MAX_PF];
    int count;
} bufs_t;

static int get_bufs(PyObject *seq, bufs_t *out) {
    out->count = 0;
    if (seq == NULL || seq == Py_None)
        return 0;
    PyObject *fast = PySequence_Fast(seq, "prefetch must be a sequence of buffers");
    if (fast == NULL)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    int rc = 0;
    if (len > MAX_PF) {
        PyErr_Format(PyExc_ValueError, "prefetch takes at most %d buffers", MAX_PF);
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < len; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), &out->b[i], PyBUF_SIMPLE) < 0)
            rc = -1;
        else
            out->count++;
    }
    Py_DECREF(fast);
    return rc;
}

static void release_bufs(bufs_t *bs) {
    for (int i = 0; i < bs->count; i++)
        PyBuffer_Release(&bs->b[i]);
    bs->count = 0;
}

#ifdef SE2_X86
static void pf_from(pf_t *f, const bufs_t *bs, size_t copy_len) {
    f->count = bs->count;
    for (int i = 0; i < bs->count; i++) {
        f->p[i] = bs->b[i].buf;
        f->n[i] = (size_t)bs->b[i].len;
    }
    pf_plan(f, copy_len);
}
#endif

/* Flush argument: None or a sequence of up to MAX_PF (dst, src) pairs. */
typedef struct {
    Py_buffer d[MAX_PF], s[MAX_PF];
    int count;
} pairs_t;

static int get_pairs(PyObject *seq, pairs_t *out) {
    out->count = 0;
    if (seq == NULL || seq == Py_None)
        return 0;
    PyObject *fast = PySequence_Fast(seq, "flush must be a sequence of (dst, src) pairs");
    if (fast == NULL)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    int rc = 0;
    if (len > MAX_PF) {
        PyErr_Format(PyExc_ValueError, "flush takes at most %d pairs", MAX_PF);
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < len; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(fast, i);
        Py_buffer *d = &out->d[out->count], *s = &out->s[out->count];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "flush must be a sequence of (dst, src) pairs");
            rc = -1;
        } else if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 0), d, PyBUF_WRITABLE) < 0) {
            rc = -1;
        } else if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 1), s, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(d);
            rc = -1;
        } else if (d->len < s->len) {
            PyBuffer_Release(d);
            PyBuffer_Release(s);
            PyErr_SetString(PyExc_ValueError, "flush: destination smaller than source");
            rc = -1;
        } else {
            out->count++;
        }
    }
    Py_DECREF(fast);
    return rc;
}

static void release_pairs(pairs_t *ps) {
    for (int i = 0; i < ps->count; i++) {
        PyBuffer_Release(&ps->d[i]);
        PyBuffer_Release(&ps->s[i]);
    }
    ps->count = 0;
}

/* split(src, ks, pub, prv, n, kernel=None, flush=None): src 32n bytes (read only), ks
 * n bytes of keystream, pub 28n + 4 bytes out (the 4 spare bytes are scratch), prv 4n
 * bytes out. flush: (dst, src) pairs copied meanwhile, around the caches; none of
 * them may overlap pub or prv. */
#define SPLIT_STEP 64 /* units between two pieces of the flush: 2 KiB read, ~2 KiB written */

static PyObject *split(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"src", "ks", "pub", "prv", "n", "kernel", "flush", NULL};
    Py_buffer src, ks, pub, prv;
    Py_ssize_t n;
    const char *kname = NULL;
    PyObject *flo = NULL;
    pairs_t fl = {.count = 0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*w*w*n|zO", names, &src, &ks, &pub, &prv,
                                     &n, &kname, &flo))
        return NULL;
    PyObject *ret = NULL;
    int kid = pick(kname);
    if (kid < 0 || get_pairs(flo, &fl) < 0)
        goto done;
    if (n < 0 || src.len < 32 * n || ks.len < n || pub.len < 28 * n + 4 || prv.len < 4 * n) {
        PyErr_SetString(PyExc_ValueError, "split: buffer too small");
        goto done;
    }
    split_fn f = KERNELS[kid].split;
    const uint8_t *s = src.buf, *k = ks.buf;
    uint8_t *p = pub.buf, *q = prv.buf;
    Py_BEGIN_ALLOW_THREADS
#ifdef SE2_X86
    if (fl.count) {
        flush_t plan;
        plan.count = fl.count;
        for (int i = 0; i < fl.count; i++) {
            plan.d[i] = fl.d[i].buf;
            plan.s[i] = fl.s[i].buf;
            plan.n[i] = (size_t)fl.s[i].len;
        }
        flush_plan(&plan, (size_t)(n + SPLIT_STEP - 1) / SPLIT_STEP);
        for (Py_ssize_t i = 0; i < n; i += SPLIT_STEP) {
            Py_ssize_t m = n - i < SPLIT_STEP ? n - i : SPLIT_STEP;
            f(s + 32 * i, k + i, p + 28 * i, q + 4 * i, m);
            flush_step(&plan, plan.per_step);
        }
        flush_step(&plan, SIZE_MAX);
        _mm_sfence();
    } else
#endif
    {
#ifndef SE2_X86
        for (int i = 0; i < fl.count; i++)
            memcpy(fl.d[i].buf, fl.s[i].buf, (size_t)fl.s[i].len);
#endif
        f(s, k, p, q, n);
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    release_pairs(&fl);
    PyBuffer_Release(&src);
    PyBuffer_Release(&ks);
    PyBuffer_Release(&pub);
    PyBuffer_Release(&prv);
    return ret;
}

/* merge(pub, prv, ks, out, n, kernel=None, stream=False, prefetch=None): the inverse;
 * pub 28n + 4 bytes (the last 4 unused), out 32n bytes. With stream, out is written
 * with non-temporal stores (units merged block by block into L1-resident scratch),
 * and the `prefetch` buffers are read into the cache meanwhile. */
#define MERGE_BLOCK 32 /* units: 1 KiB of scratch (measured best here; 64 was 8% slower) */

static PyObject *merge(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"pub", "prv", "ks", "out", "n", "kernel", "stream", "prefetch",
                            NULL};
    Py_buffer pub, prv, ks, out;
    Py_ssize_t n;
    const char *kname = NULL;
    int stream = 0;
    PyObject *pfo = NULL;
    bufs_t pfb = {.count = 0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*w*n|zpO", names, &pub, &prv, &ks, &out,
                                     &n, &kname, &stream, &pfo))
        return NULL;
    PyObject *ret = NULL;
    int kid = pick(kname);
    if (kid < 0 || get_bufs(pfo, &pfb) < 0)
        goto done;
    if (n < 0 || pub.len < 28 * n + 4 || prv.len < 4 * n || ks.len < n || out.len < 32 * n) {
        PyErr_SetString(PyExc_ValueError, "merge: buffer too small");
        goto done;
    }
    merge_fn f = KERNELS[kid].merge;
    const uint8_t *p = pub.buf, *q = prv.buf, *k = ks.buf;
    uint8_t *o = out.buf;
    Py_BEGIN_ALLOW_THREADS
#ifdef SE2_X86
    if (stream) {
        /* Units are merged block by block into `block` and leave it as whole aligned
         * lines of out; the bytes of a line not yet complete stay at its front. */
        uint8_t block[MERGE_BLOCK * 32 + 64] __attribute__((aligned(64)));
        size_t pending = 0;                                 /* bytes at the front */
        size_t lead = (size_t)(-(uintptr_t)o & 63u);        /* bytes up to a line */
        pf_t pf;
        pf_from(&pf, &pfb, (size_t)n * 32);
        for (Py_ssize_t i = 0; i < n; i += MERGE_BLOCK) {
            Py_ssize_t m = n - i < MERGE_BLOCK ? n - i : MERGE_BLOCK;
            f(p + 28 * i, q + 4 * i, k + i, block + pending, m);
            size_t have = pending + (size_t)m * 32, at = 0;
            if (lead) {
                at = lead < have ? lead : have;
                memcpy(o, block, at);
                o += at;
                lead -= at;
            }
            size_t whole = lead ? 0 : (have - at) & ~(size_t)63;
            NTCOPY(o, block + at, whole, &pf);
            o += whole;
            pending = have - at - whole;
            memmove(block, block + at + whole, pending);
        }
        memcpy(o, block, pending);
        pf_step(&pf, SIZE_MAX); /* whatever is left */
        _mm_sfence();
    } else
#endif
        f(p, q, k, o, n);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    release_bufs(&pfb);
    PyBuffer_Release(&pub);
    PyBuffer_Release(&prv);
    PyBuffer_Release(&ks);
    PyBuffer_Release(&out);
    return ret;
}

/* stream_copy(dst, src): copy src to the start of dst, with non-temporal stores where
 * the CPU has them (for a destination too large to stay cached). */
static PyObject *stream_copy(PyObject *self, PyObject *args) {
    Py_buffer dst, src;
    if (!PyArg_ParseTuple(args, "w*y*", &dst, &src))
        return NULL;
    PyObject *ret = NULL;
    if (dst.len < src.len) {
        PyErr_SetString(PyExc_ValueError, "stream_copy: destination too small");
        goto done;
    }
    uint8_t *d = dst.buf;
    const uint8_t *s = src.buf;
    size_t n = (size_t)src.len;
    Py_BEGIN_ALLOW_THREADS
#ifdef SE2_X86
    pf_t none = {.count = 0};
    stream_bytes(d, s, n, &none);
    _mm_sfence();
#else
    memcpy(d, s, n);
#endif
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return ret;
}

static PyObject *kernels(PyObject *self, PyObject *unused) {
    PyObject *t = PyList_New(0);
    for (int i = 0; t && i < NKERNELS; i++) {
        if (!KERNELS[i].ok)
            continue;
        PyObject *s = PyUnicode_FromString(KERNELS[i].name);
        if (!s || PyList_Append(t, s) < 0) {
            Py_XDECREF(s);
            Py_CLEAR(t);
        } else {
            Py_DECREF(s);
        }
    }
    return t;
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_VARARGS | METH_KEYWORDS,
     "split(src, ks, pub, prv, n, kernel=None, flush=None): se2 swap-order word split; "
     "flush: (dst, src) pairs copied around the caches meanwhile"},
    {"merge", (PyCFunction)(void (*)(void))merge, METH_VARARGS | METH_KEYWORDS,
     "merge(pub, prv, ks, out, n, kernel=None, stream=False, prefetch=None): inverse of "
     "split; stream writes out around the caches while prefetching the given buffers"},
    {"stream_copy", stream_copy, METH_VARARGS,
     "stream_copy(dst, src): copy src to the start of dst, around the caches"},
    {"kernels", kernels, METH_NOARGS,
     "kernels(): the kernels this CPU runs, slowest first; the last is the default"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_splitc", NULL, -1, methods};

PyMODINIT_FUNC PyInit__splitc(void) {
    detect();
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "KERNEL", KERNELS[BEST].name) < 0)
        Py_CLEAR(m);
    return m;
}
