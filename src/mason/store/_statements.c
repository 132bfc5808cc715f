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
#include <pthread.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* The space map and the rows' layouts are little-endian, and this code reads and writes them
 * as host integers: elsewhere the build fails, and the store uses its pure-Python twins. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mason.store._statements needs a little-endian host"
#endif

#define MAX_STATEMENTS 64
#define MAX_PARAMS 16

static PyObject *OperationalError, *DatabaseError, *IntegrityError;

/* Bumped in every forked child: a connection opened at another count is a parent's.  (Cheaper
 * than getpid(), a system call, on every statement.) */
static unsigned long forks;
static void forked(void) { forks++; }

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *stmts[MAX_STATEMENTS];
    int count;
    int busy;     /* a statement runs (with the GIL released): a second caller is refused */
    long puts;    /* put() calls that committed, for the caller's checkpoint schedule */
    unsigned long forks;  /* the process that opened db, as the count of forks before it */
} Connection;

static PyObject *
raise_error(sqlite3 *db, int rc)
{
    int primary = rc & 0xFF;
    if (primary == SQLITE_NOMEM)
        return PyErr_NoMemory();
    PyObject *cls;
    switch (primary) {  /* as the sqlite3 module sorts them */
    case SQLITE_ERROR: case SQLITE_PERM: case SQLITE_ABORT: case SQLITE_BUSY:
    case SQLITE_LOCKED: case SQLITE_READONLY: case SQLITE_INTERRUPT: case SQLITE_IOERR:
    case SQLITE_FULL: case SQLITE_CANTOPEN: case SQLITE_PROTOCOL: case SQLITE_EMPTY:
    case SQLITE_SCHEMA:
        cls = OperationalError;
        break;
    case SQLITE_CONSTRAINT: case SQLITE_MISMATCH:
        cls = IntegrityError;
        break;
    default:
        cls = DatabaseError;
    }
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
    self->forks = forks;
    return 0;
}

static int
check_open(Connection *self)
{
    if (self->db == NULL) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
        return -1;
    }
    if (self->forks != forks) {
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

/* Step a statement (bound already) to its end with the GIL released; an SQLite result code. */
static int
step_all(Connection *self, sqlite3_stmt *stmt)
{
    int rc;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW)
        ;
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    } else {
        int code = sqlite3_reset(stmt);  /* the extended code of the failure */
        rc = code != SQLITE_OK ? code : rc;
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
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
        rc = step_all(self, stmt);
    } else {
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
    }
    if (rc != SQLITE_OK)
        return raise_error(self->db, rc);
    if (sqlite3_changes(self->db) == 0)
        return PyLong_FromLong(0);
    return PyLong_FromLong(++self->puts % every == 0 ? 2 : 1);
}


/* -- the values file's space map (see _space.py, whose take and give these twin) ----------- */

#define REGION (1u << 20)
#define FEW 8  /* parts of a value that put_extent keeps on the stack */
#define ENTRIES_AT 64
#define CAPACITY ((REGION - ENTRIES_AT) / 16)

typedef struct { uint64_t off, len; } Extent;

static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
#define GEN(m) ((m) + 40)
#define END(m) ((m) + 48)
#define STATE(m) ((m) + 56)
#define COUNT(m) ((m) + 60)
#define ENTRY(m, i) ((Extent *)((m) + ENTRIES_AT) + (i))  /* little-endian hosts only */

static int
by_offset(const void *a, const void *b)
{
    uint64_t x = ((const Extent *)a)->off, y = ((const Extent *)b)->off;
    return x < y ? -1 : x > y;
}

/* Adjacent extents merged, a free tail handed back to end; returns the new count. */
static uint32_t
merge(unsigned char *m, uint32_t count)
{
    Extent *e = ENTRY(m, 0);
    qsort(e, count, sizeof(Extent), by_offset);
    uint32_t n = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (n && e[n - 1].off + e[n - 1].len == e[i].off)
            e[n - 1].len += e[i].len;
        else
            e[n++] = e[i];
    }
    if (n && e[n - 1].off + e[n - 1].len == get64(END(m))) {
        put64(END(m), e[n - 1].off);
        n--;
    }
    return n;
}

static uint64_t
take(unsigned char *m, uint64_t need)
{
    put32(STATE(m), 1);
    uint32_t count = get32(COUNT(m));
    uint64_t off = 0;
    int found = 0;
    for (int attempt = 0; attempt < 2 && !found; attempt++) {
        int64_t best = -1;
        for (uint32_t i = 0; i < count; i++) {
            uint64_t len = ENTRY(m, i)->len;
            if (len >= need && (best < 0 || len < ENTRY(m, best)->len))
                best = i;
        }
        if (best >= 0) {
            Extent *e = ENTRY(m, best);
            off = e->off;
            if (e->len > need) {
                e->off += need;
                e->len -= need;
            } else {
                *e = *ENTRY(m, count - 1);
                count--;
            }
            found = 1;
        } else if (attempt == 0) {
            count = merge(m, count);
        }
    }
    if (!found) {
        off = get64(END(m));
        put64(END(m), off + need);
    }
    put32(COUNT(m), count);
    put32(STATE(m), 0);
    return off;
}

/* Add one free extent (the map's state set by the caller); 0 if a full map, even merged,
 * has no room for it (it stays unused until the next rebuild). */
static int
add_free(unsigned char *m, uint32_t *count, uint64_t off, uint64_t len)
{
    if (*count == CAPACITY) {
        *count = merge(m, *count);
        if (*count == CAPACITY)
            return 0;
    }
    ENTRY(m, *count)->off = off;
    ENTRY(m, *count)->len = len;
    (*count)++;
    return 1;
}

/* Give back the (offset, length, gen) tuples of list; 0, or -1 with an exception set. */
static int
give(unsigned char *m, PyObject *list)
{
    uint64_t gen = get64(GEN(m));
    Py_ssize_t n = PyList_GET_SIZE(list);
    int rc = 0;
    put32(STATE(m), 1);
    uint32_t count = get32(COUNT(m));
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long off, len, when;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "KKK", &off, &len, &when)) {
            rc = -1;
            break;
        }
        if (when == gen && !add_free(m, &count, off, len))
            break;
    }
    put32(COUNT(m), count);
    put32(STATE(m), 0);
    return rc;
}

static int
map_view(PyObject *region, Py_buffer *view)
{
    if (PyObject_GetBuffer(region, view, PyBUF_WRITABLE) < 0)
        return -1;
    if (view->len < (Py_ssize_t)REGION) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "the space map is too short");
        return -1;
    }
    return 0;
}

static PyObject *
space_take(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    unsigned long long need;
    if (nargs != 2 || (need = PyLong_AsUnsignedLongLong(args[1])) == (unsigned long long)-1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "space_take(region, need)");
        return NULL;
    }
    if (map_view(args[0], &view) < 0)
        return NULL;
    uint64_t off = take(view.buf, need);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(off);
}

static PyObject *
space_give(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    if (nargs != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "space_give(region, freed: list)");
        return NULL;
    }
    if (map_view(args[0], &view) < 0)
        return NULL;
    int rc = give(view.buf, args[1]);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The map may be used as it is: ours, from this boot, not left half-changed. */
static int
map_trusted(const unsigned char *m, const char *uid, const char *boot)
{
    return memcmp(m, "mason-sp", 8) == 0 && memcmp(m + 8, uid, 16) == 0
           && memcmp(m + 24, boot, 16) == 0 && get32(STATE(m)) == 0
           && get32(COUNT(m)) <= CAPACITY && get64(END(m)) >= REGION;
}


/* Write all of parts at off (one pwritev per IOV_MAX parts, short writes finished). */
static int
write_parts(int fd, struct iovec *iov, int n, uint64_t off)
{
    while (n > 0) {
        int batch = n < 512 ? n : 512;
        ssize_t done = pwritev(fd, iov, batch, (off_t)off);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += (uint64_t)done;
        while (n > 0 && (size_t)done >= iov->iov_len) {  /* drop what was written */
            done -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= (size_t)done;
        }
    }
    return 0;
}

/* put_extent(statements, key, data, buffers, region, uid, boot, fd, sync, pending)
 *
 * The store's put of a large value as one transaction (see _sqlite.SQLiteBackend.set):
 * BEGIN IMMEDIATE; give the extents in pending back to the space map (and empty the list);
 * take a page-aligned extent; write nonce | data | buffers... | nonce there (a fresh random
 * nonce); fdatasync if sync; read the row's old extent; write the row (its value the layout:
 * each part's length << 1, | 1 if writable, as u64); COMMIT.  statements are the indexes of
 * BEGIN IMMEDIATE, the select of (ext, size) by key, the upsert of (key, ext, size, nonce,
 * nbuf, layout), COMMIT and ROLLBACK.  Returns (gen, old offset, old size) (None, None without
 * an old extent), or None, having done nothing, when the map is not to be trusted (the caller
 * rebuilds it).  On failure the extent taken goes back on the map before the rollback. */
static PyObject *
Connection_put_extent(Connection *self, PyObject *const *args, Py_ssize_t nargs)
{
    int s[5];
    const char *uid, *boot;
    Py_ssize_t uid_n, boot_n;
    int fd, sync;
    if (nargs != 10 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) != 5
        || !PyBytes_Check(args[1]) || !(PyList_Check(args[3]) || PyTuple_Check(args[3]))
        || !PyList_Check(args[9])) {
        PyErr_SetString(PyExc_TypeError, "put_extent(statements, key, data, buffers, region, "
                        "uid, boot, fd, sync, pending)");
        return NULL;
    }
    for (int i = 0; i < 5; i++) {
        s[i] = _PyLong_AsInt(PyTuple_GET_ITEM(args[0], i));
        if (s[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    fd = _PyLong_AsInt(args[7]);
    sync = PyObject_IsTrue(args[8]);
    if (PyErr_Occurred() || sync < 0
        || PyBytes_AsStringAndSize(args[5], (char **)&uid, &uid_n) < 0
        || PyBytes_AsStringAndSize(args[6], (char **)&boot, &boot_n) < 0)
        return NULL;
    if (uid_n != 16 || boot_n != 16) {
        PyErr_SetString(PyExc_ValueError, "put_extent: uid and boot are 16 bytes");
        return NULL;
    }
    if (check_open(self) < 0)
        return NULL;
    for (int i = 0; i < 5; i++) {
        if (s[i] < 0 || s[i] >= self->count) {
            PyErr_SetString(PyExc_IndexError, "no such statement");
            return NULL;
        }
    }
    PyObject *buffers = args[3];
    Py_ssize_t nparts = PySequence_Fast_GET_SIZE(buffers) + 1;
    if (nparts > 100000) {
        PyErr_SetString(PyExc_ValueError, "put_extent: too many buffers");
        return NULL;
    }
    Py_buffer region;
    if (map_view(args[4], &region) < 0)
        return NULL;
    unsigned char *m = region.buf;
    /* A value of a few parts (nearly all) needs no allocation. */
    Py_buffer few_views[FEW];
    struct iovec few_iov[FEW + 2];
    uint64_t few_layout[FEW];
    int few = nparts <= FEW;
    Py_buffer *views = few ? few_views : PyMem_Calloc((size_t)nparts, sizeof(Py_buffer));
    struct iovec *iov = few ? few_iov : PyMem_Calloc((size_t)nparts + 2, sizeof(struct iovec));
    uint64_t *layout = few ? few_layout : PyMem_Calloc((size_t)nparts, sizeof(uint64_t));
    Py_ssize_t held = 0;
    PyObject *result = NULL;
    uint64_t total = 16, need, nonce;
    unsigned char tag[8];
    if (views == NULL || iov == NULL || layout == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto out;
    }
    for (; held < nparts; held++) {
        PyObject *part = held ? PySequence_Fast_GET_ITEM(buffers, held - 1) : args[2];
        if (PyObject_GetBuffer(part, &views[held], PyBUF_SIMPLE) < 0)
            goto out;
        uint64_t entry = ((uint64_t)views[held].len << 1) | (held && !views[held].readonly);
        layout[held] = entry;  /* little-endian hosts only, as the map */
        iov[held + 1].iov_base = views[held].buf;
        iov[held + 1].iov_len = (size_t)views[held].len;
        total += (uint64_t)views[held].len;
    }
    need = (total + 4095) / 4096 * 4096;
    sqlite3_randomness(8, &nonce);
    nonce &= (1ull << 63) - 1;
    memcpy(tag, &nonce, 8);
    iov[0].iov_base = tag;
    iov[0].iov_len = 8;
    iov[nparts + 1].iov_base = tag;
    iov[nparts + 1].iov_len = 8;

    int rc = step_all(self, self->stmts[s[0]]);  /* BEGIN IMMEDIATE */
    if (rc != SQLITE_OK) {
        raise_error(self->db, rc);
        goto out;
    }
    if (!map_trusted(m, uid, boot)) {
        step_all(self, self->stmts[s[4]]);
        result = Py_None;
        Py_INCREF(result);
        goto out;
    }
    PyObject *pending = args[9];
    /* Emptied even if giving failed half-way: an extent left unused until the next rebuild is
     * better than one given twice. */
    int gave = give(m, pending);
    if (PyList_SetSlice(pending, 0, PyList_GET_SIZE(pending), NULL) < 0 || gave < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        step_all(self, self->stmts[s[4]]);
        PyErr_Restore(type, value, tb);
        goto out;
    }
    uint64_t gen = get64(GEN(m));
    uint64_t off = take(m, need);

    int failed_io = 0;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    failed_io = write_parts(fd, iov, (int)nparts + 2, off) < 0 || (sync && fdatasync(fd) < 0);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyObject *old_off = Py_None, *old_size = Py_None;
    Py_INCREF(old_off);
    Py_INCREF(old_size);
    if (failed_io) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto undo;
    }
    sqlite3_stmt *select = self->stmts[s[1]];
    sqlite3_bind_blob64(select, 1, PyBytes_AS_STRING(args[1]),
                        (sqlite3_uint64)PyBytes_GET_SIZE(args[1]), SQLITE_STATIC);
    rc = sqlite3_step(select);  /* one page, already cached: not worth releasing the GIL */
    if (rc == SQLITE_ROW && sqlite3_column_type(select, 0) == SQLITE_INTEGER) {
        Py_SETREF(old_off, PyLong_FromLongLong(sqlite3_column_int64(select, 0)));
        Py_SETREF(old_size, PyLong_FromLongLong(sqlite3_column_int64(select, 1)));
    }
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        rc = SQLITE_OK;
    else
        rc = sqlite3_reset(select);
    sqlite3_reset(select);
    sqlite3_clear_bindings(select);
    if (rc == SQLITE_OK) {
        sqlite3_stmt *upsert = self->stmts[s[2]];
        sqlite3_bind_blob64(upsert, 1, PyBytes_AS_STRING(args[1]),
                            (sqlite3_uint64)PyBytes_GET_SIZE(args[1]), SQLITE_STATIC);
        sqlite3_bind_int64(upsert, 2, (sqlite3_int64)off);
        sqlite3_bind_int64(upsert, 3, (sqlite3_int64)need);
        sqlite3_bind_int64(upsert, 4, (sqlite3_int64)nonce);
        sqlite3_bind_int64(upsert, 5, (sqlite3_int64)(nparts - 1));
        sqlite3_bind_blob64(upsert, 6, layout, (sqlite3_uint64)nparts * 8, SQLITE_STATIC);
        rc = step_all(self, upsert);
    }
    if (rc == SQLITE_OK)
        rc = step_all(self, self->stmts[s[3]]);  /* COMMIT */
    if (rc != SQLITE_OK) {
        raise_error(self->db, rc);
        goto undo;
    }
    if (old_off == NULL || old_size == NULL)
        goto undo_after_commit;
    result = Py_BuildValue("(KOO)", (unsigned long long)gen, old_off, old_size);
undo_after_commit:
    Py_XDECREF(old_off);
    Py_XDECREF(old_size);
    goto out;
undo:
    /* Never committed: the extent is free again (we still hold the write lock). */
    {
        uint32_t count = get32(COUNT(m));
        put32(STATE(m), 1);
        add_free(m, &count, off, need);
        put32(COUNT(m), count);
        put32(STATE(m), 0);
    }
    if (!sqlite3_get_autocommit(self->db)) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        step_all(self, self->stmts[s[4]]);  /* ROLLBACK */
        PyErr_Restore(type, value, tb);
    }
    Py_XDECREF(old_off);
    Py_XDECREF(old_size);
out:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    if (!few) {
        PyMem_Free(views);
        PyMem_Free(iov);
        PyMem_Free(layout);
    }
    PyBuffer_Release(&region);
    return result;
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
    if (self->db != NULL && self->forks == forks)
        finish(self);
    self->db = NULL;  /* a parent's connection is forgotten, never closed, in a child */
    Py_RETURN_NONE;
}

static void
Connection_dealloc(Connection *self)
{
    if (self->db != NULL && self->forks == forks)
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
    {"put_extent", (PyCFunction)(void (*)(void))Connection_put_extent, METH_FASTCALL,
     "put_extent(statements, key, data, buffers, region, uid, boot, fd, sync, pending): a large "
     "value's whole put in one call"},
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
    {"space_take", (PyCFunction)(void (*)(void))space_take, METH_FASTCALL,
     "space_take(region, need) -> offset: as mason.store._space.take"},
    {"space_give", (PyCFunction)(void (*)(void))space_give, METH_FASTCALL,
     "space_give(region, freed) -> None: as mason.store._space.give"},
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
    if (pthread_atfork(NULL, NULL, forked) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return NULL;
    }
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
