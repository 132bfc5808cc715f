/* mason.store._statements: a lean SQLite connection for the store's short write paths.
 *
 * A put outside a transaction is one small committed statement, and the sqlite3 module's
 * execute() costs about a third as much again as SQLite's own work for it (statement cache
 * lookup, cursor bookkeeping, result description).  Connection runs prepared statements by
 * index with a tuple of parameters and returns the first row, nothing more.
 *
 * It must be the very SQLite library that the sqlite3 module uses: SQLite keeps the POSIX
 * locks of every open database file in one table per process, and a second copy of the
 * library in the same process would release the other's locks when it closed its files.
 * same_library() checks that, and the store uses a Connection only when it holds.
 *
 * Errors are the sqlite3 module's own exceptions, with sqlite_errorcode set, so that callers
 * tell "database is locked" apart exactly as they do for the module's connections.
 * A connection opened before a fork is never closed by the child (closing could checkpoint or
 * delete the parent's WAL): the child leaves it alone. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sqlite3.h>
#include <dlfcn.h>
#include <unistd.h>

#define MAX_STATEMENTS 64
#define MAX_PARAMS 16

static PyObject *OperationalError, *DatabaseError, *IntegrityError;

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *stmts[MAX_STATEMENTS];
    int count;
    int busy;     /* a statement runs (with the GIL released): a second caller is refused */
    long puts;    /* put() calls that committed, for the caller's checkpoint schedule */
    pid_t pid;    /* the process that opened db */
} Connection;

static PyObject *
raise_error(sqlite3 *db, int rc)
{
    int primary = rc & 0xFF;
    PyObject *cls = (primary == SQLITE_BUSY || primary == SQLITE_LOCKED
                     || primary == SQLITE_FULL || primary == SQLITE_IOERR
                     || primary == SQLITE_CANTOPEN || primary == SQLITE_READONLY)
                    ? OperationalError
                    : primary == SQLITE_CONSTRAINT ? IntegrityError : DatabaseError;
    const char *message = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    PyObject *exc = PyObject_CallFunction(cls, "s", message);
    if (exc == NULL)
        return NULL;
    PyObject *code = PyLong_FromLong(rc);
    PyObject *name = PyUnicode_FromString(sqlite3_errstr(rc));
    if (code == NULL || name == NULL
        || PyObject_SetAttrString(exc, "sqlite_errorcode", code) < 0
        || PyObject_SetAttrString(exc, "sqlite_errorname", name) < 0) {
        Py_XDECREF(code);
        Py_XDECREF(name);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(code);
    Py_DECREF(name);
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
    return NULL;
}

static void
finish(Connection *self)
{
    for (int i = 0; i < self->count; i++)
        sqlite3_finalize(self->stmts[i]);
    self->count = 0;
    sqlite3_close_v2(self->db);
    self->db = NULL;
}

static int
Connection_init(Connection *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "busy_timeout_ms", NULL};
    const char *path;
    int timeout_ms;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "si", kwlist, &path, &timeout_ms))
        return -1;
    if (self->db != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Connection is already open");
        return -1;
    }
    sqlite3 *db = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    /* Never creates: the store has already made the file and its schema. */
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    Py_END_ALLOW_THREADS
    if (rc != SQLITE_OK) {
        raise_error(db, rc);
        sqlite3_close_v2(db);
        return -1;
    }
    sqlite3_busy_timeout(db, timeout_ms);
    self->db = db;
    self->pid = getpid();
    return 0;
}

static int
check_open(Connection *self)
{
    if (self->db == NULL) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
        return -1;
    }
    if (self->pid != getpid()) {
        PyErr_SetString(PyExc_ValueError, "the connection belongs to the parent process");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the connection is in use by another thread");
        return -1;
    }
    return 0;
}

static PyObject *
Connection_prepare(Connection *self, PyObject *sql)
{
    if (check_open(self) < 0)
        return NULL;
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(sql, &n);
    if (text == NULL)
        return NULL;
    if (self->count == MAX_STATEMENTS) {
        PyErr_SetString(PyExc_OverflowError, "too many prepared statements");
        return NULL;
    }
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v3(self->db, text, (int)n + 1, SQLITE_PREPARE_PERSISTENT, &stmt,
                                NULL);
    if (rc != SQLITE_OK)
        return raise_error(self->db, rc);
    if (stmt == NULL) {
        PyErr_SetString(PyExc_ValueError, "no statement in the SQL");
        return NULL;
    }
    self->stmts[self->count] = stmt;
    return PyLong_FromLong(self->count++);
}

static PyObject *
column(sqlite3_stmt *stmt, int i)
{
    switch (sqlite3_column_type(stmt, i)) {
    case SQLITE_INTEGER:
        return PyLong_FromLongLong(sqlite3_column_int64(stmt, i));
    case SQLITE_FLOAT:
        return PyFloat_FromDouble(sqlite3_column_double(stmt, i));
    case SQLITE_TEXT:
        return PyUnicode_FromStringAndSize((const char *)sqlite3_column_text(stmt, i),
                                           sqlite3_column_bytes(stmt, i));
    case SQLITE_BLOB: {
        const void *p = sqlite3_column_blob(stmt, i);
        return PyBytes_FromStringAndSize(p ? p : "", sqlite3_column_bytes(stmt, i));
    }
    default:
        Py_RETURN_NONE;
    }
}

static PyObject *
row_of(sqlite3_stmt *stmt)
{
    int columns = sqlite3_column_count(stmt);
    PyObject *row = PyTuple_New(columns);
    for (int i = 0; row != NULL && i < columns; i++) {
        PyObject *value = column(stmt, i);
        if (value == NULL)
            Py_CLEAR(row);
        else
            PyTuple_SET_ITEM(row, i, value);
    }
    return row;
}

/* run(index, params, all=False): bind, step to the end, and return the first row (a tuple) or
 * None; with all, the list of every row. */
static PyObject *
Connection_run(Connection *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "run(index, params: tuple, all=False)");
        return NULL;
    }
    int all = nargs == 3 ? PyObject_IsTrue(args[2]) : 0;
    if (all < 0)
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    long index = PyLong_AsLong(args[0]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= self->count) {
        PyErr_SetString(PyExc_IndexError, "no such statement");
        return NULL;
    }
    sqlite3_stmt *stmt = self->stmts[index];
    PyObject *params = args[1];
    Py_ssize_t n = PyTuple_GET_SIZE(params);
    if (n != sqlite3_bind_parameter_count(stmt) || n > MAX_PARAMS) {
        PyErr_Format(PyExc_ValueError, "statement %ld takes %d parameters, not %zd", index,
                     sqlite3_bind_parameter_count(stmt), n);
        return NULL;
    }
    Py_buffer views[MAX_PARAMS];
    int held = 0, rc = SQLITE_OK;
    PyObject *row = NULL;
    for (Py_ssize_t i = 0; i < n && rc == SQLITE_OK; i++) {
        PyObject *p = PyTuple_GET_ITEM(params, i);
        int at = (int)i + 1;
        if (p == Py_None) {
            rc = sqlite3_bind_null(stmt, at);
        } else if (PyLong_CheckExact(p)) {
            long long v = PyLong_AsLongLong(p);
            if (v == -1 && PyErr_Occurred())
                goto done;
            rc = sqlite3_bind_int64(stmt, at, v);
        } else if (PyBytes_CheckExact(p)) {
            rc = sqlite3_bind_blob64(stmt, at, PyBytes_AS_STRING(p),
                                     (sqlite3_uint64)PyBytes_GET_SIZE(p), SQLITE_STATIC);
        } else if (PyUnicode_Check(p)) {
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(p, &len);
            if (s == NULL)
                goto done;
            rc = sqlite3_bind_text64(stmt, at, s, (sqlite3_uint64)len, SQLITE_STATIC,
                                     SQLITE_UTF8);
        } else if (PyFloat_Check(p)) {
            rc = sqlite3_bind_double(stmt, at, PyFloat_AS_DOUBLE(p));
        } else {
            if (PyObject_GetBuffer(p, &views[held], PyBUF_SIMPLE) < 0)
                goto done;
            held++;
            rc = sqlite3_bind_blob64(stmt, at, views[held - 1].buf,
                                     (sqlite3_uint64)views[held - 1].len, SQLITE_STATIC);
        }
    }
    if (rc != SQLITE_OK) {
        raise_error(self->db, rc);
        goto done;
    }
    if (all && (row = PyList_New(0)) == NULL)
        goto done;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = sqlite3_step(stmt);
    Py_END_ALLOW_THREADS
    while (all && rc == SQLITE_ROW) {
        PyObject *one = row_of(stmt);
        if (one == NULL || PyList_Append(row, one) < 0) {
            Py_XDECREF(one);
            self->busy = 0;
            Py_CLEAR(row);
            goto done;
        }
        Py_DECREF(one);
        Py_BEGIN_ALLOW_THREADS
        rc = sqlite3_step(stmt);
        Py_END_ALLOW_THREADS
    }
    if (rc == SQLITE_ROW) {
        row = row_of(stmt);
        /* The rest of the rows, unread: a RETURNING statement makes its changes as it steps. */
        Py_BEGIN_ALLOW_THREADS
        do
            rc = sqlite3_step(stmt);
        while (rc == SQLITE_ROW);
        Py_END_ALLOW_THREADS
    }
    self->busy = 0;
    if (rc != SQLITE_DONE) {
        Py_CLEAR(row);
        rc = sqlite3_reset(stmt);  /* the extended code of the failure */
        raise_error(self->db, rc == SQLITE_OK ? SQLITE_ERROR : rc);
        goto done;
    }
    if (row == NULL && !PyErr_Occurred()) {  /* no row, or row_of failed (error set) */
        row = Py_None;
        Py_INCREF(row);
    }
done:
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    return row;
}

/* put(index, key, data, every) -> int: run a two-blob statement, the store's one-statement put,
 * with less ceremony than run(): 0 if it changed no row, else 1, or 2 on every every-th call
 * that changed one. */
static PyObject *
Connection_put(Connection *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_CheckExact(args[1]) || !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "put(index, key: bytes, data: bytes, every: int)");
        return NULL;
    }
    if (check_open(self) < 0)
        return NULL;
    long index = PyLong_AsLong(args[0]), every = PyLong_AsLong(args[3]);
    if ((index == -1 || every == -1) && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= self->count || every <= 0
        || sqlite3_bind_parameter_count(self->stmts[index]) != 2) {
        PyErr_SetString(PyExc_ValueError, "put() needs a statement of two parameters");
        return NULL;
    }
    sqlite3_stmt *stmt = self->stmts[index];
    int rc = sqlite3_bind_blob64(stmt, 1, PyBytes_AS_STRING(args[1]),
                                 (sqlite3_uint64)PyBytes_GET_SIZE(args[1]), SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob64(stmt, 2, PyBytes_AS_STRING(args[2]),
                                 (sqlite3_uint64)PyBytes_GET_SIZE(args[2]), SQLITE_STATIC);
    if (rc == SQLITE_OK) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW)
            ;
        Py_END_ALLOW_THREADS
        self->busy = 0;
        rc = rc == SQLITE_DONE ? SQLITE_OK : sqlite3_reset(stmt);
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    if (rc != SQLITE_OK)
        return raise_error(self->db, rc);
    if (sqlite3_changes(self->db) == 0)
        return PyLong_FromLong(0);
    return PyLong_FromLong(++self->puts % every == 0 ? 2 : 1);
}

static PyObject *
Connection_changes(Connection *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromLong(sqlite3_changes(self->db));
}

static PyObject *
Connection_in_transaction(Connection *self, void *unused)
{
    return PyBool_FromLong(self->db != NULL && !sqlite3_get_autocommit(self->db));
}

static PyObject *
Connection_close(Connection *self, PyObject *unused)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the connection is in use by another thread");
        return NULL;
    }
    if (self->db != NULL && self->pid == getpid())
        finish(self);
    self->db = NULL;  /* a parent's connection is forgotten, never closed, in a child */
    Py_RETURN_NONE;
}

static void
Connection_dealloc(Connection *self)
{
    if (self->db != NULL && self->pid == getpid())
        finish(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Connection_methods[] = {
    {"prepare", (PyCFunction)Connection_prepare, METH_O,
     "prepare(sql) -> index: compile one statement, kept for the connection's life"},
    {"run", (PyCFunction)(void (*)(void))Connection_run, METH_FASTCALL,
     "run(index, params, all=False) -> first row or None (all: list of rows): run a prepared "
     "statement to its end"},
    {"put", (PyCFunction)(void (*)(void))Connection_put, METH_FASTCALL,
     "put(index, key, data, every) -> 0 if no row changed, else 1 (2 every every-th time): run a "
     "statement of two blobs"},
    {"changes", (PyCFunction)Connection_changes, METH_NOARGS,
     "rows changed by the last statement"},
    {"close", (PyCFunction)Connection_close, METH_NOARGS, "close the connection"},
    {NULL}
};

static PyGetSetDef Connection_getset[] = {
    {"in_transaction", (getter)Connection_in_transaction, NULL,
     "True inside BEGIN ... COMMIT", NULL},
    {NULL}
};

static PyTypeObject ConnectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mason.store._statements.Connection",
    .tp_basicsize = sizeof(Connection),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Connection(path, busy_timeout_ms): prepared statements run by index",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Connection_init,
    .tp_dealloc = (destructor)Connection_dealloc,
    .tp_methods = Connection_methods,
    .tp_getset = Connection_getset,
};

/* same_library(path): True if the extension module at path (the sqlite3 module's _sqlite3)
 * resolves SQLite to the very library this module was linked with. */
static PyObject *
same_library(PyObject *module, PyObject *arg)
{
    PyObject *bytes;
    if (!PyUnicode_FSConverter(arg, &bytes))
        return NULL;
    void *handle = dlopen(PyBytes_AS_STRING(bytes), RTLD_NOW | RTLD_NOLOAD);
    Py_DECREF(bytes);
    if (handle == NULL)
        Py_RETURN_FALSE;
    void *theirs = dlsym(handle, "sqlite3_libversion_number");
    dlclose(handle);
    return PyBool_FromLong(theirs != NULL && theirs == (void *)&sqlite3_libversion_number);
}

static PyMethodDef module_methods[] = {
    {"same_library", same_library, METH_O,
     "same_library(path) -> bool: does that extension use this module's SQLite?"},
    {NULL}
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "mason.store._statements",
    "A lean SQLite connection for the store's short write paths.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__statements(void)
{
    if (PyType_Ready(&ConnectionType) < 0)
        return NULL;
    PyObject *sqlite = PyImport_ImportModule("sqlite3");
    if (sqlite == NULL)
        return NULL;
    OperationalError = PyObject_GetAttrString(sqlite, "OperationalError");
    DatabaseError = PyObject_GetAttrString(sqlite, "DatabaseError");
    IntegrityError = PyObject_GetAttrString(sqlite, "IntegrityError");
    Py_DECREF(sqlite);
    if (OperationalError == NULL || DatabaseError == NULL || IntegrityError == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ConnectionType);
    if (PyModule_AddObject(m, "Connection", (PyObject *)&ConnectionType) < 0
        || PyModule_AddStringConstant(m, "sqlite_version", sqlite3_libversion()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
