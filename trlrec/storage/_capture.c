/* Native step capture: find, check and copy a step's leaves into a staging row.
 *
 * The writer's per-step path in Python calls torch's copy once per leaf; inside
 * TorchRL's step loop each of those dispatches costs ~1-1.5 us, most of a small
 * step's recording cost. Here one call looks the leaves up in the step's top-level
 * dicts, checks each is a contiguous CPU tensor of the schema's dtype and shape, and
 * memcpy's its bytes into the row's preallocated destination (exact: raw bytes).
 *
 * A nested key (("collector", "traj_ids"), which TorchRL's collectors put in every step)
 * is found through its sub-TensorDicts: each nested prefix of the schema is resolved once a
 * step, from its parent's dict, and must be exactly a TensorDict (append also compares its
 * entry count, as it does the top levels').
 *
 * A step whose root states are the very tensors the previous step gave as its "next"
 * states, unmodified since (same objects, same version counters), is aliased: its root
 * states are not copied (the writer then neither compares them), as the Python path
 * does for big states. Root-state slots come first; next_state[k] is the "next" slot
 * of root state k.
 *
 * Anything else (a missing key, a mismatch, another device, a non-contiguous view,
 * an error from an attribute) returns -1 and the writer takes its Python path, which
 * copies with torch or raises the error that names the key. Only the CPython C API
 * is used (no torch headers): the tensor's dtype, shape, is_cpu, is_contiguous(), is_neg()
 * and data_ptr() are read through its Python attributes (their descriptors, found once).
 * Frames (leaves of >= 4 KiB) are copied with non-temporal stores on x86-64.
 *
 * The writer's step in one call (Plan.append, once Plan.bind gave it the TensorDict type
 * and the staging buffers' size): the checks the Python path makes (two TensorDicts, their
 * key counts), the copy into the current buffer's next row, and the step counted for the
 * commit clock. The plan owns the counters in its struct (the staged steps, the steps
 * counted since the clock last took them, when the last one was): Python reads them
 * through getters. The commit rule is not here: the clock (commit_clock.py) hands the
 * plan a budget of steps and a deadline (Plan.arm), and append only counts down and
 * compares; a step that ends an episode, fills the buffer, spends the budget or passes
 * the deadline returns to Python, which ticks the clock and writes or commits.
 *
 * The idle committer (another thread) must never write a half-staged step: append marks
 * the plan busy while it runs (the GIL may pass to another thread if a leaf's attribute
 * runs Python code), and Plan.hold, which the committer takes before it writes, fails
 * while the plan is busy; a held or blocked plan's append returns -1 and the step takes
 * the writer's locked Python path.
 *
 * Measured in the step loop (benchmarks/bench_recorder.py's TrivialEnv, 84x84x3): the
 * direct descriptor calls and the non-temporal copy took trlrec's ratio against a no-op
 * transform from ~1.20 to ~1.165 (isolated plan.step: 7.9 -> 5.7 us for 10 leaves).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Leaves of at least this many bytes are copied with non-temporal stores: a frame is
 * not read again on this core (the I/O thread writes it out), so it bypasses the cache
 * instead of evicting the step loop's working set (and skips the read-for-ownership). */
#define STREAM_BYTES 4096

static void copy_leaf(char *dst, const char *src, size_t n) {
#if defined(__SSE2__)
    if (n >= STREAM_BYTES) {
        size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
        memcpy(dst, src, head);
        dst += head, src += head, n -= head;
        for (; n >= 64; n -= 64, dst += 64, src += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)src);
            __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
            _mm_stream_si128((__m128i *)dst, a);
            _mm_stream_si128((__m128i *)(dst + 16), b);
            _mm_stream_si128((__m128i *)(dst + 32), c);
            _mm_stream_si128((__m128i *)(dst + 48), d);
        }
        memcpy(dst, src, n);
        _mm_sfence(); /* the stores are visible before the row is handed over */
        return;
    }
#endif
    memcpy(dst, src, n);
}

static PyObject *s_tensordict, *s_next;
static PyObject *s_dtype, *s_shape, *s_is_cpu, *s_is_contiguous, *s_data_ptr, *s_version, *s_is_neg;

/* The tensor type's attributes, looked up once: for a leaf of exactly that type they are
 * called directly (the descriptor's getter, or the method with the tensor as self),
 * which skips the attribute lookup of each access; a subclass goes the generic way. */
enum { A_DTYPE, A_SHAPE, A_IS_CPU, A_IS_CONTIGUOUS, A_DATA_PTR, A_VERSION, A_IS_NEG, A_COUNT };

typedef struct {
    PyObject_HEAD
    PyTypeObject *tensor_type; /* torch.Tensor */
    Py_ssize_t n;              /* leaves a step has */
    Py_ssize_t rows;           /* staging rows */
    PyObject **names;          /* n: each leaf's last key (str) */
    char *sides;               /* n: 0 root, 1 "next" */
    Py_ssize_t *parents;       /* n: the nested prefix holding the leaf, -1 the side's top */
    Py_ssize_t nnest;          /* nested prefixes (sub-TensorDicts) of the schema's keys */
    PyObject **nest_names;     /* nnest: the prefix's last key (str) */
    char *nest_sides;          /* nnest: 0 root, 1 "next" */
    Py_ssize_t *nest_parents;  /* nnest: its parent prefix (an earlier one), -1 the top */
    Py_ssize_t *nest_counts;   /* nnest: the entries its sub-TensorDict holds */
    PyObject **subs;           /* nnest: this step's sub-dicts (owned, during a step) */
    PyObject **dtypes;         /* n torch.dtype */
    PyObject **shapes;         /* n torch.Size */
    Py_ssize_t *nbytes;        /* n */
    char **dst;                /* rows * n destination addresses */
    Py_ssize_t *done;          /* done-flag leaves (bool) */
    Py_ssize_t ndone;
    Py_ssize_t nstate;         /* root-state slots (the first ones) */
    Py_ssize_t *next_state;    /* nstate: the "next" slot of each root state */
    PyObject **prev;           /* nstate: the previous step's next states (or NULL) */
    long long *prev_version;   /* nstate: their version counters then */
    PyObject **seen;           /* n: this step's leaves (borrowed, during step) */
    char **alias_flag;         /* rows: where the row's "aliased" byte goes */
    Py_buffer *alias_bufs;     /* the buffers alias_flag points into (held: not resized) */
    Py_ssize_t nalias;
    PyObject *keepalive;       /* the staging buffers the addresses point into */
    PyObject *attrs[A_COUNT];  /* tensor_type's descriptors (see A_DTYPE) */
    /* the writer's step (append), set by bind */
    PyTypeObject *td_type;     /* tensordict.TensorDict (NULL: append falls back) */
    Py_ssize_t root_top;       /* a step's top-level root entries (its "next" aside) */
    Py_ssize_t next_top;       /* and "next" entries */
    Py_ssize_t capacity;       /* rows per staging buffer */
    Py_ssize_t base;           /* the current buffer's first row */
    Py_ssize_t count;          /* steps staged in the current buffer */
    long long pending;         /* steps counted here since the clock took them (take) */
    long long budget;          /* the clock must see the step that makes pending this */
    double deadline;           /* ... or the first step at or after this (monotonic s) */
    double ticked;             /* when the last step was counted here (monotonic s) */
    char blocked;              /* the writer's: its next step takes the Python path */
    char held;                 /* the idle committer's (hold/release) */
    char busy;                 /* append is running */
} Plan;

static PyObject *attr_name(int a) {
    PyObject *names[A_COUNT] = {s_dtype,    s_shape,   s_is_cpu, s_is_contiguous,
                                s_data_ptr, s_version, s_is_neg};
    return names[a];
}

/* t.<attribute a> (a property) or t.<attribute a>() (a method); new reference or NULL. */
static PyObject *tensor_attr(Plan *self, PyObject *t, int a) {
    PyObject *d = self->attrs[a];
    int method = a == A_IS_CONTIGUOUS || a == A_DATA_PTR || a == A_IS_NEG;
    if (Py_IS_TYPE(t, self->tensor_type) && d) {
        if (method) return PyObject_Vectorcall(d, &t, 1, NULL);
        descrgetfunc get = Py_TYPE(d)->tp_descr_get;
        if (get) return get(d, t, (PyObject *)self->tensor_type);
    }
    return method ? PyObject_CallMethodNoArgs(t, attr_name(a)) : PyObject_GetAttr(t, attr_name(a));
}

static void forget(Plan *self) {
    if (!self->prev) return;
    for (Py_ssize_t k = 0; k < self->nstate; k++) Py_CLEAR(self->prev[k]);
}

static void Plan_dealloc(Plan *self) {
    forget(self);
    for (Py_ssize_t k = 0; k < self->nnest; k++) {
        if (self->nest_names) Py_XDECREF(self->nest_names[k]);
        if (self->subs) Py_XDECREF(self->subs[k]);
    }
    PyMem_Free(self->parents);
    PyMem_Free(self->nest_names);
    PyMem_Free(self->nest_sides);
    PyMem_Free(self->nest_parents);
    PyMem_Free(self->nest_counts);
    PyMem_Free(self->subs);
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
    PyMem_Free(self->next_state);
    PyMem_Free(self->prev);
    PyMem_Free(self->prev_version);
    PyMem_Free(self->seen);
    PyMem_Free(self->alias_flag);
    Py_XDECREF(self->tensor_type);
    Py_XDECREF(self->td_type);
    Py_XDECREF(self->keepalive);
    for (int a = 0; a < A_COUNT; a++) Py_XDECREF(self->attrs[a]);
    for (Py_ssize_t a = 0; a < self->nalias; a++) PyBuffer_Release(&self->alias_bufs[a]);
    PyMem_Free(self->alias_bufs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The nested prefixes: nested is a list of (side, parent, name, count), each parent an
 * earlier prefix of the same side or -1; parents gives each leaf's prefix (or -1). Both
 * may be NULL: no nested prefix, every leaf a top-level key. */
static int init_nested(Plan *self, PyObject *parents, PyObject *nested) {
    Py_ssize_t n = self->n, m = nested ? PyList_GET_SIZE(nested) : 0;
    if (parents && PyList_GET_SIZE(parents) != n) {
        PyErr_SetString(PyExc_ValueError, "one parent per leaf");
        return -1;
    }
    self->parents = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));
    self->nest_names = PyMem_Calloc(m ? m : 1, sizeof(PyObject *));
    self->nest_sides = PyMem_Calloc(m ? m : 1, 1);
    self->nest_parents = PyMem_Calloc(m ? m : 1, sizeof(Py_ssize_t));
    self->nest_counts = PyMem_Calloc(m ? m : 1, sizeof(Py_ssize_t));
    self->subs = PyMem_Calloc(m ? m : 1, sizeof(PyObject *));
    if (!self->parents || !self->nest_names || !self->nest_sides || !self->nest_parents ||
        !self->nest_counts || !self->subs) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < m; k++) {
        PyObject *t = PyList_GET_ITEM(nested, k);
        long side;
        Py_ssize_t parent, count;
        PyObject *name;
        if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "lnUn", &side, &parent, &name, &count))
            goto bad;
        if (parent < -1 || parent >= k || (parent >= 0 && self->nest_sides[parent] != (side != 0)))
            goto bad;
        Py_INCREF(name);
        self->nest_names[k] = name;
        self->nest_sides[k] = side ? 1 : 0;
        self->nest_parents[k] = parent;
        self->nest_counts[k] = count;
        self->nnest = k + 1;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_ssize_t parent = parents ? PyLong_AsSsize_t(PyList_GET_ITEM(parents, j)) : -1;
        if (PyErr_Occurred()) return -1;
        if (parent < -1 || parent >= m || (parent >= 0 && self->nest_sides[parent] != self->sides[j]))
            goto bad;
        self->parents[j] = parent;
    }
    return 0;
bad:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError,
                        "nested: (side, parent, name, count), each parent an earlier prefix of "
                        "its side; parents: a prefix of the leaf's side, or -1");
    return -1;
}

/* Plan(tensor_type, names, sides, dtypes, shapes, nbytes, dst_rows, done, next_state,
 *      alias_flags, keepalive[, parents, nested]): alias_flags is a list of bytearrays
 *      whose bytes, in order, are the rows' "aliased" flags (one per destination row);
 *      parents and nested as in init_nested (by default, every leaf a top-level key). */
static int Plan_init(Plan *self, PyObject *args, PyObject *kwds) {
    PyObject *tensor_type, *names, *sides, *dtypes, *shapes, *nbytes, *dst_rows, *done;
    PyObject *next_state, *alias_flags, *keep, *parents = NULL, *nested = NULL;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!O!O!O|O!O!", &PyType_Type, &tensor_type,
                          &PyList_Type, &names, &PyList_Type, &sides, &PyList_Type, &dtypes,
                          &PyList_Type, &shapes, &PyList_Type, &nbytes, &PyList_Type,
                          &dst_rows, &PyList_Type, &done, &PyList_Type, &next_state,
                          &PyList_Type, &alias_flags, &keep, &PyList_Type, &parents,
                          &PyList_Type, &nested))
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
    self->nstate = PyList_GET_SIZE(next_state);
    if (self->nstate > n) {
        PyErr_SetString(PyExc_ValueError, "more states than leaves");
        return -1;
    }
    Py_ssize_t ns = self->nstate ? self->nstate : 1;
    self->next_state = PyMem_Calloc(ns, sizeof(Py_ssize_t));
    self->prev = PyMem_Calloc(ns, sizeof(PyObject *));
    self->prev_version = PyMem_Calloc(ns, sizeof(long long));
    self->seen = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    self->alias_flag = PyMem_Calloc(rows ? rows : 1, sizeof(char *));
    if (!self->next_state || !self->prev || !self->prev_version || !self->seen ||
        !self->alias_flag) {
        PyErr_NoMemory();
        return -1;
    }
    self->names = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    self->sides = PyMem_Calloc(n ? n : 1, 1);
    self->dtypes = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    self->shapes = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    self->nbytes = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));
    self->dst = PyMem_Calloc(rows * n > 0 ? rows * n : 1, sizeof(char *));
    self->done = PyMem_Calloc(self->ndone ? self->ndone : 1, sizeof(Py_ssize_t));
    if (!self->names || !self->sides || !self->dtypes || !self->shapes || !self->nbytes ||
        !self->dst || !self->done) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(tensor_type);
    self->tensor_type = (PyTypeObject *)tensor_type;
    for (int a = 0; a < A_COUNT; a++) {
        self->attrs[a] = PyObject_GetAttr(tensor_type, attr_name(a));
        if (!self->attrs[a]) return -1;
    }
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
    if (init_nested(self, parents, nested) < 0) return -1;
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
    for (Py_ssize_t k = 0; k < self->nstate; k++) {
        Py_ssize_t j = PyLong_AsSsize_t(PyList_GET_ITEM(next_state, k));
        if (PyErr_Occurred()) return -1;
        if (j < self->nstate || j >= n || self->sides[j] != 1 || self->sides[k] != 0) {
            PyErr_SetString(PyExc_ValueError,
                            "a state's next slot must be a \"next\" slot after the root states");
            return -1;
        }
        self->next_state[k] = j;
    }
    Py_ssize_t nflags = PyList_GET_SIZE(alias_flags), r = 0;
    self->alias_bufs = PyMem_Calloc(nflags ? nflags : 1, sizeof(Py_buffer));
    if (!self->alias_bufs) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t a = 0; a < nflags; a++) {
        PyObject *flags = PyList_GET_ITEM(alias_flags, a);
        if (!PyByteArray_Check(flags)) {
            PyErr_SetString(PyExc_TypeError, "alias_flags must be bytearrays");
            return -1;
        }
        /* holding the buffer keeps the bytearray alive and stops it from being resized */
        if (PyObject_GetBuffer(flags, &self->alias_bufs[a], PyBUF_WRITABLE) < 0) return -1;
        self->nalias = a + 1;
        char *base = self->alias_bufs[a].buf;
        for (Py_ssize_t b = 0; b < self->alias_bufs[a].len && r < rows; b++)
            self->alias_flag[r++] = base + b;
    }
    if (r != rows) {
        PyErr_SetString(PyExc_ValueError, "alias_flags must hold one byte per destination row");
        return -1;
    }
    return 0;
}

/* Whether t is a contiguous CPU tensor of the dtype and shape; its data pointer in *ptr.
 * 0: not (or an attribute raised: cleared, the Python path will say what is wrong). */
static int check_leaf(Plan *self, PyObject *t, Py_ssize_t j, void **ptr) {
    if (!PyObject_TypeCheck(t, self->tensor_type)) return 0;
    PyObject *v = tensor_attr(self, t, A_DTYPE);
    if (!v) goto fail;
    int ok = v == self->dtypes[j];
    Py_DECREF(v);
    if (!ok) return 0;
    v = tensor_attr(self, t, A_SHAPE);
    if (!v) goto fail;
    ok = PyObject_RichCompareBool(v, self->shapes[j], Py_EQ);
    Py_DECREF(v);
    if (ok != 1) goto maybe_fail;
    v = tensor_attr(self, t, A_IS_CPU);
    if (!v) goto fail;
    ok = v == Py_True;
    Py_DECREF(v);
    if (!ok) return 0;
    v = tensor_attr(self, t, A_IS_CONTIGUOUS);
    if (!v) goto fail;
    ok = v == Py_True;
    Py_DECREF(v);
    if (!ok) return 0;
    /* a negative-bit view (z.conj().imag) holds the negated values' bytes negated: its
     * bytes are not its values, the Python path resolves it */
    v = tensor_attr(self, t, A_IS_NEG);
    if (!v) goto fail;
    ok = v == Py_False;
    Py_DECREF(v);
    if (!ok) return 0;
    v = tensor_attr(self, t, A_DATA_PTR);
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

/* The dict holding leaf j this step: its side's top dict, or its resolved sub-dict. */
static PyObject *leaf_dict(Plan *self, PyObject **sides, Py_ssize_t j) {
    Py_ssize_t p = self->parents[j];
    return p < 0 ? sides[(int)self->sides[j]] : self->subs[p];
}

/* Drop this step's sub-dicts. */
static void release_subs(Plan *self) {
    for (Py_ssize_t k = 0; k < self->nnest; k++) Py_CLEAR(self->subs[k]);
}

/* Resolve the nested prefixes' sub-dicts (each exactly a TensorDict's dict; with
 * check_counts, of the schema's entry count): 0, or -1 (released; nothing raised). */
static int resolve_subs(Plan *self, PyObject **sides, int check_counts) {
    for (Py_ssize_t k = 0; k < self->nnest; k++) {
        Py_ssize_t p = self->nest_parents[k];
        PyObject *parent = p < 0 ? sides[(int)self->nest_sides[k]] : self->subs[p];
        PyObject *td = PyDict_GetItemWithError(parent, self->nest_names[k]);
        PyObject *d = NULL;
        if (td && self->td_type && Py_IS_TYPE(td, self->td_type))
            d = PyObject_GetAttr(td, s_tensordict);
        if (!d || !PyDict_CheckExact(d) ||
            (check_counts && PyDict_GET_SIZE(d) != self->nest_counts[k])) {
            Py_XDECREF(d);
            PyErr_Clear();
            release_subs(self);
            return -1;
        }
        self->subs[k] = d;
    }
    return 0;
}

/* Whether this step's root states are the previous step's next states, unmodified. */
static int is_aliased(Plan *self, PyObject **sides) {
    for (Py_ssize_t k = 0; k < self->nstate; k++) {
        PyObject *prev = self->prev[k];
        if (!prev || PyDict_GetItemWithError(leaf_dict(self, sides, k), self->names[k]) != prev) {
            PyErr_Clear();
            return 0;
        }
        PyObject *v = tensor_attr(self, prev, A_VERSION);
        long long version = v ? PyLong_AsLongLong(v) : -1;
        Py_XDECREF(v);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (version != self->prev_version[k]) return 0;
    }
    return self->nstate > 0;
}

/* Remember this step's next states (the next step's root states, if unmodified). */
static void remember(Plan *self) {
    for (Py_ssize_t k = 0; k < self->nstate; k++) {
        PyObject *t = self->seen[self->next_state[k]];
        PyObject *v = tensor_attr(self, t, A_VERSION);
        long long version = v ? PyLong_AsLongLong(v) : -1;
        Py_XDECREF(v);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            forget(self);
            return;
        }
        Py_INCREF(t);
        Py_XSETREF(self->prev[k], t);
        self->prev_version[k] = version;
    }
}

/* Stage a step into row i with its sub-dicts resolved (see plan_step). */
static int stage_row(Plan *self, PyObject **sides, Py_ssize_t i, int may_alias) {
    int aliased = may_alias && is_aliased(self, sides);
    char **dst = self->dst + i * self->n;
    for (Py_ssize_t j = aliased ? self->nstate : 0; j < self->n; j++) {
        PyObject *t = PyDict_GetItemWithError(leaf_dict(self, sides, j), self->names[j]);
        void *src = NULL;
        if (!t || !check_leaf(self, t, j, &src)) {
            PyErr_Clear();
            forget(self);
            return -1;
        }
        self->seen[j] = t;
        if (self->nbytes[j] > 0) copy_leaf(dst[j], src, (size_t)self->nbytes[j]);
    }
    *self->alias_flag[i] = (char)aliased;
    for (Py_ssize_t k = 0; k < self->ndone; k++) {
        Py_ssize_t j = self->done[k];
        const char *p = dst[j];
        for (Py_ssize_t b = 0; b < self->nbytes[j]; b++)
            if (p[b]) {
                forget(self);
                return 1;
            }
    }
    remember(self);
    return 0;
}

/* Stage a step into row i (two dicts, 0 <= i < rows): 1 a done flag is set, 0 not, -1 fall
 * back (nothing raised). check_counts: compare the nested sub-TensorDicts' entry counts. */
static int plan_step(Plan *self, PyObject *root, PyObject *next, Py_ssize_t i, int may_alias,
                     int check_counts) {
    PyObject *sides[2] = {root, next};
    if (resolve_subs(self, sides, check_counts) < 0) {
        forget(self);
        return -1;
    }
    int r = stage_row(self, sides, i, may_alias);
    release_subs(self);
    return r;
}

/* plan.step(root_dict, next_dict, row, may_alias) -> 1 if a done flag is set, 0 if not,
 * -1 to fall back (also for None dicts: the previous step is then forgotten). */
static PyObject *Plan_step(Plan *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "step(root_dict, next_dict, row, may_alias)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[2]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= self->rows) {
        PyErr_Format(PyExc_IndexError, "row %zd out of range [0, %zd)", i, self->rows);
        return NULL;
    }
    if (!PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        forget(self);
        if (args[0] == Py_None || args[1] == Py_None) return PyLong_FromLong(-1);
        PyErr_SetString(PyExc_TypeError, "step takes two dicts (or None to fall back)");
        return NULL;
    }
    int may_alias = PyObject_IsTrue(args[3]);
    if (may_alias < 0) return NULL;
    return PyLong_FromLong(plan_step(self, args[0], args[1], i, may_alias, 0));
}

static PyObject *Plan_forget(Plan *self, PyObject *unused) {
    forget(self);
    Py_RETURN_NONE;
}


/* The monotonic clock of Python's time.monotonic(), in seconds. */
static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* plan.bind(tensordict_type, root_top, next_top, capacity): append takes steps. */
static PyObject *Plan_bind(Plan *self, PyObject *args) {
    PyObject *td_type;
    Py_ssize_t root_top, next_top, capacity;
    if (!PyArg_ParseTuple(args, "O!nnn", &PyType_Type, &td_type, &root_top, &next_top, &capacity))
        return NULL;
    if (capacity < 1 || self->rows % capacity || root_top < 0 || next_top < 0) {
        PyErr_Format(PyExc_ValueError, "capacity %zd must divide the %zd rows", capacity,
                     self->rows);
        return NULL;
    }
    Py_INCREF(td_type);
    Py_XSETREF(self->td_type, (PyTypeObject *)td_type);
    self->root_top = root_top;
    self->next_top = next_top;
    self->capacity = capacity;
    self->budget = 1; /* the clock sees the first step, until it arms the plan */
    self->deadline = 0.0;
    Py_RETURN_NONE;
}

/* The step in the current buffer's next row, counted: 0 nothing more to do, 1 a done flag
 * is set, 2 the buffer is full or the clock must see the step; -1 nothing was staged. */
static int plan_append(Plan *self, PyObject *root, PyObject *next) {
    if (!Py_IS_TYPE(root, self->td_type) || !Py_IS_TYPE(next, self->td_type)) return -1;
    int r = -1;
    PyObject *rd = PyObject_GetAttr(root, s_tensordict);
    PyObject *nd = rd ? PyObject_GetAttr(next, s_tensordict) : NULL;
    if (!nd || !PyDict_CheckExact(rd) || !PyDict_CheckExact(nd)) goto out;
    /* the Python path's check_step_keys: an extra key makes a count differ */
    int has_next = PyDict_Contains(rd, s_next);
    if (has_next < 0 || PyDict_GET_SIZE(rd) != self->root_top + has_next ||
        PyDict_GET_SIZE(nd) != self->next_top)
        goto out;
    int done = plan_step(self, rd, nd, self->base + self->count, 1, 1);
    if (done < 0) goto out;
    self->count++;
    self->pending++;
    double now = self->ticked = monotonic();
    r = done ? 1
        : (self->count >= self->capacity || self->pending >= self->budget ||
           now >= self->deadline)
            ? 2
            : 0;
out:
    PyErr_Clear(); /* the Python path raises what is wrong */
    Py_XDECREF(rd);
    Py_XDECREF(nd);
    return r;
}

/* plan.append(root, next) -> 0, 1, 2 (staged and counted) or -1 (the Python path's). */
static PyObject *Plan_append(Plan *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "append(root, next)");
        return NULL;
    }
    if (!self->td_type || self->blocked || self->held || self->busy ||
        self->count >= self->capacity)
        return PyLong_FromLong(-1);
    self->busy = 1;
    int r = plan_append(self, args[0], args[1]);
    self->busy = 0;
    return PyLong_FromLong(r);
}

/* plan.take() -> the steps counted since the last take; the count starts again. */
static PyObject *Plan_take(Plan *self, PyObject *unused) {
    long long n = self->pending;
    self->pending = 0;
    return PyLong_FromLongLong(n);
}

/* plan.arm(budget, deadline): the clock must see the step that makes the count budget,
 * and the first step at or after deadline (monotonic seconds). */
static PyObject *Plan_arm(Plan *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "arm(budget, deadline)");
        return NULL;
    }
    long long budget = PyLong_AsLongLong(args[0]);
    if (budget == -1 && PyErr_Occurred()) return NULL;
    double deadline = PyFloat_AsDouble(args[1]);
    if (deadline == -1.0 && PyErr_Occurred()) return NULL;
    self->budget = budget;
    self->deadline = deadline;
    Py_RETURN_NONE;
}

/* plan.hold() -> True: append now falls back, until release(); False: a step is being
 * staged (by another thread): try again later. */
static PyObject *Plan_hold(Plan *self, PyObject *unused) {
    if (self->busy) Py_RETURN_FALSE;
    self->held = 1;
    Py_RETURN_TRUE;
}

static PyObject *Plan_release(Plan *self, PyObject *unused) {
    self->held = 0;
    Py_RETURN_NONE;
}

static PyMethodDef Plan_methods[] = {
    {"step", (PyCFunction)(void (*)(void))Plan_step, METH_FASTCALL,
     "step(root_dict, next_dict, row, may_alias) -> 1 done, 0 not done, -1 fall back"},
    {"forget", (PyCFunction)Plan_forget, METH_NOARGS,
     "forget the previous step: the next one is not aliased"},
    {"bind", (PyCFunction)Plan_bind, METH_VARARGS,
     "bind(tensordict_type, root_top, next_top, capacity): append takes steps"},
    {"append", (PyCFunction)(void (*)(void))Plan_append, METH_FASTCALL,
     "append(root, next) -> 0 staged, 1 staged and done, 2 staged and Python must act, "
     "-1 fall back"},
    {"take", (PyCFunction)Plan_take, METH_NOARGS, "the steps counted since; restart the count"},
    {"arm", (PyCFunction)(void (*)(void))Plan_arm, METH_FASTCALL,
     "arm(budget, deadline): when the clock must see a step"},
    {"hold", (PyCFunction)Plan_hold, METH_NOARGS,
     "keep append out (True), or False while a step is being staged"},
    {"release", (PyCFunction)Plan_release, METH_NOARGS, "let append take steps again"},
    {NULL}};

static PyObject *get_flag(Plan *self, void *which) {
    char *f = (char *)self + (Py_ssize_t)which;
    return PyBool_FromLong(*f);
}

static int set_blocked(Plan *self, PyObject *v, void *unused) {
    int b = v ? PyObject_IsTrue(v) : -1;
    if (b < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "blocked cannot be deleted");
        return -1;
    }
    self->blocked = (char)b;
    return 0;
}

static PyObject *get_ssize(Plan *self, void *which) {
    return PyLong_FromSsize_t(*(Py_ssize_t *)((char *)self + (Py_ssize_t)which));
}

static int set_ssize(Plan *self, PyObject *v, void *which) {
    Py_ssize_t n = v ? PyLong_AsSsize_t(v) : -1;
    if (n == -1 && (!v || PyErr_Occurred())) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "cannot be deleted");
        return -1;
    }
    Py_ssize_t off = (Py_ssize_t)which;
    /* base and count stay inside the rows: append writes row base + count */
    Py_ssize_t base = off == offsetof(Plan, base) ? n : self->base;
    Py_ssize_t count = off == offsetof(Plan, count) ? n : self->count;
    if (n < 0 || base + count > self->rows || (self->capacity && count > self->capacity)) {
        PyErr_Format(PyExc_ValueError, "base %zd + count %zd out of the %zd rows", base, count,
                     self->rows);
        return -1;
    }
    *(Py_ssize_t *)((char *)self + off) = n;
    return 0;
}

static PyObject *get_pending(Plan *self, void *unused) { return PyLong_FromLongLong(self->pending); }

static PyObject *get_ticked(Plan *self, void *unused) { return PyFloat_FromDouble(self->ticked); }

#define OFF(f) ((void *)offsetof(Plan, f))
static PyGetSetDef Plan_getset[] = {
    {"count", (getter)get_ssize, (setter)set_ssize, "steps staged in the current buffer", OFF(count)},
    {"base", (getter)get_ssize, (setter)set_ssize, "the current buffer's first row", OFF(base)},
    {"pending", (getter)get_pending, NULL, "steps counted since the last take()", NULL},
    {"ticked", (getter)get_ticked, NULL, "when append last counted a step (monotonic s)", NULL},
    {"blocked", (getter)get_flag, (setter)set_blocked, "the next step takes the Python path",
     OFF(blocked)},
    {"held", (getter)get_flag, NULL, "held by hold()", OFF(held)},
    {NULL}};
#undef OFF

static PyTypeObject PlanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trlrec.storage._capture.Plan",
    .tp_basicsize = sizeof(Plan),
    .tp_dealloc = (destructor)Plan_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A staging plan: where each leaf of a step goes, and how it is checked.",
    .tp_methods = Plan_methods,
    .tp_getset = Plan_getset,
    .tp_init = (initproc)Plan_init,
    .tp_new = PyType_GenericNew,
};


static struct PyModuleDef capture_module = {
    PyModuleDef_HEAD_INIT, "_capture", "Native step capture for trlrec's writer.", -1, NULL};

PyMODINIT_FUNC PyInit__capture(void) {
    s_tensordict = PyUnicode_InternFromString("_tensordict");
    s_next = PyUnicode_InternFromString("next");
    if (!s_tensordict || !s_next) return NULL;
    s_dtype = PyUnicode_InternFromString("dtype");
    s_shape = PyUnicode_InternFromString("shape");
    s_is_cpu = PyUnicode_InternFromString("is_cpu");
    s_is_contiguous = PyUnicode_InternFromString("is_contiguous");
    s_data_ptr = PyUnicode_InternFromString("data_ptr");
    s_version = PyUnicode_InternFromString("_version");
    s_is_neg = PyUnicode_InternFromString("is_neg");
    if (!s_dtype || !s_shape || !s_is_cpu || !s_is_contiguous || !s_data_ptr || !s_version ||
        !s_is_neg)
        return NULL;
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
