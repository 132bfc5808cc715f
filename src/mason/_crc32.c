/* mason._crc32: zlib's CRC-32 (the one zip members carry), with the CPU's carry-less multiply.
 *
 * crc32(data, value=0) gives exactly zlib.crc32's result.  A container save checksums every
 * byte it writes; zlib's table-driven CRC runs at about 3 GB/s here, slower than writing to
 * the page cache, so it, not the write, set the speed of a save.  Folding 64 bytes at a time
 * with PCLMULQDQ (Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ",
 * the method of the Linux kernel's and Chromium's zlib) runs several times faster.
 *
 * HARDWARE says whether this CPU has the instructions; without them crc32 is a plain table
 * loop and mason.files prefers another implementation.  The GIL is released on large
 * buffers, so a checksum runs beside the write that another thread makes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_FOLDING 1
#endif

static uint32_t table[256];
static int hardware = 0;

static void
make_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[n] = c;
    }
}

/* Both helpers take and return the CRC register, i.e. the inverted CRC value. */
static uint32_t
crc_bytes(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n--)
        crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#ifdef HAVE_FOLDING
/* len >= 64 and a multiple of 16.  The constants are x^(4*128+64), x^(4*128) ... mod P in
 * the bit-reflected domain, and P and its Barrett constant, as in the paper's appendix. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t
crc_fold(uint32_t crc, const unsigned char *buf, size_t len)
{
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
    const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8;

    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = k1k2;
    buf += 64;
    len -= 64;

    while (len >= 64) {   /* four lanes, each folded 64 bytes forward */
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5),
                           _mm_loadu_si128((const __m128i *)(buf + 0x00)));
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6),
                           _mm_loadu_si128((const __m128i *)(buf + 0x10)));
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7),
                           _mm_loadu_si128((const __m128i *)(buf + 0x20)));
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8),
                           _mm_loadu_si128((const __m128i *)(buf + 0x30)));
        buf += 64;
        len -= 64;
    }

    /* The four lanes into one. */
    x0 = k3k4;
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);

    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }

    /* 128 bits to 64, then Barrett reduction to 32. */
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = k5k0;
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = poly;
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

static uint32_t
crc_update(uint32_t value, const unsigned char *buf, size_t len)
{
    uint32_t crc = ~value;
#ifdef HAVE_FOLDING
    if (hardware && len >= 64) {
        const size_t chunk = len & ~(size_t)15;
        crc = crc_fold(crc, buf, chunk);
        buf += chunk;
        len -= chunk;
    }
#endif
    return ~crc_bytes(crc, buf, len);
}

static PyObject *
crc32(PyObject *module, PyObject *args)
{
    Py_buffer view;
    unsigned int value = 0;
    if (!PyArg_ParseTuple(args, "y*|I:crc32", &view, &value))
        return NULL;
    uint32_t result;
    if (view.len >= (1 << 16)) {
        Py_BEGIN_ALLOW_THREADS
        result = crc_update(value, view.buf, (size_t)view.len);
        Py_END_ALLOW_THREADS
    }
    else
        result = crc_update(value, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(result);
}

static PyMethodDef module_methods[] = {
    {"crc32", crc32, METH_VARARGS,
     "crc32(data, value=0): zlib.crc32's result, with the CPU's carry-less multiply"},
    {NULL}
};

static struct PyModuleDef crc32_module = {
    PyModuleDef_HEAD_INIT, "mason._crc32",
    "zlib's CRC-32 with the CPU's carry-less multiply.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__crc32(void)
{
    make_table();
#ifdef HAVE_FOLDING
    __builtin_cpu_init();
    hardware = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
    PyObject *m = PyModule_Create(&crc32_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObject(m, "HARDWARE", PyBool_FromLong(hardware)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
