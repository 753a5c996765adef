/*
 * list-remote.c - the state of a device's remote children (nbd nodes), read
 * back from the node counters the daemon publishes, for `ublkd list`.
 *
 * A driver's counters are integers (include/block-backend.h), so the nbd
 * driver gives its state as one flag per name (nbd-connected,
 * nbd-reconnecting, nbd-failed) plus nbd-reconnects, each under the node's
 * path in the graph ("children.0/file/nbd-connected").  This turns them into
 * one entry per node that a person can read.
 */
#include <stdio.h>
#include <string.h>
#include "ublk.h"

static const char *const nbd_flags[] = { "connected", "reconnecting", "failed" };

/* key = PATH "nbd-" NAME, PATH empty or ending in '/': the length of PATH,
 * or -1 if key is no nbd counter. */
static int nbd_counter(const char *key, const char **name)
{
    const char *slash = strrchr(key, '/');
    const char *base = slash ? slash + 1 : key;
    if (strncmp(base, "nbd-", 4)) {
        return -1;
    }
    *name = base + 4;
    return (int)(base - key);
}

bool ublk_stats_is_remote_counter(const char *key)
{
    const char *name;
    return nbd_counter(key, &name) >= 0;
}

int ublk_stats_remote_nodes(const BlockAcctStats *st, UblkRemoteNode *out, int max)
{
    int n = 0;
    for (int i = 0; i < st->n_node_counters; i++) {
        const char *key = st->node_counters[i].key, *name;
        int plen = nbd_counter(key, &name);
        if (plen < 0) {
            continue;
        }
        /* The node's name as options spell it: "children.0/file/" -> "children.0.file". */
        char node[sizeof(out->node)];
        snprintf(node, sizeof(node), "%.*s", plen ? plen - 1 : 0, key);
        for (char *p = node; *p; p++) {
            if (*p == '/') {
                *p = '.';
            }
        }
        int k = 0;
        while (k < n && strcmp(out[k].node, node)) {
            k++;
        }
        if (k == n) {
            if (n == max) {
                continue;
            }
            memset(&out[n], 0, sizeof(out[n]));
            snprintf(out[n].node, sizeof(out[n].node), "%s", node);
            out[n].driver = "nbd";
            out[n].state = "unknown";
            n++;
        }
        uint64_t v = st->node_counters[i].value;
        if (!strcmp(name, "reconnects")) {
            out[k].reconnects = v;
            continue;
        }
        for (unsigned f = 0; f < sizeof(nbd_flags) / sizeof(nbd_flags[0]); f++) {
            if (v && !strcmp(name, nbd_flags[f])) {
                out[k].state = nbd_flags[f];
            }
        }
    }
    return n;
}
