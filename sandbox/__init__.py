"""Local emulator of the Google endpoints the helpdesk uses (OAuth, Gmail API v1, Pub/Sub push).

Plain Python (no Django). Run with ``python -m sandbox``; see sandbox/README.md.
"""
