/* tramontane.engine._kernels: the CPU kernels, called with raw tensor addresses
 * by tramontane/engine/cpu_kernels.py (which owns the tensors and checks their
 * shapes and dtypes). Each call releases the GIL while it computes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "attention.h"
#include "matmul.h"
#include "pool.h"

static int started;

static PyObject *start(PyObject *self, PyObject *arg) {
    (void)self;
    long threads = PyLong_AsLong(arg);
    if (threads == -1 && PyErr_Occurred()) return NULL;
    if (!started) {
        int err = pool_start((int)threads);
        if (err) return PyErr_Format(PyExc_OSError, "cannot start kernel threads (error %d)", err);
        started = 1;
    }
    return PyLong_FromLong(pool_threads());
}

static PyObject *detected_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(matmul_detect_isa());
}

static PyObject *get_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(matmul_isa());
}

static PyObject *set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    long isa = PyLong_AsLong(arg);
    if (isa == -1 && PyErr_Occurred()) return NULL;
    matmul_set_isa((enum isa)isa);
    return PyLong_FromLong(matmul_isa());
}

/* Reads `count` integer arguments (addresses and sizes) into `out`. */
static int read_ints(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t count, long long *out) {
    if (nargs != count) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", count, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        out[i] = PyLong_AsLongLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

static PyObject *done(int status) {
    if (status != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* matmul_q4_1(x, M, K, qs, d, m, N, y) */
static PyObject *py_matmul_q4_1(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[8];
    if (read_ints(args, nargs, 8, a)) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = matmul_q4_1((const float *)a[0], (int)a[1], (int)a[2], (const uint8_t *)a[3], (const uint16_t *)a[4],
                         (const uint16_t *)a[5], (int)a[6], (float *)a[7]);
    Py_END_ALLOW_THREADS;
    return done(status);
}

/* matmul_q8_0(x, M, K, qs, d, N, y) */
static PyObject *py_matmul_q8_0(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[7];
    if (read_ints(args, nargs, 7, a)) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = matmul_q8_0((const float *)a[0], (int)a[1], (int)a[2], (const int8_t *)a[3], (const uint16_t *)a[4],
                         (int)a[5], (float *)a[6]);
    Py_END_ALLOW_THREADS;
    return done(status);
}

/* attention_decode(B, H, KVH, D, qkv, cos, sin, k_cache, v_cache, new_slots, key_slots, context_lens,
 *                  Lk, window, scale, out); see attention.h */
static PyObject *py_attention_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 16) return PyErr_Format(PyExc_TypeError, "expected 16 arguments, got %zd", nargs);
    long long a[14];
    if (read_ints(args, 14, 14, a)) return NULL;
    double scale = PyFloat_AsDouble(args[14]);
    long long out = PyLong_AsLongLong(args[15]);
    if (PyErr_Occurred()) return NULL;
    decode_attention step = {
        .B = (int)a[0], .H = (int)a[1], .KVH = (int)a[2], .D = (int)a[3],
        .qkv = (const float *)a[4], .cos = (const float *)a[5], .sin = (const float *)a[6],
        .k_cache = (float *)a[7], .v_cache = (float *)a[8], .new_slots = (const int64_t *)a[9],
        .key_slots = (const int64_t *)a[10], .context_lens = (const int64_t *)a[11], .Lk = (int)a[12],
        .window = (int)a[13],
        .scale = (float)scale, .out = (float *)out,
    };
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = attention_decode(&step);
    Py_END_ALLOW_THREADS;
    if (status == -2) return PyErr_Format(PyExc_ValueError, "head size %d is odd or too large", step.D);
    return done(status);
}

static PyMethodDef methods[] = {
    {"start", start, METH_O, "Start the kernel threads (once); returns how many run."},
    {"detected_isa", detected_isa, METH_NOARGS, "The best instruction set of this CPU (0 none, 1 AVX2, 2 VNNI)."},
    {"isa", get_isa, METH_NOARGS, "The instruction set the kernels run with."},
    {"set_isa", set_isa, METH_O, "Run the kernels with at most this instruction set."},
    {"matmul_q4_1", (PyCFunction)(void (*)(void))py_matmul_q4_1, METH_FASTCALL, "y = x @ W^T, W in Q4_1."},
    {"matmul_q8_0", (PyCFunction)(void (*)(void))py_matmul_q8_0, METH_FASTCALL, "y = x @ W^T, W in Q8_0."},
    {"attention_decode", (PyCFunction)(void (*)(void))py_attention_decode, METH_FASTCALL,
     "RoPE, KV-cache write and attention of a decode step."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_kernels", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
