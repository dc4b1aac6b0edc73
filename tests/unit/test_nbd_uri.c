/* The nbd driver's filename parser (nbd://, nbds://, nbd+unix://, nbds+unix://
 * and QEMU's nbd:HOST:PORT forms) into driver options, and the glob and
 * exact rules of the authz objects the NBD server checks clients with. */
#include "unit.h"
#include "vbd/authz.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/options.h"

#include <json-c/json.h>
#include <stdlib.h>

/* Parses uri; returns the options as compact JSON text (static buffer), or "ERR: message". */
static const char *parse(const char *uri)
{
    static char out[1024];
    const struct vbd_driver *d = vbd_driver_find("nbd");
    struct json_object *o = json_object_new_object();
    struct vbd_error *err = NULL;
    if (d->parse_filename(uri, o, &err) < 0)
        snprintf(out, sizeof(out), "ERR: %s", err ? err->msg : "(no message)");
    else
        snprintf(out, sizeof(out), "%s",
                 json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    vbd_error_free(err);
    json_object_put(o);
    return out;
}

static bool has(const char *hay, const char *needle)
{
    bool ok = strstr(hay, needle) != NULL;
    if (!ok)
        printf("  '%s' lacks '%s'\n", hay, needle);
    return ok;
}

UNIT_TEST(plain_uris_never_ask_for_tls)
{
    CHECK_STR(
        parse("nbd://example.org:10810/disk"),
        "{\"server.type\":\"inet\",\"server.host\":\"example.org\",\"server.port\":\"10810\",\"export\":"
        "\"disk\"}");
    CHECK_STR(parse("nbd+unix:///my%20disk?socket=/run/a%26b.sock"),
              "{\"server.type\":\"unix\",\"server.path\":\"/run/a&b.sock\",\"export\":\"my disk\"}");
    CHECK_STR(parse("nbd+unix://?socket=/s"),
              "{\"server.type\":\"unix\",\"server.path\":\"/s\",\"export\":\"\"}");
    CHECK(has(parse("nbd://[::1]:999/"), "\"server.host\":\"::1\",\"server.port\":\"999\""));
    CHECK(has(parse("nbd:///x"), "\"server.host\":\"localhost\",\"server.port\":\"10809\""));
    CHECK(has(parse("nbd:unix:/tmp/s:exportname=e"), "\"server.path\":\"/tmp/s\""));
    CHECK(!strstr(parse("nbd://alice@h/x"), "tls"));
    /* TLS parameters on a scheme that never does TLS are an error, not ignored */
    CHECK(has(parse("nbd://h/x?tls-certificates=/d"), "tls-certificates= is for nbds:// URIs"));
    CHECK(has(parse("nbd+unix:///x?socket=/s&tls-creds=t"), "tls-creds= is for nbds:// URIs"));
}

UNIT_TEST(nbds_uris_require_tls)
{
    CHECK_STR(parse("nbds://h/e?tls-certificates=/etc/pki/x"),
              "{\"server.type\":\"inet\",\"server.host\":\"h\",\"server.port\":\"10809\",\"export\":\"e\","
              "\"tls\":\"on\",\"tls-certificates\":\"/etc/pki/x\"}");
    CHECK(has(parse("nbds://h"), "\"tls\":\"on\""));
    CHECK(has(parse("NBDS+TCP://h:1/"), "\"tls\":\"on\""));
    /* libnbd: the URI's user is the PSK username; an explicit tls-username wins */
    CHECK(has(parse("nbds+unix://alice@/e?socket=/s&tls-psk-file=/k"),
              "\"tls-psk-file\":\"/k\",\"tls-username\":\"alice\""));
    CHECK(has(parse("nbds+unix://alice@/e?socket=/s&tls-psk-file=/k&tls-username=bob"),
              "\"tls-username\":\"bob\""));
    CHECK(!strstr(parse("nbds+unix://alice@/e?socket=/s&tls-psk-file=/k&tls-username=bob"), "alice"));
    CHECK(has(parse("nbds://h/e?tls-creds=tls0&tls-hostname=a.example&tls-verify-peer=false"),
              "\"tls-creds\":\"tls0\",\"tls-hostname\":\"a.example\",\"tls-verify-peer\":\"false\""));
}

UNIT_TEST(bad_uris_are_one_clear_error)
{
    CHECK(has(parse("nbds://h/e?tls-certificate=/d"), "unknown query parameter 'tls-certificate'"));
    CHECK(has(parse("nbds://h/e?tls-certificates=/a&tls-certificates=/b"),
              "'tls-certificates' is given twice"));
    CHECK(has(parse("nbds://h/e?tls-psk-file="), "'tls-psk-file' needs a value"));
    CHECK(has(parse("nbds://h/e?tls-psk-file"), "'tls-psk-file' needs a value"));
    CHECK(has(parse("nbds+unix:///e"), "nbd+unix needs ?socket=PATH"));
    CHECK(has(parse("nbds://h/e?socket=/s"), "socket= is for nbd+unix"));
    CHECK(has(parse("nbds+unix://h/e?socket=/s"), "takes no host or port"));
    CHECK(has(parse("nbds://h:0/"), "bad port '0'"));
    CHECK(has(parse("nbds://h:99999/"), "bad port '99999'"));
    CHECK(has(parse("nbds://h:/"), "bad port ''"));
    CHECK(has(parse("nbds://h:10x/"), "bad port '10x'"));
    CHECK(has(parse("nbds://[::1/"), "bad IPv6 address"));
    CHECK(has(parse("nbds://h/%zz"), "bad percent-encoding"));
    CHECK(has(parse("nbds://h/a%00b"), "bad percent-encoding"));
    CHECK(has(parse("nbds://h/a%4"), "bad percent-encoding"));
    CHECK(has(parse("nbdx://h/"), "is not an NBD URI"));
    CHECK(has(parse("nbd:nocolon"), "expected nbd:HOST:PORT"));
    /* every error names the URI it is about */
    CHECK(has(parse("nbds://h/e?x=1"), "NBD URI 'nbds://h/e?x=1'"));
}

UNIT_TEST(authz_glob_is_glibs_simple_pattern)
{
    CHECK(vbd_authz_glob_match("O=vbd,CN=*", "O=vbd,CN=vbd-test-client"));
    CHECK(vbd_authz_glob_match("O=vbd,CN=*", "O=vbd,CN="));
    CHECK(!vbd_authz_glob_match("O=vbd,CN=*", "O=other,CN=x"));
    CHECK(vbd_authz_glob_match("*CN=vbd-?est-client", "O=vbd,CN=vbd-test-client"));
    CHECK(!vbd_authz_glob_match("*CN=vbd-?est-client", "O=vbd,CN=vbd-tst-client"));
    CHECK(vbd_authz_glob_match("*a*b*c", "xxaxxbxxbxc"));
    CHECK(!vbd_authz_glob_match("*a*b*c", "xxaxxbxxbx"));
    CHECK(vbd_authz_glob_match("?", "\xc3\xa9")); /* one UTF-8 character */
    CHECK(!vbd_authz_glob_match("??", "\xc3\xa9"));
    CHECK(vbd_authz_glob_match("[ab]", "[ab]")); /* no bracket classes, as GLib */
    CHECK(!vbd_authz_glob_match("[ab]", "a"));
    CHECK(vbd_authz_glob_match("", ""));
    CHECK(!vbd_authz_glob_match("", "x"));
    CHECK(vbd_authz_glob_match("***", ""));
}

static int add(const char *text)
{
    struct vbd_error *err = NULL;
    struct json_object *o = vbd_opts_parse(text, "qom-type", &err);
    char *type = NULL;
    int rc = o ? vbd_opt_take_str(o, "qom-type", &type, &err) : -1;
    rc = rc > 0 ? vbd_authz_add(type, o, &err) : -1;
    if (rc < 0)
        printf("  %s: %s\n", text, err ? err->msg : "?");
    free(type);
    json_object_put(o);
    vbd_error_free(err);
    return rc;
}

static bool allowed(const char *id, const char *who)
{
    struct vbd_error *err = NULL;
    struct vbd_authz *a = vbd_authz_get(id, "test", &err);
    bool ok = a && vbd_authz_is_allowed(a, who);
    vbd_authz_unref(a);
    vbd_error_free(err);
    return ok;
}

UNIT_TEST(authz_objects)
{
    CHECK_EQ(add("authz-simple,id=s,identity=O=vbd,,CN=c1"), 0);
    CHECK(allowed("s", "O=vbd,CN=c1"));
    CHECK(!allowed("s", "O=vbd,CN=c2"));
    CHECK(!allowed("s", "O=vbd,CN=c1 ")); /* exactly */
    /* first matching rule decides; no match: the list's policy (deny unless said) */
    CHECK_EQ(
        add("{\"qom-type\":\"authz-list\",\"id\":\"l\",\"rules\":[{\"match\":\"O=vbd,CN=bad\",\"policy\":"
            "\"deny\"},{\"match\":\"O=vbd,CN=*\",\"policy\":\"allow\",\"format\":\"glob\"}]}"),
        0);
    CHECK(allowed("l", "O=vbd,CN=good"));
    CHECK(!allowed("l", "O=vbd,CN=bad"));
    CHECK(!allowed("l", "O=evil,CN=good"));
    CHECK_EQ(
        add("authz-list,id=k,policy=allow,rules.0.match=O=x,,CN=*,rules.0.policy=deny,rules.0.format=glob"),
        0);
    CHECK(!allowed("k", "O=x,CN=y"));
    CHECK(allowed("k", "O=y,CN=y"));
    CHECK_EQ(add("authz-list,id=e"), 0); /* no rules: deny */
    CHECK(!allowed("e", "anyone"));
    CHECK(!allowed("nope", "anyone"));
    CHECK(add("authz-simple,id=s,identity=x") < 0); /* duplicate id */
    CHECK(add("authz-list,id=b,rules.0.match=x") < 0);
    CHECK(add("authz-list,id=b,rules.1.match=x,rules.1.policy=allow") < 0);
    CHECK(add("authz-list,id=b,rules.0.match=x,rules.0.policy=allow,rules.0.format=regex") < 0);
    CHECK(add("authz-pam,id=p,service=login") < 0);
    vbd_authz_remove_all();
}
