/*
 * Optional compiled kernel of scorers/fasttext_native.py: the character n-grams
 * of many tokens, hashed and mapped to embedding rows as fastText does
 * (Dictionary::computeSubwords + pushHash). The numpy code in
 * fasttext_native._char_ngrams computes exactly the same pairs and is used
 * when this module is not built; tests compare the two.
 *
 * char_ngrams(data, offsets, table, table_itemsize, nwords, bucket, minn, maxn,
 *             out_token, out_row) -> count
 *   data      bytes of the tokens, back to back (uint8)
 *   offsets   int64[n + 1], token i = data[offsets[i]:offsets[i + 1]]
 *   table     bucket -> input row + 1 (0: pruned), uint16 or int32; an empty
 *             buffer means "not pruned": row = nwords + bucket
 *   out_token int32[capacity], out_row int32[capacity]; capacity must be at
 *             least (len(data) + 2 n) * (maxn - minn + 1)
 *   returns the number of (token, row) pairs written
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static PyObject *char_ngrams(PyObject *self, PyObject *args) {
    Py_buffer data, offsets, table, out_tok, out_row;
    int table_itemsize, minn, maxn;
    long long nwords;
    unsigned int bucket;
    if (!PyArg_ParseTuple(args, "y*y*y*iLIiiw*w*", &data, &offsets, &table, &table_itemsize,
                          &nwords, &bucket, &minn, &maxn, &out_tok, &out_row))
        return NULL;
    PyObject *result = NULL;
    unsigned char *word = NULL;
    int64_t *starts = NULL;
    const unsigned char *d = (const unsigned char *)data.buf;
    const int64_t *off = (const int64_t *)offsets.buf;
    Py_ssize_t n = offsets.len / 8 - 1;
    Py_ssize_t cap_tok = out_tok.len / 4, cap_row = out_row.len / 4;
    int32_t *ot = (int32_t *)out_tok.buf, *orow = (int32_t *)out_row.buf;
    int pruned = table.len > 0;
    if (n < 0 || n > INT32_MAX || bucket == 0 || minn < 1 || maxn < minn ||
        nwords + (long long)bucket >= INT32_MAX ||
        (pruned && table_itemsize != 2 && table_itemsize != 4) ||
        (pruned && (Py_ssize_t)table.len / table_itemsize < (Py_ssize_t)bucket)) {
        PyErr_SetString(PyExc_ValueError, "char_ngrams: bad arguments");
        goto done;
    }
    Py_ssize_t need = (data.len + 2 * n) * (Py_ssize_t)(maxn - minn + 1);
    if (cap_tok < need || cap_row < need) {
        PyErr_SetString(PyExc_ValueError, "char_ngrams: output buffers too small");
        goto done;
    }
    int64_t longest = 0;
    for (Py_ssize_t t = 0; t < n; t++) {
        if (off[t + 1] < off[t] || off[t + 1] > data.len || off[t] < 0) {
            PyErr_SetString(PyExc_ValueError, "char_ngrams: bad offsets");
            goto done;
        }
        if (off[t + 1] - off[t] > longest) longest = off[t + 1] - off[t];
    }
    word = (unsigned char *)malloc((size_t)longest + 2);
    starts = (int64_t *)malloc(sizeof(int64_t) * ((size_t)longest + 3));
    if (!word || !starts) {
        PyErr_NoMemory();
        goto done;
    }
    const uint16_t *t16 = (const uint16_t *)table.buf;
    const int32_t *t32 = (const int32_t *)table.buf;
    Py_ssize_t k = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < n; t++) {
        int64_t len = off[t + 1] - off[t];
        int64_t size = len + 2;
        word[0] = '<';
        memcpy(word + 1, d + off[t], (size_t)len);
        word[size - 1] = '>';
        int64_t nch = 0;
        for (int64_t i = 0; i < size; i++)
            if ((word[i] & 0xC0) != 0x80) starts[nch++] = i;
        starts[nch] = size;
        /* n-major order (all n-grams of n characters, then n + 1, ...): the order in which
           the numpy implementation sums them, so both give bit-identical sums */
        for (int nn = minn; nn <= maxn; nn++) {
            for (int64_t c = 0; c + nn <= nch; c++) {
                if (nn == 1 && (c == 0 || c + 1 == nch)) continue;   /* a lone '<' or '>' */
                uint32_t h = 2166136261u;
                for (int64_t j = starts[c]; j < starts[c + nn]; j++)
                    h = (h ^ (uint32_t)(int8_t)word[j]) * 16777619u;
                uint32_t b = h % bucket;
                int64_t row;
                if (!pruned) row = nwords + (int64_t)b + 1;
                else if (table_itemsize == 2) row = t16[b];
                else row = t32[b];
                if (row > 0) {
                    ot[k] = (int32_t)t;
                    orow[k] = (int32_t)row;
                    k++;
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(k);
done:
    free(word);
    free(starts);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&table);
    PyBuffer_Release(&out_tok);
    PyBuffer_Release(&out_row);
    return result;
}

static PyMethodDef methods[] = {
    {"char_ngrams", char_ngrams, METH_VARARGS,
     "fastText character n-grams of many tokens -> (token, input row + 1) pairs; returns the count"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ftnative",
                                    "compiled kernel of scorers.fasttext_native", -1, methods};

PyMODINIT_FUNC PyInit__ftnative(void) { return PyModule_Create(&module); }
