/*
 * tmpdir.c - a scratch directory for suites that work on real files
 * (test-file.c, test-raw.c, test-block-open.c): made by the suite's group
 * setup, removed with everything in it by its group teardown.
 */
#include <stdio.h>
#include <stdlib.h>
#include "test-util.h"

static char tmpdir[256];

const char *test_tmpdir_create(const char *suite)
{
    snprintf(tmpdir, sizeof(tmpdir), "/var/tmp/ublkd-test-%s-XXXXXX", suite);
    assert_non_null(mkdtemp(tmpdir));
    return tmpdir;
}

const char *test_tmpdir(void)
{
    return tmpdir;
}

char *test_path(const char *name)
{
    static char buf[4][512];
    static int i;
    char *p = buf[i++ % 4];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

int test_tmpdir_teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd);
}
