"""Ticket numbers taken by the database inside the ticket's own INSERT.

``tickets_next_number(tenant)`` is the upsert of ``next_ticket_number`` as an SQL function,
so ``ticket_create`` can write ``number = tickets_next_number(%s)`` in the INSERT and read
the number back with RETURNING (one statement instead of two).
"""

from django.db import migrations

import tickets.models

CREATE = """
CREATE OR REPLACE FUNCTION tickets_next_number(p_tenant bigint) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    INSERT INTO tickets_ticketsequence AS s (tenant_id, last_number) VALUES (p_tenant, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET last_number = s.last_number + 1
    RETURNING s.last_number
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("tickets", "0003_ticket_email_connection")]

    operations = [
        migrations.RunSQL(CREATE, reverse_sql="DROP FUNCTION IF EXISTS tickets_next_number(bigint)"),
        migrations.AlterField(
            model_name="ticket", name="number", field=tickets.models.TicketNumberField(),
        ),
    ]
