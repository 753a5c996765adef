/*
 * crypto-cipher.c - sector ciphers over OpenSSL EVP (include/crypto.h).
 *
 * EVP contexts are not thread safe and EVP_CIPHER_CTX_new allocates, so a
 * cipher keeps a free list of initialised context pairs (data cipher and,
 * for essiv, the IV cipher): a request takes one, sets the IV per sector
 * (EVP_CipherInit_ex with only the IV allocates nothing) and gives it back.
 * The list grows to the number of threads that ran it at once.
 */
#include <endian.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include "compiler.h"
#include "crypto.h"

void crypto_wipe(void *p, size_t len)
{
    if (p && len) {
        OPENSSL_cleanse(p, len);
    }
}

static size_t page_round(size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (len + pg - 1) / pg * pg;
}

void *crypto_secure_alloc(size_t len)
{
    size_t n = page_round(len ? len : 1);
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return NULL;
    }
    /* Not in a core file; not in swap where RLIMIT_MEMLOCK allows (a
     * failed mlock still leaves the key out of core dumps). */
    madvise(p, n, MADV_DONTDUMP);
    (void)mlock(p, n);
    return p;
}

void (*crypto_secure_free_hook)(const void *p, size_t len);

void crypto_secure_free(void *p, size_t len)
{
    if (!p) {
        return;
    }
    size_t n = page_round(len ? len : 1);
    OPENSSL_cleanse(p, n);
    if (crypto_secure_free_hook) {
        crypto_secure_free_hook(p, n);
    }
    munlock(p, n);
    munmap(p, n);
}

int crypto_random(uint8_t *buf, size_t len)
{
    return RAND_bytes(buf, (int)len) == 1 ? 0 : -EIO;
}

static const EVP_MD *md_by_name(const char *hash)
{
    static const char *const ok[] = { "md5", "sha1", "sha224", "sha256", "sha384", "sha512",
                                      "ripemd160", NULL };
    if (!hash) {
        return NULL;
    }
    for (int i = 0; ok[i]; i++) {
        if (!strcmp(hash, ok[i])) {
            return EVP_get_digestbyname(hash);
        }
    }
    return NULL;
}

int crypto_hash_len(const char *hash)
{
    const EVP_MD *md = md_by_name(hash);
    return md ? EVP_MD_size(md) : -1;
}

int crypto_hash(const char *hash, const uint8_t *in, size_t len, uint8_t *out)
{
    const EVP_MD *md = md_by_name(hash);
    unsigned int n;
    return md && EVP_Digest(in, len, out, &n, md, NULL) == 1 ? 0 : -EIO;
}

int crypto_pbkdf2(const char *hash, const uint8_t *pw, size_t pwlen, const uint8_t *salt,
                  size_t saltlen, uint64_t iterations, uint8_t *out, size_t outlen)
{
    const EVP_MD *md = md_by_name(hash);
    if (!md || iterations == 0 || iterations > INT32_MAX) {
        return -EINVAL;
    }
    return PKCS5_PBKDF2_HMAC((const char *)pw, (int)pwlen, salt, (int)saltlen, (int)iterations,
                             md, (int)outlen, out) == 1 ? 0 : -EIO;
}

static uint64_t thread_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* QEMU's qcrypto_pbkdf2_count_iters: grow the count until one run takes
 * over half a second of CPU, then scale to ms. */
uint64_t crypto_pbkdf2_iters_for(const char *hash, size_t keylen, uint64_t ms)
{
    uint8_t key[64] = { 0 }, salt[32] = { 0 }, out[64];
    uint64_t iters = 1 << 12, delta;
    /* QEMU times 500 ms of PBKDF2 whatever the wanted time; a run of ms
     * itself (at least 50 ms: the clock counts whole ms) measures the rate
     * as well for a short iter-time and costs no more than the iterations
     * it picks. */
    uint64_t target = MIN(MAX(ms, (uint64_t)50), (uint64_t)500);

    keylen = MIN(keylen, sizeof(out));
    for (;;) {
        uint64_t t0 = thread_cpu_ms();
        if (crypto_pbkdf2(hash, key, sizeof(key), salt, sizeof(salt), iters, out, keylen) < 0) {
            return 0;
        }
        delta = thread_cpu_ms() - t0;
        if (delta >= target || iters >= INT32_MAX / 10) {
            break;
        }
        /* aim a little past the target so that the next run ends it */
        iters = delta < target / 5 ? iters * 10 : iters * (target + target / 8) / delta;
        iters = MIN(iters, (uint64_t)INT32_MAX / 2);
    }
    crypto_wipe(out, sizeof(out));
    return iters * 1000 / (delta ? delta : 1) * ms / 1000;
}

/* ---- sector ciphers ---- */

typedef struct CipherCtx {
    /* one per direction: a context keeps the key schedule of the direction
     * it was keyed for, and re-keying per sector would cost more than the
     * data */
    EVP_CIPHER_CTX *data[2], *iv;
    struct CipherCtx *next;
} CipherCtx;

enum { IVGEN_NONE, IVGEN_PLAIN, IVGEN_PLAIN64, IVGEN_ESSIV };

struct CryptoCipher {
    const EVP_CIPHER *evp, *iv_evp;
    uint8_t *key, *iv_key;          /* secure memory */
    size_t keylen, iv_keylen;
    int ivgen;
    bool ecb;
    char name[16];
    pthread_mutex_t lock;
    CipherCtx *free;
};

static const EVP_CIPHER *aes_cipher(const char *mode, size_t bits)
{
    if (!strcmp(mode, "xts")) {
        return bits == 128 ? EVP_aes_128_xts() : bits == 256 ? EVP_aes_256_xts() : NULL;
    }
    if (!strcmp(mode, "cbc")) {
        return bits == 128 ? EVP_aes_128_cbc() : bits == 192 ? EVP_aes_192_cbc() :
               bits == 256 ? EVP_aes_256_cbc() : NULL;
    }
    if (!strcmp(mode, "ecb")) {
        return bits == 128 ? EVP_aes_128_ecb() : bits == 192 ? EVP_aes_192_ecb() :
               bits == 256 ? EVP_aes_256_ecb() : NULL;
    }
    if (!strcmp(mode, "ctr")) {
        return bits == 128 ? EVP_aes_128_ctr() : bits == 192 ? EVP_aes_192_ctr() :
               bits == 256 ? EVP_aes_256_ctr() : NULL;
    }
    return NULL;
}

CryptoCipher *crypto_cipher_new(const char *alg, const char *mode, const char *ivgen,
                                const char *ivhash, const uint8_t *key, size_t keylen,
                                Error **errp)
{
    bool xts = !strcmp(mode, "xts");
    size_t bits = (xts ? keylen / 2 : keylen) * 8;

    if (strcmp(alg, "aes")) {
        error_setg(errp, "Cipher '%s' is not supported (ublkd's libcrypto ciphers: aes;"
                   " %s)", alg, !strcmp(alg, "cast5") ? "cast5 needs OpenSSL's legacy provider" :
                   "OpenSSL has no serpent or twofish");
        return NULL;
    }
    if (strcmp(mode, "xts") && strcmp(mode, "cbc") && strcmp(mode, "ecb") && strcmp(mode, "ctr")) {
        error_setg(errp, "Cipher mode '%s' is not supported (ecb, cbc, xts, ctr)", mode);
        return NULL;
    }
    const EVP_CIPHER *evp = aes_cipher(mode, bits);
    if (!evp || (xts && keylen % 2)) {
        error_setg(errp, "Cipher aes-%zu-%s is not supported (key of %zu bytes)", bits, mode,
                   keylen);
        return NULL;
    }
    int iv = IVGEN_NONE;
    if (!strcmp(mode, "ecb")) {
        /* QEMU writes "ecb-plain64" and ignores the IV generator */
    } else if (ivgen && !strcmp(ivgen, "plain")) {
        iv = IVGEN_PLAIN;
    } else if (ivgen && !strcmp(ivgen, "plain64")) {
        iv = IVGEN_PLAIN64;
    } else if (ivgen && !strcmp(ivgen, "essiv")) {
        iv = IVGEN_ESSIV;
    } else {
        error_setg(errp, "IV generator '%s' is not supported (plain, plain64, essiv)",
                   ivgen ? ivgen : "");
        return NULL;
    }
    CryptoCipher *c = calloc(1, sizeof(*c));
    if (!c) {
        error_setg(errp, "out of memory");
        return NULL;
    }
    c->evp = evp;
    c->ivgen = iv;
    c->ecb = !strcmp(mode, "ecb");
    c->keylen = keylen;
    c->key = crypto_secure_alloc(keylen);
    snprintf(c->name, sizeof(c->name), "aes-%zu", bits);
    pthread_mutex_init(&c->lock, NULL);
    if (!c->key) {
        goto nomem;
    }
    memcpy(c->key, key, keylen);
    if (iv == IVGEN_ESSIV) {
        /* The IV key is the hash of the key; the IV cipher is AES with a
         * key of the hash's length, in ECB (QEMU's ivgen-essiv). */
        int hl = crypto_hash_len(ivhash);
        if (hl != 16 && hl != 24 && hl != 32) {
            error_setg(errp, "ESSIV hash '%s' is not supported (its digest must be an AES key:"
                       " 16, 24 or 32 bytes)", ivhash ? ivhash : "");
            crypto_cipher_free(c);
            return NULL;
        }
        c->iv_keylen = (size_t)hl;
        c->iv_key = crypto_secure_alloc((size_t)hl);
        if (!c->iv_key) {
            goto nomem;
        }
        if (crypto_hash(ivhash, key, keylen, c->iv_key) < 0) {
            error_setg(errp, "cannot hash the key for ESSIV");
            crypto_cipher_free(c);
            return NULL;
        }
        c->iv_evp = aes_cipher("ecb", (size_t)hl * 8);
    }
    return c;

nomem:
    error_setg(errp, "out of memory for the key");
    crypto_cipher_free(c);
    return NULL;
}

const char *crypto_cipher_alg_name(const CryptoCipher *c)
{
    return c->name;
}

void crypto_cipher_free(CryptoCipher *c)
{
    if (!c) {
        return;
    }
    while (c->free) {
        CipherCtx *x = c->free;
        c->free = x->next;
        EVP_CIPHER_CTX_free(x->data[0]);  /* wipes the key schedule */
        EVP_CIPHER_CTX_free(x->data[1]);
        EVP_CIPHER_CTX_free(x->iv);
        free(x);
    }
    crypto_secure_free(c->key, c->keylen);
    crypto_secure_free(c->iv_key, c->iv_keylen);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static CipherCtx *ctx_get(CryptoCipher *c)
{
    pthread_mutex_lock(&c->lock);
    CipherCtx *x = c->free;
    if (x) {
        c->free = x->next;
    }
    pthread_mutex_unlock(&c->lock);
    if (x) {
        return x;
    }
    x = calloc(1, sizeof(*x));
    if (!x) {
        return NULL;
    }
    for (int d = 0; d < 2; d++) {
        x->data[d] = EVP_CIPHER_CTX_new();
        if (!x->data[d] || EVP_CipherInit_ex(x->data[d], c->evp, NULL, c->key, NULL, d) != 1) {
            goto fail;
        }
        EVP_CIPHER_CTX_set_padding(x->data[d], 0);
    }
    if (c->iv_evp) {
        x->iv = EVP_CIPHER_CTX_new();
        if (!x->iv || EVP_CipherInit_ex(x->iv, c->iv_evp, NULL, c->iv_key, NULL, 1) != 1) {
            goto fail;
        }
        EVP_CIPHER_CTX_set_padding(x->iv, 0);
    }
    return x;
fail:
    EVP_CIPHER_CTX_free(x->data[0]);
    EVP_CIPHER_CTX_free(x->data[1]);
    EVP_CIPHER_CTX_free(x->iv);
    free(x);
    return NULL;
}

static void ctx_put(CryptoCipher *c, CipherCtx *x)
{
    pthread_mutex_lock(&c->lock);
    x->next = c->free;
    c->free = x;
    pthread_mutex_unlock(&c->lock);
}

/* One sector in place (len 512, or less for the last piece of a LUKS key
 * area: a multiple of the block size). */
static int run_sector(CryptoCipher *c, CipherCtx *x, bool enc, uint64_t sector, uint8_t *buf,
                      int len)
{
    uint8_t iv[16] = { 0 };
    int outl;

    switch (c->ivgen) {
    case IVGEN_PLAIN: {
        uint32_t s32 = htole32((uint32_t)sector);
        memcpy(iv, &s32, 4);
        break;
    }
    case IVGEN_PLAIN64:
    case IVGEN_ESSIV: {
        uint64_t s64 = htole64(sector);
        memcpy(iv, &s64, 8);
        if (c->ivgen == IVGEN_ESSIV &&
            (EVP_EncryptUpdate(x->iv, iv, &outl, iv, 16) != 1 || outl != 16)) {
            return -EIO;
        }
        break;
    }
    default:
        break;
    }
    EVP_CIPHER_CTX *d = x->data[enc ? 1 : 0];
    if ((!c->ecb && EVP_CipherInit_ex(d, NULL, NULL, NULL, iv, -1) != 1) ||
        EVP_CipherUpdate(d, buf, &outl, buf, len) != 1 || outl != len) {
        return -EIO;
    }
    return 0;
}

int crypto_cipher_run(CryptoCipher *c, bool encrypt, uint64_t sector, uint8_t *buf, size_t len)
{
    if (len % 16) {
        return -EINVAL;
    }
    CipherCtx *x = ctx_get(c);
    if (!x) {
        return -ENOMEM;
    }
    int ret = 0;
    for (size_t o = 0; o < len && ret == 0; o += CRYPTO_SECTOR_SIZE) {
        ret = run_sector(c, x, encrypt, sector++, buf + o, (int)MIN(len - o, (size_t)CRYPTO_SECTOR_SIZE));
    }
    ctx_put(c, x);
    return ret;
}

int crypto_cipher_run_iov(CryptoCipher *c, bool encrypt, uint64_t sector, IOVector *q,
                          size_t off, size_t len)
{
    if (len % CRYPTO_SECTOR_SIZE) {
        return -EINVAL;
    }
    CipherCtx *x = ctx_get(c);
    if (!x) {
        return -ENOMEM;
    }
    int ret = 0, i = 0;
    /* find the element that holds off */
    while (i < q->niov && off >= q->iov[i].iov_len) {
        off -= q->iov[i].iov_len;
        i++;
    }
    while (len && ret == 0 && i < q->niov) {
        uint8_t *p = (uint8_t *)q->iov[i].iov_base + off;
        size_t avail = q->iov[i].iov_len - off;
        if (avail >= CRYPTO_SECTOR_SIZE) {
            size_t n = MIN(avail, len) / CRYPTO_SECTOR_SIZE * CRYPTO_SECTOR_SIZE;
            for (size_t o = 0; o < n && ret == 0; o += CRYPTO_SECTOR_SIZE) {
                ret = run_sector(c, x, encrypt, sector++, p + o, CRYPTO_SECTOR_SIZE);
            }
            off += n;
            len -= n;
        } else {
            /* a sector across elements: through a buffer on the stack */
            uint8_t tmp[CRYPTO_SECTOR_SIZE];
            IOVector sub = *q;
            size_t base = 0;
            for (int k = 0; k < i; k++) {
                base += q->iov[k].iov_len;
            }
            if (iov_to_buf(&sub, base + off, tmp, sizeof(tmp)) != sizeof(tmp)) {
                ret = -EINVAL;
                break;
            }
            ret = run_sector(c, x, encrypt, sector++, tmp, CRYPTO_SECTOR_SIZE);
            iov_from_buf(&sub, base + off, tmp, sizeof(tmp));
            crypto_wipe(tmp, sizeof(tmp));
            off += CRYPTO_SECTOR_SIZE;
            len -= CRYPTO_SECTOR_SIZE;
        }
        while (i < q->niov && off >= q->iov[i].iov_len) {
            off -= q->iov[i].iov_len;
            i++;
        }
    }
    ctx_put(c, x);
    return ret ? ret : (len ? -EINVAL : 0);
}
