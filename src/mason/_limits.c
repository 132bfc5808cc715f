/* mason._limits: the compiled twin of mason.limits.StreamCheck.
 *
 * Same interface, same results, on every input: the tests feed both the same streams (honest,
 * hostile and randomly mutated) and compare.  What each opcode does is not written here: at
 * import, the module reads mason.format.opcodes (argument layout, role, operand count, mark)
 * into per-byte tables, so the opcode table stays the one place that knows the opcodes.
 *
 * The check walks opcodes without building objects.  It keeps one small integer per stack
 * slot (the nesting depth of the object there), the mark positions, and the depth of each memo
 * entry.  All three are bounded by the input: the stack and marks by the opcodes read, the
 * memo by memo_slack plus the entries written (an index beyond that is refused first).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* Must match mason.format.opcodes.Arg and Role. */
enum { ARG_NONE, ARG_FIXED1, ARG_FIXED2, ARG_FIXED4, ARG_FIXED8, ARG_LEN1, ARG_LEN4,
       ARG_LEN4_SIGNED, ARG_LEN8, ARG_LINE, ARG_LINE2 };
enum { ROLE_PUSH, ROLE_BUILD, ROLE_EXTEND, ROLE_POP, ROLE_DUP, ROLE_MARK, ROLE_POP_MARK,
       ROLE_PUT, ROLE_MEMOIZE, ROLE_GET, ROLE_PROTO, ROLE_FRAME, ROLE_STOP };

#define NEED_LINE (-1)
#define STOP_HERE 1     /* internal: malformed in a way the engine rejects */

typedef struct {
    unsigned char known, arg, role, pops, mark, imports;
    PyObject *name;     /* the opcode's name, for messages */
} OpInfo;

static OpInfo ops[256];
static PyObject *LimitError;   /* mason.errors.LimitError */

typedef struct {
    PyObject_HEAD
    Py_ssize_t max_depth;
    Py_ssize_t memo_slack;
    Py_ssize_t memo_writes;
    int proto;
    int imports;
    Py_ssize_t stopped_at;          /* -1: none */
    int32_t *stack; Py_ssize_t nstack, capstack;
    Py_ssize_t *marks; Py_ssize_t nmarks, capmarks;
    int32_t *memo; Py_ssize_t capmemo;   /* depth per memo index; 0 = empty */
    Py_ssize_t memo_len;            /* entries present, for MEMOIZE */
} StreamCheck;

static int
grow(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    Py_ssize_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *p = PyMem_Realloc(*buf, (size_t)n * item);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = p;
    *cap = n;
    return 0;
}

static int
push(StreamCheck *self, int32_t depth)
{
    if (grow((void **)&self->stack, &self->capstack, self->nstack + 1, sizeof(int32_t)) < 0)
        return -1;
    self->stack[self->nstack++] = depth;
    return 0;
}

static int
memo_store(StreamCheck *self, Py_ssize_t idx, int32_t depth)
{
    if (idx >= self->capmemo) {
        Py_ssize_t old = self->capmemo;
        if (grow((void **)&self->memo, &self->capmemo, idx + 1, sizeof(int32_t)) < 0)
            return -1;
        memset(self->memo + old, 0, (size_t)(self->capmemo - old) * sizeof(int32_t));
    }
    if (self->memo[idx] == 0)
        self->memo_len++;
    self->memo[idx] = depth;
    return 0;
}

/* Raise mason.errors.LimitError(message, offset); steals message. */
static int
raise_limit(PyObject *message, Py_ssize_t offset)
{
    if (message == NULL)
        return -1;
    PyObject *exc = PyObject_CallFunction(LimitError, "On", message, offset);
    Py_DECREF(message);
    if (exc != NULL) {
        PyErr_SetObject(LimitError, exc);
        Py_DECREF(exc);
    }
    return -1;
}

static uint64_t
read_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int
is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Parse a memo index line as Python's int(bytes) does, up to the first NUL (the engine parses
 * the line as a C string).  Returns the value, saturated at INT64_MAX, or -1 when it does not
 * parse or is negative, as StreamCheck does. */
static int64_t
parse_index(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0, end = n;
    for (Py_ssize_t k = 0; k < n; k++)
        if (s[k] == 0) { end = k; break; }
    while (i < end && is_space(s[i])) i++;
    int negative = 0;
    if (i < end && (s[i] == '+' || s[i] == '-')) {
        negative = s[i] == '-';
        i++;
    }
    int64_t value = 0;
    int digits = 0, last_underscore = 0;
    while (i < end && ((s[i] >= '0' && s[i] <= '9') || s[i] == '_')) {
        if (s[i] == '_') {
            if (!digits || last_underscore)
                return -1;
            last_underscore = 1;
        }
        else {
            int d = s[i] - '0';
            if (value > (INT64_MAX - d) / 10)
                value = INT64_MAX;
            else
                value = value * 10 + d;
            digits++;
            last_underscore = 0;
        }
        i++;
    }
    if (!digits || last_underscore)
        return -1;
    while (i < end && is_space(s[i])) i++;
    if (i != end)
        return -1;
    if (negative && value != 0)
        return -1;
    return value;
}

static int32_t
max_of(const int32_t *a, Py_ssize_t n)
{
    int32_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] > m) m = a[i];
    return m;
}

/* Apply one opcode.  Returns 0, STOP_HERE, or -1 with an exception set. */
static int
apply(StreamCheck *self, int code, int64_t value, Py_ssize_t offset)
{
    const OpInfo *op = &ops[code];
    Py_ssize_t fence = self->nmarks ? self->marks[self->nmarks - 1] : 0;
    if (op->imports)
        self->imports = 1;
    switch (op->role) {
    case ROLE_PUSH:
        return push(self, 1);
    case ROLE_BUILD:
    case ROLE_EXTEND: {
        int32_t target = 0, inner = 0;
        if (op->mark) {
            if (!self->nmarks)
                return STOP_HERE;
            Py_ssize_t height = self->marks[--self->nmarks];
            if (height > self->nstack)
                return STOP_HERE;
            Py_ssize_t count = self->nstack - height;
            inner = max_of(self->stack + height, count);
            self->nstack = height;
            if (op->role == ROLE_EXTEND) {
                Py_ssize_t outer = self->nmarks ? self->marks[self->nmarks - 1] : 0;
                if (height <= outer)
                    return STOP_HERE;
                target = self->stack[--self->nstack];
            }
            else if (count < op->pops)
                return STOP_HERE;
        }
        else {
            if (self->nstack - op->pops < fence)
                return STOP_HERE;
            Py_ssize_t base = self->nstack - op->pops;
            if (op->role == ROLE_EXTEND) {
                target = self->stack[base];
                inner = max_of(self->stack + base + 1, op->pops - 1);
            }
            else
                inner = max_of(self->stack + base, op->pops);
            self->nstack = base;
        }
        int64_t depth = (int64_t)inner + 1;
        if (target > depth)
            depth = target;
        if (depth > self->max_depth)
            return raise_limit(PyUnicode_FromFormat(
                "the pickle nests deeper than max_depth=%zd (%U at byte %zd); if this "
                "data is honest, load it with limits=mason.Limits(max_depth=...)",
                self->max_depth, op->name, offset), offset);
        return push(self, (int32_t)depth);
    }
    case ROLE_POP:
        if (self->nmarks && self->marks[self->nmarks - 1] == self->nstack)
            self->nmarks--;
        else if (self->nstack <= fence)
            return STOP_HERE;
        else
            self->nstack--;
        return 0;
    case ROLE_DUP:
    case ROLE_PUT:
    case ROLE_MEMOIZE: {
        if (self->nstack <= fence)
            return STOP_HERE;
        int32_t top = self->stack[self->nstack - 1];
        if (op->role == ROLE_DUP)
            return push(self, top);
        Py_ssize_t idx;
        if (op->role == ROLE_MEMOIZE)
            idx = self->memo_len;
        else {
            if (value > (int64_t)(self->memo_slack + self->memo_writes))
                return raise_limit(PyUnicode_FromFormat(
                    "memo index %lld at byte %zd (%U) is far beyond the %zd memo entries "
                    "written so far: an honest pickle numbers its memo 0, 1, 2, ..., so this "
                    "stream is corrupt or hostile (raise limits=mason.Limits(memo_slack=...) "
                    "only if you are sure)",
                    (long long)value, offset, op->name, self->memo_writes), offset);
            idx = (Py_ssize_t)value;
        }
        self->memo_writes++;
        return memo_store(self, idx, top);
    }
    case ROLE_MARK:
        if (grow((void **)&self->marks, &self->capmarks, self->nmarks + 1, sizeof(Py_ssize_t)) < 0)
            return -1;
        self->marks[self->nmarks++] = self->nstack;
        return 0;
    case ROLE_POP_MARK:
        if (!self->nmarks)
            return STOP_HERE;
        {
            Py_ssize_t height = self->marks[--self->nmarks];
            if (height < self->nstack)
                self->nstack = height;
        }
        return 0;
    case ROLE_GET: {
        /* An unknown index may come from an earlier load of the same Unpickler: a leaf. */
        int32_t depth = 1;
        if (value >= 0 && value < self->capmemo && self->memo[value] != 0)
            depth = self->memo[value];
        return push(self, depth);
    }
    case ROLE_PROTO:
        self->proto = (int)value;
        return 0;
    case ROLE_STOP:
        if (self->nstack <= fence)
            return STOP_HERE;
        return 0;
    default:   /* FRAME only groups opcodes */
        return 0;
    }
}

static PyObject *
result(int done, Py_ssize_t pos, PyObject *need)
{
    if (need == NULL)
        return NULL;
    return Py_BuildValue("(OnN)", done ? Py_True : Py_False, pos, need);
}

static PyObject *
StreamCheck_feed(StreamCheck *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "y*|n:feed", &view, &pos))
        return NULL;
    const unsigned char *buf = view.buf;
    const Py_ssize_t end = view.len;
    PyObject *ret = NULL;

    for (;;) {
        if (pos >= end) {
            ret = result(0, pos, PyLong_FromLong(1));
            break;
        }
        const int code = buf[pos];
        const OpInfo *op = &ops[code];
        const Py_ssize_t start = pos;
        if (!op->known) {
            self->stopped_at = start;
            ret = result(1, pos + 1, PyLong_FromLong(0));
            break;
        }
        pos++;
        int64_t value = 0;
        const Py_ssize_t left = end - pos;
        int size;
        switch (op->arg) {
        case ARG_NONE:
            break;
        case ARG_FIXED1: case ARG_FIXED2: case ARG_FIXED4: case ARG_FIXED8:
            size = op->arg == ARG_FIXED1 ? 1 : op->arg == ARG_FIXED2 ? 2 : op->arg == ARG_FIXED4 ? 4 : 8;
            if (left < size) {
                ret = result(0, start, PyLong_FromSsize_t(size - left));
                goto done;
            }
            value = (int64_t)read_le(buf + pos, size);   /* only PUT/GET/PROTO values are used */
            pos += size;
            break;
        case ARG_LEN1: case ARG_LEN4: case ARG_LEN4_SIGNED: case ARG_LEN8: {
            size = op->arg == ARG_LEN1 ? 1 : op->arg == ARG_LEN8 ? 8 : 4;
            if (left < size) {
                ret = result(0, start, PyLong_FromSsize_t(size - left));
                goto done;
            }
            uint64_t length = read_le(buf + pos, size);
            pos += size;
            if (op->arg == ARG_LEN4_SIGNED && (length & 0x80000000u)) {
                self->stopped_at = start;
                ret = result(1, pos, PyLong_FromLong(0));
                goto done;
            }
            uint64_t have = (uint64_t)(end - pos);
            if (length > have) {
                ret = result(0, start, PyLong_FromUnsignedLongLong(length - have));
                goto done;
            }
            pos += (Py_ssize_t)length;
            break;
        }
        case ARG_LINE: case ARG_LINE2: {
            const Py_ssize_t line_start = pos;
            int lines = op->arg == ARG_LINE2 ? 2 : 1;
            for (int i = 0; i < lines; i++) {
                const unsigned char *nl = memchr(buf + pos, '\n', (size_t)(end - pos));
                if (nl == NULL) {
                    ret = result(0, start, PyLong_FromLong(NEED_LINE));
                    goto done;
                }
                pos = (nl - buf) + 1;
            }
            if (op->role == ROLE_PUT || op->role == ROLE_GET) {
                value = parse_index(buf + line_start, pos - line_start);
                if (value < 0) {
                    self->stopped_at = start;
                    ret = result(1, pos, PyLong_FromLong(0));
                    goto done;
                }
            }
            break;
        }
        }
        int r = apply(self, code, value, start);
        if (r < 0)
            goto done;
        if (r == STOP_HERE) {
            self->stopped_at = start;
            ret = result(1, pos, PyLong_FromLong(0));
            break;
        }
        if (op->role == ROLE_STOP) {
            ret = result(1, pos, PyLong_FromLong(0));
            break;
        }
    }
done:
    PyBuffer_Release(&view);
    return ret;
}

static int
StreamCheck_init(StreamCheck *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_depth", "memo_slack", NULL};
    Py_ssize_t max_depth, memo_slack;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nn:StreamCheck", kwlist, &max_depth, &memo_slack))
        return -1;
    if (max_depth > INT32_MAX - 1)
        max_depth = INT32_MAX - 1;
    self->max_depth = max_depth;
    self->memo_slack = memo_slack;
    self->memo_writes = 0;
    self->proto = 0;
    self->imports = 0;
    self->stopped_at = -1;
    self->nstack = self->nmarks = 0;
    self->memo_len = 0;
    if (self->memo != NULL)
        memset(self->memo, 0, (size_t)self->capmemo * sizeof(int32_t));
    return 0;
}

static void
StreamCheck_dealloc(StreamCheck *self)
{
    PyMem_Free(self->stack);
    PyMem_Free(self->marks);
    PyMem_Free(self->memo);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
get_stopped_at(StreamCheck *self, void *closure)
{
    if (self->stopped_at < 0)
        Py_RETURN_NONE;
    return PyLong_FromSsize_t(self->stopped_at);
}

static PyObject *
get_imports(StreamCheck *self, void *closure)
{
    return PyBool_FromLong(self->imports);
}

static PyGetSetDef StreamCheck_getset[] = {
    {"stopped_at", (getter)get_stopped_at, NULL, "offset of the malformed opcode, or None", NULL},
    {"imports", (getter)get_imports, NULL, "whether the stream names a global", NULL},
    {NULL}
};

static PyMemberDef StreamCheck_members[] = {
    {"max_depth", T_PYSSIZET, offsetof(StreamCheck, max_depth), 0, NULL},
    {"memo_slack", T_PYSSIZET, offsetof(StreamCheck, memo_slack), 0, NULL},
    {"memo_writes", T_PYSSIZET, offsetof(StreamCheck, memo_writes), READONLY, NULL},
    {"proto", T_INT, offsetof(StreamCheck, proto), READONLY, NULL},
    {NULL}
};

static PyMethodDef StreamCheck_methods[] = {
    {"feed", (PyCFunction)StreamCheck_feed, METH_VARARGS,
     "feed(buf, pos=0) -> (done, pos, need); see mason.limits.StreamCheck"},
    {NULL}
};

static PyTypeObject StreamCheckType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mason._limits.StreamCheck",
    .tp_basicsize = sizeof(StreamCheck),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Compiled twin of mason.limits.StreamCheck.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)StreamCheck_init,
    .tp_dealloc = (destructor)StreamCheck_dealloc,
    .tp_methods = StreamCheck_methods,
    .tp_members = StreamCheck_members,
    .tp_getset = StreamCheck_getset,
};

static long
attr_long(PyObject *obj, const char *name)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == NULL)
        return -1;
    long r = PyLong_AsLong(v);
    Py_DECREF(v);
    return r;
}

/* Fill the per-byte tables from mason.format.opcodes.OPCODES. */
static int
load_table(void)
{
    PyObject *mod = PyImport_ImportModule("mason.format.opcodes");
    if (mod == NULL)
        return -1;
    PyObject *table = PyObject_GetAttrString(mod, "OPCODES");
    Py_DECREF(mod);
    if (table == NULL)
        return -1;
    PyObject *it = PyObject_GetIter(table);
    Py_DECREF(table);
    if (it == NULL)
        return -1;
    PyObject *entry;
    while ((entry = PyIter_Next(it)) != NULL) {
        long code = attr_long(entry, "code");
        long arg = attr_long(entry, "arg");
        long role = attr_long(entry, "role");
        long pops = attr_long(entry, "pops");
        long mark = attr_long(entry, "mark");
        long imports = attr_long(entry, "imports");
        long persistent = attr_long(entry, "persistent");
        PyObject *name = PyObject_GetAttrString(entry, "name");
        Py_DECREF(entry);
        if (PyErr_Occurred() || name == NULL || code < 0 || code > 255) {
            Py_XDECREF(name);
            Py_DECREF(it);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bad opcode table entry");
            return -1;
        }
        OpInfo *op = &ops[code];
        op->known = 1;
        op->arg = (unsigned char)arg;
        op->role = (unsigned char)role;
        op->pops = (unsigned char)pops;
        op->mark = (unsigned char)mark;
        op->imports = (unsigned char)(imports || persistent);
        Py_XSETREF(op->name, name);
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static struct PyModuleDef limits_module = {
    PyModuleDef_HEAD_INIT, "mason._limits",
    "Compiled twin of mason.limits.StreamCheck.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__limits(void)
{
    if (PyType_Ready(&StreamCheckType) < 0)
        return NULL;
    if (load_table() < 0)
        return NULL;
    PyObject *errors = PyImport_ImportModule("mason.errors");
    if (errors == NULL)
        return NULL;
    LimitError = PyObject_GetAttrString(errors, "LimitError");
    Py_DECREF(errors);
    if (LimitError == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&limits_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&StreamCheckType);
    if (PyModule_AddObject(m, "StreamCheck", (PyObject *)&StreamCheckType) < 0) {
        Py_DECREF(&StreamCheckType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
