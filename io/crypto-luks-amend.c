/*
 * crypto-luks-amend.c - LUKS keyslot management as qemu-img 7.2's amend
 * does it (QEMU's qcrypto_block_luks_amend_options; include/crypto.h):
 * add a passphrase to a free or a given keyslot, erase the keyslots an old
 * passphrase opens or a given one, refuse to erase the last active one
 * or overwrite an active one unless forced, in QEMU's order of checks and
 * with its messages.
 *
 * Crash safety: a new slot's key material is written and synced before
 * the header marks the slot active; an erased slot is marked inactive and
 * synced before its key material is overwritten (with random bytes, as
 * many times as QEMU does).  A crash leaves either the old or the new
 * set of passphrases working, never a header pointing at half-written
 * material.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "compiler.h"
#include "crypto.h"

/* QEMU's QCRYPTO_BLOCK_LUKS_ERASE_ITERATIONS */
#define LUKS_ERASE_PASSES 40
#define LUKS_DEFAULT_ITER_TIME_MS 2000

static int count_active(const LuksHeader *h)
{
    int n = 0;
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        n += h->slots[i].active == LUKS_SLOT_ACTIVE;
    }
    return n;
}

static int store_header(const LuksHeader *h, const LuksIO *io, Error **errp)
{
    uint8_t buf[LUKS_HEADER_BYTES];
    luks_header_store(h, buf);
    int ret = io->write(io->opaque, 0, buf, sizeof(buf));
    if (ret == 0) {
        ret = io->sync(io->opaque);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Cannot write the LUKS header");
    }
    return ret;
}

static int write_material(const LuksHeader *h, int slot, const uint8_t *buf, const LuksIO *io,
                          Error **errp)
{
    int ret = io->write(io->opaque, (size_t)h->slots[slot].key_offset * CRYPTO_SECTOR_SIZE, buf,
                        luks_slot_material_len(h));
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Cannot write the key material of keyslot %d", slot);
    }
    return ret;
}

static int add_keyslot(LuksHeader *h, const uint8_t *area, const LuksAmendOpts *o, bool force,
                       const LuksIO *io, Error **errp)
{
    int slot = -1, ret;
    uint8_t *mk = NULL, *material = NULL;
    size_t mlen = luks_slot_material_len(h);

    if (!o->new_secret) {
        error_setg(errp, "'new-secret' is required to activate a keyslot");
        return -EINVAL;
    }
    if (o->old_secret) {
        error_setg(errp, "'old-secret' must not be given when activating keyslots");
        return -EINVAL;
    }
    if (o->has_keyslot) {
        slot = o->keyslot;
        if (slot < 0 || slot >= LUKS_NUM_SLOTS) {
            error_setg(errp, "Invalid keyslot %u specified, must be between 0 and %u",
                       (unsigned)slot, LUKS_NUM_SLOTS - 1);
            return -EINVAL;
        }
    } else {
        for (int i = 0; i < LUKS_NUM_SLOTS && slot < 0; i++) {
            if (h->slots[i].active != LUKS_SLOT_ACTIVE) {
                slot = i;
            }
        }
        if (slot < 0) {
            error_setg(errp, "Can't add a keyslot - all keyslots are in use");
            return -ENOSPC;
        }
    }
    if (!force && h->slots[slot].active == LUKS_SLOT_ACTIVE) {
        error_setg(errp, "Refusing to overwrite active keyslot %i - please erase it first", slot);
        return -EEXIST;
    }
    size_t keylen, newlen;
    const uint8_t *key = secret_lookup(o->key_secret ? o->key_secret : "", &keylen, errp);
    if (!key) {
        return -ENOKEY;
    }
    mk = crypto_secure_alloc(h->key_bytes);
    material = crypto_secure_alloc(mlen);
    if (!mk || !material) {
        error_setg(errp, "out of memory for the LUKS keyslot");
        ret = -ENOMEM;
        goto out;
    }
    ret = luks_unlock(h, area, 0, key, keylen, mk, errp);
    if (ret < 0) {
        goto out;
    }
    const uint8_t *pw = secret_lookup(o->new_secret, &newlen, errp);
    if (!pw) {
        ret = -ENOKEY;
        goto out;
    }
    LuksSlot s = h->slots[slot];
    ret = luks_slot_make(h, &s, mk, pw, newlen,
                         o->has_iter_time ? o->iter_time : LUKS_DEFAULT_ITER_TIME_MS, material,
                         errp);
    if (ret == 0) {
        ret = write_material(h, slot, material, io, errp);
    }
    if (ret == 0 && (ret = io->sync(io->opaque)) < 0) {
        error_setg_errno(errp, -ret, "Cannot sync the key material of keyslot %d", slot);
    }
    if (ret == 0) {
        /* only now may the header point at it */
        LuksSlot old = h->slots[slot];
        s.active = LUKS_SLOT_ACTIVE;
        h->slots[slot] = s;
        ret = store_header(h, io, errp);
        if (ret < 0) {
            h->slots[slot] = old;
        }
    }
    if (ret < 0) {
        error_prepend(errp, "Failed to write to keyslot %i: ", slot);
    }
out:
    crypto_secure_free(mk, h->key_bytes);
    crypto_secure_free(material, mlen);
    return ret;
}

/* QEMU's qcrypto_block_luks_erase_key: the header first, then the key
 * material overwritten even if the header could not be written. */
static int erase_keyslot(LuksHeader *h, int slot, const LuksIO *io, Error **errp)
{
    size_t mlen = luks_slot_material_len(h);
    uint8_t *garbage = malloc(mlen);
    LuksSlot *s = &h->slots[slot];
    Error *err = NULL;

    if (!garbage) {
        error_setg(errp, "out of memory erasing keyslot %d", slot);
        return -ENOMEM;
    }
    memset(s->salt, 0, sizeof(s->salt));
    s->iterations = 0;
    s->active = LUKS_SLOT_DISABLED;
    int ret = store_header(h, io, &err);
    for (int i = 0; i < LUKS_ERASE_PASSES; i++) {
        if (crypto_random(garbage, mlen) < 0) {
            memset(garbage, 0, mlen);
            if (i > 0) {
                break;
            }
        }
        int r = write_material(h, slot, garbage, io, err ? NULL : &err);
        if (r < 0) {
            ret = r;
            break;
        }
    }
    if (ret == 0 && (ret = io->sync(io->opaque)) < 0) {
        error_setg_errno(&err, -ret, "Cannot sync the erased keyslot %d", slot);
    }
    free(garbage);
    if (err) {
        error_propagate(errp, err);
        error_prepend(errp, "Failed to erase keyslot %i: ", slot);
        return ret < 0 ? ret : -EIO;
    }
    return 0;
}

static int erase_keyslots(LuksHeader *h, const uint8_t *area, const LuksAmendOpts *o,
                          bool force, const LuksIO *io, Error **errp)
{
    const uint8_t *pw = NULL;
    size_t pwlen = 0;
    uint8_t *tmpkey = NULL;
    int ret = 0;

    if (o->new_secret) {
        error_setg(errp, "'new-secret' must not be given when erasing keyslots");
        return -EINVAL;
    }
    if (o->has_iter_time) {
        error_setg(errp, "'iter-time' must not be given when erasing keyslots");
        return -EINVAL;
    }
    if (o->old_secret) {
        pw = secret_lookup(o->old_secret, &pwlen, errp);
        if (!pw) {
            return -ENOKEY;
        }
        tmpkey = crypto_secure_alloc(h->key_bytes);
        if (!tmpkey) {
            error_setg(errp, "out of memory for the LUKS key");
            return -ENOMEM;
        }
    }
    if (o->has_keyslot) {
        int slot = o->keyslot;
        if (slot < 0 || slot >= LUKS_NUM_SLOTS) {
            error_setg(errp, "Invalid keyslot %i specified, must be between 0 and %i", slot,
                       LUKS_NUM_SLOTS - 1);
            ret = -EINVAL;
        } else if (pw && (ret = luks_slot_open(h, slot, area, pw, pwlen, tmpkey, errp)) <= 0) {
            if (ret == 0) {
                error_setg(errp, "Given keyslot %i doesn't contain the given old password for"
                           " erase operation", slot);
                ret = -EPERM;
            }
        } else if (!force && h->slots[slot].active != LUKS_SLOT_ACTIVE) {
            error_setg(errp, "Given keyslot %i is already erased (inactive) ", slot);
            ret = -EINVAL;
        } else if (!force && count_active(h) == 1) {
            error_setg(errp, "Attempt to erase the only active keyslot %i which will erase all"
                       " the data in the image irreversibly - refusing operation", slot);
            ret = -EPERM;
        } else {
            ret = erase_keyslot(h, slot, io, errp);
        }
    } else if (pw) {
        bool match[LUKS_NUM_SLOTS] = { false };
        int n = 0;
        for (int i = 0; i < LUKS_NUM_SLOTS && ret == 0; i++) {
            int r = luks_slot_open(h, i, area, pw, pwlen, tmpkey, errp);
            if (r < 0) {
                ret = r;
            }
            match[i] = r == 1;
            n += r == 1;
        }
        if (ret == 0 && n == 0) {
            error_setg(errp, "No keyslots match given (old) password for erase operation");
            ret = -EPERM;
        } else if (ret == 0 && !force && n == count_active(h)) {
            error_setg(errp, "All the active keyslots match the (old) password that was given"
                       " and erasing them will erase all the data in the image irreversibly -"
                       " refusing operation");
            ret = -EPERM;
        }
        for (int i = 0; i < LUKS_NUM_SLOTS && ret == 0; i++) {
            if (match[i]) {
                ret = erase_keyslot(h, i, io, errp);
            }
        }
    } else {
        error_setg(errp, "To erase keyslot(s), either explicit keyslot index or the password"
                   " currently contained in them must be given");
        ret = -EINVAL;
    }
    crypto_secure_free(tmpkey, h->key_bytes);
    return ret;
}

int luks_amend(LuksHeader *h, size_t area_len, const LuksAmendOpts *o, bool force,
               const LuksIO *io, Error **errp)
{
    uint8_t *area = malloc(area_len);
    if (!area) {
        error_setg(errp, "out of memory for the LUKS header");
        return -ENOMEM;
    }
    /* the key material as it is now: the slots are opened from it */
    int ret = io->read(io->opaque, 0, area, area_len);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Cannot read the LUKS header");
    } else if (o->activate) {
        ret = add_keyslot(h, area, o, force, io, errp);
    } else {
        ret = erase_keyslots(h, area, o, force, io, errp);
    }
    free(area);
    return ret;
}
