/* The answer memo's reading of a serialized CheckRequest, straight from its bytes.
 *
 * The gRPC door answers a repeat (authz/grpc/repeat.py) from a few fields of the request. Reading
 * them through protobuf builds a Python object for every header; this reads them from the wire
 * and builds only the memo's key, which is about half of the door's cost on a repeat.
 *
 * One rule makes it safe: read() returns a reading only when protobuf's parser would accept the
 * message AND repeat.read_repeat would give that same reading. Anything else returns None, and the
 * door parses the message with protobuf and decides as before. So every doubt declines:
 *
 *  - the whole message is checked against the schema it is configured with (configure(), from
 *    the generated descriptors): a known field with another wire type, a group, a field number 0,
 *    a varint longer than ten bytes or not in its shortest form, a length past its end, nesting
 *    deeper than MAX_DEPTH, a string field that is not valid UTF-8: declined (protobuf rejects
 *    some of these and reads the others its own way);
 *  - a field this reads, or a message it reads through, that is sent twice (protobuf merges or
 *    keeps the last): declined; so are a map key sent twice, a map entry with a field other than
 *    its key and value (protobuf leaves such an entry out of the map) and more entries than it keeps;
 *  - then repeat.read_repeat's own rules, in the same order (see there).
 *
 * tests/grpc/test_wire_reader.py holds it to protobuf and read_repeat on every message the tests
 * build and on mutants of them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

enum { K_VARINT, K_FIXED64, K_FIXED32, K_STRING, K_BYTES, K_MESSAGE };
/* The wire type each kind arrives as (packed repeated numbers, which no field read here is,
   are declined with the rest). */
static const int WIRE_OF_KIND[] = {0, 1, 5, 2, 2, 2};
/* protobuf's own limit in Python is 100; deeper messages are left to it. */
#define MAX_DEPTH 64
#define MAX_HEADERS 128
#define MAX_EXTENSIONS 32
#define MAX_NAMES 16
#define NAME_LEN 64

typedef struct {
    uint32_t number;
    int kind;
    Py_ssize_t sub;
} Field;

typedef struct {
    Field *fields;
    Py_ssize_t count;
} Message;

typedef struct {
    const unsigned char *p, *end;
} Buf;

typedef struct {
    char names[MAX_NAMES][NAME_LEN];
    size_t lengths[MAX_NAMES];
    int count;
} Names;

/* What configure() set: the schema (messages[0] is CheckRequest) and repeat.py's rules. */
static Message *messages = NULL;
static Py_ssize_t message_count = 0;
static Names trace_names, never_names, cgi_identity, own_identity;
static PyObject *trace_objects[MAX_NAMES]; /* the trace header names as str, for the dict */
static PyObject *read_type = NULL;          /* RepeatRead */
static Py_ssize_t kept_authorization = 0, kept_rest = 0;

#define LEN(b) ((Py_ssize_t)((b).end - (b).p))
#define PRESENT(b) ((b).p != NULL)

/* A varint in its shortest form, at most ten bytes: 1, or 0 (declined). */
static int varint(Buf *b, uint64_t *out) {
    uint64_t value = 0;
    for (int i = 0; i < 10; i++) {
        if (b->p >= b->end) return 0;
        unsigned char c = *b->p++;
        if (i == 9 && c > 1) return 0;
        value |= (uint64_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) {
            if (i > 0 && c == 0) return 0; /* not the shortest form */
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* The next field: 1 (number, wire type, and for a length-delimited one its bytes), 0 at the end,
   -1 declined. Fixed and varint values are skipped (nothing read here is a number). */
static int next_field(Buf *b, uint32_t *number, int *wire, Buf *sub) {
    uint64_t tag, value;
    if (b->p >= b->end) return 0;
    if (!varint(b, &tag) || tag > 0xffffffffu) return -1;
    *number = (uint32_t)(tag >> 3);
    *wire = (int)(tag & 7);
    if (*number == 0) return -1;
    switch (*wire) {
    case 0:
        return varint(b, &value) ? 1 : -1;
    case 1:
        if (b->end - b->p < 8) return -1;
        b->p += 8;
        return 1;
    case 5:
        if (b->end - b->p < 4) return -1;
        b->p += 4;
        return 1;
    case 2:
        if (!varint(b, &value) || value > (uint64_t)(b->end - b->p)) return -1;
        sub->p = b->p;
        sub->end = b->p + value;
        b->p += value;
        return 1;
    default: /* groups (3, 4) and the wire types that do not exist (6, 7) */
        return -1;
    }
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF. */
static int utf8_valid(Buf s) {
    const unsigned char *p = s.p, *end = s.end;
    while (p < end) {
        uint64_t eight;
        if (end - p >= 8 && (memcpy(&eight, p, 8), (eight & 0x8080808080808080ull) == 0)) {
            p += 8; /* eight ASCII bytes */
            continue;
        }
        unsigned char c = *p;
        if (c < 0x80) {
            p++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            if (end - p < 2 || (p[1] & 0xc0) != 0x80) return 0;
            p += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (end - p < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) return 0;
            if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f)) return 0;
            p += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (end - p < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
                return 0;
            if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f)) return 0;
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Whether message `index` of the schema accepts these bytes as protobuf would (or stricter). */
static int valid(Buf b, Py_ssize_t index, int depth) {
    if (depth > MAX_DEPTH) return 0;
    const Message *message = &messages[index];
    uint32_t number;
    int wire, r;
    Buf sub = {NULL, NULL};
    while ((r = next_field(&b, &number, &wire, &sub)) == 1) {
        const Field *field = NULL;
        for (Py_ssize_t i = 0; i < message->count; i++) {
            if (message->fields[i].number == number) {
                field = &message->fields[i];
                break;
            }
        }
        if (field == NULL) continue; /* an unknown field: kept by protobuf, never read */
        if (wire != WIRE_OF_KIND[field->kind]) return 0;
        if (field->kind == K_STRING && !utf8_valid(sub)) return 0;
        if (field->kind == K_MESSAGE && !valid(sub, field->sub, depth + 1)) return 0;
    }
    return r == 0;
}

/* Sets `slot` to a singular field's bytes: 0 if it was set already (protobuf keeps the last, or
   merges) or the wire type is not length-delimited. */
static int once(Buf *slot, int wire, Buf value) {
    if (wire != 2 || PRESENT(*slot)) return 0;
    *slot = value;
    return 1;
}

static int equal(Buf a, Buf b) { return LEN(a) == LEN(b) && memcmp(a.p, b.p, (size_t)LEN(a)) == 0; }

static int is_name(Buf s, const char *name, size_t length) {
    return (size_t)LEN(s) == length && memcmp(s.p, name, length) == 0;
}

static int in_names(Buf s, const Names *names) {
    for (int i = 0; i < names->count; i++)
        if (is_name(s, names->names[i], names->lengths[i])) return 1;
    return 0;
}

/* Lower-case ASCII, as Envoy sends header names (repeat._names_pass). */
static int lower_ascii(Buf s) {
    for (const unsigned char *q = s.p; q < s.end; q++)
        if (*q >= 0x80 || (*q >= 'A' && *q <= 'Z')) return 0;
    return 1;
}

/* Another spelling of one of our identity headers (core.answer.identity_spellings), for a
   lower-case ASCII name: its CGI form is one of ours, and it is not ours as spelled. */
static int identity_spelling(Buf s) {
    char cgi[NAME_LEN];
    Py_ssize_t n = LEN(s);
    if (n >= NAME_LEN) return 0; /* longer than any of ours (configure checks) */
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s.p[i];
        cgi[i] = (char)((c >= 'a' && c <= 'z') ? c - 32 : ((c >= '0' && c <= '9') ? c : '_'));
    }
    Buf form = {(const unsigned char *)cgi, (const unsigned char *)cgi + n};
    return in_names(form, &cgi_identity) && !in_names(s, &own_identity);
}

typedef struct {
    Buf key, value, raw;
} Header;

static const unsigned char EMPTY[1] = {0};

static Buf or_empty(Buf b) {
    if (!PRESENT(b)) {
        b.p = b.end = EMPTY;
    }
    return b;
}

/* A HeaderValue (key 1, value 2, raw_value 3) or, if `map_entry`, a map entry (key 1, value 2):
   each at most once, and each "" when absent, as protobuf reads it. Protobuf keeps a map entry
   with any other field as an unknown field of the message, out of the map: declined. */
static int read_header(Buf entry, Header *header, int map_entry) {
    uint32_t number;
    int wire, r;
    Buf sub = {NULL, NULL};
    header->key.p = header->value.p = header->raw.p = NULL;
    header->key.end = header->value.end = header->raw.end = NULL;
    while ((r = next_field(&entry, &number, &wire, &sub)) == 1) {
        Buf *slot = number == 1 ? &header->key : number == 2 ? &header->value : number == 3 ? &header->raw : NULL;
        if (map_entry && slot != &header->key && slot != &header->value) return 0;
        if (slot != NULL && !once(slot, wire, sub)) return 0;
    }
    header->key = or_empty(header->key);
    header->value = or_empty(header->value);
    header->raw = or_empty(header->raw);
    return r == 0;
}

/* A header_map entry's value as repeat._value reads it: the raw bytes (decoded, errors replaced)
   if any, else the value. In the headers map form (raw absent) the value is valid UTF-8. */
static PyObject *header_text(const Header *h) {
    if (LEN(h->raw) > 0) return PyUnicode_DecodeUTF8((const char *)h->raw.p, LEN(h->raw), "replace");
    return PyUnicode_DecodeUTF8((const char *)h->value.p, LEN(h->value), NULL);
}

static PyObject *text(Buf b) {
    b = or_empty(b);
    return PyUnicode_DecodeUTF8((const char *)b.p, LEN(b), NULL);
}

/* core.request.plain_request_id: [A-Za-z0-9._:-]{1,128}, else "". */
static PyObject *plain_request_id(Buf b) {
    Py_ssize_t n = LEN(b);
    int plain = n >= 1 && n <= 128;
    for (Py_ssize_t i = 0; plain && i < n; i++) {
        unsigned char c = b.p[i];
        plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                c == '_' || c == ':' || c == '-';
    }
    return plain ? PyUnicode_DecodeASCII((const char *)b.p, n, NULL) : PyUnicode_FromStringAndSize("", 0);
}

typedef struct {
    Buf attributes, source, request, http, header_map;
    Buf principal, certificate, id, method, path, host, scheme;
    Buf extensions[MAX_EXTENSIONS];
    int extension_count;
    Buf plain[MAX_HEADERS];
    int plain_count;
    Buf entries[MAX_HEADERS];
    int entry_count;
} Found;

/* Walks down to the fields read: 1, or 0 (declined). */
static int find(Buf top, Found *f) {
    uint32_t number;
    int wire, r;
    Buf sub = {NULL, NULL};
    memset(f, 0, offsetof(Found, extensions)); /* the lists are read up to their counts only */
    f->extension_count = f->plain_count = f->entry_count = 0;
    while ((r = next_field(&top, &number, &wire, &sub)) == 1)
        if (number == 1 && !once(&f->attributes, wire, sub)) return 0;
    if (r < 0 || !PRESENT(f->attributes)) return 0;
    Buf attributes = f->attributes;
    while ((r = next_field(&attributes, &number, &wire, &sub)) == 1) {
        if (number == 1) {
            if (!once(&f->source, wire, sub)) return 0;
        } else if (number == 4) {
            if (!once(&f->request, wire, sub)) return 0;
        } else if (number == 10) {
            if (wire != 2 || f->extension_count == MAX_EXTENSIONS) return 0;
            f->extensions[f->extension_count++] = sub;
        }
    }
    if (r < 0 || !PRESENT(f->request)) return 0;
    if (PRESENT(f->source)) {
        Buf source = f->source;
        while ((r = next_field(&source, &number, &wire, &sub)) == 1) {
            if (number == 4) {
                if (!once(&f->principal, wire, sub)) return 0;
            } else if (number == 5) {
                if (!once(&f->certificate, wire, sub)) return 0;
            }
        }
        if (r < 0) return 0;
    }
    Buf request = f->request;
    while ((r = next_field(&request, &number, &wire, &sub)) == 1)
        if (number == 2 && !once(&f->http, wire, sub)) return 0;
    if (r < 0 || !PRESENT(f->http)) return 0;
    Buf http = f->http;
    while ((r = next_field(&http, &number, &wire, &sub)) == 1) {
        Buf *slot = NULL;
        switch (number) {
        case 1: slot = &f->id; break;
        case 2: slot = &f->method; break;
        case 4: slot = &f->path; break;
        case 5: slot = &f->host; break;
        case 6: slot = &f->scheme; break;
        case 13: slot = &f->header_map; break;
        case 3:
            if (wire != 2 || f->plain_count == MAX_HEADERS) return 0;
            f->plain[f->plain_count++] = sub;
            continue;
        default: continue;
        }
        if (!once(slot, wire, sub)) return 0;
    }
    if (r < 0) return 0;
    if (PRESENT(f->header_map)) {
        Buf map = f->header_map;
        while ((r = next_field(&map, &number, &wire, &sub)) == 1) {
            if (number != 1) continue;
            if (wire != 2 || f->entry_count == MAX_HEADERS) return 0;
            f->entries[f->entry_count++] = sub;
        }
        if (r < 0) return 0;
    }
    return 1;
}

/* The reading of the found fields, or Py_None (declined), or NULL (a Python error). */
static PyObject *build(const Found *f) {
    /* Left to the pseudo-headers, which the key does not hold. */
    if (!LEN(f->method) || !LEN(f->path) || !LEN(f->host) || !LEN(f->scheme)) Py_RETURN_NONE;
    Header headers[MAX_HEADERS];
    int count, raw_form;
    if (f->entry_count > 0) { /* header_map (encode_raw_headers); never beside the headers map */
        if (f->plain_count > 0) Py_RETURN_NONE;
        count = f->entry_count;
        raw_form = 1;
        for (int i = 0; i < count; i++)
            if (!read_header(f->entries[i], &headers[i], 0)) Py_RETURN_NONE;
    } else { /* the headers map: one entry per name (a name sent twice: declined) */
        count = f->plain_count;
        raw_form = 0;
        for (int i = 0; i < count; i++) {
            if (!read_header(f->plain[i], &headers[i], 1)) Py_RETURN_NONE;
            for (int j = 0; j < i; j++)
                if (equal(headers[i].key, headers[j].key)) Py_RETURN_NONE;
        }
    }
    int authorization = -1, request_id = -1, forwarded_count = 0, traced = 0;
    for (int i = 0; i < count; i++) {
        Buf name = headers[i].key;
        if (!lower_ascii(name) || in_names(name, &never_names) || identity_spelling(name)) Py_RETURN_NONE;
        if (is_name(name, "authorization", 13)) {
            if (authorization >= 0) Py_RETURN_NONE;
            authorization = i;
        } else if (is_name(name, "x-request-id", 12)) {
            if (request_id < 0) request_id = i;
        } else if (is_name(name, "x-forwarded-client-cert", 23)) {
            forwarded_count++;
        } else if (in_names(name, &trace_names)) {
            traced = 1;
        }
    }
    if (authorization < 0) Py_RETURN_NONE;
    const Header *a = &headers[authorization];
    Buf sent = raw_form && LEN(a->raw) > 0 ? a->raw : a->value;
    /* A Bearer credential (any case), never the DPoP scheme's: anything else is read by repeat.py. */
    if (LEN(sent) < 5 || LEN(sent) > kept_authorization) Py_RETURN_NONE;
    static const char bearer[] = "beare";
    for (int i = 0; i < 5; i++) {
        unsigned char c = sent.p[i];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != (unsigned char)bearer[i]) Py_RETURN_NONE;
    }
    /* The routed pairs, sorted by key (UTF-8's byte order is its code points' order). */
    Header routes[MAX_EXTENSIONS];
    for (int i = 0; i < f->extension_count; i++) {
        if (!read_header(f->extensions[i], &routes[i], 1)) Py_RETURN_NONE;
        Header moved = routes[i];
        int j = i;
        for (; j > 0; j--) {
            Buf k = routes[j - 1].key;
            Py_ssize_t n = LEN(k) < LEN(moved.key) ? LEN(k) : LEN(moved.key);
            int c = memcmp(k.p, moved.key.p, (size_t)n);
            if (c == 0 && LEN(k) == LEN(moved.key)) Py_RETURN_NONE; /* a key sent twice */
            if (c < 0 || (c == 0 && LEN(k) < LEN(moved.key))) break;
            routes[j] = routes[j - 1];
        }
        routes[j] = moved;
    }

    PyObject *result = NULL, *rest = NULL, *routed = NULL, *forwarded = NULL, *trace = NULL;
    PyObject *rid = NULL, *kept = NULL, *key = NULL;
    PyObject *values[7] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    Buf strings[6] = {f->method, f->path, f->host, f->scheme, f->principal, f->certificate};
    for (int i = 0; i < 6; i++)
        if ((values[i] = text(strings[i])) == NULL) goto error;
    /* The forwarded client certificates: every value, joined (the headers map has one). */
    if (forwarded_count == 0) {
        forwarded = PyUnicode_FromStringAndSize("", 0);
    } else {
        PyObject *parts = PyList_New(0);
        if (parts == NULL) goto error;
        for (int i = 0; i < count; i++) {
            if (!is_name(headers[i].key, "x-forwarded-client-cert", 23)) continue;
            PyObject *part = header_text(&headers[i]);
            if (part == NULL || PyList_Append(parts, part) < 0) {
                Py_XDECREF(part);
                Py_DECREF(parts);
                goto error;
            }
            Py_DECREF(part);
        }
        PyObject *comma = PyUnicode_FromStringAndSize(",", 1);
        forwarded = comma ? PyUnicode_Join(comma, parts) : NULL;
        Py_XDECREF(comma);
        Py_DECREF(parts);
    }
    if (forwarded == NULL) goto error;
    values[6] = forwarded;
    Py_INCREF(forwarded);
    if ((routed = PyTuple_New(f->extension_count)) == NULL) goto error;
    Py_ssize_t size = 0;
    for (int i = 0; i < f->extension_count; i++) {
        PyObject *k = text(routes[i].key), *v = k ? text(routes[i].value) : NULL;
        PyObject *pair = v ? PyTuple_Pack(2, k, v) : NULL;
        if (pair != NULL) size += PyUnicode_GET_LENGTH(k) + PyUnicode_GET_LENGTH(v);
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (pair == NULL) goto error;
        PyTuple_SET_ITEM(routed, i, pair);
    }
    for (int i = 0; i < 7; i++) size += PyUnicode_GET_LENGTH(values[i]);
    if (size > kept_rest) { /* kept as a digest: repeat.py makes it */
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    if ((rest = PyTuple_New(8)) == NULL) goto error;
    for (int i = 0; i < 7; i++) {
        PyTuple_SET_ITEM(rest, i, values[i]);
        values[i] = NULL;
    }
    PyTuple_SET_ITEM(rest, 7, routed);
    routed = NULL;
    if ((kept = PyBytes_FromStringAndSize((const char *)sent.p, LEN(sent))) == NULL) goto error;
    if ((key = PyTuple_Pack(2, rest, kept)) == NULL) goto error;
    /* The request id: x-request-id's first value, else the id Envoy gave. */
    Buf id = f->id;
    if (request_id >= 0) {
        const Header *h = &headers[request_id];
        Buf chosen = raw_form && LEN(h->raw) > 0 ? h->raw : h->value;
        if (LEN(chosen) > 0) id = chosen;
    }
    if ((rid = plain_request_id(id)) == NULL) goto error;
    /* The first value of each trace-context header sent. */
    if (traced) {
        if ((trace = PyDict_New()) == NULL) goto error;
        for (int t = 0; t < trace_names.count; t++) {
            for (int i = 0; i < count; i++) {
                if (!is_name(headers[i].key, trace_names.names[t], trace_names.lengths[t])) continue;
                PyObject *value = header_text(&headers[i]);
                PyObject *one = value ? PyTuple_Pack(1, value) : NULL;
                Py_XDECREF(value);
                if (one == NULL || PyDict_SetItem(trace, trace_objects[t], one) < 0) {
                    Py_XDECREF(one);
                    goto error;
                }
                Py_DECREF(one);
                break;
            }
        }
    } else {
        trace = Py_None;
        Py_INCREF(trace);
    }
    /* RepeatRead(key, request_id, trace_headers, peer_certificate, forwarded_certificate) */
    /* made as tuple.__new__ makes it (RepeatRead's own __new__ is a Python function) */
    result = ((PyTypeObject *)read_type)->tp_alloc((PyTypeObject *)read_type, 5);
    if (result == NULL) goto error;
    PyObject *items[5] = {key, rid, trace, PyTuple_GET_ITEM(rest, 5), forwarded};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(result, i, items[i]);
    }
    goto done;
error:
    Py_CLEAR(result);
done:
    for (int i = 0; i < 7; i++) Py_XDECREF(values[i]);
    Py_XDECREF(forwarded);
    Py_XDECREF(routed);
    Py_XDECREF(rest);
    Py_XDECREF(kept);
    Py_XDECREF(key);
    Py_XDECREF(rid);
    Py_XDECREF(trace);
    return result;
}

static int configured(void) {
    if (messages == NULL || read_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "authz.grpc._wire is not configured");
        return 0;
    }
    return 1;
}

static PyObject *wire_valid(PyObject *self, PyObject *data) {
    Py_buffer view;
    if (!configured() || PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    Buf all = {view.buf, (const unsigned char *)view.buf + view.len};
    int ok = valid(all, 0, 0);
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

static PyObject *wire_read(PyObject *self, PyObject *data) {
    Py_buffer view;
    if (!configured() || PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    Buf all = {view.buf, (const unsigned char *)view.buf + view.len};
    PyObject *result;
    Found *found = PyMem_Malloc(sizeof(Found));
    if (found == NULL) {
        result = PyErr_NoMemory();
    } else if (!valid(all, 0, 0) || !find(all, found)) {
        result = Py_None;
        Py_INCREF(result);
    } else {
        result = build(found);
    }
    PyMem_Free(found);
    PyBuffer_Release(&view);
    return result;
}

/* A tuple of header names into `names` (each shorter than NAME_LEN); 0 with an error set. */
static int set_names(PyObject *source, Names *names, PyObject **objects) {
    PyObject *seq = PySequence_Fast(source, "names must be a sequence");
    if (seq == NULL) return 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_NAMES) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many names");
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t length;
        const char *utf8 = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &length);
        if (utf8 == NULL || length >= NAME_LEN) {
            Py_DECREF(seq);
            if (utf8 != NULL) PyErr_SetString(PyExc_ValueError, "a name too long");
            return 0;
        }
        memcpy(names->names[i], utf8, (size_t)length);
        names->lengths[i] = (size_t)length;
        if (objects != NULL) {
            Py_XSETREF(objects[i], PySequence_Fast_GET_ITEM(seq, i));
            Py_INCREF(objects[i]);
        }
    }
    names->count = (int)n;
    Py_DECREF(seq);
    return 1;
}

/* configure(schema, rules): schema is a tuple of messages, each a tuple of (number, kind, sub)
   (messages[0] is CheckRequest); rules is (RepeatRead, trace names, never-repeated names, CGI
   forms of our identity headers, our identity headers, KEPT_AUTHORIZATION, KEPT_REST). */
static PyObject *wire_configure(PyObject *self, PyObject *args) {
    PyObject *schema, *type, *trace, *never, *cgi, *own;
    Py_ssize_t authorization, rest;
    if (!PyArg_ParseTuple(args, "O!(OOOOOnn)", &PyTuple_Type, &schema, &type, &trace, &never, &cgi, &own,
                          &authorization, &rest))
        return NULL;
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) ||
        ((PyTypeObject *)type)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "the reading's type must be a tuple of five (RepeatRead)");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(schema);
    Message *built = PyMem_Calloc((size_t)count + 1, sizeof(Message));
    if (built == NULL) return PyErr_NoMemory();
    for (Py_ssize_t m = 0; m < count; m++) {
        PyObject *fields = PyTuple_GET_ITEM(schema, m);
        if (!PyTuple_Check(fields)) goto bad;
        Py_ssize_t n = PyTuple_GET_SIZE(fields);
        built[m].fields = PyMem_Calloc((size_t)n + 1, sizeof(Field));
        built[m].count = n;
        if (built[m].fields == NULL) goto bad;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned int number;
            int kind;
            Py_ssize_t sub;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, i), "Iin", &number, &kind, &sub)) goto bad;
            if (kind < K_VARINT || kind > K_MESSAGE || (kind == K_MESSAGE && (sub < 0 || sub >= count))) {
                PyErr_SetString(PyExc_ValueError, "a field of an unknown kind or message");
                goto bad;
            }
            built[m].fields[i] = (Field){number, kind, sub};
        }
    }
    if (count == 0 || !set_names(trace, &trace_names, trace_objects) || !set_names(never, &never_names, NULL) ||
        !set_names(cgi, &cgi_identity, NULL) || !set_names(own, &own_identity, NULL)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "an empty schema");
        goto bad;
    }
    if (messages != NULL) { /* configured again (tests): the old schema goes */
        for (Py_ssize_t m = 0; m < message_count; m++) PyMem_Free(messages[m].fields);
        PyMem_Free(messages);
    }
    messages = built;
    message_count = count;
    Py_INCREF(type);
    Py_XSETREF(read_type, type);
    kept_authorization = authorization;
    kept_rest = rest;
    Py_RETURN_NONE;
bad:
    for (Py_ssize_t m = 0; m < count; m++) PyMem_Free(built[m].fields);
    PyMem_Free(built);
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", wire_configure, METH_VARARGS, "Set the schema and the memo's rules (repeat.py does)."},
    {"valid", wire_valid, METH_O, "Whether protobuf would accept the message (or it is declined)."},
    {"read", wire_read, METH_O, "The memo's reading of a serialized CheckRequest, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wire", "The memo's reading from the wire.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
