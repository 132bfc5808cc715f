/* mason._plainload: the safe load of a stream of plain data, in one pass.
 *
 * loads(data, max_depth, memo_slack, names, resolve) builds the object of a pickle whose
 * opcodes make plain data (None, bool, int, float, str, bytes, bytearray, tuple, list, dict,
 * set, frozenset, with marks, memo and frames) and call only globals that the default policy
 * lets CPython's engine import and call itself (datetime.date, Decimal, ...: ``resolve`` says
 * which, and ``names`` keeps its answers), with REDUCE.  It checks mason's limits as it goes:
 * nesting deeper than max_depth, a memo index beyond its offset plus memo_slack.
 *
 * It answers only when its answer is the one mason.loads gives by the long way (the limits
 * check, then CPython's C engine): the same object graph, built by the same calls in the same
 * order.  Anything else — another global or opcode, a limit exceeded, a malformed or
 * truncated stream, any error — makes it stop, drop what it built and return NotImplemented,
 * and the caller takes the long way, which loads or explains the stream.  So it may decline
 * more than it must, never accept more; the tests compare the two ways on honest, hostile and
 * mutated streams.
 *
 * Why it exists: on small pickles of ints and short strings, a separate pass over the
 * opcodes before the engine costs 15-25% of the load; here the checks ride along with the
 * building, and the engine's per-call set-up (an Unpickler object, its memo, its stack) is
 * replaced by arrays on the C stack.
 *
 * Which byte is which opcode is read at import from mason.format.opcodes, by name. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_pickle_bytes.h"

enum {
    DECLINE = 0,
    OP_NONE, OP_NEWTRUE, OP_NEWFALSE, OP_BININT, OP_BININT1, OP_BININT2, OP_LONG1, OP_LONG4,
    OP_BINFLOAT, OP_SHORT_BINUNICODE, OP_BINUNICODE, OP_BINUNICODE8, OP_SHORT_BINBYTES,
    OP_BINBYTES, OP_BINBYTES8, OP_BYTEARRAY8, OP_EMPTY_TUPLE, OP_TUPLE1, OP_TUPLE2, OP_TUPLE3,
    OP_TUPLE, OP_EMPTY_LIST, OP_APPEND, OP_APPENDS, OP_LIST, OP_EMPTY_DICT, OP_SETITEM,
    OP_SETITEMS, OP_DICT, OP_EMPTY_SET, OP_ADDITEMS, OP_FROZENSET, OP_MARK, OP_POP,
    OP_POP_MARK, OP_DUP, OP_BINPUT, OP_LONG_BINPUT, OP_MEMOIZE, OP_BINGET, OP_LONG_BINGET,
    OP_PROTO, OP_FRAME, OP_STOP, OP_GLOBAL, OP_STACK_GLOBAL, OP_REDUCE,
};

/* The opcodes handled, by name; every other byte declines. */
static const struct { const char *name; unsigned char action; } HANDLED[] = {
    {"NONE", OP_NONE}, {"NEWTRUE", OP_NEWTRUE}, {"NEWFALSE", OP_NEWFALSE},
    {"BININT", OP_BININT}, {"BININT1", OP_BININT1}, {"BININT2", OP_BININT2},
    {"LONG1", OP_LONG1}, {"LONG4", OP_LONG4}, {"BINFLOAT", OP_BINFLOAT},
    {"SHORT_BINUNICODE", OP_SHORT_BINUNICODE}, {"BINUNICODE", OP_BINUNICODE},
    {"BINUNICODE8", OP_BINUNICODE8}, {"SHORT_BINBYTES", OP_SHORT_BINBYTES},
    {"BINBYTES", OP_BINBYTES}, {"BINBYTES8", OP_BINBYTES8}, {"BYTEARRAY8", OP_BYTEARRAY8},
    {"EMPTY_TUPLE", OP_EMPTY_TUPLE}, {"TUPLE1", OP_TUPLE1}, {"TUPLE2", OP_TUPLE2},
    {"TUPLE3", OP_TUPLE3}, {"TUPLE", OP_TUPLE}, {"EMPTY_LIST", OP_EMPTY_LIST},
    {"APPEND", OP_APPEND}, {"APPENDS", OP_APPENDS}, {"LIST", OP_LIST},
    {"EMPTY_DICT", OP_EMPTY_DICT}, {"SETITEM", OP_SETITEM}, {"SETITEMS", OP_SETITEMS},
    {"DICT", OP_DICT}, {"EMPTY_SET", OP_EMPTY_SET}, {"ADDITEMS", OP_ADDITEMS},
    {"FROZENSET", OP_FROZENSET}, {"MARK", OP_MARK}, {"POP", OP_POP}, {"POP_MARK", OP_POP_MARK},
    {"DUP", OP_DUP}, {"BINPUT", OP_BINPUT}, {"LONG_BINPUT", OP_LONG_BINPUT},
    {"MEMOIZE", OP_MEMOIZE}, {"BINGET", OP_BINGET}, {"LONG_BINGET", OP_LONG_BINGET},
    {"PROTO", OP_PROTO}, {"FRAME", OP_FRAME}, {"STOP", OP_STOP},
    {"GLOBAL", OP_GLOBAL}, {"STACK_GLOBAL", OP_STACK_GLOBAL}, {"REDUCE", OP_REDUCE},
};

static unsigned char action[256];

/* Arrays that start on the C stack and move to the heap when a stream needs more. */
#define INLINE_STACK 256
#define INLINE_MARKS 32
#define INLINE_MEMO 128

typedef struct {
    PyObject *obj;
    int32_t depth;     /* nesting depth of obj as mason.limits counts it */
    int32_t callable;  /* obj is a global the policy lets the engine call (see REDUCE) */
} Slot;

typedef struct {
    Slot *stack;
    Py_ssize_t n, cap;
    Py_ssize_t *marks;
    Py_ssize_t nmarks, capmarks;
    Slot *memo;        /* entries below memo_hi are set; obj NULL = empty */
    Py_ssize_t capmemo, memo_hi;
    Py_ssize_t memo_len;   /* filled entries: where MEMOIZE stores, as in the engine */
    Slot inline_stack[INLINE_STACK];
    Py_ssize_t inline_marks[INLINE_MARKS];
    Slot inline_memo[INLINE_MEMO];
} Loader;

/* Grow an array that may still live in the Loader itself (then it is copied out). */
static int
grow_array(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t item, void *inline_buf)
{
    Py_ssize_t n = *cap;
    while (n < need) {
        if (n > PY_SSIZE_T_MAX / 2 / (Py_ssize_t)item)
            return -1;
        n *= 2;
    }
    void *p;
    if (*buf == inline_buf) {
        p = PyMem_Malloc((size_t)n * item);
        if (p != NULL)
            memcpy(p, *buf, (size_t)*cap * item);
    }
    else
        p = PyMem_Realloc(*buf, (size_t)n * item);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static void
release(Loader *L)
{
    for (Py_ssize_t i = 0; i < L->n; i++)
        Py_DECREF(L->stack[i].obj);
    for (Py_ssize_t i = 0; i < L->memo_hi; i++)
        Py_XDECREF(L->memo[i].obj);
    if (L->stack != L->inline_stack)
        PyMem_Free(L->stack);
    if (L->marks != L->inline_marks)
        PyMem_Free(L->marks);
    if (L->memo != L->inline_memo)
        PyMem_Free(L->memo);
}

static inline int32_t
deepest(const Slot *s, Py_ssize_t count)
{
    int32_t m = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        if (s[i].depth > m)
            m = s[i].depth;
    return m;
}

/* The global ``module.name`` as the engine's find_class would return it, when the policy
 * lets the engine import it itself (mason.unpickler._plain_name decides, and its answers are
 * kept in ``names``); else NULL: decline. */
static PyObject *
plain_global(PyObject *names, PyObject *resolve, PyObject *module, PyObject *name, int proto)
{
    if (PySys_Audit("pickle.find_class", "OO", module, name) < 0)
        return NULL;
    PyObject *key = PyTuple_Pack(3, module, name, proto >= 3 ? Py_True : Py_False);
    if (key == NULL)
        return NULL;
    PyObject *where = PyDict_GetItemWithError(names, key);
    Py_DECREF(key);
    if (where != NULL)
        Py_INCREF(where);
    else if (PyErr_Occurred())
        return NULL;
    else {
        PyObject *p = PyLong_FromLong(proto);
        if (p == NULL)
            return NULL;
        where = PyObject_CallFunctionObjArgs(resolve, module, name, p, NULL);
        Py_DECREF(p);
        if (where == NULL)
            return NULL;
    }
    PyObject *found = NULL;
    if (PyTuple_CheckExact(where) && PyTuple_GET_SIZE(where) == 2) {
        /* Only a module already imported: the long way imports, then this one finds it. */
        PyObject *mod = PyImport_GetModule(PyTuple_GET_ITEM(where, 0));
        if (mod != NULL) {
            found = PyObject_GetAttr(mod, PyTuple_GET_ITEM(where, 1));
            Py_DECREF(mod);
        }
    }
    Py_DECREF(where);
    return found;
}

static PyObject *
build(const unsigned char *buf, Py_ssize_t end, Py_ssize_t max_depth, Py_ssize_t memo_slack,
      PyObject *names, PyObject *resolve, Loader *L)
{
    Py_ssize_t pos = 0;
    PyObject *result = NULL;
    int proto = 0;

#define FENCE() (L->nmarks ? L->marks[L->nmarks - 1] : 0)
#define NEED(k) do { if (end - pos < (Py_ssize_t)(k)) goto decline; } while (0)
#define PUSH(o, d) do { \
        PyObject *o_ = (o); \
        if (o_ == NULL) goto decline; \
        if (L->n >= L->cap && grow_array((void **)&L->stack, &L->cap, L->n + 1, sizeof(Slot), \
                                         L->inline_stack) < 0) { \
            Py_DECREF(o_); \
            goto decline; \
        } \
        L->stack[L->n].obj = o_; \
        L->stack[L->n].depth = (d); \
        L->stack[L->n].callable = 0; \
        L->n++; \
    } while (0)
#define POP_MARK_TO(var) do { \
        if (!L->nmarks) goto decline; \
        var = L->marks[--L->nmarks]; \
    } while (0)
#define DEPTH_OK(d) do { if ((d) > max_depth) goto decline; } while (0)

    for (;;) {
        if (pos >= end)
            goto decline;
        const Py_ssize_t start = pos;
        switch (action[buf[pos++]]) {
        case OP_NONE:
            PUSH(Py_NewRef(Py_None), 1);
            break;
        case OP_NEWTRUE:
            PUSH(Py_NewRef(Py_True), 1);
            break;
        case OP_NEWFALSE:
            PUSH(Py_NewRef(Py_False), 1);
            break;
        case OP_BININT1:
            NEED(1);
            PUSH(PyLong_FromLong(buf[pos]), 1);
            pos += 1;
            break;
        case OP_BININT2:
            NEED(2);
            PUSH(PyLong_FromLong((long)read_le(buf + pos, 2)), 1);
            pos += 2;
            break;
        case OP_BININT:
            NEED(4);
            PUSH(PyLong_FromLong((long)(int32_t)(uint32_t)read_le(buf + pos, 4)), 1);
            pos += 4;
            break;
        case OP_LONG1: case OP_LONG4: {
            const int size = action[buf[start]] == OP_LONG1 ? 1 : 4;
            NEED(size);
            int64_t n = (int64_t)read_le(buf + pos, size);
            if (size == 4)
                n = (int32_t)(uint32_t)n;
            pos += size;
            if (n < 0)
                goto decline;
            NEED(n);
            PUSH(n == 0 ? PyLong_FromLong(0)
                        : _PyLong_FromByteArray(buf + pos, (size_t)n, 1, 1), 1);
            pos += (Py_ssize_t)n;
            break;
        }
        case OP_BINFLOAT: {
            NEED(8);
#if PY_VERSION_HEX >= 0x030B0000
            const double x = PyFloat_Unpack8((const char *)buf + pos, 0);
#else
            const double x = _PyFloat_Unpack8(buf + pos, 0);
#endif
            if (x == -1.0 && PyErr_Occurred())
                goto decline;
            PUSH(PyFloat_FromDouble(x), 1);
            pos += 8;
            break;
        }
        case OP_SHORT_BINUNICODE: case OP_BINUNICODE: case OP_BINUNICODE8:
        case OP_SHORT_BINBYTES: case OP_BINBYTES: case OP_BINBYTES8: case OP_BYTEARRAY8: {
            const int kind = action[buf[start]];
            const int size = (kind == OP_SHORT_BINUNICODE || kind == OP_SHORT_BINBYTES) ? 1
                : (kind == OP_BINUNICODE || kind == OP_BINBYTES) ? 4 : 8;
            NEED(size);
            const uint64_t n = read_le(buf + pos, size);
            pos += size;
            if (n > (uint64_t)(end - pos))
                goto decline;
            const char *s = (const char *)buf + pos;
            PyObject *o;
            if (kind <= OP_BINUNICODE8)
                o = PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "surrogatepass");
            else if (kind == OP_BYTEARRAY8)
                o = PyByteArray_FromStringAndSize(s, (Py_ssize_t)n);
            else
                o = PyBytes_FromStringAndSize(s, (Py_ssize_t)n);
            PUSH(o, 1);
            pos += (Py_ssize_t)n;
            break;
        }
        case OP_EMPTY_TUPLE:
            PUSH(PyTuple_New(0), 1);
            break;
        case OP_TUPLE1: case OP_TUPLE2: case OP_TUPLE3: case OP_TUPLE: case OP_FROZENSET:
        case OP_LIST: {
            const int kind = action[buf[start]];
            Py_ssize_t base;
            if (kind == OP_TUPLE || kind == OP_FROZENSET || kind == OP_LIST)
                POP_MARK_TO(base);
            else {
                base = L->n - (kind - OP_TUPLE1 + 1);
                if (base < FENCE())
                    goto decline;
            }
            if (base > L->n)
                goto decline;
            const Py_ssize_t count = L->n - base;
            const int64_t depth = (int64_t)deepest(L->stack + base, count) + 1;
            DEPTH_OK(depth);
            PyObject *o = kind == OP_LIST ? PyList_New(count) : PyTuple_New(count);
            if (o == NULL)
                goto decline;
            for (Py_ssize_t i = 0; i < count; i++) {
                if (kind == OP_LIST)
                    PyList_SET_ITEM(o, i, L->stack[base + i].obj);
                else
                    PyTuple_SET_ITEM(o, i, L->stack[base + i].obj);
            }
            L->n = base;
            if (kind == OP_FROZENSET) {
                PyObject *f = PyFrozenSet_New(o);
                Py_DECREF(o);
                o = f;
            }
            PUSH(o, (int32_t)depth);
            break;
        }
        case OP_DICT: {
            Py_ssize_t base;
            POP_MARK_TO(base);
            if (base > L->n || (L->n - base) % 2)
                goto decline;
            const int64_t depth = (int64_t)deepest(L->stack + base, L->n - base) + 1;
            DEPTH_OK(depth);
            PyObject *d = PyDict_New();
            if (d == NULL)
                goto decline;
            for (Py_ssize_t i = base; i < L->n; i += 2)
                if (PyDict_SetItem(d, L->stack[i].obj, L->stack[i + 1].obj) < 0) {
                    Py_DECREF(d);
                    goto decline;
                }
            for (Py_ssize_t i = base; i < L->n; i++)
                Py_DECREF(L->stack[i].obj);
            L->n = base;
            PUSH(d, (int32_t)depth);
            break;
        }
        case OP_EMPTY_LIST:
            PUSH(PyList_New(0), 1);
            break;
        case OP_EMPTY_DICT:
            PUSH(PyDict_New(), 1);
            break;
        case OP_EMPTY_SET:
            PUSH(PySet_New(NULL), 1);
            break;
        case OP_APPEND: case OP_APPENDS: case OP_SETITEM: case OP_SETITEMS: case OP_ADDITEMS: {
            /* Items from ``base`` up go into the object just below them, as the engine's
             * do_append / do_setitems / load_additems do for an exact list, dict or set. */
            const int kind = action[buf[start]];
            Py_ssize_t base;
            if (kind == OP_APPEND)
                base = L->n - 1;
            else if (kind == OP_SETITEM)
                base = L->n - 2;
            else
                POP_MARK_TO(base);
            if (base > L->n || base <= FENCE())
                goto decline;
            const Py_ssize_t count = L->n - base;
            if (count == 0)
                break;
            Slot *target = &L->stack[base - 1];
            PyObject *t = target->obj;
            int failed = 0;
            if (kind == OP_APPEND || kind == OP_APPENDS) {
                if (!PyList_CheckExact(t))
                    goto decline;
                for (Py_ssize_t i = base; i < L->n && !failed; i++)
                    failed = PyList_Append(t, L->stack[i].obj) < 0;
            }
            else if (kind == OP_ADDITEMS) {
                if (!PySet_CheckExact(t))
                    goto decline;
                for (Py_ssize_t i = base; i < L->n && !failed; i++)
                    failed = PySet_Add(t, L->stack[i].obj) < 0;
            }
            else {
                if (!PyDict_CheckExact(t) || count % 2)
                    goto decline;
                for (Py_ssize_t i = base; i < L->n && !failed; i += 2)
                    failed = PyDict_SetItem(t, L->stack[i].obj, L->stack[i + 1].obj) < 0;
            }
            if (failed)
                goto decline;
            int64_t depth = (int64_t)deepest(L->stack + base, count) + 1;
            if (target->depth > depth)
                depth = target->depth;
            DEPTH_OK(depth);
            for (Py_ssize_t i = base; i < L->n; i++)
                Py_DECREF(L->stack[i].obj);
            L->n = base;
            target->depth = (int32_t)depth;
            break;
        }
        case OP_MARK:
            if (L->nmarks >= L->capmarks
                && grow_array((void **)&L->marks, &L->capmarks, L->nmarks + 1,
                              sizeof(Py_ssize_t), L->inline_marks) < 0)
                goto decline;
            L->marks[L->nmarks++] = L->n;
            break;
        case OP_POP:
            if (L->nmarks && L->marks[L->nmarks - 1] == L->n)
                L->nmarks--;
            else if (L->n <= FENCE())
                goto decline;
            else
                Py_DECREF(L->stack[--L->n].obj);
            break;
        case OP_POP_MARK: {
            Py_ssize_t base;
            POP_MARK_TO(base);
            while (L->n > base)
                Py_DECREF(L->stack[--L->n].obj);
            break;
        }
        case OP_DUP: {
            if (L->n <= FENCE())
                goto decline;
            const Slot top = L->stack[L->n - 1];
            PUSH(Py_NewRef(top.obj), top.depth);
            L->stack[L->n - 1].callable = top.callable;
            break;
        }
        case OP_BINPUT: case OP_LONG_BINPUT: case OP_MEMOIZE: {
            const int kind = action[buf[start]];
            Py_ssize_t idx;
            if (kind == OP_MEMOIZE)
                idx = L->memo_len;
            else {
                const int size = kind == OP_BINPUT ? 1 : 4;
                NEED(size);
                const uint64_t value = read_le(buf + pos, size);
                pos += size;
                /* The limit mason.limits sets; and a memo of at most twice the stream's
                 * size here, which honest pickles never come near (the long way loads
                 * what lies between). */
                if (value > (uint64_t)(memo_slack + start) || value > (uint64_t)(2 * end + 64))
                    goto decline;
                idx = (Py_ssize_t)value;
            }
            if (L->n <= FENCE())
                goto decline;
            if (idx >= L->memo_hi) {
                if (idx >= L->capmemo
                    && grow_array((void **)&L->memo, &L->capmemo, idx + 1, sizeof(Slot),
                                  L->inline_memo) < 0)
                    goto decline;
                memset(L->memo + L->memo_hi, 0, (size_t)(idx + 1 - L->memo_hi) * sizeof(Slot));
                L->memo_hi = idx + 1;
            }
            Slot *entry = &L->memo[idx];
            if (entry->obj == NULL)
                L->memo_len++;
            Py_XSETREF(entry->obj, Py_NewRef(L->stack[L->n - 1].obj));
            entry->depth = L->stack[L->n - 1].depth;
            entry->callable = L->stack[L->n - 1].callable;
            break;
        }
        case OP_BINGET: case OP_LONG_BINGET: {
            const int size = action[buf[start]] == OP_BINGET ? 1 : 4;
            NEED(size);
            const uint64_t idx = read_le(buf + pos, size);
            pos += size;
            if (idx >= (uint64_t)L->memo_hi || L->memo[idx].obj == NULL)
                goto decline;
            const Slot entry = L->memo[idx];
            PUSH(Py_NewRef(entry.obj), entry.depth);
            L->stack[L->n - 1].callable = entry.callable;
            break;
        }
        case OP_PROTO:
            /* Only first, as picklers write it: the long way reads a stream's globals in the
             * protocol of its last PROTO, the engine in the one in force where they are. */
            NEED(1);
            if (buf[pos] > 5 || start != 0)
                goto decline;
            proto = buf[pos];
            pos += 1;
            break;
        case OP_FRAME: {
            NEED(8);
            const uint64_t n = read_le(buf + pos, 8);
            pos += 8;
            if (n > (uint64_t)(end - pos))
                goto decline;   /* the engine insists the whole frame is there */
            break;
        }
        case OP_GLOBAL: case OP_STACK_GLOBAL: {
            PyObject *module, *name;
            int64_t depth = 1;
            if (action[buf[start]] == OP_GLOBAL) {
                const unsigned char *nl1 = memchr(buf + pos, '\n', (size_t)(end - pos));
                const unsigned char *nl2 = nl1 == NULL ? NULL
                    : memchr(nl1 + 1, '\n', (size_t)(buf + end - nl1 - 1));
                if (nl2 == NULL)
                    goto decline;
                module = PyUnicode_DecodeUTF8((const char *)buf + pos, nl1 - (buf + pos),
                                              "strict");
                name = module == NULL ? NULL
                    : PyUnicode_DecodeUTF8((const char *)nl1 + 1, nl2 - nl1 - 1, "strict");
                if (name == NULL) {
                    Py_XDECREF(module);
                    goto decline;
                }
                pos = (nl2 - buf) + 1;
            }
            else {
                if (L->n - 2 < FENCE())
                    goto decline;
                const Slot a = L->stack[L->n - 2], b = L->stack[L->n - 1];
                if (!PyUnicode_CheckExact(a.obj) || !PyUnicode_CheckExact(b.obj))
                    goto decline;
                depth = (int64_t)(a.depth > b.depth ? a.depth : b.depth) + 1;
                module = a.obj;
                name = b.obj;
                L->n -= 2;
            }
            PyObject *found = plain_global(names, resolve, module, name, proto);
            Py_DECREF(module);
            Py_DECREF(name);
            if (depth > max_depth) {
                Py_XDECREF(found);
                goto decline;
            }
            PUSH(found, (int32_t)depth);
            L->stack[L->n - 1].callable = 1;
            break;
        }
        case OP_REDUCE: {
            /* Only a global the policy lets the engine call, as the engine calls it. */
            if (L->n - 2 < FENCE())
                goto decline;
            const Slot f = L->stack[L->n - 2], a = L->stack[L->n - 1];
            if (!f.callable || !PyTuple_CheckExact(a.obj))
                goto decline;
            const int64_t depth = (int64_t)(f.depth > a.depth ? f.depth : a.depth) + 1;
            DEPTH_OK(depth);
            PyObject *o = PyObject_Call(f.obj, a.obj, NULL);
            if (o == NULL)
                goto decline;
            L->n -= 2;
            Py_DECREF(f.obj);
            Py_DECREF(a.obj);
            PUSH(o, (int32_t)depth);
            break;
        }
        case OP_STOP:
            if (L->n <= FENCE())
                goto decline;
            result = L->stack[--L->n].obj;
            return result;
        default:
            goto decline;
        }
    }
decline:
    /* The long way gives the error its proper form; only an interrupt (KeyboardInterrupt,
     * SystemExit from a constructor's code) goes through as it is. */
    if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_Exception))
        PyErr_Clear();
    return NULL;
#undef FENCE
#undef NEED
#undef PUSH
#undef POP_MARK_TO
#undef DEPTH_OK
}

static PyObject *
plain_loads(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "loads(data, max_depth, memo_slack, names, resolve)");
        return NULL;
    }
    const Py_ssize_t max_depth = PyLong_AsSsize_t(args[1]);
    const Py_ssize_t memo_slack = PyLong_AsSsize_t(args[2]);
    if ((max_depth == -1 || memo_slack == -1) && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    const unsigned char *buf;
    Py_ssize_t len;
    int have_view = 0;
    if (PyBytes_CheckExact(args[0])) {
        buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        len = PyBytes_GET_SIZE(args[0]);
    }
    else {
        if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            Py_RETURN_NOTIMPLEMENTED;
        }
        have_view = 1;
        buf = view.buf;
        len = view.len;
    }
    Loader L;
    L.stack = L.inline_stack;
    L.n = 0;
    L.cap = INLINE_STACK;
    L.marks = L.inline_marks;
    L.nmarks = 0;
    L.capmarks = INLINE_MARKS;
    L.memo = L.inline_memo;
    L.capmemo = INLINE_MEMO;
    L.memo_hi = 0;
    L.memo_len = 0;
    PyObject *result = build(buf, len, max_depth, memo_slack, args[3], args[4], &L);
    release(&L);
    if (have_view)
        PyBuffer_Release(&view);
    if (result == NULL && !PyErr_Occurred())
        Py_RETURN_NOTIMPLEMENTED;
    return result;
}

/* load(data): loads() with the arguments configure() set, for mason.loads' entry. */
static PyObject *configured[4];   /* max_depth, memo_slack, names, resolve */

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "configure(max_depth, memo_slack, names, resolve)");
        return NULL;
    }
    for (int i = 0; i < 4; i++)
        Py_XSETREF(configured[i], Py_NewRef(args[i]));
    Py_RETURN_NONE;
}

static PyObject *
load_configured(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 || configured[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "load(data), after configure()");
        return NULL;
    }
    PyObject *all[5] = {args[0], configured[0], configured[1], configured[2], configured[3]};
    return plain_loads(module, all, 5);
}

static int
load_actions(void)
{
    PyObject *mod = PyImport_ImportModule("mason.format.opcodes");
    if (mod == NULL)
        return -1;
    PyObject *by_name = PyObject_GetAttrString(mod, "BY_NAME");
    Py_DECREF(mod);
    if (by_name == NULL)
        return -1;
    for (size_t i = 0; i < sizeof HANDLED / sizeof HANDLED[0]; i++) {
        PyObject *entry = PyMapping_GetItemString(by_name, HANDLED[i].name);
        if (entry == NULL) {
            Py_DECREF(by_name);
            return -1;
        }
        const long code = attr_long(entry, "code");
        Py_DECREF(entry);
        if (code < 0 || code > 255) {
            Py_DECREF(by_name);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bad opcode table entry");
            return -1;
        }
        action[code] = HANDLED[i].action;
    }
    Py_DECREF(by_name);
    return 0;
}

static PyMethodDef module_methods[] = {
    {"loads", (PyCFunction)(void (*)(void))plain_loads, METH_FASTCALL,
     "loads(data, max_depth, memo_slack, names, resolve) -> the object, or NotImplemented "
     "when the stream is not plain data within the limits (see the module's comment)"},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(max_depth, memo_slack, names, resolve): the arguments load(data) passes"},
    {"load", (PyCFunction)(void (*)(void))load_configured, METH_FASTCALL,
     "load(data): loads(data, *the arguments given to configure())"},
    {NULL}
};

static struct PyModuleDef plainload_module = {
    PyModuleDef_HEAD_INIT, "mason._plainload",
    "The safe load of a stream of plain data, in one pass.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__plainload(void)
{
    if (load_actions() < 0)
        return NULL;
    return PyModule_Create(&plainload_module);
}
