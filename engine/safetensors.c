/* engine/safetensors.c — header parsing/validation, shard index, and the writer.
 *
 * File layout (safetensors): u64 little-endian N, N bytes of JSON
 *   { "__metadata__": {...}, "<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}, ... }
 * then the data; offsets are relative to the first byte after the JSON.
 */
#include "engine/safetensors.h"
#include "common/errmsg.h"
#include "common/file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[MQ_DT_COUNT] = {
    [MQ_DT_BF16] = { "BF16", 2 }, [MQ_DT_F16] = { "F16", 2 },         [MQ_DT_F32] = { "F32", 4 },
    [MQ_DT_U8] = { "U8", 1 },     [MQ_DT_F8_E4M3] = { "F8_E4M3", 1 }, [MQ_DT_I32] = { "I32", 4 },
    [MQ_DT_I64] = { "I64", 8 },   [MQ_DT_F64] = { "F64", 8 },         [MQ_DT_BOOL] = { "BOOL", 1 },
    [MQ_DT_I8] = { "I8", 1 },     [MQ_DT_I16] = { "I16", 2 },         [MQ_DT_U16] = { "U16", 2 },
};

const char *mq_dtype_name(mq_dtype d)
{
    return (unsigned)d < MQ_DT_COUNT ? dtypes[d].name : "?";
}
size_t mq_dtype_size(mq_dtype d)
{
    return (unsigned)d < MQ_DT_COUNT ? dtypes[d].size : 0;
}

int64_t mq_st_numel(const mq_st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

static int dtype_parse(const char *s, mq_dtype *d)
{
    for (int i = 0; i < MQ_DT_COUNT; i++)
        if (!strcmp(s, dtypes[i].name)) {
            *d = (mq_dtype)i;
            return 0;
        }
    return -1;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const mq_st_tensor *)a)->name, ((const mq_st_tensor *)b)->name);
}

static int cmp_offset(const void *a, const void *b)
{
    const mq_st_tensor *x = *(const mq_st_tensor *const *)a, *y = *(const mq_st_tensor *const *)b;
    if (x->file != y->file)
        return x->file < y->file ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Non-overlap over the whole set (after all files are in): sort by (file, offset). */
static int check_overlaps(mq_st *st, char *err, size_t errlen)
{
    if (st->n_tensors < 2)
        return 0;
    const mq_st_tensor **v = malloc((size_t)st->n_tensors * sizeof *v);
    if (!v)
        return -ENOMEM;
    for (int i = 0; i < st->n_tensors; i++)
        v[i] = &st->tensors[i];
    qsort(v, (size_t)st->n_tensors, sizeof *v, cmp_offset);
    int rc = 0;
    for (int i = 1; i < st->n_tensors; i++) {
        const mq_st_tensor *a = v[i - 1], *b = v[i];
        if (a->file == b->file && a->offset + a->bytes > b->offset && b->bytes && a->bytes) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%s: tensors \"%.80s\" and \"%.80s\" overlap", st->paths[a->file],
                           a->name, b->name);
            break;
        }
    }
    free(v);
    return rc;
}

int mq_st_parse_header(mq_st *st, int file, const uint8_t *buf, size_t buf_len, uint64_t file_bytes, const char *what,
                       char *err, size_t errlen)
{
    if (buf_len < 8 || file_bytes < 8) {
        return mq_errmsg(err, errlen, -EINVAL, "%s: truncated (%llu bytes, no header length)", what,
                         (unsigned long long)file_bytes);
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | buf[i];
    if (hlen < 2 || hlen > MQ_ST_HEADER_MAX || hlen > file_bytes - 8 || hlen > buf_len - 8) {
        return mq_errmsg(err, errlen, -EINVAL, "%s: header length %llu does not fit the file (%llu bytes)", what,
                         (unsigned long long)hlen, (unsigned long long)file_bytes);
    }
    const uint64_t data0 = 8 + hlen, data_bytes = file_bytes - data0;
    cJSON *root = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mq_errmsg(err, errlen, -EINVAL, "%s: header is not a JSON object", what);
    }
    int n = cJSON_GetArraySize(root), rc = 0;
    mq_st_tensor *nt = realloc(st->tensors, ((size_t)st->n_tensors + (size_t)n + 1) * sizeof *nt);
    if (!nt) {
        cJSON_Delete(root);
        return -ENOMEM;
    }
    st->tensors = nt;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (!strcmp(e->string, "__metadata__"))
            continue;
        const char *nm = e->string;
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        mq_st_tensor t = { .file = file };
        if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
            cJSON_GetArraySize(off) != 2) {
            rc = mq_errmsg(err, errlen, -EINVAL,
                           "%s: tensor \"%.100s\": needs dtype, shape and data_offsets [begin, end]", what, nm);
            break;
        }
        if (dtype_parse(dt->valuestring, &t.dtype)) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%s: tensor \"%.100s\": unknown dtype \"%.20s\"", what, nm,
                           dt->valuestring);
            break;
        }
        t.ndim = cJSON_GetArraySize(sh);
        if (t.ndim > MQ_ST_MAX_DIMS) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%s: tensor \"%.100s\": %d dimensions (max %d)", what, nm, t.ndim,
                           MQ_ST_MAX_DIMS);
            break;
        }
        /* element count, refusing overflow: each dim < 2^40 and the product < 2^62 */
        unsigned __int128 numel = 1;
        int d = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, sh)
        {
            if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 1099511627776.0 ||
                x->valuedouble != (double)(int64_t)x->valuedouble) {
                d = -1;
                break;
            }
            t.shape[d++] = (int64_t)x->valuedouble;
            numel *= (uint64_t)t.shape[d - 1];
            if (numel > ((unsigned __int128)1 << 62)) {
                d = -1;
                break;
            }
        }
        if (d < 0) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%s: tensor \"%.100s\": bad shape", what, nm);
            break;
        }
        double b = cJSON_GetArrayItem(off, 0)->valuedouble, en = cJSON_GetArrayItem(off, 1)->valuedouble;
        if (!cJSON_IsNumber(cJSON_GetArrayItem(off, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(off, 1)) || b < 0 ||
            en < b || en > 9.0e18 || b != (double)(uint64_t)b || en != (double)(uint64_t)en) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%s: tensor \"%.100s\": bad data_offsets", what, nm);
            break;
        }
        uint64_t ub = (uint64_t)b, ue = (uint64_t)en;
        t.bytes = ue - ub;
        if ((unsigned __int128)numel * mq_dtype_size(t.dtype) != t.bytes) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%s: tensor \"%.100s\": %llu bytes for shape of %llu %s elements",
                           what, nm, (unsigned long long)t.bytes, (unsigned long long)numel, dtypes[t.dtype].name);
            break;
        }
        if (ue > data_bytes) {
            rc = mq_errmsg(err, errlen, -EINVAL,
                           "%s: tensor \"%.100s\": data [%llu, %llu) beyond the end of the file "
                           "(%llu data bytes; truncated?)",
                           what, nm, (unsigned long long)ub, (unsigned long long)ue, (unsigned long long)data_bytes);
            break;
        }
        t.offset = data0 + ub;
        if (!(t.name = strdup(nm))) {
            rc = -ENOMEM;
            break;
        }
        st->tensors[st->n_tensors++] = t;
    }
    cJSON_Delete(root);
    return rc;
}

static int add_file(mq_st *st, const char *path, char *err, size_t errlen)
{
    char **np = realloc(st->paths, ((size_t)st->n_files + 1) * sizeof *np);
    if (!np)
        return -ENOMEM;
    st->paths = np;
    uint64_t *nb = realloc(st->file_bytes, ((size_t)st->n_files + 1) * sizeof *nb);
    if (!nb)
        return -ENOMEM;
    st->file_bytes = nb;
    if (!(st->paths[st->n_files] = strdup(path)))
        return -ENOMEM;
    int file = st->n_files++;

    int fd = mq_open_regular(path, 0, err, errlen);
    if (fd < 0)
        return fd;
    struct stat sb;
    uint8_t lenbuf[8];
    int rc = 0;
    uint8_t *buf = NULL;
    if (fstat(fd, &sb) < 0) {
        rc = -errno;
        mq_errmsg(err, errlen, 0, "%s: %s", path, strerror(-rc));
        goto out;
    }
    st->file_bytes[file] = (uint64_t)sb.st_size;
    ssize_t r = pread(fd, lenbuf, 8, 0);
    if (r != 8) {
        rc = mq_errmsg(err, errlen, -EINVAL, "%s: truncated (%lld bytes, no header length)", path,
                       (long long)sb.st_size);
        goto out;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | lenbuf[i];
    if (hlen > MQ_ST_HEADER_MAX || hlen + 8 > (uint64_t)sb.st_size) {
        rc = mq_errmsg(err, errlen, -EINVAL, "%s: header length %llu does not fit the file (%lld bytes; truncated?)",
                       path, (unsigned long long)hlen, (long long)sb.st_size);
        goto out;
    }
    if (!(buf = malloc(hlen + 8))) {
        rc = -ENOMEM;
        goto out;
    }
    size_t got = 0;
    while (got < hlen + 8) {
        r = pread(fd, buf + got, hlen + 8 - got, (off_t)got);
        if (r <= 0) {
            rc = mq_errmsg(err, errlen, r < 0 ? -errno : -EIO, "%s: cannot read the header: %s", path,
                           r < 0 ? strerror(errno) : "short file");
            goto out;
        }
        got += (size_t)r;
    }
    rc = mq_st_parse_header(st, file, buf, hlen + 8, (uint64_t)sb.st_size, path, err, errlen);
out:
    free(buf);
    close(fd);
    return rc;
}

static void sort_and_check_names(mq_st *st, char *err, size_t errlen, int *rc)
{
    if (*rc)
        return;
    qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, cmp_name);
    for (int i = 1; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i - 1].name, st->tensors[i].name)) {
            mq_errmsg(err, errlen, 0, "tensor \"%.100s\" appears twice (%s, %s)", st->tensors[i].name,
                      st->paths[st->tensors[i - 1].file], st->paths[st->tensors[i].file]);
            *rc = -EINVAL;
            return;
        }
    *rc = check_overlaps(st, err, errlen);
}

int mq_st_open_file(mq_st **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    mq_st *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    int rc = add_file(st, path, err, errlen);
    sort_and_check_names(st, err, errlen, &rc);
    if (rc) {
        mq_st_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

static char *read_small(const char *path, size_t max, size_t *len)
{
    FILE *f = mq_fopen_regular(path, NULL, 0);
    if (!f)
        return NULL;
    char *b = malloc(max + 1);
    size_t n = b ? fread(b, 1, max + 1, f) : 0;
    fclose(f);
    if (!b || n > max) {
        free(b);
        return NULL;
    }
    b[n] = 0;
    *len = n;
    return b;
}

/* model.safetensors.index.json: {"weight_map": {"tensor": "shard file", ...}}. Every shard
 * named is opened once; every mapped tensor must be in its shard. */
static int open_index(mq_st *st, const char *dir, const char *ipath, char *err, size_t errlen)
{
    size_t len = 0;
    char *txt = read_small(ipath, 64u << 20, &len);
    if (!txt) {
        return mq_errmsg(err, errlen, -EINVAL, "%s: cannot read (missing or > 64 MiB)", ipath);
    }
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    int rc = 0;
    if (!cJSON_IsObject(wm)) {
        rc = mq_errmsg(err, errlen, -EINVAL, "%s: no \"weight_map\" object", ipath);
        goto out;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || !strcmp(e->valuestring, "..")) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%s: weight_map[\"%.100s\"] must name a file in the folder", ipath,
                           e->string);
            goto out;
        }
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->valuestring);
        int have = 0;
        for (int f = 0; f < st->n_files; f++)
            have |= !strcmp(st->paths[f], p);
        if (!have && (rc = add_file(st, p, err, errlen)))
            goto out;
    }
    sort_and_check_names(st, err, errlen, &rc);
    if (rc)
        goto out;
    cJSON_ArrayForEach(e, wm)
    {
        const mq_st_tensor *t = mq_st_find(st, e->string);
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->valuestring);
        if (!t || strcmp(st->paths[t->file], p)) {
            rc =
                mq_errmsg(err, errlen, -EINVAL, "%s: tensor \"%.100s\" is not in %s", ipath, e->string, e->valuestring);
            goto out;
        }
    }
out:
    cJSON_Delete(root);
    return rc;
}

int mq_st_open(mq_st **out, const char *dir, char *err, size_t errlen)
{
    char p[4096];
    *out = NULL;
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    if (access(p, F_OK) == 0) {
        mq_st *st = calloc(1, sizeof *st);
        if (!st)
            return -ENOMEM;
        int rc = open_index(st, dir, p, err, errlen);
        if (rc) {
            mq_st_close(st);
            return rc;
        }
        *out = st;
        return 0;
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    return mq_st_open_file(out, p, err, errlen);
}

const mq_st_tensor *mq_st_find(const mq_st *st, const char *name)
{
    int lo = 0, hi = st->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(st->tensors[mid].name, name);
        if (!c)
            return &st->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

void mq_st_close(mq_st *st)
{
    if (!st)
        return;
    for (int i = 0; i < st->n_tensors; i++)
        free(st->tensors[i].name);
    for (int i = 0; i < st->n_files; i++)
        free(st->paths[i]);
    free(st->tensors);
    free(st->paths);
    free(st->file_bytes);
    free(st);
}

/* ---- writer ---------------------------------------------------------------------- */

struct wt {
    char *name;
    mq_dtype dt;
    int ndim;
    int64_t shape[MQ_ST_MAX_DIMS];
    uint64_t bytes;
    const void *data;
    mq_st_fill_fn fill;
    void *ctx;
};
struct mq_st_writer {
    int n, cap;
    struct wt *t;
};

int mq_st_writer_create(mq_st_writer **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : -ENOMEM;
}

int mq_st_writer_add(mq_st_writer *w, const char *name, mq_dtype dt, const int64_t *shape, int ndim, const void *data,
                     mq_st_fill_fn fill, void *ctx)
{
    if ((unsigned)dt >= MQ_DT_COUNT || ndim < 0 || ndim > MQ_ST_MAX_DIMS || (!data && !fill))
        return -EINVAL;
    if (w->n == w->cap) {
        int nc = w->cap ? w->cap * 2 : 64;
        struct wt *nt = realloc(w->t, (size_t)nc * sizeof *nt);
        if (!nt)
            return -ENOMEM;
        w->t = nt;
        w->cap = nc;
    }
    struct wt *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return -ENOMEM;
    t->dt = dt;
    t->ndim = ndim;
    t->bytes = mq_dtype_size(dt);
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->bytes *= (uint64_t)shape[i];
    }
    t->data = data;
    t->fill = fill;
    t->ctx = ctx;
    w->n++;
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t r = write(fd, b, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

int mq_st_writer_write(mq_st_writer *w, const char *path, char *err, size_t errlen)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        cJSON *o = cJSON_AddObjectToObject(root, w->t[i].name);
        cJSON_AddStringToObject(o, "dtype", mq_dtype_name(w->t[i].dt));
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < w->t[i].ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)w->t[i].shape[d]));
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + w->t[i].bytes)));
        off += w->t[i].bytes;
    }
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js)
        return -ENOMEM;
    size_t jl = strlen(js), padded = (jl + 7) / 8 * 8; /* data 8-byte aligned, header padded with spaces */
    char *hdr = malloc(8 + padded);
    if (!hdr) {
        free(js);
        return -ENOMEM;
    }
    for (int i = 0; i < 8; i++)
        hdr[i] = (char)((uint64_t)padded >> (8 * i));
    memcpy(hdr + 8, js, jl);
    memset(hdr + 8 + jl, ' ', padded - jl);
    free(js);
    int rc = 0;
    uint8_t *chunk = NULL;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if ((rc = write_all(fd, hdr, 8 + padded)))
        goto out;
    const size_t CH = 4u << 20;
    for (int i = 0; i < w->n && !rc; i++) {
        if (w->t[i].data) {
            rc = write_all(fd, w->t[i].data, w->t[i].bytes);
            continue;
        }
        if (!chunk && !(chunk = malloc(CH))) {
            rc = -ENOMEM;
            break;
        }
        for (uint64_t o = 0; o < w->t[i].bytes && !rc; o += CH) {
            size_t len = (size_t)(w->t[i].bytes - o < CH ? w->t[i].bytes - o : CH);
            w->t[i].fill(w->t[i].ctx, w->t[i].name, o, chunk, len);
            rc = write_all(fd, chunk, len);
        }
    }
out:
    if (fd >= 0 && close(fd) < 0 && !rc)
        rc = -errno;
    if (rc)
        mq_errmsg(err, errlen, 0, "%s: write failed: %s", path, strerror(-rc));
    free(chunk);
    free(hdr);
    return rc;
}

void mq_st_writer_free(mq_st_writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    free(w);
}
