/*
 * Fused word split / merge for se2 (the "swap" order of docs/FORMAT.md section 2.2).
 *
 * The numpy kernels in split.py need five passes over each chunk (copy in, gather,
 * scatter, pack, index arithmetic); this does one, reading each 32-byte unit once
 * and writing its 28 public bytes and 4 private bytes. Pure: buffers in, buffers
 * out, no allocation; the GIL is released while it runs. Optional: if it is not
 * built, split.py's numpy kernels are used and give the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* split(src, ks, pub, prv, n): src 32n bytes (read only), ks n bytes of keystream,
 * pub 28n + 4 bytes out (the 4 spare bytes are scratch: each unit is stored as one
 * 32-byte move whose last 4 bytes the next unit overwrites), prv 4n bytes out. */
static PyObject *split(PyObject *self, PyObject *args) {
    Py_buffer src, ks, pub, prv;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*w*w*n", &src, &ks, &pub, &prv, &n))
        return NULL;
    PyObject *ret = NULL;
    if (n < 0 || src.len < 32 * n || ks.len < n || pub.len < 28 * n + 4 || prv.len < 4 * n) {
        PyErr_SetString(PyExc_ValueError, "split: buffer too small");
        goto done;
    }
    const uint8_t *s = src.buf;
    const uint8_t *k = ks.buf;
    uint8_t *p = pub.buf;
    uint8_t *q = prv.buf;
    Py_BEGIN_ALLOW_THREADS
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
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&ks);
    PyBuffer_Release(&pub);
    PyBuffer_Release(&prv);
    return ret;
}

/* merge(pub, prv, ks, out, n): the inverse; pub 28n + 4 bytes (read as 32-byte
 * moves), out 32n bytes. */
static PyObject *merge(PyObject *self, PyObject *args) {
    Py_buffer pub, prv, ks, out;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*y*w*n", &pub, &prv, &ks, &out, &n))
        return NULL;
    PyObject *ret = NULL;
    if (n < 0 || pub.len < 28 * n + 4 || prv.len < 4 * n || ks.len < n || out.len < 32 * n) {
        PyErr_SetString(PyExc_ValueError, "merge: buffer too small");
        goto done;
    }
    const uint8_t *p = pub.buf;
    const uint8_t *q = prv.buf;
    const uint8_t *k = ks.buf;
    uint8_t *o = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *pi = p + 28 * i;
        uint8_t *u = o + 32 * i;
        unsigned j = k[i] & 7u;
        unsigned last = j >> 2 & j >> 1 & j & 1u;
        uint32_t w7;
        memcpy(&w7, pi + 4 * (j - last), 4);   /* slot j held word 7 (unless j == 7) */
        memcpy(u, pi, 32);
        memcpy(u + 28, &w7, 4);
        memcpy(u + 4 * j, q + 4 * i, 4);      /* for j == 7 this overwrites word 7 */
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&pub);
    PyBuffer_Release(&prv);
    PyBuffer_Release(&ks);
    PyBuffer_Release(&out);
    return ret;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS, "split(src, ks, pub, prv, n): se2 swap-order word split"},
    {"merge", merge, METH_VARARGS, "merge(pub, prv, ks, out, n): inverse of split"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_splitc", NULL, -1, methods};

PyMODINIT_FUNC PyInit__splitc(void) { return PyModule_Create(&module); }
