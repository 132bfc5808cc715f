/* What mason's compiled modules (_limits.c, _scan.c) share about reading pickle bytes:
 * the argument layouts of mason.format.opcodes.Arg, little-endian reads, growable arrays,
 * and reading the opcode table's entries.  Each module keeps its own per-byte tables,
 * filled at import from mason.format.opcodes, so no opcode byte is written down in C. */
#ifndef MASON_PICKLE_BYTES_H
#define MASON_PICKLE_BYTES_H

#include <Python.h>
#include <stdint.h>

/* Must match mason.format.opcodes.Arg. */
enum { ARG_NONE, ARG_FIXED1, ARG_FIXED2, ARG_FIXED4, ARG_FIXED8, ARG_LEN1, ARG_LEN4,
       ARG_LEN4_SIGNED, ARG_LEN8, ARG_LINE, ARG_LINE2 };

/* Bytes of the fixed part of each argument layout (the value, or the length prefix). */
static const int arg_size[] = {0, 1, 2, 4, 8, 1, 4, 4, 8, 0, 0};

static inline uint64_t
read_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Grow *buf (of *cap items of ``item`` bytes) to hold at least ``need`` items, doubling. */
static int
grow_slow(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t item)
{
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

static inline int
grow(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t item)
{
    return need <= *cap ? 0 : grow_slow(buf, cap, need, item);
}

/* An int attribute of an opcode table entry; -1 with an exception set on failure. */
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

#endif
