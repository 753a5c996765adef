/*
 * crypto-secret.c - secrets by id, as qemu-img's `--object secret,...`
 * defines them (include/crypto.h).  Values live in secure memory and are
 * wiped at exit or by secret_clear_all; nothing here logs a value.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include "crypto.h"
#include "options.h"

#define SECRET_MAX (64 * 1024)

typedef struct Secret {
    char *id;
    uint8_t *val;
    size_t len, alloc;              /* alloc: what crypto_secure_alloc was given */
    struct Secret *next;
} Secret;

static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;
static Secret *secrets;

static int add(const char *id, uint8_t *val, size_t len, size_t alloc, Error **errp)
{
    pthread_mutex_lock(&secrets_lock);
    for (Secret *s = secrets; s; s = s->next) {
        if (!strcmp(s->id, id)) {
            pthread_mutex_unlock(&secrets_lock);
            error_setg(errp, "attempt to add duplicate property '%s' to object (type"
                       " 'container')", id);
            crypto_secure_free(val, alloc);
            return -EEXIST;
        }
    }
    Secret *s = calloc(1, sizeof(*s));
    if (!s || !(s->id = strdup(id))) {
        pthread_mutex_unlock(&secrets_lock);
        free(s);
        crypto_secure_free(val, alloc);
        error_setg(errp, "out of memory");
        return -ENOMEM;
    }
    s->val = val;
    s->len = len;
    s->alloc = alloc;
    s->next = secrets;
    secrets = s;
    pthread_mutex_unlock(&secrets_lock);
    return 0;
}

/* The whole file into secure memory (a secret file is small). */
static int read_file(const char *path, uint8_t **out, size_t *len, Error **errp)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error_setg_errno(errp, errno, "Unable to read %s", path);
        return -errno;
    }
    uint8_t *buf = crypto_secure_alloc(SECRET_MAX);
    size_t n = 0;
    if (!buf) {
        close(fd);
        error_setg(errp, "out of memory for the secret");
        return -ENOMEM;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, SECRET_MAX - n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            int e = errno;
            close(fd);
            crypto_secure_free(buf, SECRET_MAX);
            error_setg_errno(errp, e, "Unable to read %s", path);
            return -e;
        }
        if (r == 0) {
            break;
        }
        n += (size_t)r;
        if (n == SECRET_MAX) {
            close(fd);
            crypto_secure_free(buf, SECRET_MAX);
            error_setg(errp, "Secret file %s is too large (%d bytes at most)", path,
                       SECRET_MAX - 1);
            return -EFBIG;
        }
    }
    close(fd);
    /* exactly sized, so every secret is freed by its length + 1 */
    *out = crypto_secure_alloc(n + 1);
    if (*out) {
        memcpy(*out, buf, n);
    }
    crypto_secure_free(buf, SECRET_MAX);
    if (!*out) {
        error_setg(errp, "out of memory for the secret");
        return -ENOMEM;
    }
    *len = n;
    return 0;
}

/* Base64 in place into secure memory (EVP_DecodeBlock counts the padding). */
static int decode_base64(const uint8_t *in, size_t len, uint8_t **out, size_t *outlen,
                         Error **errp)
{
    while (len && (in[len - 1] == '\n' || in[len - 1] == '\r')) {
        len--;
    }
    uint8_t *buf = crypto_secure_alloc(len + 1);
    int n = buf && len % 4 == 0 ? EVP_DecodeBlock(buf, in, (int)len) : -1;
    if (n < 0) {
        crypto_secure_free(buf, len + 1);
        error_setg(errp, "Unable to decode secret: invalid base64");
        return -EINVAL;
    }
    for (size_t i = len; i > 0 && in[i - 1] == '='; i--) {
        n--;
    }
    /* re-allocate exactly, so the registry frees it by its length + 1 */
    *out = crypto_secure_alloc((size_t)n + 1);
    if (*out) {
        memcpy(*out, buf, (size_t)n);
    }
    crypto_secure_free(buf, len + 1);
    if (!*out) {
        error_setg(errp, "out of memory for the secret");
        return -ENOMEM;
    }
    *outlen = (size_t)n;
    return 0;
}

int secret_object_add(const char *def, Error **errp)
{
    OptDict *d = optdict_parse(def, "qom-type", errp);
    int ret = -EINVAL;
    if (!d) {
        return -EINVAL;
    }
    const char *type = optdict_get(d, "qom-type");
    const char *id = optdict_get(d, "id");
    const char *data = optdict_get(d, "data");
    const char *file = optdict_get(d, "file");
    const char *format = optdict_get(d, "format");
    if (!type || strcmp(type, "secret")) {
        error_setg(errp, "--object type '%s' is not supported by ublkd img (only secret)",
                   type ? type : "");
        goto out;
    }
    if (!id || !*id) {
        error_setg(errp, "Parameter 'id' is missing");
        goto out;
    }
    if (optdict_get(d, "keyid") || optdict_get(d, "iv")) {
        error_setg(errp, "secret '%s': secrets encrypted with keyid/iv are not supported", id);
        goto out;
    }
    if (!!data == !!file) {
        error_setg(errp, "%s", data ? "'data' and 'file' are mutually exclusive"
                   : "Either 'file' or 'data' must be provided");
        goto out;
    }
    if (format && strcmp(format, "raw") && strcmp(format, "base64")) {
        error_setg(errp, "Parameter 'format' does not accept value '%s'", format);
        goto out;
    }
    uint8_t *val;
    size_t len;
    if (file) {
        ret = read_file(file, &val, &len, errp);
        if (ret < 0) {
            goto out;
        }
    } else {
        len = strlen(data);
        val = crypto_secure_alloc(len + 1);
        if (!val) {
            error_setg(errp, "out of memory for the secret");
            ret = -ENOMEM;
            goto out;
        }
        memcpy(val, data, len);
    }
    if (format && !strcmp(format, "base64")) {
        uint8_t *dec;
        size_t dlen;
        ret = decode_base64(val, len, &dec, &dlen, errp);
        crypto_secure_free(val, len + 1);
        if (ret < 0) {
            goto out;
        }
        val = dec;
        len = dlen;
    }
    ret = add(id, val, len, len + 1, errp);
out:
    /* the definition held the value: wipe the parsed copy */
    if (data) {
        crypto_wipe((void *)data, strlen(data));
    }
    optdict_free(d);
    return ret;
}

int secret_add_file(const char *id, const char *path, Error **errp)
{
    uint8_t *val;
    size_t len;
    int ret = read_file(path, &val, &len, errp);
    return ret < 0 ? ret : add(id, val, len, len + 1, errp);
}

const uint8_t *secret_lookup(const char *id, size_t *len, Error **errp)
{
    pthread_mutex_lock(&secrets_lock);
    for (Secret *s = secrets; s; s = s->next) {
        if (!strcmp(s->id, id)) {
            pthread_mutex_unlock(&secrets_lock);
            *len = s->len;
            return s->val;
        }
    }
    pthread_mutex_unlock(&secrets_lock);
    error_setg(errp, "No secret with id '%s'", id);
    return NULL;
}

void secret_clear_all(void)
{
    pthread_mutex_lock(&secrets_lock);
    while (secrets) {
        Secret *s = secrets;
        secrets = s->next;
        crypto_secure_free(s->val, s->alloc);
        free(s->id);
        free(s);
    }
    pthread_mutex_unlock(&secrets_lock);
}
