/*
 * fuzz-luks.c - libFuzzer harness for LUKS1 headers (io/crypto-luks.c): the
 * input is the start of a LUKS area (header, then key material), padded
 * with zeros to an area of AREA bytes; the harness parses it and, if the
 * header passes, tries to unlock it with a fixed passphrase (iteration
 * counts clamped: PBKDF2 time is not what is fuzzed).  Any crash, sanitizer
 * report or hang is a bug; errors are fine.  Built and run by
 * tests/fuzz/run.sh.
 */
#include <stdlib.h>
#include <string.h>
#include "crypto.h"

#define AREA (600 * 1024)       /* room for aes-128 key slots (64000 bytes each) */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t area[AREA];
    static size_t dirty;
    LuksHeader h;
    Error *err = NULL;

    memset(area, 0, dirty);
    dirty = size < AREA ? size : AREA;
    memcpy(area, data, dirty);
    if (luks_header_parse(area, AREA, &h, &err) < 0) {
        error_free(err);
        return 0;
    }
    /* a seed made with encrypt.iter-time=1 stays under the clamp and unlocks */
    if (h.mk_digest_iterations > 8192) {
        h.mk_digest_iterations = 8192;
    }
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        if (h.slots[i].iterations > 8192) {
            h.slots[i].iterations = 8192;
        }
    }
    uint8_t mk[64];
    if (luks_unlock(&h, area, AREA, (const uint8_t *)"pw", 2, mk, &err) == 0) {
        CryptoCipher *c = luks_data_cipher(&h, mk, &err);
        if (c) {
            uint8_t sector[1024] = { 0 };
            crypto_cipher_run(c, false, 7, sector, sizeof(sector));
            crypto_cipher_free(c);
        }
    }
    error_free(err);
    return 0;
}
