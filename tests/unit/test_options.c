#include "unit.h"
#include "vbd/error.h"
#include "vbd/options.h"
#include "vbd/sha256.h"

#include <json-c/json.h>
#include <stdlib.h>

static const char *str_at(struct json_object *o, const char *path)
{
    struct json_object *v = vbd_opt_get(o, path);
    return v ? json_object_get_string(v) : NULL;
}

UNIT_TEST(keyval_nesting_and_escapes)
{
    struct vbd_error *err = NULL;
    struct json_object *o = vbd_keyval_parse("driver=raw,file.driver=file,file.filename=a,,b.img,cache.direct=on", NULL, &err);
    CHECK(o != NULL);
    CHECK_STR(str_at(o, "driver"), "raw");
    CHECK_STR(str_at(o, "file.driver"), "file");
    CHECK_STR(str_at(o, "file.filename"), "a,b.img");
    CHECK_STR(str_at(o, "cache.direct"), "on");
    bool b = false;
    CHECK_EQ(vbd_opt_take_bool(o, "cache.direct", &b, &err), 1);
    CHECK(b);
    CHECK(vbd_opt_get(o, "cache") == NULL); /* emptied parent removed */
    json_object_put(o);
}

UNIT_TEST(keyval_implied_key_and_flags)
{
    struct vbd_error *err = NULL;
    struct json_object *o = vbd_keyval_parse("disk,,1.img,format=raw,ro", "file", &err);
    CHECK(o != NULL);
    CHECK_STR(str_at(o, "file"), "disk,1.img");
    CHECK_STR(str_at(o, "ro"), "on");
    json_object_put(o);
}

UNIT_TEST(keyval_errors_name_the_key)
{
    struct vbd_error *err = NULL;
    CHECK(vbd_keyval_parse("a=1,a=2", NULL, &err) == NULL);
    CHECK(err && strstr(err->msg, "'a'"));
    vbd_error_free(err);
    err = NULL;
    CHECK(vbd_keyval_parse("a=1,a.b=2", NULL, &err) == NULL);
    CHECK(err && strstr(err->msg, "a.b"));
    vbd_error_free(err);
    err = NULL;
    CHECK(vbd_keyval_parse("=1", NULL, &err) == NULL);
    vbd_error_free(err);
}

UNIT_TEST(json_and_pseudo_filename)
{
    struct vbd_error *err = NULL;
    struct json_object *o = vbd_opts_parse("json:{\"driver\":\"raw\",\"file\":{\"filename\":\"x\"},\"size\":4096}", NULL, &err);
    CHECK(o != NULL);
    uint64_t size = 0;
    CHECK_EQ(vbd_opt_take_size(o, "size", &size, &err), 1);
    CHECK_EQ(size, 4096);
    CHECK_STR(str_at(o, "file.filename"), "x");
    json_object_put(o);
    CHECK(vbd_opts_parse("{\"a\":", NULL, &err) == NULL);
    CHECK(err != NULL);
    vbd_error_free(err);
    err = NULL;
    CHECK(vbd_opts_parse("[1,2]", NULL, &err) == NULL);
    vbd_error_free(err);
}

UNIT_TEST(sizes)
{
    struct { const char *s; uint64_t v; int ok; } cases[] = {
        {"0", 0, 1}, {"512", 512, 1}, {"1k", 1024, 1}, {"64K", 65536, 1}, {"1M", 1 << 20, 1},
        {"1.5G", 3ull << 29, 1}, {"2T", 2ull << 40, 1}, {"7E", 7ull << 60, 1}, {"1B", 1, 1},
        {"1Q", 0, 0}, {"-1", 0, 0}, {"", 0, 0}, {"abc", 0, 0}, {"8E", 0, 0}, {"99999999999999999999", 0, 0},
        {"1.5", 0, 0}, {"1k2", 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct vbd_error *err = NULL;
        uint64_t v = 0;
        int rc = vbd_parse_size(cases[i].s, &v, &err);
        if (cases[i].ok) {
            CHECK_EQ(rc, 0);
            CHECK_EQ(v, cases[i].v);
        } else {
            CHECK(rc < 0);
            CHECK(err && strstr(err->msg, cases[i].s));
        }
        vbd_error_free(err);
    }
}

UNIT_TEST(take_typed_and_leftovers)
{
    struct vbd_error *err = NULL;
    struct json_object *o = vbd_keyval_parse("n=12,b=maybe,e=two,extra.deep=1", NULL, &err);
    uint64_t n;
    CHECK_EQ(vbd_opt_take_u64(o, "n", &n, &err), 1);
    CHECK_EQ(n, 12);
    bool b;
    CHECK(vbd_opt_take_bool(o, "b", &b, &err) < 0);
    /* QEMU's words: "Parameter 'b' expects 'on' or 'off'" (the value not echoed) */
    CHECK(err && !strcmp(err->msg, "Parameter 'b' expects 'on' or 'off'"));
    vbd_error_free(err);
    err = NULL;
    static const char *const ch[] = {"one", "two", NULL};
    int e = -1;
    CHECK_EQ(vbd_opt_take_enum(o, "e", ch, &e, &err), 1);
    CHECK_EQ(e, 1);
    json_object_put(vbd_opt_take_obj(o, "b")); /* a bad value is still removable */
    CHECK(vbd_opts_check_empty(o, "Block format 'x'", &err) < 0);
    CHECK(err && strstr(err->msg, "extra.deep"));
    vbd_error_free(err);
    json_object_put(o);
}

/* vbd_sha256_hex against sha256sum: the padding edges (55, 56, 64 bytes)
 * and several blocks */
UNIT_TEST(sha256_known_answers)
{
    char hex[65], buf[1000];
    vbd_sha256_hex("", 0, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    vbd_sha256_hex("abc", 3, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *s56 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    vbd_sha256_hex(s56, strlen(s56), hex);
    CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    memset(buf, 'a', sizeof(buf));
    vbd_sha256_hex(buf, 55, hex);
    CHECK_STR(hex, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
    vbd_sha256_hex(buf, 64, hex);
    CHECK_STR(hex, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
    vbd_sha256_hex(buf, 1000, hex);
    CHECK_STR(hex, "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}
