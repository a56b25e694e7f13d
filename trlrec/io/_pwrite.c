/* The native I/O backend (trlrec/io/native.py): writes done without the GIL.
 *
 * A write is (fd, buffer, offset, drop_from); drop_from >= 0: after the write,
 * POSIX_FADV_DONTNEED from drop_from to the end of the write.
 *
 * Writer: a thread of its own (a pthread, not a Python thread) doing such writes in
 * the order they were submitted, without ever taking the GIL. A Python I/O thread
 * takes the GIL back after each write and between jobs; the step loop's thread holds
 * it nearly all the time, so each take waits up to the switch interval (5 ms) and
 * then forces a switch. At 84x84x3 frames those hand-offs cost the step loop ~5 %
 * (measured: VideoRecorder 1.11x with a 5 ms switch interval, 1.06x with 0.5 ms).
 * Jobs are reaped (their buffers released, their errors returned) by the submitting
 * thread, with the GIL held. A job of a group (a file, or a whole store) in which a
 * write failed is skipped (ECANCELED): nothing lands after a torn write. A job names
 * its file by descriptor (submit) or by path (submit_path: the thread opens it and
 * keeps up to FD_CACHE descriptors, its own, until close_files() or stop()).
 * submit_replace writes a whole small file and renames it over another (a commit
 * record), after the writes before it, and skipped like them after a failure.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    int fd;
    Py_buffer buf;
    long long offset;
    long long drop_from;
} Write;

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

/* ------------------------------------------------------------------ Writer */

#define FD_CACHE 64

typedef struct Job {
    Write w;
    char *path;  /* or NULL: w.fd is the caller's */
    char *final; /* submit_replace: path is the temporary file, renamed to this */
    int close_files;
    long long group, token;
    int err;
    struct Job *next;
} Job;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    Job *head, *tail;           /* submitted, not started */
    Job *done_head, *done_tail; /* finished, not reaped */
    Py_ssize_t pending;         /* submitted, not finished */
    long long finished;         /* jobs finished since the start */
    char *cache_path[FD_CACHE]; /* the thread's descriptors of submit_path's files */
    int cache_fd[FD_CACHE];
    unsigned long long cache_used[FD_CACHE], clock;
    int started, stopping, ready;
    pid_t pid;
    pthread_t thread;
    long long *failed; /* groups in which a write failed */
    size_t nfailed;
} Writer;

static int group_failed(Writer *self, long long group) {
    for (size_t k = 0; k < self->nfailed; k++)
        if (self->failed[k] == group) return 1;
    return 0;
}

/* The thread's descriptor of path (opened, or reused from its cache); -errno on failure. */
static int cached_fd(Writer *self, const char *path) {
    int lru = 0;
    for (int k = 0; k < FD_CACHE; k++) {
        if (self->cache_path[k] && strcmp(self->cache_path[k], path) == 0) {
            self->cache_used[k] = ++self->clock;
            return self->cache_fd[k];
        }
        if (!self->cache_path[k] || self->cache_used[k] < self->cache_used[lru]) lru = k;
        if (!self->cache_path[lru]) break;
    }
    char *copy = strdup(path);
    if (!copy) return -ENOMEM;
    int fd;
    do fd = open(path, O_WRONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        int err = errno;
        free(copy);
        return -err;
    }
    if (self->cache_path[lru]) {
        close(self->cache_fd[lru]);
        free(self->cache_path[lru]);
    }
    self->cache_path[lru] = copy;
    self->cache_fd[lru] = fd;
    self->cache_used[lru] = ++self->clock;
    return fd;
}

static void close_cached(Writer *self) {
    for (int k = 0; k < FD_CACHE; k++)
        if (self->cache_path[k]) {
            close(self->cache_fd[k]);
            free(self->cache_path[k]);
            self->cache_path[k] = NULL;
        }
}

/* Write the job's buffer as the whole file job->path, then rename it to job->final. */
static int replace_file(Job *job) {
    int fd;
    do fd = open(job->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) return errno;
    Py_ssize_t index;
    job->w.fd = fd;
    job->w.offset = 0;
    job->w.drop_from = -1;
    int err = run(&job->w, 1, &index);
    if (close(fd) < 0 && !err) err = errno;
    if (!err && rename(job->path, job->final) < 0) err = errno;
    return err;
}

static int do_job(Writer *self, Job *job) {
    if (job->close_files) {
        close_cached(self);
        return 0;
    }
    if (job->final) return replace_file(job);
    if (job->path) {
        int fd = cached_fd(self, job->path);
        if (fd < 0) return -fd;
        job->w.fd = fd;
    }
    Py_ssize_t index;
    return run(&job->w, 1, &index);
}

static void *writer_main(void *arg) {
    Writer *self = arg;
    /* signals go to Python's threads; a write's own faults (and SIGXFSZ) stay its own */
    sigset_t mask;
    sigfillset(&mask);
    sigdelset(&mask, SIGSEGV), sigdelset(&mask, SIGBUS), sigdelset(&mask, SIGFPE);
    sigdelset(&mask, SIGILL), sigdelset(&mask, SIGXFSZ);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    pthread_mutex_lock(&self->mu);
    for (;;) {
        while (!self->head && !self->stopping) pthread_cond_wait(&self->work, &self->mu);
        Job *job = self->head;
        if (!job) break; /* stopping, and nothing left */
        self->head = job->next;
        if (!self->head) self->tail = NULL;
        int skip = group_failed(self, job->group);
        pthread_mutex_unlock(&self->mu);
        job->err = skip && !job->close_files ? ECANCELED : do_job(self, job);
        pthread_mutex_lock(&self->mu);
        if (job->err && !skip) {
            long long *grown = realloc(self->failed, (self->nfailed + 1) * sizeof(long long));
            if (grown) { /* else the group's next jobs are tried (and fail) too */
                self->failed = grown;
                self->failed[self->nfailed++] = job->group;
            }
        }
        job->next = NULL;
        if (self->done_tail) self->done_tail->next = job;
        else self->done_head = job;
        self->done_tail = job;
        self->pending--;
        self->finished++;
        pthread_cond_broadcast(&self->done);
    }
    pthread_mutex_unlock(&self->mu);
    close_cached(self);
    return NULL;
}

static int Writer_init(Writer *self, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, ":Writer")) return -1;
    if (self->ready) {
        PyErr_SetString(PyExc_TypeError, "a Writer is initialised once");
        return -1;
    }
    if (pthread_mutex_init(&self->mu, NULL) || pthread_cond_init(&self->work, NULL) ||
        pthread_cond_init(&self->done, NULL)) {
        PyErr_SetString(PyExc_OSError, "could not create the writer's lock");
        return -1;
    }
    self->ready = 1;
    self->pid = getpid();
    return 0;
}

/* Stop the thread once every submitted job is done (with the GIL released). */
static void writer_stop(Writer *self) {
    pthread_mutex_lock(&self->mu);
    self->stopping = 1;
    pthread_cond_broadcast(&self->work);
    int started = self->started;
    self->started = 0;
    pthread_mutex_unlock(&self->mu);
    if (started) {
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->thread, NULL);
        Py_END_ALLOW_THREADS
    }
}

static void free_jobs(Job *job) {
    while (job) {
        Job *next = job->next;
        if (job->w.buf.obj) PyBuffer_Release(&job->w.buf);
        PyMem_Free(job->path);
        PyMem_Free(job->final);
        PyMem_Free(job);
        job = next;
    }
}

static void Writer_dealloc(Writer *self) {
    if (self->ready && self->pid == getpid()) {
        writer_stop(self); /* every queued write lands before the buffers go */
        free_jobs(self->head);
        free_jobs(self->done_head);
        pthread_mutex_destroy(&self->mu);
        pthread_cond_destroy(&self->work);
        pthread_cond_destroy(&self->done);
        free(self->failed);
    } /* in a forked child the parent's thread and jobs do not exist: nothing to undo */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_owner(Writer *self) {
    if (!self->ready || self->pid != getpid()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this Writer belongs to another process (forked) or is not initialised");
        return -1;
    }
    return 0;
}

/* Queue a job (taking it over): the thread is started with the first. */
static PyObject *enqueue(Writer *self, Job *job) {
    pthread_mutex_lock(&self->mu);
    if (!self->started) {
        int err = pthread_create(&self->thread, NULL, writer_main, self);
        if (err) {
            pthread_mutex_unlock(&self->mu);
            free_jobs(job); /* a new job: its next is NULL */
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        self->started = 1;
    }
    if (self->tail) self->tail->next = job;
    else self->head = job;
    self->tail = job;
    self->pending++;
    pthread_cond_signal(&self->work);
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

static int check_open(Writer *self) {
    if (check_owner(self) < 0) return -1;
    if (self->stopping) {
        PyErr_SetString(PyExc_RuntimeError, "this Writer is stopped");
        return -1;
    }
    return 0;
}

/* A copy of path (str or os.PathLike) as a C string; NULL with an exception set. */
static char *fs_path(PyObject *path) {
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(path, &encoded)) return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(encoded);
    char *out = PyMem_Malloc(size + 1);
    if (out) memcpy(out, PyBytes_AS_STRING(encoded), size + 1);
    else PyErr_NoMemory();
    Py_DECREF(encoded);
    return out;
}

/* submit(fd, buffer, offset, drop_from, group, token) and submit_path(path, ...): queue
 * one write, to the caller's descriptor or to a file the thread opens (O_WRONLY) and
 * keeps open. */
static PyObject *submit_write(Writer *self, PyObject *const *args, Py_ssize_t nargs,
                              int by_path) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        by_path ? "submit_path(path, buffer, offset, drop_from, group, token)"
                                : "submit(fd, buffer, offset, drop_from, group, token)");
        return NULL;
    }
    if (check_open(self) < 0) return NULL;
    long fd = by_path ? 0 : PyLong_AsLong(args[0]);
    long long offset = PyLong_AsLongLong(args[2]), drop = PyLong_AsLongLong(args[3]);
    long long group = PyLong_AsLongLong(args[4]), token = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT_MAX || offset < 0) {
        PyErr_SetString(PyExc_ValueError,
                        by_path ? "offset must be >= 0" : "fd and offset must be >= 0");
        return NULL;
    }
    Job *job = PyMem_Calloc(1, sizeof(Job));
    if (!job) return PyErr_NoMemory();
    if ((by_path && !(job->path = fs_path(args[0]))) ||
        PyObject_GetBuffer(args[1], &job->w.buf, PyBUF_SIMPLE) < 0) {
        free_jobs(job);
        return NULL;
    }
    job->w.fd = (int)fd;
    job->w.offset = offset;
    job->w.drop_from = drop;
    job->group = group;
    job->token = token;
    return enqueue(self, job);
}

static PyObject *Writer_submit(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    return submit_write(self, args, nargs, 0);
}

static PyObject *Writer_submit_path(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    return submit_write(self, args, nargs, 1);
}

/* submit_replace(tmp_path, final_path, buffer, group, token): queue writing buffer as the
 * file tmp_path and renaming it to final_path (atomic for readers; not fsync'ed). */
static PyObject *Writer_submit_replace(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "submit_replace(tmp_path, final_path, buffer, group, token)");
        return NULL;
    }
    if (check_open(self) < 0) return NULL;
    long long group = PyLong_AsLongLong(args[3]), token = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    Job *job = PyMem_Calloc(1, sizeof(Job));
    if (!job) return PyErr_NoMemory();
    if (!(job->path = fs_path(args[0])) || !(job->final = fs_path(args[1])) ||
        PyObject_GetBuffer(args[2], &job->w.buf, PyBUF_SIMPLE) < 0) {
        free_jobs(job);
        return NULL;
    }
    job->group = group;
    job->token = token;
    return enqueue(self, job);
}

/* close_files(token): queue the closing of the thread's descriptors (after the writes
 * before it; reaped as (token, 0)). Files about to be deleted or replaced need it. */
static PyObject *Writer_close_files(Writer *self, PyObject *arg) {
    if (check_open(self) < 0) return NULL;
    long long token = PyLong_AsLongLong(arg);
    if (token == -1 && PyErr_Occurred()) return NULL;
    Job *job = PyMem_Calloc(1, sizeof(Job));
    if (!job) return PyErr_NoMemory();
    job->close_files = 1;
    job->token = token;
    job->group = -1;
    return enqueue(self, job);
}

/* reap() -> [(token, errno), ...] of the jobs finished since the last reap, in order. */
static PyObject *Writer_reap(Writer *self, PyObject *unused) {
    if (check_owner(self) < 0) return NULL;
    pthread_mutex_lock(&self->mu);
    Job *job = self->done_head;
    self->done_head = self->done_tail = NULL;
    pthread_mutex_unlock(&self->mu);
    PyObject *out = PyList_New(0);
    for (Job *j = job; out && j; j = j->next) {
        PyObject *item = Py_BuildValue("(Li)", j->token, j->err);
        if (!item || PyList_Append(out, item) < 0) Py_CLEAR(out);
        Py_XDECREF(item);
    }
    free_jobs(job);
    return out;
}

/* wait(limit): block (GIL released) until at most `limit` jobs are unfinished. */
static PyObject *Writer_wait(Writer *self, PyObject *arg) {
    if (check_owner(self) < 0) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    pthread_mutex_lock(&self->mu);
    int busy = self->pending > limit;
    pthread_mutex_unlock(&self->mu);
    if (busy) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mu);
        while (self->pending > limit) pthread_cond_wait(&self->done, &self->mu);
        pthread_mutex_unlock(&self->mu);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* wait_done(n): block (GIL released) until at least n jobs have finished in all. */
static PyObject *Writer_wait_done(Writer *self, PyObject *arg) {
    if (check_owner(self) < 0) return NULL;
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    pthread_mutex_lock(&self->mu);
    int busy = self->finished < n && self->pending > 0;
    pthread_mutex_unlock(&self->mu);
    if (busy) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mu);
        while (self->finished < n && self->pending > 0) pthread_cond_wait(&self->done, &self->mu);
        pthread_mutex_unlock(&self->mu);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* failed(group) -> whether a write of the group failed (so far). */
static PyObject *Writer_failed(Writer *self, PyObject *arg) {
    long long group = PyLong_AsLongLong(arg);
    if (group == -1 && PyErr_Occurred()) return NULL;
    pthread_mutex_lock(&self->mu);
    int failed = group_failed(self, group);
    pthread_mutex_unlock(&self->mu);
    return PyBool_FromLong(failed);
}

static PyObject *Writer_stop(Writer *self, PyObject *unused) {
    if (check_owner(self) < 0) return NULL;
    writer_stop(self);
    Py_RETURN_NONE;
}

static PyMethodDef Writer_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))Writer_submit, METH_FASTCALL,
     "submit(fd, buffer, offset, drop_from, group, token): queue a pwrite (and its drop)"},
    {"submit_path", (PyCFunction)(void (*)(void))Writer_submit_path, METH_FASTCALL,
     "submit_path(path, buffer, offset, drop_from, group, token): queue a pwrite to a file "
     "the thread opens and keeps open"},
    {"submit_replace", (PyCFunction)(void (*)(void))Writer_submit_replace, METH_FASTCALL,
     "submit_replace(tmp_path, final_path, buffer, group, token): queue writing a whole file "
     "and renaming it over another"},
    {"close_files", (PyCFunction)Writer_close_files, METH_O,
     "close_files(token): queue the closing of the thread's own descriptors"},
    {"wait_done", (PyCFunction)Writer_wait_done, METH_O,
     "wait_done(n): until at least n jobs have finished since the start (GIL released)"},
    {"failed", (PyCFunction)Writer_failed, METH_O,
     "failed(group) -> whether a write of the group failed"},
    {"reap", (PyCFunction)Writer_reap, METH_NOARGS,
     "reap() -> [(token, errno)] of the finished jobs (errno 0: written; ECANCELED: skipped)"},
    {"wait", (PyCFunction)Writer_wait, METH_O,
     "wait(limit): until at most limit submitted jobs are unfinished (GIL released)"},
    {"stop", (PyCFunction)Writer_stop, METH_NOARGS,
     "stop(): write what is queued, then end the thread (submit is refused after)"},
    {NULL}};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trlrec.storage._pwrite.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A thread doing submitted pwrites in order, without the GIL.",
    .tp_methods = Writer_methods,
    .tp_init = (initproc)Writer_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef pwrite_module = {
    PyModuleDef_HEAD_INIT, "_pwrite", "The native I/O backend's writer thread.", -1, NULL};

PyMODINIT_FUNC PyInit__pwrite(void) {
    if (PyType_Ready(&WriterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&pwrite_module);
    if (!m) return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
