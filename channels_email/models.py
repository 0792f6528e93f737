"""Email channel models (EmailConnection, InboundEmail, EmailThreadRef) arrive with the
inbound pipeline; the app exists now so the layout is fixed from the start."""
