/* Tiny unit test harness: UNIT_TEST(name) { ... } registers a test;
 * CHECK*() record a failure with file:line and continue the test. */
#ifndef VBD_UNIT_H
#define VBD_UNIT_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef void unit_fn(void);
void unit_register(const char *name, unit_fn *fn);
void unit_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define UNIT_TEST(name)                                                        \
    static void unit_test_##name(void);                                        \
    __attribute__((constructor)) static void unit_register_##name(void)        \
    {                                                                          \
        unit_register(#name, unit_test_##name);                                \
    }                                                                          \
    static void unit_test_##name(void)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            unit_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);          \
    } while (0)
#define CHECK_EQ(a, b)                                                         \
    do {                                                                       \
        long long unit_a_ = (long long)(a), unit_b_ = (long long)(b);          \
        if (unit_a_ != unit_b_)                                                \
            unit_fail(__FILE__, __LINE__, "%s == %s failed: %lld != %lld", #a, \
                      #b, unit_a_, unit_b_);                                   \
    } while (0)
#define CHECK_STR(a, b)                                                        \
    do {                                                                       \
        const char *unit_a_ = (a), *unit_b_ = (b);                             \
        if (!unit_a_ || !unit_b_ || strcmp(unit_a_, unit_b_) != 0)             \
            unit_fail(__FILE__, __LINE__, "%s == %s failed: \"%s\" != \"%s\"", \
                      #a, #b, unit_a_ ? unit_a_ : "(null)",                    \
                      unit_b_ ? unit_b_ : "(null)");                           \
    } while (0)

/* Make a temporary directory for the test (removed at exit); returns its path. */
const char *unit_tmpdir(void);

#endif
