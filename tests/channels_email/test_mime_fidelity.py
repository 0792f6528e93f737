"""Real-world mail read right: 8-bit headers and mislabelled charsets, broken header
blocks, careful addresses, uuencoded files and line endings (issue 13, items 1-3 and 6).

One fixture per case in tests/fixtures/mail/, each listed with its source and licence in
tests/fixtures/README. Pure: no database.
"""

from __future__ import annotations

import re
from pathlib import Path

import charset_normalizer
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels_email.mime import parse_email
from tests.channels_email.corpus import CORPUS, needs_corpus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
README = Path(__file__).resolve().parents[1] / "fixtures" / "README"
UU_PAYLOAD = bytes(range(256)) * 3

# file, subject, sender address, display name, chosen body text
CASES = [
    # 1. 8-bit header bytes and mislabelled charsets
    ("8bit-header-declared-us-ascii.eml", "Grüße aus Köln", "juergen@kunde.example",
     "Jürgen Müller", "Hello, the printer is broken."),
    ("8bit-header-declared-iso-8859-1-is-cp1252.eml", "Facture “mars” : 50 €",
     "renee@client.example", "Renée Faure", "Montant dû : 50 € – merci."),
    ("8bit-header-declared-gb2312-is-gb18030.eml", "朱镕基的来信", "wang@kehu.example",
     "王小明", "您好，朱镕基的来信已收到。"),
    ("8bit-header-undeclared-shift-jis.eml", "会議の予定について", "yamada@kokyaku.example",
     "山田太郎", "来週の会議の予定を教えてください。よろしくお願いします。"),
    ("8bit-header-utf8-in-latin1-message.eml", "Überweisung bestätigt", "zoe@kunde.example",
     "Zoë Ødegård", "Vielen Dank für die schnelle Überweisung."),
    ("encoded-word-wrong-charset.eml", "Fröhliche Grüße", "js@kunde.example",
     "Jürgen Schröder", "Schöne Grüße"),
    ("encoded-word-gb2312-is-gb18030.eml", "朱镕基的来信", "wang@kehu.example", "王小明",
     "Hello."),
    # 2. broken header blocks and addresses
    ("header-leading-bom.eml", "Saved with a byte order mark", "anna@kunde.example",
     "Anna Example", "Body after a BOM."),
    ("header-mbox-from-line.eml", "Exported from an mbox", "anna@kunde.example",
     "Anna Example", "Body of an mbox export."),
    ("header-junk-first-line.eml", "A junk line before the headers", "anna@kunde.example",
     "Anna Example", "Body below junk."),
    ("header-line-without-colon.eml", "Headers below a broken line", "anna@kunde.example",
     "Anna Example", "Body below a broken header."),
    ("header-bad-continuation.eml", "A fold that lost its indent", "anna@kunde.example",
     "Anna Example", "Body below a bad fold."),
    ("header-space-before-colon.eml", "Obsolete space before the colon", "anna@kunde.example",
     "Anna Example", "Body with obsolete header syntax."),
    ("address-quoted-local-part.eml", "Quoted local part", '"john transfer"@kunde.example',
     "", "Reply to the quoted address."),
    ("address-comment-is-not-a-name.eml", "Comments are not display names",
     "postmaster@mx.kunde.example", "", "Body."),
    ("address-null-and-unquoted-spaces.eml", "An address without angle brackets",
     "anna@kunde.example", "Anna Example", "Body."),
    # 3. bodies
    ("body-uuencode-part.eml", "A uuencoded part", "anna@kunde.example", "Anna Example",
     "See the attached log."),
    ("body-inline-uuencode.eml", "An inline uuencoded file", "anna@kunde.example",
     "Anna Example", "Here is the file you asked for.\n\nRegards, Anna"),
    ("body-bare-cr.eml", "Old Mac line endings", "anna@kunde.example", "Anna Example",
     "First line.\nSecond line."),
    ("body-mixed-line-endings.eml", "Mixed line endings", "anna@kunde.example",
     "Anna Example", "Plain line one.\nPlain line two."),
    # 6. what was right stays right
    ("keep-utf7-subject.eml", "Café", "renee@client.example", "Renée", "Un café, merci."),
    ("keep-long-subject.eml", " ".join(["overlong"] * 150)[:998], "anna@kunde.example",
     "Anna Example", "Body."),
]


def parse(name: str):
    return parse_email((FIXTURES / name).read_bytes())


@pytest.mark.parametrize("name,subject,sender,display_name,text", CASES,
                         ids=[case[0] for case in CASES])
def test_fixture_reads_right(name, subject, sender, display_name, text):
    parsed = parse(name)
    assert not parsed.quarantine_reason
    assert (parsed.subject, parsed.from_.email, parsed.from_.name, parsed.text) == (
        subject, sender, display_name, text)
    assert "\ufffd" not in parsed.subject + parsed.from_.name + parsed.text


def test_every_fixture_has_a_case_and_a_line_in_the_readme():
    files = sorted(p.name for p in FIXTURES.glob("*.eml"))
    assert files == sorted(case[0] for case in CASES)
    table = README.read_text()
    section = table.split("## mail/ (parser cases)", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([^`]+\.eml)`", section))
    assert listed == set(files)


# ------------------------------------------------------------------ item 1 details

def test_the_detector_runs_only_for_8bit_bytes_that_no_declared_charset_reads(monkeypatch):
    calls = []
    real = charset_normalizer.from_bytes

    def counting(*args, **kwargs):
        calls.append(args[0][:20])
        return real(*args, **kwargs)

    monkeypatch.setattr(charset_normalizer, "from_bytes", counting)
    for name in ("header-mbox-from-line.eml", "8bit-header-utf8-in-latin1-message.eml",
                 "8bit-header-declared-iso-8859-1-is-cp1252.eml",
                 "8bit-header-declared-gb2312-is-gb18030.eml", "keep-utf7-subject.eml",
                 "body-mixed-line-endings.eml"):
        parse(name)
    assert calls == []  # ASCII, UTF-8 and declared charsets: the common path
    parse("8bit-header-undeclared-shift-jis.eml")
    assert calls  # nothing declared: the detector chose Shift_JIS


def test_a_mostly_utf8_value_with_one_broken_byte_stays_utf8():
    raw = ("From: Юникод запрещен".encode() + b"\xf1 <a@b.example>\r\n"
           b"Subject: t\r\n\r\nbody\r\n")
    assert parse_email(raw).from_.name == "Юникод запрещен\ufffd"


# ------------------------------------------------------------------ item 2 details

@pytest.mark.parametrize("name,defects", [
    ("header-junk-first-line.eml", ["MissingHeaderBodySeparatorDefect", "HeaderLinesDropped:1"]),
    ("header-line-without-colon.eml",
     ["MissingHeaderBodySeparatorDefect", "HeaderLinesDropped:1"]),
    ("header-bad-continuation.eml", ["MissingHeaderBodySeparatorDefect"]),
    ("header-space-before-colon.eml", ["MissingHeaderBodySeparatorDefect"]),
    ("header-leading-bom.eml", ["LeadingByteOrderMark"]),
    ("header-mbox-from-line.eml", []),
])
def test_a_salvaged_header_block_keeps_its_defect(name, defects):
    parsed = parse(name)
    assert parsed.defects == defects
    assert [a.email for a in parsed.to][:1] == ["support@helpdesk.example"]
    assert parsed.message_id.endswith("@fixtures.example")


def test_a_fold_that_lost_its_indent_keeps_the_addresses_after_it():
    assert [a.email for a in parse("header-bad-continuation.eml").to] == [
        "support@helpdesk.example", "sales@helpdesk.example"]


def test_a_body_that_starts_without_a_blank_line_is_not_taken_for_headers():
    raw = b"From: a@b.example\r\nSubject: no separator\r\nHello there\r\nDate: tomorrow\r\n"
    parsed = parse_email(raw)
    assert parsed.subject == "no separator" and "Hello there" in parsed.text


def test_comments_are_not_names_and_a_null_address_is_no_recipient():
    assert [(a.email, a.name) for a in parse("address-comment-is-not-a-name.eml").to] == [
        ("support@helpdesk.example", "Support")]
    assert [a.email for a in parse("address-null-and-unquoted-spaces.eml").to] == [
        "support@helpdesk.example"]


@needs_corpus
@pytest.mark.parametrize("relative,subject,sender", [
    # "quite Delivered-To:" in the middle used to end the header block: no sender left,
    # quarantined as no_sender. Now the fields below it are kept and it is ordinary mail.
    ("mikel-mail/plain_emails/raw_email_incorrect_header.eml",
     "Stop adware/spyware once and for all.", "xxx@xxx.xxx"),
    # RFC 5322 appendix A.6.3, white space before every colon (obsolete syntax): used to
    # be quarantined as "no header fields found".
    ("mikel-mail/rfc2822/example13.eml", "Saying Hello", "jdoe@machine.example"),
])
def test_corpus_mail_that_was_quarantined_for_a_broken_header_block_is_read(
        relative, subject, sender):
    parsed = parse_email((CORPUS / relative).read_bytes())
    assert not parsed.quarantine_reason
    assert (parsed.subject, parsed.from_.email) == (subject, sender)
    assert "MissingHeaderBodySeparatorDefect" in parsed.defects


# ------------------------------------------------------------------ item 3 details

@pytest.mark.parametrize("name,filename", [("body-uuencode-part.eml", "printer.log"),
                                           ("body-inline-uuencode.eml", "config.bin")])
def test_uuencoded_files_become_attachments(name, filename):
    parsed = parse(name)
    assert [(a.filename, a.content) for a in parsed.attachments] == [(filename, UU_PAYLOAD)]
    assert "begin 6" not in parsed.text


def test_mixed_line_endings_keep_both_alternatives():
    parsed = parse("body-mixed-line-endings.eml")
    assert "<p>HTML</p>" in parsed.html and "\r" not in parsed.text
    assert parsed.defects == ["MixedLineEndings"]


# ------------------------------------------------------------------ item 6: never raise

SEEDS = [(FIXTURES / case[0]).read_bytes() for case in CASES]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_fixtures_never_raise(seed, data):
    raw = bytearray(seed)
    head = max(raw.find(b"\n\n"), raw.find(b"\r\n\r\n"), 1)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, head))
        raw[pos:pos] = data.draw(st.sampled_from(
            [b"\xef\xbb\xbf", b"\r", b"\n", b"junk line\n", b"\xe9\x80\x81", b"\x81\xff",
             b" : ", b'"', b"(", b"<>", b"begin 644 x\n", b"\x1b$B"]))
    parsed = parse_email(bytes(raw))
    assert parsed.message_id
    assert parsed.quarantine_reason or parsed.from_ is not None
    for value in (parsed.subject, parsed.text, parsed.from_.name if parsed.from_ else ""):
        assert "\x00" not in value
        value.encode("utf-8")


@pytest.mark.parametrize("raw,subject,text", [
    # an 8-bit charset label: no declared charset, the detector reads the header bytes
    (b'From: J\xfcrgen <j@x.example>\r\nSubject: Gr\xfc\xdfe\r\n'
     b'Content-Type: text/plain; charset="utf\xff-8"\r\n\r\nhi\r\n', "Grüße", "hi"),
    # an 8-bit content type on a multipart whose boundary is wrong: recovered, not
    # quarantined as unparseable
    (b"From: a@x.example\r\nSubject: s\r\n"
     b'Content-Type: multipart/mixed\xe9; boundary="nope"\r\n\r\n'
     b"--real\r\nContent-Type: text/plain\r\n\r\ninside\r\n--real--\r\n", "s", "inside"),
])
def test_8bit_bytes_in_content_type_parameters_are_read_not_quarantined(raw, subject, text):
    parsed = parse_email(raw)
    assert (parsed.quarantine_reason, parsed.subject, parsed.text) == ("", subject, text)
