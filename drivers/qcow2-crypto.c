/*
 * qcow2-crypto.c - encrypted qcow2 images, as QEMU 7.2 reads and writes
 * them: LUKS (crypt_method 2) and legacy AES (crypt_method 1, read only).
 *
 * LUKS: the header extension 0x0537be77 names clusters of the image that
 * hold a LUKS1 area (header and key slots, include/crypto.h); the data of
 * every cluster is encrypted per 512-byte sector with the volume cipher,
 * the IV made from the *host* offset's sector number (QEMU's
 * crypt_physical_offset).  Legacy AES: AES-128-CBC, the key the first 16
 * bytes of the passphrase (zero padded), the IV plain64 of the *guest*
 * sector (QEMU's qcrypto_block_qcow).  QEMU 7.2 still reads and writes
 * those in qemu-img but no longer runs them in a VM; we only read them.
 *
 * Reads decrypt the caller's (mapped: the node sets needs_mapped_data)
 * buffer in place after the data arrived.  Writes must not change the
 * caller's buffer, so they copy it into a bounce from a free list (secure
 * memory: no core dump), encrypt there and write from there, in chunks of
 * QCOW2_CRYPT_CHUNK; nothing is allocated per request once warm.
 *
 * The secret: the `encrypt.key-secret` option names one defined with
 * --object secret (include/crypto.h).  With BDRV_O_NO_IO (img info) an
 * image opens without it: the header is parsed for info, and any I/O
 * fails -ENOKEY.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qcow2-int.h"
#include "options.h"

#ifdef CONFIG_CRYPTO
#include "crypto.h"

#define QCOW2_CRYPT_CHUNK (256 * 1024)
/* A LUKS area is about 2 MiB (aes-256-xts); one of more than this is not
 * QEMU's and not read into memory. */
#define QCOW2_LUKS_AREA_MAX (16 * 1024 * 1024)

typedef struct CryptBounce {
    uint8_t *buf;                   /* QCOW2_CRYPT_CHUNK, secure memory */
    struct CryptBounce *next;
} CryptBounce;

struct Qcow2Crypto {
    int method;                     /* QCOW2_CRYPT_AES / _LUKS */
    bool physical;                  /* IV from the host offset (LUKS) */
    CryptoCipher *cipher;           /* NULL: opened without the key (NO_IO) */
    LuksHeader luks;
    char *key_secret;               /* the secret's id: amend re-opens slots with it */
    pthread_mutex_t lock;
    CryptBounce *free;
};

static const char *secret_option(OptDict *options, char **id)
{
    optdict_take_str(options, "encrypt.key-secret", NULL, id);
    return *id;
}

static int open_luks(BlockDriverState *bs, Qcow2Crypto *c, const uint8_t *pw, size_t pwlen,
                     Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *name = qcow2_image_name(bs);
    int64_t file_len = bdrv_getlength(bs->file->bs);

    if (!s->crypto_header_length) {
        error_setg(errp, "qcow2: %s: LUKS encryption (crypt_method 2) without a crypto header"
                   " extension", name);
        return -EINVAL;
    }
    if (s->crypto_header_offset % s->cluster_size) {
        error_setg(errp, "qcow2: %s: Encryption header offset '%" PRIu64 "' is not a multiple"
                   " of cluster size '%" PRIu32 "'", name, s->crypto_header_offset,
                   s->cluster_size);
        return -EINVAL;
    }
    if (s->crypto_header_length < LUKS_HEADER_BYTES ||
        s->crypto_header_length > QCOW2_LUKS_AREA_MAX || file_len < 0 ||
        s->crypto_header_offset > (uint64_t)file_len ||
        s->crypto_header_length > (uint64_t)file_len - s->crypto_header_offset) {
        error_setg(errp, "qcow2: %s: the crypto header (%" PRIu64 " bytes at 0x%" PRIx64
                   ") does not lie inside the file or has a bad length", name,
                   s->crypto_header_length, s->crypto_header_offset);
        return -EINVAL;
    }
    size_t alen = (size_t)s->crypto_header_length;
    uint8_t *area = malloc(alen);
    if (!area) {
        error_setg(errp, "qcow2: %s: out of memory for the LUKS header", name);
        return -ENOMEM;
    }
    int ret = bdrv_pread(bs->file, (int64_t)s->crypto_header_offset, (int64_t)alen, area, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: cannot read the LUKS header", name);
        goto out;
    }
    ret = luks_header_parse(area, alen, &c->luks, errp);
    if (ret < 0) {
        error_prepend(errp, "qcow2: %s: ", name);
        goto out;
    }
    if (!pw) {
        goto out;                   /* NO_IO: the header for info only */
    }
    uint8_t *mk = crypto_secure_alloc(c->luks.key_bytes);
    if (!mk) {
        error_setg(errp, "qcow2: %s: out of memory for the key", name);
        ret = -ENOMEM;
        goto out;
    }
    ret = luks_unlock(&c->luks, area, alen, pw, pwlen, mk, errp);
    if (ret == 0) {
        c->cipher = luks_data_cipher(&c->luks, mk, errp);
        ret = c->cipher ? 0 : -ENOTSUP;
    }
    crypto_secure_free(mk, c->luks.key_bytes);
    if (ret < 0) {
        error_prepend(errp, "qcow2: %s: ", name);
    }
out:
    free(area);
    return ret;
}

int qcow2_crypto_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *name = qcow2_image_name(bs);
    char *id = NULL, *fmt = NULL;
    const uint8_t *pw = NULL;
    size_t pwlen = 0;
    int ret;

    secret_option(options, &id);
    /* encrypt.format, if given, must say what the image holds (QEMU) */
    optdict_take_str(options, "encrypt.format", NULL, &fmt);
    if (s->h.crypt_method == QCOW2_CRYPT_NONE) {
        free(id);
        if (fmt) {
            error_setg(errp, "qcow2: %s: encrypt.format=%s given but the image is not"
                       " encrypted", name, fmt);
            free(fmt);
            return -EINVAL;
        }
        return 0;
    }
    const char *want = s->h.crypt_method == QCOW2_CRYPT_LUKS ? "luks" : "aes";
    if (fmt && strcmp(fmt, want)) {
        error_setg(errp, "qcow2: %s: Header reported 'encrypt.format=%s' but 'encrypt.format=%s'"
                   " was requested", name, want, fmt);
        free(fmt);
        free(id);
        return -EINVAL;
    }
    free(fmt);
    if (id) {
        pw = secret_lookup(id, &pwlen, errp);
        if (!pw) {
            error_prepend(errp, "qcow2: %s: ", name);
            free(id);
            return -ENOKEY;
        }
    } else if (!(flags & BDRV_O_NO_IO)) {
        error_setg(errp, "qcow2: %s: Parameter 'encrypt.key-secret' is required for cipher"
                   " (the image is %s-encrypted: give --object secret,id=ID,... and"
                   " encrypt.key-secret=ID)", name, want);
        return -ENOKEY;
    }
    if (s->h.crypt_method == QCOW2_CRYPT_AES && (flags & BDRV_O_RDWR) &&
        !(flags & BDRV_O_CHECK)) {
        error_setg(errp, "qcow2: %s: AES-encrypted (crypt_method 1) images are read only here,"
                   " as in QEMU's system emulators: convert it to a LUKS-encrypted image"
                   " (-o encrypt.format=luks)", name);
        free(id);
        return -EPERM;
    }
    Qcow2Crypto *c = calloc(1, sizeof(*c));
    if (!c) {
        error_setg(errp, "qcow2: %s: out of memory", name);
        free(id);
        return -ENOMEM;
    }
    c->key_secret = id;
    c->method = (int)s->h.crypt_method;
    pthread_mutex_init(&c->lock, NULL);
    if (c->method == QCOW2_CRYPT_LUKS) {
        c->physical = true;
        ret = open_luks(bs, c, pw, pwlen, errp);
    } else {
        ret = 0;
        if (pw) {
            uint8_t key[16] = { 0 };
            memcpy(key, pw, MIN(pwlen, sizeof(key)));
            c->cipher = crypto_cipher_new("aes", "cbc", "plain64", NULL, key, sizeof(key),
                                          errp);
            crypto_wipe(key, sizeof(key));
            if (!c->cipher) {
                error_prepend(errp, "qcow2: %s: ", name);
                ret = -ENOTSUP;
            }
        }
    }
    if (ret < 0) {
        s->crypto = c;
        qcow2_crypto_close(s);
        return ret;
    }
    s->crypto = c;
    /* the bytes must pass through our hands: no zero copy past this node */
    bs->needs_mapped_data = true;
    return 0;
}

void qcow2_crypto_close(BDRVQcow2State *s)
{
    Qcow2Crypto *c = s->crypto;
    if (!c) {
        return;
    }
    while (c->free) {
        CryptBounce *b = c->free;
        c->free = b->next;
        crypto_secure_free(b->buf, QCOW2_CRYPT_CHUNK);
        free(b);
    }
    crypto_cipher_free(c->cipher);
    free(c->key_secret);
    pthread_mutex_destroy(&c->lock);
    crypto_wipe(c, sizeof(*c));
    free(c);
    s->crypto = NULL;
}

static uint64_t iv_sector(const Qcow2Crypto *c, uint64_t host, uint64_t guest)
{
    return (c->physical ? host : guest) / CRYPTO_SECTOR_SIZE;
}

int qcow2_crypto_decrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest, IOVector *qiov,
                         size_t qiov_offset, uint64_t bytes)
{
    Qcow2Crypto *c = s->crypto;
    if (!c->cipher) {
        return -ENOKEY;
    }
    return crypto_cipher_run_iov(c->cipher, false, iv_sector(c, host, guest), qiov, qiov_offset,
                                 (size_t)bytes);
}

int qcow2_crypto_encrypt_buf(BDRVQcow2State *s, uint64_t host, uint64_t guest, uint8_t *buf,
                             uint64_t bytes)
{
    Qcow2Crypto *c = s->crypto;
    if (!c->cipher) {
        return -ENOKEY;
    }
    return crypto_cipher_run(c->cipher, true, iv_sector(c, host, guest), buf, (size_t)bytes);
}

static CryptBounce *bounce_get(Qcow2Crypto *c)
{
    pthread_mutex_lock(&c->lock);
    CryptBounce *b = c->free;
    if (b) {
        c->free = b->next;
    }
    pthread_mutex_unlock(&c->lock);
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (b && !(b->buf = crypto_secure_alloc(QCOW2_CRYPT_CHUNK))) {
            free(b);
            b = NULL;
        }
    }
    return b;
}

static void bounce_put(Qcow2Crypto *c, CryptBounce *b)
{
    pthread_mutex_lock(&c->lock);
    b->next = c->free;
    c->free = b;
    pthread_mutex_unlock(&c->lock);
}

int coroutine_fn qcow2_crypto_pwritev(BlockDriverState *bs, uint64_t host, uint64_t guest,
                                      uint64_t bytes, IOVector *qiov, size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Crypto *c = s->crypto;
    if (!c->cipher) {
        return -ENOKEY;
    }
    if (!c->physical) {
        return -EPERM;              /* AES images are never opened writable */
    }
    CryptBounce *b = bounce_get(c);
    if (!b) {
        return -ENOMEM;
    }
    int ret = 0;
    for (uint64_t done = 0; done < bytes && ret == 0;) {
        size_t n = (size_t)MIN(bytes - done, (uint64_t)QCOW2_CRYPT_CHUNK);
        iov_to_buf(qiov, qiov_offset + (size_t)done, b->buf, n);
        ret = crypto_cipher_run(c->cipher, true, iv_sector(c, host + done, guest + done),
                                b->buf, n);
        if (ret == 0) {
            IOVector v;
            iov_init_buf(&v, b->buf, n);
            ret = bdrv_co_pwritev(s->data_file, (int64_t)(host + done), (int64_t)n, &v, 0);
        }
        done += n;
    }
    bounce_put(c, b);
    return ret;
}

/* ---- amend: LUKS keyslots (io/crypto-luks-amend.c does the work) ---- */

static int area_read(void *opaque, size_t off, void *buf, size_t len)
{
    BlockDriverState *bs = opaque;
    BDRVQcow2State *s = bs->opaque;
    return bdrv_pread(bs->file, (int64_t)(s->crypto_header_offset + off), (int64_t)len, buf, 0);
}

static int area_write(void *opaque, size_t off, const void *buf, size_t len)
{
    BlockDriverState *bs = opaque;
    BDRVQcow2State *s = bs->opaque;
    if (off + len > s->crypto_header_length) {
        return -EINVAL;             /* QEMU: "Request for data outside of extension header" */
    }
    return bdrv_pwrite(bs->file, (int64_t)(s->crypto_header_offset + off), (int64_t)len, buf, 0);
}

static int area_sync(void *opaque)
{
    BlockDriverState *bs = opaque;
    return bdrv_co_flush(bs->file->bs);
}

/* A number option as QEMU's QemuOpts reads it (img amend checked the form). */
static bool amend_number(OptDict *opts, const char *key, uint64_t *v)
{
    const char *str = optdict_get(opts, key);
    if (str) {
        *v = strtoull(str, NULL, 0);
    }
    return str != NULL;
}

int coroutine_fn qcow2_crypto_amend(BlockDriverState *bs, OptDict *opts, bool force,
                                    Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Crypto *c = s->crypto;
    const char *state = optdict_get(opts, "encrypt.state");
    LuksAmendOpts o = { 0 };
    uint64_t n;

    if (!state) {
        error_setg(errp, "Parameter 'state' is missing");
        return -EINVAL;
    }
    if (strcmp(state, "active") && strcmp(state, "inactive")) {
        error_setg(errp, "Parameter 'state' does not accept value '%s'", state);
        return -EINVAL;
    }
    if (!c || !c->cipher) {
        error_setg(errp, "qcow2: %s: the image was opened without its key",
                   qcow2_image_name(bs));
        return -ENOKEY;
    }
    o.activate = !strcmp(state, "active");
    o.key_secret = c->key_secret;
    o.new_secret = optdict_get(opts, "encrypt.new-secret");
    o.old_secret = optdict_get(opts, "encrypt.old-secret");
    if ((o.has_keyslot = amend_number(opts, "encrypt.keyslot", &n))) {
        o.keyslot = (int)n;         /* -1 and 2^32-1 alike: QEMU's int */
    }
    if ((o.has_iter_time = amend_number(opts, "encrypt.iter-time", &n))) {
        o.iter_time = n;
    }
    LuksIO io = { area_read, area_write, area_sync, bs };
    return luks_amend(&c->luks, (size_t)s->crypto_header_length, &o, force, &io, errp);
}

static void crypto_info_entries(const Qcow2Crypto *c, ImageSpecificInfo *info)
{
    if (c->method == QCOW2_CRYPT_AES) {
        image_info_add(info, "encrypt.format", "aes");
        return;
    }
    const LuksHeader *h = &c->luks;
    image_info_add(info, "encrypt.ivgen-alg", "%s", h->ivgen[0] ? h->ivgen : "plain64");
    if (h->ivhash[0]) {
        image_info_add(info, "encrypt.ivgen-hash-alg", "%s", h->ivhash);
    }
    image_info_add(info, "encrypt.hash-alg", "%s", h->hash_spec);
    image_info_add(info, "encrypt.cipher-alg", "%s-%u", h->alg, h->cipher_bits);
    image_info_add(info, "encrypt.uuid", "%s", h->uuid);
    image_info_add(info, "encrypt.format", "luks");
    image_info_add(info, "encrypt.cipher-mode", "%s", h->mode);
    image_info_add_int(info, "encrypt.payload-offset",
                       (int64_t)h->payload_offset * CRYPTO_SECTOR_SIZE);
    image_info_add_int(info, "encrypt.master-key-iters", h->mk_digest_iterations);
}

/* qemu-img shows these as the sub-dictionary "encrypt". */
void qcow2_crypto_info(BDRVQcow2State *s, ImageSpecificInfo *info)
{
    if (!s->crypto) {
        return;
    }
    int first = info->n;
    crypto_info_entries(s->crypto, info);
    for (int i = first; i < info->n; i++) {
        info->entries[i].nested = true;
    }
}

#else /* !CONFIG_CRYPTO */

int qcow2_crypto_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    char *id = NULL;
    (void)flags;
    optdict_take_str(options, "encrypt.key-secret", NULL, &id);
    free(id);
    if (s->h.crypt_method != QCOW2_CRYPT_NONE) {
        error_setg(errp, "qcow2: %s: encrypted images are not supported (crypt_method %" PRIu32
                   "; built without CONFIG_CRYPTO)", qcow2_image_name(bs), s->h.crypt_method);
        return -ENOTSUP;
    }
    return 0;
}

void qcow2_crypto_close(BDRVQcow2State *s)
{
    (void)s;
}

int coroutine_fn qcow2_crypto_amend(BlockDriverState *bs, OptDict *opts, bool force,
                                    Error **errp)
{
    (void)opts, (void)force;
    error_setg(errp, "qcow2: %s: encrypted images are not supported (built without"
               " CONFIG_CRYPTO)", qcow2_image_name(bs));
    return -ENOTSUP;
}

int qcow2_crypto_decrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest, IOVector *qiov,
                         size_t qiov_offset, uint64_t bytes)
{
    (void)s, (void)host, (void)guest, (void)qiov, (void)qiov_offset, (void)bytes;
    return -ENOTSUP;
}

int qcow2_crypto_encrypt_buf(BDRVQcow2State *s, uint64_t host, uint64_t guest, uint8_t *buf,
                             uint64_t bytes)
{
    (void)s, (void)host, (void)guest, (void)buf, (void)bytes;
    return -ENOTSUP;
}

int coroutine_fn qcow2_crypto_pwritev(BlockDriverState *bs, uint64_t host, uint64_t guest,
                                      uint64_t bytes, IOVector *qiov, size_t qiov_offset)
{
    (void)bs, (void)host, (void)guest, (void)bytes, (void)qiov, (void)qiov_offset;
    return -ENOTSUP;
}

void qcow2_crypto_info(BDRVQcow2State *s, ImageSpecificInfo *info)
{
    (void)s, (void)info;
}

#endif

/* ---- create ---- */

#ifdef CONFIG_CRYPTO
int qcow2_crypto_create_area(OptDict *opts, uint8_t **area, size_t *len, Error **errp)
{
    char *fmt = NULL, *id = NULL, *alg = NULL, *mode = NULL, *ivgen = NULL, *ivhash = NULL;
    char *hash = NULL;
    bool legacy = false;
    uint64_t iter_time = 2000;
    int ret = -EINVAL;

    *area = NULL;
    if (optdict_take_bool(opts, "encryption", false, &legacy, errp) < 0 ||
        optdict_take_size(opts, "encrypt.iter-time", 2000, &iter_time, errp) < 0) {
        return -EINVAL;
    }
    optdict_take_str(opts, "encrypt.format", NULL, &fmt);
    optdict_take_str(opts, "encrypt.key-secret", NULL, &id);
    optdict_take_str(opts, "encrypt.cipher-alg", NULL, &alg);
    optdict_take_str(opts, "encrypt.cipher-mode", NULL, &mode);
    optdict_take_str(opts, "encrypt.ivgen-alg", NULL, &ivgen);
    optdict_take_str(opts, "encrypt.ivgen-hash-alg", NULL, &ivhash);
    optdict_take_str(opts, "encrypt.hash-alg", NULL, &hash);
    if (legacy && fmt) {
        error_setg(errp, "Options \"encrypt.format\" and \"encryption\" are mutually exclusive");
        goto out;
    }
    if (legacy || (fmt && !strcmp(fmt, "aes"))) {
        error_setg(errp, "Creating AES-encrypted (crypt_method 1) images is not supported:"
                   " QEMU no longer runs them; use encrypt.format=luks");
        ret = -ENOTSUP;
        goto out;
    }
    if (!fmt) {
        if (id || alg || mode || ivgen || ivhash || hash) {
            error_setg(errp, "encrypt.* options given without encrypt.format=luks");
            goto out;
        }
        ret = 0;
        goto out;
    }
    if (strcmp(fmt, "luks")) {
        error_setg(errp, "Parameter 'encrypt.format' does not accept value '%s'", fmt);
        goto out;
    }
    if (!id) {
        error_setg(errp, "Parameter 'encrypt.key-secret' is required for cipher");
        goto out;
    }
    if (iter_time == 0 || iter_time > 3600 * 1000) {
        error_setg(errp, "Parameter 'encrypt.iter-time' must be 1 to 3600000 ms (got %" PRIu64
                   ")", iter_time);
        goto out;
    }
    size_t pwlen;
    const uint8_t *pw = secret_lookup(id, &pwlen, errp);
    if (!pw) {
        ret = -ENOKEY;
        goto out;
    }
    LuksCreateOpts lo = { .cipher_alg = alg, .cipher_mode = mode, .ivgen_alg = ivgen,
                          .ivgen_hash_alg = ivhash, .hash_alg = hash, .iter_time = iter_time };
    ret = luks_create(&lo, pw, pwlen, area, len, errp);
out:
    free(fmt);
    free(id);
    free(alg);
    free(mode);
    free(ivgen);
    free(ivhash);
    free(hash);
    return ret;
}
#else
int qcow2_crypto_create_area(OptDict *opts, uint8_t **area, size_t *len, Error **errp)
{
    char *fmt = NULL;
    bool legacy = false;
    (void)len;
    *area = NULL;
    optdict_take_bool(opts, "encryption", false, &legacy, NULL);
    optdict_take_str(opts, "encrypt.format", NULL, &fmt);
    if (fmt || legacy) {
        free(fmt);
        error_setg(errp, "Encrypted images are not supported (built without CONFIG_CRYPTO)");
        return -ENOTSUP;
    }
    return 0;
}
#endif
