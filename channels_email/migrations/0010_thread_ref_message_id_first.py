"""The thread reference's unique index leads with the Message-ID.

On (tenant_id, message_id_header), the ingest's lookup of a reply's ids
(``message_id_header = ANY($2)``) had a second way through the index: the whole range of
the workspace, each reference checked against the ids. A prepared statement's generic
plan took it whenever the statistics made the workspace look small (a new or fast-growing
one, or one of many): every email then read every reference of its workspace, 0.5 ms at
2,000 and growing with the workspace. Led by the Message-ID (near unique by itself), the
index only answers the ids. No index is led by the tenant any more, on purpose (see the
model).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("channels_email", "0009_forwarding_inbound_address")]

    operations = [
        migrations.AddConstraint(
            model_name="emailthreadref",
            constraint=models.UniqueConstraint(fields=("message_id_header", "tenant"),
                                               name="thread_ref_message_id_tenant_unique"),
        ),
        migrations.RemoveConstraint(model_name="emailthreadref",
                                    name="thread_ref_tenant_message_id_unique"),
    ]
