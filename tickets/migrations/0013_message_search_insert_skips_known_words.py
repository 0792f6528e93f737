"""A new message whose words its ticket's search document holds already leaves the ticket
row alone.

A new ticket's first message repeats its subject and text, which the ticket's INSERT put
in the document; and a reply often quotes what is there. Writing the same document again
cost a new ticket row version and an entry in each of the table's indexes for nothing
(``search_document`` is indexed, so the UPDATE is never HOT). The vector is stripped, so
"no new word" is exactly "document || words = document"; and a message whose subject and
text are the ticket's own title and description (the first message of a ticket made from
an email) is not even turned into words again.
"""

from django.db import migrations

FORWARD = r"""
CREATE OR REPLACE FUNCTION helpdesk_message_search_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    words tsvector;
BEGIN
    -- The ticket's first message: its subject and text are the ticket's own (the head of
    -- the document), so its words are there without computing them again.
    PERFORM 1 FROM tickets_ticket t
     WHERE t.id = NEW.ticket_id AND t.title = NEW.subject AND t.description = NEW.body_text;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    words := helpdesk_message_search_vector(NEW.subject, NEW.body_text);
    UPDATE tickets_ticket
       SET search_document = search_document || words
     WHERE id = NEW.ticket_id AND pg_column_size(search_document) < 500000
       AND search_document || words <> search_document;
    RETURN NULL;
END $$;
"""

# 0012's version.
BACKWARD = r"""
CREATE OR REPLACE FUNCTION helpdesk_message_search_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tickets_ticket
       SET search_document = search_document
                             || helpdesk_message_search_vector(NEW.subject, NEW.body_text)
     WHERE id = NEW.ticket_id AND pg_column_size(search_document) < 500000;
    RETURN NULL;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("tickets", "0012_ticket_search_document")]

    operations = [migrations.RunSQL(FORWARD, reverse_sql=BACKWARD)]
