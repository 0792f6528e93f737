"""Ticket search on an index: one search document per ticket, kept by the database.

``tickets_ticket.search_document`` is a tsvector (positions stripped) of what an agent
looks a ticket up by: its subject, first message, CC addresses, the contact's name and
address, and every message's subject and text. Triggers keep it current on every path
that writes those rows (the services, the ingest's raw INSERTs, bulk loads, COPY):

- a ticket's INSERT builds its part; an UPDATE of title, description, CC or contact
  rebuilds the whole document;
- a message's INSERT appends its words; an UPDATE that moves it to another ticket (a
  merge) or changes its text rebuilds the tickets concerned; a DELETE statement rebuilds
  each ticket it touched once;
- a contact's new name or address rebuilds its tickets.

Words go through ``unaccent`` and the ``simple`` configuration (lower case, no stemming,
no stop words: any language), so "cafe" finds "Café". An address is indexed whole, as its
parts (local part, domain labels) and as its domain, so "alice@customer.example",
"alice", "customer.example" and "customer" all find it. ``helpdesk_search_query(text)``
turns what a user typed into a tsquery of the same words, each a prefix ("refu" finds
"refund"); it is IMMUTABLE so that the planner folds it into a constant and estimates
how many tickets match (a rare word through the GIN index, a common one along the
most-recent-first index).

``(tenant_id, search_document)`` is one GIN index (btree_gin), so a small workspace's
search never wades through a big one's matches. The column is not on the Django model:
Django never reads it (list queries stay lean) and never writes it back stale.
"""

from django.db import migrations

SEARCH_FUNCTIONS = r"""
CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public;
CREATE EXTENSION IF NOT EXISTS btree_gin SCHEMA public;

-- Words of a text as the index keeps them: unaccented, lower case, no positions.
CREATE OR REPLACE FUNCTION helpdesk_search_vector(document text) RETURNS tsvector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT strip(to_tsvector('pg_catalog.simple'::regconfig,
                             public.unaccent('public.unaccent'::regdictionary,
                                             left(document, 1000000))))
$$;

-- Addresses (one or more, separated by spaces) as text to index: each whole, in parts,
-- and its domain.
CREATE OR REPLACE FUNCTION helpdesk_search_addresses(addresses text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT addresses || ' ' || regexp_replace(addresses, '[@.+_-]+', ' ', 'g') || ' '
           || regexp_replace(addresses, '[^\s@]*@', ' ', 'g')
$$;

-- What a user typed, as a tsquery: every word of it, each a prefix (a one-letter word
-- exactly). NULL when it has no word at all (then nothing matches).
CREATE OR REPLACE FUNCTION helpdesk_search_query(term text) RETURNS tsquery
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(
               '''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || ''''
               || CASE WHEN length(lexeme) > 1 THEN ':*' ELSE '' END, ' & ')::tsquery
    FROM unnest(helpdesk_search_vector(term))
$$;

-- The ticket's own part: subject, first message, CC, the contact.
CREATE OR REPLACE FUNCTION helpdesk_ticket_search_head(
    p_title text, p_description text, p_cc text[], p_contact bigint) RETURNS tsvector
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT helpdesk_search_vector(concat_ws(' ', p_title, left(p_description, 100000),
                                            helpdesk_search_addresses(array_to_string(p_cc, ' ')),
                                            c.name, helpdesk_search_addresses(c.email)))
    FROM (SELECT 1) AS one LEFT JOIN contacts_contact c ON c.id = p_contact
$$;

-- One message's part.
CREATE OR REPLACE FUNCTION helpdesk_message_search_vector(p_subject text, p_body text)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT helpdesk_search_vector(concat_ws(' ', p_subject, left(p_body, 100000)))
$$;

-- The whole document of a ticket, from its row, its contact and its messages.
CREATE OR REPLACE FUNCTION helpdesk_ticket_search_document(p_ticket bigint) RETURNS tsvector
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT helpdesk_ticket_search_head(t.title, t.description, t.cc_addresses, t.contact_id)
           || coalesce((SELECT helpdesk_search_vector(left(string_agg(
                            concat_ws(' ', m.subject, left(m.body_text, 100000)), ' '), 1000000))
                        FROM tickets_message m WHERE m.ticket_id = t.id), ''::tsvector)
    FROM tickets_ticket t WHERE t.id = p_ticket
$$;

CREATE OR REPLACE FUNCTION helpdesk_ticket_search_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.search_document := helpdesk_ticket_search_head(
            NEW.title, NEW.description, NEW.cc_addresses, NEW.contact_id);
    ELSE
        NEW.search_document := helpdesk_ticket_search_head(
            NEW.title, NEW.description, NEW.cc_addresses, NEW.contact_id)
            || coalesce((SELECT helpdesk_search_vector(left(string_agg(
                             concat_ws(' ', m.subject, left(m.body_text, 100000)), ' '), 1000000))
                         FROM tickets_message m WHERE m.ticket_id = NEW.id), ''::tsvector);
    END IF;
    RETURN NEW;
END $$;

-- A new message's words join its ticket's document (up to a size the index takes well:
-- a ticket past it keeps the words it has).
CREATE OR REPLACE FUNCTION helpdesk_message_search_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tickets_ticket
       SET search_document = search_document
                             || helpdesk_message_search_vector(NEW.subject, NEW.body_text)
     WHERE id = NEW.ticket_id AND pg_column_size(search_document) < 500000;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION helpdesk_message_search_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tickets_ticket SET search_document = helpdesk_ticket_search_document(id)
     WHERE id IN (OLD.ticket_id, NEW.ticket_id);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION helpdesk_message_search_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tickets_ticket SET search_document = helpdesk_ticket_search_document(id)
     WHERE id IN (SELECT DISTINCT ticket_id FROM gone);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION helpdesk_contact_search_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tickets_ticket SET search_document = helpdesk_ticket_search_document(id)
     WHERE tenant_id = NEW.tenant_id AND contact_id = NEW.id;
    RETURN NULL;
END $$;

ALTER TABLE tickets_ticket ADD COLUMN search_document tsvector NOT NULL DEFAULT ''::tsvector;

CREATE TRIGGER ticket_search_insert BEFORE INSERT ON tickets_ticket
    FOR EACH ROW EXECUTE FUNCTION helpdesk_ticket_search_trigger();
CREATE TRIGGER ticket_search_update BEFORE UPDATE OF title, description, cc_addresses, contact_id
    ON tickets_ticket FOR EACH ROW
    WHEN (OLD.title IS DISTINCT FROM NEW.title OR OLD.description IS DISTINCT FROM NEW.description
          OR OLD.cc_addresses IS DISTINCT FROM NEW.cc_addresses
          OR OLD.contact_id IS DISTINCT FROM NEW.contact_id)
    EXECUTE FUNCTION helpdesk_ticket_search_trigger();
CREATE TRIGGER message_search_insert AFTER INSERT ON tickets_message
    FOR EACH ROW EXECUTE FUNCTION helpdesk_message_search_insert();
CREATE TRIGGER message_search_update AFTER UPDATE OF ticket_id, subject, body_text
    ON tickets_message FOR EACH ROW
    WHEN (OLD.ticket_id IS DISTINCT FROM NEW.ticket_id OR OLD.subject IS DISTINCT FROM NEW.subject
          OR OLD.body_text IS DISTINCT FROM NEW.body_text)
    EXECUTE FUNCTION helpdesk_message_search_update();
CREATE TRIGGER message_search_delete AFTER DELETE ON tickets_message
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION helpdesk_message_search_delete();
CREATE TRIGGER contact_search_update AFTER UPDATE OF email, name ON contacts_contact
    FOR EACH ROW
    WHEN (OLD.email IS DISTINCT FROM NEW.email OR OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION helpdesk_contact_search_update();

UPDATE tickets_ticket SET search_document = helpdesk_ticket_search_document(id);

CREATE INDEX ticket_search ON tickets_ticket USING gin (tenant_id, search_document);
"""

DROP = """
DROP INDEX IF EXISTS ticket_search;
DROP TRIGGER IF EXISTS contact_search_update ON contacts_contact;
DROP TRIGGER IF EXISTS message_search_delete ON tickets_message;
DROP TRIGGER IF EXISTS message_search_update ON tickets_message;
DROP TRIGGER IF EXISTS message_search_insert ON tickets_message;
DROP TRIGGER IF EXISTS ticket_search_update ON tickets_ticket;
DROP TRIGGER IF EXISTS ticket_search_insert ON tickets_ticket;
ALTER TABLE tickets_ticket DROP COLUMN IF EXISTS search_document;
DROP FUNCTION IF EXISTS helpdesk_contact_search_update();
DROP FUNCTION IF EXISTS helpdesk_message_search_delete();
DROP FUNCTION IF EXISTS helpdesk_message_search_update();
DROP FUNCTION IF EXISTS helpdesk_message_search_insert();
DROP FUNCTION IF EXISTS helpdesk_ticket_search_trigger();
DROP FUNCTION IF EXISTS helpdesk_ticket_search_document(bigint);
DROP FUNCTION IF EXISTS helpdesk_message_search_vector(text, text);
DROP FUNCTION IF EXISTS helpdesk_ticket_search_head(text, text, text[], bigint);
DROP FUNCTION IF EXISTS helpdesk_search_query(text);
DROP FUNCTION IF EXISTS helpdesk_search_addresses(text);
DROP FUNCTION IF EXISTS helpdesk_search_vector(text);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("tickets", "0011_reply_submission"),
        ("contacts", "0003_tenant_fk_no_own_index"),
    ]

    operations = [migrations.RunSQL(SEARCH_FUNCTIONS, reverse_sql=DROP)]
