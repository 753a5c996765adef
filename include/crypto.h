/*
 * crypto.h - disk encryption for format drivers (qcow2's LUKS and legacy
 * AES), over OpenSSL's libcrypto: no cipher is written here.
 *
 * io/crypto-cipher.c: sector ciphers.  Data is encrypted per 512-byte
 * sector, each with an IV made from its sector number (plain: 32-bit
 * little-endian, plain64: 64-bit little-endian, essiv: plain64 encrypted
 * with a hash of the key), as QEMU's crypto/ layer and dm-crypt do.
 * io/crypto-luks.c: LUKS1 headers (parse, unlock, create) as QEMU's
 * crypto/block-luks.c reads and writes them.  io/crypto-secret.c: the
 * secrets `--object secret,...` defines, looked up by id.
 *
 * Keys live in memory from crypto_secure_alloc: never in a core dump
 * (MADV_DONTDUMP), locked in RAM where the limit allows, wiped when freed.
 */
#ifndef UBLKD_CRYPTO_H
#define UBLKD_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "error.h"
#include "iov.h"

#define CRYPTO_SECTOR_SIZE 512

/* Memory for keys and plaintext: page-granular, MADV_DONTDUMP, mlocked
 * if allowed, zeroed.  crypto_secure_free wipes it first.  NULL: ENOMEM. */
void *crypto_secure_alloc(size_t len);
void crypto_secure_free(void *p, size_t len);
/* Tests: called by crypto_secure_free with the memory it has just wiped,
 * before it is unmapped (NULL: nothing is called). */
extern void (*crypto_secure_free_hook)(const void *p, size_t len);
/* Wipe memory the compiler may not elide (OPENSSL_cleanse). */
void crypto_wipe(void *p, size_t len);

typedef struct CryptoCipher CryptoCipher;

/*
 * A sector cipher: alg "aes" (key of 16, 24 or 32 bytes; twice that for
 * xts), mode "ecb", "cbc", "xts" or "ctr", ivgen "plain", "plain64" or
 * "essiv" (then ivhash names the hash, e.g. "sha256"; NULL otherwise; no
 * ivgen is ignored for ecb, as QEMU does).  Algorithms OpenSSL lacks (serpent, twofish) and cast5
 * (OpenSSL's legacy provider) are refused naming them.
 */
CryptoCipher *crypto_cipher_new(const char *alg, const char *mode, const char *ivgen,
                                const char *ivhash, const uint8_t *key, size_t keylen,
                                Error **errp);
void crypto_cipher_free(CryptoCipher *c);
/* Encrypt or decrypt len bytes (sectors of 512; a last shorter piece, a multiple of 16, is
 * how LUKS key material ends) of buf in place; the
 * first sector is number `sector`.  0 or -EIO (libcrypto failed).  Thread
 * safe; allocates only while warming up (one context per thread in flight). */
int crypto_cipher_run(CryptoCipher *c, bool encrypt, uint64_t sector, uint8_t *buf, size_t len);
/* The same over [off, off + len) of a mapped vector (sectors may straddle
 * its elements). */
int crypto_cipher_run_iov(CryptoCipher *c, bool encrypt, uint64_t sector, IOVector *q,
                          size_t off, size_t len);
/* What the cipher is, as qemu-img info prints it ("aes-256", "xts", "plain64"). */
const char *crypto_cipher_alg_name(const CryptoCipher *c);

/* Hash names as LUKS spells them ("sha256"); digest length or -1. */
int crypto_hash_len(const char *hash);
int crypto_hash(const char *hash, const uint8_t *in, size_t len, uint8_t *out);
int crypto_pbkdf2(const char *hash, const uint8_t *pw, size_t pwlen, const uint8_t *salt,
                  size_t saltlen, uint64_t iterations, uint8_t *out, size_t outlen);
/* Iterations of PBKDF2 that take about ms milliseconds here (QEMU's
 * qcrypto_pbkdf2_count_iters, scaled). */
uint64_t crypto_pbkdf2_iters_for(const char *hash, size_t keylen, uint64_t ms);
int crypto_random(uint8_t *buf, size_t len);

/* LUKS1 (io/crypto-luks.c). */
#define LUKS_HEADER_BYTES    592
#define LUKS_NUM_SLOTS       8
#define LUKS_STRIPES         4000
#define LUKS_SLOT_ACTIVE     0x00AC71F3U
#define LUKS_SLOT_DISABLED   0x0000DEADU

typedef struct LuksSlot {
    uint32_t active, iterations;
    uint8_t salt[32];
    uint32_t key_offset;            /* sectors from the start of the header */
    uint32_t stripes;
} LuksSlot;

typedef struct LuksHeader {
    char cipher_name[33], cipher_mode[33], hash_spec[33];
    uint32_t payload_offset;        /* sectors */
    uint32_t key_bytes;
    uint8_t mk_digest[20], mk_digest_salt[32];
    uint32_t mk_digest_iterations;
    char uuid[41];
    LuksSlot slots[LUKS_NUM_SLOTS];
    /* parsed from cipher_name/cipher_mode and key_bytes */
    char alg[33], mode[8], ivgen[8], ivhash[16];
    unsigned cipher_bits;           /* 128, 192, 256 (per half for xts) */
} LuksHeader;

/* Parse and check the header at the start of a LUKS area of area_len bytes
 * (key slots must lie inside it); the messages say which field. */
int luks_header_parse(const uint8_t *buf, size_t area_len, LuksHeader *h, Error **errp);
/* Find the active slot the passphrase opens and recover the master key
 * (h->key_bytes into mk, which should be crypto_secure_alloc'd).  area:
 * the whole LUKS area.  -EPERM "Invalid password, cannot unlock any
 * keyslot" when none does. */
int luks_unlock(const LuksHeader *h, const uint8_t *area, size_t area_len, const uint8_t *pw,
                size_t pwlen, uint8_t *mk, Error **errp);
/* The data cipher for master key mk. */
CryptoCipher *luks_data_cipher(const LuksHeader *h, const uint8_t *mk, Error **errp);

typedef struct LuksCreateOpts {
    const char *cipher_alg;         /* "aes-256" */
    const char *cipher_mode;        /* "xts" */
    const char *ivgen_alg;          /* "plain64" */
    const char *ivgen_hash_alg;     /* for essiv, "sha256" */
    const char *hash_alg;           /* "sha256" */
    uint64_t iter_time;             /* ms, 2000 */
} LuksCreateOpts;
/* A new LUKS area (*area_len bytes, the header and 8 key-slot areas, the
 * first slot opened by pw), as QEMU's qcrypto_block_luks_create lays it
 * out.  *area is malloc'd: no key in it but encrypted ones. */
int luks_create(const LuksCreateOpts *o, const uint8_t *pw, size_t pwlen, uint8_t **area,
                size_t *area_len, Error **errp);

/* The 592 header bytes for h (slot states, salts, iterations as h has them). */
void luks_header_store(const LuksHeader *h, uint8_t *buf);
/* Bytes of a slot's key material (the split key, whole sectors). */
size_t luks_slot_material_len(const LuksHeader *h);
/* Does passphrase pw open slot `slot`?  1 with the master key in mk, 0 (an
 * inactive slot, another passphrase), or -errno. */
int luks_slot_open(const LuksHeader *h, int slot, const uint8_t *area, const uint8_t *pw,
                   size_t pwlen, uint8_t *mk, Error **errp);
/* A slot for passphrase pw over master key mk: fresh salt, iterations for
 * iter_time ms (0: the minimum, 1000), and its encrypted key material
 * (luks_slot_material_len bytes).  *slot's active and key_offset are
 * left alone. */
int luks_slot_make(const LuksHeader *h, LuksSlot *slot, const uint8_t *mk, const uint8_t *pw,
                   size_t pwlen, uint64_t iter_time, uint8_t *material, Error **errp);

/* Keyslot management, as qemu-img 7.2's amend (io/crypto-luks-amend.c). */
typedef struct LuksAmendOpts {
    bool activate;                  /* encrypt.state=active; else inactive */
    const char *key_secret;         /* id of the secret the image was opened with */
    const char *new_secret, *old_secret;        /* ids, NULL when not given */
    bool has_keyslot, has_iter_time;
    int keyslot;
    uint64_t iter_time;             /* ms */
} LuksAmendOpts;
/* Where the LUKS area lives: offsets from its start; 0 or -errno. */
typedef struct LuksIO {
    int (*read)(void *opaque, size_t off, void *buf, size_t len);
    int (*write)(void *opaque, size_t off, const void *buf, size_t len);
    int (*sync)(void *opaque);
    void *opaque;
} LuksIO;
/* Add or erase keyslots in the area (area_len bytes) h was parsed from;
 * h follows what was written.  force: what QEMU's --force allows
 * (overwriting an active slot, erasing an inactive or the last one). */
int luks_amend(LuksHeader *h, size_t area_len, const LuksAmendOpts *o, bool force,
               const LuksIO *io, Error **errp);

/* Secrets (io/crypto-secret.c). */
/* "secret,id=ID,data=TEXT|file=PATH[,format=raw|base64]" as qemu-img's
 * --object takes it; other object types are refused. */
int secret_object_add(const char *def, Error **errp);
/* A secret by id (secure memory, owned by the registry), or NULL with
 * "No secret with id 'ID'". */
const uint8_t *secret_lookup(const char *id, size_t *len, Error **errp);
/* A secret read from a file (whole file, raw), registered under id. */
int secret_add_file(const char *id, const char *path, Error **errp);
void secret_clear_all(void);

#endif
