/* tramontane.engine._kernels: the CPU kernels, called with raw tensor addresses
 * by tramontane/engine/cpu_kernels.py (which owns the tensors and checks their
 * shapes and dtypes). Each call releases the GIL while it computes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "attention.h"
#include "layer.h"
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

/* matmul(x, M, K, qs, d, m, N, y), m = 0 for Q8_0 */
static PyObject *py_matmul(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[8];
    if (read_ints(args, nargs, 8, a)) return NULL;
    const qweight w = {.N = (int)a[6], .K = (int)a[2], .qs = (const uint8_t *)a[3], .d = (const uint16_t *)a[4],
                       .m = (const uint16_t *)a[5]};
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = matmul((const float *)a[0], (int)a[1], &w, (float *)a[7]);
    Py_END_ALLOW_THREADS;
    return done(status);
}

/* The step's attention from 14 integers and a float, in this order:
 * H, KVH, D, cos, sin, k_cache, v_cache, new_slots, key_slots, context_lens, Lk, window, scale
 * (B, qkv and out are the caller's). */
static int read_attention(PyObject *const *args, decode_attention *step) {
    long long a[12];
    if (read_ints(args, 12, 12, a)) return -1;
    double scale = PyFloat_AsDouble(args[12]);
    if (scale == -1.0 && PyErr_Occurred()) return -1;
    *step = (decode_attention){
        .H = (int)a[0], .KVH = (int)a[1], .D = (int)a[2], .cos = (const float *)a[3], .sin = (const float *)a[4],
        .k_cache = (float *)a[5], .v_cache = (float *)a[6], .new_slots = (const int64_t *)a[7],
        .key_slots = (const int64_t *)a[8], .context_lens = (const int64_t *)a[9], .Lk = (int)a[10],
        .window = (int)a[11], .scale = (float)scale,
    };
    return 0;
}

static PyObject *finish(int status, int head_dim) {
    if (status == -2) return PyErr_Format(PyExc_ValueError, "head size %d is odd or too large", head_dim);
    return done(status);
}

/* attention_decode(qkv, B, out, <the step's attention, see read_attention>) */
static PyObject *py_attention_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 16) return PyErr_Format(PyExc_TypeError, "expected 16 arguments, got %zd", nargs);
    long long a[3];
    decode_attention step;
    if (read_ints(args, 3, 3, a) || read_attention(args + 3, &step)) return NULL;
    step.qkv = (const float *)a[0];
    step.B = (int)a[1];
    step.out = (float *)a[2];
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = attention_decode(&step);
    Py_END_ALLOW_THREADS;
    return finish(status, step.D);
}

/* attention_prefill(T, H, KVH, D, q, k_cache, v_cache, key_slots, token_seqs, token_lens, Lk, window,
 *                   scale, out); see attention.h */
static PyObject *py_attention_prefill(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 14) return PyErr_Format(PyExc_TypeError, "expected 14 arguments, got %zd", nargs);
    long long a[12];
    if (read_ints(args, 12, 12, a)) return NULL;
    double scale = PyFloat_AsDouble(args[12]);
    long long out = PyLong_AsLongLong(args[13]);
    if (PyErr_Occurred()) return NULL;
    const prefill_attention step = {
        .T = (int)a[0], .H = (int)a[1], .KVH = (int)a[2], .D = (int)a[3], .q = (const float *)a[4],
        .k_cache = (const float *)a[5], .v_cache = (const float *)a[6], .key_slots = (const int64_t *)a[7],
        .token_seqs = (const int64_t *)a[8], .token_lens = (const int64_t *)a[9], .Lk = (int)a[10],
        .window = (int)a[11], .scale = (float)scale, .out = (float *)out,
    };
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = attention_prefill(&step);
    Py_END_ALLOW_THREADS;
    return done(status);
}

/* The weights of a dense layer from a tuple of 23 integers and a float:
 * hidden, intermediate, input_norm, post_attention_norm, then (qs, d, m, N, K) for
 * qkv, o, gate_up and down (m = 0 for Q8_0), then eps. */
static int read_layer(PyObject *spec, dense_layer *layer) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 25) {
        PyErr_SetString(PyExc_TypeError, "a layer is a tuple of 25 numbers");
        return -1;
    }
    long long a[24];
    if (read_ints(&PyTuple_GET_ITEM(spec, 0), 24, 24, a)) return -1;
    double eps = PyFloat_AsDouble(PyTuple_GET_ITEM(spec, 24));
    if (eps == -1.0 && PyErr_Occurred()) return -1;
    qweight *weights[4] = {&layer->qkv, &layer->o, &layer->gate_up, &layer->down};
    layer->hidden = (int)a[0];
    layer->intermediate = (int)a[1];
    layer->input_norm = (const float *)a[2];
    layer->post_attention_norm = (const float *)a[3];
    for (int i = 0; i < 4; i++) {
        const long long *w = a + 4 + 5 * i;
        *weights[i] = (qweight){.qs = (const uint8_t *)w[0], .d = (const uint16_t *)w[1],
                                .m = (const uint16_t *)w[2], .N = (int)w[3], .K = (int)w[4]};
    }
    layer->eps = (float)eps;
    return 0;
}

/* dense_layer_decode(layer, x, B, <the step's attention, see read_attention>) */
static PyObject *py_dense_layer_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 16) return PyErr_Format(PyExc_TypeError, "expected 16 arguments, got %zd", nargs);
    dense_layer layer;
    long long a[2];
    decode_attention step;
    if (read_layer(args[0], &layer) || read_ints(args + 1, 2, 2, a) || read_attention(args + 3, &step)) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = dense_layer_decode(&layer, (float *)a[0], (int)a[1], &step);
    Py_END_ALLOW_THREADS;
    return finish(status, step.D);
}

static PyMethodDef methods[] = {
    {"start", start, METH_O, "Start the kernel threads (once); returns how many run."},
    {"detected_isa", detected_isa, METH_NOARGS, "The best instruction set of this CPU (0 none, 1 AVX2, 2 VNNI)."},
    {"isa", get_isa, METH_NOARGS, "The instruction set the kernels run with."},
    {"set_isa", set_isa, METH_O, "Run the kernels with at most this instruction set."},
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_FASTCALL, "y = x @ W^T, W in Q4_1 or Q8_0."},
    {"attention_decode", (PyCFunction)(void (*)(void))py_attention_decode, METH_FASTCALL,
     "RoPE, KV-cache write and attention of a decode step."},
    {"attention_prefill", (PyCFunction)(void (*)(void))py_attention_prefill, METH_FASTCALL,
     "Attention of query tokens whose keys are in the cache, each on its own."},
    {"dense_layer_decode", (PyCFunction)(void (*)(void))py_dense_layer_decode, METH_FASTCALL,
     "A dense decoder layer's decode step, in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_kernels", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
