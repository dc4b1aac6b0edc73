/* SPDX-License-Identifier: MIT */
/* Until the monitor (qmp-core) is merged: events go nowhere. Removed at
 * that merge. */
#include "vbd/qmp.h"

#include <json-c/json.h>

void vbd_qmp_event(const char *name, struct json_object *data)
{
    (void)name;
    json_object_put(data);
}
