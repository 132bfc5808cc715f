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

#include "_pickle_bytes.h"
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Must match mason.format.opcodes.Role. */
enum { ROLE_PUSH, ROLE_BUILD, ROLE_EXTEND, ROLE_POP, ROLE_DUP, ROLE_MARK, ROLE_POP_MARK,
       ROLE_PUT, ROLE_MEMOIZE, ROLE_GET, ROLE_PROTO, ROLE_FRAME, ROLE_STOP };

#define NEED_LINE (-1)



typedef struct {
    unsigned char known, arg, role, pops, mark, imports, proto, is_str;
    PyObject *name;     /* the opcode's name, for messages */
} OpInfo;

static OpInfo ops[256];

/* The light pass (see check() below) needs only how to skip each opcode's argument and
 * which few opcodes matter to it. */
enum { L_UNKNOWN, L_SKIP, L_FIXED, L_LEN, L_LEN4_SIGNED, L_LINE, L_LINE2, L_PUT_FIXED,
       L_PUT_LINE, L_PROTO, L_STOP, L_GET_LINE };
static unsigned char light[256];
/* The whole size of an opcode the light pass only skips (no argument, or a fixed-size one
 * that it does not read, and no global), else 0. */
static unsigned char step[256];
static int memoize_code = -1;
static int stop_code = -1;
/* Bytes that, at an opcode boundary, would name a global, write a memo index of more than
 * one byte, or declare a length of more than one byte (the engine allocates some of those
 * before it reads them): a short stream holding none of them anywhere needs no pass. */
static unsigned char interesting[256];
static unsigned char interesting_list[32];
static int n_interesting = 0;

/* Offset of the first interesting byte in buf[0:end], or end if none.  With SSE2 (every
 * x86-64), sixteen bytes at a time against each interesting value. */
static Py_ssize_t
first_interesting(const unsigned char *buf, Py_ssize_t end)
{
    Py_ssize_t i = 0;
#ifdef __SSE2__
    __m128i wanted[32];
    for (int k = 0; k < n_interesting; k++)
        wanted[k] = _mm_set1_epi8((char)interesting_list[k]);
    for (; i + 16 <= end; i += 16) {
        const __m128i chunk = _mm_loadu_si128((const __m128i *)(buf + i));
        __m128i hit = _mm_setzero_si128();
        for (int k = 0; k < n_interesting; k++)
            hit = _mm_or_si128(hit, _mm_cmpeq_epi8(chunk, wanted[k]));
        if (_mm_movemask_epi8(hit))
            break;
    }
#endif
    while (i < end && !interesting[buf[i]])
        i++;
    return i;
}   /* the MEMOIZE opcode, which may sit between a name and STACK_GLOBAL */
#define STEP_LEN1 0xFF   /* in step[]: a 1-byte length follows, then that many bytes */
static PyObject *LimitError;   /* mason.errors.LimitError */

typedef struct {
    PyObject_HEAD
    Py_ssize_t max_depth;
    Py_ssize_t memo_slack;
    int proto;
    int imports;
    Py_ssize_t stopped_at;          /* -1: none */
    int32_t *stack; Py_ssize_t nstack, capstack;
    Py_ssize_t *marks; Py_ssize_t nmarks, capmarks;
    int32_t *memo; Py_ssize_t capmemo;   /* depth per memo index; 0 = empty */
    Py_ssize_t memo_len;            /* entries present, for MEMOIZE */
} StreamCheck;

static inline int
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

static inline int32_t
max_of(const int32_t *a, Py_ssize_t n)
{
    int32_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] > m) m = a[i];
    return m;
}

static int
depth_error(StreamCheck *self, int code, Py_ssize_t offset)
{
    return raise_limit(PyUnicode_FromFormat(
        "the pickle nests deeper than max_depth=%zd (%U at byte %zd); if this "
        "data is honest, load it with limits=mason.Limits(max_depth=...)",
        self->max_depth, ops[code].name, offset), offset);
}

static int
memo_error(Py_ssize_t slack, int code, int64_t value, Py_ssize_t offset)
{
    return raise_limit(PyUnicode_FromFormat(
        "memo index %lld at byte %zd (%U) exceeds what a stream this long can hold (its "
        "offset plus memo_slack=%zd): an honest pickle numbers its memo 0, 1, 2, ..., so this "
        "stream is corrupt or hostile (raise limits=mason.Limits(memo_slack=...) only if "
        "you are sure)", (long long)value, offset, ops[code].name, slack), offset);
}

enum { SCAN_MORE = 0, SCAN_DONE = 1, SCAN_ERROR = -1 };

/* Check opcodes of buf[*pos:end].  On SCAN_DONE, *pos is where the engine's input must end;
 * on SCAN_MORE, *pos is the opcode that is cut off and *need how much more it needs.
 * The loop keeps the depth stack in locals (it is touched by almost every opcode) and does
 * one table lookup and one switch per opcode: this pass must cost little next to the
 * engine's own work of building every object. */
static int
scan(StreamCheck *self, const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos_io,
     int64_t *need)
{
    Py_ssize_t pos = *pos_io;
    int32_t *st = self->stack;
    Py_ssize_t n = self->nstack, cap = self->capstack;
    int imports = self->imports;
    int status = SCAN_DONE;

#define SYNC() (self->stack = st, self->nstack = n, self->capstack = cap)
#define RELOAD() (st = self->stack, n = self->nstack, cap = self->capstack)
#define PUSH(d) do { \
        if (n >= cap) { \
            SYNC(); \
            if (grow_slow((void **)&self->stack, &self->capstack, n + 1, sizeof(int32_t)) < 0) \
                goto error; \
            RELOAD(); \
        } \
        st[n++] = (d); \
    } while (0)
#define FENCE() (self->nmarks ? self->marks[self->nmarks - 1] : 0)
#define MORE(start, amount) do { *need = (amount); pos = (start); status = SCAN_MORE; goto out; } while (0)
#define STOP_AT(start) do { self->stopped_at = (start); goto out; } while (0)

    for (;;) {
        if (pos >= end)
            MORE(pos, 1);
        const int code = buf[pos];
        const Py_ssize_t start = pos++;

        const OpInfo *op = &ops[code];
        int64_t value = 0;

        /* The argument: read what the checks below use, skip the rest. */
        switch (op->arg) {
        case ARG_NONE:
            if (!op->known) {
                pos = start + 1;
                STOP_AT(start);
            }
            break;
        case ARG_FIXED1:
            if (pos >= end) MORE(start, 1);
            value = buf[pos++];
            break;
        case ARG_FIXED2: case ARG_FIXED4: case ARG_FIXED8: {
            const int size = arg_size[op->arg];
            if (end - pos < size) MORE(start, size - (end - pos));
            value = (int64_t)read_le(buf + pos, size);
            pos += size;
            break;
        }
        case ARG_LEN1: case ARG_LEN4: case ARG_LEN4_SIGNED: case ARG_LEN8: {
            const int size = arg_size[op->arg];
            if (end - pos < size) MORE(start, size - (end - pos));
            const uint64_t length = read_le(buf + pos, size);
            pos += size;
            if (op->arg == ARG_LEN4_SIGNED && (length & 0x80000000u))
                STOP_AT(start);
            const uint64_t have = (uint64_t)(end - pos);
            if (length > have) {
                const uint64_t missing = length - have;
                MORE(start, missing > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)missing);
            }
            pos += (Py_ssize_t)length;
            break;
        }
        default: {   /* ARG_LINE, ARG_LINE2 */
            const Py_ssize_t line_start = pos;
            const int lines = op->arg == ARG_LINE2 ? 2 : 1;
            for (int i = 0; i < lines; i++) {
                const unsigned char *nl = memchr(buf + pos, '\n', (size_t)(end - pos));
                if (nl == NULL)
                    MORE(start, NEED_LINE);
                pos = (nl - buf) + 1;
            }
            if (op->role == ROLE_PUT || op->role == ROLE_GET) {
                value = parse_index(buf + line_start, pos - line_start);
                if (value < 0)
                    STOP_AT(start);
            }
        }
        }

        /* The stack effect, tracking the nesting depth of each stacked object. */
        imports |= op->imports;
        switch (op->role) {
        case ROLE_PUSH:
            PUSH(1);
            break;
        case ROLE_BUILD:
        case ROLE_EXTEND: {
            int32_t target = 0, inner;
            if (op->mark) {
                if (!self->nmarks)
                    STOP_AT(start);
                const Py_ssize_t height = self->marks[--self->nmarks];
                const Py_ssize_t count = n - height;
                inner = max_of(st + height, count);
                n = height;
                if (op->role == ROLE_EXTEND) {
                    if (height <= FENCE())
                        STOP_AT(start);
                    target = st[--n];
                }
                else if (count < op->pops)
                    STOP_AT(start);
            }
            else {
                const Py_ssize_t base = n - op->pops;
                if (base < FENCE())
                    STOP_AT(start);
                if (op->role == ROLE_EXTEND) {
                    target = st[base];
                    inner = max_of(st + base + 1, op->pops - 1);
                }
                else
                    inner = max_of(st + base, op->pops);
                n = base;
            }
            int64_t depth = (int64_t)inner + 1;
            if (target > depth)
                depth = target;
            if (depth > self->max_depth) {
                depth_error(self, code, start);
                goto error;
            }
            PUSH((int32_t)depth);
            break;
        }
        case ROLE_POP:
            if (self->nmarks && self->marks[self->nmarks - 1] == n)
                self->nmarks--;
            else if (n <= FENCE())
                STOP_AT(start);
            else
                n--;
            break;
        case ROLE_DUP:
            if (n <= FENCE())
                STOP_AT(start);
            {
                const int32_t top = st[n - 1];
                PUSH(top);
            }
            break;
        case ROLE_PUT:
        case ROLE_MEMOIZE: {
            if (n <= FENCE())
                STOP_AT(start);
            Py_ssize_t idx;
            if (op->role == ROLE_MEMOIZE)
                idx = self->memo_len;
            else {
                if (value > (int64_t)(self->memo_slack + start)) {
                    memo_error(self->memo_slack, code, value, start);
                    goto error;
                }
                idx = (Py_ssize_t)value;
            }
            if (memo_store(self, idx, st[n - 1]) < 0)
                goto error;
            break;
        }
        case ROLE_MARK:
            if (grow((void **)&self->marks, &self->capmarks, self->nmarks + 1, sizeof(Py_ssize_t)) < 0)
                goto error;
            self->marks[self->nmarks++] = n;
            break;
        case ROLE_POP_MARK:
            if (!self->nmarks)
                STOP_AT(start);
            {
                const Py_ssize_t height = self->marks[--self->nmarks];
                if (height < n)
                    n = height;
            }
            break;
        case ROLE_GET: {
            /* An unknown index may come from an earlier load of the same Unpickler: a leaf. */
            int32_t depth = 1;
            if (value >= 0 && value < self->capmemo && self->memo[value] != 0)
                depth = self->memo[value];
            PUSH(depth);
            break;
        }
        case ROLE_PROTO:
            self->proto = (int)value;
            break;
        case ROLE_STOP:
            if (n <= FENCE())
                STOP_AT(start);
            goto out;
        default:   /* FRAME only groups opcodes */
            break;
        }
    }
out:
    SYNC();
    self->imports = imports;
    *pos_io = pos;
    return status;
error:
    SYNC();
    self->imports = imports;
    return SCAN_ERROR;
#undef SYNC
#undef RELOAD
#undef PUSH
#undef FENCE
#undef MORE
#undef STOP_AT
}

static PyObject *
StreamCheck_feed(StreamCheck *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "y*|n:feed", &view, &pos))
        return NULL;
    int64_t need = 0;
    int status = SCAN_DONE;
    if (pos < 0 || pos > view.len) {
        PyErr_SetString(PyExc_ValueError, "feed position outside the buffer");
        status = SCAN_ERROR;
    }
    else
        status = scan(self, view.buf, view.len, &pos, &need);
    PyBuffer_Release(&view);
    if (status == SCAN_ERROR)
        return NULL;
    return Py_BuildValue("(OnL)", status == SCAN_DONE ? Py_True : Py_False, pos,
                         (long long)need);
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
        long proto = attr_long(entry, "proto");
        long is_str = attr_long(entry, "pushes_str");
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
        op->proto = (unsigned char)proto;
        op->is_str = (unsigned char)is_str;
        Py_XSETREF(op->name, name);
        if (op->role == ROLE_MEMOIZE)
            memoize_code = (int)code;
        if (op->role == ROLE_STOP)
            stop_code = (int)code;
        interesting[code] = op->imports || (op->role == ROLE_PUT && op->arg != ARG_FIXED1)
                            || op->arg == ARG_LEN4 || op->arg == ARG_LEN4_SIGNED || op->arg == ARG_LEN8;
        if (interesting[code] && n_interesting < 32)
            interesting_list[n_interesting++] = (unsigned char)code;
        if (op->role == ROLE_PUT)
            light[code] = op->arg >= ARG_LINE ? L_PUT_LINE : L_PUT_FIXED;
        else if (op->role == ROLE_GET && op->arg >= ARG_LINE)
            light[code] = L_GET_LINE;
        else if (op->role == ROLE_PROTO)
            light[code] = L_PROTO;
        else if (op->role == ROLE_STOP)
            light[code] = L_STOP;
        else if (op->arg == ARG_NONE)
            light[code] = L_SKIP;
        else if (op->arg <= ARG_FIXED8)
            light[code] = L_FIXED;
        else if (op->arg == ARG_LEN4_SIGNED)
            light[code] = L_LEN4_SIGNED;
        else if (op->arg <= ARG_LEN8)
            light[code] = L_LEN;
        else
            light[code] = op->arg == ARG_LINE2 ? L_LINE2 : L_LINE;
        if ((light[code] == L_SKIP || light[code] == L_FIXED) && !op->imports)
            step[code] = (unsigned char)(1 + arg_size[op->arg]);
        else if (op->arg == ARG_LEN1 && !op->imports)
            step[code] = STEP_LEN1;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}


/* check(data, max_depth, memo_slack) -> packed int, or None when data ends inside the pickle.
 * Same contract as mason.limits.check; see there.  The light pass is the hot path of every
 * safe load of a small pickle, so the usual opcode (no argument, or a fixed-size one the pass
 * does not look at) costs one table lookup: step[code] is its whole size. */
static Py_ssize_t
pack(Py_ssize_t end, int proto, int imports, int stopped)
{
    return (end << 10) | ((Py_ssize_t)(proto & 0xff) << 2) | (imports << 1) | stopped;
}

static PyObject *
decoded_pair(const unsigned char *module, Py_ssize_t module_len, const unsigned char *name,
             Py_ssize_t name_len, const char *errors)
{
    PyObject *first = PyUnicode_DecodeUTF8((const char *)module, module_len, errors);
    if (first == NULL)
        return NULL;
    PyObject *second = PyUnicode_DecodeUTF8((const char *)name, name_len, errors);
    if (second == NULL) {
        Py_DECREF(first);
        return NULL;
    }
    return Py_BuildValue("(NN)", first, second);
}

/* For the light pass: append the names of the global op at ``start`` to ``names``, or
 * return 1 when they cannot be read off the stream.  GLOBAL
 * carries them inline; a pickler writes STACK_GLOBAL right after two 1-byte-length str
 * literals, each maybe followed by MEMOIZE, and that exact shape is all we accept.
 * Returns -1 on a Python error. */
static int
light_name(PyObject *names, const unsigned char *buf, Py_ssize_t end, Py_ssize_t start,
           Py_ssize_t last_len1, Py_ssize_t prev_len1)
{
    const OpInfo *op = &ops[buf[start]];
    PyObject *pair = NULL;
    if (op->arg == ARG_LINE2 && op->role == ROLE_PUSH) {   /* GLOBAL */
        const unsigned char *nl1 = memchr(buf + start + 1, '\n', (size_t)(end - start - 1));
        const unsigned char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(buf + end - nl1 - 1)) : NULL;
        if (nl2 != NULL)
            pair = decoded_pair(buf + start + 1, nl1 - (buf + start + 1), nl1 + 1, nl2 - nl1 - 1,
                                "strict");
    }
    else if (op->arg == ARG_NONE && op->pops == 2 && prev_len1 >= 0) {   /* STACK_GLOBAL */
        const Py_ssize_t a = prev_len1, b = last_len1;
        const Py_ssize_t ea = a + 2 + buf[a + 1], eb = b + 2 + buf[b + 1];
        if (ops[buf[a]].is_str && ops[buf[b]].is_str
            && (b == ea || (b == ea + 1 && buf[ea] == memoize_code))
            && (start == eb || (start == eb + 1 && buf[eb] == memoize_code)))
            pair = decoded_pair(buf + a + 2, buf[a + 1], buf + b + 2, buf[b + 1], "surrogatepass");
    }
    if (pair == NULL) {
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return -1;
        PyErr_Clear();
        return 1;   /* unreadable: the caller gives up on names */
    }
    int failed = PyList_Append(names, pair);
    Py_DECREF(pair);
    return failed ? -1 : 0;
}

static PyObject *
check(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "check(data, max_depth, memo_slack)");
        return NULL;
    }
    Py_ssize_t max_depth = PyLong_AsSsize_t(args[1]);
    Py_ssize_t memo_slack = PyLong_AsSsize_t(args[2]);
    if ((max_depth == -1 || memo_slack == -1) && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = view.buf;
    const Py_ssize_t end = view.len;
    Py_ssize_t pos = 0;
    int imports = 0, proto = 0;
    PyObject *ret = NULL;
    /* The names of the globals, read as the pass goes (see light_name()); None once one
     * cannot be read off the stream. */
    PyObject *names = NULL;
    Py_ssize_t last_len1 = -1, prev_len1 = -1;   /* where the last two 1-byte-length ops start */

    if (end > max_depth) {
        StreamCheck full;
        memset(&full, 0, sizeof full);
        full.max_depth = max_depth > INT32_MAX - 1 ? INT32_MAX - 1 : max_depth;
        full.memo_slack = memo_slack;
        full.stopped_at = -1;
        int64_t need = 0;
        int status = scan(&full, buf, end, &pos, &need);
        PyMem_Free(full.stack);
        PyMem_Free(full.marks);
        PyMem_Free(full.memo);
        if (status == SCAN_DONE)
            ret = PyLong_FromSsize_t(pack(pos, full.proto, full.imports, full.stopped_at >= 0));
        else if (status == SCAN_MORE)
            ret = Py_NewRef(Py_None);
        goto done;
    }

    {
        /* The byte filter: independent loads, no chain from one opcode to the next, so it
         * runs several times faster than the pass below on the streams it clears.  Only for
         * data that ends as a whole pickle does: a cut-off stream gets the pass, which says
         * where it was cut, as a load from a file does. */
        if (end > 0 && buf[end - 1] == stop_code && first_interesting(buf, end) == end) {
            ret = PyLong_FromSsize_t(pack(end, 0, 0, 0));
            goto done;
        }
    }
    for (;;) {
        if (pos >= end)
            goto incomplete;
        const int code = buf[pos];
        const int skip = step[code];
        if (skip) {
            /* A 1-byte-length string is the other common opcode; a length that runs past
             * the end leaves pos past it, which reads as incomplete above. */
            if (skip != STEP_LEN1)
                pos += skip;
            else {
                prev_len1 = last_len1;
                last_len1 = pos;
                pos += pos + 1 < end ? 2 + buf[pos + 1] : 2;
            }
            continue;
        }
        const Py_ssize_t start = pos++;
        if (ops[code].imports) {
            imports = 1;
            if (names == NULL && (names = PyList_New(0)) == NULL)
                goto done;
            if (names != Py_None) {
                const int r = light_name(names, buf, end, start, last_len1, prev_len1);
                if (r < 0)
                    goto done;
                if (r > 0)
                    Py_SETREF(names, Py_NewRef(Py_None));
            }
        }
        switch (light[code]) {
        case L_LEN: {
            const int size = arg_size[ops[code].arg];
            if (end - pos < size)
                goto incomplete;
            const uint64_t length = read_le(buf + pos, size);
            pos += size;
            if (length > (uint64_t)(end - pos))
                goto incomplete;
            pos += (Py_ssize_t)length;
            continue;
        }
        case L_LEN4_SIGNED: {
            if (end - pos < 4)
                goto incomplete;
            const uint64_t length = read_le(buf + pos, 4);
            pos += 4;
            if (length & 0x80000000u) {
                ret = PyLong_FromSsize_t(pack(pos, proto, imports, 1));
                goto done;
            }
            if (length > (uint64_t)(end - pos))
                goto incomplete;
            pos += (Py_ssize_t)length;
            continue;
        }
        case L_PUT_FIXED:
        case L_PROTO:
        case L_FIXED: {
            const int size = arg_size[ops[code].arg];
            if (end - pos < size)
                goto incomplete;
            const int64_t value = (int64_t)read_le(buf + pos, size);
            pos += size;
            if (light[code] == L_PROTO)
                proto = (int)value;
            else if (light[code] == L_PUT_FIXED && value > (int64_t)(memo_slack + start)) {
                memo_error(memo_slack, code, value, start);
                goto done;
            }
            continue;
        }
        case L_SKIP:
            continue;
        case L_STOP:
            ret = PyLong_FromSsize_t(pack(pos, proto, imports, 0));
            goto finished;
        case L_UNKNOWN:
            ret = PyLong_FromSsize_t(pack(pos, proto, imports, 1));
            goto finished;
        default: {   /* L_LINE, L_LINE2, L_GET_LINE, L_PUT_LINE */
            const Py_ssize_t line_start = pos;
            for (int i = light[code] == L_LINE2 ? 2 : 1; i > 0; i--) {
                const unsigned char *nl = memchr(buf + pos, '\n', (size_t)(end - pos));
                if (nl == NULL)
                    goto incomplete;
                pos = (nl - buf) + 1;
            }
            if (light[code] == L_GET_LINE || light[code] == L_PUT_LINE) {
                const int64_t value = parse_index(buf + line_start, pos - line_start);
                if (value < 0) {
                    ret = PyLong_FromSsize_t(pack(pos, proto, imports, 1));
                    goto done;
                }
                if (light[code] == L_PUT_LINE && value > (int64_t)(memo_slack + start)) {
                    memo_error(memo_slack, code, value, start);
                    goto done;
                }
            }
            continue;
        }
        }
    }
incomplete:
    ret = Py_NewRef(Py_None);
done:
    Py_XDECREF(names);
    PyBuffer_Release(&view);
    return ret;
finished:
    /* A stream that names globals gets (packed, names), names a tuple (hashable, so a
     * caller may remember its verdict on them): the caller need not read again. */
    if (ret != NULL && names != NULL) {
        if (names != Py_None) {
            PyObject *frozen = PyList_AsTuple(names);
            if (frozen == NULL) {
                Py_CLEAR(ret);
                goto done;
            }
            Py_SETREF(names, frozen);
        }
        ret = Py_BuildValue("(NO)", ret, names);   /* N: the tuple takes ret's reference */
    }
    goto done;
}


/* global_names(data) -> list of (module, name), or None: see mason.limits.global_names. */
static PyObject *
global_names(PyObject *module, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = view.buf;
    const Py_ssize_t end = view.len;
    Py_ssize_t pos = 0;
    /* The last two stack pushes, if they were str literals: offset and length of the text. */
    Py_ssize_t s1 = -1, n1 = 0, s2 = -1, n2 = 0;
    PyObject *names = PyList_New(0);
    if (names == NULL)
        goto fail;
    for (;;) {
        if (pos >= end)
            goto unknown;
        const int code = buf[pos];
        const OpInfo *op = &ops[code];
        /* The common opcodes first, as in check(): short str literals, and plain pushes. */
        if (step[code] == STEP_LEN1 && op->is_str) {
            if (pos + 1 >= end)
                goto unknown;
            s2 = s1; n2 = n1;
            s1 = pos + 2;
            n1 = buf[pos + 1];
            pos += 2 + n1;
            continue;
        }
        if (step[code] && step[code] != STEP_LEN1 && op->role != ROLE_PUT
                && op->role != ROLE_MEMOIZE && op->role != ROLE_FRAME && op->role != ROLE_PROTO) {
            s1 = s2 = -1;
            pos += step[code];
            continue;
        }
        if (!op->known)
            goto unknown;
        pos++;
        Py_ssize_t arg_start = pos, arg_len = 0;
        switch (op->arg) {
        case ARG_NONE:
            break;
        case ARG_FIXED1: case ARG_FIXED2: case ARG_FIXED4: case ARG_FIXED8:
            pos += arg_size[op->arg];
            break;
        case ARG_LEN1: case ARG_LEN4: case ARG_LEN4_SIGNED: case ARG_LEN8: {
            const int size = arg_size[op->arg];
            if (end - pos < size)
                goto unknown;
            const uint64_t length = read_le(buf + pos, size);
            pos += size;
            if (length > (uint64_t)(end - pos))
                goto unknown;
            arg_start = pos;
            arg_len = (Py_ssize_t)length;
            pos += arg_len;
            break;
        }
        default: {
            for (int i = op->arg == ARG_LINE2 ? 2 : 1; i > 0; i--) {
                const unsigned char *nl = memchr(buf + pos, '\n', (size_t)(end - pos));
                if (nl == NULL)
                    goto unknown;
                pos = (nl - buf) + 1;
            }
            arg_len = pos - arg_start;
        }
        }
        if (pos > end)
            goto unknown;
        if (op->role == ROLE_STOP)
            break;
        if (op->role == ROLE_PUT || op->role == ROLE_MEMOIZE || op->role == ROLE_FRAME
            || op->role == ROLE_PROTO)
            continue;   /* they leave the stack as it is */
        if (op->imports) {
            PyObject *pair;
            if (op->arg == ARG_LINE2 && op->role == ROLE_PUSH) {   /* GLOBAL */
                const unsigned char *nl = memchr(buf + arg_start, '\n', (size_t)arg_len);
                const Py_ssize_t mlen = nl - (buf + arg_start);
                pair = Py_BuildValue("(NN)",
                    PyUnicode_DecodeUTF8((const char *)buf + arg_start, mlen, "strict"),
                    PyUnicode_DecodeUTF8((const char *)nl + 1, arg_len - mlen - 2, "strict"));
            }
            else if (op->arg == ARG_NONE && op->pops == 2 && s1 >= 0 && s2 >= 0) {   /* STACK_GLOBAL */
                pair = Py_BuildValue("(NN)",
                    PyUnicode_DecodeUTF8((const char *)buf + s2, n2, "surrogatepass"),
                    PyUnicode_DecodeUTF8((const char *)buf + s1, n1, "surrogatepass"));
            }
            else
                goto unknown;   /* INST, EXT*, persistent ids, names built at run time */
            if (pair == NULL) {
                PyErr_Clear();
                goto unknown;
            }
            int failed = PyList_Append(names, pair);
            Py_DECREF(pair);
            if (failed)
                goto fail;
            s1 = s2 = -1;
            continue;
        }
        /* Any other opcode changes the stack: remember it only if it pushed a str literal. */
        s2 = s1; n2 = n1;
        if (op->role == ROLE_PUSH && op->arg >= ARG_LEN1 && op->arg <= ARG_LEN8
            && op->arg != ARG_LEN4_SIGNED && op->proto >= 1 && op->is_str) {
            s1 = arg_start;
            n1 = arg_len;
        }
        else
            s1 = s2 = -1;
    }
    PyBuffer_Release(&view);
    return names;
unknown:
    PyBuffer_Release(&view);
    Py_XDECREF(names);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(names);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"global_names", (PyCFunction)global_names, METH_O,
     "global_names(data): see mason.limits.global_names"},
    {"check", (PyCFunction)(void (*)(void))check, METH_FASTCALL,
     "check(data, max_depth, memo_slack): see mason.limits.check"},
    {NULL}
};

static struct PyModuleDef limits_module = {
    PyModuleDef_HEAD_INIT, "mason._limits",
    "Compiled twin of mason.limits: StreamCheck and check.", -1, module_methods,
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
