/*
 * crypto-luks.c - LUKS1 headers as QEMU's crypto/block-luks.c reads and
 * writes them (include/crypto.h).
 *
 * The area: a 592-byte header (big-endian) in the first 4 KiB, then 8
 * key-slot areas.  A slot holds the master key split into 4000 stripes
 * (the anti-forensic splitter, whose diffusion uses the header's hash),
 * encrypted with the volume's cipher under a key PBKDF2 derives from the
 * passphrase and the slot's salt.  The master key is checked against the
 * header's PBKDF2 digest of it.
 *
 * A crafted header must not make us read outside the area, allocate
 * without bound or spin: stripes must be 4000 (QEMU's rule), the key at
 * most 64 bytes, slots inside the area and apart, and iteration counts
 * under LUKS_MAX_ITERS.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "compiler.h"
#include "crypto.h"

#define LUKS_MAGIC "LUKS\xba\xbe"
#define LUKS_SALT_LEN 32
#define LUKS_DIGEST_LEN 20
#define LUKS_SLOT_AREA_OFFSET 4096   /* first key material: QEMU/cryptsetup */
#define LUKS_MIN_ITERS 1000
/* PBKDF2 rounds we accept from an image: a few seconds' worth here.  An
 * image written by a much faster machine with a long iter-time may exceed
 * it; a crafted one cannot keep us busy for hours. */
#define LUKS_MAX_ITERS (256u * 1000 * 1000)

static uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}

static void st32(uint8_t *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, 4);
}

static void copy_str(char *dst, const uint8_t *src, size_t n)
{
    memcpy(dst, src, n);
    dst[n] = 0;
}

static size_t split_len(const LuksHeader *h)
{
    return (size_t)h->key_bytes * LUKS_STRIPES;
}

/* "xts-plain64", "cbc-essiv:sha256", "ecb" */
static int parse_mode(LuksHeader *h, Error **errp)
{
    const char *dash = strchr(h->cipher_mode, '-');
    size_t ml = dash ? (size_t)(dash - h->cipher_mode) : strlen(h->cipher_mode);
    if (ml >= sizeof(h->mode)) {
        error_setg(errp, "LUKS header: unsupported cipher mode '%s'", h->cipher_mode);
        return -ENOTSUP;
    }
    memcpy(h->mode, h->cipher_mode, ml);
    h->mode[ml] = 0;
    h->ivgen[0] = h->ivhash[0] = 0;
    if (dash) {
        const char *iv = dash + 1, *colon = strchr(iv, ':');
        size_t il = colon ? (size_t)(colon - iv) : strlen(iv);
        if (il >= sizeof(h->ivgen) || (colon && strlen(colon + 1) >= sizeof(h->ivhash))) {
            error_setg(errp, "LUKS header: unsupported cipher mode '%s'", h->cipher_mode);
            return -ENOTSUP;
        }
        memcpy(h->ivgen, iv, il);
        h->ivgen[il] = 0;
        if (colon) {
            strcpy(h->ivhash, colon + 1);
        }
    }
    if (!h->ivgen[0] && strcmp(h->mode, "ecb")) {
        error_setg(errp, "LUKS header: cipher mode '%s' names no IV generator", h->cipher_mode);
        return -ENOTSUP;
    }
    if (!strcmp(h->ivgen, "essiv") && !h->ivhash[0]) {
        error_setg(errp, "LUKS header: essiv without a hash in cipher mode '%s'",
                   h->cipher_mode);
        return -ENOTSUP;
    }
    return 0;
}

int luks_header_parse(const uint8_t *b, size_t area_len, LuksHeader *h, Error **errp)
{
    memset(h, 0, sizeof(*h));
    if (area_len < LUKS_HEADER_BYTES) {
        error_setg(errp, "LUKS header: the area of %zu bytes is smaller than a header", area_len);
        return -EINVAL;
    }
    if (memcmp(b, LUKS_MAGIC, 6)) {
        error_setg(errp, "Volume is not in LUKS format");
        return -EINVAL;
    }
    uint16_t ver;
    memcpy(&ver, b + 6, 2);
    if (be16toh(ver) != 1) {
        error_setg(errp, "LUKS version %u is not supported", be16toh(ver));
        return -ENOTSUP;
    }
    copy_str(h->cipher_name, b + 8, 32);
    copy_str(h->cipher_mode, b + 40, 32);
    copy_str(h->hash_spec, b + 72, 32);
    h->payload_offset = ld32(b + 104);
    h->key_bytes = ld32(b + 108);
    memcpy(h->mk_digest, b + 112, 20);
    memcpy(h->mk_digest_salt, b + 132, 32);
    h->mk_digest_iterations = ld32(b + 164);
    copy_str(h->uuid, b + 168, 40);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const uint8_t *s = b + 208 + i * 48;
        h->slots[i].active = ld32(s);
        h->slots[i].iterations = ld32(s + 4);
        memcpy(h->slots[i].salt, s + 8, 32);
        h->slots[i].key_offset = ld32(s + 40);
        h->slots[i].stripes = ld32(s + 44);
    }
    if (crypto_hash_len(h->hash_spec) < 0) {
        error_setg(errp, "LUKS header: hash '%s' is not supported", h->hash_spec);
        return -ENOTSUP;
    }
    if (h->key_bytes == 0 || h->key_bytes > 64) {
        error_setg(errp, "LUKS header: key of %" PRIu32 " bytes is not supported", h->key_bytes);
        return -ENOTSUP;
    }
    int ret = parse_mode(h, errp);
    if (ret < 0) {
        return ret;
    }
    unsigned bits = h->key_bytes * 8 / (strcmp(h->mode, "xts") ? 1 : 2);
    snprintf(h->alg, sizeof(h->alg), "%s", h->cipher_name);
    h->cipher_bits = bits;
    if (h->mk_digest_iterations == 0 || h->mk_digest_iterations > LUKS_MAX_ITERS) {
        error_setg(errp, "LUKS header: master key digest iterations %" PRIu32 " out of range"
                   " (1 to %u)", h->mk_digest_iterations, LUKS_MAX_ITERS);
        return -EINVAL;
    }
    size_t sectors = DIV_ROUND_UP(split_len(h), CRYPTO_SECTOR_SIZE);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const LuksSlot *s = &h->slots[i];
        if (s->active != LUKS_SLOT_ACTIVE && s->active != LUKS_SLOT_DISABLED) {
            error_setg(errp, "Keyslot %d state (active/disable) is corrupted (0x%08" PRIx32 ")",
                       i, s->active);
            return -EINVAL;
        }
        if (s->active == LUKS_SLOT_ACTIVE &&
            (s->iterations == 0 || s->iterations > LUKS_MAX_ITERS)) {
            error_setg(errp, "Keyslot %d: iterations %" PRIu32 " out of range (1 to %u)", i,
                       s->iterations, LUKS_MAX_ITERS);
            return -EINVAL;
        }
        if (s->stripes != LUKS_STRIPES) {
            error_setg(errp, "Keyslot %d is corrupted (stripes %" PRIu32 " != %d)", i,
                       s->stripes, LUKS_STRIPES);
            return -EINVAL;
        }
        if ((uint64_t)s->key_offset * CRYPTO_SECTOR_SIZE < LUKS_HEADER_BYTES) {
            error_setg(errp, "Keyslot %d is overlapping with the LUKS header (key offset sector"
                       " %" PRIu32 ")", i, s->key_offset);
            return -EINVAL;
        }
        if (s->active == LUKS_SLOT_ACTIVE &&
            ((uint64_t)s->key_offset + sectors) * CRYPTO_SECTOR_SIZE > area_len) {
            error_setg(errp, "Keyslot %d lies past the end of the LUKS area (key offset sector %"
                       PRIu32 ", area of %zu bytes)", i, s->key_offset, area_len);
            return -EINVAL;
        }
        for (int j = 0; j < i; j++) {
            uint64_t a = s->key_offset, b2 = h->slots[j].key_offset;
            if (a < b2 + sectors && b2 < a + sectors) {
                error_setg(errp, "Keyslots %d and %d are overlapping in the header", j, i);
                return -EINVAL;
            }
        }
    }
    return 0;
}

/* The splitter's diffusion: each digest-sized piece hashed with its index. */
static int diffuse(const char *hash, uint8_t *block, size_t len)
{
    int dl = crypto_hash_len(hash);
    uint8_t in[4 + 64], out[64];
    for (size_t i = 0, off = 0; off < len; i++, off += (size_t)dl) {
        size_t n = MIN((size_t)dl, len - off);
        st32(in, (uint32_t)i);
        memcpy(in + 4, block + off, n);
        if (crypto_hash(hash, in, 4 + n, out) < 0) {
            return -EIO;
        }
        memcpy(block + off, out, n);
    }
    crypto_wipe(in, sizeof(in));
    crypto_wipe(out, sizeof(out));
    return 0;
}

/* AF merge (qcrypto_afsplit_decode): block ^= stripe, diffused, for all
 * but the last; the key is the last stripe ^ block. */
static int af_merge(const char *hash, size_t blocklen, const uint8_t *in, uint8_t *out,
                    uint8_t *block)
{
    memset(block, 0, blocklen);
    for (size_t i = 0; i < LUKS_STRIPES - 1; i++) {
        for (size_t k = 0; k < blocklen; k++) {
            block[k] ^= in[i * blocklen + k];
        }
        if (diffuse(hash, block, blocklen) < 0) {
            return -EIO;
        }
    }
    for (size_t k = 0; k < blocklen; k++) {
        out[k] = in[(LUKS_STRIPES - 1) * blocklen + k] ^ block[k];
    }
    return 0;
}

/* AF split: random stripes but the last, which makes them merge to key. */
static int af_split(const char *hash, size_t blocklen, const uint8_t *key, uint8_t *out,
                    uint8_t *block)
{
    memset(block, 0, blocklen);
    if (crypto_random(out, blocklen * (LUKS_STRIPES - 1)) < 0) {
        return -EIO;
    }
    for (size_t i = 0; i < LUKS_STRIPES - 1; i++) {
        for (size_t k = 0; k < blocklen; k++) {
            block[k] ^= out[i * blocklen + k];
        }
        if (diffuse(hash, block, blocklen) < 0) {
            return -EIO;
        }
    }
    for (size_t k = 0; k < blocklen; k++) {
        out[(LUKS_STRIPES - 1) * blocklen + k] = key[k] ^ block[k];
    }
    return 0;
}

static CryptoCipher *make_cipher(const LuksHeader *h, const uint8_t *key, Error **errp)
{
    return crypto_cipher_new(h->alg, h->mode, h->ivgen[0] ? h->ivgen : NULL,
                             h->ivhash[0] ? h->ivhash : NULL, key, h->key_bytes, errp);
}

CryptoCipher *luks_data_cipher(const LuksHeader *h, const uint8_t *mk, Error **errp)
{
    return make_cipher(h, mk, errp);
}

/* 1: the slot opened and mk holds the master key; 0: wrong passphrase. */
static int try_slot(const LuksHeader *h, int i, const uint8_t *area, const uint8_t *pw,
                    size_t pwlen, uint8_t *mk, uint8_t *scratch, Error **errp)
{
    const LuksSlot *s = &h->slots[i];
    size_t slen = split_len(h);
    size_t sectors_len = DIV_ROUND_UP(slen, CRYPTO_SECTOR_SIZE) * CRYPTO_SECTOR_SIZE;
    uint8_t *ukey = scratch;                       /* key_bytes */
    uint8_t *block = scratch + 64;                 /* key_bytes */
    uint8_t *digest = scratch + 128;               /* 20 */
    uint8_t *split = scratch + 192;                /* sectors_len */

    if (crypto_pbkdf2(h->hash_spec, pw, pwlen, s->salt, LUKS_SALT_LEN, s->iterations, ukey,
                      h->key_bytes) < 0) {
        error_setg(errp, "Keyslot %d: PBKDF2 with %s failed", i, h->hash_spec);
        return -EIO;
    }
    CryptoCipher *c = make_cipher(h, ukey, errp);
    if (!c) {
        return -ENOTSUP;
    }
    memcpy(split, area + (size_t)s->key_offset * CRYPTO_SECTOR_SIZE, sectors_len);
    int ret = crypto_cipher_run(c, false, 0, split, slen);
    crypto_cipher_free(c);
    if (ret == 0) {
        ret = af_merge(h->hash_spec, h->key_bytes, split, mk, block);
    }
    if (ret == 0) {
        ret = crypto_pbkdf2(h->hash_spec, mk, h->key_bytes, h->mk_digest_salt, LUKS_SALT_LEN,
                            h->mk_digest_iterations, digest, LUKS_DIGEST_LEN);
    }
    if (ret < 0) {
        error_setg(errp, "Keyslot %d: cannot decrypt the key material", i);
        return ret;
    }
    return !memcmp(digest, h->mk_digest, LUKS_DIGEST_LEN);
}

int luks_unlock(const LuksHeader *h, const uint8_t *area, size_t area_len, const uint8_t *pw,
                size_t pwlen, uint8_t *mk, Error **errp)
{
    size_t slen = DIV_ROUND_UP(split_len(h), CRYPTO_SECTOR_SIZE) * CRYPTO_SECTOR_SIZE;
    size_t scratch_len = 192 + slen;
    uint8_t *scratch = crypto_secure_alloc(scratch_len);
    int ret = 0;

    (void)area_len;     /* luks_header_parse checked the slots against it */
    if (!scratch) {
        error_setg(errp, "out of memory unlocking the LUKS key");
        return -ENOMEM;
    }
    for (int i = 0; i < LUKS_NUM_SLOTS && ret == 0; i++) {
        if (h->slots[i].active == LUKS_SLOT_ACTIVE) {
            ret = try_slot(h, i, area, pw, pwlen, mk, scratch, errp);
        }
    }
    crypto_secure_free(scratch, scratch_len);
    if (ret == 0) {
        crypto_wipe(mk, h->key_bytes);
        error_setg(errp, "Invalid password, cannot unlock any keyslot");
        return -EPERM;
    }
    return ret < 0 ? ret : 0;
}

/* ---- create ---- */

static void put_str(uint8_t *dst, const char *s, size_t n)
{
    memset(dst, 0, n);
    memcpy(dst, s, MIN(strlen(s), n - 1));
}

/* The 592 header bytes as QEMU's qcrypto_block_luks_store_header writes
 * them; an inactive slot's salt and iterations are zero, as QEMU leaves them. */
void luks_header_store(const LuksHeader *h, uint8_t *b)
{
    memset(b, 0, LUKS_HEADER_BYTES);
    memcpy(b, LUKS_MAGIC, 6);
    b[6] = 0;
    b[7] = 1;
    put_str(b + 8, h->cipher_name, 32);
    put_str(b + 40, h->cipher_mode, 32);
    put_str(b + 72, h->hash_spec, 32);
    st32(b + 104, h->payload_offset);
    st32(b + 108, h->key_bytes);
    memcpy(b + 112, h->mk_digest, 20);
    memcpy(b + 132, h->mk_digest_salt, 32);
    st32(b + 164, h->mk_digest_iterations);
    put_str(b + 168, h->uuid, 40);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const LuksSlot *sl = &h->slots[i];
        bool on = sl->active == LUKS_SLOT_ACTIVE;
        uint8_t *s = b + 208 + i * 48;
        st32(s, sl->active);
        st32(s + 4, on ? sl->iterations : 0);
        memcpy(s + 8, on ? sl->salt : (const uint8_t[32]){ 0 }, 32);
        st32(s + 40, sl->key_offset);
        st32(s + 44, sl->stripes);
    }
}

int luks_create(const LuksCreateOpts *o, const uint8_t *pw, size_t pwlen, uint8_t **area_out,
                size_t *area_len, Error **errp)
{
    LuksHeader h = { 0 };
    const char *alg = o->cipher_alg ? o->cipher_alg : "aes-256";
    const char *mode = o->cipher_mode ? o->cipher_mode : "xts";
    const char *ivgen = o->ivgen_alg ? o->ivgen_alg : "plain64";
    const char *hash = o->hash_alg ? o->hash_alg : "sha256";
    uint64_t iter_time = o->iter_time ? o->iter_time : 2000;
    unsigned bits;
    char name[16];
    uint8_t *area = NULL, *scratch = NULL, *mk = NULL;
    size_t scratch_len = 0;
    int ret = -EINVAL;

    if (sscanf(alg, "%15[a-z0-9]-%u", name, &bits) != 2 || strchr(name, '-')) {
        error_setg(errp, "Parameter 'encrypt.cipher-alg' does not accept value '%s'", alg);
        return -EINVAL;
    }
    if (strcmp(name, "aes")) {
        error_setg(errp, "Cipher algorithm '%s' is not supported (aes-128, aes-192, aes-256)",
                   alg);
        return -ENOTSUP;
    }
    if (crypto_hash_len(hash) < 0) {
        error_setg(errp, "Parameter 'encrypt.hash-alg' does not accept value '%s'", hash);
        return -EINVAL;
    }
    snprintf(h.alg, sizeof(h.alg), "%s", name);
    snprintf(h.mode, sizeof(h.mode), "%s", mode);
    h.key_bytes = bits / 8 * (strcmp(mode, "xts") ? 1 : 2);
    h.cipher_bits = bits;
    if (!strcmp(ivgen, "essiv")) {
        const char *ivh = o->ivgen_hash_alg ? o->ivgen_hash_alg : "sha256";
        if (strlen(ivh) >= sizeof(h.ivhash)) {
            error_setg(errp, "Parameter 'encrypt.ivgen-hash-alg' does not accept value '%s'",
                       ivh);
            return -EINVAL;
        }
        snprintf(h.ivgen, sizeof(h.ivgen), "essiv");
        snprintf(h.ivhash, sizeof(h.ivhash), "%s", ivh);
        snprintf(h.cipher_mode, sizeof(h.cipher_mode), "%s-essiv:%s", mode, ivh);
    } else {
        if (strlen(ivgen) >= sizeof(h.ivgen)) {
            error_setg(errp, "Parameter 'encrypt.ivgen-alg' does not accept value '%s'", ivgen);
            return -EINVAL;
        }
        snprintf(h.ivgen, sizeof(h.ivgen), "%s", ivgen);
        snprintf(h.cipher_mode, sizeof(h.cipher_mode), "%s-%s", mode, ivgen);
    }
    snprintf(h.cipher_name, sizeof(h.cipher_name), "%s", name);
    snprintf(h.hash_spec, sizeof(h.hash_spec), "%s", hash);

    /* Refuse what we could not open before writing anything. */
    uint8_t probe_key[64] = { 0 };
    if (h.key_bytes > 64) {
        error_setg(errp, "Cipher %s-%s is not supported", alg, mode);
        return -ENOTSUP;
    }
    CryptoCipher *probe = make_cipher(&h, probe_key, errp);
    if (!probe) {
        return -ENOTSUP;
    }
    crypto_cipher_free(probe);

    size_t slen = split_len(&h);
    if (slen % CRYPTO_SECTOR_SIZE) {
        /* aes-192: 96000 bytes of key material; qemu-img 7.2 asserts on it */
        error_setg(errp, "Cipher %s-%s is not supported: its key material (%zu bytes) is not"
                   " whole sectors, which qemu-img 7.2 cannot open", alg, mode, slen);
        return -ENOTSUP;
    }
    size_t split_sectors = ALIGN_UP(slen, (size_t)LUKS_SLOT_AREA_OFFSET) / CRYPTO_SECTOR_SIZE;
    size_t header_sectors = LUKS_SLOT_AREA_OFFSET / CRYPTO_SECTOR_SIZE;
    h.payload_offset = (uint32_t)(header_sectors + LUKS_NUM_SLOTS * split_sectors);
    *area_len = (size_t)h.payload_offset * CRYPTO_SECTOR_SIZE;
    area = calloc(1, *area_len);
    scratch_len = 192 + split_sectors * CRYPTO_SECTOR_SIZE;
    scratch = crypto_secure_alloc(scratch_len);
    mk = crypto_secure_alloc(h.key_bytes);
    if (!area || !scratch || !mk) {
        error_setg(errp, "out of memory creating the LUKS header");
        ret = -ENOMEM;
        goto out;
    }
    uint8_t *ukey = scratch, *block = scratch + 64, *split = scratch + 192;
    uint8_t uuid[16];
    if (crypto_random(mk, h.key_bytes) < 0 || crypto_random(h.mk_digest_salt, 32) < 0 ||
        crypto_random(h.slots[0].salt, 32) < 0 || crypto_random(uuid, 16) < 0) {
        error_setg(errp, "cannot get random bytes for the LUKS key");
        ret = -EIO;
        goto out;
    }
    uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);
    uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
    snprintf(h.uuid, sizeof(h.uuid), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", uuid[0], uuid[1], uuid[2], uuid[3], uuid[4], uuid[5],
             uuid[6], uuid[7], uuid[8], uuid[9], uuid[10], uuid[11], uuid[12], uuid[13],
             uuid[14], uuid[15]);

    /* QEMU's iteration counts: the master key digest gets an eighth of
     * iter-time (cryptsetup's rule), the slot all of it; at least 1000. */
    uint64_t it = crypto_pbkdf2_iters_for(hash, LUKS_DIGEST_LEN, iter_time) / 8;
    h.mk_digest_iterations = (uint32_t)MIN(MAX(it, (uint64_t)LUKS_MIN_ITERS), (uint64_t)LUKS_MAX_ITERS);
    it = crypto_pbkdf2_iters_for(hash, h.key_bytes, iter_time);
    h.slots[0].iterations = (uint32_t)MIN(MAX(it, (uint64_t)LUKS_MIN_ITERS), (uint64_t)LUKS_MAX_ITERS);
    if (crypto_pbkdf2(hash, mk, h.key_bytes, h.mk_digest_salt, 32, h.mk_digest_iterations,
                      h.mk_digest, LUKS_DIGEST_LEN) < 0 ||
        crypto_pbkdf2(hash, pw, pwlen, h.slots[0].salt, 32, h.slots[0].iterations, ukey,
                      h.key_bytes) < 0) {
        error_setg(errp, "PBKDF2 with %s failed", hash);
        ret = -EIO;
        goto out;
    }
    memset(split, 0, split_sectors * CRYPTO_SECTOR_SIZE);
    ret = af_split(hash, h.key_bytes, mk, split, block);
    CryptoCipher *c = ret == 0 ? make_cipher(&h, ukey, errp) : NULL;
    if (!c) {
        if (ret == 0) {
            ret = -ENOTSUP;
        } else {
            error_setg(errp, "cannot split the LUKS key");
        }
        goto out;
    }
    ret = crypto_cipher_run(c, true, 0, split, slen);
    crypto_cipher_free(c);
    if (ret < 0) {
        error_setg(errp, "cannot encrypt the LUKS key material");
        goto out;
    }

    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        h.slots[i].active = i == 0 ? LUKS_SLOT_ACTIVE : LUKS_SLOT_DISABLED;
        h.slots[i].key_offset = (uint32_t)(header_sectors + (size_t)i * split_sectors);
        h.slots[i].stripes = LUKS_STRIPES;
    }
    luks_header_store(&h, area);
    memcpy(area + header_sectors * CRYPTO_SECTOR_SIZE, split, slen);
    *area_out = area;
    area = NULL;
    ret = 0;
out:
    free(area);
    crypto_secure_free(scratch, scratch_len);
    crypto_secure_free(mk, h.key_bytes);
    return ret;
}

/* ---- keyslots (amend) ---- */

size_t luks_slot_material_len(const LuksHeader *h)
{
    return DIV_ROUND_UP(split_len(h), CRYPTO_SECTOR_SIZE) * CRYPTO_SECTOR_SIZE;
}

int luks_slot_open(const LuksHeader *h, int slot, const uint8_t *area, const uint8_t *pw,
                   size_t pwlen, uint8_t *mk, Error **errp)
{
    if (h->slots[slot].active != LUKS_SLOT_ACTIVE) {
        return 0;
    }
    size_t scratch_len = 192 + luks_slot_material_len(h);
    uint8_t *scratch = crypto_secure_alloc(scratch_len);
    if (!scratch) {
        error_setg(errp, "out of memory unlocking the LUKS key");
        return -ENOMEM;
    }
    int ret = try_slot(h, slot, area, pw, pwlen, mk, scratch, errp);
    crypto_secure_free(scratch, scratch_len);
    if (ret == 0) {
        crypto_wipe(mk, h->key_bytes);
    }
    return ret;
}

/* QEMU's qcrypto_block_luks_store_key without the writes: a fresh salt,
 * iterations for iter_time ms (at least 1000), the master key split and
 * encrypted under the passphrase's key. */
int luks_slot_make(const LuksHeader *h, LuksSlot *slot, const uint8_t *mk, const uint8_t *pw,
                   size_t pwlen, uint64_t iter_time, uint8_t *material, Error **errp)
{
    size_t slen = split_len(h), mlen = luks_slot_material_len(h);
    uint8_t *scratch = crypto_secure_alloc(128);
    int ret = -EIO;

    if (!scratch) {
        error_setg(errp, "out of memory for the LUKS keyslot");
        return -ENOMEM;
    }
    if (crypto_random(slot->salt, LUKS_SALT_LEN) < 0) {
        error_setg(errp, "cannot get random bytes for the LUKS keyslot");
        goto out;
    }
    uint64_t it = iter_time ? crypto_pbkdf2_iters_for(h->hash_spec, h->key_bytes, iter_time) : 0;
    slot->iterations = (uint32_t)MIN(MAX(it, (uint64_t)LUKS_MIN_ITERS), (uint64_t)LUKS_MAX_ITERS);
    slot->stripes = LUKS_STRIPES;
    uint8_t *ukey = scratch, *block = scratch + 64;
    if (crypto_pbkdf2(h->hash_spec, pw, pwlen, slot->salt, LUKS_SALT_LEN, slot->iterations, ukey,
                      h->key_bytes) < 0) {
        error_setg(errp, "PBKDF2 with %s failed", h->hash_spec);
        goto out;
    }
    memset(material, 0, mlen);
    if (af_split(h->hash_spec, h->key_bytes, mk, material, block) < 0) {
        error_setg(errp, "cannot split the LUKS key");
        goto out;
    }
    CryptoCipher *c = make_cipher(h, ukey, errp);
    if (!c) {
        ret = -ENOTSUP;
        goto out;
    }
    ret = crypto_cipher_run(c, true, 0, material, slen);
    crypto_cipher_free(c);
    if (ret < 0) {
        error_setg(errp, "cannot encrypt the LUKS key material");
    }
out:
    crypto_secure_free(scratch, 128);
    return ret;
}
