/* A block's chunk writes in one call, with the GIL released once.
 *
 * The I/O thread writes a block as a handful of pwrite (and posix_fadvise) calls. In
 * Python each releases the GIL and takes it back, and taking it back waits on the step
 * loop's thread: a few hand-offs per block that the step loop feels (~2 us a step at
 * 84x84x3 pixels, measured). Here the buffers are pinned with the GIL held, then every
 * write runs without it.
 *
 * pwrite_all([(fd, buffer, offset, drop_from), ...]) -> None, or (index, errno) of the
 * first write that failed (the writes after it are not done). drop_from >= 0: after the
 * write, POSIX_FADV_DONTNEED from drop_from to the end of the write.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

typedef struct {
    int fd;
    Py_buffer buf;
    long long offset;
    long long drop_from;
} Write;

static int parse(PyObject *item, Write *w) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 4) {
        PyErr_SetString(PyExc_TypeError, "each write is a tuple (fd, buffer, offset, drop_from)");
        return -1;
    }
    long fd = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
    w->fd = (int)fd;
    w->offset = PyLong_AsLongLong(PyTuple_GET_ITEM(item, 2));
    w->drop_from = PyLong_AsLongLong(PyTuple_GET_ITEM(item, 3));
    if (PyErr_Occurred()) return -1;
    if (fd < 0 || fd > INT_MAX || w->offset < 0) {
        PyErr_SetString(PyExc_ValueError, "fd and offset must be >= 0");
        return -1;
    }
    return PyObject_GetBuffer(PyTuple_GET_ITEM(item, 1), &w->buf, PyBUF_SIMPLE);
}

/* Do the writes; 0, or the errno of the first failure (its index in *failed). */
static int run(Write *writes, Py_ssize_t n, Py_ssize_t *failed) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *p = writes[i].buf.buf;
        Py_ssize_t left = writes[i].buf.len;
        long long offset = writes[i].offset;
        while (left > 0) {
            ssize_t k = pwrite(writes[i].fd, p, (size_t)left, (off_t)offset);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                *failed = i;
                return k < 0 ? errno : EIO;
            }
            p += k;
            left -= k;
            offset += k;
        }
        if (writes[i].drop_from >= 0) {
            long long end = writes[i].offset + writes[i].buf.len;
            int err = posix_fadvise(writes[i].fd, (off_t)writes[i].drop_from,
                                    (off_t)(end - writes[i].drop_from), POSIX_FADV_DONTNEED);
            if (err) {
                *failed = i;
                return err;
            }
        }
    }
    return 0;
}

static PyObject *pwrite_all(PyObject *module, PyObject *items) {
    if (!PyList_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "pwrite_all takes a list of writes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(items), parsed = 0, failed = -1;
    Write *writes = PyMem_Calloc(n ? n : 1, sizeof(Write));
    if (!writes) return PyErr_NoMemory();
    int err = 0;
    for (; parsed < n; parsed++)
        if (parse(PyList_GET_ITEM(items, parsed), &writes[parsed]) < 0) break;
    if (parsed == n) {
        Py_BEGIN_ALLOW_THREADS
        err = run(writes, n, &failed);
        Py_END_ALLOW_THREADS
    }
    for (Py_ssize_t i = 0; i < parsed; i++) PyBuffer_Release(&writes[i].buf);
    PyMem_Free(writes);
    if (parsed != n) return NULL;
    if (err) return Py_BuildValue("(ni)", failed, err);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pwrite_all", pwrite_all, METH_O,
     "pwrite_all([(fd, buffer, offset, drop_from), ...]) -> None or (index, errno)"},
    {NULL}};

static struct PyModuleDef pwrite_module = {
    PyModuleDef_HEAD_INIT, "_pwrite", "A block's chunk writes without the GIL.", -1, methods};

PyMODINIT_FUNC PyInit__pwrite(void) { return PyModule_Create(&pwrite_module); }
