/*
 * test-crypto.c - io/crypto-*.c: sector ciphers against known answers
 * (computed with Python's cryptography package, IVs made there
 * independently: plain, plain64, essiv over xts, cbc, ctr, ecb, and legacy
 * qcow AES), in-place runs over split vectors, refusals; LUKS headers
 * (qemu-img 7.2's parsed, ours created and unlocked, wrong passphrases,
 * corrupt fields); secrets.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "crypto.h"

static void unhex(const char *h, uint8_t *out)
{
    for (size_t i = 0; h[2 * i]; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static void tohex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", b[i]);
    }
}

typedef struct Kat {
    const char *mode, *ivgen, *ivhash, *key;
    size_t keylen;
    uint64_t sector;
    const char *first16, *sha256;
} Kat;

/* plaintext: byte i = i * 7 + 3, two sectors */
static const Kat kats[] = {
    { "xts", "plain64", NULL, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f", 64, UINT64_C(0x123456789), "2b3cdcb48ff3b542e393b6ef4557e336", "2853da14d47b240bebd766cfc228040f2398403d6cbdc0eb3b03c3df008f0681" },
    { "cbc", "essiv", "sha256", "000102030405060708090a0b0c0d0e0f", 16, UINT64_C(0x5), "c76fa884de951860ab9a3754d5c57910", "a1a5d5a6c008c2d68b988b76fb2a27a0cfe42b585ea97ebc278e782df761d8eb" },
    /* plain: the sector number cut to 32 bits */
    { "cbc", "plain", NULL, "6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283", 32, UINT64_C(0x100000002), "5e746336dcc9077509c5cb2c59a4b268", "1a3fc0f4b9e504a847ce7b024ca102e0301f5621982ebfd26d530eace4ff9c43" },
    { "ctr", "plain64", NULL, "32333435363738393a3b3c3d3e3f40414243444546474849", 24, UINT64_C(0x4d), "69ebc08ff6c82cfeef18ab8057ab615f", "f6fdc511603904d40324fd3a28f2ee7dc02b0826aa1ed679d1a245b027d65d1d" },
    /* ecb ignores the IV generator QEMU writes with it */
    { "ecb", "plain64", NULL, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", 32, UINT64_C(0x9), "ae5bf9ddaad53f23deb4efae9db72462", "1d244e0c9e3f8856cf1ef2b762bebe75aadd98032e2a1ccee03bc0c47e95678b" },
    /* legacy qcow AES: "letmein" zero padded, aes-128-cbc-plain64 */
    { "cbc", "plain64", NULL, "6c65746d65696e000000000000000000", 16, UINT64_C(0x3e8), "ace2bd652fe4c16ec19802bb2f12f5c0", "2632362a364f200eb607f0aea927abc1f72d1f71dffec5765a2702b94f93eced" },
    { "xts", "essiv", "sha256", "c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7", 32, UINT64_C(0x3), "705a1174dd6e1d50196b88ab4425861d", "b3094bae40c9dd184492938b2a0e45313db290be87bc6256b2166e4f24637659" },
};

static void plaintext(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)(i * 7 + 3);
    }
}

static void test_known_answers(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof(kats) / sizeof(kats[0]); k++) {
        const Kat *t = &kats[k];
        uint8_t key[64], buf[1024], pt[1024], digest[32];
        char hex[65];
        unhex(t->key, key);
        Error *err = NULL;
        CryptoCipher *c = crypto_cipher_new("aes", t->mode, t->ivgen, t->ivhash, key, t->keylen,
                                            &err);
        assert_non_null(c);
        plaintext(pt, sizeof(pt));
        memcpy(buf, pt, sizeof(buf));
        assert_int_equal(crypto_cipher_run(c, true, t->sector, buf, sizeof(buf)), 0);
        tohex(buf, 16, hex);
        assert_string_equal(hex, t->first16);
        assert_int_equal(crypto_hash("sha256", buf, sizeof(buf), digest), 0);
        tohex(digest, 32, hex);
        assert_string_equal(hex, t->sha256);
        assert_int_equal(crypto_cipher_run(c, false, t->sector, buf, sizeof(buf)), 0);
        assert_memory_equal(buf, pt, sizeof(pt));
        crypto_cipher_free(c);
    }
}

/* A vector whose elements cut sectors anywhere gives the bytes of one buffer. */
static void test_iov_split(void **state)
{
    (void)state;
    uint8_t key[64], whole[2048], split[2048];
    for (int i = 0; i < 64; i++) {
        key[i] = (uint8_t)(i * 3 + 1);
    }
    CryptoCipher *c = crypto_cipher_new("aes", "xts", "plain64", NULL, key, 64, NULL);
    assert_non_null(c);
    plaintext(whole, sizeof(whole));
    memcpy(split, whole, sizeof(split));
    assert_int_equal(crypto_cipher_run(c, true, 40, whole + 512, 1536), 0);
    struct iovec v[5] = { { split, 100 }, { split + 100, 700 }, { split + 800, 224 },
                          { split + 1024, 1000 }, { split + 2024, 24 } };
    IOVector q;
    iov_init_external(&q, v, 5);
    /* from byte 512 of the vector: the first sector lies in two elements */
    assert_int_equal(crypto_cipher_run_iov(c, true, 40, &q, 512, 1536), 0);
    assert_memory_equal(split, whole, sizeof(whole));
    assert_int_equal(crypto_cipher_run_iov(c, false, 40, &q, 512, 1536), 0);
    plaintext(whole, sizeof(whole));
    assert_memory_equal(split, whole, sizeof(whole));
    /* not whole sectors */
    assert_int_equal(crypto_cipher_run_iov(c, true, 0, &q, 0, 100), -EINVAL);
    crypto_cipher_free(c);
}

static void test_refused(void **state)
{
    (void)state;
    uint8_t key[64] = { 1 };
    Error *err = NULL;
    assert_null(crypto_cipher_new("serpent", "xts", "plain64", NULL, key, 64, &err));
    assert_non_null(strstr(error_get_pretty(err), "Cipher 'serpent' is not supported"));
    error_free(err);
    err = NULL;
    assert_null(crypto_cipher_new("cast5", "cbc", "plain64", NULL, key, 16, &err));
    assert_non_null(strstr(error_get_pretty(err), "legacy provider"));
    error_free(err);
    err = NULL;
    assert_null(crypto_cipher_new("aes", "xts", "plain64", NULL, key, 48, &err));
    assert_non_null(strstr(error_get_pretty(err), "aes-192-xts"));
    error_free(err);
    err = NULL;
    assert_null(crypto_cipher_new("aes", "cbc", "benbi", NULL, key, 16, &err));
    assert_non_null(strstr(error_get_pretty(err), "IV generator 'benbi'"));
    error_free(err);
    err = NULL;
    assert_null(crypto_cipher_new("aes", "cbc", "essiv", "sha1", key, 16, &err));
    assert_non_null(strstr(error_get_pretty(err), "ESSIV hash 'sha1'"));
    error_free(err);
}

/* The first 592 bytes of a LUKS area qemu-img 7.2 wrote (aes-256-xts-plain64,
 * sha256, iter-time 10). */
static const char *const qemu_header_hex[] = {
    "4c554b53babe000161657300000000000000000000000000000000000000000000000000000000007874732d706c6169"
    "6e3634000000000000000000000000000000000000000000736861323536000000000000000000000000000000000000"
    "000000000000000000000fc800000040a911e2a1175ba5479c91c278d87facbd0e2fed5bf80038ab99ecad2b8a05ff7f"
    "250d2ed3d7390000c27be2acd4cb7074b9c1a3ba0000231266363265613938372d663830392d346563362d616632612d"
    "3461373830343066656330350000000000ac71f300008a3a4bdab63eabcce76c2b5a6be6bd4def6ec799eed435defbb4"
    "c7aea18532a7f7210000000800000fa00000dead00000000000000000000000000000000000000000000000000000000"
    "00000000000000000000020000000fa00000dead00000000000000000000000000000000000000000000000000000000"
    "0000000000000000000003f800000fa00000dead00000000000000000000000000000000000000000000000000000000"
    "0000000000000000000005f000000fa00000dead00000000000000000000000000000000000000000000000000000000"
    "0000000000000000000007e800000fa00000dead00000000000000000000000000000000000000000000000000000000"
    "0000000000000000000009e000000fa00000dead00000000000000000000000000000000000000000000000000000000"
    "000000000000000000000bd800000fa00000dead00000000000000000000000000000000000000000000000000000000"
    "000000000000000000000dd000000fa0"
};

static void test_parse_qemu_header(void **state)
{
    (void)state;
    char hex[2 * LUKS_HEADER_BYTES + 1] = "";
    uint8_t hdr[LUKS_HEADER_BYTES];
    for (size_t i = 0; i < sizeof(qemu_header_hex) / sizeof(qemu_header_hex[0]); i++) {
        strcat(hex, qemu_header_hex[i]);
    }
    unhex(hex, hdr);
    LuksHeader h;
    Error *err = NULL;
    if (luks_header_parse(hdr, 2068480, &h, &err) < 0) {
        fail_msg("%s", error_get_pretty(err));
    }
    assert_string_equal(h.cipher_name, "aes");
    assert_string_equal(h.cipher_mode, "xts-plain64");
    assert_string_equal(h.mode, "xts");
    assert_string_equal(h.ivgen, "plain64");
    assert_string_equal(h.hash_spec, "sha256");
    assert_int_equal(h.key_bytes, 64);
    assert_int_equal(h.cipher_bits, 256);
    assert_int_equal(h.payload_offset, 4040);
    assert_int_equal(h.mk_digest_iterations, 8978);
    assert_string_equal(h.uuid, "f62ea987-f809-4ec6-af2a-4a78040fec05");
    assert_int_equal(h.slots[0].active, LUKS_SLOT_ACTIVE);
    assert_int_equal(h.slots[0].iterations, 35386);
    assert_int_equal(h.slots[0].key_offset, 8);
    for (int i = 1; i < LUKS_NUM_SLOTS; i++) {
        assert_int_equal(h.slots[i].active, LUKS_SLOT_DISABLED);
        assert_int_equal(h.slots[i].key_offset, 8 + i * 504);
    }
    /* the key slots must lie inside the area */
    assert_int_equal(luks_header_parse(hdr, 200000, &h, &err), -EINVAL);
    assert_non_null(strstr(error_get_pretty(err), "Keyslot 0 lies past the end"));
    error_free(err);
}

static void test_create_unlock(void **state)
{
    (void)state;
    static const struct { const char *alg, *mode, *ivgen, *hash; size_t key; } cfg[] = {
        { "aes-256", "xts", "plain64", "sha256", 64 },
        { "aes-128", "cbc", "essiv", "sha1", 16 },
        { "aes-256", "ctr", "plain", "sha512", 32 },
    };
    for (size_t k = 0; k < sizeof(cfg) / sizeof(cfg[0]); k++) {
        LuksCreateOpts o = { .cipher_alg = cfg[k].alg, .cipher_mode = cfg[k].mode,
                             .ivgen_alg = cfg[k].ivgen, .hash_alg = cfg[k].hash, .iter_time = 1 };
        uint8_t *area = NULL;
        size_t len = 0;
        Error *err = NULL;
        assert_int_equal(luks_create(&o, (const uint8_t *)"pw", 2, &area, &len, &err), 0);
        LuksHeader h;
        assert_int_equal(luks_header_parse(area, len, &h, &err), 0);
        assert_int_equal(h.key_bytes, cfg[k].key);
        assert_string_equal(h.hash_spec, cfg[k].hash);
        assert_true(h.slots[0].iterations >= 1000);
        assert_int_equal(h.slots[1].active, LUKS_SLOT_DISABLED);
        uint8_t mk[64], mk2[64];
        assert_int_equal(luks_unlock(&h, area, len, (const uint8_t *)"pw", 2, mk, &err), 0);
        assert_int_equal(luks_unlock(&h, area, len, (const uint8_t *)"pw", 2, mk2, &err), 0);
        assert_memory_equal(mk, mk2, h.key_bytes);
        assert_int_equal(luks_unlock(&h, area, len, (const uint8_t *)"pW", 2, mk2, &err), -EPERM);
        assert_string_equal(error_get_pretty(err), "Invalid password, cannot unlock any keyslot");
        error_free(err);
        err = NULL;
        /* a flipped bit of the key material: the digest check catches it */
        area[h.slots[0].key_offset * 512 + 100] ^= 1;
        assert_int_equal(luks_unlock(&h, area, len, (const uint8_t *)"pw", 2, mk2, &err), -EPERM);
        error_free(err);
        free(area);
    }
}

static void test_corrupt_headers(void **state)
{
    (void)state;
    LuksCreateOpts o = { .iter_time = 1 };
    uint8_t *area = NULL;
    size_t len = 0;
    assert_int_equal(luks_create(&o, (const uint8_t *)"x", 1, &area, &len, NULL), 0);
    static const struct { size_t off; uint8_t val; const char *msg; } bad[] = {
        { 0, 'X', "Volume is not in LUKS format" },
        { 7, 2, "LUKS version 2 is not supported" },
        { 72, 'x', "hash 'xha256' is not supported" },
        { 108, 1, "key of 16777280 bytes is not supported" },
        { 164, 0xff, "master key digest iterations" },
        { 208, 0x12, "Keyslot 0 state (active/disable) is corrupted" },
        { 208 + 44, 0x11, "Keyslot 0 is corrupted (stripes" },
        { 208 + 48 + 40 + 2, 1, "Keyslots 0 and 1 are overlapping" },
        { 208 + 40 + 3, 0, "Keyslot 0 is overlapping with the LUKS header" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t hdr[LUKS_HEADER_BYTES];
        memcpy(hdr, area, sizeof(hdr));
        hdr[bad[i].off] = bad[i].val;
        LuksHeader h;
        Error *err = NULL;
        assert_true(luks_header_parse(hdr, len, &h, &err) < 0);
        if (!strstr(error_get_pretty(err), bad[i].msg)) {
            fail_msg("byte %zu: '%s' lacks '%s'", bad[i].off, error_get_pretty(err), bad[i].msg);
        }
        error_free(err);
    }
    /* a short area */
    LuksHeader h;
    Error *err = NULL;
    assert_int_equal(luks_header_parse(area, 100, &h, &err), -EINVAL);
    error_free(err);
    free(area);
}

static void test_secrets(void **state)
{
    (void)state;
    Error *err = NULL;
    size_t len;
    assert_int_equal(secret_object_add("secret,id=a,data=hello", &err), 0);
    const uint8_t *v = secret_lookup("a", &len, &err);
    assert_non_null(v);
    assert_int_equal(len, 5);
    assert_memory_equal(v, "hello", 5);
    assert_int_equal(secret_object_add("secret,id=b,data=aGk=,format=base64", &err), 0);
    v = secret_lookup("b", &len, &err);
    assert_int_equal(len, 2);
    assert_memory_equal(v, "hi", 2);
    char path[] = "/tmp/test-crypto-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "file\n", 5), 5);
    close(fd);
    char def[128];
    snprintf(def, sizeof(def), "secret,id=c,file=%s", path);
    assert_int_equal(secret_object_add(def, &err), 0);
    unlink(path);
    v = secret_lookup("c", &len, &err);
    assert_int_equal(len, 5);            /* the whole file, newline included, as QEMU */
    assert_memory_equal(v, "file\n", 5);
    static const struct { const char *def, *msg; } bad[] = {
        { "secret,id=a,data=x", "duplicate" },
        { "secret,data=x", "Parameter 'id' is missing" },
        { "secret,id=d", "Either 'file' or 'data' must be provided" },
        { "secret,id=d,data=x,file=y", "mutually exclusive" },
        { "secret,id=d,data=***,format=base64", "invalid base64" },
        { "secret,id=d,data=x,format=hex", "Parameter 'format'" },
        { "secret,id=d,file=/nonexistent/x", "Unable to read /nonexistent/x" },
        { "tls-creds-x509,id=d", "--object type 'tls-creds-x509' is not supported" },
        { "secret,id=d,data=x,keyid=k,iv=i", "keyid/iv" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        assert_true(secret_object_add(bad[i].def, &err) < 0);
        if (!strstr(error_get_pretty(err), bad[i].msg)) {
            fail_msg("'%s': '%s' lacks '%s'", bad[i].def, error_get_pretty(err), bad[i].msg);
        }
        error_free(err);
    }
    err = NULL;
    assert_null(secret_lookup("zz", &len, &err));
    assert_string_equal(error_get_pretty(err), "No secret with id 'zz'");
    error_free(err);
    secret_clear_all();
    err = NULL;
    assert_null(secret_lookup("a", &len, &err));
    error_free(err);
}

/* ---- keyslots: luks_amend over an in-memory area ---- */

typedef struct MemArea {
    uint8_t *buf;
    size_t len;
    char log[256];                  /* H: header write, K: key material write, S: sync */
    int fail_write;                 /* fail the n-th write (1-based), 0: none */
    int writes;
} MemArea;

static int mem_read(void *opaque, size_t off, void *buf, size_t len)
{
    MemArea *m = opaque;
    memcpy(buf, m->buf + off, len);
    return 0;
}

static int mem_write(void *opaque, size_t off, const void *buf, size_t len)
{
    MemArea *m = opaque;
    if (++m->writes == m->fail_write) {
        return -EIO;
    }
    if (strlen(m->log) < sizeof(m->log) - 1) {
        strcat(m->log, off == 0 ? "H" : "K");
    }
    memcpy(m->buf + off, buf, len);
    return 0;
}

static int mem_sync(void *opaque)
{
    MemArea *m = opaque;
    if (strlen(m->log) < sizeof(m->log) - 1) {
        strcat(m->log, "S");
    }
    return 0;
}

static int amend(MemArea *m, LuksHeader *h, LuksAmendOpts o, bool force, const char *msg)
{
    Error *err = NULL;
    LuksIO io = { mem_read, mem_write, mem_sync, m };
    m->log[0] = 0;
    m->writes = 0;
    int ret = luks_amend(h, m->len, &o, force, &io, &err);
    if (msg) {
        assert_true(ret < 0);
        assert_non_null(err);
        if (!strstr(error_get_pretty(err), msg)) {
            fail_msg("'%s' lacks '%s'", error_get_pretty(err), msg);
        }
    } else if (ret < 0) {
        fail_msg("luks_amend: %s", error_get_pretty(err));
    }
    error_free(err);
    /* what was written parses to what h says */
    LuksHeader h2;
    assert_int_equal(luks_header_parse(m->buf, m->len, &h2, NULL), 0);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        assert_int_equal(h2.slots[i].active, h->slots[i].active);
    }
    return ret;
}

static bool opens(MemArea *m, const LuksHeader *h, const char *pw, const uint8_t *want_mk)
{
    uint8_t mk[64];
    Error *err = NULL;
    int ret = luks_unlock(h, m->buf, m->len, (const uint8_t *)pw, strlen(pw), mk, &err);
    error_free(err);
    if (ret == 0) {
        assert_memory_equal(mk, want_mk, h->key_bytes);
    }
    return ret == 0;
}

static void test_amend_keyslots(void **state)
{
    (void)state;
    LuksCreateOpts co = { .cipher_alg = "aes-128", .cipher_mode = "cbc", .ivgen_alg = "essiv",
                          .hash_alg = "sha256", .iter_time = 1 };
    MemArea m = { 0 };
    LuksHeader h;
    uint8_t mk[64];
    assert_int_equal(luks_create(&co, (const uint8_t *)"zero", 4, &m.buf, &m.len, NULL), 0);
    assert_int_equal(luks_header_parse(m.buf, m.len, &h, NULL), 0);
    assert_int_equal(luks_unlock(&h, m.buf, m.len, (const uint8_t *)"zero", 4, mk, NULL), 0);
    assert_int_equal(secret_object_add("secret,id=k0,data=zero", NULL), 0);
    assert_int_equal(secret_object_add("secret,id=k1,data=one", NULL), 0);
    assert_int_equal(secret_object_add("secret,id=k2,data=two", NULL), 0);
    LuksAmendOpts add = { .activate = true, .key_secret = "k0", .new_secret = "k1",
                          .has_iter_time = true, .iter_time = 0 };

    /* an add: key material, synced, before the header that marks it active */
    amend(&m, &h, add, false, NULL);
    assert_string_equal(m.log, "KSHS");
    assert_int_equal(h.slots[1].active, LUKS_SLOT_ACTIVE);
    assert_int_equal(h.slots[1].iterations, 1000);
    assert_true(opens(&m, &h, "one", mk));
    assert_true(opens(&m, &h, "zero", mk));

    /* QEMU's refusals, nothing written */
    LuksAmendOpts o = add;
    o.keyslot = 1, o.has_keyslot = true;
    amend(&m, &h, o, false, "Refusing to overwrite active keyslot 1 - please erase it first");
    assert_string_equal(m.log, "");
    o.keyslot = 8;
    amend(&m, &h, o, false, "Invalid keyslot 8 specified, must be between 0 and 7");
    o = add, o.new_secret = NULL;
    amend(&m, &h, o, false, "'new-secret' is required to activate a keyslot");
    o = add, o.old_secret = "k0";
    amend(&m, &h, o, false, "'old-secret' must not be given when activating keyslots");
    o = add, o.new_secret = "nosuch";
    amend(&m, &h, o, false, "No secret with id 'nosuch'");
    LuksAmendOpts del = { .activate = false, .key_secret = "k0" };
    amend(&m, &h, del, false, "either explicit keyslot index or the password");
    o = del, o.old_secret = "k2";
    amend(&m, &h, o, false, "No keyslots match given (old) password for erase operation");
    o = del, o.keyslot = 5, o.has_keyslot = true;
    amend(&m, &h, o, false, "Given keyslot 5 is already erased (inactive) ");
    o.old_secret = "k1", o.keyslot = 0;
    amend(&m, &h, o, false, "Given keyslot 0 doesn't contain the given old password");
    assert_string_equal(m.log, "");

    /* an erase: the header, synced, before the key material is overwritten */
    size_t koff = (size_t)h.slots[1].key_offset * 512, klen = luks_slot_material_len(&h);
    uint8_t *before = malloc(klen);
    memcpy(before, m.buf + koff, klen);
    o = del, o.old_secret = "k1";
    amend(&m, &h, o, false, NULL);
    assert_int_equal(strncmp(m.log, "HSK", 3), 0);
    assert_int_equal(strlen(m.log), 2 + 40 + 1);         /* QEMU's 40 passes, then a sync */
    assert_memory_not_equal(before, m.buf + koff, klen);
    free(before);
    assert_int_equal(h.slots[1].active, LUKS_SLOT_DISABLED);
    assert_int_equal(h.slots[1].iterations, 0);
    assert_false(opens(&m, &h, "one", mk));

    /* the last active slot: only with force */
    o = del, o.keyslot = 0, o.has_keyslot = true;
    amend(&m, &h, o, false, "Attempt to erase the only active keyslot 0");
    o = del, o.old_secret = "k0";
    amend(&m, &h, o, false, "All the active keyslots match the (old) password");

    /* a failed key material write leaves the slot inactive in memory and on disk */
    m.fail_write = 1;
    add.keyslot = 3, add.has_keyslot = true;
    amend(&m, &h, add, false, "Failed to write to keyslot 3");
    m.fail_write = 0;
    assert_int_equal(h.slots[3].active, LUKS_SLOT_DISABLED);
    amend(&m, &h, add, false, NULL);
    assert_true(opens(&m, &h, "one", mk));
    o = del, o.keyslot = 0, o.has_keyslot = true;
    amend(&m, &h, o, false, NULL);
    assert_false(opens(&m, &h, "zero", mk));
    o.keyslot = 3;
    amend(&m, &h, o, true, NULL);                       /* the last one, forced */
    assert_false(opens(&m, &h, "one", mk));
    secret_clear_all();
    free(m.buf);
}

/* ---- key material is wiped before its memory is given back ---- */

static size_t freed_bytes, freed_dirty;

static void check_wiped(const void *p, size_t len)
{
    const uint8_t *b = p;
    freed_bytes += len;
    for (size_t i = 0; i < len; i++) {
        freed_dirty += b[i] != 0;
    }
}

static void test_secure_free_wipes(void **state)
{
    (void)state;
    LuksCreateOpts co = { .cipher_alg = "aes-256", .cipher_mode = "xts", .iter_time = 1 };
    uint8_t *area = NULL;
    size_t len = 0;
    LuksHeader h;
    freed_bytes = freed_dirty = 0;
    crypto_secure_free_hook = check_wiped;
    /* secrets, the master key and the unlock scratch (PBKDF2 keys, the merged split key) */
    assert_int_equal(secret_object_add("secret,id=w,data=secret-password", NULL), 0);
    assert_int_equal(luks_create(&co, (const uint8_t *)"pw", 2, &area, &len, NULL), 0);
    assert_int_equal(luks_header_parse(area, len, &h, NULL), 0);
    uint8_t *mk = crypto_secure_alloc(h.key_bytes);
    assert_int_equal(luks_unlock(&h, area, len, (const uint8_t *)"pw", 2, mk, NULL), 0);
    CryptoCipher *c = luks_data_cipher(&h, mk, NULL);
    assert_non_null(c);
    crypto_cipher_free(c);                               /* its copy of the key */
    crypto_secure_free(mk, h.key_bytes);
    secret_clear_all();
    crypto_secure_free_hook = NULL;
    free(area);
    assert_true(freed_bytes > 256000);                   /* the split key went through here */
    assert_int_equal(freed_dirty, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answers),
        cmocka_unit_test(test_iov_split),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_parse_qemu_header),
        cmocka_unit_test(test_create_unlock),
        cmocka_unit_test(test_corrupt_headers),
        cmocka_unit_test(test_secrets),
        cmocka_unit_test(test_amend_keyslots),
        cmocka_unit_test(test_secure_free_wipes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
