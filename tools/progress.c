/*
 * progress.c - qemu-img's progress line for convert/compare -p.
 *
 * Same text and update rule as qemu's util/qemu-progress.c so scripts that
 * parse "    (12.34/100%)\r" keep working: a line is printed when the value
 * moved by more than min_skip percent, and always at 0 and 100.
 */
#include <stdio.h>
#include "img.h"

static struct {
    bool enabled;
    float current, last_print, min_skip;
} state;

void progress_init(bool enabled, float min_skip)
{
    state.enabled = enabled;
    state.current = state.last_print = 0;
    state.min_skip = min_skip;
}

void progress_print(float delta, int max)
{
    float current = max == 0 ? state.current + delta : state.current + delta / 100 * max;
    if (current > 100) {
        current = 100;
    }
    state.current = current;
    if (current > state.last_print + state.min_skip ||
        current < state.last_print - state.min_skip || current == 0 || current == 100) {
        state.last_print = current;
        if (state.enabled) {
            printf("    (%3.2f/100%%)\r", current);
            fflush(stdout);
        }
    }
}

void progress_end(void)
{
    if (state.enabled) {
        printf("\n");
    }
}
