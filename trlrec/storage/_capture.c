/* Native step capture: find, check and copy a step's leaves into a staging row.
 *
 * The writer's per-step path in Python calls torch's copy once per leaf; inside
 * TorchRL's step loop each of those dispatches costs ~1-1.5 us, most of a small
 * step's recording cost. Here one call looks the leaves up in the step's top-level
 * dicts, checks each is a contiguous CPU tensor of the schema's dtype and shape, and
 * memcpy's its bytes into the row's preallocated destination (exact: raw bytes).
 *
 * Anything else (a missing key, a mismatch, another device, a non-contiguous view,
 * an error from an attribute) returns -1 and the writer takes its Python path, which
 * copies with torch or raises the error that names the key. Only the CPython C API
 * is used (no torch headers): the tensor's dtype, shape, is_cpu, is_contiguous() and
 * data_ptr() are read through its Python attributes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *s_dtype, *s_shape, *s_is_cpu, *s_is_contiguous, *s_data_ptr;

typedef struct {
    PyObject_HEAD
    PyTypeObject *tensor_type; /* torch.Tensor */
    Py_ssize_t n;              /* leaves a step has */
    Py_ssize_t rows;           /* staging rows */
    PyObject **names;          /* n top-level keys (str) */
    char *sides;               /* n: 0 root, 1 "next" */
    PyObject **dtypes;         /* n torch.dtype */
    PyObject **shapes;         /* n torch.Size */
    Py_ssize_t *nbytes;        /* n */
    char **dst;                /* rows * n destination addresses */
    Py_ssize_t *done;          /* done-flag leaves (bool) */
    Py_ssize_t ndone;
    PyObject *keepalive;       /* the staging buffers the addresses point into */
} Plan;

static void Plan_dealloc(Plan *self) {
    for (Py_ssize_t j = 0; j < self->n; j++) {
        if (self->names) Py_XDECREF(self->names[j]);
        if (self->dtypes) Py_XDECREF(self->dtypes[j]);
        if (self->shapes) Py_XDECREF(self->shapes[j]);
    }
    PyMem_Free(self->names);
    PyMem_Free(self->sides);
    PyMem_Free(self->dtypes);
    PyMem_Free(self->shapes);
    PyMem_Free(self->nbytes);
    PyMem_Free(self->dst);
    PyMem_Free(self->done);
    Py_XDECREF(self->tensor_type);
    Py_XDECREF(self->keepalive);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Plan(tensor_type, names, sides, dtypes, shapes, nbytes, dst_rows, done, keepalive) */
static int Plan_init(Plan *self, PyObject *args, PyObject *kwds) {
    PyObject *tensor_type, *names, *sides, *dtypes, *shapes, *nbytes, *dst_rows, *done, *keep;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!O", &PyType_Type, &tensor_type,
                          &PyList_Type, &names, &PyList_Type, &sides, &PyList_Type, &dtypes,
                          &PyList_Type, &shapes, &PyList_Type, &nbytes, &PyList_Type,
                          &dst_rows, &PyList_Type, &done, &keep))
        return -1;
    if (self->names) {
        PyErr_SetString(PyExc_TypeError, "a capture plan is initialised once");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(names), rows = PyList_GET_SIZE(dst_rows);
    if (PyList_GET_SIZE(sides) != n || PyList_GET_SIZE(dtypes) != n ||
        PyList_GET_SIZE(shapes) != n || PyList_GET_SIZE(nbytes) != n) {
        PyErr_SetString(PyExc_ValueError, "names, sides, dtypes, shapes and nbytes differ in length");
        return -1;
    }
    self->n = n;
    self->rows = rows;
    self->ndone = PyList_GET_SIZE(done);
    self->names = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    self->sides = PyMem_Calloc(n ? n : 1, 1);
    self->dtypes = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    self->shapes = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    self->nbytes = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));
    self->dst = PyMem_Calloc(rows * n ? rows * n : 1, sizeof(char *));
    self->done = PyMem_Calloc(self->ndone ? self->ndone : 1, sizeof(Py_ssize_t));
    if (!self->names || !self->sides || !self->dtypes || !self->shapes || !self->nbytes ||
        !self->dst || !self->done) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(tensor_type);
    self->tensor_type = (PyTypeObject *)tensor_type;
    Py_INCREF(keep);
    self->keepalive = keep;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *name = PyList_GET_ITEM(names, j);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "names must be str");
            return -1;
        }
        Py_INCREF(name);
        self->names[j] = name;
        PyObject *d = PyList_GET_ITEM(dtypes, j), *s = PyList_GET_ITEM(shapes, j);
        Py_INCREF(d);
        self->dtypes[j] = d;
        Py_INCREF(s);
        self->shapes[j] = s;
        long side = PyLong_AsLong(PyList_GET_ITEM(sides, j));
        Py_ssize_t nb = PyLong_AsSsize_t(PyList_GET_ITEM(nbytes, j));
        if (PyErr_Occurred()) return -1;
        self->sides[j] = side ? 1 : 0;
        self->nbytes[j] = nb;
    }
    for (Py_ssize_t i = 0; i < rows; i++) {
        PyObject *row = PyList_GET_ITEM(dst_rows, i);
        if (!PyList_Check(row) || PyList_GET_SIZE(row) != n) {
            PyErr_SetString(PyExc_ValueError, "each destination row has one address per leaf");
            return -1;
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            self->dst[i * n + j] = PyLong_AsVoidPtr(PyList_GET_ITEM(row, j));
            if (PyErr_Occurred()) return -1;
        }
    }
    for (Py_ssize_t k = 0; k < self->ndone; k++) {
        Py_ssize_t j = PyLong_AsSsize_t(PyList_GET_ITEM(done, k));
        if (PyErr_Occurred()) return -1;
        if (j < 0 || j >= n) {
            PyErr_SetString(PyExc_ValueError, "a done slot is out of range");
            return -1;
        }
        self->done[k] = j;
    }
    return 0;
}

/* Whether t is a contiguous CPU tensor of the dtype and shape; its data pointer in *ptr.
 * 0: not (or an attribute raised: cleared, the Python path will say what is wrong). */
static int check_leaf(Plan *self, PyObject *t, Py_ssize_t j, void **ptr) {
    if (!PyObject_TypeCheck(t, self->tensor_type)) return 0;
    PyObject *v = PyObject_GetAttr(t, s_dtype);
    if (!v) goto fail;
    int ok = v == self->dtypes[j];
    Py_DECREF(v);
    if (!ok) return 0;
    v = PyObject_GetAttr(t, s_shape);
    if (!v) goto fail;
    ok = PyObject_RichCompareBool(v, self->shapes[j], Py_EQ);
    Py_DECREF(v);
    if (ok != 1) goto maybe_fail;
    v = PyObject_GetAttr(t, s_is_cpu);
    if (!v) goto fail;
    ok = v == Py_True;
    Py_DECREF(v);
    if (!ok) return 0;
    v = PyObject_CallMethodNoArgs(t, s_is_contiguous);
    if (!v) goto fail;
    ok = v == Py_True;
    Py_DECREF(v);
    if (!ok) return 0;
    v = PyObject_CallMethodNoArgs(t, s_data_ptr);
    if (!v) goto fail;
    *ptr = PyLong_AsVoidPtr(v);
    Py_DECREF(v);
    if (PyErr_Occurred()) goto fail;
    return 1;
maybe_fail:
    if (ok == 0) return 0;
fail:
    PyErr_Clear();
    return 0;
}

/* plan.step(root_dict, next_dict, row) -> 1 if a done flag is set, 0 if not, -1 to fall back */
static PyObject *Plan_step(Plan *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "step(root_dict, next_dict, row)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[2]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= self->rows) {
        PyErr_Format(PyExc_IndexError, "row %zd out of range [0, %zd)", i, self->rows);
        return NULL;
    }
    char **dst = self->dst + i * self->n;
    for (Py_ssize_t j = 0; j < self->n; j++) {
        PyObject *t = PyDict_GetItemWithError(args[self->sides[j]], self->names[j]);
        void *src = NULL;
        if (!t) {
            PyErr_Clear();
            return PyLong_FromLong(-1);
        }
        if (!check_leaf(self, t, j, &src)) return PyLong_FromLong(-1);
        if (self->nbytes[j] > 0) memcpy(dst[j], src, (size_t)self->nbytes[j]);
    }
    for (Py_ssize_t k = 0; k < self->ndone; k++) {
        Py_ssize_t j = self->done[k];
        const char *p = dst[j];
        for (Py_ssize_t b = 0; b < self->nbytes[j]; b++)
            if (p[b]) return PyLong_FromLong(1);
    }
    return PyLong_FromLong(0);
}

static PyMethodDef Plan_methods[] = {
    {"step", (PyCFunction)(void (*)(void))Plan_step, METH_FASTCALL,
     "step(root_dict, next_dict, row) -> 1 done, 0 not done, -1 fall back to Python"},
    {NULL}};

static PyTypeObject PlanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trlrec.storage._capture.Plan",
    .tp_basicsize = sizeof(Plan),
    .tp_dealloc = (destructor)Plan_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A staging plan: where each leaf of a step goes, and how it is checked.",
    .tp_methods = Plan_methods,
    .tp_init = (initproc)Plan_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef capture_module = {
    PyModuleDef_HEAD_INIT, "_capture", "Native step capture for trlrec's writer.", -1, NULL};

PyMODINIT_FUNC PyInit__capture(void) {
    s_dtype = PyUnicode_InternFromString("dtype");
    s_shape = PyUnicode_InternFromString("shape");
    s_is_cpu = PyUnicode_InternFromString("is_cpu");
    s_is_contiguous = PyUnicode_InternFromString("is_contiguous");
    s_data_ptr = PyUnicode_InternFromString("data_ptr");
    if (!s_dtype || !s_shape || !s_is_cpu || !s_is_contiguous || !s_data_ptr) return NULL;
    if (PyType_Ready(&PlanType) < 0) return NULL;
    PyObject *m = PyModule_Create(&capture_module);
    if (!m) return NULL;
    Py_INCREF(&PlanType);
    if (PyModule_AddObject(m, "Plan", (PyObject *)&PlanType) < 0) {
        Py_DECREF(&PlanType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
