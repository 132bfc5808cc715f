/* mason._scan: the compiled twin of mason.analysis._survey.survey.
 *
 * Same interface, same results, on every input: the tests run both on the corpus of hostile
 * and benign pickles and on random mutations of them, and compare.  What each opcode does is
 * not written here: at import, the module reads mason.analysis._survey.ACTIONS (one action per
 * opcode byte, derived from mason.format.opcodes) and the opcode table's argument layouts, so
 * the opcode table stays the one place that knows the opcodes.  See _survey.py for the model:
 * a stack and memo of small tagged values (str, int, None, bools, globals, tuples of those,
 * "something else"), and a give-up (FALLBACK) wherever the symbolic machine must decide.
 *
 * Memory is bounded by the input: the stack, marks and tuple arena grow by at most one entry
 * per opcode or per stacked item consumed, and the memo by MEMO_SLACK past the offset.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_pickle_bytes.h"


/* Must match the A_* numbers of mason.analysis._survey (checked at import by name). */
enum { A_FALLBACK, A_PUSH_OTHER, A_PUSH_STR, A_PUSH_INT, A_PUSH_LONG1, A_PUSH_NONE,
       A_PUSH_TRUE, A_PUSH_FALSE, A_PUSH_EMPTY_TUPLE, A_GLOBAL, A_NEXT_BUFFER, A_TUPLE,
       A_STACK_GLOBAL, A_CALL, A_OBJ, A_INST, A_DICT, A_BUILD_OTHER, A_BINPERSID, A_EXTEND,
       A_SETITEMS, A_POP, A_DUP, A_MARK, A_POP_MARK, A_PUT, A_MEMOIZE, A_GET, A_PROTO,
       A_FRAME, A_STOP, A_COUNT };
static const char *action_names[A_COUNT] = {
    "A_FALLBACK", "A_PUSH_OTHER", "A_PUSH_STR", "A_PUSH_INT", "A_PUSH_LONG1", "A_PUSH_NONE",
    "A_PUSH_TRUE", "A_PUSH_FALSE", "A_PUSH_EMPTY_TUPLE", "A_GLOBAL", "A_NEXT_BUFFER",
    "A_TUPLE", "A_STACK_GLOBAL", "A_CALL", "A_OBJ", "A_INST", "A_DICT", "A_BUILD_OTHER",
    "A_BINPERSID", "A_EXTEND", "A_SETITEMS", "A_POP", "A_DUP", "A_MARK", "A_POP_MARK",
    "A_PUT", "A_MEMOIZE", "A_GET", "A_PROTO", "A_FRAME", "A_STOP"};

typedef struct {
    unsigned char known, arg, action, pops, mark, signed_int, is_build;
    PyObject *name;   /* the opcode's name: str */
} OpInfo;
static OpInfo ops[256];

/* Model values: 16 bytes.  The kind sits in the top byte of b; STR keeps its payload kind
 * (the width of its length field: 1, 4 or 8) in the next byte and its length below. */
enum { K_OTHER, K_STR, K_INT, K_NONE, K_TRUE, K_FALSE, K_GLOB, K_TUP, K_PID, K_CALL0,
       K_EMPTY = 0xFF };
typedef struct { int64_t a; uint64_t b; } Entry;
#define KIND(e) ((int)((e).b >> 56))
#define LOW(e) ((e).b & (((uint64_t)1 << 48) - 1))
#define PKIND(e) ((int)(((e).b >> 48) & 0xff))
static inline Entry make(int kind, int64_t a, uint64_t low) {
    Entry e; e.a = a; e.b = ((uint64_t)kind << 56) | low; return e;
}

static long LARGE, MEMO_SLACK, MAX_VALUE_DEPTH, VALUE_BUDGET, HIGHEST_PROTOCOL;
static PyObject *OPAQUE, *GlobalRef, *PidRef, *EmptyCall, *Payload, *payload_kinds[9];

typedef struct {
    const unsigned char *buf;
    Py_ssize_t n, start;
    Entry *stack; Py_ssize_t nstack, capstack;
    Py_ssize_t *marks; Py_ssize_t nmarks, capmarks;
    Entry *arena; Py_ssize_t narena, caparena;
    /* memo: one entry per index; the kind K_EMPTY marks an index never written */
    Entry *memo; Py_ssize_t capmemo;
    Py_ssize_t memo_len;
    long budget;
    int tuples;   /* model tuples (keep their items): from the first watched global on */
    /* calls of a global with no arguments: its index, and whether steps were applied */
    int64_t *call_global; unsigned char *call_modified; Py_ssize_t ncalls, capcalls,
        capmodified;
    PyObject *globals, *calls, *persistent, *watch;
} Survey;

/* Return codes of the helpers: OK, GIVE_UP (the stream needs the machine), ERROR (Python
 * exception set: out of memory). */
enum { OK = 0, GIVE_UP = 1, ERROR = -1 };

/* Decode UTF-8 as the decoder does ("surrogatepass"); NULL with no exception set when the
 * bytes are not such UTF-8. */
static PyObject *
utf8(const unsigned char *p, Py_ssize_t len, const char *errors)
{
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, len, errors);
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();
    return s;
}

/* Whether the bytes are valid UTF-8 with surrogates allowed: ASCII is checked here, the rest
 * by the codec (rare in pickles' short strings). 1 yes, 0 no, -1 error. */
static int
valid_utf8(const unsigned char *p, Py_ssize_t len)
{
    Py_ssize_t i = 0;
    for (; i < len; i++)
        if (p[i] & 0x80)
            break;
    if (i == len)
        return 1;
    PyObject *s = utf8(p, len, "surrogatepass");
    if (s == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_DECREF(s);
    return 1;
}

/* A model value as a Python value; NULL with no exception set means give up. */
static PyObject *
value(Survey *s, Entry e, int depth)
{
    if (--s->budget < 0 || depth > MAX_VALUE_DEPTH)
        return NULL;
    switch (KIND(e)) {
    case K_STR: {
        uint64_t len = LOW(e);
        if (len > (uint64_t)LARGE)
            return PyObject_CallFunction(Payload, "LKO", (long long)e.a,
                                         (unsigned long long)len, payload_kinds[PKIND(e)]);
        return utf8(s->buf + e.a, (Py_ssize_t)len, "surrogatepass");
    }
    case K_INT:
        return PyLong_FromLongLong(e.a);
    case K_NONE:
        Py_RETURN_NONE;
    case K_TRUE:
        Py_RETURN_TRUE;
    case K_FALSE:
        Py_RETURN_FALSE;
    case K_GLOB:
    case K_PID: {
        PyObject *i = PyLong_FromLongLong(e.a);
        if (i == NULL)
            return NULL;
        PyObject *r = PyObject_CallOneArg(KIND(e) == K_GLOB ? GlobalRef : PidRef, i);
        Py_DECREF(i);
        return r;
    }
    case K_CALL0:
        return PyObject_CallFunction(EmptyCall, "Li", (long long)s->call_global[e.a],
                                     (int)s->call_modified[e.a]);
    case K_TUP: {
        Py_ssize_t count = (Py_ssize_t)LOW(e);
        PyObject *t = PyTuple_New(count);
        if (t == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *item = value(s, s->arena[e.a + i], depth + 1);
            if (item == NULL) {
                Py_DECREF(t);
                return NULL;
            }
            PyTuple_SET_ITEM(t, i, item);
        }
        return t;
    }
    default:
        return Py_NewRef(OPAQUE);
    }
}

static inline Py_ssize_t
fence(Survey *s)
{
    return s->nmarks ? s->marks[s->nmarks - 1] : 0;
}

static inline int
push(Survey *s, Entry e)
{
    if (s->nstack >= s->capstack
        && grow((void **)&s->stack, &s->capstack, s->nstack + 1, sizeof(Entry)) < 0)
        return ERROR;
    s->stack[s->nstack++] = e;
    return OK;
}

/* Pop the operands of an opcode of the BUILD role: *base is where they start on the stack
 * (they stay there, above the new height, until the next push overwrites them). */
static int
operands(Survey *s, const OpInfo *op, Py_ssize_t *base, Py_ssize_t *count)
{
    if (op->mark) {
        if (!s->nmarks)
            return GIVE_UP;
        Py_ssize_t height = s->marks[--s->nmarks];
        *base = height;
        *count = s->nstack - height;
        if (*count < op->pops)
            return GIVE_UP;
        s->nstack = height;
        return OK;
    }
    if (s->nstack - op->pops < fence(s))
        return GIVE_UP;
    *base = s->nstack - op->pops;
    *count = op->pops;
    s->nstack = *base;
    return OK;
}

/* Copy count stack entries from base into the arena as a tuple value. */
static int
make_tuple(Survey *s, Py_ssize_t base, Py_ssize_t count, Entry *out)
{
    if (grow((void **)&s->arena, &s->caparena, s->narena + count, sizeof(Entry)) < 0)
        return ERROR;
    memcpy(s->arena + s->narena, s->stack + base, (size_t)count * sizeof(Entry));
    *out = make(K_TUP, s->narena, (uint64_t)count);
    s->narena += count;
    return OK;
}

static int
add_global(Survey *s, PyObject *module, PyObject *name, Py_ssize_t offset, const OpInfo *op,
           Entry *out)
{
    /* steals module and name */
    if (module == NULL || name == NULL) {
        Py_XDECREF(module);
        Py_XDECREF(name);
        return PyErr_Occurred() ? ERROR : GIVE_UP;
    }
    PyObject *item = Py_BuildValue("(NNnO)", module, name, offset, op->name);
    if (item == NULL)
        return ERROR;
    int failed = PyList_Append(s->globals, item);
    if (!failed && !s->tuples && s->watch != NULL) {
        PyObject *key = PyTuple_GetSlice(item, 0, 2);
        int watched = key ? PySet_Contains(s->watch, key) : -1;
        Py_XDECREF(key);
        if (watched < 0)
            failed = 1;
        else if (watched)
            s->tuples = 1;
    }
    Py_DECREF(item);
    if (failed)
        return ERROR;
    *out = make(K_GLOB, PyList_GET_SIZE(s->globals) - 1, 0);
    return OK;
}

/* A GLOBAL / INST argument: two lines, each decoded as strict UTF-8. */
static int
inline_global(Survey *s, Py_ssize_t arg_at, Py_ssize_t arg_end, Py_ssize_t offset,
              const OpInfo *op, Entry *out)
{
    const unsigned char *nl = memchr(s->buf + arg_at, '\n', (size_t)(arg_end - arg_at));
    Py_ssize_t mlen = nl - (s->buf + arg_at);
    return add_global(s, utf8(s->buf + arg_at, mlen, "strict"),
                      utf8(nl + 1, arg_end - arg_at - mlen - 2, "strict"), offset, op, out);
}

/* Whether func is a global of the watch set: 1 yes, 0 no, -1 error. */
static int
watched(Survey *s, Entry func)
{
    if (KIND(func) != K_GLOB || s->watch == NULL)
        return 0;
    PyObject *g = PyList_GET_ITEM(s->globals, func.a);
    PyObject *key = PyTuple_GetSlice(g, 0, 2);
    if (key == NULL)
        return -1;
    int found = PySet_Contains(s->watch, key);
    Py_DECREF(key);
    return found;
}

static int
record_call(Survey *s, Entry func, Entry args, Entry *kwargs, Py_ssize_t offset,
            const OpInfo *op)
{
    int w = watched(s, func);
    if (w <= 0)
        return w;
    PyObject *a = value(s, args, 0);
    if (a == NULL)
        return PyErr_Occurred() ? ERROR : GIVE_UP;
    PyObject *k;
    if (kwargs == NULL)
        k = Py_NewRef(Py_None);
    else if ((k = value(s, *kwargs, 0)) == NULL) {
        Py_DECREF(a);
        return PyErr_Occurred() ? ERROR : GIVE_UP;
    }
    PyObject *item = Py_BuildValue("(LnONN)", (long long)func.a, offset, op->name, a, k);
    if (item == NULL)
        return ERROR;
    int failed = PyList_Append(s->calls, item);
    Py_DECREF(item);
    return failed ? ERROR : OK;
}

static int
memo_set(Survey *s, Py_ssize_t offset, int64_t index, Entry e)
{
    if (index > (int64_t)(offset - s->start) + MEMO_SLACK)
        return GIVE_UP;
    if (index >= s->capmemo) {
        Py_ssize_t old = s->capmemo;
        if (grow((void **)&s->memo, &s->capmemo, (Py_ssize_t)index + 1, sizeof(Entry)) < 0)
            return ERROR;
        memset(s->memo + old, 0xFF, (size_t)(s->capmemo - old) * sizeof(Entry));
    }
    if (KIND(s->memo[index]) == K_EMPTY)
        s->memo_len++;
    s->memo[index] = e;
    return OK;
}

/* Digits only, at most 18 of them, as the reference accepts a text memo index. */
static int64_t
parse_digits(const unsigned char *p, Py_ssize_t len)
{
    if (len < 1 || len > 18)
        return -1;
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static PyObject *
survey(PyObject *module, PyObject *args)
{
    PyObject *data, *watch = NULL;
    Py_ssize_t start = 0;
    int keep_tuples = 0;
    if (!PyArg_ParseTuple(args, "O|nOp:survey", &data, &start, &watch, &keep_tuples))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || start > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start lies outside the data");
        return NULL;
    }
    Survey s;
    memset(&s, 0, sizeof s);
    s.buf = view.buf;
    s.n = view.len;
    s.start = start;
    s.budget = VALUE_BUDGET;
    s.tuples = keep_tuples;
    s.watch = (watch != NULL && PyAnySet_Check(watch)) ? watch : NULL;
    if (watch != NULL && s.watch == NULL && watch != Py_None) {
        /* any iterable of pairs: make it a frozenset */
        s.watch = PyFrozenSet_New(watch);
        if (s.watch == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    else
        Py_XINCREF(s.watch);
    s.globals = PyList_New(0);
    s.calls = PyList_New(0);
    s.persistent = PyList_New(0);
    PyObject *result = NULL;
    if (s.globals == NULL || s.calls == NULL || s.persistent == NULL)
        goto done;

    const unsigned char *buf = s.buf;
    const Py_ssize_t n = s.n;
    Py_ssize_t pos = start, offset = start;
    long proto = 0, buffers = 0;
    int status = 1;   /* FALLBACK until STOP */
    int rc = OK;

#define GIVE(x) do { rc = (x); if (rc != OK) goto stop; } while (0)
#define GIVE_UP_NOW() do { rc = GIVE_UP; goto stop; } while (0)

    for (;;) {
        offset = pos;
        if (pos >= n)
            GIVE_UP_NOW();
        const int code = buf[pos];
        const OpInfo *op = &ops[code];
        const int action = op->action;
        if (!op->known || action == A_FALLBACK)
            GIVE_UP_NOW();
        pos++;
        int64_t number = 0;
        Py_ssize_t text_at = 0, text_len = 0, arg_at = pos;

        switch (op->arg) {
        case ARG_NONE:
            break;
        case ARG_FIXED1: case ARG_FIXED2: case ARG_FIXED4: case ARG_FIXED8: {
            const int size = arg_size[op->arg];
            if (n - pos < size)
                GIVE_UP_NOW();
            uint64_t raw = read_le(buf + pos, size);
            number = op->signed_int ? (int64_t)(int32_t)(uint32_t)raw : (int64_t)raw;
            pos += size;
            if (action == A_FRAME && (uint64_t)raw > (uint64_t)(n - pos))
                GIVE_UP_NOW();
            break;
        }
        case ARG_LEN1: case ARG_LEN4: case ARG_LEN4_SIGNED: case ARG_LEN8: {
            const int size = arg_size[op->arg];
            if (n - pos < size)
                GIVE_UP_NOW();
            uint64_t length = read_le(buf + pos, size);
            pos += size;
            if (op->arg == ARG_LEN4_SIGNED && (length & 0x80000000u))
                GIVE_UP_NOW();
            if (length > (uint64_t)(n - pos))
                GIVE_UP_NOW();
            text_at = pos;
            text_len = (Py_ssize_t)length;
            pos += text_len;
            if (action == A_PUSH_STR && length <= (uint64_t)LARGE) {
                int ok = valid_utf8(buf + text_at, text_len);
                if (ok < 0)
                    GIVE(ERROR);
                if (!ok)
                    GIVE_UP_NOW();
            }
            break;
        }
        default: {   /* ARG_LINE, ARG_LINE2 */
            const int lines = op->arg == ARG_LINE2 ? 2 : 1;
            for (int i = 0; i < lines; i++) {
                const unsigned char *nl = memchr(buf + pos, '\n', (size_t)(n - pos));
                if (nl == NULL)
                    GIVE_UP_NOW();
                if (i == 0)
                    text_len = (nl - buf) - pos;
                pos = (nl - buf) + 1;
            }
            if (action == A_PUT || action == A_GET) {
                number = parse_digits(buf + arg_at, text_len);
                if (number < 0)
                    GIVE_UP_NOW();
            }
        }
        }

        Py_ssize_t base = 0, count = 0;
        Entry e;
        switch (action) {
        case A_PUSH_OTHER:
            GIVE(push(&s, make(K_OTHER, 0, 0)));
            break;
        case A_PUSH_STR:
            GIVE(push(&s, make(K_STR, text_at,
                               ((uint64_t)arg_size[op->arg] << 48) | (uint64_t)text_len)));
            break;
        case A_PUSH_INT:
            GIVE(push(&s, make(K_INT, number, 0)));
            break;
        case A_PUSH_LONG1:
            if (text_len <= 8) {
                int64_t v = 0;
                if (text_len > 0) {
                    uint64_t raw = read_le(buf + text_at, (int)text_len);
                    if (text_len < 8 && (raw >> (8 * text_len - 1)) & 1)
                        raw |= ~(uint64_t)0 << (8 * text_len);   /* sign-extend */
                    v = (int64_t)raw;
                }
                GIVE(push(&s, make(K_INT, v, 0)));
            }
            else
                GIVE(push(&s, make(K_OTHER, 0, 0)));
            break;
        case A_PUSH_NONE:
            GIVE(push(&s, make(K_NONE, 0, 0)));
            break;
        case A_PUSH_TRUE:
            GIVE(push(&s, make(K_TRUE, 0, 0)));
            break;
        case A_PUSH_FALSE:
            GIVE(push(&s, make(K_FALSE, 0, 0)));
            break;
        case A_PUSH_EMPTY_TUPLE:
            GIVE(push(&s, make(K_TUP, 0, 0)));
            break;
        case A_GLOBAL:
            GIVE(inline_global(&s, arg_at, pos, offset, op, &e));
            GIVE(push(&s, e));
            break;
        case A_NEXT_BUFFER:
            buffers++;
            GIVE(push(&s, make(K_OTHER, 0, 0)));
            break;
        case A_TUPLE:
            GIVE(operands(&s, op, &base, &count));
            if (s.tuples)
                GIVE(make_tuple(&s, base, count, &e));
            else
                e = make(K_OTHER, 0, 0);
            GIVE(push(&s, e));
            break;
        case A_STACK_GLOBAL: {
            GIVE(operands(&s, op, &base, &count));
            Entry m = s.stack[base], nm = s.stack[base + 1];
            if (KIND(m) != K_STR || KIND(nm) != K_STR)
                GIVE_UP_NOW();
            GIVE(add_global(&s, utf8(buf + m.a, (Py_ssize_t)LOW(m), "surrogatepass"),
                            utf8(buf + nm.a, (Py_ssize_t)LOW(nm), "surrogatepass"),
                            offset, op, &e));
            GIVE(push(&s, e));
            break;
        }
        case A_CALL: {
            GIVE(operands(&s, op, &base, &count));
            Entry f = s.stack[base], a = s.stack[base + 1];
            if (op->pops == 3) {
                Entry k = s.stack[base + 2];
                GIVE(record_call(&s, f, a, &k, offset, op));
                GIVE(push(&s, make(K_OTHER, 0, 0)));
            }
            else {
                GIVE(record_call(&s, f, a, NULL, offset, op));
                if (KIND(f) == K_GLOB && KIND(a) == K_TUP && LOW(a) == 0) {
                    if (grow((void **)&s.call_global, &s.capcalls, s.ncalls + 1,
                             sizeof(int64_t)) < 0
                        || grow((void **)&s.call_modified, &s.capmodified, s.ncalls + 1, 1) < 0)
                        GIVE(ERROR);
                    s.call_global[s.ncalls] = f.a;
                    s.call_modified[s.ncalls] = 0;
                    GIVE(push(&s, make(K_CALL0, s.ncalls++, 0)));
                }
                else
                    GIVE(push(&s, make(K_OTHER, 0, 0)));
            }
            break;
        }
        case A_OBJ: {
            GIVE(operands(&s, op, &base, &count));
            Entry f = s.stack[base], t;
            int w = watched(&s, f);
            if (w < 0)
                GIVE(ERROR);
            if (w) {
                GIVE(make_tuple(&s, base + 1, count - 1, &t));
                GIVE(record_call(&s, f, t, NULL, offset, op));
            }
            GIVE(push(&s, make(K_OTHER, 0, 0)));
            break;
        }
        case A_INST: {
            GIVE(operands(&s, op, &base, &count));
            Entry t, g;
            GIVE(inline_global(&s, arg_at, pos, offset, op, &g));
            int w = watched(&s, g);
            if (w < 0)
                GIVE(ERROR);
            if (w) {
                GIVE(make_tuple(&s, base, count, &t));
                GIVE(record_call(&s, g, t, NULL, offset, op));
            }
            GIVE(push(&s, make(K_OTHER, 0, 0)));
            break;
        }
        case A_DICT:
            GIVE(operands(&s, op, &base, &count));
            if (count % 2)
                GIVE_UP_NOW();
            GIVE(push(&s, make(K_OTHER, 0, 0)));
            break;
        case A_BUILD_OTHER:
            GIVE(operands(&s, op, &base, &count));
            GIVE(push(&s, make(K_OTHER, 0, 0)));
            break;
        case A_BINPERSID: {
            GIVE(operands(&s, op, &base, &count));
            PyObject *pid = value(&s, s.stack[base], 0);
            if (pid == NULL)
                GIVE(PyErr_Occurred() ? ERROR : GIVE_UP);
            PyObject *item = Py_BuildValue("(nON)", offset, op->name, pid);
            if (item == NULL || PyList_Append(s.persistent, item) < 0) {
                Py_XDECREF(item);
                GIVE(ERROR);
            }
            Py_DECREF(item);
            GIVE(push(&s, make(K_PID, PyList_GET_SIZE(s.persistent) - 1, 0)));
            break;
        }
        case A_EXTEND:
        case A_SETITEMS: {
            Py_ssize_t items;
            if (op->mark) {
                if (!s.nmarks)
                    GIVE_UP_NOW();
                Py_ssize_t height = s.marks[--s.nmarks];
                items = s.nstack - height;
                s.nstack = height;
            }
            else {
                items = op->pops - 1;
                if (s.nstack - items < fence(&s))
                    GIVE_UP_NOW();
                s.nstack -= items;
            }
            if (s.nstack <= fence(&s))
                GIVE_UP_NOW();
            if (action == A_SETITEMS && items % 2)
                GIVE_UP_NOW();
            {
                const Entry target = s.stack[s.nstack - 1];
                if (KIND(target) == K_CALL0 && (items || op->is_build))
                    s.call_modified[target.a] = 1;
            }
            break;
        }
        case A_POP:
            if (s.nmarks && s.marks[s.nmarks - 1] == s.nstack)
                s.nmarks--;
            else {
                if (s.nstack <= fence(&s))
                    GIVE_UP_NOW();
                s.nstack--;
            }
            break;
        case A_DUP:
            if (s.nstack <= fence(&s))
                GIVE_UP_NOW();
            GIVE(push(&s, s.stack[s.nstack - 1]));
            break;
        case A_MARK:
            if (grow((void **)&s.marks, &s.capmarks, s.nmarks + 1, sizeof(Py_ssize_t)) < 0)
                GIVE(ERROR);
            s.marks[s.nmarks++] = s.nstack;
            break;
        case A_POP_MARK:
            if (!s.nmarks)
                GIVE_UP_NOW();
            s.nstack = s.marks[--s.nmarks];
            break;
        case A_PUT:
            if (s.nstack <= fence(&s))
                GIVE_UP_NOW();
            GIVE(memo_set(&s, offset, number, s.stack[s.nstack - 1]));
            break;
        case A_MEMOIZE:
            if (s.nstack <= fence(&s))
                GIVE_UP_NOW();
            GIVE(memo_set(&s, offset, s.memo_len, s.stack[s.nstack - 1]));
            break;
        case A_GET:
            if (number > (int64_t)(offset - start) + MEMO_SLACK || number >= s.capmemo
                || KIND(s.memo[number]) == K_EMPTY)
                GIVE_UP_NOW();
            GIVE(push(&s, s.memo[number]));
            break;
        case A_PROTO:
            if (number > HIGHEST_PROTOCOL)
                GIVE_UP_NOW();
            proto = (long)number;
            break;
        case A_FRAME:
            break;
        case A_STOP:
            if (s.nstack <= fence(&s))
                GIVE_UP_NOW();
            status = 0;
            offset = pos;
            goto stop;
        default:
            GIVE_UP_NOW();
        }
    }
stop:
    if (rc == ERROR)
        goto done;
    result = Py_BuildValue("(inlOOOl)", status, offset, proto, s.globals, s.calls,
                           s.persistent, buffers);
done:
#undef GIVE
#undef GIVE_UP_NOW
    PyBuffer_Release(&view);
    Py_XDECREF(s.globals);
    Py_XDECREF(s.calls);
    Py_XDECREF(s.persistent);
    Py_XDECREF(s.watch);
    PyMem_Free(s.stack);
    PyMem_Free(s.marks);
    PyMem_Free(s.arena);
    PyMem_Free(s.memo);
    PyMem_Free(s.call_global);
    PyMem_Free(s.call_modified);
    return result;
}

static int
load_tables(void)
{
    PyObject *survey_mod = PyImport_ImportModule("mason.analysis._survey");
    if (survey_mod == NULL)
        return -1;
    int failed = -1;
    PyObject *actions = NULL, *table = NULL, *it = NULL, *reader = NULL;
    /* The action numbers must be the ones this file was written against. */
    for (int i = 0; i < A_COUNT; i++)
        if (attr_long(survey_mod, action_names[i]) != i) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ImportError, "mason._scan is out of date: %s",
                             action_names[i]);
            goto out;
        }
    if ((LARGE = attr_long(survey_mod, "LARGE")) < 0
        || (MEMO_SLACK = attr_long(survey_mod, "MEMO_SLACK")) < 0
        || (MAX_VALUE_DEPTH = attr_long(survey_mod, "MAX_VALUE_DEPTH")) < 0
        || (VALUE_BUDGET = attr_long(survey_mod, "VALUE_BUDGET")) < 0
        || (HIGHEST_PROTOCOL = attr_long(survey_mod, "HIGHEST_PROTOCOL")) < 0)
        goto out;
    OPAQUE = PyObject_GetAttrString(survey_mod, "OPAQUE");
    GlobalRef = PyObject_GetAttrString(survey_mod, "GlobalRef");
    PidRef = PyObject_GetAttrString(survey_mod, "PidRef");
    EmptyCall = PyObject_GetAttrString(survey_mod, "EmptyCall");
    Payload = PyObject_GetAttrString(survey_mod, "Payload");
    actions = PyObject_GetAttrString(survey_mod, "ACTIONS");
    table = PyObject_GetAttrString(survey_mod, "OPCODES");
    if (!OPAQUE || !GlobalRef || !PidRef || !EmptyCall || !Payload || !actions || !table)
        goto out;
    payload_kinds[1] = PyUnicode_InternFromString("unicodestring1");
    payload_kinds[4] = PyUnicode_InternFromString("unicodestring4");
    payload_kinds[8] = PyUnicode_InternFromString("unicodestring8");
    if (!payload_kinds[1] || !payload_kinds[4] || !payload_kinds[8])
        goto out;
    it = PyObject_GetIter(table);
    if (it == NULL)
        goto out;
    PyObject *entry;
    while ((entry = PyIter_Next(it)) != NULL) {
        long code = attr_long(entry, "code");
        long arg = attr_long(entry, "arg");
        long pops = attr_long(entry, "pops");
        long mark = attr_long(entry, "mark");
        PyObject *name = PyObject_GetAttrString(entry, "name");
        Py_DECREF(entry);
        if (PyErr_Occurred() || name == NULL || code < 0 || code > 255) {
            Py_XDECREF(name);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bad opcode table entry");
            goto out;
        }
        PyObject *action = PySequence_GetItem(actions, code);
        long a = action ? PyLong_AsLong(action) : -1;
        Py_XDECREF(action);
        if (a < 0 || a >= A_COUNT) {
            Py_DECREF(name);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bad action");
            goto out;
        }
        OpInfo *op = &ops[code];
        op->known = 1;
        op->arg = (unsigned char)arg;
        op->pops = (unsigned char)pops;
        op->mark = (unsigned char)mark;
        op->action = (unsigned char)a;
        op->signed_int = PyUnicode_CompareWithASCIIString(name, "BININT") == 0;
        op->is_build = PyUnicode_CompareWithASCIIString(name, "BUILD") == 0;
        Py_XSETREF(op->name, name);
    }
    if (PyErr_Occurred())
        goto out;
    failed = 0;
out:
    Py_XDECREF(actions);
    Py_XDECREF(table);
    Py_XDECREF(it);
    Py_XDECREF(reader);
    Py_DECREF(survey_mod);
    return failed;
}

static PyMethodDef module_methods[] = {
    {"survey", (PyCFunction)survey, METH_VARARGS,
     "survey(data, start=0, watch=None, keep_tuples=False): see "
     "mason.analysis._survey.survey"},
    {NULL}
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT, "mason._scan",
    "Compiled twin of mason.analysis._survey: the scanner's one-pass survey.", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    if (load_tables() < 0)
        return NULL;
    return PyModule_Create(&scan_module);
}
