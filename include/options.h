/*
 * options.h - QEMU-style option dictionaries for block graphs.
 *
 * A whole graph is described by flat dotted keys, all values strings:
 *     driver=qcow2,file.filename=disk.qcow2,backing.file.filename=base.raw
 *     driver=quorum,vote-threshold=2,children.0.file.filename=a.img,...
 * or by "json:{...}" (nested objects flatten to the same dotted keys; numbers
 * and booleans become their string form).  ",," escapes a comma in a value.
 * Each node's open takes the keys meant for it and hands "file.*",
 * "backing.*", "children.N.*" down (optdict_extract_prefix); whatever is left
 * over after open is an error naming the option and the driver.
 */
#ifndef UBLKD_OPTIONS_H
#define UBLKD_OPTIONS_H

#include <stdint.h>
#include "compiler.h"
#include "error.h"

typedef struct OptDict OptDict;

OptDict *optdict_new(void);
void optdict_free(OptDict *d);
OptDict *optdict_clone(const OptDict *d);
/*
 * Parse "k=v,k2=v2".  If implied_key is non-NULL, a first element without
 * '=' is its value (e.g. "disk.img" -> filename=disk.img).  Errors name the
 * offending text.  Duplicate keys: the last one wins.
 */
OptDict *optdict_parse(const char *str, const char *implied_key, Error **errp);
/* Parse a JSON object (the text after "json:"); needs CONFIG_JSON. */
OptDict *optdict_parse_json(const char *json, Error **errp);
/* Merge src into d; keys already in d are kept unless overwrite. */
void optdict_merge(OptDict *d, const OptDict *src, bool overwrite);

void optdict_set(OptDict *d, const char *key, const char *value);
void optdict_set_int(OptDict *d, const char *key, int64_t value);
const char *optdict_get(const OptDict *d, const char *key);  /* NULL if absent */
bool optdict_has(const OptDict *d, const char *key);
/* True if any key equals prefix-without-dot or starts with prefix ("file."). */
bool optdict_has_prefix(const OptDict *d, const char *prefix);
void optdict_del(OptDict *d, const char *key);
size_t optdict_count(const OptDict *d);
const char *optdict_key_at(const OptDict *d, size_t i);
const char *optdict_value_at(const OptDict *d, size_t i);

/*
 * Typed getters: "take" forms remove the key (so leftovers can be detected).
 * Absent keys yield def and return 0; malformed values set errp naming the
 * key and value and return -EINVAL.  Sizes accept suffixes k/K, M, G, T, P, E
 * (binary) and plain bytes.
 */
int optdict_take_str(OptDict *d, const char *key, const char *def, char **out);
int optdict_take_bool(OptDict *d, const char *key, bool def, bool *out, Error **errp);
int optdict_take_int(OptDict *d, const char *key, int64_t def, int64_t *out, Error **errp);
int optdict_take_size(OptDict *d, const char *key, uint64_t def, uint64_t *out, Error **errp);
/* value must be one of choices (NULL-terminated); returns its index. */
int optdict_take_enum(OptDict *d, const char *key, const char *const *choices, int def,
                      Error **errp);

/* Move every "prefix..." key into a new dict with the prefix removed. */
OptDict *optdict_extract_prefix(OptDict *d, const char *prefix);
/* Fails with "<what> does not support the option '<key>'" if d is not empty. */
int optdict_check_empty(const OptDict *d, const char *what, Error **errp);
/* Canonical "k=v,..." form (commas in values doubled); caller frees. */
char *optdict_to_string(const OptDict *d);

/* Parse a size string ("1G", "512", "4k") into bytes; -EINVAL / -ERANGE. */
int parse_size(const char *str, uint64_t *out);

#endif
