/* mason._entry: mason.dumps and mason.loads as compiled callables.
 *
 * Calling a Python function costs about what pickling a 20-int tuple costs, so a Python
 * ``dumps`` in front of the C pickler is 10-25% slower than pickle on small objects.  An
 * Entry takes the usual call (positional arguments only) straight to a C function, ``fast``;
 * when that returns NotImplemented (it declines: a function to pickle by value, a stream
 * that is not plain data, ...) the same arguments go to ``fallback``, and any other call
 * (keywords, another number of arguments) goes to ``options``, the full Python function.
 *
 * An Entry has a __dict__, so it carries the __doc__, __signature__, __name__, __qualname__
 * and __module__ of the function it stands for, and pickles by reference as that function.
 *
 * dumps_plain(obj[, protocol]) is dumps' fast part: CPython's C pickler, declining where the
 * pickle must be made by value — a function at the top, a failure, or output that names
 * __main__ or a module registered by value (the needles; a false positive only costs the
 * by-value pickler's work): mason.byvalue.needs_by_value's search, without a Python call. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fast, *fallback, *options;
    Py_ssize_t max_args;
    PyObject *dict;
} Entry;

static PyObject *
entry_call(Entry *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs < 1 || nargs > self->max_args)
        return PyObject_Vectorcall(self->options, args, nargsf, kwnames);
    PyObject *result = PyObject_Vectorcall(self->fast, args, nargsf, NULL);
    if (result != Py_NotImplemented)
        return result;
    Py_DECREF(result);
    return PyObject_Vectorcall(self->fallback, args, nargsf, NULL);
}

static PyObject *
entry_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *fast, *fallback, *options, *like;
    Py_ssize_t max_args;
    static char *kwlist[] = {"fast", "fallback", "options", "max_args", "like", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOnO:Entry", kwlist, &fast, &fallback,
                                     &options, &max_args, &like))
        return NULL;
    Entry *self = (Entry *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)entry_call;
    self->fast = Py_NewRef(fast);
    self->fallback = Py_NewRef(fallback);
    self->options = Py_NewRef(options);
    self->max_args = max_args;
    /* Look like the function ``like``: what help(), inspect (through __wrapped__) and
     * pickle read. */
    static const char *const copied[] = {"__doc__", "__signature__", "__name__",
                                         "__qualname__", "__module__", NULL};
    for (int i = 0; copied[i] != NULL; i++) {
        PyObject *value = PyObject_GetAttrString(like, copied[i]);
        if (value == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                goto fail;
            PyErr_Clear();
            continue;
        }
        int failed = PyObject_SetAttrString((PyObject *)self, copied[i], value);
        Py_DECREF(value);
        if (failed)
            goto fail;
    }
    if (PyObject_SetAttrString((PyObject *)self, "__wrapped__", like) < 0)
        goto fail;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static int
entry_traverse(Entry *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->fast);
    Py_VISIT(self->fallback);
    Py_VISIT(self->options);
    Py_VISIT(self->dict);
    return 0;
}

static int
entry_clear(Entry *self)
{
    Py_CLEAR(self->fast);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->options);
    Py_CLEAR(self->dict);
    return 0;
}

static void
entry_dealloc(Entry *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    entry_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
entry_repr(Entry *self)
{
    PyObject *name = PyObject_GetAttrString((PyObject *)self, "__qualname__");
    if (name == NULL) {
        PyErr_Clear();
        return PyUnicode_FromString("<mason entry>");
    }
    PyObject *repr = PyUnicode_FromFormat("<function mason.%S>", name);
    Py_DECREF(name);
    return repr;
}

/* Pickled by reference, as the function it stands for: pickle reads a str as a global's
 * name in the object's __module__. */
static PyObject *
entry_reduce(Entry *self, PyObject *unused)
{
    return PyObject_GetAttrString((PyObject *)self, "__qualname__");
}

static PyMethodDef entry_methods[] = {
    {"__reduce__", (PyCFunction)entry_reduce, METH_NOARGS, NULL},
    {NULL}
};

static PyMemberDef entry_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(Entry, dict), READONLY},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Entry, vectorcall), READONLY},
    {NULL}
};

static PyType_Slot entry_slots[] = {
    {Py_tp_new, entry_new},
    {Py_tp_dealloc, entry_dealloc},
    {Py_tp_traverse, entry_traverse},
    {Py_tp_clear, entry_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, entry_repr},
    {Py_tp_methods, entry_methods},
    {Py_tp_members, entry_members},
    {Py_tp_doc, "Entry(fast, fallback, options, max_args, like): see mason._entry."},
    {0, NULL}
};

static PyType_Spec entry_spec = {
    "mason._entry.Entry", sizeof(Entry), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    entry_slots,
};


/* dumps_plain's configuration (configure_dumps): the C pickler's dumps, the default
 * protocol, the list of needles (updated in place by register_by_value), copyreg's
 * extension registry. */
static PyObject *c_dumps, *default_protocol, *needles, *extensions;

/* Whether buf[0:len] holds "__main__".  glibc's memmem costs ~3 instructions a byte on
 * short haystacks, as much as a tenth of pickling a small tuple; this looks at 16 positions
 * at a time for '_' followed two bytes later by 'm', and compares only there. */
static int
has_main(const char *buf, Py_ssize_t len)
{
    Py_ssize_t i = 0;
#ifdef __SSE2__
    const __m128i first = _mm_set1_epi8('_'), third = _mm_set1_epi8('m');
#define HIT(at) _mm_and_si128( \
        _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(buf + (at))), first), \
        _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(buf + (at) + 2)), third))
    /* 64 positions at a time while none is a candidate: the usual case. */
    while (i + 8 + 64 <= len
           && !_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(HIT(i), HIT(i + 16)),
                                              _mm_or_si128(HIT(i + 32), HIT(i + 48)))))
        i += 64;
#undef HIT
    for (; i + 8 + 16 <= len; i += 16) {
        const __m128i a = _mm_loadu_si128((const __m128i *)(buf + i));
        const __m128i c = _mm_loadu_si128((const __m128i *)(buf + i + 2));
        unsigned mask = (unsigned)_mm_movemask_epi8(
            _mm_and_si128(_mm_cmpeq_epi8(a, first), _mm_cmpeq_epi8(c, third)));
        while (mask) {
            const int bit = __builtin_ctz(mask);
            if (memcmp(buf + i + bit, "__main__", 8) == 0)
                return 1;
            mask &= mask - 1;
        }
    }
#endif
    for (; i + 8 <= len; i++)
        if (buf[i] == '_' && buf[i + 2] == 'm' && memcmp(buf + i, "__main__", 8) == 0)
            return 1;
    return 0;
}

static int
names_by_value(PyObject *data)
{
    const char *buf = PyBytes_AS_STRING(data);
    const Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (has_main(buf, len))
        return 1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(needles); i++) {
        PyObject *needle = PyList_GET_ITEM(needles, i);
        if (PyBytes_Check(needle)
            && memmem(buf, (size_t)len, PyBytes_AS_STRING(needle),
                      (size_t)PyBytes_GET_SIZE(needle)) != NULL)
            return 1;
    }
    return 0;
}

static PyObject *
dumps_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (c_dumps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "mason._entry.configure_dumps was not called");
        return NULL;
    }
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "dumps_plain(obj[, protocol])");
        return NULL;
    }
    /* A function at the top most likely travels by value: skip the failing attempt.  A
     * registered extension code names no module in the output: the long way then. */
    if (PyFunction_Check(args[0]) || !PyList_CheckExact(needles)
        || (PyDict_Check(extensions) && PyDict_GET_SIZE(extensions)))
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *call[2] = {args[0], nargs == 2 && args[1] != Py_None ? args[1] : default_protocol};
    PyObject *data = PyObject_Vectorcall(c_dumps, call, 2, NULL);
    if (data == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (!PyBytes_CheckExact(data) || names_by_value(data)) {
        Py_DECREF(data);
        Py_RETURN_NOTIMPLEMENTED;
    }
    return data;
}

static PyObject *
configure_dumps(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "configure_dumps(c_dumps, default_protocol, needles, extensions)");
        return NULL;
    }
    Py_XSETREF(c_dumps, Py_NewRef(args[0]));
    Py_XSETREF(default_protocol, Py_NewRef(args[1]));
    Py_XSETREF(needles, Py_NewRef(args[2]));
    Py_XSETREF(extensions, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"dumps_plain", (PyCFunction)(void (*)(void))dumps_plain, METH_FASTCALL,
     "dumps_plain(obj[, protocol]): the C pickler's bytes, or NotImplemented when the "
     "pickle must be made by value (see the module's comment)"},
    {"configure_dumps", (PyCFunction)(void (*)(void))configure_dumps, METH_FASTCALL,
     "configure_dumps(c_dumps, default_protocol, needles, extensions)"},
    {NULL}
};

static struct PyModuleDef entry_module = {
    PyModuleDef_HEAD_INIT, "mason._entry",
    "mason.dumps and mason.loads as compiled callables.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__entry(void)
{
    PyObject *m = PyModule_Create(&entry_module);
    if (m == NULL)
        return NULL;
    PyObject *type = PyType_FromSpec(&entry_spec);
    if (type == NULL || PyModule_AddObject(m, "Entry", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
